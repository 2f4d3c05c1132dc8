"""vLLM engine: nimble supervises a `vllm serve` process and talks to it over loopback HTTP.

How it works
- `start()` launches `engine_command` (default `vllm serve`) with the model folder, a free
  loopback port, the served name and the profile's settings as vLLM flags (`vllm_wire`).
  A random API key reaches it through `VLLM_API_KEY` (never argv, so `ps` does not show
  it), and `VLLM_HTTP_TIMEOUT_KEEP_ALIVE` keeps its idle connections open well past the
  POOL_IDLE seconds nimble's pool keeps them: with vLLM's 5 s against httpx's 5 s, a
  connection vLLM closes as nimble reuses it fails that request. Its output goes to
  nimble's log (every line with `engine_log`; the last lines are kept for error messages).
  `/health` is polled, with a progress line every 10 s: loading a large model takes
  minutes. A process that exits while starting, or a start beyond
  `engine_start_timeout`, is a ModelLoadError with the exit code and the last lines. The
  weight files are hashed in a thread meanwhile.
- Requests go to vLLM's OpenAI API, always streamed (`llamacpp_wire` builds the same body
  and maps the same chunk format). Closing the generator closes the HTTP stream, which
  makes vLLM abort the request. vLLM's 400s become InvalidRequest (context-length messages
  ContextLengthExceeded); a lost connection or a 5xx becomes EngineError.
- Supervision (`supervisor`): with `engine_restart == "restart"` a dead engine is restarted
  with backoff (1, 2, 4 ... 30 s; a sixth restart within 10 minutes is fatal); meanwhile
  health is False and requests get Unavailable. With "fail" (or too many restarts)
  `on_fatal` is called: nimble exits non-zero and the orchestrator restarts the pod.
- LoRA adapters (`lora.py`, and `loading.py` at run time): the model's adapters go on
  vLLM's command line (`--enable-lora`, `--lora-modules`); adapters loaded at run time go
  through vLLM's own `/v1/load_lora_adapter` and `/v1/unload_lora_adapter`, each version
  under its own vLLM name (a replaced adapter leaves vLLM when its last request ends). A
  request for an adapter sends vLLM `model: <that name>`. After a restart the adapters
  loaded at run time are loaded again before the engine counts as up (one vLLM refuses now
  is logged, and its requests fail with the reason).
- Metrics: `cache_usage()` reads `vllm:kv_cache_usage_perc` (or the older
  `vllm:gpu_cache_usage_perc`) from vLLM's /metrics.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import secrets
import socket
from collections.abc import AsyncGenerator

import httpx
import orjson
from prometheus_client.parser import text_string_to_metric_families

from nimble.engines.config import EngineConfig
from nimble.engines.openai_wire import ChunkMapper, Json, message_dicts, request_body
from nimble.engines.vllm.loading import AdapterLoader
from nimble.engines.vllm.lora import VllmAdapters
from nimble.engines.vllm.supervisor import Launch, RestartPolicy, State, Supervisor
from nimble.engines.vllm.wire import (
    chat_logprobs,
    error_of,
    gpu_env,
    is_error,
    log,
    sampling_fields,
    serve_args,
    structured_fields,
    template_shows_tools,
    vocab_size,
    weight_files,
)
from nimble.errors import (
    EngineError,
    InvalidRequest,
    ModelLoadError,
    Unavailable,
    UnsupportedParameter,
)
from nimble.models.adapters import AdapterSpec
from nimble.models.spec import ModelSpec
from nimble.structured.json_schema import tool_json
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
    TokenizeRequest,
    Tokens,
)

RESTARTS = RestartPolicy()  # backoff 1, 2, 4 ... 30 s; 5 restarts in 10 minutes
_CACHE_GAUGES = ("vllm:kv_cache_usage_perc", "vllm:gpu_cache_usage_perc")
POOL_IDLE = 5.0  # seconds nimble keeps an idle connection to vLLM (httpx's default)
SERVER_IDLE = {"VLLM_HTTP_TIMEOUT_KEEP_ALIVE": "60"}  # vLLM's side: far longer (its default: 5)
_TEMPLATE_SLACK, _MESSAGE_SLACK = 256, 16  # tokens a chat template may add (prompt_tokens_bound)
_HINT = "pip install 'nimble[gpu]' (vLLM, on a machine with an NVIDIA GPU)"


class VllmEngine:
    """One model served by a supervised vLLM server process."""

    def __init__(self, spec: ModelSpec, config: EngineConfig):
        self.spec = spec
        self._config = config
        self._command = tuple(config.engine_command or ("vllm", "serve"))
        self._key = secrets.token_urlsafe(24)
        self._port = 0
        self._http: httpx.AsyncClient | None = None
        self._version = ""
        self._context_length = 0
        self._files: tuple[ModelFile, ...] = ()
        self._vocab: int | None = None
        self._lora = VllmAdapters(
            spec,
            max_loras=config.max_loras,
            max_lora_rank=config.max_lora_rank,
            runtime=config.runtime_adapters,
        )
        self._adapters = AdapterLoader(spec.id, self._lora, self._send)
        policy = RESTARTS if config.engine_restart == "restart" else RestartPolicy(restart=False)
        self._process = Supervisor(
            f"vllm for {spec.id}",
            str(spec.weights),
            self._launch,
            self._probe,
            self._read_properties,
            log=log,
            show_output=config.engine_log,
            start_timeout=config.engine_start_timeout,
            policy=policy,
            on_fatal=config.on_fatal,
            install_hint=_HINT,
        )

    # lifecycle

    async def start(self) -> None:
        await asyncio.to_thread(self._lora.check_static)  # before minutes of model loading
        # no proxies from the environment: every request goes to 127.0.0.1
        self._http = httpx.AsyncClient(
            timeout=httpx.Timeout(30.0, read=None),
            limits=httpx.Limits(
                max_connections=None, max_keepalive_connections=64, keepalive_expiry=POOL_IDLE
            ),
            trust_env=False,
        )
        hashing = asyncio.create_task(asyncio.to_thread(weight_files, self.spec.weights))
        try:
            await self._process.start()
            self._files = await hashing
            self._vocab = await asyncio.to_thread(vocab_size, self.spec.weights)
        except BaseException as exc:
            hashing.cancel()
            await self.stop()
            if isinstance(exc, OSError):
                raise ModelLoadError(f"{self.spec.weights}: cannot read: {exc}") from exc
            raise
        log.info("vllm %s serves %s on 127.0.0.1:%d", self._version, self.spec.id, self._port)
        await self._warm_up()

    async def stop(self) -> None:
        self._adapters.cancel()
        await self._process.stop()
        if self._http is not None:
            await self._http.aclose()
            self._http = None

    async def _warm_up(self) -> None:
        """One real request of the model's first kind: readiness depends on it."""
        if Task.CHAT in self.spec.tasks or Task.COMPLETION in self.spec.tasks:
            request = GenerateRequest("warmup", SamplingParams(max_tokens=1), prompt="Hello")
            async for _ in self.generate(request):
                pass
        elif Task.RERANK in self.spec.tasks:
            await self.rank(RankRequest("warmup", "warm up", ("a warm-up passage",)))
        else:
            await self.embed(EmbedRequest("warmup", ("warm up",)))

    async def health(self) -> bool:
        return self._process.up and await self._probe()

    async def cache_usage(self) -> float | None:
        if not self._process.up or self._http is None:
            return None
        try:
            response = await self._http.get(self._url("/metrics"), timeout=5.0)
            families = list(text_string_to_metric_families(response.text))
        except (httpx.HTTPError, ValueError):
            return None
        values = [
            float(sample.value)
            for family in families
            for sample in family.samples
            if sample.name in _CACHE_GAUGES
            and sample.labels.get("model_name", self.spec.id) == self.spec.id
        ]
        # several engines (data parallel) each report their own: the fullest one counts
        return min(1.0, max(0.0, max(values))) if values else None

    def info(self) -> EngineInfo:
        return EngineInfo(
            engine="vllm",
            engine_version=self._version,
            tasks=self.spec.tasks,
            context_length=self._context_length,
            supports_logprobs=True,
            files=self._files,
            renders_tools="tools" in self._config.chat_template
            if self._config.chat_template
            else template_shows_tools(self.spec.weights),
        )

    # requests

    async def prompt_tokens(self, request: GenerateRequest, fits: int) -> int:
        if isinstance(request.prompt, tuple):
            return len(request.prompt)  # token ids go to vLLM as they are
        bound = self._bound(request)
        if bound <= fits:
            return bound
        chat = request if request.messages is not None else None
        # vLLM's defaults: a chat template writes the special tokens itself
        counted = TokenizeRequest(request.prompt, chat, add_special_tokens=chat is None)
        return len((await self.tokenize(counted)).ids)

    def _bound(self, request: GenerateRequest) -> int:
        """An upper bound of the prompt's tokens: each token covers at least a byte of text;
        the chat template's own tokens fit in the slack. Saves a /tokenize round trip for
        most requests; a prompt that still does not fit is refused by vLLM itself
        (ContextLengthExceeded all the same)."""
        if isinstance(request.prompt, tuple):
            return len(request.prompt)
        if request.messages is None:
            return len((request.prompt or "").encode()) + _TEMPLATE_SLACK
        return _TEMPLATE_SLACK + sum(
            len(m.content.encode()) + len((m.name or "").encode()) + _MESSAGE_SLACK
            for m in request.messages
        )

    def generate(self, request: GenerateRequest) -> AsyncGenerator[GenerationChunk, None]:
        if request.adapter is None:  # no generator in between for the base model
            return self._generate(request, self.spec.id)
        return self._generate_with_adapter(request, request.adapter)

    async def _generate_with_adapter(
        self, request: GenerateRequest, name: str
    ) -> AsyncGenerator[GenerationChunk, None]:
        version = self._adapters.acquire(name)
        try:
            async with contextlib.aclosing(self._generate(request, version.vllm_name)) as chunks:
                async for chunk in chunks:
                    yield chunk
        finally:
            self._adapters.release(version)

    async def _generate(
        self, request: GenerateRequest, model: str
    ) -> AsyncGenerator[GenerationChunk, None]:
        client = self._ready_client()
        chat = request.messages is not None
        body = {**request_body(request), "model": model, **sampling_fields(request.params)}
        if request.params.seed is not None:
            body["seed"] = request.params.seed  # vLLM takes any int (llama.cpp: uint32)
        if request.echo:  # vLLM scores the prompt itself (max_tokens 0: only that)
            body["echo"] = True
        wrap = ("", "")
        if request.constraint is not None:
            fields, wrap = structured_fields(request.constraint)
            body.update(fields)
        if request.tools:  # the template shows them; nimble reads the calls from the text
            body.update(tools=[tool_json(tool) for tool in request.tools], tool_choice="none")
        path = "/v1/chat/completions" if chat else "/v1/completions"
        # with continuous usage vLLM's chunks each carry the usage so far
        mapper = ChunkMapper(request, usage_per_chunk=request.params.continuous_usage)
        param = "messages" if chat else "prompt"
        done = False
        opened: set[int] = set()
        try:
            async with client.stream(
                "POST", self._url(path), json=body, headers=self._auth()
            ) as response:
                if response.status_code != 200:
                    raise error_of(response.status_code, _json(await response.aread()), param)
                async for line in response.aiter_lines():
                    if not line.startswith("data:"):
                        continue
                    data = line[5:].strip()
                    if data == "[DONE]":
                        done = True
                        break
                    payload = orjson.loads(data)
                    if is_error(payload):
                        raise error_of(200, payload, param)
                    if not chat:
                        choices = payload.get("choices") or ()
                        payload["choices"] = [chat_logprobs(choice) for choice in choices]
                    for chunk in mapper.map(payload):
                        for piece in wrapped(chunk, wrap, opened):
                            yield piece
        except httpx.ConnectError as exc:  # nothing listens: the engine is down
            raise self._unavailable() from exc
        except (httpx.HTTPError, orjson.JSONDecodeError) as exc:
            raise EngineError(f"vllm ({self.spec.id}): connection lost: {exc!r}") from exc
        if not done:
            raise EngineError(f"vllm ({self.spec.id}): the stream ended before [DONE]")
        yield GenerationChunk(usage=mapper.usage())

    def vocab_size(self) -> int | None:
        return self._vocab

    async def tokenize(self, request: TokenizeRequest) -> Tokens:
        """vLLM's own /tokenize (the chat template and the tools as its chat completion
        renders them)."""
        body: Json = {"model": self.spec.id, "add_special_tokens": request.add_special_tokens}
        chat = request.chat
        if chat is not None:
            body["messages"] = message_dicts(chat.messages or ())
            body["add_generation_prompt"] = request.add_generation_prompt
            body["continue_final_message"] = request.continue_final_message
            if chat.tools:
                body["tools"] = [tool_json(tool) for tool in chat.tools]
        else:
            body["prompt"] = request.prompt or ""
        param = "messages" if chat is not None else "prompt"
        answer = await self._post("/tokenize", {**body, "return_token_strs": True}, param)
        ids = tuple(int(i) for i in answer["tokens"])
        pieces = answer.get("token_strs") or [""] * len(ids)
        return Tokens(ids, tuple(str(p) for p in pieces))

    async def detokenize(self, ids: tuple[int, ...]) -> str:
        body = {"model": self.spec.id, "tokens": list(ids)}
        return str((await self._post("/detokenize", body, "tokens"))["prompt"])

    async def rank(self, request: RankRequest) -> RankResult:
        """A cross-encoder served by vLLM (a `…ForSequenceClassification` model with one
        label): its score API, asked for raw logits. The switch was `activation` (vLLM
        0.10-0.11) and is `use_activation` now (0.26); each version ignores the other's name
        as an unknown field, so both are sent."""
        body: Json = {
            "model": self.spec.id,
            "text_1": request.query,
            "text_2": list(request.documents),
            "activation": False,
            "use_activation": False,
        }
        if request.truncate == "END":
            body["truncate_prompt_tokens"] = -1  # cut at the model's window
        answer = await self._post("/v1/score", body, "passages")
        rows = sorted(answer["data"], key=lambda row: int(row["index"]))
        return RankResult(
            tuple(float(row["score"]) for row in rows), int(answer["usage"]["prompt_tokens"])
        )

    async def embed(self, request: EmbedRequest) -> EmbedResult:
        body: Json = {"model": self.spec.id, "input": [_input(item) for item in request.inputs]}
        if request.truncate == "START":
            raise UnsupportedParameter(
                "the vllm engine truncates at the end only (truncate START)", param="truncate"
            )
        if request.truncate == "END":
            body["truncate_prompt_tokens"] = -1  # cut at the model's window
        answer = await self._post("/v1/embeddings", body, "input")
        rows = sorted(answer["data"], key=lambda row: int(row["index"]))
        vectors = tuple(tuple(float(v) for v in row["embedding"]) for row in rows)
        return EmbedResult(vectors, int(answer["usage"]["prompt_tokens"]))

    # LoRA adapters (AdapterHost)

    async def load_adapter(self, adapter: AdapterSpec) -> None:
        await self._adapters.load(adapter)

    async def unload_adapter(self, name: str) -> None:
        await self._adapters.unload(name)

    # the process (called by the supervisor)

    def _launch(self) -> Launch:
        self._port = _free_port()
        spec, config = self.spec, self._config
        args = [str(spec.weights), "--host", "127.0.0.1", "--port", str(self._port)]
        args += ["--served-model-name", spec.id]
        args += serve_args(spec, config.context_length, config.batch_size(spec))
        if config.chat_template:  # vLLM takes the template text itself, too
            args += ["--chat-template", config.chat_template]
        args += self._lora.args()
        env = {"VLLM_API_KEY": self._key, **gpu_env(spec), **self._lora.env(), **SERVER_IDLE}
        return Launch([*self._command, *args], env)

    async def _probe(self) -> bool:
        if self._http is None:
            return False
        try:
            response = await self._http.get(self._url("/health"), timeout=5.0)
        except httpx.HTTPError:
            return False
        return response.status_code == 200

    async def _read_properties(self) -> None:
        client = self._client()
        with contextlib.suppress(httpx.HTTPError, ValueError, AttributeError):
            version = await client.get(self._url("/version"), headers=self._auth())
            self._version = str(version.json().get("version", ""))
        with contextlib.suppress(httpx.HTTPError, ValueError, AttributeError, TypeError):
            models = await client.get(self._url("/v1/models"), headers=self._auth())
            for entry in models.json().get("data", []):
                if entry.get("id") == self.spec.id and entry.get("max_model_len"):
                    self._context_length = int(entry["max_model_len"])
        if not self._context_length:
            self._context_length = self._config.context_length or self.spec.context_length or 0
        await self._adapters.reload()

    # helpers

    def _client(self) -> httpx.AsyncClient:
        if self._http is None:
            raise Unavailable(f"model {self.spec.id} is not loaded")
        return self._http

    def _ready_client(self) -> httpx.AsyncClient:
        if not self._process.up:
            raise self._unavailable()
        return self._client()

    def _url(self, path: str) -> str:
        return f"http://127.0.0.1:{self._port}{path}"

    def _auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self._key}"}

    def _unavailable(self) -> Unavailable:
        state = self._process.state
        if state in (State.RESTARTING, State.UP):  # UP: it died a moment ago
            return Unavailable(f"model {self.spec.id}: the vllm engine is restarting")
        if state is State.FAILED:
            return Unavailable(f"model {self.spec.id}: the vllm engine died (not restarted)")
        return Unavailable(f"model {self.spec.id}: the vllm engine is not running")

    async def _send(self, path: str, body: Json, ready: bool = True) -> tuple[int, object]:
        """One POST to vLLM: its status and decoded body (plain text, as vLLM's LoRA
        endpoints answer on success, comes as `{"message": ...}`). `ready`: refused while
        the engine is down; False while it starts (the adapters loaded again)."""
        client = self._ready_client() if ready else self._client()
        try:
            response = await client.post(self._url(path), json=body, headers=self._auth())
        except httpx.ConnectError as exc:
            raise self._unavailable() from exc
        except httpx.HTTPError as exc:
            raise EngineError(f"vllm ({self.spec.id}): {exc!r}") from exc
        return response.status_code, _json(response.content)

    async def _post(self, path: str, body: Json, param: str) -> Json:
        """A JSON answer from vLLM; its refusal as nimble's error, naming `param`."""
        status, payload = await self._send(path, body)
        if status != 200 or not isinstance(payload, dict):
            error = error_of(status, payload, param)
            if isinstance(error, InvalidRequest) and error.param is None:
                error.param = param  # the field nimble forwarded (vLLM's 400s name none)
            raise error
        return payload


def wrapped(
    chunk: GenerationChunk, wrap: tuple[str, str], opened: set[int]
) -> list[GenerationChunk]:
    """The chunk with `wrap`'s opening text before a choice's first text and its closing
    text before the choice's finish."""
    begin, end = wrap
    if not begin and not end:
        return [chunk]
    out = []
    if chunk.index not in opened and (chunk.text or chunk.finish_reason is not None):
        opened.add(chunk.index)
        out.append(GenerationChunk(index=chunk.index, text=begin))
    if chunk.finish_reason is not None:
        if chunk.text or chunk.logprobs:
            out.append(dataclasses.replace(chunk, finish_reason=None))
        out.append(GenerationChunk(index=chunk.index, text=end))
        out.append(
            GenerationChunk(
                index=chunk.index,
                finish_reason=chunk.finish_reason,
                stop_sequence=chunk.stop_sequence,
            )
        )
        return out
    return [*out, chunk]


def _input(item: str | tuple[int, ...]) -> str | list[int]:
    return item if isinstance(item, str) else list(item)


def _json(content: bytes) -> object:
    try:
        return orjson.loads(content)
    except orjson.JSONDecodeError:
        return {"message": content.decode(errors="replace")[:300]}


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])
