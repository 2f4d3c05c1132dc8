"""Tool calling, engine-agnostic: formats per model family, prompt preparation, grammar
constraints, and parsing of the model's markup into OpenAI tool calls."""

from __future__ import annotations

from collections.abc import AsyncGenerator, AsyncIterator

from nimble.errors import ConfigError
from nimble.runtime.tools.formats import DEFAULT_FORMAT, FORMATS, ToolFormat
from nimble.runtime.tools.parse import CallParser
from nimble.runtime.tools.prompting import prepare
from nimble.types import GenerateRequest, GenerationChunk

__all__ = ["FORMATS", "ToolFormat", "parse_calls", "prepare", "tool_format", "uses_tools"]


def uses_tools(request: GenerateRequest) -> bool:
    """Tools offered, or a conversation that already holds calls or their results."""
    if request.tools or request.tool_choice not in ("auto", "none"):
        return True
    return any(m.tool_calls or m.role == "tool" for m in request.messages or ())


def tool_format(name: str | None) -> ToolFormat:
    fmt = FORMATS.get(name or DEFAULT_FORMAT)
    if fmt is None:
        raise ConfigError(f"unknown tool_parser {name!r}; known: {', '.join(sorted(FORMATS))}")
    return fmt


async def parse_calls(
    chunks: AsyncIterator[GenerationChunk], fmt: ToolFormat
) -> AsyncGenerator[GenerationChunk, None]:
    """The engine's text chunks, with tool-call markup turned into `tool_calls` deltas.
    A choice that made calls and stopped naturally ends with finish_reason `tool_calls`."""
    parsers: dict[int, CallParser] = {}
    async for chunk in chunks:
        if chunk.usage is not None:
            yield chunk
            continue
        if chunk.reasoning:  # thinking passes by: calls are read from the answer only
            yield GenerationChunk(
                index=chunk.index,
                reasoning=chunk.reasoning,
                logprobs=() if chunk.text else chunk.logprobs,
            )
        parser = parsers.get(chunk.index)
        if parser is None:
            parser = parsers[chunk.index] = CallParser(fmt)
        parsed = parser.feed(chunk.text) if chunk.text else None
        if parsed is not None and (parsed.content or parsed.calls):
            yield GenerationChunk(
                index=chunk.index,
                text=parsed.content,
                logprobs=chunk.logprobs if parsed.content else (),
                tool_calls=tuple(parsed.calls),
                progress=chunk.progress,
            )
        if chunk.finish_reason is None:
            continue
        rest = parser.finish()
        if rest.content or rest.calls:
            yield GenerationChunk(
                index=chunk.index, text=rest.content, tool_calls=tuple(rest.calls)
            )
        finish = chunk.finish_reason
        if parser.called and finish == "stop":
            finish = "tool_calls"
        stop = chunk.stop_sequence if finish == "stop" else None
        yield GenerationChunk(
            index=chunk.index, finish_reason=finish, stop_sequence=stop, progress=chunk.progress
        )
