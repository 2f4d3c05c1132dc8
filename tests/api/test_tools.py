"""Tool calling and structured output through the API, on the fake engine (it writes the
simplest output a constraint allows: a call of the named or first function, the smallest
valid JSON instance, the first choice)."""

from __future__ import annotations

import json
from typing import Any

import httpx
import jsonschema
import openai
import pytest

from tests.conftest import FAKE_MODEL, chat_body

WEATHER_PARAMS = {
    "type": "object",
    "properties": {
        "city": {"type": "string", "minLength": 3},
        "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
        "days": {"type": "integer", "minimum": 1},
    },
    "required": ["city", "unit", "days"],
}
TOOLS: list[Any] = [
    {"type": "function", "function": {"name": "get_weather", "parameters": WEATHER_PARAMS}},
    {"type": "function", "function": {"name": "get_time", "description": "Time now"}},
]
ASK = [{"role": "user", "content": "What is the weather?"}]


async def test_required_gives_a_valid_call(oai: openai.AsyncOpenAI) -> None:
    result = await oai.chat.completions.create(
        model=FAKE_MODEL, messages=ASK, tools=TOOLS, tool_choice="required"
    )
    choice = result.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.content is None
    (call,) = choice.message.tool_calls or []
    assert call.type == "function" and call.id.startswith("call_")
    assert call.function.name == "get_weather"
    arguments = json.loads(call.function.arguments)
    jsonschema.validate(arguments, WEATHER_PARAMS)
    assert arguments == {"city": "xxx", "unit": "celsius", "days": 1}


async def test_named_function_streams_with_stable_id_and_index(oai: openai.AsyncOpenAI) -> None:
    stream = await oai.chat.completions.create(
        model=FAKE_MODEL,
        messages=ASK,
        tools=TOOLS,
        tool_choice={"type": "function", "function": {"name": "get_time"}},
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = [chunk async for chunk in stream]
    deltas = [d for c in chunks if c.choices for d in c.choices[0].delta.tool_calls or ()]
    assert deltas[0].id and deltas[0].function and deltas[0].function.name == "get_time"
    assert deltas[0].type == "function" and deltas[0].index == 0
    assert all(d.id is None and d.index == 0 for d in deltas[1:])
    assert "".join(d.function.arguments or "" for d in deltas if d.function) == "{}"
    assert not any(c.choices[0].delta.content for c in chunks if c.choices)
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices]
    assert finishes[-1] == "tool_calls" and chunks[-1].usage is not None


async def test_auto_calls_only_when_the_model_chooses(oai: openai.AsyncOpenAI) -> None:
    plain = await oai.chat.completions.create(model=FAKE_MODEL, messages=ASK, tools=TOOLS)
    assert plain.choices[0].finish_reason == "stop"
    assert plain.choices[0].message.tool_calls is None and plain.choices[0].message.content
    chosen = await oai.chat.completions.create(
        model=FAKE_MODEL,
        messages=[{"role": "user", "content": "please run get_time"}],
        tools=TOOLS,
    )
    assert chosen.choices[0].finish_reason == "tool_calls"
    assert [c.function.name for c in chosen.choices[0].message.tool_calls or []] == ["get_time"]


async def test_tool_round_trip_and_none(oai: openai.AsyncOpenAI) -> None:
    first = await oai.chat.completions.create(
        model=FAKE_MODEL, messages=ASK, tools=TOOLS, tool_choice="required"
    )
    call = (first.choices[0].message.tool_calls or [])[0]
    messages: list[Any] = [
        *ASK,
        first.choices[0].message.model_dump(exclude_none=True),
        {"role": "tool", "tool_call_id": call.id, "content": "21 C"},
    ]
    second = await oai.chat.completions.create(
        model=FAKE_MODEL, messages=messages, tools=TOOLS, tool_choice="none"
    )
    assert second.choices[0].message.tool_calls is None
    assert second.choices[0].message.content
    assert second.choices[0].finish_reason == "stop"
    # the call and its result reached the prompt, written out (the fake's template shows no
    # tools): more prompt than the question alone
    alone = await oai.chat.completions.create(
        model=FAKE_MODEL, messages=ASK, tools=TOOLS, tool_choice="none"
    )
    assert second.usage is not None and alone.usage is not None
    assert second.usage.prompt_tokens > alone.usage.prompt_tokens + 6


@pytest.mark.parametrize(
    ("change", "param", "words"),
    [
        (
            {"tool_choice": {"type": "function", "function": {"name": "nope"}}},
            "tool_choice",
            "not among",
        ),
        ({"tools": None, "tool_choice": "required"}, "tool_choice", "needs tools"),
        (
            {"tools": [{"type": "function", "function": {"name": "f", "parameters": {"not": {}}}}]},
            "tools[0].function.parameters",
            "'not'",
        ),
        ({"tools": [TOOLS[0], TOOLS[0]]}, "tools[1].function.name", "declared twice"),
        ({"tools": [{"type": "retrieval"}]}, "tools.0.type", ""),
        (
            {"tools": [{"type": "function", "function": {"name": "bad name"}}]},
            "tools.0.function.name",
            "",
        ),
        (
            {"tool_choice": "required", "response_format": {"type": "json_object"}},
            "tool_choice",
            "cannot be combined",
        ),
        ({"messages": [{"role": "tool", "content": "x"}]}, "messages.0", "tool_call_id"),
    ],
)
async def test_bad_tool_requests_are_400(
    client: httpx.AsyncClient, change: dict[str, Any], param: str, words: str
) -> None:
    body = chat_body(tools=TOOLS, **{k: v for k, v in change.items() if k != "tools"})
    if "tools" in change:
        body["tools"] = change["tools"]
        if change["tools"] is None:
            del body["tools"]
    answer = await client.post("/v1/chat/completions", json=body)
    assert answer.status_code == 400, answer.text
    error = answer.json()["error"]
    assert error["param"] == param and words in error["message"]


async def test_json_schema_and_guided_fields(
    oai: openai.AsyncOpenAI, client: httpx.AsyncClient
) -> None:
    schema = {
        "type": "object",
        "properties": {"tags": {"type": "array", "items": {"type": "string"}, "minItems": 2}},
        "required": ["tags"],
    }
    result = await oai.chat.completions.create(
        model=FAKE_MODEL,
        messages=ASK,
        response_format={"type": "json_schema", "json_schema": {"name": "t", "schema": schema}},
    )
    assert json.loads(result.choices[0].message.content or "") == {"tags": ["x", "x"]}
    for where in ({}, {"nvext": {}}):
        key = "nvext" if where else None
        fields = {"guided_choice": ["yes", "no"]}
        body = chat_body(**({key: fields} if key else fields))
        answer = await client.post("/v1/chat/completions", json=body)
        assert answer.json()["choices"][0]["message"]["content"] == "yes"
    completion = await oai.completions.create(
        model=FAKE_MODEL, prompt="Data:", extra_body={"guided_json": {"type": "object"}}
    )
    assert completion.choices[0].text == "{}"


@pytest.mark.parametrize(
    ("fields", "param", "words"),
    [
        ({"guided_choice": ["a"], "nvext": {"guided_json": {}}}, "nvext.guided_json", "only one"),
        ({"guided_json": "{not json"}, "guided_json", "not valid JSON"),
        ({"guided_regex": "(?=a)b"}, "guided_regex", "look"),
        (
            {
                "response_format": {
                    "type": "json_schema",
                    "json_schema": {"name": "x", "schema": {"type": "array", "uniqueItems": True}},
                }
            },
            "response_format.json_schema.schema",
            "uniqueItems",
        ),
        ({"response_format": {"type": "json_schema"}}, "response_format.json_schema", "required"),
        ({"guided_choice": []}, "guided_choice", ""),
    ],
)
async def test_bad_structured_output_is_400(
    client: httpx.AsyncClient, fields: dict[str, Any], param: str, words: str
) -> None:
    answer = await client.post("/v1/chat/completions", json=chat_body(**fields))
    assert answer.status_code == 400, answer.text
    error = answer.json()["error"]
    assert error["param"] == param and words in error["message"]


async def test_the_sdk_stream_helper_assembles_the_calls(oai: openai.AsyncOpenAI) -> None:
    """The SDK's own accumulator (chat.completions.stream) reads nimble's deltas (the 2.x
    SDK auto-parses strict tools only)."""
    strict = [{**tool, "function": {**tool["function"], "strict": True}} for tool in TOOLS]
    async with oai.chat.completions.stream(
        model=FAKE_MODEL, messages=ASK, tools=strict, tool_choice="required"
    ) as stream:
        kinds = [event.type async for event in stream]
        final = await stream.get_final_completion()
    assert "tool_calls.function.arguments.delta" in kinds
    assert "tool_calls.function.arguments.done" in kinds
    (call,) = final.choices[0].message.tool_calls or []
    assert call.function.name == "get_weather"
    assert json.loads(call.function.arguments) == {"city": "xxx", "unit": "celsius", "days": 1}
    assert final.choices[0].finish_reason == "tool_calls"
