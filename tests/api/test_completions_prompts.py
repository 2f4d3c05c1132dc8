"""/v1/completions prompts as token ids, `echo` with prompt logprobs and prompt scoring
(`max_tokens` 0), on the fake engine: its tokens are words, a word's id its place in the
fake vocabulary (alpha 0, bravo 1, charlie 2...)."""

from __future__ import annotations

from typing import Any

import httpx
import openai
import pytest

from nimble.runtime import Runtime
from tests.conftest import FAKE_MODEL, assert_openai_error

WORDS = "alpha bravo charlie"
IDS = [0, 1, 2]


async def test_token_ids_reach_the_engine_as_those_tokens(oai: openai.AsyncOpenAI) -> None:
    by_text = await oai.completions.create(model=FAKE_MODEL, prompt=WORDS, max_tokens=5, seed=3)
    by_ids = await oai.completions.create(model=FAKE_MODEL, prompt=IDS, max_tokens=5, seed=3)
    other = await oai.completions.create(model=FAKE_MODEL, prompt=[0, 1, 3], max_tokens=5, seed=3)
    assert by_ids.choices[0].text == by_text.choices[0].text != other.choices[0].text
    assert by_ids.usage is not None and by_ids.usage.prompt_tokens == 3


async def test_a_list_of_token_id_lists_is_one_prompt_each(oai: openai.AsyncOpenAI) -> None:
    r = await oai.completions.create(model=FAKE_MODEL, prompt=[[0, 1], [2]], max_tokens=2, n=2)
    assert [c.index for c in r.choices] == [0, 1, 2, 3]
    assert r.usage is not None and (r.usage.prompt_tokens, r.usage.completion_tokens) == (3, 8)


async def test_prompt_scoring_echo_logprobs_and_no_generation(oai: openai.AsyncOpenAI) -> None:
    r = await oai.completions.create(
        model=FAKE_MODEL, prompt=[IDS], echo=True, logprobs=2, max_tokens=0
    )
    (choice,) = r.choices
    assert choice.text == WORDS and choice.finish_reason == "length"
    logprobs = choice.logprobs
    assert logprobs is not None and logprobs.top_logprobs is not None
    assert logprobs.tokens == ["alpha", " bravo", " charlie"]
    assert logprobs.text_offset == [0, 5, 11]
    first, *rest = logprobs.token_logprobs or []
    assert first is None and all(isinstance(v, float) and v < 0 for v in rest)
    assert logprobs.top_logprobs[0] is None
    assert all(len(top) == 2 for top in logprobs.top_logprobs[1:])
    assert r.usage is not None and (r.usage.prompt_tokens, r.usage.completion_tokens) == (3, 0)


async def test_echo_then_generation_in_one_logprobs_list(oai: openai.AsyncOpenAI) -> None:
    plain = await oai.completions.create(model=FAKE_MODEL, prompt=WORDS, max_tokens=3, seed=1)
    r = await oai.completions.create(
        model=FAKE_MODEL, prompt=WORDS, echo=True, logprobs=1, max_tokens=3, seed=1
    )
    (choice,) = r.choices
    assert choice.text == WORDS + plain.choices[0].text
    assert choice.logprobs is not None and choice.logprobs.tokens is not None
    assert len(choice.logprobs.tokens) == 3 + 3
    assert "".join(choice.logprobs.tokens) == choice.text
    assert choice.logprobs.text_offset == [
        len("".join(choice.logprobs.tokens[:i])) for i in range(6)
    ]


async def test_echo_without_logprobs_and_streamed(oai: openai.AsyncOpenAI) -> None:
    whole = await oai.completions.create(
        model=FAKE_MODEL, prompt=IDS, echo=True, max_tokens=4, seed=2, logprobs=1
    )
    stream = await oai.completions.create(
        model=FAKE_MODEL, prompt=IDS, echo=True, max_tokens=4, seed=2, logprobs=1, stream=True
    )
    chunks = [c async for c in stream]
    assert chunks[0].choices[0].text == WORDS  # the prompt comes first, in one chunk
    first = chunks[0].choices[0].logprobs
    assert first is not None and first.token_logprobs is not None
    assert first.token_logprobs[0] is None and len(first.token_logprobs) == 3
    assert "".join(c.choices[0].text for c in chunks) == whole.choices[0].text
    bare = await oai.completions.create(model=FAKE_MODEL, prompt=IDS, echo=True, max_tokens=0)
    assert bare.choices[0].text == WORDS and bare.choices[0].logprobs is None


@pytest.mark.parametrize(
    ("prompt", "says"),
    [
        ([], "not empty"),
        ([[]], "must not be empty"),
        ([[0], []], "must not be empty"),
        ([-1], "not negative"),
        ([0, "a"], "a list of token ids"),
        ([True], "a list of token ids"),
        ([1.0], "a list of token ids"),
        ([[0], [1, "x"]], "a list of token ids"),
        ({"a": 1}, "a list of token ids"),
        ([10**6], "not a token id"),
        ([[0], [99]], "not a token id"),
    ],
)
async def test_bad_prompts_are_a_400_naming_prompt(
    client: httpx.AsyncClient, prompt: Any, says: str
) -> None:
    r = await client.post("/v1/completions", json={"model": FAKE_MODEL, "prompt": prompt})
    assert says in assert_openai_error(r, 400, "prompt")["message"]


async def test_max_tokens_0_needs_echo(client: httpx.AsyncClient) -> None:
    body = {"model": FAKE_MODEL, "prompt": IDS, "max_tokens": 0}
    r = await client.post("/v1/completions", json=body)
    assert "echo" in assert_openai_error(r, 400, "max_tokens")["message"]
    r = await client.post("/v1/completions", json={**body, "max_tokens": -1})
    assert_openai_error(r, 400, "max_tokens")


async def test_token_ids_count_exactly_against_the_window(
    service: tuple[Runtime, httpx.AsyncClient],
) -> None:
    runtime, client = service
    window = runtime.models[FAKE_MODEL].info.context_length
    body = {"model": FAKE_MODEL, "max_tokens": 16}
    fits = await client.post("/v1/completions", json={**body, "prompt": [0] * (window - 16)})
    assert fits.status_code == 200, fits.text
    over = await client.post("/v1/completions", json={**body, "prompt": [0] * (window - 15)})
    assert str(window) in assert_openai_error(over, 400, "max_tokens")["message"]
    whole = {**body, "prompt": [0] * window, "echo": True, "max_tokens": 0}
    assert_openai_error(await client.post("/v1/completions", json=whole), 400, "prompt")
