"""What one HTTP request did, filled in as it goes: the access log, the audit log, the
metrics and the trace spans are all written from this one record when the request ends."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from contextvars import ContextVar
from dataclasses import dataclass, field


@dataclass(frozen=True)
class RailCheck:
    """One guardrail check: a rail over the request's input, or over one window of its
    output. Never the text: the rail's name, its verdict, score and category."""

    rail: str
    stage: str  # input | output
    decision: str  # allow | block | redact
    score: float | None
    category: str | None
    started: float  # monotonic
    finished: float


_SEVERITY = {"allow": 0, "redact": 1, "block": 2}


@dataclass(frozen=True)
class RailSummary:
    """A rail's checks of one stage of a request, folded: the worst decision (block, then
    redact, then allow), the highest score, the worst's category, and how many ran (a
    streamed answer is checked a window at a time)."""

    rail: str
    stage: str
    decision: str
    score: float | None
    category: str | None
    checks: int

    def fold(self, check: RailCheck) -> RailSummary:
        worse = _SEVERITY[check.decision] > _SEVERITY[self.decision]
        scores = [s for s in (self.score, check.score) if s is not None]
        return RailSummary(
            self.rail,
            self.stage,
            check.decision if worse else self.decision,
            max(scores) if scores else None,
            check.category if worse else self.category,
            self.checks + 1,
        )

    def as_json(self) -> dict[str, object]:
        score = round(self.score, 4) if self.score is not None else None
        return {
            "rail": self.rail,
            "stage": self.stage,
            "decision": self.decision,
            "score": score,
            "category": self.category,
            "checks": self.checks,
        }


def rail_summary(checks: list[RailCheck]) -> list[RailSummary]:
    """One summary per rail and stage, in the order they first ran."""
    folded: dict[tuple[str, str], RailSummary] = {}
    for check in checks:
        key = (check.rail, check.stage)
        first = RailSummary(check.rail, check.stage, "allow", None, None, 0)
        folded[key] = folded.get(key, first).fold(check)
    return list(folded.values())


@dataclass
class RequestRecord:
    """Mutable on purpose: the middleware creates it, the auth layer and the runtime fill it
    in (through `current_record`), the middleware reads it when the response is sent."""

    request_id: str
    method: str = ""
    path: str = ""
    endpoint: str | None = None  # endpoint name (settings.ALL_ENDPOINTS), None if unknown
    client: str | None = None
    key_id: str | None = None
    # what the key says, for the runtime and the logs (set by the auth middleware)
    key_ref: str | None = None  # the key's hashed id (deployment record, metrics)
    key_purpose: str | None = None
    key_rails: tuple[str, ...] = ()  # guardrails bound to the key
    tools_callable: frozenset[str] | None = None  # tools the model may call; None: any
    status: int = 0
    trace_id: str | None = None
    started: float = field(default_factory=time.monotonic)
    started_wall_ns: int = field(default_factory=time.time_ns)
    # filled by the runtime
    model: str | None = None
    task: str | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_tokens: int = 0  # of the prompt tokens, those read from the engine's prefix cache
    queued_at: float | None = None  # monotonic: waiting for a slot from here...
    admitted_at: float | None = None  # ...to here, then the engine works...
    first_token_at: float | None = None
    last_token_at: float | None = None
    finished_at: float | None = None  # ...to here
    finish_reasons: list[str] = field(default_factory=list)
    aborted: bool = False  # the engine's work was cut short (client gone, error)
    dropped_tool_calls: list[str] = field(default_factory=list)  # names, outside tools_callable
    guardrails: list[RailCheck] = field(default_factory=list)  # each rail check, in order
    # the exact count of the prompt as the engine got it, when input rails changed it
    # (redacted): Runtime.prompt_tokens answers with it once generate has run
    sent_prompt_tokens: Callable[[], Awaitable[int]] | None = None

    def wall_ns(self, monotonic: float) -> int:
        """A monotonic timestamp of this request as epoch nanoseconds (for trace spans)."""
        return self.started_wall_ns + int((monotonic - self.started) * 1e9)


current_record: ContextVar[RequestRecord | None] = ContextVar("current_record", default=None)
