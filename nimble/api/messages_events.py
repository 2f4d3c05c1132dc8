"""The runtime's chunks as an Anthropic `message` and its stream of events.

One builder serves both paths: streaming sends every event it makes, non-streaming keeps
only the final message, so both answer the same content blocks. A stream is
`message_start`, `ping`, then per content block (`text`, `tool_use`, `thinking`)
`content_block_start`, its deltas (`text_delta`, `input_json_delta`, `thinking_delta`) and
`content_block_stop`; then `message_delta` (stop_reason, usage) and `message_stop`, or one
`error` event once the stream has begun.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncGenerator
from dataclasses import dataclass
from typing import Any, Literal

from nimble import jsontext
from nimble.api.errors import sse_error_event
from nimble.api.messages_errors import anthropic_error
from nimble.types import FinishReason, GenerationChunk, Usage

Event = dict[str, Any]
_STOP_REASONS: dict[FinishReason, str] = {
    "stop": "end_turn",
    "length": "max_tokens",
    "tool_calls": "tool_use",
    "content_filter": "refusal",  # an output guardrail stopped the answer
}


def new_id(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex}"


@dataclass(eq=False)  # blocks are told apart by identity (two may hold the same text)
class _Block:
    """One content block as it grows: text, a tool call (its arguments' JSON text) or
    thinking."""

    kind: Literal["text", "tool_use", "thinking"]
    text: str = ""
    id: str = ""
    name: str = ""

    def start(self) -> dict[str, Any]:
        if self.kind == "tool_use":
            return {"type": "tool_use", "id": self.id, "name": self.name, "input": {}}
        if self.kind == "thinking":
            return {"type": "thinking", "thinking": "", "signature": ""}
        return {"type": "text", "text": ""}

    def delta(self, text: str) -> dict[str, Any]:
        if self.kind == "tool_use":
            return {"type": "input_json_delta", "partial_json": text}
        if self.kind == "thinking":
            return {"type": "thinking_delta", "thinking": text}
        return {"type": "text_delta", "text": text}

    def as_json(self) -> dict[str, Any]:
        if self.kind == "tool_use":
            return {"type": "tool_use", "id": self.id, "name": self.name, "input": _input(self)}
        if self.kind == "thinking":
            return {"type": "thinking", "thinking": self.text, "signature": ""}
        return {"type": "text", "text": self.text}


def _input(block: _Block) -> dict[str, Any]:
    """The call's arguments as an object. Arguments cut short by max_tokens do not parse:
    the message then holds `{}` (the stream has sent what was written)."""
    try:
        value = jsontext.loads(block.text or "{}")
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


class MessageBuilder:
    """Feed it the chunks of the one choice; it answers the events to send for each."""

    def __init__(self, model: str, message_id: str | None = None):
        self.model = model
        self.id = message_id or new_id("msg")
        self.blocks: list[_Block] = []
        self.usage: Usage | None = None
        self.stop_reason: str | None = None
        self.stop_sequence: str | None = None
        self._open: _Block | None = None
        self._calls: dict[int, _Block] = {}

    # ----- events -----
    def start(self, input_tokens: int) -> list[Event]:
        message = {
            **self._head(),
            "content": [],
            "stop_reason": None,
            "stop_sequence": None,
            "usage": _usage(input_tokens, 0),
        }
        return [{"type": "message_start", "message": message}, {"type": "ping"}]

    def feed(self, chunk: GenerationChunk) -> list[Event]:
        if chunk.usage is not None:
            self.usage = chunk.usage
            return []
        events: list[Event] = []
        if chunk.reasoning:
            events += self._write("thinking", chunk.reasoning)
        if chunk.text:
            events += self._write("text", chunk.text)
        for delta in chunk.tool_calls:
            block = self._calls.get(delta.index)
            if block is None:
                events += self._close()
                block = _Block("tool_use", id=delta.id or new_id("toolu"), name=delta.name or "")
                self._calls[delta.index] = block
                events += self._add(block)
            if delta.arguments:
                block.text += delta.arguments
                events.append(self._delta(block, delta.arguments))
        if chunk.finish_reason is not None:
            self.stop_reason = _STOP_REASONS[chunk.finish_reason]
            if chunk.finish_reason == "stop" and chunk.stop_sequence is not None:
                self.stop_reason, self.stop_sequence = "stop_sequence", chunk.stop_sequence
        return events

    def finish(self) -> list[Event]:
        """The events that close the open block and end the message."""
        usage = self.usage or Usage(0, 0)
        delta = {"stop_reason": self.stop_reason, "stop_sequence": self.stop_sequence}
        return [
            *self._close(),
            {
                "type": "message_delta",
                "delta": delta,
                "usage": {
                    "input_tokens": usage.prompt_tokens,
                    "output_tokens": usage.completion_tokens,
                },
            },
            {"type": "message_stop"},
        ]

    def error(self, exc: BaseException, request_id: str) -> Event:
        """The final event of a stream that failed: Anthropic's `error` event, which the
        SDKs raise as an API error."""
        return anthropic_error(sse_error_event(exc, request_id), request_id)

    # ----- the message -----
    def message(self) -> dict[str, Any]:
        usage = self.usage or Usage(0, 0)
        return {
            **self._head(),
            "content": [block.as_json() for block in self.blocks],
            "stop_reason": self.stop_reason,
            "stop_sequence": self.stop_sequence,
            "usage": _usage(usage.prompt_tokens, usage.completion_tokens),
        }

    # ----- blocks -----
    def _head(self) -> dict[str, Any]:
        return {"id": self.id, "type": "message", "role": "assistant", "model": self.model}

    def _write(self, kind: Literal["text", "thinking"], text: str) -> list[Event]:
        events: list[Event] = []
        block = self._open
        if block is None or block.kind != kind:
            events += self._close()
            block = _Block(kind)
            events += self._add(block)
        block.text += text
        return [*events, self._delta(block, text)]

    def _add(self, block: _Block) -> list[Event]:
        self.blocks.append(block)
        self._open = block
        index = len(self.blocks) - 1
        return [{"type": "content_block_start", "index": index, "content_block": block.start()}]

    def _delta(self, block: _Block, text: str) -> Event:
        index = self.blocks.index(block)
        return {"type": "content_block_delta", "index": index, "delta": block.delta(text)}

    def _close(self) -> list[Event]:
        block, self._open = self._open, None
        if block is None:
            return []
        return [{"type": "content_block_stop", "index": self.blocks.index(block)}]


def _usage(input_tokens: int, output_tokens: int) -> dict[str, Any]:
    return {
        "input_tokens": input_tokens,
        "output_tokens": output_tokens,
        "cache_creation_input_tokens": None,
        "cache_read_input_tokens": None,
    }


async def collect_message(
    chunks: AsyncGenerator[GenerationChunk, None], builder: MessageBuilder
) -> dict[str, Any]:
    """Run the whole generation; the final message."""
    try:
        async for chunk in chunks:
            builder.feed(chunk)
    finally:
        await chunks.aclose()
    return builder.message()


async def stream_events(
    chunks: AsyncGenerator[GenerationChunk, None],
    builder: MessageBuilder,
    input_tokens: int,
    request_id: str,
) -> AsyncGenerator[Event, None]:
    """Every event of the message, or an `error` event once the stream has begun."""
    try:
        for event in builder.start(input_tokens):
            yield event
        try:
            async for chunk in chunks:
                for event in builder.feed(chunk):
                    yield event
        except Exception as exc:  # after the stream began: one final error event
            yield builder.error(exc, request_id)
            return
        for event in builder.finish():
            yield event
    finally:
        await chunks.aclose()
