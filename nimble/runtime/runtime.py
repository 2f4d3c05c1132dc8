"""Models in memory, their lifecycle, and the request path from validated input to engine."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncGenerator, Callable
from dataclasses import dataclass
from enum import StrEnum

from nimble.engines import Engine, EngineConfig, create_engine
from nimble.errors import (
    ContextLengthExceeded,
    InvalidRequest,
    ModelLoadError,
    ModelNotFound,
    Unavailable,
    UnsupportedParameter,
)
from nimble.models import ModelSpec
from nimble.runtime.admission import Admission
from nimble.types import (
    EmbedRequest,
    EmbedResult,
    EngineInfo,
    GenerateRequest,
    GenerationChunk,
    SamplingParams,
    Task,
)

log = logging.getLogger("nimble.runtime")


class ServiceState(StrEnum):
    STARTING = "starting"
    READY = "ready"
    DRAINING = "draining"
    FAILED = "failed"
    STOPPED = "stopped"


@dataclass(frozen=True)
class RuntimeConfig:
    engine: EngineConfig
    max_running: int = 4
    max_waiting: int = 64
    max_n: int = 8


class ServedModel:
    """One model: its engine, its admission gate, and what it told us after loading."""

    def __init__(self, spec: ModelSpec, engine: Engine, admission: Admission):
        self.spec = spec
        self.engine = engine
        self.admission = admission
        self.created = int(time.time())
        self._info: EngineInfo | None = None

    @property
    def info(self) -> EngineInfo:
        if self._info is None:
            raise Unavailable(f"model {self.spec.id!r} is still loading")
        return self._info

    @property
    def loaded(self) -> bool:
        return self._info is not None

    async def load(self) -> None:
        await self.engine.start()
        await self.engine.warmup()
        self._info = self.engine.info()


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
        self.config = config
        self.state = ServiceState.STARTING
        self.failure: str | None = None
        self.models: dict[str, ServedModel] = {
            spec.id: ServedModel(
                spec,
                engine_factory(spec, config.engine),
                Admission(config.max_running, config.max_waiting),
            )
            for spec in specs
        }
        self._inflight = 0
        self._idle = asyncio.Event()
        self._idle.set()

    # ----- lifecycle -----
    async def start(self) -> None:
        """Load and warm up every model; READY only when all passed a real generation."""
        try:
            for model in self.models.values():
                log.info("loading model %s (%s engine)", model.spec.id, model.spec.engine)
                started = time.monotonic()
                await model.load()
                log.info("model %s ready in %.1fs", model.spec.id, time.monotonic() - started)
        except Exception as exc:
            self.state = ServiceState.FAILED
            self.failure = str(exc)
            raise
        if self.state is ServiceState.STARTING:
            self.state = ServiceState.READY

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
        for model in self.models.values():
            await model.engine.stop()

    @property
    def inflight(self) -> int:
        return self._inflight

    # ----- lookup -----
    def model(self, model_id: str, task: Task) -> ServedModel:
        model = self.models.get(model_id)
        if model is None:
            raise ModelNotFound(
                f"The model `{model_id}` does not exist. Available: {', '.join(self.models)}",
                param="model",
            )
        if task not in model.spec.tasks:
            raise InvalidRequest(
                f"model `{model_id}` does not support {task.value} requests",
                param="model",
            )
        if self.state is not ServiceState.READY:
            raise Unavailable(f"service is {self.state.value}; not taking requests")
        return model

    # ----- request path -----
    async def check_context(self, model: ServedModel, request: GenerateRequest) -> None:
        """Refuse, before the engine runs, a prompt (plus max_tokens) beyond the window."""
        window = model.info.context_length
        wanted = request.params.max_tokens or 0
        bound = model.engine.prompt_tokens_bound(request)
        if bound is not None and bound + wanted <= window and bound < window:
            return  # surely fits: no need to tokenize twice
        prompt_tokens = await model.engine.count_prompt_tokens(request)
        if prompt_tokens + wanted > window or prompt_tokens >= window:
            where = "messages" if request.messages is not None else "prompt"
            detail = (
                f"you requested {prompt_tokens + wanted} tokens ({prompt_tokens} in the "
                f"{where}, {wanted} in the completion: max_tokens)"
                if wanted
                else f"your {where} has {prompt_tokens} tokens"
            )
            raise ContextLengthExceeded(
                f"This model's maximum context length is {window} tokens. However, {detail}. "
                f"Please reduce the length of the {where} or the completion.",
                param="max_tokens" if wanted and prompt_tokens < window else where,
            )

    async def generate(
        self, model_id: str, request: GenerateRequest
    ) -> AsyncGenerator[GenerationChunk, None]:
        """Validate against the model, wait for a slot, then stream the engine's chunks.

        Every refusal (unknown model, context, 429) is raised by the first `__anext__`, so
        a caller that awaits the first chunk before answering can still send a plain HTTP
        error. Closing the iterator (or cancelling the task) aborts the engine's work and
        frees the slot.
        """
        model = self.model(model_id, request.task)
        self._check_params(model, request.params)
        await self.check_context(model, request)
        with self._track():
            async with model.admission.slot():
                chunks = model.engine.generate(request)
                try:
                    async for chunk in chunks:
                        yield chunk
                finally:
                    await chunks.aclose()

    def _check_params(self, model: ServedModel, params: SamplingParams) -> None:
        if params.n > self.config.max_n:
            raise InvalidRequest(
                f"n: at most {self.config.max_n} choices per request (got {params.n})", param="n"
            )
        if params.top_logprobs is not None and not model.info.supports_logprobs:
            raise UnsupportedParameter(
                f"logprobs: the {model.spec.engine} engine of model `{model.spec.id}` does not "
                "return logprobs",
                param="logprobs",
            )

    async def embed(self, model_id: str, request: EmbedRequest) -> EmbedResult:
        model = self.model(model_id, Task.EMBEDDING)
        with self._track():
            async with model.admission.slot():
                return await model.engine.embed(request)

    def _track(self) -> _Inflight:
        return _Inflight(self)


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
