"""llama.cpp engine: GGUF models in-process through the prebuilt `xllamacpp` wheel.

How it works
- `xllamacpp.Server` runs llama.cpp's own server (continuous batching, one slot per running
  sequence) inside this process. `handle_chat_completions` / `handle_completions` block
  their calling thread (the GIL is released) and hand each OpenAI-format chunk to a
  callback; a callback that returns True cancels the task in llama.cpp. Every generation
  runs streamed on this engine's own thread pool and its chunks cross to the event loop
  with `call_soon_threadsafe`, so closing the async iterator stops llama.cpp within a token
  (`tasks.py`, `stream.py`).
- The KV cache gives each slot its own full window (`n_ctx = context_length * slots`,
  not unified). A unified cache of `context_length` cells would let one request use the
  whole window too, but concurrent long generations then overflow it together and llama.cpp
  fails all of them ("Context size has been exceeded"). The price is memory: one window
  per slot, as in Ollama's OLLAMA_NUM_PARALLEL.
- A request with `n > 1` takes `n` slots; llama.cpp refuses `n` above the slots.
- Sampling: OpenAI's fields, and vLLM's extensions in llama.cpp's names; stop_token_ids
  and kept stop strings are done on the stream (`sampling.py`, which says what is refused).
- The Server also opens llama.cpp's HTTP listener on 127.0.0.1, locked with a key that never
  leaves this object, for what the in-process calls lack (`loopback.py`; the tokenizer's
  routes: `tokenizer.py`). The web UI and llama.cpp's own `/metrics` are switched off.

Signals: llama.cpp's init installs its own SIGINT/SIGTERM handlers with `sigaction`
(they stop its main loop, and a second signal calls `exit(1)`), replacing Python's for
the whole process. They are installed before `start()` returns (llama.cpp does it just
before it reports the model loaded), so the owner of the process can re-install its own
handlers right after `start()` with no race; nothing here holds on to or re-installs
llama.cpp's. If llama.cpp's loop is ever stopped that way, `health()` turns False.

LoRA adapters (`adapters.py`): loaded with the server, applied per request through
llama.cpp's `lora` field; loading or unloading one at run time swaps in a new server.

Logs: llama.cpp writes to stderr. Only its errors are shown (verbosity 1), unless
`EngineConfig.engine_log` is set (verbosity 3: llama.cpp's info lines).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import secrets
from collections.abc import AsyncGenerator, Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import xllamacpp

from nimble.engines.config import EngineConfig
from nimble.engines.llamacpp import adapters, launch, loopback
from nimble.engines.llamacpp.echo import Model as ScoringModel
from nimble.engines.llamacpp.echo import echoed
from nimble.engines.llamacpp.gguf import GgufLayout, read_gguf_summary
from nimble.engines.llamacpp.lazy_calls import text_then_calls
from nimble.engines.llamacpp.sampling import (
    Cutter,
    needs_cutter,
    refuse_unsupported,
    sampling_fields,
)
from nimble.engines.llamacpp.stream import END, Stream
from nimble.engines.llamacpp.tasks import Tasks, payload_of
from nimble.engines.llamacpp.tokenizer import ServerTokenizer, prompt_bound
from nimble.engines.openai_wire import (
    ChunkMapper,
    Json,
    constraint_fields,
    request_body,
    template_body,
)
from nimble.errors import (
    EngineError,
    ModelLoadError,
    Unavailable,
)
from nimble.models.adapters import AdapterSpec
from nimble.models.files import sha256_of
from nimble.models.spec import ModelSpec
from nimble.types import (
    EngineInfo,
    GenerateRequest,
    GenerationChunk,
    ModelFile,
    SamplingParams,
    TokenizeRequest,
    Tokens,
    ToolCallConstraint,
)

_EXTRA_THREADS = 4  # pool headroom: aborted generations finish their current token


class LlamaCppEngine:
    """One GGUF model served by llama.cpp in this process."""

    def __init__(self, spec: ModelSpec, config: EngineConfig):
        self.spec = spec
        self._config = config
        self._server: Any = None  # xllamacpp.Server
        self._http: httpx.AsyncClient | None = None
        self._pool: ThreadPoolExecutor | None = None
        self._tasks = Tasks(spec.id, self._submit)
        self._tokenizer = ServerTokenizer(self._post)
        self._context_length = 0
        self._files: tuple[ModelFile, ...] = ()
        self._build = ""
        self._template_cost: tuple[int, int] | None = None
        self._renders_tools = False
        self._vocab: int | None = None
        self._loras = adapters.LoraTable()  # the current server's adapters
        self._params: tuple[int, str] = (0, "")  # the window and the listener's key
        self._swapping = asyncio.Lock()
        self._layout: GgufLayout | None = None  # the model's tensor shapes, read once
        self._retiring: set[asyncio.Task[None]] = set()

    # lifecycle

    async def start(self) -> None:
        if self._server is not None:
            return
        path = self.spec.weights
        summary = await asyncio.to_thread(read_gguf_summary, path)
        window = launch.window(self.spec, self._config, summary)
        secret = secrets.token_urlsafe(32)
        if self.spec.adapters:
            layout = await self._model_layout()
            self._loras = adapters.static_table(self.spec.adapters, layout)
        params = launch.server_params(self.spec, self._config, window, secret)
        self._loras.apply(params)
        self._params = (window, secret)
        gathered = await asyncio.gather(
            asyncio.to_thread(launch.load, params, path),
            asyncio.to_thread(sha256_of, path),
            return_exceptions=True,
        )
        results: list[Any] = list(gathered)
        del gathered
        failure = next((r for r in results if isinstance(r, BaseException)), None)
        if failure is not None:
            await asyncio.to_thread(launch.release, results, None)  # frees a server that did load
            raise launch.load_failure(path, failure)
        self._server, digest = results
        self._pool = self._new_pool()
        self._http = loopback.client(self._server, secret)
        self._files = (ModelFile(str(path), digest, path.stat().st_size),)
        await self._read_props(window)
        await self._warm_up()

    async def stop(self) -> None:
        server, pool, http = self._server, self._pool, self._http
        self._server, self._pool, self._http = None, None, None
        self._tasks.cancel_all()
        if http is not None:
            await http.aclose()
        if server is not None:
            box = [server]
            del server
            await asyncio.to_thread(launch.release, box, pool)
        for task in list(self._retiring):
            await task  # its generations were cancelled above

    def _new_pool(self) -> ThreadPoolExecutor:
        threads = launch.slots(self.spec, self._config) + _EXTRA_THREADS
        return ThreadPoolExecutor(threads, thread_name_prefix="llamacpp")

    # adapters (`adapters.py`)

    async def load_adapter(self, adapter: AdapterSpec) -> None:
        layout = await self._model_layout()
        await asyncio.to_thread(adapters.check_adapter, adapter, layout)
        await self._swap(lambda table: table.with_adapter(adapter), adapter.name)

    async def _model_layout(self) -> GgufLayout:
        if self._layout is None:
            self._layout = await asyncio.to_thread(adapters.model_layout, self.spec.weights)
        return self._layout

    async def unload_adapter(self, name: str) -> None:
        await self._swap(lambda table: table.without(name))

    async def _swap(
        self,
        change: Callable[[adapters.LoraTable], adapters.LoraTable],
        loaded: str | None = None,
    ) -> None:
        """A new server with the changed adapter list takes the new requests; the old one
        is freed once its generations have ended (`adapters.py` says what this costs)."""
        async with self._swapping:
            if self._server is None:
                raise Unavailable(f"model {self.spec.id} is not loaded")
            table = change(self._loras)
            if table == self._loras:
                return
            window, secret = self._params
            params = launch.server_params(self.spec, self._config, window, secret)
            table.apply(params)
            server = await asyncio.to_thread(launch.load, params, self.spec.weights)
            try:
                await asyncio.to_thread(adapters.warm, server, table, loaded)
            except BaseException:
                await asyncio.to_thread(launch.release, [server], None)
                raise
            if self._server is None:  # stopped meanwhile
                await asyncio.to_thread(launch.release, [server], None)
                raise Unavailable(f"model {self.spec.id} was stopped")
            old = ([self._server], self._pool, self._http)
            self._server, self._pool = server, self._new_pool()
            self._http = loopback.client(server, secret)
            self._loras = table
            del server
            box, pool, http = old
            assert pool is not None and http is not None
            task = asyncio.create_task(adapters.retire(box, pool, http), name="llamacpp retire")
            self._retiring.add(task)
            task.add_done_callback(self._retiring.discard)

    async def _warm_up(self) -> None:
        """One real generation (readiness depends on it), then the template's cost."""
        request = GenerateRequest(
            request_id="warmup", prompt="Hello", params=SamplingParams(max_tokens=1)
        )
        async for _ in self.generate(request):
            pass
        self._template_cost = await self._tokenizer.template_cost()

    async def health(self) -> bool:
        if self._server is None or self._http is None:
            return False
        return await loopback.healthy(self._http)

    async def cache_usage(self) -> float | None:
        if self._http is None:
            return None
        return await loopback.cache_usage(self._http)

    def info(self) -> EngineInfo:
        extra = {"llama_cpp_build": self._build} if self._build else {}
        return EngineInfo(
            engine="llamacpp",
            engine_version=xllamacpp.__version__,
            tasks=self.spec.tasks,
            context_length=self._context_length,
            supports_logprobs=True,
            files=self._files,
            renders_tools=self._renders_tools,
            extra=extra,
        )

    # requests

    async def prompt_tokens(self, request: GenerateRequest, fits: int) -> int:
        if isinstance(request.prompt, tuple):
            return len(request.prompt)  # token ids go to llama.cpp as they are
        bound = self._bound(request)
        if bound is not None and bound <= fits:
            return bound
        return await self._tokenizer.exact(request)

    def vocab_size(self) -> int | None:
        return self._vocab

    async def tokenize(self, request: TokenizeRequest) -> Tokens:
        return await self._tokenizer.tokenize(request)

    async def detokenize(self, ids: tuple[int, ...]) -> str:
        return await self._tokenizer.detokenize(ids)

    def _bound(self, request: GenerateRequest) -> int | None:
        return prompt_bound(request, self._template_cost)

    async def generate(self, request: GenerateRequest) -> AsyncGenerator[GenerationChunk, None]:
        if request.echo:
            chunks = echoed(request, self._tokenizer, self._scoring, self.generate)
            async with contextlib.aclosing(chunks):
                async for chunk in chunks:
                    yield chunk
            return
        refuse_unsupported(request.params)
        prompt = None
        rendered = request.tools or request.constraint is not None or needs_cutter(request.params)
        if request.messages is not None and rendered:
            # rendered here and sent as a completion: llama.cpp's chat path would apply its
            # own tool handling and grammar over ours, and its stream does not say which
            # choice a usage belongs to (the Cutter needs it)
            prompt = str((await self._post("/apply-template", template_body(request)))["prompt"])
        constraint = request.constraint
        if isinstance(constraint, ToolCallConstraint) and constraint.lazy and prompt is not None:
            chunks = text_then_calls(request, prompt, constraint, self._run, self._tokenizer.count)
            async with contextlib.aclosing(chunks):
                async for chunk in chunks:
                    yield chunk
            return
        mapper = ChunkMapper(request)
        async for chunk in self._run(request, prompt, mapper):
            yield chunk
        yield GenerationChunk(usage=mapper.usage())

    async def _scoring(self, adapter: str | None) -> ScoringModel:
        """What `echo.py` needs to score a prompt on this model."""
        if self._vocab is None:
            raise EngineError(f"model {self.spec.id}: llama.cpp did not say its vocabulary's size")
        payloads = functools.partial(self._tasks.payloads, chat=False, adapter=adapter)
        tokenizer = self._tokenizer
        return ScoringModel(payloads, tokenizer.texts, self._vocab, tokenizer.plain_token)

    async def _run(
        self, request: GenerateRequest, prompt: str | None, mapper: ChunkMapper
    ) -> AsyncGenerator[GenerationChunk, None]:
        """One llama.cpp generation's chunks (its usage goes to `mapper`). With
        stop_token_ids or kept stop strings, a `Cutter` ends the choices, and the
        generation once they all ended (`sampling.py`)."""
        body = request_body(request, prompt)
        body.update(sampling_fields(request.params, self._vocab, self._context_length))
        if request.params.stop:  # the last chunk then names the stop string that ended it
            body["verbose"] = True
        if request.constraint is not None:
            body.update(constraint_fields(request.constraint, _to_grammar))
        cutter = Cutter(request.params) if needs_cutter(request.params) else None
        chat = request.messages is not None and prompt is None
        # the task's stream is read here, not through `Tasks.payloads`: one generator less to
        # resume per token
        stream = self._tasks.open(body, chat, request.adapter)
        try:
            while (item := await stream.get()) is not END:
                payload = payload_of(item)
                if cutter is not None:
                    rewritten = cutter.rewrite(payload)
                    if rewritten is None:
                        continue  # a choice that ended here
                    payload = rewritten
                for chunk in mapper.map(payload):
                    yield chunk
                if cutter is not None and cutter.done:
                    break  # closing the stream cancels what llama.cpp still generates
            else:
                self._tasks.check_stopped(stream)
        finally:
            self._tasks.close(stream)

    # helpers

    def _submit(self, stream: Stream, body: Json, chat: bool, adapter: str | None) -> None:
        """Start a task on the current server (it stays there, with that server's adapter
        ids, even if a swap replaces the server meanwhile)."""
        # no local reference to the server: stop() must be able to free it
        if self._server is None or self._pool is None:
            raise Unavailable(f"model {self.spec.id} is not loaded")
        lora = self._loras.field(adapter)
        if lora is not None:
            body = {**body, "lora": lora}
        server = self._server
        handler = server.handle_chat_completions if chat else server.handle_completions
        try:
            self._pool.submit(stream.run, handler, body)
        except RuntimeError as exc:  # the pool was shut down by stop()
            raise Unavailable(f"model {self.spec.id} is stopping") from exc

    async def _read_props(self, window: int) -> None:
        try:
            props = await self._get("/props")
        except (EngineError, KeyError, TypeError, ValueError) as exc:
            await self.stop()
            raise ModelLoadError(f"{self.spec.weights}: llama.cpp loaded it but {exc}") from exc
        self._context_length = min(window, int(props["default_generation_settings"]["n_ctx"]))
        self._build = str(props.get("build_info", ""))
        # a Python dict's repr in this build ("{'supports_tools': True, ...}")
        self._renders_tools = "'supports_tools': True" in str(props.get("chat_template_caps"))
        with contextlib.suppress(EngineError, LookupError, TypeError, ValueError):
            models = await self._get("/v1/models")  # `meta` has the vocabulary's size
            self._vocab = int(models["data"][0]["meta"]["n_vocab"])

    async def _get(self, route: str) -> Json:
        return await loopback.get(self._client(), route)

    async def _post(self, route: str, body: Json) -> Json:
        return await loopback.post(self._client(), route, body)

    def _client(self) -> httpx.AsyncClient:
        if self._http is None:
            raise Unavailable(f"model {self.spec.id} is not loaded")
        return self._http


def _to_grammar(schema: str) -> str:
    """llama.cpp's own JSON-schema-to-GBNF conversion (the one its `json_schema` uses)."""
    return str(xllamacpp.json_schema_to_grammar(schema))
