"""The middleware stack of every nimble service (`nimble serve` and `nimble gateway`)."""

from __future__ import annotations

from fastapi import FastAPI
from starlette.middleware.cors import CORSMiddleware

from nimble.api.auth import AuthMiddleware
from nimble.api.messages_errors import AnthropicErrors
from nimble.api.middleware import BodyLimitMiddleware, RecordSink, RequestContextMiddleware
from nimble.config.service import ServiceSettings
from nimble.observability.tracing import RequestTracing
from nimble.security.keys import KeyStore
from nimble.security.limits import KeyLimiter


def install_middleware(
    app: FastAPI,
    settings: ServiceSettings,
    keys: KeyStore | None,
    sinks: list[RecordSink],
    tracing: RequestTracing,
    *,
    anthropic: bool,
    console: bool = False,
) -> None:
    """The middleware every nimble service has (serve and gateway), innermost first: the
    body limit, API keys with scopes and limits, the request record (ids, traces, access
    log, metrics and audit sinks), Anthropic's error shape, CORS. With `console`, the
    console's files (/ui) need no key."""
    # innermost first: each add_middleware wraps the ones before it
    app.add_middleware(BodyLimitMiddleware, max_body_bytes=settings.max_body_bytes)
    if keys is not None:
        app.add_middleware(
            AuthMiddleware,
            keys=keys,
            limiter=KeyLimiter(),
            metrics_require_key=settings.metrics_require_key,
            console_public=console,
        )
    app.add_middleware(RequestContextMiddleware, tracing=tracing, sinks=sinks)
    if anthropic:
        # around the request context: its 500s and X-Request-Id pass through it too
        app.add_middleware(AnthropicErrors)
    if settings.cors_allow_origins:
        # outermost: preflights are answered without a key, and 401s carry CORS headers
        app.add_middleware(
            CORSMiddleware,
            allow_origins=list(settings.cors_allow_origins),
            allow_methods=list(settings.cors_allow_methods),
            allow_headers=list(settings.cors_allow_headers),
            expose_headers=["X-Request-Id", "Retry-After", "traceparent"],
            max_age=settings.cors_max_age,
        )
