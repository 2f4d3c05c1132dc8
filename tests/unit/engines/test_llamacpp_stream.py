"""The bridge from llama.cpp's calling threads to the event loop (no model: plain threads)."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from typing import Any

import pytest

from nimble.engines.llamacpp.stream import END, Stream, waker_of
from nimble.errors import EngineError, InvalidRequest


def _handler(chunks: list[dict[str, Any]], cancelled: list[bool]) -> Any:
    """A stand-in for xllamacpp's handle_*: calls back with each chunk on its own thread."""

    def handle(body: dict[str, Any], callback: Callable[[dict[str, Any]], bool]) -> None:
        for chunk in chunks:
            if callback(chunk):
                cancelled.append(True)
                return

    return handle


def _run_in_thread(stream: Stream, handler: Any) -> threading.Thread:
    thread = threading.Thread(target=stream.run, args=(handler, {}))
    thread.start()
    return thread


async def _drain(stream: Stream) -> list[object]:
    items = []
    while (item := await stream.get()) is not END:
        items.append(item)
    return items


async def test_chunks_arrive_in_order_then_the_end() -> None:
    stream = Stream(asyncio.get_running_loop())
    chunks = [{"n": i} for i in range(50)]
    thread = _run_in_thread(stream, _handler(chunks, []))
    assert await _drain(stream) == chunks
    thread.join()


async def test_one_wake_up_serves_every_stream_that_got_a_chunk_before_it_ran(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    loop = asyncio.get_running_loop()
    scheduled: list[object] = []
    original = loop.call_soon_threadsafe

    def counting(callback: Any, *args: Any) -> Any:
        scheduled.append(callback)
        return original(callback, *args)

    monkeypatch.setattr(loop, "call_soon_threadsafe", counting)
    streams = [Stream(loop) for _ in range(3)]
    # the loop does not run while the threads deliver: as when it is busy with other work
    threads = [_run_in_thread(s, _handler([{"s": i}], [])) for i, s in enumerate(streams)]
    for thread in threads:
        thread.join()
    assert len(scheduled) == 1  # three streams, two chunks each (a chunk and the end)
    assert [await s.get() for s in streams] == [{"s": 0}, {"s": 1}, {"s": 2}]
    assert [await s.get() for s in streams] == [END, END, END]
    assert len(scheduled) == 1


async def test_a_chunk_after_the_wake_up_ran_schedules_another() -> None:
    loop = asyncio.get_running_loop()
    stream = Stream(loop)
    waker = waker_of(loop)
    assert waker_of(loop) is waker  # one per loop
    stream._put({"n": 1})
    assert await stream.get() == {"n": 1}
    getting = asyncio.ensure_future(stream.get())
    await asyncio.sleep(0)  # let it wait (one loop pass; nothing is timed)
    thread = threading.Thread(target=stream._put, args=({"n": 2},))
    thread.start()
    thread.join()
    assert await getting == {"n": 2}


async def test_a_cancelled_reader_leaves_no_waiter_to_wake() -> None:
    stream = Stream(asyncio.get_running_loop())
    getting = asyncio.ensure_future(stream.get())
    await asyncio.sleep(0)
    getting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await getting
    stream._put({"n": 1})  # its wake-up finds the cancelled waiter: nothing to set
    assert await stream.get() == {"n": 1}


async def test_a_cancelled_stream_tells_llamacpp_to_stop() -> None:
    stream = Stream(asyncio.get_running_loop())
    stream.cancel.set()
    cancelled: list[bool] = []
    thread = _run_in_thread(stream, _handler([{"n": 1}, {"n": 2}], cancelled))
    thread.join()
    assert cancelled == [True]  # the first callback returned True
    assert await stream.get() is END


@pytest.mark.parametrize(
    ("raised", "error_type"),
    # xllamacpp raises ValueError for llama.cpp's std::invalid_argument (the request's fault)
    [(ValueError("bad body"), InvalidRequest), (RuntimeError("bad engine"), EngineError)],
)
async def test_a_failing_handler_ends_the_stream_with_its_error(
    raised: Exception, error_type: type[Exception]
) -> None:
    stream = Stream(asyncio.get_running_loop())

    def broken(body: dict[str, Any], callback: Any) -> None:
        raise raised

    thread = _run_in_thread(stream, broken)
    thread.join()
    error = await stream.get()
    assert type(error) is error_type and str(raised) in str(error)
    assert await stream.get() is END


def test_a_closed_loop_cancels_the_generation() -> None:
    loop = asyncio.new_event_loop()
    stream = Stream(loop)
    loop.close()
    assert stream._on_chunk({"n": 1}) is True  # True: llama.cpp cancels the task
    assert stream.cancel.is_set()
