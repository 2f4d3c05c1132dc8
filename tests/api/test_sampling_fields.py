"""vLLM's sampling extensions, NIM's `nvext` and OpenAI's logit_bias on chat and completions:
the shapes accepted, every bad value a 400 naming its field, and what the fake engine
honours (its tokens are words; a word's token id is its place in the alphabet, alpha 0)."""

from __future__ import annotations

import json
from typing import Any

import httpx
import openai
import pytest

from tests.conftest import FAKE_MODEL, assert_openai_error, chat_body

ALL_FIELDS: dict[str, Any] = {
    "top_k": -1,
    "min_p": 0.05,
    "repetition_penalty": 1.1,
    "min_tokens": 2,
    "stop_token_ids": [25],
    "ignore_eos": False,
    "include_stop_str_in_output": False,
    "skip_special_tokens": True,
    "logit_bias": {"3": 1.5, "7": -100},
    "nvext": {"top_k": -1, "repetition_penalty": 1.1, "ignore_eos": False},
}


def completion_body(**overrides: Any) -> dict[str, Any]:
    return {"model": FAKE_MODEL, "prompt": "Say something", **overrides}


BODIES = {"/v1/chat/completions": chat_body, "/v1/completions": completion_body}


def token_id(word: str) -> int:
    return ord(word[0]) - ord("a")


async def test_every_field_is_accepted_by_the_sdk_on_both_routes(oai: openai.AsyncOpenAI) -> None:
    chat = await oai.chat.completions.create(
        model=FAKE_MODEL,
        messages=[{"role": "user", "content": "hi"}],
        max_tokens=10,
        extra_body=ALL_FIELDS,
    )
    assert chat.choices[0].message.content
    completion = await oai.completions.create(
        model=FAKE_MODEL, prompt="hi", max_tokens=10, extra_body=ALL_FIELDS
    )
    assert completion.choices[0].text


BAD: list[tuple[str, dict[str, Any], str]] = [
    ("top_k below -1", {"top_k": -2}, "top_k"),
    ("top_k not a number", {"top_k": "all"}, "top_k"),
    ("min_p above 1", {"min_p": 1.5}, "min_p"),
    ("min_p negative", {"min_p": -0.1}, "min_p"),
    ("repetition_penalty zero", {"repetition_penalty": 0}, "repetition_penalty"),
    ("min_tokens negative", {"min_tokens": -1}, "min_tokens"),
    ("min_tokens above max_tokens", {"min_tokens": 9, "max_tokens": 8}, "min_tokens"),
    ("stop_token_ids negative", {"stop_token_ids": [3, -1]}, "stop_token_ids"),
    ("stop_token_ids not a list", {"stop_token_ids": "3"}, "stop_token_ids"),
    ("ignore_eos not a bool", {"ignore_eos": "maybe"}, "ignore_eos"),
    ("skip_special_tokens not a bool", {"skip_special_tokens": "sometimes"}, "skip_special_tokens"),
    ("logit_bias key not an id", {"logit_bias": {"hello": 5}}, "logit_bias"),
    ("logit_bias above 100", {"logit_bias": {"5": 101}}, "logit_bias"),
    ("logit_bias below -100", {"logit_bias": {"5": -100.5}}, "logit_bias"),
    ("nvext unknown key", {"nvext": {"frobnicate": 1}}, "nvext.frobnicate"),
    ("nvext top_k below -1", {"nvext": {"top_k": -3}}, "nvext.top_k"),
    ("nvext contradicts", {"top_k": 3, "nvext": {"top_k": 2}}, "nvext.top_k"),
    (
        "nvext ignore_eos contradicts",
        {"ignore_eos": True, "nvext": {"ignore_eos": False}},
        "nvext.ignore_eos",
    ),
    (
        "continuous usage without stream",
        {"stream_options": {"continuous_usage_stats": True}},
        "stream_options",
    ),
    (
        "unknown stream option",
        {"stream": True, "stream_options": {"usage_every": 3}},
        "stream_options.usage_every",
    ),
]


@pytest.mark.parametrize("path", list(BODIES))
@pytest.mark.parametrize(("case", "fields", "param"), BAD, ids=[case[0] for case in BAD])
async def test_bad_values_are_a_400_naming_the_field(
    client: httpx.AsyncClient, path: str, case: str, fields: dict[str, Any], param: str
) -> None:
    response = await client.post(path, json=BODIES[path](**fields))
    assert_openai_error(response, 400, param)


async def words(client: httpx.AsyncClient, path: str, **fields: Any) -> tuple[list[str], Any]:
    """The output's words, and the answer."""
    answer = (await client.post(path, json=BODIES[path](**fields))).json()
    choice = answer["choices"][0]
    text = choice["message"]["content"] if "message" in choice else choice["text"]
    return text.split(), answer


@pytest.mark.parametrize("path", list(BODIES))
async def test_ignore_eos_and_min_tokens_run_past_the_natural_end(
    client: httpx.AsyncClient, path: str
) -> None:
    natural, plain = await words(client, path, max_tokens=40)
    assert plain["choices"][0]["finish_reason"] == "stop" and len(natural) < 40
    ignored, answer = await words(client, path, max_tokens=40, ignore_eos=True)
    assert answer["choices"][0]["finish_reason"] == "length"
    assert answer["usage"]["completion_tokens"] == 40 and ignored[: len(natural)] == natural
    via_nvext, _ = await words(client, path, max_tokens=40, nvext={"ignore_eos": True})
    assert via_nvext == ignored
    longer, answer = await words(client, path, max_tokens=40, min_tokens=len(natural) + 5)
    assert answer["choices"][0]["finish_reason"] == "stop"
    assert longer == ignored[: len(natural) + 5]


@pytest.mark.parametrize("path", list(BODIES))
async def test_stop_token_ids_and_include_stop_str_in_output(
    client: httpx.AsyncClient, path: str
) -> None:
    natural, _ = await words(client, path, max_tokens=40)
    word = natural[3]
    first = natural.index(word)  # a word can come back
    cut, answer = await words(client, path, max_tokens=40, stop_token_ids=[token_id(word)])
    assert cut == natural[:first] and answer["choices"][0]["finish_reason"] == "stop"
    assert answer["usage"]["completion_tokens"] == first + 1  # the stop token was generated
    kept, _ = await words(
        client,
        path,
        max_tokens=40,
        stop_token_ids=[token_id(word)],
        include_stop_str_in_output=True,
    )
    assert kept == natural[: first + 1]
    # a stop string, left out or kept
    stop = " " + word
    cut, _ = await words(client, path, max_tokens=40, stop=[stop])
    kept, _ = await words(client, path, max_tokens=40, stop=[stop], include_stop_str_in_output=True)
    assert cut == natural[:first] and kept == natural[: first + 1]
    # no end before min_tokens: the stop token at `first` is passed over
    late, _ = await words(
        client, path, max_tokens=40, stop_token_ids=[token_id(word)], min_tokens=first + 1
    )
    assert late[: first + 1] == natural[: first + 1] and len(late) > first + 1


def events(response: httpx.Response) -> list[dict[str, Any]]:
    lines = [line for line in response.text.split("\n\n") if line]
    assert lines[-1] == "data: [DONE]"
    return [json.loads(line.removeprefix("data: ")) for line in lines[:-1]]


@pytest.mark.parametrize("path", list(BODIES))
@pytest.mark.parametrize(
    "options",
    [
        {"include_usage": True, "continuous_usage_stats": True},
        {"continuous_usage_stats": True},  # vLLM: include_usage defaults to true with it
    ],
)
async def test_continuous_usage_stats_on_every_chunk(
    client: httpx.AsyncClient, path: str, options: dict[str, bool]
) -> None:
    body = BODIES[path](max_tokens=6, n=2, stream=True, stream_options=options)
    chunks = events(await client.post(path, json=body))
    *streamed, last = chunks
    assert last["choices"] == [] and last["usage"]["completion_tokens"] == 12
    prompt = last["usage"]["prompt_tokens"]
    for index in (0, 1):
        own = [c["usage"] for c in streamed if c["choices"][0]["index"] == index]
        counts = [usage["completion_tokens"] for usage in own]
        assert counts[0] == 1 and counts[-1] == 6 and counts == sorted(counts)
        assert all(usage["prompt_tokens"] == prompt for usage in own)
        assert all(u["total_tokens"] == u["prompt_tokens"] + u["completion_tokens"] for u in own)
    # include_usage false: no usage at all, continuous or not
    off = {"include_usage": False, "continuous_usage_stats": True}
    body = BODIES[path](max_tokens=6, stream=True, stream_options=off)
    assert all(c.get("usage") is None for c in events(await client.post(path, json=body)))
