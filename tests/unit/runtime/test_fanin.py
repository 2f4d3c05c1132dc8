"""runtime/fanin.py: several generations as one stream (completions with a list of prompts)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from nimble.engines import EngineConfig
from nimble.errors import ModelNotFound
from nimble.models import resolve_model
from nimble.runtime import Runtime, RuntimeConfig
from nimble.runtime.aggregate import collect
from nimble.runtime.fanin import generate_each
from nimble.types import GenerateRequest, GenerationChunk, SamplingParams

MODEL = "fake-model"


@pytest.fixture
async def runtime() -> AsyncIterator[Runtime]:
    runtime = Runtime([resolve_model("fake")], RuntimeConfig(EngineConfig()))
    await runtime.start()
    yield runtime
    await runtime.stop()


def _request(request_id: str, prompt: str, n: int) -> GenerateRequest:
    return GenerateRequest(request_id, SamplingParams(max_tokens=3, n=n), prompt=prompt)


async def _alone(runtime: Runtime, request: GenerateRequest) -> list[GenerationChunk]:
    return [chunk async for chunk in runtime.generate(MODEL, request)]


async def test_choices_follow_each_other_and_usage_is_summed(runtime: Runtime) -> None:
    first, second = _request("r-0", "one two", 2), _request("r-1", "three four five", 2)
    alone = [await _alone(runtime, first), await _alone(runtime, second)]
    chunks = [chunk async for chunk in generate_each(runtime, MODEL, [first, second])]

    # the second prompt's choices 0 and 1 are choices 2 and 3; nothing else changes
    expected = [c for c in alone[0] if c.usage is None]
    expected += [
        GenerationChunk(c.index + 2, c.text, c.finish_reason, c.logprobs)
        for c in alone[1]
        if c.usage is None
    ]
    assert chunks[:-1] == expected
    usages = [alone[0][-1].usage, alone[1][-1].usage]
    assert all(u is not None and u.prompt_tokens > 0 for u in usages)
    summed = chunks[-1].usage
    assert summed is not None and [c for c in chunks if c.usage is not None] == [chunks[-1]]
    assert summed.prompt_tokens == sum(u.prompt_tokens for u in usages if u is not None)
    assert summed.completion_tokens == sum(u.completion_tokens for u in usages if u is not None)

    result = await collect(generate_each(runtime, MODEL, [first, second]), 4)
    assert [c.index for c in result.choices] == [0, 1, 2, 3]
    assert all(c.finish_reason is not None and c.text for c in result.choices)


async def test_a_refusal_comes_from_the_first_chunk_and_closing_stops_the_rest(
    runtime: Runtime,
) -> None:
    with pytest.raises(ModelNotFound):
        await anext(generate_each(runtime, "nope", [_request("r-0", "x", 1)]))
    stream = generate_each(runtime, MODEL, [_request("r-0", "x", 1), _request("r-1", "y", 1)])
    first = await anext(stream)
    assert first.index == 0 and first.text
    assert runtime.inflight == 1
    await stream.aclose()
    assert runtime.inflight == 0
