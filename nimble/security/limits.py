"""Per-key limits: requests per minute, tokens per minute, concurrent requests.

Requests and tokens use token buckets refilled continuously (a minute's allowance, spread
over the minute). Tokens are counted when a request ends (only then is the count known):
a request is admitted while the key's token bucket is not empty, and its usage may take
the bucket below zero, which then blocks the key until the refill brings it back.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from nimble.errors import RateLimited
from nimble.security.keys import ApiKey


@dataclass
class _Bucket:
    capacity: float
    level: float
    updated: float

    def refill(self, now: float) -> None:
        rate = self.capacity / 60.0
        self.level = min(self.capacity, self.level + (now - self.updated) * rate)
        self.updated = now

    def seconds_until(self, amount: float) -> float:
        """How long until the level reaches `amount`."""
        missing = amount - self.level
        return 0.0 if missing <= 0 else missing * 60.0 / self.capacity


@dataclass
class _KeyState:
    requests: _Bucket | None = None
    tokens: _Bucket | None = None
    running: int = 0
    limits_seen: object = field(default=None)


class KeyLimiter:
    """Limit state per key id (kept across key file reloads)."""

    def __init__(self, clock: Callable[[], float] = time.monotonic):
        self._clock = clock
        self._state: dict[str, _KeyState] = {}

    def _state_of(self, key: ApiKey, now: float) -> _KeyState:
        state = self._state.setdefault(key.id, _KeyState())
        if state.limits_seen != key.limits:  # new key, or its limits changed on reload
            rpm, tpm = key.limits.requests_per_minute, key.limits.tokens_per_minute
            state.requests = _Bucket(rpm, rpm, now) if rpm else None
            state.tokens = _Bucket(tpm, tpm, now) if tpm else None
            state.limits_seen = key.limits
        return state

    def admit(self, key: ApiKey) -> None:
        """Count a request against the key's limits, or raise RateLimited (429)."""
        now = self._clock()
        state = self._state_of(key, now)
        cap = key.limits.concurrent_requests
        if cap is not None and state.running >= cap:
            raise RateLimited(
                f"API key `{key.id}` has {state.running} requests running: its limit is {cap}",
                retry_after=1,
            )
        if state.tokens is not None:
            state.tokens.refill(now)
            if state.tokens.level <= 0:
                raise RateLimited(
                    f"API key `{key.id}` used its {state.tokens.capacity:.0f} tokens per minute",
                    retry_after=_ceil(state.tokens.seconds_until(1)),
                )
        if state.requests is not None:
            state.requests.refill(now)
            if state.requests.level < 1:
                raise RateLimited(
                    f"API key `{key.id}` reached its {state.requests.capacity:.0f} requests "
                    "per minute",
                    retry_after=_ceil(state.requests.seconds_until(1)),
                )
            state.requests.level -= 1
        state.running += 1

    def done(self, key: ApiKey, tokens: int) -> None:
        """The request ended, having used `tokens` (prompt + completion)."""
        state = self._state.get(key.id)
        if state is None:
            return
        state.running = max(0, state.running - 1)
        if state.tokens is not None and tokens:
            state.tokens.refill(self._clock())
            state.tokens.level -= tokens


def _ceil(seconds: float) -> int:
    return max(1, math.ceil(seconds))
