"""Models in memory, their lifecycle, and the request path from validated input to engine."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import time
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

from nimble.engines import Engine, EngineConfig, create_engine, loads_first
from nimble.errors import (
    InvalidRequest,
    ModelLoadError,
    ModelNotFound,
    Unavailable,
)
from nimble.guardrails.config import GuardrailsConfig
from nimble.guardrails.guard_formats import guard_format
from nimble.guardrails.stage import Guardrails
from nimble.models import ModelSpec
from nimble.observability.metrics import ModelGauges
from nimble.observability.record import RequestRecord, current_record
from nimble.runtime import aggregate, encoders, generation, moderation, tokens
from nimble.runtime.adapter_watch import AdapterWatcher
from nimble.runtime.adapters import GENERATIVE, Adapters
from nimble.runtime.admission import Admission
from nimble.runtime.rail_models import ServedModels
from nimble.runtime.reasoning import reasoning_format
from nimble.runtime.response_store import ResponseStore
from nimble.runtime.served import ServedModel
from nimble.runtime.tools import tool_format
from nimble.types import (
    ClassifyRequest,
    ClassifyResult,
    EmbedRequest,
    EmbedResult,
    GenerateRequest,
    GenerationChunk,
    Moderation,
    RankRequest,
    RankResult,
    Task,
    TokenizeRequest,
    Tokens,
)

log = logging.getLogger("nimble.runtime")

GAUGE_REFRESH_S = 1.0  # an engine's KV cache use is asked at most this often


class ServiceState(StrEnum):
    STARTING = "starting"
    READY = "ready"
    DRAINING = "draining"
    FAILED = "failed"
    STOPPED = "stopped"


@dataclass(frozen=True)
class RuntimeConfig:
    engine: EngineConfig
    max_running: int | None = None  # None: the engine's batch size for each model
    max_waiting: int = 64
    max_queue_wait: float = 15.0  # seconds a request may wait for a running slot
    max_n: int = 8
    max_rank_documents: int = 1000
    log_prompts: bool = False
    tool_parser: str | None = None  # overrides every model profile's parser
    reasoning_parser: str | None = None  # overrides every model profile's (`none`: off)
    responses_max_stored: int = 1000
    lora_dir: Path | None = None  # watched for adapters (`adapter_watch.py`)
    lora_poll_interval: float = 5.0  # 0: read at start only
    guardrails: GuardrailsConfig | None = None  # rails on the input and output (`guardrails/`)


EngineFactory = Callable[[ModelSpec, EngineConfig], Engine]


def _running_bound(spec: ModelSpec, config: RuntimeConfig) -> int:
    """Requests admitted at once: `max_running`, else as many as the engine runs at once
    (vLLM's max_num_seqs, llama.cpp's slots), so that admission never starves the engine.
    An embedding model (a classifier) batches across requests: let a whole batch in at once."""
    engine = config.engine
    bound = config.max_running or engine.batch_size(spec) or engine.max_running
    if spec.tasks in ({Task.EMBEDDING}, {Task.CLASSIFY}):
        return max(bound, engine.embed_batch_size)
    return bound


class Runtime:
    """Library entry point: works in-process with no HTTP."""

    def __init__(
        self,
        specs: list[ModelSpec],
        config: RuntimeConfig,
        engine_factory: EngineFactory = create_engine,
    ):
        ids = [spec.id for spec in specs]
        duplicates = {i for i in ids if ids.count(i) > 1}
        if duplicates:
            raise ModelLoadError(f"two models are served under the same name: {duplicates}")
        for spec in specs:  # an unknown tool_parser stops the start, not a request
            tool_format(config.tool_parser or spec.options.get("tool_parser"))
            reasoning_format(config.reasoning_parser or spec.options.get("reasoning_parser"))
        for spec in specs:  # and an unknown guard_format
            if "guard_format" in spec.options:
                guard_format(spec.options["guard_format"])
        self.config = config
        self.state = ServiceState.STARTING
        self.failure: str | None = None
        self.models: dict[str, ServedModel] = {
            spec.id: ServedModel(
                spec,
                engine_factory(spec, config.engine),
                Admission(_running_bound(spec, config), config.max_waiting, config.max_queue_wait),
            )
            for spec in specs
        }
        self.adapters = Adapters(self.models)
        self.responses = ResponseStore(config.responses_max_stored)
        self.guardrails: Guardrails | None = None
        if config.guardrails is not None:
            handle = ServedModels(self.models, self._slot, self._generate_unguarded)
            self.guardrails = Guardrails(config.guardrails, handle)
            served = [*ids, *(a.name for spec in specs for a in spec.adapters)]
            self.guardrails.check_models(served)
        self._watcher: asyncio.Task[None] | None = None
        self._inflight = 0
        self._idle = asyncio.Event()
        self._idle.set()

    # ----- lifecycle -----
    async def start(self) -> None:
        """Load and warm up every model; READY only when all passed a real generation."""
        # llama.cpp's models first (then the others in the order given): see EngineEntry
        order = sorted(self.models.values(), key=lambda m: not loads_first(m.spec.engine))
        try:
            for model in order:
                log.info("loading model %s (%s engine)", model.spec.id, model.spec.engine)
                started = time.monotonic()
                await model.load()
                moderation.check_labels(model)
                self.adapters.started(model)
                log.info("model %s ready in %.1fs", model.spec.id, time.monotonic() - started)
            if self.guardrails is not None:  # after the models: a classifier rail asks its own
                await self.guardrails.start()
        except Exception as exc:
            self.state = ServiceState.FAILED
            self.failure = str(exc)
            raise
        if self.state is ServiceState.STARTING:
            self.state = ServiceState.READY
        if self.config.lora_dir is not None and self.config.lora_poll_interval > 0:
            watcher = AdapterWatcher(
                self.adapters, self.config.lora_dir, self.config.lora_poll_interval
            )
            self._watcher = asyncio.create_task(watcher.run(), name="adapter watcher")

    def begin_drain(self) -> None:
        self.state = ServiceState.DRAINING

    async def wait_idle(self, timeout: float) -> bool:
        """Wait until no request is in flight; False if `timeout` passed first."""
        try:
            await asyncio.wait_for(self._idle.wait(), timeout)
        except TimeoutError:
            return False
        return True

    async def stop(self) -> None:
        self.state = ServiceState.STOPPED
        if self._watcher is not None:
            self._watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watcher
        await self.adapters.stop()
        if self.guardrails is not None:
            await self.guardrails.stop()
        for model in self.models.values():
            await model.engine.stop()

    @property
    def inflight(self) -> int:
        return self._inflight

    # ----- metrics -----
    async def refresh_gauges(self) -> None:
        """Ask each loaded engine for its cache use (read by `gauges()` at scrape time), at
        most once per `GAUGE_REFRESH_S`: asking is a request to the engine (llama.cpp's
        /slots, vLLM's /metrics), and a benchmark client such as aiperf scrapes three times
        a second."""
        now = time.monotonic()
        for model in self.models.values():
            if model.loaded and model.cache is not None and now >= model.cache_read_at:
                model.cache_read_at = now + GAUGE_REFRESH_S
                model.cache_usage = await model.cache.cache_usage()

    def gauges(self) -> list[ModelGauges]:
        return [
            ModelGauges(
                model=model.spec.id,
                running=model.admission.running,
                waiting=model.admission.waiting,
                max_running=model.admission.max_running,
                cache_usage=model.cache_usage,
            )
            for model in self.models.values()
        ]

    async def unhealthy_models(self, timeout: float = 2.0) -> list[str]:
        """Models whose engine cannot serve right now (a supervised vLLM restarting, a
        stopped llama.cpp loop, a dead scheduler thread): readiness turns 503 meanwhile."""

        async def healthy(model: ServedModel) -> bool:
            try:
                return await asyncio.wait_for(model.engine.health(), timeout)
            except Exception:  # a probe that fails or hangs is an unhealthy engine
                return False

        results = await asyncio.gather(*(healthy(m) for m in self.models.values()))
        return [model_id for model_id, ok in zip(self.models, results, strict=True) if not ok]

    # ----- lookup -----
    def model(self, model_id: str, task: Task) -> ServedModel:
        """The model, ready to take a request of `task` (404, 400 or 503 otherwise)."""
        model = self._lookup(model_id)
        if task not in model.spec.tasks:
            raise model.unsupported(task)
        if model_id not in self.models and task not in GENERATIVE:
            raise InvalidRequest(
                f"model `{model_id}` is a LoRA adapter: it serves chat and completions only",
                param="model",
            )
        if self.state is not ServiceState.READY:
            raise Unavailable(f"service is {self.state.value}; not taking requests")
        return model

    def _lookup(self, model_id: str) -> ServedModel:
        """The model, or an adapter's base model (a request for an adapter uses its base's
        engine, tokenizer and window)."""
        model = self.models.get(model_id)
        if model is None:
            adapter = self.adapters.get(model_id)
            if adapter is not None:
                return self.models[adapter.spec.base]
            served = [*self.models, *(a.spec.name for a in self.adapters)]
            raise ModelNotFound(
                f"The model `{model_id}` does not exist. Available: {', '.join(served)}",
                param="model",
            )
        return model

    # ----- request path -----
    def generate(
        self, model_id: str, request: GenerateRequest
    ) -> AsyncGenerator[GenerationChunk, None]:
        """Validate against the model, run the input rails, wait for a slot, then stream the
        engine's chunks (through the output rails).

        Every refusal (unknown model, a guardrail, context, 429) is raised by the first
        `__anext__`, so a caller that awaits the first chunk before answering can still send
        a plain HTTP error. Closing the iterator (or cancelling the task) aborts the
        engine's work and frees the slot.
        """
        return self._generate(model_id, request, self.guardrails)

    def _generate_unguarded(
        self, model_id: str, request: GenerateRequest
    ) -> AsyncGenerator[GenerationChunk, None]:
        """`generate` without rails: for the rails' own judges."""
        return self._generate(model_id, request, None)

    async def _generate(
        self, model_id: str, request: GenerateRequest, guards: Guardrails | None
    ) -> AsyncGenerator[GenerationChunk, None]:
        model = self.model(model_id, request.task)
        adapter = None if model_id in self.models else model_id  # an adapter over `model`
        if adapter is not None:
            request = dataclasses.replace(request, adapter=adapter)
        with self.adapters.using(adapter):
            generation.check_params(model, request.params, self.config.max_n)
            record = _record()
            record.model = model_id  # a request refused by a rail is still this model's
            plan, redacted = None, False
            if guards is not None:
                plan = guards.plan((model_id, model.spec.id), record.key_rails)
            if guards is not None and plan is not None and plan.input:
                # before admission: a blocked request takes no slot, the engine never sees it
                text = None
                if isinstance(request.prompt, tuple):
                    text = await tokens.detokenize(model, request.prompt)
                checked = await guards.check_input(plan, request, record, text)
                redacted, request = checked is not request, checked
            request, calls_format = generation.with_tools(model, request, self.config.tool_parser)
            if redacted:  # what a count of the prompt now means (counted only if asked)
                record.sent_prompt_tokens = generation.counter(model, request)
            await generation.check_context(model, request)
            texts: dict[int, list[str]] = {}
            if self.config.log_prompts:
                log.info("prompt: %s", await self._loggable(request.messages or request.prompt))
            thinking = generation.reasoning_of(model, request, self.config.reasoning_parser)
            async with self._slot(model, request.task, record, model_id):
                stages = generation.stages(model, request, record, thinking, calls_format)
                if guards is not None and plan is not None and plan.output:
                    stages.append(  # last: what the output rails let through is what is sent
                        guards.guard_output(
                            plan,
                            stages[-1],
                            record,
                            choices=request.params.n,
                            stop=generation.closer(list(stages)),
                            prompt_tokens=generation.counter(model, request),
                        )
                    )
                chunks = stages[-1]
                try:
                    async for chunk in chunks:
                        generation.note(record, chunk)
                        if self.config.log_prompts and chunk.text:
                            texts.setdefault(chunk.index, []).append(chunk.text)
                        yield chunk
                finally:
                    for stage in reversed(stages):  # a wrapper's close does not reach the engine
                        await stage.aclose()
                    if self.config.log_prompts:
                        for index, parts in sorted(texts.items()):
                            log.info("completion %d: %s", index, await self._loggable(parts))

    async def _loggable(self, logged: object) -> str:
        """A prompt or a completion as `--log-prompts` writes it: with the personal data
        that the PII rails find redacted, when there are PII rails."""
        text = "".join(logged) if isinstance(logged, list) else str(logged)
        if self.guardrails is not None:
            text = await self.guardrails.redact_for_logs(text)
        return text

    async def prompt_tokens(self, model_id: str, request: GenerateRequest) -> int:
        """The exact number of tokens of the prompt that `generate` would give the engine for
        `request` (chat template applied, tools written in); it generates nothing, so it
        takes no running slot. Input rails are not run for it: once `generate` has run them
        in this HTTP request and they redacted the prompt, the count is of the redacted
        prompt, as the engine got it."""
        sent = _record().sent_prompt_tokens
        if sent is not None:
            with self._track():
                return await sent()
        model = self.model(model_id, request.task)
        request, _ = generation.with_tools(model, request, self.config.tool_parser)
        _record().model = model_id
        with self._track():
            return await model.generator.prompt_tokens(request, -1)  # no bound fits: exact

    async def embed(
        self,
        model_id: str,
        request: EmbedRequest,
        *,
        input_type: str | None = None,
        dimensions: int | None = None,
    ) -> EmbedResult:
        """Embed with the model's prefix for `input_type`, cut to `dimensions` if asked."""
        model = self.model(model_id, Task.EMBEDDING)
        request = encoders.with_prefix(model, request, input_type)
        size = encoders.dimensions(model, dimensions)
        record = _record()
        async with self._slot(model, Task.EMBEDDING, record):
            result = await model.embedder.embed(request)
        record.prompt_tokens += result.prompt_tokens
        return encoders.cut(result, size)

    async def classify(self, model_id: str, request: ClassifyRequest) -> ClassifyResult:
        """Each input's probabilities over the classifier's labels (the manifest's names for
        them where it gives some). `truncate` -1: cut to the model's window."""
        model = self.model(model_id, Task.CLASSIFY)
        request = moderation.truncated(model, request)
        record = _record()
        async with self._slot(model, Task.CLASSIFY, record):
            result = await model.classifier.classify(request)
        record.prompt_tokens += result.prompt_tokens
        return moderation.named(model, result)

    def classifier_model(self, model_id: str | None) -> str:
        """`model_id`, or with None the one classifier served (400 otherwise)."""
        return moderation.classifier_model(self.models, model_id)

    def moderation_model(self, model_id: str | None) -> str:
        """The model that `moderate(model_id, ...)` uses: `model_id`, or with None the one
        served model that can moderate (a classifier or a guard model); 400 otherwise."""
        name = moderation.moderation_model(self.models, model_id)
        if name not in moderation.moderators(self.models):
            self._lookup(name)  # 404 for a name not served at all
            raise InvalidRequest(
                f"model `{name}` is a LoRA adapter that is no guard model: it does not moderate",
                param="model",
            )
        return name

    async def moderate(self, model_id: str | None, inputs: Sequence[str]) -> list[Moderation]:
        """A verdict per input, from a classifier or a generative guard model
        (`runtime/moderation.py`)."""
        name = self.moderation_model(model_id)
        model = moderation.moderators(self.models)[name]
        record = _record()
        fmt = moderation.guard_of(model)
        if fmt is None:
            result = await self.classify(name, ClassifyRequest(record.request_id, tuple(inputs)))
            verdicts = moderation.by_classifier(model.spec.classifier, result)
        else:
            verdicts = await moderation.by_guard(
                model, name, fmt, record.request_id, inputs, self._answer
            )
        record.task = "moderation"
        return verdicts

    async def _answer(self, model_id: str, request: GenerateRequest) -> str:
        """The whole text of the first choice."""
        # a guard is not guarded
        return await aggregate.first_text(self._generate_unguarded(model_id, request))

    async def rank(
        self,
        model_id: str,
        request: RankRequest,
        *,
        documents_param: str = "documents",
        max_document_tokens: int | None = None,
    ) -> tuple[RankResult, str]:
        """Scores of each document for the query, and how they were made: a cross-encoder
        (`cross-encoder`: logits), or an embedding model's cosine similarity (`cosine`).
        `documents_param`: what the API calls the documents, for errors.
        `max_document_tokens`: each document cut to its first so many tokens first."""
        if len(request.documents) > self.config.max_rank_documents:
            raise InvalidRequest(
                f"{documents_param}: at most {self.config.max_rank_documents} per request "
                f"(got {len(request.documents)})",
                param=documents_param,
            )
        method = self.ranking_method(model_id)
        if method is None:
            raise InvalidRequest(
                f"model `{model_id}` can neither rank nor embed; serve a reranker or an "
                "embedding model",
                param="model",
            )
        task = Task.RERANK if method == "cross-encoder" else Task.EMBEDDING
        model = self.model(model_id, task)
        record = _record()
        async with self._slot(model, task, record):
            if max_document_tokens is not None:
                request = await tokens.cut_documents(model, request, max_document_tokens)
            if method == "cross-encoder":
                result = await model.ranker.rank(request)
            else:
                result = await encoders.cosine_rank(model, request)
        record.prompt_tokens += result.prompt_tokens
        return result, method

    def ranking_method(self, model_id: str) -> str | None:
        """`cross-encoder`, `cosine` (an embedding model), or None (this model cannot rank)."""
        model = self._lookup(model_id)
        return encoders.ranking_method(model) if model_id in self.models else None

    async def tokenize(self, model_id: str, request: TokenizeRequest) -> tuple[Tokens, int]:
        """The token ids of a prompt, or of a conversation as the model's chat completion
        sees it; and the model's context window. No running slot: it generates nothing."""
        model = self._ready(model_id)
        with self._track():
            result = await tokens.tokenize(model, request, self.config.tool_parser)
        return result, model.info.context_length

    async def detokenize(self, model_id: str, ids: tuple[int, ...]) -> str:
        """The text of token ids (400 naming `tokens` for one outside the vocabulary)."""
        model = self._ready(model_id)
        with self._track():
            return await tokens.detokenize(model, ids)

    def _ready(self, model_id: str) -> ServedModel:
        """The model, for a request of no particular task (404 or 503 otherwise)."""
        model = self._lookup(model_id)
        if self.state is not ServiceState.READY:
            raise Unavailable(f"service is {self.state.value}; not taking requests")
        _record().model = model_id
        return model

    @asynccontextmanager
    async def _slot(
        self, model: ServedModel, task: Task, record: RequestRecord, served_as: str | None = None
    ) -> AsyncIterator[None]:
        """Count the request in flight, wait for a running slot, and note the times.
        `served_as`: the name asked for (an adapter's), for the logs and metrics."""
        record.model = served_as or model.spec.id
        record.task = task.value
        record.queued_at = time.monotonic()
        with self._track():
            await model.admission.acquire()
            record.admitted_at = time.monotonic()
            try:
                yield
            except BaseException:
                record.aborted = True  # client gone (closed or cancelled), or an engine error
                raise
            finally:
                record.finished_at = time.monotonic()
                await model.admission.release(record.finished_at - record.admitted_at)

    def _track(self) -> _Inflight:
        return _Inflight(self)


def _record() -> RequestRecord:
    """The record of the HTTP request being served, or a throwaway one (library use)."""
    record = current_record.get()
    return record if record is not None else RequestRecord(request_id="-")


class _Inflight:
    """Counts requests in flight so that a drain can wait for them."""

    def __init__(self, runtime: Runtime):
        self._runtime = runtime

    def __enter__(self) -> None:
        self._runtime._inflight += 1
        self._runtime._idle.clear()

    def __exit__(self, *exc: object) -> None:
        self._runtime._inflight -= 1
        if self._runtime._inflight == 0:
            self._runtime._idle.set()
