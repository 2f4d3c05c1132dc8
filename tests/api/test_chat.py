"""Chat completions through the official SDK and raw HTTP, on the fake engine."""

from __future__ import annotations

import json

import httpx
import openai

from tests.conftest import FAKE_MODEL, chat_body


async def test_chat_non_streaming_shape(oai: openai.AsyncOpenAI) -> None:
    result = await oai.chat.completions.create(
        model=FAKE_MODEL, messages=[{"role": "user", "content": "hello"}], max_tokens=3
    )
    assert result.object == "chat.completion"
    assert result.model == FAKE_MODEL
    choice = result.choices[0]
    assert choice.message.role == "assistant"
    assert len(choice.message.content.split()) == 3
    assert choice.finish_reason == "length"
    assert result.usage.completion_tokens == 3
    assert result.usage.total_tokens == result.usage.prompt_tokens + 3


async def test_chat_streaming_with_usage(oai: openai.AsyncOpenAI) -> None:
    stream = await oai.chat.completions.create(
        model=FAKE_MODEL,
        messages=[{"role": "user", "content": "hello"}],
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = [chunk async for chunk in stream]
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices]
    assert finishes[-1] == "stop" and finishes.count("stop") == 1
    assert chunks[-1].choices == [] and chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens == len(text.split())
    assert all(c.usage is None for c in chunks[:-1])


async def test_stream_ends_with_done(client: httpx.AsyncClient) -> None:
    response = await client.post("/v1/chat/completions", json=chat_body(stream=True))
    assert response.headers["content-type"].startswith("text/event-stream")
    events = [line for line in response.text.split("\n\n") if line]
    assert events[-1] == "data: [DONE]"
    assert all(e.startswith("data: {") for e in events[:-1])
    # without include_usage no usage chunk at all
    assert all(json.loads(e[6:]).get("usage") is None for e in events[:-1])


async def test_same_seed_same_text_and_n_choices(oai: openai.AsyncOpenAI) -> None:
    async def run(seed: int) -> list[str]:
        r = await oai.chat.completions.create(
            model=FAKE_MODEL, messages=[{"role": "user", "content": "x"}], seed=seed, n=3
        )
        assert [c.index for c in r.choices] == [0, 1, 2]
        return [c.message.content or "" for c in r.choices]

    assert await run(7) == await run(7)
    assert await run(7) != await run(8)


async def test_stop_sequence_cuts_text(oai: openai.AsyncOpenAI) -> None:
    full = await oai.chat.completions.create(
        model=FAKE_MODEL, messages=[{"role": "user", "content": "stop test"}]
    )
    words = (full.choices[0].message.content or "").split()
    stopped = await oai.chat.completions.create(
        model=FAKE_MODEL, messages=[{"role": "user", "content": "stop test"}], stop=[words[2]]
    )
    assert stopped.choices[0].finish_reason == "stop"
    assert stopped.choices[0].message.content == " ".join(words[:2]) + " "


async def test_logprobs(oai: openai.AsyncOpenAI) -> None:
    r = await oai.chat.completions.create(
        model=FAKE_MODEL,
        messages=[{"role": "user", "content": "x"}],
        logprobs=True,
        top_logprobs=2,
        max_tokens=4,
    )
    content = r.choices[0].logprobs.content
    assert len(content) == 4
    assert all(len(t.top_logprobs) == 2 for t in content)


async def test_content_parts_and_max_completion_tokens(oai: openai.AsyncOpenAI) -> None:
    r = await oai.chat.completions.create(
        model=FAKE_MODEL,
        messages=[
            {"role": "system", "content": "be brief"},
            {"role": "user", "content": [{"type": "text", "text": "hello"}]},
        ],
        max_completion_tokens=2,
        user="alice",
        presence_penalty=0.5,
        frequency_penalty=0.5,
        temperature=0.7,
        top_p=0.9,
    )
    assert r.usage.completion_tokens == 2
