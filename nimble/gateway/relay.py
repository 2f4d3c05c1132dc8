"""Passing a replica's answer on to the client: the response that relays it (and closes the
replica's side however it ends), the usage read on the way through, the headers kept, and
the error event that ends a stream whose replica broke off."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
import orjson
from starlette.responses import StreamingResponse
from starlette.types import Receive, Scope, Send

from nimble.api.errors import error_payload
from nimble.gateway.request import usage_of
from nimble.observability.record import RequestRecord

HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "transfer-encoding",
        "te",
        "trailer",
        "upgrade",
        "proxy-authorization",
        "proxy-authenticate",
        "host",
        "content-length",
    }
)
# set by the gateway's own middleware on the way out (the same values, or its own span)
_OWN_RESPONSE_HEADERS = frozenset({"x-request-id", "request-id", "traceparent", "tracestate"})


class Relay(StreamingResponse):
    """A streamed answer that closes the replica's response however it ends: sent whole,
    cut by a client that went away, or never started. Its own loop rather than Starlette's
    (which runs the body in an anyio task group beside a disconnect listener: about a sixth
    of the gateway's CPU per request): the body is sent from this task, and a watcher on
    `receive` cancels it when the client goes away, so a replica still generating for a
    client that left is told at once, not at the next chunk."""

    def __init__(self, close: Callable[[], Awaitable[None]], *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self._close = close

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        task = asyncio.current_task()
        assert task is not None
        gone = False

        async def watch() -> None:
            nonlocal gone
            while (await receive())["type"] != "http.disconnect":
                pass
            gone = True
            task.cancel()

        watcher = asyncio.ensure_future(watch())
        try:
            await send(
                {
                    "type": "http.response.start",
                    "status": self.status_code,
                    "headers": self.raw_headers,
                }
            )
            async for chunk in self.body_iterator:
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
            await send({"type": "http.response.body", "body": b"", "more_body": False})
        except asyncio.CancelledError:
            if not gone:
                raise
            task.uncancel()  # the client left: nothing more to send, nothing failed
        except OSError:
            pass  # the client's connection broke while sending: it left too
        finally:
            watcher.cancel()
            closing = getattr(self.body_iterator, "aclose", None)
            if closing is not None:
                await closing()
            await self._close()


class UsageReader:
    """Reads the usage on the way through; drops the usage-only event the gateway asked for
    (the client did not). JSON answers are read whole (they come in one or few chunks);
    streams event by event, each forwarded once complete."""

    def __init__(self, streamed: bool, drop_usage_event: bool, record: RequestRecord):
        self.streamed = streamed
        self.drop = drop_usage_event
        self.record = record
        self._pending = b""
        self._json: list[bytes] = []

    def feed(self, chunk: bytes) -> bytes:
        if not self.streamed:
            self._json.append(chunk)
            return chunk
        data = self._pending + chunk
        end = data.rfind(b"\n\n")
        if end < 0:
            self._pending = data
            return b""
        complete, self._pending = data[: end + 2], data[end + 2 :]
        return b"".join(self._event(e + b"\n\n") for e in complete.split(b"\n\n")[:-1])

    def flush(self) -> bytes:
        if not self.streamed:
            self._account(b"".join(self._json))
            return b""
        rest, self._pending = self._pending, b""
        return rest

    def _event(self, event: bytes) -> bytes:
        if b'"usage"' not in event:
            return event
        for line in event.split(b"\n"):
            if line.startswith(b"data:") and self._account(line[5:]) and self.drop:
                return b""
        return event

    def _account(self, payload: bytes) -> bool:
        """Reads a usage from one JSON payload; True for a usage-only chat chunk."""
        try:
            value = orjson.loads(payload)
        except orjson.JSONDecodeError:
            return False
        usage = usage_of(value)
        if usage is None:
            return False
        prompt, completion = usage
        if prompt is not None:
            self.record.prompt_tokens = prompt
        if completion is not None:
            self.record.completion_tokens = completion
        return isinstance(value, dict) and value.get("choices") == []


def response_headers(response: aiohttp.ClientResponse) -> dict[str, str]:
    return {
        k: v
        for k, v in response.headers.items()
        if k.lower() not in HOP_BY_HOP
        and k.lower() not in _OWN_RESPONSE_HEADERS
        and k.lower() not in ("date", "server")
    }


def broken_event(path: str, request_id: str) -> bytes:
    message = (
        f"The replica serving this request stopped answering (request id {request_id}); "
        "the answer is incomplete."
    )
    error = error_payload(message, "server_error", None, "upstream_error")
    if path.startswith("/v1/messages"):
        payload: dict[str, Any] = {
            "type": "error",
            "error": {"type": "api_error", "message": message},
            "request_id": request_id,
        }
        return b"event: error\ndata: " + json.dumps(payload).encode() + b"\n\n"
    if path.startswith("/v1/responses"):
        inner = error["error"]
        payload = {"type": "error", "code": inner["code"], "message": message, "param": None}
        payload["error"] = inner
        return b"event: error\ndata: " + json.dumps(payload).encode() + b"\n\n"
    return b"data: " + json.dumps(error).encode() + b"\n\n"
