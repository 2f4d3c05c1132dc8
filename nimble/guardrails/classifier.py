"""`type: classifier`: a sequence-classification model that nimble serves (Prompt Guard for
injection, a toxicity or HAP model), with the labels that count against a text and a
threshold.

A classifier reads a few hundred tokens at most (Prompt Guard 2: 512): a longer text is
cut into segments of `segment_chars` characters that overlap by `overlap_chars`, all
classified in one call (the engine batches them), and the text's score is its worst
segment's. Nothing past the model's window goes unread.
"""

from __future__ import annotations

from collections.abc import Mapping

from pydantic import BaseModel, ConfigDict, Field, model_validator

from nimble.errors import ConfigError
from nimble.guardrails.rail import Check, ModelHandle, Rail, RailType, Stage


class ClassifierSettings(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    model: str = Field(min_length=1)  # a classification model served by this nimble
    labels: tuple[str, ...] = Field(min_length=1)  # the labels that count against the text
    threshold: float = Field(default=0.5, ge=0, le=1)  # block when a label's probability >=
    segment_chars: int = Field(default=1500, ge=50)
    overlap_chars: int = Field(default=100, ge=0)

    @model_validator(mode="after")
    def _overlap(self) -> ClassifierSettings:
        if self.overlap_chars >= self.segment_chars:
            raise ValueError("overlap_chars: must be less than segment_chars")
        return self


def segments(text: str, size: int, overlap: int) -> list[str]:
    """`text` in pieces of at most `size` characters, each starting `overlap` characters
    before the end of the one before."""
    if len(text) <= size:
        return [text]
    step = size - overlap
    return [text[start : start + size] for start in range(0, len(text) - overlap, step)]


class ClassifierRail:
    def __init__(self, name: str, settings: ClassifierSettings, models: ModelHandle):
        self.name = name
        self.settings = settings
        self._models = models

    async def start(self) -> None:
        """Refuse labels the model does not have (a typo would pass everything)."""
        (probs,) = await self._models.classify(self.settings.model, ["hello"])
        missing = [label for label in self.settings.labels if label not in probs]
        if missing:
            raise ConfigError(
                f"guardrails: flows.{self.name}.labels: model `{self.settings.model}` has no "
                f"label {', '.join(missing)} (its labels: {', '.join(probs)})"
            )

    async def check(self, text: str, stage: Stage) -> Check:
        settings = self.settings
        pieces = segments(text, settings.segment_chars, settings.overlap_chars)
        results = await self._models.classify(settings.model, pieces)
        score, label = max(_worst(probs, settings.labels) for probs in results)
        if score >= settings.threshold:
            return Check("block", score=score, category=label)
        return Check("allow", score=score)


def _worst(probs: Mapping[str, float], labels: tuple[str, ...]) -> tuple[float, str]:
    return max((probs.get(label, 0.0), label) for label in labels)


def _build(name: str, settings: ClassifierSettings, models: ModelHandle) -> Rail:
    return ClassifierRail(name, settings, models)


def _models(settings: ClassifierSettings) -> tuple[str, ...]:
    return (settings.model,)


CLASSIFIER = RailType(ClassifierSettings, _build, models=_models)
