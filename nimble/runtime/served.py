"""One served model: its engine, what that engine can do for each of the model's tasks,
its admission gate, and what the engine told us after loading."""

from __future__ import annotations

import time
from typing import Any

from nimble.engines import (
    CacheReporter,
    Classifier,
    Embedder,
    Engine,
    Generator,
    Ranker,
    Tokenizer,
)
from nimble.errors import InvalidRequest, ModelLoadError, Unavailable
from nimble.models import ModelSpec
from nimble.runtime.admission import Admission
from nimble.types import EngineInfo, Task

# the capability an engine needs for each task; a new capability is a new row (and a new
# Protocol in engines/base.py): engines without it are not touched
CAPABILITY: dict[Task, type[Any]] = {
    Task.CHAT: Generator,
    Task.COMPLETION: Generator,
    Task.EMBEDDING: Embedder,
    Task.RERANK: Ranker,
    Task.CLASSIFY: Classifier,
}


class ServedModel:
    def __init__(self, spec: ModelSpec, engine: Engine, admission: Admission):
        missing = sorted(
            task.value for task in spec.tasks if not isinstance(engine, CAPABILITY[task])
        )
        if missing:
            raise ModelLoadError(
                f"{spec.weights}: model {spec.id!r} asks for {', '.join(missing)}, which the "
                f"{spec.engine} engine does not do"
            )
        self.spec = spec
        self.engine = engine
        self.admission = admission
        self.created = int(time.time())
        self.cache_usage: float | None = None  # last reading, for the metrics
        self.cache_read_at = 0.0  # monotonic time from which it may be read again
        self._info: EngineInfo | None = None
        # resolved once: an isinstance check of a Protocol walks its methods
        self._generator = engine if isinstance(engine, Generator) else None
        self._embedder = engine if isinstance(engine, Embedder) else None
        self._ranker = engine if isinstance(engine, Ranker) else None
        self._classifier = engine if isinstance(engine, Classifier) else None
        # capabilities no task needs: used where the engine has them (metrics; /tokenize,
        # /detokenize and documents cut to a length, else a 400 naming the model)
        self.cache = engine if isinstance(engine, CacheReporter) else None
        self._tokenizer = engine if isinstance(engine, Tokenizer) else None

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
        self._info = self.engine.info()

    # the engine as each capability, for the tasks the model serves (checked at construction)
    @property
    def generator(self) -> Generator:
        if self._generator is None:
            raise self.unsupported(Task.CHAT)
        return self._generator

    @property
    def embedder(self) -> Embedder:
        if self._embedder is None:
            raise self.unsupported(Task.EMBEDDING)
        return self._embedder

    @property
    def ranker(self) -> Ranker:
        if self._ranker is None:
            raise self.unsupported(Task.RERANK)
        return self._ranker

    @property
    def classifier(self) -> Classifier:
        if self._classifier is None:
            raise self.unsupported(Task.CLASSIFY)
        return self._classifier

    @property
    def tokenizer(self) -> Tokenizer:
        if self._tokenizer is None:
            raise InvalidRequest(
                f"model `{self.spec.id}` cannot tokenize: the {self.spec.engine} engine does "
                "not expose its tokenizer",
                param="model",
            )
        return self._tokenizer

    def unsupported(self, task: Task) -> InvalidRequest:
        """The 400 for a request of a task this model does not serve."""
        return InvalidRequest(
            f"model `{self.spec.id}` does not support {task.value} requests", param="model"
        )
