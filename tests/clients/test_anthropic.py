"""Anthropic's official SDK against a live `nimble serve` of the real SmolLM2 (llama.cpp):
a text answer, a streamed one, a forced tool call and its result, stop sequences, and
count_tokens equal to the usage of the same request. Protocol details and error paths are
tested on the fake engine (tests/api/test_messages.py)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import anthropic
import jsonschema
import pytest

from tests.clients.conftest import CHAT_MODEL, NimbleProcess

pytestmark = [pytest.mark.e2e, pytest.mark.models]

GREEDY = {"temperature": 0}  # not among this SDK's typed arguments: sent as extra_body
WEATHER = {
    "name": "get_weather",
    "description": "The current weather in a city",
    "input_schema": {
        "type": "object",
        "properties": {"city": {"type": "string"}},
        "required": ["city"],
    },
}
ASK_WEATHER: list[Any] = [{"role": "user", "content": "What is the weather in Paris?"}]


@pytest.fixture(scope="module")
def claude(smollm2: NimbleProcess) -> Iterator[anthropic.Anthropic]:
    with anthropic.Anthropic(api_key="unused", base_url=smollm2.base_url, max_retries=0) as c:
        yield c


def test_text_answer_and_its_token_count(claude: anthropic.Anthropic) -> None:
    ask: dict[str, Any] = {
        "model": CHAT_MODEL,
        "system": "You answer in one short sentence.",
        "messages": [{"role": "user", "content": "What is the capital of France?"}],
    }
    message = claude.messages.create(**ask, max_tokens=16, extra_body=GREEDY)
    [block] = message.content
    assert block.type == "text" and block.text.strip()
    assert message.stop_reason in ("end_turn", "max_tokens")
    assert 0 < message.usage.output_tokens <= 16
    # exact: the chat template applied, as the engine counted the prompt it ran
    assert claude.messages.count_tokens(**ask).input_tokens == message.usage.input_tokens


def test_streamed_answer(claude: anthropic.Anthropic) -> None:
    with claude.messages.stream(
        model=CHAT_MODEL,
        max_tokens=16,
        messages=[{"role": "user", "content": "Name three colours."}],
        extra_body=GREEDY,
    ) as stream:
        pieces = list(stream.text_stream)
        final = stream.get_final_message()
    assert len(pieces) > 1  # it streamed
    [block] = final.content
    assert block.type == "text" and "".join(pieces) == block.text
    assert final.stop_reason in ("end_turn", "max_tokens")
    assert final.usage.input_tokens > 0 and final.usage.output_tokens > 0


def test_stop_sequence(claude: anthropic.Anthropic) -> None:
    message = claude.messages.create(
        model=CHAT_MODEL,
        max_tokens=16,
        messages=[{"role": "user", "content": "Describe Paris in a sentence."}],
        stop_sequences=["#never#", " "],  # the first space ends it
        extra_body=GREEDY,
    )
    assert (message.stop_reason, message.stop_sequence) == ("stop_sequence", " ")
    text = "".join(b.text for b in message.content if b.type == "text")
    assert " " not in text


def test_forced_tool_and_its_result(claude: anthropic.Anthropic) -> None:
    forced: Any = {"type": "tool", "name": "get_weather"}
    message = claude.messages.create(
        model=CHAT_MODEL,
        max_tokens=48,
        messages=ASK_WEATHER,
        tools=[WEATHER],  # type: ignore[list-item]
        tool_choice=forced,
        extra_body=GREEDY,
    )
    assert message.stop_reason == "tool_use"
    calls = [block for block in message.content if block.type == "tool_use"]
    assert calls and calls[0].name == "get_weather"
    for call in calls:
        jsonschema.validate(call.input, WEATHER["input_schema"])
    counted = claude.messages.count_tokens(
        model=CHAT_MODEL,
        messages=ASK_WEATHER,
        tools=[WEATHER],  # type: ignore[list-item]
        tool_choice=forced,
    )
    assert counted.input_tokens == message.usage.input_tokens  # the tools' prompt included
    results: list[Any] = [
        {"type": "tool_result", "tool_use_id": call.id, "content": "Sunny, 24 degrees."}
        for call in calls
    ]
    history: list[Any] = [
        *ASK_WEATHER,
        {"role": "assistant", "content": message.content},
        {"role": "user", "content": results},
    ]
    ask: dict[str, Any] = {
        "model": CHAT_MODEL,
        "messages": history,
        "tools": [WEATHER],
        "tool_choice": {"type": "none"},
    }
    answer = claude.messages.create(**ask, max_tokens=16, extra_body=GREEDY)
    assert answer.stop_reason in ("end_turn", "max_tokens")
    [block] = answer.content
    assert block.type == "text" and block.text.strip()
    assert claude.messages.count_tokens(**ask).input_tokens == answer.usage.input_tokens
    # the result is in the prompt: a longer one makes a longer prompt
    longer = [{**result, "content": "Sunny, 24 degrees, a light wind."} for result in results]
    more = claude.messages.count_tokens(
        **{**ask, "messages": [*history[:2], {"role": "user", "content": longer}]}
    )
    assert more.input_tokens > answer.usage.input_tokens
