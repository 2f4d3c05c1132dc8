"""Build the FastAPI app around a Runtime, with the middleware that the settings ask for.

`create_app(settings)` is also the library entry point (`nimble.create_app`): with no
runtime given, it builds one from the settings through `nimble.runtime.assemble`.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager, suppress
from types import ModuleType

from fastapi import APIRouter, FastAPI
from fastapi.routing import APIRoute

from nimble.api.endpoints import HEALTH_PATHS, endpoint_of
from nimble.api.errors import install_error_handlers
from nimble.api.middleware import RecordSink
from nimble.api.routes import (
    adapters,
    chat,
    classify,
    completions,
    console,
    embeddings,
    health,
    messages,
    ranking,
    responses,
    service,
    tokenize,
)
from nimble.api.routes import metrics as metrics_routes
from nimble.api.stack import install_middleware
from nimble.config import Settings
from nimble.config.settings import ALL_ENDPOINTS
from nimble.observability.metrics import Metrics
from nimble.observability.tracing import RequestTracing
from nimble.runtime import Runtime
from nimble.runtime.assemble import build_runtime
from nimble.runtime.deployment import Deployment
from nimble.security.audit import AuditLog
from nimble.security.keys import KeyStore
from nimble.version import __version__

log = logging.getLogger("nimble.api")

LoadCallback = Callable[[BaseException | None], None]


def create_app(
    settings: Settings,
    *,
    runtime: Runtime | None = None,
    deployment: Deployment | None = None,
    load_on_startup: bool = True,
    on_loaded: LoadCallback | None = None,
    tracing: RequestTracing | None = None,
) -> FastAPI:
    """The HTTP adapter around `runtime`; with none, the runtime and the deployment facts
    are built from `settings` (`nimble.runtime.assemble.build_runtime`: this may download
    model files). The app's lifespan stops the runtime. With `load_on_startup`, it also
    loads the models in the background once the server listens (liveness answers at once;
    readiness after warm-up); `on_loaded` is told the outcome (None, or the exception).
    Reads nothing but `settings` (no environment). Raises ConfigError (a broken API key
    file, a bad setting) or ModelLoadError (a model file that cannot be had)."""
    tracing = tracing or RequestTracing()
    if runtime is None:
        runtime, built = build_runtime(settings)
        deployment = deployment or built
    # a key bound to a rail the runtime does not run would skip it: refused
    rails = runtime.config.guardrails
    keys = (
        KeyStore(
            settings.api_keys_file,
            ALL_ENDPOINTS,
            known_rails=frozenset(rails.rails if rails is not None else ()),
        )
        if settings.api_keys_file is not None
        else None
    )
    audit = (
        AuditLog(settings.audit_log, fsync=settings.audit_fsync)
        if settings.audit_log is not None
        else None
    )

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        loader = None
        if load_on_startup:
            loader = asyncio.create_task(_load(runtime, on_loaded))
        try:
            yield
        finally:
            if loader is not None and not loader.done():
                loader.cancel()
                with suppress(asyncio.CancelledError):
                    await loader
            await runtime.stop()
            if audit is not None:
                audit.close()
            tracing.shutdown()

    app = FastAPI(
        title="nimble",
        version=__version__,
        summary="OpenAI-compatible inference microservice",
        lifespan=lifespan,
        docs_url=None,
        redoc_url=None,
        openapi_url="/openapi.json" if "openapi" in settings.endpoints else None,
        # nimble makes its own request spans (observability/tracing.py); FastAPI's native
        # OpenTelemetry would add a second span per request whenever a global provider is
        # set, and checks the providers on every request even when none is
        telemetry={"tracing": False, "metrics": False, "logs": False},
    )
    app.state.runtime = runtime
    app.state.deployment = deployment or Deployment(settings, None, {})
    app.state.metrics = Metrics(runtime)
    app.state.keys = keys
    install_error_handlers(app)
    add_routes(
        app,
        (
            chat,
            responses,
            messages,
            completions,
            embeddings,
            ranking,
            classify,
            tokenize,
            service,
            metrics_routes,
            health,
            *((adapters,) if settings.runtime_adapters else ()),
            *((console,) if settings.console_on else ()),
        ),
        settings.endpoints,
    )

    sinks: list[RecordSink] = [app.state.metrics.observe]
    if audit is not None:
        sinks.append(audit.write)
    install_middleware(
        app,
        settings,
        keys,
        sinks,
        tracing,
        anthropic="messages" in settings.endpoints,
        console=settings.console_on,
    )
    return app


def add_routes(app: FastAPI, modules: tuple[ModuleType, ...], enabled: tuple[str, ...]) -> None:
    """Add the routes of endpoints in the allowlist (health probes always): any other path
    answers 404 like an unknown one, and is absent from the OpenAPI document. The routes are
    added one by one (not as an included router) so that `app.routes` lists each of them."""
    for module in modules:
        router: APIRouter = module.router
        for route in router.routes:
            if not isinstance(route, APIRoute):
                raise TypeError(f"unexpected route type in {module.__name__}: {route!r}")
            if route.path in HEALTH_PATHS or endpoint_of(route.path) in enabled:
                app.router.routes.append(route)


def create_management_app(runtime: Runtime, metrics: Metrics) -> FastAPI:
    """Health probes (vLLM's /health too) and /metrics alone, for the optional management
    port (no keys, no TLS), sharing the main app's runtime and metrics."""
    app = FastAPI(title="nimble management", version=__version__, docs_url=None, redoc_url=None)
    app.state.runtime = runtime
    app.state.metrics = metrics
    install_error_handlers(app)
    add_routes(app, (health, metrics_routes), ("metrics", "health"))
    return app


async def _load(runtime: Runtime, on_loaded: LoadCallback | None) -> None:
    try:
        await runtime.start()
    except Exception as exc:
        if on_loaded is None:
            log.error("model loading failed: %s", exc)
        else:
            on_loaded(exc)
        return
    if on_loaded is not None:
        on_loaded(None)
