"""Admission control: a bounded number of running requests and a bounded wait queue."""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from nimble.errors import Overloaded


class Admission:
    """Per-model gate. Beyond `max_running + max_waiting`, requests are refused at once."""

    def __init__(self, max_running: int, max_waiting: int):
        self.max_running = max_running
        self.max_waiting = max_waiting
        self.running = 0
        self.waiting = 0
        self._free = asyncio.Condition()
        # moving average of how long a request holds its slot, for Retry-After
        self._avg_hold = 1.0

    def retry_after(self) -> int:
        """Seconds after which a slot is likely free: the queue ahead, drained in parallel."""
        ahead = self.waiting + 1
        return max(1, math.ceil(self._avg_hold * ahead / self.max_running))

    async def acquire(self) -> None:
        """Wait for a running slot; Overloaded at once when the queue is full too."""
        if self.running >= self.max_running and self.waiting >= self.max_waiting:
            raise Overloaded(
                f"server overloaded: {self.running} requests running and {self.waiting} "
                "waiting for this model; retry later",
                retry_after=self.retry_after(),
            )
        async with self._free:
            self.waiting += 1
            try:
                await self._free.wait_for(lambda: self.running < self.max_running)
            finally:
                self.waiting -= 1
            self.running += 1

    async def release(self, held: float) -> None:
        """Give back a slot held for `held` seconds."""
        self._avg_hold = 0.8 * self._avg_hold + 0.2 * held
        async with self._free:
            self.running -= 1
            self._free.notify()

    @asynccontextmanager
    async def slot(self) -> AsyncIterator[None]:
        await self.acquire()
        started = time.monotonic()
        try:
            yield
        finally:
            await self.release(time.monotonic() - started)
