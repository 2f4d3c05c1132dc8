"""The bridge from llama.cpp's calling thread to the event loop, one per generation."""

from __future__ import annotations

import asyncio
import threading
from collections import deque
from collections.abc import Callable

from nimble.engines.openai_wire import Json
from nimble.errors import EngineError

LlamaHandler = Callable[[Json, Callable[[Json], bool]], object]
END = object()  # end of one generation's stream


class Stream:
    """One generation's bridge from the llama.cpp calling thread to the event loop.

    Chunks collect in a deque; the loop is woken only when it is not already due to look, so
    that several tokens (or several streams' tokens) cost one wake-up, not one each.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop):
        self.loop = loop
        self.cancel = threading.Event()
        self._items: deque[object] = deque()
        self._ready = asyncio.Event()
        self._woken = False

    async def get(self) -> object:
        """Event loop: the next item from llama.cpp's thread."""
        while not self._items:
            self._ready.clear()
            await self._ready.wait()
        return self._items.popleft()

    def run(self, handler: LlamaHandler, body: Json) -> None:
        """Worker thread: blocks in llama.cpp until the generation ends or is cancelled."""
        try:
            handler(body, self._on_chunk)
        except Exception as exc:  # xllamacpp raises only for misuse; keep the cause
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
        if self._woken:
            return True
        self._woken = True
        try:
            self.loop.call_soon_threadsafe(self._wake)
        except RuntimeError:  # the loop is closed: nobody is listening any more
            self.cancel.set()
            return False
        return True

    def _wake(self) -> None:
        # reset first: an item appended after this line schedules a new wake-up
        self._woken = False
        self._ready.set()
