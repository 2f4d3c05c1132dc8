"""The PII rail's pure parts: settings, merging finds, redaction, the windows long texts are
read in, and the rail's decisions (on a stand-in analyzer: the real one is in
tests/models/test_pii.py)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping

import pytest
from pydantic import ValidationError

from nimble.guardrails import pii
from nimble.guardrails.pii import DEFAULT_ENTITIES, Found, PiiRail, PiiRedactor, PiiSettings, merge


def test_settings_defaults_and_validation() -> None:
    settings = PiiSettings()
    assert settings.entities == DEFAULT_ENTITIES
    assert "LOCATION" not in settings.entities  # cities and countries are opt-in
    assert (settings.action, settings.placeholder) == ("redact", "<{entity}>")
    assert PiiSettings(entities=("PERSON", "PERSON", "URL")).entities == ("PERSON", "URL")
    bad: Mapping[str, object]
    for bad in (
        {"entities": ["EMAIL", "PERSON"]},  # not a Presidio name
        {"entities": []},
        {"action": "mask"},
        {"score_threshold": 1.5},
        {"placeholder": "<{kind}>"},
        {"placeholder": "<{}>"},
        {"phone_regions": ["usa"]},
        {"type": "pii"},  # the loader takes `type` off before validating
    ):
        with pytest.raises(ValidationError):
            PiiSettings.model_validate(bad)
    with pytest.raises(ValidationError, match="EMAIL"):
        PiiSettings.model_validate({"entities": ["EMAIL"]})


def test_merge_overlapping_finds_into_one_span_named_by_the_best() -> None:
    finds = [
        Found("PHONE_NUMBER", 10, 20, 0.4),
        Found("IBAN_CODE", 5, 32, 1.0),  # a phone-looking run inside an IBAN
        Found("PERSON", 40, 50, 0.85),
        Found("LOCATION", 45, 60, 0.85),  # same score: the longer names the span
        Found("EMAIL_ADDRESS", 60, 70, 1.0),  # touches the one before: kept apart
    ]
    assert merge(finds) == [
        Found("IBAN_CODE", 5, 32, 1.0),
        Found("LOCATION", 40, 60, 0.85),
        Found("EMAIL_ADDRESS", 60, 70, 1.0),
    ]
    assert merge([]) == []


def test_redact_found_writes_the_placeholder() -> None:
    text = "mail ann@example.com or call 415-555-0199 now"
    finds = [Found("EMAIL_ADDRESS", 5, 20, 1.0), Found("PHONE_NUMBER", 29, 41, 0.4)]
    assert (
        PiiRedactor().redact_found(text, finds) == "mail <EMAIL_ADDRESS> or call <PHONE_NUMBER> now"
    )
    masked = PiiRedactor(PiiSettings(placeholder="[{entity} removed]"))
    assert (
        masked.redact_found(text, finds[:1])
        == "mail [EMAIL_ADDRESS removed] or call 415-555-0199 now"
    )
    stars = PiiRedactor(PiiSettings(placeholder="***"))
    assert stars.redact_found(text, finds[1:]) == "mail ann@example.com or call *** now"


@pytest.mark.parametrize("length", [0, 1, 19_999, 20_000, 20_001, 39_600, 39_601, 100_000])
def test_windows_cover_the_text_and_every_short_find_whole(length: int) -> None:
    starts = pii._windows(length)
    assert starts[0] == 0
    assert starts[-1] + pii.WINDOW >= length
    # a find of up to OVERLAP characters lies whole in one window, wherever it sits
    for cut in starts[1:]:
        for at in range(cut - pii.OVERLAP, cut + 1):
            assert any(s <= at and at + pii.OVERLAP <= s + pii.WINDOW for s in starts)


class StandIn:
    """Follows PresidioAnalyzer.analyze: finds "SECRET" (score 0.9) and "maybe" (0.3)."""

    def __init__(self) -> None:
        self.calls: list[int] = []

    def analyze(self, text: str, threshold: float) -> list[tuple[str, int, int, float]]:
        self.calls.append(len(text))
        out = []
        for word, entity, score in (("SECRET", "US_SSN", 0.9), ("maybe", "PERSON", 0.3)):
            at = text.find(word)
            while at >= 0:
                if score >= threshold:
                    out.append((entity, at, at + len(word), score))
                at = text.find(word, at + 1)
        return out


def rail(**settings: object) -> tuple[PiiRail, StandIn]:
    made = PiiRail("pii", PiiSettings.model_validate(settings))
    stand_in = StandIn()
    made.redactor._analyzer = stand_in  # type: ignore[assignment]
    return made, stand_in


async def test_rail_decisions_name_the_kinds_never_the_text() -> None:
    redacting, _ = rail()
    check = await redacting.check("the code is SECRET, maybe", "input")
    assert (check.decision, check.category, check.score) == ("redact", "US_SSN", 0.9)
    assert check.text == "the code is <US_SSN>, maybe"
    lower, _ = rail(score_threshold=0.2)
    check = await lower.check("the code is SECRET, maybe", "output")
    assert (check.category, check.score) == ("PERSON,US_SSN", 0.9)
    assert check.text == "the code is <US_SSN>, <PERSON>"
    blocking, _ = rail(action="block")
    check = await blocking.check("SECRET", "input")
    assert (check.decision, check.category, check.score, check.text) == (
        "block",
        "US_SSN",
        0.9,
        None,
    )
    assert (await blocking.check("nothing here", "input")).decision == "allow"


async def test_blank_text_is_allowed_without_analysis() -> None:
    redacting, stand_in = rail()
    assert (await redacting.check("  \n", "output")).decision == "allow"
    assert stand_in.calls == []


def slow_analysis(text: str, threshold: float) -> list[tuple[str, int, int, float]]:
    time.sleep(0.05)  # stands for 50 ms of CPU in spaCy
    return []


async def test_check_runs_off_the_event_loop() -> None:
    slow, stand_in = rail()
    stand_in.analyze = slow_analysis  # type: ignore[method-assign]
    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        while True:
            ticks += 1
            await asyncio.sleep(0)

    task = asyncio.create_task(ticker())
    await asyncio.sleep(0)
    before = ticks
    assert (await slow.check("text", "input")).decision == "allow"
    assert ticks > before + 1  # the loop kept running while the analysis did
    task.cancel()


def test_long_texts_are_read_in_windows_and_finds_land_at_their_offsets() -> None:
    redactor = PiiRedactor()
    stand_in = StandIn()
    redactor._analyzer = stand_in  # type: ignore[assignment]
    cut = pii.WINDOW - pii.OVERLAP  # where the second window starts
    text = "x" * (cut - 3) + "SECRET" + "y" * 30_000 + "SECRET"
    found = redactor.find(text)
    assert stand_in.calls == [pii.WINDOW, pii.WINDOW, len(text) - 2 * cut]
    assert [(f.start, f.end) for f in found] == [(cut - 3, cut + 3), (len(text) - 6, len(text))]
    assert redactor.redact(text).count("<US_SSN>") == 2
