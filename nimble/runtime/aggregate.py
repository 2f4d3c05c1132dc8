"""Fold a stream of engine chunks into whole choices (for non-streaming responses)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field

from nimble.types import GenerationChunk, TokenLogprob, Usage


@dataclass
class Choice:
    index: int
    text: str = ""
    finish_reason: str | None = None
    logprobs: list[TokenLogprob] = field(default_factory=list)


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
        choice.logprobs.extend(chunk.logprobs)
        if chunk.finish_reason is not None:
            choice.finish_reason = chunk.finish_reason
    return Completion(choices=choices, usage=usage)
