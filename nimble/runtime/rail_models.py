"""The models this runtime serves, as classifier and judge rails reach them
(`guardrails.rail.ModelHandle`).

A rail's own work is not the caller's request: it runs under a record of its own (the
caller's record counts neither its tokens nor its times), and a judge's generation goes
through the runtime without rails (a judge's answer is not judged again). Both wait for a
running slot of their model like any request. The classifier is reached before the service
is ready too: a classifier rail checks its labels at start, once its model is loaded.
"""

from __future__ import annotations

import asyncio
import contextvars
from collections.abc import AsyncGenerator, Callable, Mapping, Sequence
from contextlib import AbstractAsyncContextManager

from nimble.observability.record import RequestRecord, current_record
from nimble.runtime import aggregate, moderation
from nimble.runtime.served import ServedModel
from nimble.types import ClassifyRequest, GenerateRequest, GenerationChunk, Task

Slot = Callable[[ServedModel, Task, RequestRecord], AbstractAsyncContextManager[None]]
Generate = Callable[[str, GenerateRequest], AsyncGenerator[GenerationChunk, None]]


class ServedModels:
    def __init__(self, models: Mapping[str, ServedModel], slot: Slot, generate: Generate):
        self._models = models
        self._slot = slot
        self._generate = generate  # without rails

    def serves(self, model: str) -> bool:
        return model in self._models

    async def classify(self, model: str, texts: Sequence[str]) -> list[Mapping[str, float]]:
        served = self._models[model]
        request = moderation.truncated(served, ClassifyRequest("guardrail", tuple(texts), -1))
        async with self._slot(served, Task.CLASSIFY, RequestRecord(request_id="guardrail")):
            result = await served.classifier.classify(request)
        result = moderation.named(served, result)
        return [dict(zip(c.labels, c.probs, strict=True)) for c in result.classifications]

    async def generate_text(self, model: str, request: GenerateRequest) -> str:
        context = contextvars.copy_context()
        context.run(current_record.set, RequestRecord(request_id="guardrail"))
        # the generator's body runs in the task, under the rail's record
        answer = aggregate.first_text(self._generate(model, request))
        return await asyncio.create_task(answer, context=context)
