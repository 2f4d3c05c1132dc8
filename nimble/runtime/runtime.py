"""Models in memory, their lifecycle, and the request path from validated input to engine."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import time
from collections.abc import AsyncGenerator, Callable, Sequence
from contextlib import AbstractAsyncContextManager
from enum import StrEnum

from nimble.engines import Engine, EngineConfig, create_engine, loads_first
from nimble.errors import (
    InvalidRequest,
    ModelLoadError,
    ModelNotFound,
    Unavailable,
)
from nimble.guardrails.stage import Guardrails
from nimble.models import ModelSpec
from nimble.observability.metrics import ModelGauges
from nimble.observability.record import RequestRecord
from nimble.runtime import aggregate, encoders, gauges, generation, moderation, tokens
from nimble.runtime.adapter_watch import AdapterWatcher
from nimble.runtime.adapters import GENERATIVE, Adapters
from nimble.runtime.admission import Admission
from nimble.runtime.config import RuntimeConfig
from nimble.runtime.inflight import Inflight, request_record, running_slot
from nimble.runtime.rail_models import ServedModels
from nimble.runtime.response_store import ResponseStore
from nimble.runtime.served import ServedModel
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


class ServiceState(StrEnum):
    STARTING = "starting"
    READY = "ready"
    DRAINING = "draining"
    FAILED = "failed"
    STOPPED = "stopped"


EngineFactory = Callable[[ModelSpec, EngineConfig], Engine]


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
        for spec in specs:
            config.check(spec)
        self.config = config
        self.state = ServiceState.STARTING
        self.failure: str | None = None
        self.models: dict[str, ServedModel] = {
            spec.id: ServedModel(
                spec,
                engine_factory(spec, config.engine),
                Admission(config.running_bound(spec), config.max_waiting, config.max_queue_wait),
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
        self._inflight = Inflight()

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
        return await self._inflight.wait_idle(timeout)

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
        return self._inflight.count

    # ----- metrics and readiness -----
    async def refresh_gauges(self) -> None:
        """Ask the engines for their cache use, read by `gauges()` at scrape time (at most
        once a second each: `gauges.py`)."""
        await gauges.refresh_cache_usage(self.models.values())

    def gauges(self) -> list[ModelGauges]:
        return gauges.readings(self.models.values())

    async def unhealthy_models(self, timeout: float = 2.0) -> list[str]:
        """Models whose engine cannot serve right now (a supervised vLLM restarting, a
        stopped llama.cpp loop, a dead scheduler thread): readiness turns 503 meanwhile."""
        return await gauges.unhealthy(self.models, timeout)

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
            record = request_record()
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
        record = request_record()
        if record.sent_prompt_tokens is not None:
            with self._inflight:
                return await record.sent_prompt_tokens()
        model = self.model(model_id, request.task)
        request, _ = generation.with_tools(model, request, self.config.tool_parser)
        record.model = model_id
        with self._inflight:
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
        record = request_record()
        async with self._slot(model, Task.EMBEDDING, record):
            result = await model.embedder.embed(request)
        record.prompt_tokens += result.prompt_tokens
        return encoders.cut(result, size)

    async def classify(self, model_id: str, request: ClassifyRequest) -> ClassifyResult:
        """Each input's probabilities over the classifier's labels (the manifest's names for
        them where it gives some). `truncate` -1: cut to the model's window."""
        model = self.model(model_id, Task.CLASSIFY)
        request = moderation.truncated(model, request)
        record = request_record()
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
        record = request_record()
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
        record = request_record()
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
        with self._inflight:
            result = await tokens.tokenize(model, request, self.config.tool_parser)
        return result, model.info.context_length

    async def detokenize(self, model_id: str, ids: tuple[int, ...]) -> str:
        """The text of token ids (400 naming `tokens` for one outside the vocabulary)."""
        model = self._ready(model_id)
        with self._inflight:
            return await tokens.detokenize(model, ids)

    def _ready(self, model_id: str) -> ServedModel:
        """The model, for a request of no particular task (404 or 503 otherwise)."""
        model = self._lookup(model_id)
        if self.state is not ServiceState.READY:
            raise Unavailable(f"service is {self.state.value}; not taking requests")
        request_record().model = model_id
        return model

    def _slot(
        self, model: ServedModel, task: Task, record: RequestRecord, served_as: str | None = None
    ) -> AbstractAsyncContextManager[None]:
        return running_slot(self._inflight, model, task, record, served_as)
