"""vLLM's sampling extensions and OpenAI's logit_bias on real SmolLM2 (llama.cpp engine),
through the official `openai` SDK (`extra_body=` for vLLM's fields, as clients send them).

Each field must change the output where it should: greedy SmolLM2 ends its answer to
"Say hi" by itself after 27 tokens, and completes "The capital of France is" with
" Paris." (tokens 7042 " Paris", 30 "."); token 504 is "The".
"""

from __future__ import annotations

from typing import Any

import openai
import pytest

from tests.clients.conftest import CHAT_MODEL, NimbleProcess

pytestmark = [pytest.mark.e2e, pytest.mark.models]

HI = [{"role": "user", "content": "Say hi"}]
FRANCE = "The capital of France is"
PERIOD, THE = 30, 504


@pytest.fixture(scope="module")
def client(smollm2: NimbleProcess) -> openai.OpenAI:
    return smollm2.client()


def greedy_chat(client: openai.OpenAI, max_tokens: int, **extra: Any) -> Any:
    return client.chat.completions.create(
        model=CHAT_MODEL, messages=HI, max_tokens=max_tokens, temperature=0, extra_body=extra
    )


def test_ignore_eos_runs_to_max_tokens(client: openai.OpenAI) -> None:
    natural = greedy_chat(client, 32)
    assert natural.choices[0].finish_reason == "stop"
    assert natural.usage is not None and natural.usage.completion_tokens < 32
    forced = greedy_chat(client, 32, nvext={"ignore_eos": True})  # NIM's spelling
    assert forced.choices[0].finish_reason == "length"
    assert forced.usage is not None and forced.usage.completion_tokens == 32
    assert forced.choices[0].message.content.startswith(natural.choices[0].message.content)
    # aiperf's fixed-length requests: min_tokens = max_tokens with ignore_eos
    fixed = greedy_chat(client, 32, ignore_eos=True, min_tokens=32)
    assert fixed.usage is not None and fixed.usage.completion_tokens == 32
    assert fixed.choices[0].message.content == forced.choices[0].message.content


def test_what_llama_cpp_cannot_do_is_a_400_naming_the_field(client: openai.OpenAI) -> None:
    for extra, param in (
        ({"min_tokens": 5}, "min_tokens"),  # no end-of-text ban for the first tokens only
        ({"skip_special_tokens": False}, "skip_special_tokens"),
        ({"logit_bias": {"49152": 5}}, "logit_bias"),  # one past the vocabulary
    ):
        with pytest.raises(openai.BadRequestError) as refused:
            greedy_chat(client, 8, **extra)
        assert refused.value.status_code == 400
        body = refused.value.body
        assert isinstance(body, dict) and body["param"] == param, (extra, body)


def test_logit_bias_makes_a_token_appear(client: openai.OpenAI) -> None:
    def complete(**extra: Any) -> str:
        answer = client.completions.create(
            model=CHAT_MODEL, prompt=FRANCE, max_tokens=3, temperature=0, **extra
        )
        return answer.choices[0].text

    assert complete() == " Paris.\n"
    assert complete(logit_bias={str(THE): 100}) == "TheTheThe"
    banned = complete(logit_bias={"7042": -100})  # " Paris" banned
    assert not banned.startswith(" Paris")


def test_top_k_one_and_min_p_one_are_greedy_at_temperature_one(client: openai.OpenAI) -> None:
    greedy = greedy_chat(client, 10).choices[0].message.content
    for extra in ({"top_k": 1}, {"min_p": 1.0}):
        sampled = client.chat.completions.create(
            model=CHAT_MODEL, messages=HI, max_tokens=10, temperature=1, seed=11, extra_body=extra
        )
        assert sampled.choices[0].message.content == greedy, extra
    # and without them, the same seed at temperature 1 samples something else
    free = client.chat.completions.create(
        model=CHAT_MODEL, messages=HI, max_tokens=10, temperature=1, seed=11
    )
    assert free.choices[0].message.content != greedy


def test_repetition_penalty_changes_the_greedy_text(client: openai.OpenAI) -> None:
    plain = greedy_chat(client, 20).choices[0].message.content
    penalised = greedy_chat(client, 20, repetition_penalty=1.5).choices[0].message.content
    assert penalised != plain


def test_stop_token_ids_end_the_text_and_include_stop_str_keeps_it(
    client: openai.OpenAI,
) -> None:
    def complete(**extra: Any) -> Any:
        return client.completions.create(
            model=CHAT_MODEL, prompt=FRANCE, max_tokens=8, temperature=0, extra_body=extra
        )

    cut = complete(stop_token_ids=[PERIOD])
    assert (cut.choices[0].text, cut.choices[0].finish_reason) == (" Paris", "stop")
    assert cut.usage is not None and cut.usage.completion_tokens == 2  # the stop token counts
    kept = complete(stop_token_ids=[PERIOD], include_stop_str_in_output=True)
    assert kept.choices[0].text == " Paris."
    stopped = complete(stop=["ris"], include_stop_str_in_output=True)
    assert (stopped.choices[0].text, stopped.choices[0].finish_reason) == (" Paris", "stop")
    # chat, two choices, streamed: each ends at its own "!"
    stream = client.chat.completions.create(
        model=CHAT_MODEL,
        messages=HI,
        max_tokens=20,
        temperature=0,
        n=2,
        stream=True,
        extra_body={"stop_token_ids": [17]},
    )
    texts, finishes = ["", ""], [None, None]
    for chunk in stream:
        for choice in chunk.choices:
            texts[choice.index] += choice.delta.content or ""
            finishes[choice.index] = choice.finish_reason or finishes[choice.index]
    assert texts == ["I'm glad you're here"] * 2 and finishes == ["stop", "stop"]


def test_continuous_usage_stats_put_the_usage_so_far_on_every_chunk(
    client: openai.OpenAI,
) -> None:
    stream = client.chat.completions.create(
        model=CHAT_MODEL,
        messages=HI,
        max_tokens=6,
        temperature=0,
        stream=True,
        extra_body={"stream_options": {"include_usage": True, "continuous_usage_stats": True}},
    )
    chunks = list(stream)
    *with_choices, last = chunks
    assert not last.choices and last.usage is not None and last.usage.completion_tokens == 6
    counts = [chunk.usage.completion_tokens for chunk in with_choices if chunk.usage]
    assert len(counts) == len(with_choices)  # every chunk, the role and the finish too
    assert counts == sorted(counts) and counts[-1] == 6 and counts[0] >= 1
    prompts = {chunk.usage.prompt_tokens for chunk in chunks if chunk.usage}
    assert prompts == {last.usage.prompt_tokens}
