"""Dynamic batching of embedding work across concurrent requests.

Each request submits its tokenized sequences; one loop takes what is queued (up to
`max_batch` sequences, waiting at most `max_wait` seconds for more when the queue holds
fewer) and runs it as one batch in the engine's worker thread, then hands each request its
rows. While a batch runs, new requests queue, so under load batches fill without waiting.
Memory is bounded: a batch holds at most `max_batch` sequences (a single request with more
runs alone), and the queue holds at most the requests admission let in. A request whose
caller went away before its batch ran is dropped from it.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Sequence
from concurrent.futures import Executor
from dataclasses import dataclass, field

import numpy as np
from numpy.typing import NDArray

Rows = NDArray[np.float32]
RunBatch = Callable[[list[Sequence[int]]], Rows]  # sequences -> one row per sequence


@dataclass
class _Job:
    sequences: Sequence[Sequence[int]]
    done: asyncio.Future[Rows] = field(
        default_factory=lambda: asyncio.get_running_loop().create_future()
    )


@dataclass
class BatchStats:
    batches: int = 0
    sequences: int = 0
    largest: int = 0  # sequences in the largest batch run so far


class EmbedBatcher:
    def __init__(
        self,
        run: RunBatch,
        executor: Executor,
        max_batch: int,
        max_wait: float,
        closed: Callable[[], Exception],
    ):
        self._run = run
        self._closed = closed  # the error of requests left when the batcher closes
        self._executor = executor
        self._max_batch = max(1, max_batch)
        self._max_wait = max_wait
        self._queue: asyncio.Queue[_Job] = asyncio.Queue()
        self._task: asyncio.Task[None] | None = None
        self._carried: _Job | None = None  # too big for the last batch: it leads the next
        self._current: list[_Job] = []  # the batch running
        self.stats = BatchStats()

    async def embed(self, sequences: Sequence[Sequence[int]]) -> Rows:
        if self._task is None:
            self._task = asyncio.create_task(self._loop())
        job = _Job(sequences)
        await self._queue.put(job)
        return await job.done

    async def close(self) -> None:
        """Stop batching: every request not answered yet gets the `closed` error (the batch
        running on the worker thread still finishes there)."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        left = [*self._current, *([self._carried] if self._carried else [])]
        while not self._queue.empty():
            left.append(self._queue.get_nowait())
        for job in left:
            if not job.done.done():
                job.done.set_exception(self._closed())
        self._current, self._carried = [], None

    async def _loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            jobs = self._current = await self._gather(loop)
            if not jobs:
                continue
            sequences = [s for job in jobs for s in job.sequences]
            try:
                rows = await loop.run_in_executor(self._executor, self._run, sequences)
            except Exception as exc:  # the batch failed: each of its requests gets the error
                for job in jobs:
                    if not job.done.done():
                        job.done.set_exception(exc)
                continue
            self.stats.batches += 1
            self.stats.sequences += len(sequences)
            self.stats.largest = max(self.stats.largest, len(sequences))
            start = 0
            for job in jobs:
                end = start + len(job.sequences)
                if not job.done.done():
                    job.done.set_result(rows[start:end])
                start = end

    async def _gather(self, loop: asyncio.AbstractEventLoop) -> list[_Job]:
        """The next batch: what is queued, topped up for at most `max_wait`."""
        first, self._carried = self._carried or await self._queue.get(), None
        if first.done.cancelled():
            return []
        jobs, count = [first], len(first.sequences)
        deadline = loop.time() + self._max_wait
        while count < self._max_batch:
            if self._queue.empty():
                remaining = deadline - loop.time()
                if remaining <= 0:
                    break
                try:
                    job = await asyncio.wait_for(self._queue.get(), remaining)
                except TimeoutError:
                    break
            else:
                job = self._queue.get_nowait()
            if job.done.cancelled():
                continue
            if count + len(job.sequences) > self._max_batch:
                self._carried = job  # too big to join: it leads the next batch
                break
            jobs.append(job)
            count += len(job.sequences)
        return jobs
