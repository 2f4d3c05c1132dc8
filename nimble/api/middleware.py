"""Pure ASGI middleware (streaming-safe): the request record (id, trace span, access log,
audit and metrics when the response is done) and the body size limit."""

from __future__ import annotations

import json
import logging
import re
import time
import uuid
from collections.abc import Callable, Sequence

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from nimble.api.endpoints import endpoint_of
from nimble.api.errors import error_payload, internal_error_payload
from nimble.observability.context import request_id_var
from nimble.observability.record import RequestRecord, current_record
from nimble.observability.tracing import RequestTracing

log = logging.getLogger("nimble.access")

_VALID_ID = re.compile(r"^[A-Za-z0-9._:\-]{1,128}$")

RecordSink = Callable[[RequestRecord, float], None]  # (record, latency in seconds)


def header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope.get("headers", []):
        if key.lower() == name:
            return str(value.decode("latin-1"))
    return None


def route_path(scope: Scope) -> str:
    """The path inside this app. Mounted under a prefix (Starlette's `Mount`, or uvicorn's
    `--root-path`), `path` still starts with the prefix, given as `root_path`: without it,
    endpoint names, key scopes and metrics would not know `/llm/v1/chat/completions`."""
    path = str(scope.get("path", ""))
    root = str(scope.get("root_path", ""))
    if root and path.startswith(root) and path[len(root) : len(root) + 1] in ("/", ""):
        return path[len(root) :] or "/"
    return path


async def send_json(
    send: Send, status: int, body: bytes, headers: Sequence[tuple[bytes, bytes]] = ()
) -> None:
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                *headers,
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


class RequestContextMiddleware:
    """Gives every request an id (an incoming valid X-Request-Id is honoured) returned in
    `X-Request-Id`, a trace span, and a `RequestRecord` that the layers below fill in; when
    the response is done, the record goes to the access log and to each sink (metrics,
    audit log)."""

    def __init__(
        self,
        app: ASGIApp,
        *,
        tracing: RequestTracing | None = None,
        sinks: Sequence[RecordSink] = (),
    ):
        self.app = app
        self.tracing = tracing or RequestTracing()
        self.sinks = tuple(sinks)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        incoming = header(scope, b"x-request-id")
        request_id = incoming if incoming and _VALID_ID.match(incoming) else uuid.uuid4().hex
        client = scope.get("client")
        path = route_path(scope)
        record = RequestRecord(
            request_id=request_id,
            method=str(scope.get("method", "")),
            path=path,
            endpoint=endpoint_of(path),
            client=f"{client[0]}:{client[1]}" if client else None,
        )
        scope.setdefault("state", {})["request_id"] = request_id
        span = self.tracing.start(record, scope)
        record.trace_id = span.trace_id
        # for a service that calls another one on the request's behalf (the gateway)
        scope["state"]["trace_headers"] = span.response_headers()
        id_token = request_id_var.set(request_id)
        record_token = current_record.set(record)

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                record.status = message["status"]
                headers = list(message.get("headers", []))
                headers.append((b"x-request-id", request_id.encode()))
                headers.extend(span.response_headers())
                message = {**message, "headers": headers}
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        except Exception:
            if record.status:  # the answer had started: nothing else can be sent
                raise
            # answered here (not by Starlette's outermost handler) so that the 500 carries
            # the request id header and the record, the logs and the metrics see it
            log.exception("unhandled error (request %s)", request_id)
            body = json.dumps(internal_error_payload(request_id)).encode()
            await send_json(send_with_id, 500, body)
        finally:
            latency = time.monotonic() - record.started
            span.end(record)
            log.info(
                "%s %s %s %.1fms",
                record.method,
                path,
                record.status,
                latency * 1000,
                extra=access_fields(record, latency),
            )
            for sink in self.sinks:
                try:
                    sink(record, latency)
                except Exception:  # a broken sink must not break the response path
                    log.exception("request record sink failed")
            current_record.reset(record_token)
            request_id_var.reset(id_token)


def access_fields(record: RequestRecord, latency: float) -> dict[str, object]:
    """The structured fields of the access log line (no prompt, no key: only its id)."""
    fields: dict[str, object] = {
        "status": record.status,
        "method": record.method,
        "path": record.path,
        "latency_ms": round(latency * 1000, 1),
    }
    if record.trace_id:
        fields["trace_id"] = record.trace_id
    if record.key_id:
        fields["key_id"] = record.key_id
    if record.model:
        fields["model"] = record.model
        fields["prompt_tokens"] = record.prompt_tokens
        fields["completion_tokens"] = record.completion_tokens
    return fields


class BodyLimitMiddleware:
    """Refuses bodies over the limit (413), declared or chunked, before the app reads them."""

    def __init__(self, app: ASGIApp, max_body_bytes: int):
        self.app = app
        self.max_body_bytes = max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        length = header(scope, b"content-length")
        if length is not None and length.isdigit():
            if int(length) > self.max_body_bytes:
                await self._too_large(send)
                return
        elif scope.get("method") in ("POST", "PUT", "PATCH"):
            # no declared length (chunked): read up to the limit before the app sees it
            buffered = await self._buffer(receive)
            if buffered is None:
                await self._too_large(send)
                return
            receive = buffered
        await self.app(scope, receive, send)

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
        body = error_payload(
            f"Request body too large: the limit is {self.max_body_bytes} bytes.",
            "invalid_request_error",
            None,
            "request_too_large",
        )
        await send_json(send, 413, json.dumps(body).encode())
