"""Text completions on the fake engine."""

from __future__ import annotations

import openai

from tests.conftest import FAKE_MODEL


async def test_completion_default_max_tokens_is_16(oai: openai.AsyncOpenAI) -> None:
    # the fake engine writes a single guided choice word by word: 30 words, unless cut
    words = [f"w{i}" for i in range(30)]
    forced = {"guided_choice": [" ".join(words)]}
    r = await oai.completions.create(model=FAKE_MODEL, prompt="Count", extra_body=forced)
    assert r.object == "text_completion"
    assert r.usage.completion_tokens == 16
    assert r.choices[0].finish_reason == "length"
    assert r.choices[0].text.split() == words[:16]
    whole = await oai.completions.create(
        model=FAKE_MODEL, prompt="Count", max_tokens=64, extra_body=forced
    )
    assert whole.usage.completion_tokens == 30 and whole.choices[0].finish_reason == "stop"


async def test_completion_list_of_prompts_indexes(oai: openai.AsyncOpenAI) -> None:
    r = await oai.completions.create(model=FAKE_MODEL, prompt=["a", "b"], n=2, max_tokens=2)
    assert [c.index for c in r.choices] == [0, 1, 2, 3]
    assert r.usage.completion_tokens == 8


async def test_completion_streaming_with_usage_and_logprobs(oai: openai.AsyncOpenAI) -> None:
    stream = await oai.completions.create(
        model=FAKE_MODEL,
        prompt="Hello",
        max_tokens=5,
        stream=True,
        logprobs=1,
        stream_options={"include_usage": True},
    )
    chunks = [c async for c in stream]
    text = "".join(c.choices[0].text for c in chunks if c.choices)
    assert len(text.split()) == 5
    assert chunks[-1].usage.completion_tokens == 5
    with_logprobs = [c for c in chunks if c.choices and c.choices[0].logprobs]
    assert len(with_logprobs) == 5


async def test_completion_seed_reproducible(oai: openai.AsyncOpenAI) -> None:
    async def run(seed: int) -> str:
        r = await oai.completions.create(model=FAKE_MODEL, prompt="p", seed=seed, max_tokens=5)
        return r.choices[0].text

    assert await run(1) == await run(1)
    assert await run(1) != await run(2)  # the seed reaches the engine
