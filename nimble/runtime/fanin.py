"""Several generations as one stream: a completions request with a list of prompts."""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncGenerator, Sequence

from nimble.runtime.runtime import Runtime
from nimble.types import GenerateRequest, GenerationChunk, Usage


async def generate_each(
    runtime: Runtime, model: str, requests: Sequence[GenerateRequest]
) -> AsyncGenerator[GenerationChunk, None]:
    """The requests' streams one after the other, as one: the choices of request `i` come
    after those of the requests before it (with `n` choices each, choice `j` of request `i`
    is choice `i * n + j`), and one usage chunk at the end sums theirs. Each stream is
    closed before the next starts (an error or a cancellation stops them all)."""
    prompt_tokens = completion_tokens = 0
    cached: int | None = None  # known where any engine reported it
    offset = 0
    for request in requests:
        stream = runtime.generate(model, request)
        try:
            async for chunk in stream:
                if chunk.usage is not None:
                    prompt_tokens += chunk.usage.prompt_tokens
                    completion_tokens += chunk.usage.completion_tokens
                    if chunk.usage.cached_tokens is not None:
                        cached = (cached or 0) + chunk.usage.cached_tokens
                    continue
                yield dataclasses.replace(chunk, index=chunk.index + offset) if offset else chunk
        finally:
            await stream.aclose()
        offset += request.params.n
    yield GenerationChunk(usage=Usage(prompt_tokens, completion_tokens, cached_tokens=cached))
