"""Settings, read once at the edge (CLI > NIMBLE_* env > YAML file > defaults), then frozen."""

from nimble.config.settings import Settings, load_settings

__all__ = ["Settings", "load_settings"]
