"""Engine adapters behind one small Protocol. Heavy libraries load only inside each adapter."""

from nimble.engines.base import Engine, EngineConfig
from nimble.engines.registry import create_engine, engine_unavailable, known_engines

__all__ = ["Engine", "EngineConfig", "create_engine", "engine_unavailable", "known_engines"]
