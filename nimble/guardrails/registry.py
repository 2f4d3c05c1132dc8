"""Rail types by their `type:` name. Each is a `RailType`; the PII rail's module (Presidio
and spaCy behind it) is imported only when a guardrails file names a `pii` rail."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from typing import Any

from nimble.guardrails.classifier import CLASSIFIER
from nimble.guardrails.judge import JUDGE
from nimble.guardrails.rail import ModelHandle, Rail, RailType
from nimble.guardrails.remote import REMOTE
from nimble.guardrails.topics import TOPICS


def _pii() -> RailType[Any]:
    from nimble.guardrails.pii import PiiRail, PiiSettings

    def build(name: str, settings: PiiSettings, models: ModelHandle) -> Rail:
        return PiiRail(name, settings)

    return RailType(PiiSettings, build)


class _Lazy(Mapping[str, RailType[Any]]):
    """A mapping whose values are loaded on first use (heavy rails stay unimported)."""

    def __init__(self, loaders: dict[str, Callable[[], RailType[Any]]]):
        self._loaders = loaders
        self._loaded: dict[str, RailType[Any]] = {}

    def __getitem__(self, name: str) -> RailType[Any]:
        if name not in self._loaded:
            self._loaded[name] = self._loaders[name]()
        return self._loaded[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._loaders)

    def __len__(self) -> int:
        return len(self._loaders)


RAIL_TYPES: Mapping[str, RailType[Any]] = _Lazy(
    {
        "classifier": lambda: CLASSIFIER,
        "judge": lambda: JUDGE,
        "topics": lambda: TOPICS,
        "remote": lambda: REMOTE,
        "pii": _pii,
    }
)
