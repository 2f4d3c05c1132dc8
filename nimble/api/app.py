"""Build the FastAPI app around a Runtime."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager, suppress

from fastapi import FastAPI

from nimble import __version__
from nimble.api.errors import install_error_handlers
from nimble.api.middleware import RequestContextMiddleware
from nimble.api.routes import chat, completions, embeddings, service
from nimble.runtime import Runtime

log = logging.getLogger("nimble.api")

LoadCallback = Callable[[BaseException | None], None]


def create_app(
    runtime: Runtime,
    *,
    max_body_bytes: int = 4 * 1024 * 1024,
    load_on_startup: bool = True,
    on_loaded: LoadCallback | None = None,
) -> FastAPI:
    """The HTTP adapter. With `load_on_startup`, models load in the background after the
    server listens (liveness answers at once; readiness after warm-up); `on_loaded` is told
    the outcome (None, or the exception)."""

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

    app = FastAPI(
        title="nimble",
        version=__version__,
        summary="OpenAI-compatible inference microservice",
        lifespan=lifespan,
        docs_url=None,
        redoc_url=None,
    )
    app.state.runtime = runtime
    install_error_handlers(app)
    for module in (chat, completions, embeddings, service):
        app.include_router(module.router)
    app.add_middleware(RequestContextMiddleware, max_body_bytes=max_body_bytes)
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
