"""One request of the transformers engine as the scheduler runs it (`Job`): its prompt, its
choices, its adapter, and the bridge of its chunks from the scheduler thread to the event
loop; and the scheduler's counters (`DecodeStats`). Free of torch: the engine module imports
it before it starts."""

from __future__ import annotations

import asyncio
from collections import deque
from dataclasses import dataclass
from typing import TYPE_CHECKING

from nimble.types import GenerationChunk, Usage

if TYPE_CHECKING:  # torch's modules: the engine imports them when it starts
    from nimble.engines.transformers.choice import Sampler
    from nimble.engines.transformers.echo import Echo

_END = object()  # end of one job's stream
BASE_MODEL = "__base__"  # the adapter key of a row without adapter (peft's name for it)


@dataclass
class DecodeStats:
    """Counters of the scheduler's decode loop (for tests and benchmarks)."""

    max_batch: int = 0  # most rows ever advanced by one forward pass
    steps: int = 0  # batched decode steps
    prefills: int = 0  # prompts prefilled
    tokens: int = 0  # tokens sampled
    running: int = 0  # rows in the batch now


class Job:
    """One request: its prompt, its choices, and the bridge of its chunks to the event loop.

    `echo`: each choice starts with the prompt (scored in the prefill when it asks for
    logprobs); `generate` False (max_tokens 0 with echo): the choices end after it.
    `adapter`: the key of the LoRA adapter its rows run with (`adapters.py`)."""

    def __init__(
        self,
        prompt_ids: list[int],
        choices: list[Sampler],
        loop: asyncio.AbstractEventLoop,
        *,
        echo: Echo | None = None,
        generate: bool = True,
        adapter: str = BASE_MODEL,
    ):
        self.prompt_ids = prompt_ids
        self.adapter = adapter
        self.choices = choices
        self.echo = echo
        self.generate = generate
        self.cancelled = False  # set by the event loop when the consumer went away
        self._open = len(choices)
        self._loop = loop
        self._items: deque[object] = deque()
        self._ready = asyncio.Event()
        self._woken = False

    async def get(self) -> GenerationChunk | None:
        """Event loop: the next chunk; None at the end. Raises what the scheduler failed with."""
        while not self._items:
            self._ready.clear()
            await self._ready.wait()
        item = self._items.popleft()
        if isinstance(item, BaseException):
            raise item
        return item if isinstance(item, GenerationChunk) else None

    # scheduler thread

    def send(self, chunks: list[GenerationChunk], choice: Sampler) -> None:
        for chunk in chunks:
            self._put(chunk)
        if choice.finish is not None:
            self._open -= 1
            if self._open == 0:
                completion = sum(len(c.tokens) for c in self.choices)
                self._put(GenerationChunk(usage=Usage(len(self.prompt_ids), completion)))
                self._put(_END)

    def fail(self, error: BaseException) -> None:
        if self._open > 0:
            self._open = 0
            self._put(error)

    def _put(self, item: object) -> None:
        self._items.append(item)
        if self._woken:
            return
        self._woken = True
        try:
            self._loop.call_soon_threadsafe(self._wake)
        except RuntimeError:  # the loop is closed: nobody is listening any more
            self.cancelled = True

    def _wake(self) -> None:
        self._woken = False  # first: an item appended after this line schedules a new wake-up
        self._ready.set()
