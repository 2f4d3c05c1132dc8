"""nimble: open inference microservices.

`nimble.create_app(settings)` is the library entry point: the ASGI app (FastAPI) with the
runtime built from the settings (`nimble.runtime.assemble`). It is imported on first use,
so that `import nimble` stays light (no FastAPI, no engine library).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from nimble.version import __version__

if TYPE_CHECKING:
    from nimble.api.app import create_app

__all__ = ["__version__", "create_app"]


def __getattr__(name: str) -> Any:
    if name == "create_app":
        from nimble.api.app import create_app

        return create_app
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
