"""`type: topics`: allow and deny lists of keywords and regular expressions.

Keywords match whole words in any case (`api key` matches "API  Key" and not "rapid
keys"); patterns are regular expressions, also in any case. The text is NFKC-normalised
and stripped of zero-width characters first, so that a zero-width space inside a word or
full-width letters do not hide it. A deny match blocks (category `denied_topic`); with an allow
list, a text that matches none of it blocks (category `off_topic`): an allow list reads
the input only, by default its user turns.
"""

from __future__ import annotations

import re
import unicodedata

from pydantic import BaseModel, ConfigDict, field_validator, model_validator

from nimble.guardrails.rail import ALLOW, Check, ModelHandle, Rail, RailType, Stage

_INVISIBLE = dict.fromkeys(map(ord, "\u200b\u200c\u200d\u2060\ufeff\u00ad"))


class TopicsSettings(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    deny: tuple[str, ...] = ()  # keywords and phrases, whole words, any case
    deny_patterns: tuple[str, ...] = ()  # regular expressions, any case
    allow: tuple[str, ...] = ()
    allow_patterns: tuple[str, ...] = ()

    @field_validator("deny", "allow")
    @classmethod
    def _words(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        if any(not word.strip() for word in value):
            raise ValueError("an empty keyword would match everything")
        return value

    @field_validator("deny_patterns", "allow_patterns")
    @classmethod
    def _compiles(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for i, pattern in enumerate(value):
            try:
                re.compile(pattern)
            except re.error as exc:
                raise ValueError(f"pattern {i} is not a regular expression: {exc}") from exc
        return value

    @model_validator(mode="after")
    def _something(self) -> TopicsSettings:
        if not (self.deny or self.deny_patterns or self.allow or self.allow_patterns):
            raise ValueError("give deny, deny_patterns, allow or allow_patterns")
        return self

    @property
    def has_allow(self) -> bool:
        return bool(self.allow or self.allow_patterns)


def _keyword(word: str) -> str:
    """A keyword or phrase as a pattern: whole words, any run of blanks between them."""
    parts = [re.escape(part) for part in normalise(word).split()]
    return r"(?<!\w)" + r"\s+".join(parts) + r"(?!\w)"


class _Matcher:
    """Keywords as one alternation; each pattern compiled on its own (a pattern may carry
    its own inline flags, which an alternation of several would refuse)."""

    def __init__(self, words: tuple[str, ...], patterns: tuple[str, ...]):
        compiled = [re.compile(p, re.IGNORECASE) for p in patterns]
        if words:
            compiled.insert(0, re.compile("|".join(map(_keyword, words)), re.IGNORECASE))
        self._compiled = compiled

    def __bool__(self) -> bool:
        return bool(self._compiled)

    def search(self, text: str) -> bool:
        return any(pattern.search(text) for pattern in self._compiled)


def normalise(text: str) -> str:
    return unicodedata.normalize("NFKC", text).translate(_INVISIBLE)


class TopicsRail:
    def __init__(self, name: str, settings: TopicsSettings):
        self.name = name
        self._deny = _Matcher(settings.deny, settings.deny_patterns)
        self._allow = _Matcher(settings.allow, settings.allow_patterns)

    async def start(self) -> None:
        pass

    async def check(self, text: str, stage: Stage) -> Check:
        text = normalise(text)
        if self._deny.search(text):
            return Check("block", category="denied_topic")
        if self._allow and stage == "input" and not self._allow.search(text):
            return Check("block", category="off_topic")
        return ALLOW


def _build(name: str, settings: TopicsSettings, models: ModelHandle) -> Rail:
    return TopicsRail(name, settings)


def _stages(settings: TopicsSettings) -> tuple[Stage, ...]:
    # an answer is checked a window at a time: a window need not name an allowed topic
    return ("input",) if settings.has_allow else ("input", "output")


def _roles(settings: TopicsSettings) -> tuple[str, ...] | None:
    # the system prompt, tool results and earlier answers need not name an allowed topic
    return ("user",) if settings.has_allow else None


TOPICS = RailType(TopicsSettings, _build, stages=_stages, roles=_roles)
