"""The text nimble puts around what vLLM writes under a constraint, spliced into the chunk
stream: a forced tool call's markers, which vLLM never sees (it gets only the call's JSON
schema, `wire.structured_fields`), before a choice's first text and before its finish."""

from __future__ import annotations

import dataclasses

from nimble.types import GenerationChunk


def wrapped(
    chunk: GenerationChunk, wrap: tuple[str, str], opened: set[int]
) -> list[GenerationChunk]:
    """The chunk with `wrap`'s opening text before a choice's first text and its closing
    text before the choice's finish."""
    begin, end = wrap
    if not begin and not end:
        return [chunk]
    out = []
    if chunk.index not in opened and (chunk.text or chunk.finish_reason is not None):
        opened.add(chunk.index)
        out.append(GenerationChunk(index=chunk.index, text=begin))
    if chunk.finish_reason is not None:
        if chunk.text or chunk.logprobs:
            out.append(dataclasses.replace(chunk, finish_reason=None))
        out.append(GenerationChunk(index=chunk.index, text=end))
        out.append(
            GenerationChunk(
                index=chunk.index,
                finish_reason=chunk.finish_reason,
                stop_sequence=chunk.stop_sequence,
            )
        )
        return out
    return [*out, chunk]
