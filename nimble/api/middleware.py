"""Pure ASGI middleware (streaming-safe): request ids, access log, body size limit."""

from __future__ import annotations

import json
import logging
import re
import time
import uuid
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from nimble.api.errors import error_payload
from nimble.observability.context import request_id_var

log = logging.getLogger("nimble.access")

_VALID_ID = re.compile(r"^[A-Za-z0-9._:\-]{1,128}$")


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope.get("headers", []):
        if key.lower() == name:
            return str(value.decode("latin-1"))
    return None


class RequestContextMiddleware:
    """Gives every request an id (an incoming valid X-Request-Id is honoured), returns it in
    the `X-Request-Id` header, logs one access line, and refuses bodies over the limit (413)."""

    def __init__(self, app: ASGIApp, max_body_bytes: int):
        self.app = app
        self.max_body_bytes = max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        incoming = _header(scope, b"x-request-id")
        request_id = incoming if incoming and _VALID_ID.match(incoming) else uuid.uuid4().hex
        scope.setdefault("state", {})["request_id"] = request_id
        token = request_id_var.set(request_id)
        started = time.monotonic()
        status = {"code": 0}

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
                headers = list(message.get("headers", []))
                headers.append((b"x-request-id", request_id.encode()))
                message = {**message, "headers": headers}
            await send(message)

        try:
            length = _header(scope, b"content-length")
            if length is not None and length.isdigit():
                if int(length) > self.max_body_bytes:
                    await self._too_large(send_with_id)
                    return
            elif scope.get("method") in ("POST", "PUT", "PATCH"):
                # no declared length (chunked): read up to the limit before the app sees it
                buffered = await self._buffer(receive)
                if buffered is None:
                    await self._too_large(send_with_id)
                    return
                receive = buffered
            await self.app(scope, receive, send_with_id)
        finally:
            log.info(
                "%s %s %s %.1fms",
                scope.get("method"),
                scope.get("path"),
                status["code"],
                (time.monotonic() - started) * 1000,
                extra={"status": status["code"], "path": scope.get("path")},
            )
            request_id_var.reset(token)

    async def _buffer(self, receive: Receive) -> Receive | None:
        """The whole body as one message, or None when it is over the limit."""
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] != "http.request":
                return None
            chunks.append(message.get("body", b""))
            size += len(chunks[-1])
            if size > self.max_body_bytes:
                return None
            if not message.get("more_body", False):
                break
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": b"".join(chunks), "more_body": False}
            return await receive()

        return replay

    async def _too_large(self, send: Send) -> None:
        body: dict[str, Any] = error_payload(
            f"Request body too large: the limit is {self.max_body_bytes} bytes.",
            "invalid_request_error",
            None,
            "request_too_large",
        )
        data = json.dumps(body).encode()
        await send(
            {
                "type": "http.response.start",
                "status": 413,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(data)).encode()),
                ],
            }
        )
        await send({"type": "http.response.body", "body": data})
