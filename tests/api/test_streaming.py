"""The SSE response of the generation routes, driven as an ASGI server drives it."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator
from typing import Any

import orjson

from nimble.api.streaming import DONE, Primed, sse_response
from nimble.errors import EngineError
from nimble.types import GenerationChunk

SCOPE = {"type": "http", "asgi": {"version": "3.0", "spec_version": "2.3"}, "method": "POST"}


async def _serve(response: Any, disconnect: asyncio.Event | None = None) -> list[dict[str, Any]]:
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        await (disconnect or asyncio.Event()).wait()
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    await response(SCOPE, receive, send)
    return sent


def _bodies(sent: list[dict[str, Any]]) -> list[tuple[bytes, bool]]:
    return [(m["body"], m["more_body"]) for m in sent if m["type"] == "http.response.body"]


async def test_events_then_done_with_the_end_of_the_body_in_one_message() -> None:
    async def events() -> AsyncGenerator[dict[str, Any], None]:
        yield {"n": 1}
        yield {"n": 2}

    sent = await _serve(sse_response(events(), "req-1"))
    start = sent[0]
    assert start["type"] == "http.response.start" and start["status"] == 200
    headers = dict(start["headers"])
    assert headers[b"content-type"] == b"text/event-stream; charset=utf-8"
    assert headers[b"cache-control"] == b"no-cache"
    assert _bodies(sent) == [
        (b'data: {"n":1}\n\n', True),
        (b'data: {"n":2}\n\n', True),
        (DONE, False),  # one write for [DONE] and the end of the chunked body
    ]


async def test_named_events_without_done() -> None:
    async def events() -> AsyncGenerator[dict[str, Any], None]:
        yield {"type": "response.created", "n": 1}

    sent = await _serve(sse_response(events(), "req-1", done=False, named=True))
    assert _bodies(sent) == [
        (b'event: response.created\ndata: {"type":"response.created","n":1}\n\n', True),
        (b"", False),
    ]


async def test_an_error_after_the_start_is_the_last_event_and_done_is_not_faked() -> None:
    closed: list[bool] = []

    async def events() -> AsyncGenerator[dict[str, Any], None]:
        try:
            yield {"n": 1}
            raise EngineError("llama.cpp failed")
        finally:
            closed.append(True)

    bodies = _bodies(await _serve(sse_response(events(), "req-7")))
    assert bodies[0] == (b'data: {"n":1}\n\n', True)
    last, more = bodies[1]
    assert not more and last.startswith(b"data: ") and last.endswith(b"\n\n")
    error = orjson.loads(last[len(b"data: ") :])["error"]
    assert error["type"] == "server_error" and "req-7" in error["message"]
    assert closed == [True]


async def test_a_client_that_goes_away_closes_the_events() -> None:
    gone = asyncio.Event()
    closed: list[bool] = []

    async def events() -> AsyncGenerator[dict[str, Any], None]:
        try:
            yield {"n": 1}
            gone.set()  # the client leaves after the first event
            await asyncio.Event().wait()  # a generation that would go on
            yield {"n": 2}
        finally:
            closed.append(True)

    sent = await _serve(sse_response(events(), "req-1"), disconnect=gone)
    assert _bodies(sent) == [(b'data: {"n":1}\n\n', True)]  # no end: the stream was cut
    assert closed == [True]


async def test_primed_gives_the_first_chunk_then_the_rest_and_closes_the_stream() -> None:
    closed: list[bool] = []

    async def stream() -> AsyncGenerator[GenerationChunk, None]:
        try:
            yield GenerationChunk(text="a")
            yield GenerationChunk(text="b")
            yield GenerationChunk(text="c")
        finally:
            closed.append(True)

    source = stream()
    primed = Primed(await anext(source), source)
    assert [c.text async for c in primed] == ["a", "b", "c"]
    source = stream()
    primed = Primed(await anext(source), source)
    assert (await anext(primed)).text == "a"
    assert (await primed.asend(None)).text == "b"
    await primed.aclose()
    assert closed == [True, True]
