"""EmbedBatcher with a stand-in run function: batches share the lanes, big requests are cut
into jobs and put back together in order, failures and stops reach exactly their callers."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING

import numpy as np
import pytest

from nimble.engines.onnx.batching import EmbedBatcher, _Job, _share

if TYPE_CHECKING:
    from nimble.engines.onnx.batching import Rows


class Closed(Exception):
    pass


class Runs:
    """The run function: one row per sequence, holding the sequence's first id. Records how
    many runs overlapped; `gate` (when set) holds every run until it is opened."""

    def __init__(self, fail_on: int | None = None):
        self.lock = threading.Lock()
        self.now = 0
        self.most = 0
        self.sizes: list[int] = []
        self.fail_on = fail_on
        self.gate: threading.Event | None = None

    def __call__(self, sequences: list[Sequence[int]]) -> Rows:
        with self.lock:
            self.now += 1
            self.most = max(self.most, self.now)
            self.sizes.append(len(sequences))
        try:
            if self.gate is not None:
                assert self.gate.wait(10)
            if self.fail_on is not None and any(s[0] == self.fail_on for s in sequences):
                raise ValueError(f"cannot embed {self.fail_on}")
            return np.array([[float(s[0])] for s in sequences], dtype=np.float32)
        finally:
            with self.lock:
                self.now -= 1


async def until(condition: Callable[[], bool]) -> None:
    """Poll (the work runs on threads) until `condition` holds, for at most 5 s."""
    deadline = asyncio.get_running_loop().time() + 5
    while not condition():
        assert asyncio.get_running_loop().time() < deadline, "condition never held"
        await asyncio.sleep(0.001)


def batcher(runs: Runs, pool: ThreadPoolExecutor, **options: object) -> EmbedBatcher:
    settings: dict[str, object] = {"max_batch": 8, "max_wait": 0.01, "lanes": 2, **options}
    return EmbedBatcher(runs, pool, closed=Closed, **settings)  # type: ignore[arg-type]


@pytest.fixture
def pool() -> ThreadPoolExecutor:
    with ThreadPoolExecutor(max_workers=4) as pool:
        yield pool


async def test_a_burst_is_shared_over_the_free_lanes(pool: ThreadPoolExecutor) -> None:
    runs = Runs()
    runs.gate = threading.Event()
    b = batcher(runs, pool)
    calls = [asyncio.create_task(b.embed([[i]])) for i in range(8)]
    await until(lambda: runs.now == 2)  # both lanes hold part of the burst
    runs.gate.set()
    rows = await asyncio.gather(*calls)
    assert [r.tolist() for r in rows] == [[[float(i)]] for i in range(8)]
    assert runs.most == 2 and b.stats.most_at_once == 2
    assert sorted(runs.sizes) == [4, 4]
    await b.close()


async def test_one_lane_never_runs_two_batches(pool: ThreadPoolExecutor) -> None:
    runs = Runs()
    b = batcher(runs, pool, lanes=1, max_batch=2)
    rows = await asyncio.gather(*(b.embed([[i]]) for i in range(9)))
    assert [r[0, 0] for r in rows] == list(range(9))
    assert runs.most == 1 and max(runs.sizes) <= 2
    await b.close()


async def test_one_client_at_a_time_stops_waiting_for_company(pool: ThreadPoolExecutor) -> None:
    runs = Runs()
    b = batcher(runs, pool, max_wait=0.001)
    assert (await b.embed([[1]]))[0, 0] == 1  # waited for company, none came
    b._max_wait = 60.0  # were the next request to wait again, it would not run for a minute
    runs.gate = threading.Event()
    second = asyncio.create_task(b.embed([[2]]))
    await until(lambda: runs.now == 1)  # it runs at once: nothing ran, nobody was queued
    runs.gate.set()
    assert (await second)[0, 0] == 2 and runs.sizes == [1, 1]
    await b.close()


async def test_while_a_batch_runs_the_next_still_waits_for_company(
    pool: ThreadPoolExecutor,
) -> None:
    runs = Runs()
    b = batcher(runs, pool, max_wait=0.001, max_batch=2)
    await b.embed([[1]])  # one client at a time so far
    b._max_wait = 60.0
    runs.gate = threading.Event()
    first = asyncio.create_task(b.embed([[2]]))
    await until(lambda: runs.now == 1)
    later = [asyncio.create_task(b.embed([[3]]))]
    await asyncio.sleep(0.01)  # the free lane is waiting with [3] by now, or [4] joins anyway
    later.append(asyncio.create_task(b.embed([[4]])))
    await until(lambda: runs.now == 2)  # [3, 4] together: a full batch ends the wait
    runs.gate.set()
    rows = await asyncio.gather(first, *later)
    assert [r[0, 0] for r in rows] == [2, 3, 4]
    assert runs.sizes == [1, 1, 2]
    await b.close()


async def test_a_big_request_is_cut_into_jobs_and_comes_back_in_order(
    pool: ThreadPoolExecutor,
) -> None:
    runs = Runs()
    b = batcher(runs, pool, chunk=4, max_batch=4)
    rows = await b.embed([[i] for i in range(10)])
    assert rows[:, 0].tolist() == list(range(10))
    assert sorted(runs.sizes) == [2, 4, 4] and max(runs.sizes) <= 4
    await b.close()


async def test_a_failed_batch_fails_only_its_callers(pool: ThreadPoolExecutor) -> None:
    runs = Runs(fail_on=13)
    b = batcher(runs, pool, chunk=2, max_batch=2, lanes=1)
    with pytest.raises(ValueError, match="cannot embed 13"):
        await b.embed([[10], [11], [12], [13], [14]])  # the job [12, 13] fails
    assert (await b.embed([[7]]))[0, 0] == 7  # the batcher still serves
    await b.close()


async def test_close_answers_every_waiting_caller_and_refuses_new_ones(
    pool: ThreadPoolExecutor,
) -> None:
    runs = Runs()
    runs.gate = threading.Event()
    b = batcher(runs, pool, max_batch=1)
    calls = [asyncio.create_task(b.embed([[i]])) for i in range(6)]
    await until(lambda: runs.now == 2)  # two running, four queued
    await b.close()
    runs.gate.set()
    outcomes = await asyncio.gather(*calls, return_exceptions=True)
    assert all(isinstance(o, Closed) for o in outcomes), outcomes
    with pytest.raises(Closed):
        await b.embed([[1]])


async def test_a_caller_that_went_away_is_dropped_from_its_batch(
    pool: ThreadPoolExecutor,
) -> None:
    runs = Runs()
    runs.gate = threading.Event()
    b = batcher(runs, pool, max_batch=1, lanes=1)
    first = asyncio.create_task(b.embed([[1]]))
    await until(lambda: runs.now == 1)
    gone = asyncio.create_task(b.embed([[2]]))
    last = asyncio.create_task(b.embed([[3]]))
    await asyncio.sleep(0)
    gone.cancel()
    runs.gate.set()
    assert (await first)[0, 0] == 1 and (await last)[0, 0] == 3
    assert runs.sizes == [1, 1]  # [2] never ran
    assert not b._pending
    await b.close()


@pytest.mark.parametrize(
    ("sizes", "parts", "expected"),
    [
        ([1] * 8, 2, [[1] * 4, [1] * 4]),
        ([1] * 5, 2, [[1, 1, 1], [1, 1]]),
        ([3, 1, 1, 1], 2, [[3], [1, 1, 1]]),
        ([1, 1, 1], 3, [[1], [1], [1]]),
        ([8, 1], 3, [[8], [1]]),  # fewer groups than lanes: one job is never split
        ([2, 2], 1, [[2, 2]]),
    ],
)
async def test_share_cuts_in_order_into_even_groups(
    sizes: list[int], parts: int, expected: list[list[int]]
) -> None:
    jobs = [_Job([[0]] * n) for n in sizes]
    groups = _share(jobs, parts)
    assert [[len(j.sequences) for j in g] for g in groups] == expected
    assert [j for g in groups for j in g] == jobs
