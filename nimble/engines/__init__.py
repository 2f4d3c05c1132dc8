"""Engine adapters behind small contracts (`base.py`): a core every engine has, and one
Protocol per capability. Heavy libraries load only inside each engine's own subpackage."""

from nimble.engines.base import (
    AdapterHost,
    CacheReporter,
    Classifier,
    Embedder,
    Engine,
    Generator,
    Ranker,
    Tokenizer,
)
from nimble.engines.config import EngineConfig
from nimble.engines.registry import create_engine, engine_unavailable, known_engines, loads_first

__all__ = [
    "AdapterHost",
    "CacheReporter",
    "Classifier",
    "Embedder",
    "Engine",
    "EngineConfig",
    "Generator",
    "Ranker",
    "Tokenizer",
    "create_engine",
    "engine_unavailable",
    "known_engines",
    "loads_first",
]
