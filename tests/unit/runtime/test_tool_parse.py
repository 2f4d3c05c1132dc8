"""Tool-call markup of each family, read as it streams in pieces of every size."""

from __future__ import annotations

import json

import pytest

from nimble.runtime.tools import FORMATS, tool_format
from nimble.runtime.tools.parse import CallParser
from nimble.runtime.tools.prompting import prepare
from nimble.types import ChatMessage, GenerateRequest, SamplingParams, ToolCall, ToolFunction

HERMES_TWO = (
    'Let me check.\n<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris", '
    '"unit": "c"}}\n</tool_call>\n<tool_call>\n{"name": "f", "arguments": '
    '{"a": [1, {"b": "}\\" <tool_call>"}]}}\n</tool_call>'
)
TWO_CALLS = [
    ("get_weather", {"city": "Paris", "unit": "c"}),
    ("f", {"a": [1, {"b": '}" <tool_call>'}]}),
]


def run(fmt: str, text: str, step: int) -> tuple[str, list[dict[str, str]]]:
    parser = CallParser(FORMATS[fmt])
    content = ""
    calls: list[dict[str, str]] = []
    pieces = [text[i : i + step] for i in range(0, len(text), step)]
    outs = [parser.feed(piece) for piece in pieces] + [parser.finish()]
    for out in outs:
        content += out.content
        for delta in out.calls:
            if delta.id is not None:
                assert delta.index == len(calls), "indexes are dense and in order"
                assert delta.arguments == ""
                calls.append({"id": delta.id, "name": delta.name or "", "arguments": ""})
            else:
                assert delta.name is None
                calls[delta.index]["arguments"] += delta.arguments
    return content, calls


def named(calls: list[dict[str, str]]) -> list[tuple[str, object]]:
    return [(c["name"], json.loads(c["arguments"])) for c in calls]


@pytest.mark.parametrize("step", [1, 2, 3, 7, 1000])
def test_hermes_content_then_two_calls(step: int) -> None:
    content, calls = run("hermes", HERMES_TWO, step)
    assert content == "Let me check.\n"
    assert named(calls) == TWO_CALLS
    assert calls[0]["id"].startswith("call_") and calls[0]["id"] != calls[1]["id"]


@pytest.mark.parametrize("step", [1, 4])
def test_hermes_arguments_stream_before_the_call_ends(step: int) -> None:
    parser = CallParser(FORMATS["hermes"])
    text = '<tool_call>\n{"name": "f", "arguments": {"city": "Par'
    deltas = [d for i in range(0, len(text), step) for d in parser.feed(text[i : i + step]).calls]
    assert deltas[0].name == "f"
    assert "".join(d.arguments for d in deltas) == '{"city": "Par'


@pytest.mark.parametrize("text", ["Just text, < and > and {json}.", "<tool_", "a <tool_cal"])
def test_plain_text_is_all_content(text: str) -> None:
    for step in (1, 3):
        assert run("hermes", text, step) == (text, [])


@pytest.mark.parametrize("step", [1, 5])
def test_llama3_json(step: int) -> None:
    text = (
        '<|python_tag|>{"name": "get_weather", "parameters": {"city": "Paris", "unit": "c"}}; '
        '{"name": "f", "parameters": {"a": [1, {"b": "}\\" <tool_call>"}]}}'
    )
    content, calls = run("llama3_json", text, step)
    assert content == "" and named(calls) == TWO_CALLS
    assert run("llama3_json", "  Hello {there}", step) == ("  Hello {there}", [])


@pytest.mark.parametrize("step", [1, 6])
def test_mistral(step: int) -> None:
    text = (
        '[TOOL_CALLS][{"name": "get_weather", "arguments": {"city": "Paris", "unit": "c"}}, '
        '{"name": "f", "arguments": {"a": [1, {"b": "}\\" <tool_call>"}]}}]'
    )
    content, calls = run("mistral", text, step)
    assert content == "" and named(calls) == TWO_CALLS


@pytest.mark.parametrize("step", [1, 4])
def test_pythonic(step: int) -> None:
    text = '[get_weather(city="Paris", unit="c"), f(a=[1, {"b": "}\\" <tool_call>"}])]'
    content, calls = run("pythonic", text, step)
    assert content == "" and named(calls) == TWO_CALLS
    assert run("pythonic", "Paris is nice", step) == ("Paris is nice", [])


def test_a_call_that_does_not_parse_is_dropped_not_shown() -> None:
    text = '<tool_call>\n{"arguments": {"x": }, "name": "f"}\n</tool_call>'
    assert run("hermes", text, 3) == ("", [])


def test_unknown_parser_is_a_config_error() -> None:
    with pytest.raises(Exception, match="unknown tool_parser 'nope'; known: hermes"):
        tool_format("nope")


WEATHER = ToolFunction(
    "get_weather",
    "Weather of a city",
    {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
)


def test_prepare_writes_tools_and_history_for_templates_that_cannot() -> None:
    messages = (
        ChatMessage("system", "Be brief."),
        ChatMessage("user", "Weather in Paris?"),
        ChatMessage(
            "assistant", "", tool_calls=(ToolCall("c1", "get_weather", '{"city": "Paris"}'),)
        ),
        ChatMessage("tool", "18 C", tool_call_id="c1"),
    )
    request = GenerateRequest("r", SamplingParams(), messages=messages, tools=(WEATHER,))
    prepared = prepare(request, FORMATS["hermes"], renders_tools=False)
    assert prepared.tools == ()
    system, user, assistant, result = prepared.messages or ()
    assert system.content.startswith("Be brief.\n\n") and '"name": "get_weather"' in system.content
    assert user == messages[1]
    assert assistant.content == (
        '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>'
    )
    assert (result.role, result.content) == ("user", "<tool_response>\n18 C\n</tool_response>")
    lazy = prepared.constraint
    assert lazy is not None and lazy.lazy and lazy.begin == "<tool_call>\n"


def test_prepare_keeps_tools_for_templates_that_render_them() -> None:
    request = GenerateRequest(
        "r",
        SamplingParams(),
        messages=(ChatMessage("user", "hi"),),
        tools=(WEATHER,),
        tool_choice="get_weather",
        parallel_tool_calls=False,
    )
    prepared = prepare(request, FORMATS["hermes"], renders_tools=True)
    assert prepared.tools == (WEATHER,) and prepared.messages == request.messages
    forced = prepared.constraint
    assert forced is not None and not forced.lazy and forced.max_calls == 1
    assert forced.call_schema["properties"]["name"] == {"const": "get_weather"}


def test_pythonic_cannot_force_a_call() -> None:
    request = GenerateRequest(
        "r",
        SamplingParams(),
        messages=(ChatMessage("user", "hi"),),
        tools=(WEATHER,),
        tool_choice="required",
    )
    with pytest.raises(Exception, match="pythonic tool-call format"):
        prepare(request, FORMATS["pythonic"], renders_tools=False)
