"""The contract every rail follows, and the handle through which a rail reaches a model
that nimble itself serves.

A rail looks at one text at a time and says allow, block or redact (with the redacted
text). It never sees where the text came from beyond the stage: the stage (`stage.py`)
splits a request into texts, runs the rails in the configured order and puts the request
back together. A rail's `category` and `score` are recorded (audit, metrics, traces), so
they must never carry the text itself.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Generic, Literal, Protocol, TypeVar, runtime_checkable

from pydantic import BaseModel

from nimble.types import GenerateRequest

Stage = Literal["input", "output"]
STAGES: tuple[Stage, ...] = ("input", "output")
Decision = Literal["allow", "block", "redact"]


@dataclass(frozen=True)
class Check:
    """One rail's verdict on one text."""

    decision: Decision
    score: float | None = None  # the rail's score where it has one
    category: str | None = None  # e.g. "EMAIL_ADDRESS", "S1", "injection"; never content
    text: str | None = None  # decision == "redact": the text with the finds replaced


ALLOW = Check("allow")


@runtime_checkable
class Rail(Protocol):
    name: str

    async def start(self) -> None:
        """Load what the rail needs (a spaCy model, a client), once, before serving."""
        ...

    async def check(self, text: str, stage: Stage) -> Check: ...


@runtime_checkable
class TextRedactor(Protocol):
    """What a PII rail offers beside its checks (its `redactor`): the redaction of a log
    line, synchronous."""

    def redact(self, text: str) -> str: ...


class ModelHandle(Protocol):
    """The models nimble serves, as the classifier and judge rails use them (the runtime
    implements it with `Runtime.classify` and its generation path, without rails: a judge's
    own answer is not judged again)."""

    def serves(self, model: str) -> bool:
        """Whether `model` is served here (checked at start, not per request)."""
        ...

    async def classify(self, model: str, texts: Sequence[str]) -> list[Mapping[str, float]]:
        """Per text, each label of the classifier with its probability."""
        ...

    async def generate_text(self, model: str, request: GenerateRequest) -> str:
        """The whole text of the model's first choice for `request`."""
        ...


S = TypeVar("S", bound=BaseModel)


def _both(settings: BaseModel) -> tuple[Stage, ...]:
    return STAGES


def _no_models(settings: BaseModel) -> tuple[str, ...]:
    return ()


def _any_role(settings: BaseModel) -> tuple[str, ...] | None:
    return None


def _dump(settings: BaseModel) -> dict[str, Any]:
    return dict(settings.model_dump(mode="json"))


@dataclass(frozen=True)
class RailType(Generic[S]):
    """One kind of rail (`type:` in the guardrails file): the pydantic model its settings
    are validated with (extra fields forbidden), and how to build one.

    `stages`: where a rail of these settings may run (a topic allow list reads the input
    only). `roles`: the input texts it reads by default, by their message's role (None:
    all; an allow list reads the user's turns). `models`: the models nimble must serve for
    it (checked at start). `describe`: its settings for the deployment record, without
    secrets."""

    settings: type[S]
    build: Callable[[str, S, ModelHandle], Rail]
    stages: Callable[[S], tuple[Stage, ...]] = _both
    roles: Callable[[S], tuple[str, ...] | None] = _any_role
    models: Callable[[S], tuple[str, ...]] = _no_models
    describe: Callable[[S], dict[str, Any]] = _dump
