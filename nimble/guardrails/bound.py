"""A configured rail bound to the object that checks, the rails of one request, and the
bookkeeping of each check.

Each rail check is bounded by the rail's `timeout`; a check that fails or times out counts
as the rail's `on_error` (block by default: a rail that cannot answer does not wave text
through). Every check is written to the request record (rail, stage, decision, score,
category: never the text), from which the audit line, the metrics and the trace spans are
made when the request ends.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass

from nimble.errors import NimbleError
from nimble.guardrails.config import RailSpec, Window
from nimble.guardrails.rail import Check, Rail, Stage
from nimble.observability.record import RailCheck, RequestRecord

log = logging.getLogger("nimble.guardrails")

_SEVERITY = {"allow": 0, "redact": 1, "block": 2}


@dataclass(frozen=True)
class Bound:
    """A configured rail and the object that checks."""

    spec: RailSpec
    rail: Rail

    @property
    def name(self) -> str:
        return self.spec.name

    def reads(self, role: str) -> bool:
        return self.spec.roles is None or role in self.spec.roles

    async def run(self, text: str, stage: Stage) -> Check:
        """The rail's verdict on `text`, bounded by its timeout; a failure is `on_error`."""
        try:
            return await asyncio.wait_for(self.rail.check(text, stage), self.spec.timeout)
        except Exception as exc:  # any failure of a rail is its on_error
            # the exception's own text may quote the checked text: only nimble's own errors
            # (which never do) are logged with their message
            why = f": {exc.message}" if isinstance(exc, NimbleError) else ""
            if isinstance(exc, TimeoutError):
                why = f": no answer within {self.spec.timeout:g}s"
            log.warning(
                "guardrail %s (%s) failed, %s: %s%s",
                self.name,
                stage,
                "blocking" if self.spec.on_error == "block" else "allowing",
                type(exc).__name__,
                why,
            )
            return Check(self.spec.on_error, category="error")


@dataclass(frozen=True)
class Plan:
    """The rails of one request, stage by stage, in the order they run."""

    input: tuple[Bound, ...]
    output: tuple[Bound, ...]
    window: Window


def worst(checks: Sequence[Check]) -> Check:
    """The verdict of several texts: the most severe decision, with its category; the
    highest score of all."""
    if not checks:
        return Check("allow")
    top = max(checks, key=lambda c: _SEVERITY[c.decision])
    scores = [c.score for c in checks if c.score is not None]
    return Check(top.decision, max(scores) if scores else None, top.category)


def note(record: RequestRecord, bound: Bound, stage: Stage, verdict: Check, started: float) -> None:
    record.guardrails.append(
        RailCheck(
            bound.name,
            stage,
            verdict.decision,
            verdict.score,
            verdict.category,
            started,
            time.monotonic(),
        )
    )
