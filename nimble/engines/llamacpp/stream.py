"""The bridge from llama.cpp's calling threads to the event loop, one per generation."""

from __future__ import annotations

import asyncio
import threading
import weakref
from collections import deque
from collections.abc import Callable

from nimble.engines.openai_wire import Json
from nimble.errors import EngineError, InvalidRequest

LlamaHandler = Callable[[Json, Callable[[Json], bool]], object]
END = object()  # end of one generation's stream


class Waker:
    """Wakes one event loop once for a burst of chunks, whichever generations they are for.

    llama.cpp decodes every running sequence in one batch and hands each its token at the
    same moment, on as many calling threads; each wake-up of the loop costs a write to its
    self-pipe, a return from epoll and a pass of the loop. One pending wake-up serves every
    stream that got a chunk before the loop ran it (measured: benchmarks/stream_overhead.py).
    """

    def __init__(self, loop: asyncio.AbstractEventLoop):
        self.loop = loop
        self._due: deque[Stream] = deque()  # streams with new items since the last wake-up
        self._scheduled = False

    def notify(self, stream: Stream) -> bool:
        """Worker thread: `stream` has a new item. False when the loop is closed."""
        self._due.append(stream)
        if self._scheduled:  # the pending wake-up will see it (it drains after its reset)
            return True
        self._scheduled = True
        try:
            self.loop.call_soon_threadsafe(self._wake)
        except RuntimeError:  # the loop is closed: nobody is listening any more
            return False
        return True

    def _wake(self) -> None:
        # reset first: a stream queued after this line schedules a new wake-up, one queued
        # before it is woken below (deque appends and pops are atomic under the GIL)
        self._scheduled = False
        due = self._due
        while due:
            due.popleft().wake()


_wakers: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, Waker] = weakref.WeakKeyDictionary()


def waker_of(loop: asyncio.AbstractEventLoop) -> Waker:
    """The loop's one Waker (made on first use, from the loop's own thread)."""
    waker = _wakers.get(loop)
    if waker is None:
        waker = _wakers[loop] = Waker(loop)
    return waker


class Stream:
    """One generation's bridge from the llama.cpp calling thread to the event loop.

    Chunks collect in a deque; the loop is woken through its `Waker`, once for all the chunks
    (of this and other streams) that arrive before it runs.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop):
        self.loop = loop
        self.cancel = threading.Event()
        self._items: deque[object] = deque()
        self._waiter: asyncio.Future[None] | None = None
        self._waker = waker_of(loop)

    async def get(self) -> object:
        """Event loop: the next item from llama.cpp's thread."""
        while not self._items:
            self._waiter = self.loop.create_future()
            await self._waiter
        return self._items.popleft()

    def wake(self) -> None:
        """Event loop: new items are there (the waiter may be gone: cancelled, or never)."""
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def run(self, handler: LlamaHandler, body: Json) -> None:
        """Worker thread: blocks in llama.cpp until the generation ends or is cancelled."""
        try:
            handler(body, self._on_chunk)
        except ValueError as exc:
            # llama.cpp's std::invalid_argument: a request it cannot take (two assistant
            # turns at the end, a prefill after tool calls); its own server answers 400
            self._put(InvalidRequest(str(exc)))
        except Exception as exc:  # anything else is llama.cpp's fault; keep the cause
            self._put(EngineError(f"llama.cpp failed: {exc}"))
        finally:
            self._put(END)

    def _on_chunk(self, chunk: Json) -> bool:
        """Called by llama.cpp per chunk; True cancels the task (the consumer went away)."""
        if self.cancel.is_set():
            return True
        return not self._put(chunk)

    def _put(self, item: object) -> bool:
        self._items.append(item)
        if self._waker.notify(self):
            return True
        self.cancel.set()
        return False
