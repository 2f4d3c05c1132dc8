"""API key middleware: every path except the health probes, vLLM's /health among them (and,
if so set, the metrics) needs a valid key (401), inside its endpoint scope (403) and its
limits (429). Unknown paths need a key too: without one, nothing tells a stranger which
paths exist."""

from __future__ import annotations

from starlette.types import ASGIApp, Receive, Scope, Send

from nimble.api.endpoints import ENDPOINT_PATHS, HEALTH_PATHS
from nimble.api.errors import nimble_error_response
from nimble.api.middleware import header, route_path
from nimble.errors import NimbleError
from nimble.observability.record import RequestRecord, current_record
from nimble.security.keys import ApiKey, KeyStore
from nimble.security.limits import KeyLimiter


def bearer_token(scope: Scope) -> str | None:
    value = header(scope, b"authorization")
    if value is None:
        return None
    scheme, _, token = value.partition(" ")
    return token.strip() or None if scheme.lower() == "bearer" else None


def presented_key(scope: Scope) -> str | None:
    """The key the caller sent: `Authorization: Bearer <key>` (OpenAI's clients), else
    `x-api-key: <key>` (Anthropic's); the bearer token wins when both are sent."""
    token = bearer_token(scope)
    if token is not None:
        return token
    return (header(scope, b"x-api-key") or "").strip() or None


class AuthMiddleware:
    def __init__(
        self,
        app: ASGIApp,
        *,
        keys: KeyStore,
        limiter: KeyLimiter,
        metrics_require_key: bool = True,
        console_public: bool = False,
    ):
        self.app = app
        self.keys = keys
        self.limiter = limiter
        self.public = {*HEALTH_PATHS, *ENDPOINT_PATHS["health"]}
        if not metrics_require_key:
            self.public.update(ENDPOINT_PATHS["metrics"])
        # the console's files: a browser cannot send a key when it opens a page, and they
        # hold nothing secret (the page calls the API with the key typed into it)
        self.console_public = console_public

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = route_path(scope) if scope["type"] == "http" else ""
        if (
            scope["type"] != "http"
            or path in self.public
            or (self.console_public and (path == "/ui" or path.startswith("/ui/")))
        ):
            await self.app(scope, receive, send)
            return
        record = current_record.get() or RequestRecord(request_id="-")
        try:
            key = self.keys.authenticate(presented_key(scope))
            _note_key(record, key)
            if record.endpoint is not None:
                key.require_endpoint(record.endpoint)
            self.limiter.admit(key)
        except NimbleError as exc:
            response = nimble_error_response(exc, record.request_id)
            await response(scope, receive, send)
            return
        scope.setdefault("state", {})["api_key"] = key
        try:
            await self.app(scope, receive, send)
        finally:
            self.limiter.done(key, record.prompt_tokens + record.completion_tokens)


def _note_key(record: RequestRecord, key: ApiKey) -> None:
    """What the runtime and the logs need to know about the caller's key."""
    record.key_id = key.id
    record.key_ref = key.ref
    record.key_purpose = key.purpose
    record.key_rails = key.rails
    record.tools_callable = key.tools.call
