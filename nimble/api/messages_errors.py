"""Errors on Anthropic's Messages routes in Anthropic's shape.

`{"type": "error", "error": {"type", "message", "param", "code"}, "request_id"}`: what
Anthropic's SDKs and the tools built on them recognise (the top-level `type`, and the error
types they branch on: `overloaded_error`, `api_error`, `request_too_large`), with nimble's
`param` and `code` kept, so that every 4xx still names the offending field. The status
codes are nimble's, as on every route.

The answer is rewritten at the edge (`AnthropicErrors`, an ASGI middleware around the
request-context middleware) rather than made in another shape by each layer: the 401 of the
key check, the 413 of the body limit, a 400 of validation, a refusal of the runtime and a
500 all come out of the same mapping (`api/errors.py`).
"""

from __future__ import annotations

from typing import Any

import orjson
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from nimble.api.endpoints import endpoint_of
from nimble.api.middleware import route_path

# nimble's (OpenAI's) error type -> Anthropic's; a `code` that says more wins
_TYPES = {"server_error": "api_error", "service_unavailable_error": "overloaded_error"}
_CODES = {"overloaded": "overloaded_error", "request_too_large": "request_too_large"}


def anthropic_error(payload: dict[str, Any], request_id: str) -> dict[str, Any]:
    """An OpenAI-shaped error payload (`{"error": {...}}`) in Anthropic's shape."""
    error = dict(payload["error"])
    kind = str(error.get("type"))
    error["type"] = _CODES.get(str(error.get("code")), _TYPES.get(kind, kind))
    return {"type": "error", "error": error, "request_id": request_id}


class AnthropicErrors:
    """On the `messages` endpoint's paths: error answers in Anthropic's shape, and every
    answer with `request-id` (the header Anthropic's SDKs read) beside X-Request-Id. Other
    paths pass through untouched."""

    def __init__(self, app: ASGIApp):
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or endpoint_of(route_path(scope)) != "messages":
            await self.app(scope, receive, send)
            return
        start: Message | None = None
        request_id = "-"
        parts: list[bytes] = []

        async def rewrite(message: Message) -> None:
            nonlocal start, request_id
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                for name, value in headers:
                    if name.lower() == b"x-request-id":
                        request_id = value.decode("latin-1")
                        headers.append((b"request-id", value))
                        break
                message = {**message, "headers": headers}
                if message["status"] < 400:
                    await send(message)
                else:
                    start = message  # held until the whole (small) error body is here
                return
            if start is None or message["type"] != "http.response.body":
                await send(message)
                return
            parts.append(message.get("body", b""))
            if message.get("more_body", False):
                return
            body = _rewritten(b"".join(parts), request_id)
            headers = [(k, v) for k, v in start["headers"] if k.lower() != b"content-length"]
            headers.append((b"content-length", str(len(body)).encode()))
            await send({**start, "headers": headers})
            await send({"type": "http.response.body", "body": body})

        await self.app(scope, receive, rewrite)


def _rewritten(body: bytes, request_id: str) -> bytes:
    try:
        payload = orjson.loads(body)
    except orjson.JSONDecodeError:
        return body
    if not (isinstance(payload, dict) and isinstance(payload.get("error"), dict)):
        return body
    return orjson.dumps(anthropic_error(payload, request_id))
