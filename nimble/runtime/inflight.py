"""Requests in flight: the count a drain waits on, and the running slot a request of a model
holds (its admission, and the times its request record carries)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from nimble.observability.record import RequestRecord, current_record
from nimble.runtime.served import ServedModel
from nimble.types import Task


class Inflight:
    """The requests in flight; `with inflight:` counts one for its duration."""

    def __init__(self) -> None:
        self.count = 0
        self._idle = asyncio.Event()
        self._idle.set()

    def __enter__(self) -> None:
        self.count += 1
        self._idle.clear()

    def __exit__(self, *exc: object) -> None:
        self.count -= 1
        if self.count == 0:
            self._idle.set()

    async def wait_idle(self, timeout: float) -> bool:
        """Wait until no request is in flight; False if `timeout` passed first."""
        try:
            await asyncio.wait_for(self._idle.wait(), timeout)
        except TimeoutError:
            return False
        return True


@asynccontextmanager
async def running_slot(
    inflight: Inflight,
    model: ServedModel,
    task: Task,
    record: RequestRecord,
    served_as: str | None = None,
) -> AsyncIterator[None]:
    """Count the request in flight, wait for a running slot, and note the times.
    `served_as`: the name asked for (an adapter's), for the logs and metrics."""
    record.model = served_as or model.spec.id
    record.task = task.value
    record.queued_at = time.monotonic()
    with inflight:
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


def request_record() -> RequestRecord:
    """The record of the HTTP request being served, or a throwaway one (library use)."""
    record = current_record.get()
    return record if record is not None else RequestRecord(request_id="-")
