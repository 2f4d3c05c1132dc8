"""Fold a stream of engine chunks into whole choices (for non-streaming responses)."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncGenerator, AsyncIterator
from dataclasses import dataclass, field

from nimble.types import GenerationChunk, TokenLogprob, ToolCall, ToolCallDelta, Usage


@dataclass
class Choice:
    index: int
    text: str = ""
    reasoning: str = ""  # the thinking a reasoning parser moved out of `text`
    finish_reason: str | None = None
    logprobs: list[TokenLogprob] = field(default_factory=list)
    calls: list[list[str]] = field(default_factory=list)  # [id, name, arguments] per call

    def add_calls(self, deltas: tuple[ToolCallDelta, ...]) -> None:
        for delta in deltas:
            while len(self.calls) <= delta.index:
                self.calls.append(["", "", ""])
            call = self.calls[delta.index]
            call[0] = delta.id or call[0]
            call[1] = delta.name or call[1]
            call[2] += delta.arguments

    @property
    def tool_calls(self) -> tuple[ToolCall, ...]:
        return tuple(ToolCall(*call) for call in self.calls)


@dataclass
class Completion:
    choices: list[Choice]
    usage: Usage


async def collect(chunks: AsyncIterator[GenerationChunk], n: int) -> Completion:
    choices = [Choice(index=i) for i in range(n)]
    usage = Usage(0, 0)
    async for chunk in chunks:
        if chunk.usage is not None:
            usage = chunk.usage
            continue
        choice = choices[chunk.index]
        choice.text += chunk.text
        choice.reasoning += chunk.reasoning
        choice.logprobs.extend(chunk.logprobs)
        choice.add_calls(chunk.tool_calls)
        if chunk.finish_reason is not None:
            choice.finish_reason = chunk.finish_reason
    return Completion(choices=choices, usage=usage)


async def first_text(chunks: AsyncGenerator[GenerationChunk, None]) -> str:
    """The whole text of choice 0 (a guard's verdict, a judge's answer); closes `chunks`."""
    async with contextlib.aclosing(chunks):
        return "".join([chunk.text async for chunk in chunks if chunk.index == 0])
