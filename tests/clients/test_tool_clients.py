"""Tool calls and structured output through the clients people use, against real SmolLM2.

Whatever the small model says, the protocol must hold: each client reads nimble's streamed
tool-call deltas (one entry per call index per chunk, as OpenAI and vLLM send them), a named
`tool_choice` yields exactly one call and `finish_reason: tool_calls`, and each client gets
arguments valid against the schema it declared.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any, Literal

import httpx
import jsonschema
import openai
import pytest
from pydantic import BaseModel, Field

from tests.clients.conftest import CHAT_MODEL, NimbleProcess

pytestmark = [pytest.mark.e2e, pytest.mark.models]

WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather of a city",
        "parameters": {
            "type": "object",
            "properties": {
                "city": {"type": "string", "maxLength": 40},
                "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
            },
            "required": ["city", "unit"],
        },
    },
}
TIME = {
    "type": "function",
    "function": {
        "name": "get_time",
        "description": "Current time in a timezone",
        "parameters": {
            "type": "object",
            "properties": {"timezone": {"type": "string", "maxLength": 40}},
            "required": ["timezone"],
        },
    },
}
ASK = [{"role": "user", "content": "What is the weather in Paris right now?"}]


class GetWeather(BaseModel):
    """Current weather of a city."""

    city: str = Field(max_length=40)
    unit: Literal["celsius", "fahrenheit"]


class City(BaseModel):
    name: str = Field(max_length=40)
    country: str = Field(max_length=40)


def test_streamed_call_chunks_hold_one_entry_per_index(smollm2: NimbleProcess) -> None:
    """The raw SSE: no chunk carries two entries for the same call index (the defect: the
    first chunk held the name and then, for the same index, the first arguments text)."""
    body = {
        "model": CHAT_MODEL,
        "messages": ASK,
        "tools": [WEATHER, TIME],
        "tool_choice": "required",
        "parallel_tool_calls": False,
        "temperature": 0,
        "max_tokens": 80,
        "stream": True,
    }
    entries: list[dict[str, Any]] = []
    with httpx.stream("POST", smollm2.base_url + "/v1/chat/completions", json=body) as answer:
        for line in answer.iter_lines():
            if not line.startswith("data: {"):
                continue
            for choice in json.loads(line[6:])["choices"]:
                calls = choice["delta"].get("tool_calls") or []
                indexes = [call["index"] for call in calls]
                assert len(indexes) == len(set(indexes)), line
                entries += calls
    assert entries[0]["id"] and entries[0]["function"]["name"] == "get_weather"
    assert entries[0]["function"]["arguments"] == ""  # as OpenAI: the name first, alone
    arguments = "".join(e["function"].get("arguments") or "" for e in entries)
    jsonschema.validate(json.loads(arguments), WEATHER["function"]["parameters"])


@pytest.mark.parametrize("parallel", [None, False])
def test_a_named_choice_is_exactly_one_call(smollm2: NimbleProcess, parallel: bool | None) -> None:
    """OpenAI and vLLM answer a named tool_choice with one call of it: the grammar ends
    there, so the model cannot write the same call again until max_tokens."""
    client = smollm2.client()
    extra = {} if parallel is None else {"parallel_tool_calls": parallel}
    for seed in range(3):
        result = client.chat.completions.create(
            model=CHAT_MODEL,
            messages=ASK,  # type: ignore[arg-type]
            tools=[WEATHER, TIME],  # type: ignore[list-item]
            tool_choice={"type": "function", "function": {"name": "get_time"}},
            temperature=0.7,
            seed=seed,
            max_tokens=200,
            **extra,  # type: ignore[arg-type]
        )
        choice = result.choices[0]
        assert choice.finish_reason == "tool_calls"
        (call,) = choice.message.tool_calls or []
        assert call.function.name == "get_time"  # type: ignore[union-attr]
        arguments = json.loads(call.function.arguments)  # type: ignore[union-attr]
        jsonschema.validate(arguments, TIME["function"]["parameters"])


def test_openai_stream_helper_with_a_strict_pydantic_tool(smollm2: NimbleProcess) -> None:
    """The SDK's `chat.completions.stream` parses a strict tool's arguments as they stream
    (it failed with 'expected value at line 1 column 1' on two entries per index)."""
    client = smollm2.client()
    with client.chat.completions.stream(
        model=CHAT_MODEL,
        messages=ASK,  # type: ignore[arg-type]
        tools=[openai.pydantic_function_tool(GetWeather, name="get_weather")],
        tool_choice={"type": "function", "function": {"name": "get_weather"}},
        temperature=0,
        max_tokens=120,
    ) as stream:
        kinds = [event.type for event in stream]
        final = stream.get_final_completion()
    assert "tool_calls.function.arguments.done" in kinds
    choice = final.choices[0]
    assert choice.finish_reason == "tool_calls"
    (call,) = choice.message.tool_calls or []
    assert isinstance(call.function.parsed_arguments, GetWeather)  # type: ignore[union-attr]


def test_openai_parse_with_a_pydantic_model(smollm2: NimbleProcess) -> None:
    client = smollm2.client()
    result = client.chat.completions.parse(
        model=CHAT_MODEL,
        messages=[{"role": "user", "content": "Name the capital of France and its country."}],
        response_format=City,
        temperature=0,
        max_tokens=80,
    )
    message = result.choices[0].message
    assert isinstance(message.parsed, City) and message.parsed.name


def test_instructor_partial_in_tools_mode(smollm2: NimbleProcess) -> None:
    """instructor's default: a named tool_choice, read as partial objects while it streams
    (it raised IncompleteOutputException when the model wrote the call until max_tokens)."""
    import instructor

    client = instructor.from_openai(smollm2.client(), mode=instructor.Mode.TOOLS)
    partials = list(
        client.chat.completions.create_partial(
            model=CHAT_MODEL,
            response_model=GetWeather,
            messages=ASK,  # type: ignore[arg-type]
            temperature=0,
            max_tokens=120,
            max_retries=0,
        )
    )
    assert len(partials) > 1  # it streamed
    final = partials[-1]
    GetWeather.model_validate(final.model_dump())  # complete: every field, valid
    assert final.city


def test_llamaindex_stream_chat_with_tools(smollm2: NimbleProcess) -> None:
    """LlamaIndex returned the call with empty arguments on two entries per index."""
    from llama_index.core.tools import FunctionTool
    from llama_index.llms.openai_like import OpenAILike

    def get_weather(city: str, unit: str) -> str:
        """Current weather of a city; unit is celsius or fahrenheit."""
        return f"21 degrees {unit} in {city}"

    llm = OpenAILike(
        model=CHAT_MODEL,
        api_base=smollm2.base_url + "/v1",
        api_key="unused",
        is_chat_model=True,
        is_function_calling_model=True,
        temperature=0,
        max_tokens=120,
        max_retries=0,
    )
    tool = FunctionTool.from_defaults(fn=get_weather)
    responses = list(
        llm.stream_chat_with_tools(
            [tool], user_msg="What is the weather in Paris?", tool_required=True
        )
    )
    assert len(responses) > 1  # it streamed
    last = responses[-1]
    (call,) = llm.get_tool_calls_from_response(last, error_on_no_tool_call=True)
    assert call.tool_name == "get_weather"
    assert set(call.tool_kwargs) == {"city", "unit"} and call.tool_kwargs["city"]


def test_openai_agents_runs_an_agent_with_one_function_tool(smollm2: NimbleProcess) -> None:
    """The openai-agents SDK on the Responses API: the model must call the tool (the first
    turn names it), the SDK runs it and sends its output back, and the run completes (it
    ended with response.incomplete when a forced call repeated until max_output_tokens)."""
    from agents import (
        Agent,
        ModelSettings,
        OpenAIResponsesModel,
        Runner,
        function_tool,
        set_tracing_disabled,
    )

    set_tracing_disabled(True)  # the SDK would export traces to OpenAI otherwise
    seen: list[tuple[str, str]] = []

    @function_tool
    def get_weather(city: str, unit: Literal["celsius", "fahrenheit"]) -> str:
        """Current weather of a city."""
        seen.append((city, unit))
        return f"21 degrees {unit} and clear in {city}"

    client = openai.AsyncOpenAI(base_url=smollm2.base_url + "/v1", api_key="unused", max_retries=0)
    agent = Agent(
        name="weather",
        instructions="Answer questions about the weather with the get_weather tool.",
        tools=[get_weather],
        model=OpenAIResponsesModel(model=CHAT_MODEL, openai_client=client),
        model_settings=ModelSettings(tool_choice="get_weather", temperature=0, max_tokens=120),
        tool_use_behavior="stop_on_first_tool",
    )

    async def run() -> Any:
        try:
            return await Runner.run(agent, "What is the weather in Paris?", max_turns=2)
        finally:
            await client.close()

    result = asyncio.run(run())
    assert len(seen) == 1 and seen[0][1] in {"celsius", "fahrenheit"}
    assert result.final_output == f"21 degrees {seen[0][1]} and clear in {seen[0][0]}"
