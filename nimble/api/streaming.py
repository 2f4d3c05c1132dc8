"""SSE encoding and client-disconnect handling shared by the generation routes."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, Awaitable, Coroutine
from typing import Any, TypeVar, cast

import orjson
from fastapi import Request
from fastapi.responses import StreamingResponse
from starlette.types import Send

from nimble.api.errors import ClientGone, sse_error_event
from nimble.types import GenerationChunk

T = TypeVar("T")

SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
DONE = b"data: [DONE]\n\n"


async def until_disconnect(request: Request, work: Awaitable[T]) -> T:
    """Run `work`, cancelling it as soon as the client goes away (non-streaming requests).

    Cancellation propagates into the runtime's stream, which aborts the engine's generation
    and frees the admission slot.
    """
    task = asyncio.ensure_future(work)
    gone = False

    async def watch() -> None:
        nonlocal gone
        while True:
            message = await request.receive()
            if message["type"] == "http.disconnect":
                gone = True
                task.cancel()
                return

    watcher = asyncio.ensure_future(watch())
    try:
        return await task
    except asyncio.CancelledError:
        if gone:
            raise ClientGone from None
        raise
    finally:
        watcher.cancel()


Step = Coroutine[Any, Any, GenerationChunk]


class Primed(AsyncGenerator[GenerationChunk, None]):
    """A stream whose first chunk was already pulled: that chunk, then the rest. Not a
    generator of its own: after the first chunk, each step is the runtime stream's own step
    (one frame less to resume per token); closing it closes the runtime stream."""

    def __init__(self, first: GenerationChunk, stream: AsyncGenerator[GenerationChunk, None]):
        self._first: GenerationChunk | None = first
        self._stream = stream

    def __anext__(self) -> Step:
        first = self._first
        if first is None:
            return self._stream.__anext__()
        self._first = None
        return _ready(first)

    def asend(self, value: None) -> Step:
        return self.__anext__()

    def athrow(self, *args: Any) -> Step:
        self._first = None
        return self._stream.athrow(*args)

    async def aclose(self) -> None:
        self._first = None
        await self._stream.aclose()


async def _ready(value: T) -> T:
    return value


async def prime(request: Request, stream: AsyncGenerator[GenerationChunk, None]) -> Primed:
    """Pull the first chunk before answering, so that refusals (404, 400, 429) raised by the
    runtime still become plain HTTP errors; then hand back a stream that starts with it."""
    first = await until_disconnect(request, anext(stream))
    return Primed(first, stream)


def encoder(named: bool) -> Any:
    """One event as SSE bytes; `named`: with an `event: <type>` line (the Responses API's)."""

    def plain(event: dict[str, Any]) -> bytes:
        return b"data: " + orjson.dumps(event) + b"\n\n"  # orjson: ~10x faster than json

    def with_name(event: dict[str, Any]) -> bytes:
        kind = event.get("type")
        data = plain(event)
        return b"event: " + str(kind).encode() + b"\n" + data if kind else data

    return with_name if named else plain


class EventStreamResponse(StreamingResponse):
    """Server-sent events straight from an async iterator of event dicts.

    Starlette's StreamingResponse with the encoding done in its sending loop (no generator
    of bytes in between), and the end of the stream (`[DONE]`, or the error event) sent with
    the end of the body in one message, so one write. The client's disconnect is watched as
    Starlette does (for ASGI servers before spec 2.4, uvicorn's: the stream is cancelled).
    """

    def __init__(
        self,
        events: AsyncGenerator[dict[str, Any], None],
        request_id: str,
        *,
        done: bool,
        named: bool,
    ):
        # the body iterator Starlette keeps is not read: stream_response reads `events`
        super().__init__(cast(Any, events), media_type="text/event-stream", headers=SSE_HEADERS)
        self._events = events
        self._request_id = request_id
        self._done = done
        self._encode = encoder(named)

    async def stream_response(self, send: Send) -> None:
        start = {"type": "http.response.start", "status": self.status_code}
        await send({**start, "headers": self.raw_headers})
        events, encode = self._events, self._encode
        try:
            while True:
                try:
                    event = await events.__anext__()
                except StopAsyncIteration:
                    tail = DONE if self._done else b""
                    break
                except Exception as exc:  # an error after the stream began: one final event
                    tail = encode(sse_error_event(exc, self._request_id))
                    break
                body = encode(event)
                await send({"type": "http.response.body", "body": body, "more_body": True})
        finally:
            await events.aclose()
        await send({"type": "http.response.body", "body": tail, "more_body": False})


def sse_response(
    events: AsyncGenerator[dict[str, Any], None],
    request_id: str,
    *,
    done: bool = True,
    named: bool = False,
) -> StreamingResponse:
    """`done`: end with `data: [DONE]` (chat, completions; the Responses API ends without
    it). `named`: an `event: <type>` line before each event, as the Responses API sends."""
    return EventStreamResponse(events, request_id, done=done, named=named)
