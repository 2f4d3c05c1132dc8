"""Reasoning output over HTTP, on the fake engine (a last message that says `/think` makes
it think in `<think>...</think>` first): chat `reasoning_content`, streamed and not, the
Responses API's reasoning items, and the reasoning tokens of `usage`."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import httpx
import openai
import pytest

from tests.conftest import FAKE_MODEL, assert_openai_error, fake_service

ASK = [{"role": "user", "content": "How much is 2 and 2? /think"}]


@pytest.fixture
async def thinking() -> AsyncIterator[tuple[httpx.AsyncClient, openai.AsyncOpenAI]]:
    async with fake_service(reasoning_parser="deepseek_r1") as (_, client):
        oai = openai.AsyncOpenAI(
            api_key="unused", base_url="http://nimble.test/v1", http_client=client, max_retries=0
        )
        yield client, oai


async def _raw(client: httpx.AsyncClient, **fields: Any) -> str:
    """What the fake engine writes for the request, tags included (parser off)."""
    async with fake_service() as (_, plain):
        answer = await plain.post("/v1/chat/completions", json={"model": FAKE_MODEL, **fields})
    assert answer.status_code == 200, answer.text
    return str(answer.json()["choices"][0]["message"]["content"])


async def test_chat_answer_and_thinking_apart(
    thinking: tuple[httpx.AsyncClient, openai.AsyncOpenAI],
) -> None:
    client, oai = thinking
    raw = await _raw(client, messages=ASK)
    assert raw.startswith("<think>") and "</think>" in raw
    thought, _, answer = raw.removeprefix("<think>").partition("</think>")

    response = await oai.chat.completions.create(model=FAKE_MODEL, messages=ASK)  # type: ignore[arg-type]
    message = response.choices[0].message
    assert message.model_extra is not None
    assert (message.model_extra["reasoning_content"], message.content) == (thought, answer)
    assert response.choices[0].finish_reason == "stop"
    usage = response.usage
    assert usage is not None and usage.completion_tokens_details is not None
    # the fake's tokens are its words and the two tags
    assert usage.completion_tokens_details.reasoning_tokens == len(thought.split()) + 2
    assert usage.completion_tokens == usage.completion_tokens_details.reasoning_tokens + len(
        answer.split()
    )

    # the reply goes back in the conversation as the SDK made it: accepted
    again = await oai.chat.completions.create(
        model=FAKE_MODEL,
        messages=[*ASK, message, {"role": "user", "content": "And 3 and 3? /think"}],  # type: ignore[list-item]
    )
    assert again.choices[0].message.content
    assert again.choices[0].message.model_extra is not None
    assert again.choices[0].message.model_extra["reasoning_content"]


async def test_chat_stream_sends_thinking_then_answer(
    thinking: tuple[httpx.AsyncClient, openai.AsyncOpenAI],
) -> None:
    client, oai = thinking
    raw = await _raw(client, messages=ASK)
    thought, _, answer = raw.removeprefix("<think>").partition("</think>")
    stream = await oai.chat.completions.create(
        model=FAKE_MODEL,
        messages=ASK,  # type: ignore[arg-type]
        stream=True,
        stream_options={"include_usage": True},
    )
    kinds = []
    reasoning = content = ""
    usage = None
    async for chunk in stream:
        if chunk.usage is not None:
            usage = chunk.usage
        for choice in chunk.choices:
            extra = (choice.delta.model_extra or {}).get("reasoning_content")
            assert not (extra and choice.delta.content), "one kind per delta"
            if extra:
                reasoning += extra
                kinds.append("reasoning")
            if choice.delta.content:
                content += choice.delta.content
                kinds.append("content")
    assert (reasoning, content) == (thought, answer)
    assert kinds == sorted(kinds, reverse=True)  # all the thinking before the answer
    assert usage is not None and usage.completion_tokens_details is not None
    assert usage.completion_tokens_details.reasoning_tokens == len(thought.split()) + 2


async def test_thinking_cut_by_max_tokens_is_all_reasoning(
    thinking: tuple[httpx.AsyncClient, openai.AsyncOpenAI],
) -> None:
    _, oai = thinking
    response = await oai.chat.completions.create(model=FAKE_MODEL, messages=ASK, max_tokens=3)  # type: ignore[arg-type]
    choice = response.choices[0]
    assert choice.finish_reason == "length"
    assert choice.message.content == ""
    assert choice.message.model_extra is not None
    assert len(choice.message.model_extra["reasoning_content"].split()) == 2  # <think> + 2
    assert response.usage is not None and response.usage.completion_tokens_details is not None
    assert response.usage.completion_tokens_details.reasoning_tokens == 3


async def test_without_a_parser_the_thinking_stays_in_the_answer() -> None:
    async with fake_service() as (_, client):
        answer = await client.post(
            "/v1/chat/completions", json={"model": FAKE_MODEL, "messages": ASK}
        )
    body = answer.json()
    assert body["choices"][0]["message"]["content"].startswith("<think>")
    assert body["choices"][0]["message"]["reasoning_content"] is None
    assert body["usage"]["completion_tokens_details"] is None


async def test_reasoning_content_only_on_assistant_messages(
    thinking: tuple[httpx.AsyncClient, openai.AsyncOpenAI],
) -> None:
    client, _ = thinking
    messages = [{"role": "user", "content": "hi", "reasoning_content": "sneaky"}]
    answer = await client.post(
        "/v1/chat/completions", json={"model": FAKE_MODEL, "messages": messages}
    )
    assert_openai_error(answer, 400, "messages.0")


async def test_responses_reasoning_item_before_the_message(
    thinking: tuple[httpx.AsyncClient, openai.AsyncOpenAI],
) -> None:
    client, oai = thinking
    raw = await _raw(client, messages=ASK)
    thought, _, answer = raw.removeprefix("<think>").partition("</think>")
    response = await oai.responses.create(model=FAKE_MODEL, input=ASK[0]["content"])
    assert [item.type for item in response.output] == ["reasoning", "message"]
    reasoning = response.output[0]
    assert reasoning.type == "reasoning" and reasoning.content is not None
    assert reasoning.id.startswith("rs_") and reasoning.summary == []
    assert [(part.type, part.text) for part in reasoning.content] == [("reasoning_text", thought)]
    assert response.output_text == answer
    assert response.usage is not None
    assert response.usage.output_tokens_details.reasoning_tokens == len(thought.split()) + 2

    # the output sent back as input (reasoning item included) continues the conversation
    follow = [*(item.model_dump(exclude_none=True) for item in response.output)]
    follow.append({"role": "user", "content": "And 3 and 3? /think"})
    again = await oai.responses.create(model=FAKE_MODEL, input=follow)  # type: ignore[arg-type]
    assert [item.type for item in again.output] == ["reasoning", "message"]
    assert again.output_text
    alone = await client.post("/v1/responses", json={"model": FAKE_MODEL, "input": follow[:1]})
    assert_openai_error(alone, 400, "input")


async def test_responses_stream_events_of_the_reasoning_item(
    thinking: tuple[httpx.AsyncClient, openai.AsyncOpenAI],
) -> None:
    client, oai = thinking
    raw = await _raw(client, messages=ASK)
    thought, _, answer = raw.removeprefix("<think>").partition("</think>")
    stream = await oai.responses.create(model=FAKE_MODEL, input=ASK[0]["content"], stream=True)
    events = [event async for event in stream]
    kinds = [event.type for event in events]
    first_text = kinds.index("response.output_text.delta")
    reasoning_events = [kind for kind in dict.fromkeys(kinds[:first_text]) if "reason" in kind]
    assert reasoning_events == ["response.reasoning_text.delta", "response.reasoning_text.done"]
    deltas = "".join(e.delta for e in events if e.type == "response.reasoning_text.delta")
    done = next(e for e in events if e.type == "response.reasoning_text.done")
    assert deltas == done.text == thought
    added = [e for e in events if e.type == "response.output_item.added"]
    assert [(e.output_index, e.item.type) for e in added] == [(0, "reasoning"), (1, "message")]
    item_done = next(e for e in events if e.type == "response.output_item.done")
    assert item_done.item.type == "reasoning" and item_done.item.content is not None
    assert item_done.item.content[0].text == thought
    part = next(e for e in events if e.type == "response.content_part.added")
    assert (part.output_index, part.part.type) == (0, "reasoning_text")
    completed = events[-1]
    assert completed.type == "response.completed"
    assert completed.response.output_text == answer
    assert [item.type for item in completed.response.output] == ["reasoning", "message"]


async def test_record_names_each_models_reasoning_parser(
    thinking: tuple[httpx.AsyncClient, openai.AsyncOpenAI],
) -> None:
    client, _ = thinking
    record = (await client.get("/v1/manifest")).json()
    assert record["reasoning"] == {
        "parser_setting": "deepseek_r1",
        "models": {FAKE_MODEL: {"parser": "deepseek_r1"}},
    }
