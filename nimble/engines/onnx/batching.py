"""Dynamic batching of embedding work across concurrent requests.

Each request submits its tokenized sequences, cut into jobs of at most `chunk` sequences. A
loop takes what is queued (up to `max_batch` sequences, waiting at most `max_wait` seconds
for more when the queue holds fewer; not while requests come one at a time, see `_gather`)
and runs it as one batch on a worker thread, then hands each job its rows. Up to `lanes`
batches run at once, one per worker thread: on a CPU, two single-threaded runs side by side
use two cores better than one run split over two threads, whose every operator waits for the
slower thread (and the event loop needs a core now and then, too). While the lanes are
busy, new requests queue, so under load batches fill without waiting. Memory is bounded: a
batch holds at most `max_batch` sequences (a job with more runs alone), and the queue holds
at most the requests admission let in. A job whose caller went away before its batch ran is
dropped from it.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Sequence
from concurrent.futures import Executor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # numpy is imported when rows are there (see compute.py)
    import numpy as np
    from numpy.typing import NDArray

    Rows = NDArray[np.float32]
    RunBatch = Callable[[list[Sequence[int]]], Rows]  # sequences -> one row per sequence


@dataclass(eq=False)  # hashed by identity: jobs live in a set
class _Job:
    sequences: Sequence[Sequence[int]]
    done: asyncio.Future[Rows] = field(
        default_factory=lambda: asyncio.get_running_loop().create_future()
    )


@dataclass
class LaneStats:
    batches: int = 0
    sequences: int = 0
    largest: int = 0  # sequences in the largest batch run so far
    most_at_once: int = 0  # batches that ran at the same time, at most


class EmbedBatcher:
    def __init__(
        self,
        run: RunBatch,
        executor: Executor,
        max_batch: int,
        max_wait: float,
        closed: Callable[[], Exception],
        lanes: int = 1,
        chunk: int | None = None,
    ):
        self._run = run
        self._closed = closed  # the error of requests left when the batcher closes
        self._executor = executor  # with at least `lanes` workers
        self._max_batch = max(1, max_batch)
        self._max_wait = max_wait
        self._lanes = max(1, lanes)
        self._chunk = chunk  # a request's sequences become jobs of at most this many
        self._queue: asyncio.Queue[_Job] = asyncio.Queue()
        self._task: asyncio.Task[None] | None = None
        self._batches: set[asyncio.Task[None]] = set()  # the batches running
        self._pending: set[_Job] = set()  # every job not answered yet
        self._carried: _Job | None = None  # too big for the last batch: it leads the next
        self._alone = False  # the last wait for company ran out with one job in the batch
        self._stopped = False
        self.stats = LaneStats()

    async def embed(self, sequences: Sequence[Sequence[int]]) -> Rows:
        if self._stopped:
            raise self._closed()
        if self._task is None:
            self._task = asyncio.create_task(self._loop())
        size = self._chunk or len(sequences) or 1
        jobs = [_Job(sequences[i : i + size]) for i in range(0, len(sequences) or 1, size)]
        for job in jobs:
            self._pending.add(job)
            job.done.add_done_callback(self._forget(job))
            self._queue.put_nowait(job)
        if len(jobs) == 1:
            return await jobs[0].done
        # the parts may run in different batches, side by side; the first failure wins
        outcomes = await asyncio.gather(*(job.done for job in jobs), return_exceptions=True)
        parts: list[Rows] = []
        for outcome in outcomes:
            if isinstance(outcome, BaseException):
                raise outcome
            parts.append(outcome)
        import numpy as np

        return np.concatenate(parts)

    def _forget(self, job: _Job) -> Callable[[asyncio.Future[Rows]], None]:
        """A job leaves the pending set however it ends (rows, error, caller gone)."""
        return lambda _: self._pending.discard(job)

    async def close(self) -> None:
        """Stop batching: every request not answered yet gets the `closed` error (batches
        running on worker threads still finish there, unseen)."""
        self._stopped = True
        tasks = [task for task in (self._task, *self._batches) if task is not None]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._task, self._carried = None, None
        while not self._queue.empty():
            self._queue.get_nowait()
        for job in list(self._pending):
            if not job.done.done():
                job.done.set_exception(self._closed())
        self._pending.clear()

    async def _loop(self) -> None:
        loop = asyncio.get_running_loop()
        free = asyncio.Semaphore(self._lanes)  # lanes not running a batch
        while True:
            await free.acquire()
            jobs = await self._gather(loop)
            if not jobs:
                free.release()
                continue
            # a batch is shared out over every lane free now, so that one burst of
            # requests (all the clients at once) still uses every core
            lanes = 1
            while lanes < len(jobs) and not free.locked():
                await free.acquire()  # does not wait: a lane is free
                lanes += 1
            groups = _share(jobs, lanes)
            for _ in range(lanes - len(groups)):
                free.release()  # uneven jobs: fewer groups than lanes taken
            for group in groups:
                task = asyncio.create_task(self._run_jobs(loop, group))
                self._batches.add(task)
                task.add_done_callback(self._batches.discard)
                task.add_done_callback(lambda _: free.release())
            self.stats.most_at_once = max(self.stats.most_at_once, len(self._batches))

    async def _run_jobs(self, loop: asyncio.AbstractEventLoop, jobs: list[_Job]) -> None:
        sequences = [s for job in jobs for s in job.sequences]
        try:
            rows = await loop.run_in_executor(self._executor, self._run, sequences)
        except Exception as exc:  # the batch failed: each of its requests gets the error
            for job in jobs:
                if not job.done.done():
                    job.done.set_exception(exc)
            return
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
        """The next batch: what is queued, topped up for at most `max_wait`. Except when the
        last such wait ran out with no one else, nothing runs and nothing is queued: then the
        request runs at once (one client at a time would otherwise wait on every request)."""
        first, self._carried = self._carried or await self._queue.get(), None
        if first.done.done():  # its caller went away
            return []
        jobs, count = [first], len(first.sequences)
        if self._alone and not self._batches and self._queue.empty():
            # the last wait brought no one, nothing runs and nothing is queued: one client at
            # a time (or a trickle), for whom waiting only adds max_wait to every request
            return jobs
        deadline = loop.time() + self._max_wait
        waited = False
        while count < self._max_batch:
            if self._queue.empty():
                remaining = deadline - loop.time()
                if remaining <= 0:
                    waited = True
                    break
                try:
                    job = await asyncio.wait_for(self._queue.get(), remaining)
                except TimeoutError:
                    waited = True
                    break
            else:
                job = self._queue.get_nowait()
            if job.done.done():
                continue
            if count + len(job.sequences) > self._max_batch:
                self._carried = job  # too big to join: it leads the next batch
                break
            jobs.append(job)
            count += len(job.sequences)
        if len(jobs) > 1 or waited:
            self._alone = len(jobs) == 1
        return jobs


def _share(jobs: list[_Job], parts: int) -> list[list[_Job]]:
    """`jobs` in order, cut into `parts` groups of about as many sequences each."""
    total = sum(len(job.sequences) for job in jobs)
    groups: list[list[_Job]] = [[]]
    count = 0
    for job in jobs:
        if groups[-1] and len(groups) < parts and count >= total * len(groups) / parts:
            groups.append([])
        groups[-1].append(job)
        count += len(job.sequences)
    return groups
