"""vLLM engine: nimble supervises a `vllm serve` process and talks to it over loopback HTTP.

How it works
- `start()` launches `engine_command` (default `vllm serve`) with the model folder, a free
  loopback port, the served name and the profile's settings as vLLM flags. A random API key
  reaches it through `VLLM_API_KEY` (never argv, so `ps` does not show it). Its output goes
  to nimble's log (all lines with `engine_log`; the last 50 are kept for error messages).
  nimble polls `/health` and logs progress every 10 s: loading a large model takes minutes.
  A process that exits while starting, or a start beyond `engine_start_timeout`, is a
  ModelLoadError with the exit code and the last lines.
- Requests go to vLLM's OpenAI API, always streamed (`llamacpp_wire` builds the same body
  and maps the same chunk format). Closing the generator closes the HTTP stream, which
  makes vLLM abort the request. vLLM's 400s become InvalidRequest (context-length messages
  ContextLengthExceeded); a lost connection or a 5xx becomes EngineError.
- Supervision: a watcher waits on the process. With `engine_restart == "restart"` a dead
  engine is restarted with backoff (1, 2, 4 ... 30 s; more than 5 restarts in 10 minutes is
  fatal); meanwhile health is False and requests get Unavailable. With "fail" (or too many
  restarts) `on_fatal` is called: nimble exits non-zero and the orchestrator restarts it.
- Metrics: `cache_usage()` reads `vllm:kv_cache_usage_perc` (or the older
  `vllm:gpu_cache_usage_perc`) from vLLM's /metrics.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import secrets
import shutil
import signal
import socket
import time
from collections import deque
from collections.abc import AsyncGenerator
from pathlib import Path

import httpx
from prometheus_client.parser import text_string_to_metric_families

from nimble.engines.base import EngineConfig, cannot_rank
from nimble.engines.llamacpp_wire import ChunkMapper, Json, message_dicts, request_body
from nimble.errors import (
    ContextLengthExceeded,
    EngineError,
    InvalidRequest,
    ModelLoadError,
    NimbleError,
    Unavailable,
)
from nimble.models.files import sha256_of
from nimble.models.spec import ModelSpec
from nimble.types import (
    EmbedRequest,
    EmbedResult,
    EngineInfo,
    GenerateRequest,
    GenerationChunk,
    ModelFile,
    RankRequest,
    RankResult,
    SamplingParams,
    Task,
)

log = logging.getLogger("nimble.engines.vllm")

_DTYPES = {"bf16": "bfloat16", "fp16": "float16", "fp32": "float32"}
_FLAGS = {  # spec.options key -> vLLM flag
    "tensor_parallel_size": "--tensor-parallel-size",
    "max_num_seqs": "--max-num-seqs",
    "max_num_batched_tokens": "--max-num-batched-tokens",
    "context_length": "--max-model-len",
}
_NOT_FLAGS = {"precision"}
_CACHE_GAUGES = ("vllm:kv_cache_usage_perc", "vllm:gpu_cache_usage_perc")
_WEIGHT_FILES = ("*.safetensors", "*.bin", "*.pt", "config.json", "tokenizer*.json")
_MAX_RESTARTS, _RESTART_WINDOW, _MAX_BACKOFF = 5, 600.0, 30.0
_POLL = 0.25  # seconds between health polls while vLLM starts


class VllmEngine:
    """One model served by a supervised vLLM server process."""

    def __init__(self, spec: ModelSpec, config: EngineConfig):
        self.spec = spec
        self._config = config
        self._command = list(config.engine_command or ("vllm", "serve"))
        self._key = secrets.token_urlsafe(24)
        self._port = 0
        self._proc: asyncio.subprocess.Process | None = None
        self._http: httpx.AsyncClient | None = None
        self._lines: deque[str] = deque(maxlen=50)
        self._reader: asyncio.Task[None] | None = None
        self._watcher: asyncio.Task[None] | None = None
        self._ready = False
        self._stopping = False
        self._restarts: deque[float] = deque()
        self._version = ""
        self._context_length = 0
        self._files: tuple[ModelFile, ...] = ()

    # lifecycle

    async def start(self) -> None:
        if shutil.which(self._command[0]) is None:
            raise ModelLoadError(
                f"{self.spec.weights}: the vllm engine needs `{self._command[0]}`, which is not "
                "installed (pip install 'nimble[gpu]' on a machine with an NVIDIA GPU)"
            )
        self._http = httpx.AsyncClient(timeout=httpx.Timeout(30.0, read=None))
        await self._launch()
        self._files = await asyncio.to_thread(_weight_files, self.spec.weights)
        self._watcher = asyncio.create_task(self._watch())

    async def stop(self) -> None:
        self._stopping = True
        self._ready = False
        if self._watcher is not None:
            self._watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watcher
            self._watcher = None
        await self._terminate()
        if self._http is not None:
            await self._http.aclose()
            self._http = None

    async def warmup(self) -> None:
        if Task.CHAT in self.spec.tasks or Task.COMPLETION in self.spec.tasks:
            request = GenerateRequest("warmup", SamplingParams(max_tokens=1), prompt="Hello")
            async for _ in self.generate(request):
                pass
        else:
            await self.embed(EmbedRequest("warmup", ("warm up",)))

    async def health(self) -> bool:
        if not self._ready or self._http is None:
            return False
        try:
            response = await self._http.get(self._url("/health"), timeout=5.0)
        except httpx.HTTPError:
            return False
        return response.status_code == 200

    async def cache_usage(self) -> float | None:
        if not self._ready or self._http is None:
            return None
        try:
            response = await self._http.get(self._url("/metrics"), timeout=5.0)
        except httpx.HTTPError:
            return None
        for family in text_string_to_metric_families(response.text):
            for sample in family.samples:
                if sample.name in _CACHE_GAUGES and sample.labels.get("model_name") in (
                    None,
                    self.spec.id,
                ):
                    return min(1.0, max(0.0, float(sample.value)))
        return None

    def info(self) -> EngineInfo:
        return EngineInfo(
            engine="vllm",
            engine_version=self._version,
            tasks=self.spec.tasks,
            context_length=self._context_length,
            supports_logprobs=True,
            files=self._files,
            extra={"port": str(self._port)},
        )

    # requests

    async def count_prompt_tokens(self, request: GenerateRequest) -> int:
        body: Json = {"model": self.spec.id}
        if request.messages is not None:
            body.update(messages=message_dicts(request.messages), add_generation_prompt=True)
        else:
            body["prompt"] = request.prompt or ""
        answer = await self._post("/tokenize", body, "messages" if request.messages else "prompt")
        return int(answer["count"])

    def prompt_tokens_bound(self, request: GenerateRequest) -> int | None:
        return None  # vLLM counts exactly through /tokenize

    async def generate(self, request: GenerateRequest) -> AsyncGenerator[GenerationChunk, None]:
        if not self._ready:
            raise Unavailable(f"model {self.spec.id}: the vllm engine is restarting")
        client = self._client()
        chat = request.messages is not None
        body = {**request_body(request), "model": self.spec.id}
        path = "/v1/chat/completions" if chat else "/v1/completions"
        mapper = ChunkMapper(request)
        param = "messages" if chat else "prompt"
        try:
            async with client.stream(
                "POST", self._url(path), json=body, headers=self._auth()
            ) as response:
                if response.status_code != 200:
                    raise _error(response.status_code, await response.aread(), param)
                async for line in response.aiter_lines():
                    if not line.startswith("data: "):
                        continue
                    data = line.removeprefix("data: ").strip()
                    if data == "[DONE]":
                        break
                    for chunk in mapper.map(json.loads(data)):
                        yield chunk
        except httpx.ConnectError as exc:  # nothing listens: the engine is down
            raise self._unreachable() from exc
        except httpx.HTTPError as exc:
            raise EngineError(f"vllm ({self.spec.id}): connection lost: {exc!r}") from exc
        yield GenerationChunk(usage=mapper.usage())

    async def rank(self, request: RankRequest) -> RankResult:
        raise cannot_rank(self.spec.id)

    async def embed(self, request: EmbedRequest) -> EmbedResult:
        body = {"model": self.spec.id, "input": list(request.inputs)}
        answer = await self._post("/v1/embeddings", body, "input")
        rows = sorted(answer["data"], key=lambda row: int(row["index"]))
        vectors = tuple(tuple(float(v) for v in row["embedding"]) for row in rows)
        return EmbedResult(vectors, int(answer["usage"]["prompt_tokens"]))

    # the process

    def _args(self) -> list[str]:
        options = dict(self.spec.options)
        if self._config.context_length:
            options["context_length"] = str(self._config.context_length)
        options.setdefault("max_num_seqs", str(self._config.max_running))
        args = [str(self.spec.weights), "--host", "127.0.0.1", "--port", str(self._port)]
        args += ["--served-model-name", self.spec.id]
        dtype = _DTYPES.get(options.get("precision", "").lower())
        if dtype:
            args += ["--dtype", dtype]
        for key, value in options.items():
            if key in _NOT_FLAGS:
                continue
            flag = _FLAGS.get(key, "--" + key.replace("_", "-"))
            if value.lower() == "true":
                args.append(flag)
            elif value.lower() != "false":
                args += [flag, value]
        return args

    async def _launch(self) -> None:
        self._port = _free_port()
        args = self._args()
        log.info("vllm: starting %s %s", " ".join(self._command), " ".join(args))
        self._proc = await asyncio.create_subprocess_exec(
            *self._command,
            *args,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
            env={**os.environ, "VLLM_API_KEY": self._key},
            start_new_session=True,  # its own process group: stop() ends its workers too
        )
        self._reader = asyncio.create_task(self._read_output(self._proc))
        try:
            await self._wait_healthy(self._proc)
        except BaseException:
            await self._terminate()
            raise
        await self._read_properties()
        self._ready = True
        log.info("vllm %s ready on 127.0.0.1:%d", self._version, self._port)

    async def _wait_healthy(self, proc: asyncio.subprocess.Process) -> None:
        started = time.monotonic()
        next_note = started + 10
        while True:
            if proc.returncode is not None:
                raise ModelLoadError(
                    f"{self.spec.weights}: vllm exited with code {proc.returncode} while "
                    f"starting; last output: {self._tail()}"
                )
            with contextlib.suppress(httpx.HTTPError):
                answer = await self._client().get(self._url("/health"), timeout=2.0)
                if answer.status_code == 200:
                    return
            now = time.monotonic()
            if now - started > self._config.engine_start_timeout:
                raise ModelLoadError(
                    f"{self.spec.weights}: vllm not healthy after "
                    f"{self._config.engine_start_timeout:.0f} s; last output: {self._tail()}"
                )
            if now >= next_note:
                log.info("vllm: still loading %s (%.0f s)", self.spec.id, now - started)
                next_note = now + 10
            with contextlib.suppress(asyncio.TimeoutError):  # a poll interval, or the exit
                await asyncio.wait_for(asyncio.shield(proc.wait()), _POLL)

    async def _read_properties(self) -> None:
        client = self._client()
        version = await client.get(self._url("/version"), headers=self._auth())
        self._version = str(version.json().get("version", "")) if version.is_success else ""
        models = await client.get(self._url("/v1/models"), headers=self._auth())
        for entry in models.json().get("data", []) if models.is_success else []:
            if entry.get("id") == self.spec.id and entry.get("max_model_len"):
                self._context_length = int(entry["max_model_len"])
        if not self._context_length:
            self._context_length = int(self.spec.options.get("context_length", 0)) or (
                self.spec.context_length or 0
            )

    async def _read_output(self, proc: asyncio.subprocess.Process) -> None:
        assert proc.stdout is not None
        async for raw in proc.stdout:
            line = raw.decode(errors="replace").rstrip()
            self._lines.append(line)
            log.log(logging.INFO if self._config.engine_log else logging.DEBUG, "vllm: %s", line)

    async def _watch(self) -> None:
        """Wait for the process to die; then restart it or give up (see the module doc)."""
        message = ""
        while not self._stopping:
            proc = self._proc
            if proc is not None:
                code = await proc.wait()
                if self._stopping:
                    return
                message = f"vllm for {self.spec.id} exited with code {code}"
                message += f"; last output: {self._tail()}"
            self._ready = False
            now = time.monotonic()
            while self._restarts and now - self._restarts[0] > _RESTART_WINDOW:
                self._restarts.popleft()
            policy = self._config.engine_restart
            if policy != "restart" or len(self._restarts) >= _MAX_RESTARTS:
                log.error(
                    "%s; not restarting (engine_restart=%s, %d restarts in 10 min)",
                    message,
                    policy,
                    len(self._restarts),
                )
                if self._config.on_fatal is not None:
                    self._config.on_fatal(message)
                return
            self._restarts.append(now)
            delay = min(_MAX_BACKOFF, 2.0 ** (len(self._restarts) - 1))
            log.error("%s; restarting in %.0f s", message, delay)
            await asyncio.sleep(delay)  # backoff before the restart
            try:
                await self._launch()
            except ModelLoadError as exc:
                message = f"vllm restart failed: {exc}"

    async def _terminate(self) -> None:
        proc, self._proc = self._proc, None
        if proc is not None and proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
            try:
                await asyncio.wait_for(proc.wait(), 15.0)
            except TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                await proc.wait()
        if self._reader is not None:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await asyncio.wait_for(self._reader, 5.0)
            self._reader = None

    # helpers

    def _client(self) -> httpx.AsyncClient:
        if self._http is None:
            raise Unavailable(f"model {self.spec.id} is not loaded")
        return self._http

    def _url(self, path: str) -> str:
        return f"http://127.0.0.1:{self._port}{path}"

    def _auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self._key}"}

    def _unreachable(self) -> Unavailable:
        return Unavailable(
            f"model {self.spec.id}: the vllm engine is not reachable (restarting or down)"
        )

    def _tail(self) -> str:
        return " | ".join(list(self._lines)[-10:]) or "(none)"

    async def _post(self, path: str, body: Json, param: str) -> Json:
        if not self._ready:
            raise Unavailable(f"model {self.spec.id}: the vllm engine is restarting")
        try:
            response = await self._client().post(self._url(path), json=body, headers=self._auth())
        except httpx.ConnectError as exc:
            raise self._unreachable() from exc
        except httpx.HTTPError as exc:
            raise EngineError(f"vllm ({self.spec.id}): {exc!r}") from exc
        if response.status_code != 200:
            raise _error(response.status_code, response.content, param)
        answer: Json = response.json()
        return answer


def _error(status: int, content: bytes, param: str) -> NimbleError:
    """vLLM's error bodies: `{"object": "error", "message", ...}` (older) or
    `{"error": {"message", ...}}` (newer)."""
    try:
        payload = json.loads(content)
    except ValueError:
        payload = {}
    inner = payload.get("error") if isinstance(payload, dict) else None
    error = inner if isinstance(inner, dict) else payload if isinstance(payload, dict) else {}
    message = str(error.get("message") or content.decode(errors="replace")[:300])
    if status == 400 and "maximum context length" in message:
        return ContextLengthExceeded(message, param=param)
    if status in (400, 422):
        return InvalidRequest(message, param=error.get("param"))
    return EngineError(f"vllm answered {status}: {message}")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _weight_files(folder: Path) -> tuple[ModelFile, ...]:
    if folder.is_file():
        paths = [folder]
    else:
        paths = sorted({p for pattern in _WEIGHT_FILES for p in folder.glob(pattern)})
    return tuple(ModelFile(str(p), sha256_of(p), p.stat().st_size) for p in paths if p.is_file())
