"""nimble's version, from the installed package metadata (a leaf: imports nothing of nimble)."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("nimble")
except PackageNotFoundError:  # pragma: no cover - running from a source tree
    __version__ = "0.0.0+local"

__all__ = ["__version__"]
