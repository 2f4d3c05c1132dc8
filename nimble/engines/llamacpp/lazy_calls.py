"""tool_choice auto on llama.cpp: the model writes freely until it opens a tool call; that
generation stops there, and a second one, on the prompt plus what it wrote, finishes the
calls under the grammar.

Why two generations: llama.cpp's own lazy grammars (a grammar that binds only after a
trigger) do not bind lazily with the llguidance grammars that its JSON-schema conversion
writes, so the free text and the constrained calls are two tasks. The client sees one
stream: the text up to the trigger, the rest of the call's opening, then the calls.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import AsyncGenerator, Awaitable, Callable

from nimble.engines.openai_wire import ChunkMapper
from nimble.errors import UnsupportedParameter
from nimble.types import GenerateRequest, GenerationChunk, ToolCallConstraint, Usage

# one generation on a rendered prompt, its usage counted by the mapper
Run = Callable[[GenerateRequest, str, ChunkMapper], AsyncGenerator[GenerationChunk, None]]
# the tokens of a text (special: with the model's specials, as a prompt is counted)
Count = Callable[[str, bool], Awaitable[int]]


async def text_then_calls(
    request: GenerateRequest, prompt: str, calls: ToolCallConstraint, run: Run, count: Count
) -> AsyncGenerator[GenerationChunk, None]:
    if request.params.n > 1:
        raise UnsupportedParameter(
            "n > 1 with tools (tool_choice auto) is not supported on llama.cpp", param="n"
        )
    trigger = calls.begin.strip() or calls.begin
    free = dataclasses.replace(request, constraint=None)
    first = ChunkMapper(free)
    written = ""
    opened = False
    async with contextlib.aclosing(run(free, prompt, first)) as chunks:
        async for chunk in chunks:
            at = (written + chunk.text).find(trigger)
            if at < 0:
                written += chunk.text
                yield chunk
                continue
            head = chunk.text[: at + len(trigger) - len(written)]
            written += head
            if head:
                yield GenerationChunk(index=chunk.index, text=head)
            opened = True
            break  # closing the stream cancels the free generation
    if not opened:
        yield GenerationChunk(usage=first.usage())
        return
    rest = calls.begin[len(trigger) :] if calls.begin.startswith(trigger) else ""
    if rest:
        yield GenerationChunk(text=rest)
    spent = await count(written + rest, False)
    params = request.params
    if params.max_tokens is not None:
        params = dataclasses.replace(params, max_tokens=max(1, params.max_tokens - spent))
    bound = dataclasses.replace(calls, begin="", separator=calls.separator + calls.begin)
    second = dataclasses.replace(request, params=params, constraint=bound, messages=None)
    mapper = ChunkMapper(second)
    async for chunk in run(second, prompt + written + rest, mapper):
        yield chunk
    prompt_tokens = await count(prompt, True)
    usage = mapper.usage()
    yield GenerationChunk(usage=Usage(prompt_tokens, spent + usage.completion_tokens))
