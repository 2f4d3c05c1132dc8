"""vLLM engine: nimble supervises a `vllm serve` process and talks to it over loopback HTTP.

How it works
- `start()` launches `engine_command` (default `vllm serve`) with the model folder, a free
  loopback port, the served name and the profile's settings as vLLM flags (`wire.py`).
  A random API key reaches it through `VLLM_API_KEY` (never argv, so `ps` does not show
  it), and `VLLM_HTTP_TIMEOUT_KEEP_ALIVE` keeps its idle connections open well past the
  POOL_IDLE seconds nimble's pool (`client.py`) keeps them: with vLLM's 5 s against
  httpx's 5 s, a connection vLLM closes as nimble reuses it fails that request. Its output
  goes to nimble's log (every line with `engine_log`; the last lines are kept for error
  messages). `/health` is polled, with a progress line every 10 s: loading a large model
  takes minutes. A process that exits while starting, or a start beyond
  `engine_start_timeout`, is a ModelLoadError with the exit code and the last lines. The
  weight files are hashed in a thread meanwhile.
- Requests go to vLLM's OpenAI API, always streamed (`openai_wire` builds the same body
  and maps the same chunk format); rerank and embeddings go to its score and embeddings
  APIs (`encoders.py`). Closing the generator closes the HTTP stream, which makes vLLM
  abort the request. vLLM's 400s become InvalidRequest (context-length messages
  ContextLengthExceeded); a lost connection or a 5xx becomes EngineError.
- Supervision (`supervisor.py`): with `engine_restart == "restart"` a dead engine is restarted
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
from collections.abc import AsyncGenerator

import httpx
import orjson
from prometheus_client.parser import text_string_to_metric_families

from nimble.engines.config import EngineConfig
from nimble.engines.openai_wire import ChunkMapper, Json, message_dicts, request_body
from nimble.engines.vllm.client import VllmClient, decoded
from nimble.engines.vllm.encoders import embeddings, score
from nimble.engines.vllm.loading import AdapterLoader
from nimble.engines.vllm.lora import VllmAdapters
from nimble.engines.vllm.supervisor import Launch, RestartPolicy, Supervisor
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
from nimble.engines.vllm.wrapping import wrapped
from nimble.errors import EngineError, ModelLoadError
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
SERVER_IDLE = {"VLLM_HTTP_TIMEOUT_KEEP_ALIVE": "60"}  # vLLM's side: far longer (its default: 5)
_TEMPLATE_SLACK, _MESSAGE_SLACK = 256, 16  # tokens a chat template may add (prompt_tokens_bound)
_HINT = "pip install 'nimble[gpu]' (vLLM, on a machine with an NVIDIA GPU)"


class VllmEngine:
    """One model served by a supervised vLLM server process."""

    def __init__(self, spec: ModelSpec, config: EngineConfig):
        self.spec = spec
        self._config = config
        self._command = tuple(config.engine_command or ("vllm", "serve"))
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
        self._client = VllmClient(spec.id, self._process)
        self._adapters = AdapterLoader(spec.id, self._lora, self._client.send)

    # lifecycle

    async def start(self) -> None:
        await asyncio.to_thread(self._lora.check_static)  # before minutes of model loading
        self._client.open()
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
        log.info(
            "vllm %s serves %s on 127.0.0.1:%d", self._version, self.spec.id, self._client.port
        )
        await self._warm_up()

    async def stop(self) -> None:
        self._adapters.cancel()
        await self._process.stop()
        await self._client.close()

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
        http = self._client.http
        if not self._process.up or http is None:
            return None
        try:
            response = await http.get(self._client.url("/metrics"), timeout=5.0)
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
        client = self._client.ready()
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
                "POST", self._client.url(path), json=body, headers=self._client.auth()
            ) as response:
                if response.status_code != 200:
                    raise error_of(response.status_code, decoded(await response.aread()), param)
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
            raise self._client.unavailable() from exc
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
        answer = await self._client.post("/tokenize", {**body, "return_token_strs": True}, param)
        ids = tuple(int(i) for i in answer["tokens"])
        pieces = answer.get("token_strs") or [""] * len(ids)
        return Tokens(ids, tuple(str(p) for p in pieces))

    async def detokenize(self, ids: tuple[int, ...]) -> str:
        body = {"model": self.spec.id, "tokens": list(ids)}
        return str((await self._client.post("/detokenize", body, "tokens"))["prompt"])

    async def rank(self, request: RankRequest) -> RankResult:
        return await score(self._client, self.spec.id, request)

    async def embed(self, request: EmbedRequest) -> EmbedResult:
        return await embeddings(self._client, self.spec.id, request)

    # LoRA adapters (AdapterHost)

    async def load_adapter(self, adapter: AdapterSpec) -> None:
        await self._adapters.load(adapter)

    async def unload_adapter(self, name: str) -> None:
        await self._adapters.unload(name)

    # the process (called by the supervisor)

    def _launch(self) -> Launch:
        port = self._client.new_port()
        spec, config = self.spec, self._config
        args = [str(spec.weights), "--host", "127.0.0.1", "--port", str(port)]
        args += ["--served-model-name", spec.id]
        args += serve_args(spec, config.context_length, config.batch_size(spec))
        if config.chat_template:  # vLLM takes the template text itself, too
            args += ["--chat-template", config.chat_template]
        args += self._lora.args()
        env = {"VLLM_API_KEY": self._client.key, **gpu_env(spec), **self._lora.env(), **SERVER_IDLE}
        return Launch([*self._command, *args], env)

    async def _probe(self) -> bool:
        return await self._client.probe()

    async def _read_properties(self) -> None:
        client = self._client.opened()
        with contextlib.suppress(httpx.HTTPError, ValueError, AttributeError):
            version = await client.get(self._client.url("/version"), headers=self._client.auth())
            self._version = str(version.json().get("version", ""))
        with contextlib.suppress(httpx.HTTPError, ValueError, AttributeError, TypeError):
            models = await client.get(self._client.url("/v1/models"), headers=self._client.auth())
            for entry in models.json().get("data", []):
                if entry.get("id") == self.spec.id and entry.get("max_model_len"):
                    self._context_length = int(entry["max_model_len"])
        if not self._context_length:
            self._context_length = self._config.context_length or self.spec.context_length or 0
        await self._adapters.reload()
