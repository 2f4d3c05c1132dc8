"""The engine's running llama.cpp tasks: each started on the engine's current server and read
through its own Stream; closing one cancels it in llama.cpp at its next token, and the
engine's stop cancels them all.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncGenerator, Callable
from typing import cast

from nimble.engines.llamacpp.stream import END, Stream
from nimble.engines.openai_wire import Json
from nimble.errors import Unavailable

# the engine's start of a task on its current server: (stream, body, chat, LoRA adapter)
Submit = Callable[[Stream, Json, bool, str | None], None]


class Tasks:
    def __init__(self, model_id: str, submit: Submit):
        self._id = model_id
        self._submit = submit
        self._running: set[threading.Event] = set()  # cancel flags of live generations

    def open(self, body: Json, chat: bool, adapter: str | None = None) -> Stream:
        """One llama.cpp task, started; its chunks come through the returned Stream, and
        `close` cancels it (at its next token) if it is still running."""
        stream = Stream(asyncio.get_running_loop())
        self._running.add(stream.cancel)
        try:
            self._submit(stream, body, chat, adapter)
        except BaseException:
            self.close(stream)
            raise
        return stream

    def close(self, stream: Stream) -> None:
        stream.cancel.set()  # llama.cpp cancels the task at its next token
        self._running.discard(stream.cancel)

    def check_stopped(self, stream: Stream) -> None:
        """At the end of a task's stream: stop() cut it short."""
        if stream.cancel.is_set():
            raise Unavailable(f"model {self._id} was stopped during the generation")

    def cancel_all(self) -> None:
        for cancel in self._running:
            cancel.set()

    async def payloads(
        self, body: Json, chat: bool, adapter: str | None = None
    ) -> AsyncGenerator[Json, None]:
        """The streamed payloads of one llama.cpp task (with LoRA `adapter`); closing this
        cancels the task."""
        stream = self.open(body, chat, adapter)
        try:
            while (item := await stream.get()) is not END:
                yield payload_of(item)
            self.check_stopped(stream)
        finally:
            self.close(stream)


def payload_of(item: object) -> Json:
    """A chunk from the Stream: a payload, or the error that ended the task (raised)."""
    if isinstance(item, BaseException):
        raise item
    return cast(Json, item)
