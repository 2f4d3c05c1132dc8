"""SSE encoding and client-disconnect handling shared by the generation routes."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, Awaitable
from typing import Any, TypeVar

import orjson
from fastapi import Request
from fastapi.responses import StreamingResponse

from nimble.api.errors import ClientGone, sse_error_event
from nimble.types import GenerationChunk

T = TypeVar("T")

SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


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


async def prime(
    request: Request, stream: AsyncGenerator[GenerationChunk, None]
) -> AsyncGenerator[GenerationChunk, None]:
    """Pull the first chunk before answering, so that refusals (404, 400, 429) raised by the
    runtime still become plain HTTP errors; then hand back a stream that starts with it."""
    first = await until_disconnect(request, anext(stream))

    async def chained() -> AsyncGenerator[GenerationChunk, None]:
        try:
            yield first
            async for chunk in stream:
                yield chunk
        finally:
            await stream.aclose()

    return chained()


def sse_response(
    events: AsyncGenerator[dict[str, Any], None],
    request_id: str,
    *,
    done: bool = True,
    named: bool = False,
) -> StreamingResponse:
    """`done`: end with `data: [DONE]` (chat, completions; the Responses API ends without
    it). `named`: an `event: <type>` line before each event, as the Responses API sends."""

    def encode(event: dict[str, Any]) -> bytes:
        data = b"data: " + orjson.dumps(event) + b"\n\n"  # orjson: ~10x faster than json
        kind = event.get("type") if named else None
        return b"event: " + str(kind).encode() + b"\n" + data if kind else data

    async def body() -> AsyncGenerator[bytes, None]:
        try:
            async for event in events:
                yield encode(event)
        except Exception as exc:  # an error after the stream began: one final error event
            yield encode(sse_error_event(exc, request_id))
            return
        finally:
            await events.aclose()
        if done:
            yield b"data: [DONE]\n\n"

    return StreamingResponse(body(), media_type="text/event-stream", headers=SSE_HEADERS)
