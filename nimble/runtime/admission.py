"""Admission control: a bounded number of running requests and a bounded wait queue."""

from __future__ import annotations

import asyncio
import math

from nimble.errors import Overloaded


class Admission:
    """Per-model gate. Beyond `max_running + max_waiting`, requests are refused at once; so
    is one that would wait longer than `max_wait` seconds for a slot (from the measured rate
    at which slots free up), and one that waited `max_wait` without getting a slot."""

    def __init__(self, max_running: int, max_waiting: int, max_wait: float = math.inf):
        self.max_running = max_running
        self.max_waiting = max_waiting
        self.max_wait = max_wait
        self.running = 0
        self.waiting = 0
        self._free = asyncio.Condition()
        # moving average of how long a request holds its slot, for Retry-After
        self._avg_hold = 1.0

    def expected_wait(self) -> float:
        """Seconds a request arriving now would likely wait: the queue ahead of it and
        itself, `max_running` at a time, each holding its slot for the measured average."""
        return self._avg_hold * (self.waiting + 1) / self.max_running

    def retry_after(self) -> int:
        """Seconds after which a slot is likely free: the queue ahead, drained in parallel."""
        return max(1, math.ceil(self.expected_wait()))

    async def acquire(self) -> None:
        """Wait for a running slot; Overloaded at once when the queue is full or the wait
        would run past `max_wait`, and Overloaded when it did."""
        busy = self.running >= self.max_running
        if busy and self.waiting >= self.max_waiting:
            raise Overloaded(
                f"server overloaded: {self.running} requests running and {self.waiting} "
                "waiting for this model; retry later",
                retry_after=self.retry_after(),
            )
        if busy and self.expected_wait() > self.max_wait:
            raise Overloaded(
                f"server overloaded: a request now would wait about {self.expected_wait():.1f}s "
                f"for a slot of this model, more than the {self.max_wait:g}s allowed "
                "(max_queue_wait); retry later",
                retry_after=self.retry_after(),
            )
        async with self._free:
            self.waiting += 1
            try:
                async with asyncio.timeout(self.max_wait if busy else None):
                    await self._free.wait_for(lambda: self.running < self.max_running)
            except BaseException as exc:
                if self.running < self.max_running:
                    self._free.notify()  # pass on a wake-up this waiter may have taken
                if isinstance(exc, TimeoutError):
                    raise Overloaded(
                        f"server overloaded: no slot of this model freed up within "
                        f"{self.max_wait:g}s (max_queue_wait); retry later",
                        retry_after=self.retry_after(),
                    ) from None
                raise
            finally:
                self.waiting -= 1
            self.running += 1

    async def release(self, held: float) -> None:
        """Give back a slot held for `held` seconds."""
        self._avg_hold = 0.8 * self._avg_hold + 0.2 * held
        async with self._free:
            self.running -= 1
            self._free.notify()
