"""nimble on a Ray cluster: N autoscaled replicas of a model as a Ray Serve application,
each built through `nimble.create_app(settings)`, with nimble's routing policy plugged into
Ray Serve's request routing (docs/scaling.md, "Ray Serve").

    serve run nimble.ray_serve:build_app model=fake min_replicas=1 max_replicas=2
    python -m nimble.ray_serve --address auto --model fake --min-replicas 1 --max-replicas 2

Needs the `ray` extra (`pip install 'nimble[ray]'`); nothing else in nimble imports Ray.
"""

from __future__ import annotations

try:
    import ray.serve  # noqa: F401
except ImportError as exc:  # pragma: no cover - depends on the install
    raise ImportError(
        "nimble.ray_serve needs Ray Serve: pip install 'nimble[ray]' (or 'ray[serve]')"
    ) from exc

from nimble.ray_serve.deployments import (
    NimbleIngress,
    NimbleServer,
    ServeOptions,
    build_app,
    build_application,
)
from nimble.ray_serve.router import PrefixAwareRouter, prompt_text

__all__ = [
    "NimbleIngress",
    "NimbleServer",
    "PrefixAwareRouter",
    "ServeOptions",
    "build_app",
    "build_application",
    "prompt_text",
]
