"""The runtime's chunks as a Responses API `response` object and its stream of events.

One builder serves both paths: streaming sends every event it makes, non-streaming only
keeps the final response, so both answer the same output items.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncGenerator, Callable
from dataclasses import dataclass
from typing import Any, Literal

from nimble.api.call import now
from nimble.api.errors import sse_error_event
from nimble.api.schemas.responses import CreateResponseRequest
from nimble.types import ChatMessage, FinishReason, GenerationChunk, ToolCall, Usage

Event = dict[str, Any]
ItemStatus = Literal["in_progress", "completed", "incomplete"]
# finish reasons that leave a response incomplete, and the reason it gives
_INCOMPLETE: dict[str | None, str] = {
    "length": "max_output_tokens",
    "content_filter": "content_filter",  # an output guardrail stopped it
}


def new_id(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex}"


@dataclass
class _Item:
    """One output item as it grows: reasoning (the model's thinking), a message (text) or
    a function call (arguments)."""

    kind: Literal["reasoning", "message", "function_call"]
    id: str
    text: str = ""
    call_id: str = ""
    name: str = ""
    status: ItemStatus = "in_progress"

    def as_json(self) -> dict[str, Any]:
        if self.kind == "function_call":
            return {
                "id": self.id,
                "type": "function_call",
                "status": self.status,
                "call_id": self.call_id,
                "name": self.name,
                "arguments": self.text,
            }
        if self.kind == "reasoning":
            return {
                "id": self.id,
                "type": "reasoning",
                "status": self.status,
                "summary": [],
                "content": [] if self.status == "in_progress" else [_reasoning_part(self.text)],
            }
        content = [] if self.status == "in_progress" else [_text_part(self.text)]
        return {
            "id": self.id,
            "type": "message",
            "status": self.status,
            "role": "assistant",
            "content": content,
        }


def _text_part(text: str) -> dict[str, Any]:
    return {"type": "output_text", "text": text, "annotations": [], "logprobs": []}


def _reasoning_part(text: str) -> dict[str, Any]:
    return {"type": "reasoning_text", "text": text}


class ResponseBuilder:
    """Feed it the chunks of one choice; it answers the events to send for each."""

    def __init__(self, body: CreateResponseRequest, response_id: str | None = None):
        self.body = body
        self.id = response_id or new_id("resp")
        self.created_at = now()
        self.items: list[_Item] = []
        self.usage: Usage | None = None
        self.finish_reason: FinishReason | None = None
        self._open: _Item | None = None
        self._calls: dict[int, _Item] = {}
        self._sequence = 0
        self.final: dict[str, Any] | None = None  # the response object, once finished

    # ----- events -----
    def start(self) -> list[Event]:
        snapshot = self.response("in_progress")
        return [
            self._event("response.created", response=snapshot),
            self._event("response.in_progress", response=snapshot),
        ]

    def feed(self, chunk: GenerationChunk) -> list[Event]:
        if chunk.usage is not None:
            self.usage = chunk.usage
            return []
        events: list[Event] = []
        if chunk.reasoning:
            if self._open is None or self._open.kind != "reasoning":
                events += self._close()
                events += self._open_reasoning()
            events += self._reasoning_text(chunk.reasoning)
        if chunk.text:
            if self._open is None or self._open.kind != "message":
                events += self._close()
                events += self._open_message()
            events += self._text(chunk.text)
        for delta in chunk.tool_calls:
            if delta.index not in self._calls:
                events += self._close()
                events += self._open_call(delta.index, delta.id, delta.name)
            if delta.arguments:
                events += self._arguments(self._calls[delta.index], delta.arguments)
        if chunk.finish_reason is not None:
            self.finish_reason = chunk.finish_reason
        return events

    def finish(self) -> list[Event]:
        """The events that close the open item and end the response."""
        status = self.status()
        events = self._close("incomplete" if status == "incomplete" else "completed")
        kind = "response.incomplete" if status == "incomplete" else "response.completed"
        self.final = self.response(status)
        return [*events, self._event(kind, response=self.final)]

    def error(self, exc: BaseException, request_id: str) -> Event:
        """The final event of a stream that failed: the Responses `error` event, which also
        carries `error` so that OpenAI's SDKs raise it as an API error."""
        error = sse_error_event(exc, request_id)["error"]
        fields = {name: error[name] for name in ("code", "message", "param")}
        return self._event("error", **fields, error=error)

    # ----- the response object -----
    def status(self) -> Literal["completed", "incomplete"]:
        return "incomplete" if self.finish_reason in _INCOMPLETE else "completed"

    def response(self, status: Literal["in_progress", "completed", "incomplete"]) -> dict[str, Any]:
        body = self.body
        done = status != "in_progress"
        return {
            "id": self.id,
            "object": "response",
            "created_at": self.created_at,
            "completed_at": now() if status == "completed" else None,
            "status": status,
            "error": None,
            "incomplete_details": (
                {"reason": _INCOMPLETE[self.finish_reason]}
                if status == "incomplete" and self.finish_reason in _INCOMPLETE
                else None
            ),
            "model": body.model,
            "output": [item.as_json() for item in self.items] if done else [],
            "instructions": body.instructions,
            "previous_response_id": body.previous_response_id,
            "max_output_tokens": body.max_output_tokens,
            "temperature": body.temperature,
            "top_p": body.top_p,
            "parallel_tool_calls": body.parallel_tool_calls is not False,
            "tool_choice": body.tool_choice_echo(),
            "tools": [tool.echo() for tool in body.tools or ()],
            "text": body.text_echo(),
            "truncation": "disabled",
            "store": body.store is not False,
            "background": False,
            "metadata": body.metadata or {},
            "user": body.user,
            "usage": _usage(self.usage) if done and self.usage is not None else None,
        }

    def assistant_turn(self) -> ChatMessage:
        """The output as one assistant chat turn, for the stored conversation."""
        text = "".join(item.text for item in self.items if item.kind == "message")
        calls = tuple(
            ToolCall(id=item.call_id, name=item.name, arguments=item.text)
            for item in self.items
            if item.kind == "function_call"
        )
        return ChatMessage("assistant", text, tool_calls=calls)

    # ----- items -----
    def _event(self, kind: str, **fields: Any) -> Event:
        event = {"type": kind, "sequence_number": self._sequence, **fields}
        self._sequence += 1
        return event

    def _add(self, item: _Item) -> list[Event]:
        self.items.append(item)
        self._open = item
        return [
            self._event(
                "response.output_item.added",
                output_index=len(self.items) - 1,
                item=item.as_json(),
            )
        ]

    def _open_message(self) -> list[Event]:
        item = _Item("message", new_id("msg"))
        return [
            *self._add(item),
            self._event("response.content_part.added", part=_text_part(""), **self._where(item)),
        ]

    def _open_reasoning(self) -> list[Event]:
        item = _Item("reasoning", new_id("rs"))
        part = _reasoning_part("")
        return [
            *self._add(item),
            self._event("response.content_part.added", part=part, **self._where(item)),
        ]

    def _reasoning_text(self, text: str) -> list[Event]:
        assert self._open is not None
        self._open.text += text
        return [self._event("response.reasoning_text.delta", delta=text, **self._where(self._open))]

    def _open_call(self, index: int, call_id: str | None, name: str | None) -> list[Event]:
        item = _Item("function_call", new_id("fc"), call_id=call_id or new_id("call"))
        item.name = name or ""
        self._calls[index] = item
        return self._add(item)

    def _text(self, text: str) -> list[Event]:
        assert self._open is not None
        self._open.text += text
        return [
            self._event(
                "response.output_text.delta", delta=text, logprobs=[], **self._where(self._open)
            )
        ]

    def _arguments(self, item: _Item, text: str) -> list[Event]:
        item.text += text
        return [
            self._event(
                "response.function_call_arguments.delta",
                delta=text,
                item_id=item.id,
                output_index=self.items.index(item),
            )
        ]

    def _close(self, status: ItemStatus = "completed") -> list[Event]:
        item, self._open = self._open, None
        if item is None:
            return []
        item.status = status
        index = self.items.index(item)
        events: list[Event] = []
        if item.kind == "reasoning":
            where = self._where(item)
            events.append(self._event("response.reasoning_text.done", text=item.text, **where))
            part = _reasoning_part(item.text)
            events.append(self._event("response.content_part.done", part=part, **where))
        elif item.kind == "message":
            where = self._where(item)
            events.append(
                self._event("response.output_text.done", text=item.text, logprobs=[], **where)
            )
            events.append(
                self._event("response.content_part.done", part=_text_part(item.text), **where)
            )
        else:
            events.append(
                self._event(
                    "response.function_call_arguments.done",
                    arguments=item.text,
                    item_id=item.id,
                    output_index=index,
                )
            )
        events.append(
            self._event("response.output_item.done", output_index=index, item=item.as_json())
        )
        return events

    def _where(self, item: _Item) -> dict[str, Any]:
        return {"item_id": item.id, "output_index": self.items.index(item), "content_index": 0}


def _usage(usage: Usage) -> dict[str, Any]:
    return {
        "input_tokens": usage.prompt_tokens,
        "input_tokens_details": {"cached_tokens": 0, "cache_write_tokens": 0},
        "output_tokens": usage.completion_tokens,
        "output_tokens_details": {"reasoning_tokens": usage.reasoning_tokens or 0},
        "total_tokens": usage.total_tokens,
    }


async def collect_response(
    chunks: AsyncGenerator[GenerationChunk, None], builder: ResponseBuilder
) -> dict[str, Any]:
    """Run the whole generation; the final response object."""
    try:
        async for chunk in chunks:
            builder.feed(chunk)
    finally:
        await chunks.aclose()
    builder.finish()
    assert builder.final is not None
    return builder.final


async def stream_events(
    chunks: AsyncGenerator[GenerationChunk, None],
    builder: ResponseBuilder,
    request_id: str,
    on_done: Callable[[ResponseBuilder], None],
) -> AsyncGenerator[Event, None]:
    """Every event of the response; `on_done` runs (to store it) before the last event, so
    that the response can be fetched as soon as the client has seen it complete."""
    try:
        for event in builder.start():
            yield event
        try:
            async for chunk in chunks:
                for event in builder.feed(chunk):
                    yield event
        except Exception as exc:  # after the stream began: one final error event
            yield builder.error(exc, request_id)
            return
        final = builder.finish()
        on_done(builder)
        for event in final:
            yield event
    finally:
        await chunks.aclose()
