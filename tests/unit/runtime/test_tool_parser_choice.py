"""Which tool format a model gets: its manifest, its profile, then the setting; the runtime
writes and reads calls in that format (on the fake engine, which writes what the grammar
allows)."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import AsyncGenerator
from pathlib import Path

import pytest

from nimble.engines import EngineConfig
from nimble.errors import ConfigError
from nimble.models import resolve_model
from nimble.models.catalog import builtin_catalog
from nimble.runtime import Runtime, RuntimeConfig
from nimble.runtime.aggregate import collect
from nimble.types import (
    ChatMessage,
    GenerateRequest,
    GenerationChunk,
    SamplingParams,
    ToolCallConstraint,
    ToolFunction,
)

WEATHER = ToolFunction(
    "get_weather",
    parameters={"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
)


async def calls_with(parser_option: str | None, setting: str | None) -> str:
    """The opening marker the engine was asked to write, the call read back, the text."""
    spec = resolve_model("fake")
    if parser_option is not None:
        spec = dataclasses.replace(spec, options={"tool_parser": parser_option})
    runtime = Runtime([spec], RuntimeConfig(EngineConfig(), tool_parser=setting))
    await runtime.start()
    engine = runtime.models[spec.id].engine
    asked: list[GenerateRequest] = []
    generate = engine.generate

    def spy(request: GenerateRequest) -> AsyncGenerator[GenerationChunk, None]:
        asked.append(request)
        return generate(request)

    engine.generate = spy  # type: ignore[method-assign]
    try:
        request = GenerateRequest(
            "r",
            SamplingParams(),
            messages=(ChatMessage("user", "weather?"),),
            tools=(WEATHER,),
            tool_choice="required",
        )
        done = await collect(runtime.generate(spec.id, request), 1)
    finally:
        await runtime.stop()
    (call,) = done.choices[0].tool_calls
    assert (call.name, json.loads(call.arguments), done.choices[0].text) == (
        "get_weather",
        {"city": "x"},
        "",  # no markup left as text
    )
    constraint = asked[0].constraint
    assert isinstance(constraint, ToolCallConstraint)
    return constraint.begin


@pytest.mark.parametrize(
    ("option", "setting", "begin"),
    [
        (None, None, "<tool_call>\n"),  # hermes, the default
        ("mistral", None, "[TOOL_CALLS]"),  # the model's (profile's) own
        ("llama3_json", None, ""),
        ("mistral", "hermes", "<tool_call>\n"),  # the setting wins
        (None, "mistral", "[TOOL_CALLS]"),
    ],
)
async def test_the_chosen_format_is_written_and_read(
    option: str | None, setting: str | None, begin: str
) -> None:
    assert await calls_with(option, setting) == begin


async def test_an_unknown_parser_stops_the_runtime_from_being_built() -> None:
    with pytest.raises(ConfigError, match="unknown tool_parser 'nope'"):
        Runtime([resolve_model("fake")], RuntimeConfig(EngineConfig(), tool_parser="nope"))


def test_catalog_chat_models_name_known_parsers() -> None:
    from nimble.runtime.tools import FORMATS

    named = {m.id: m.tool_parser for m in builtin_catalog().values() if "chat" in m.tasks}
    assert named["smollm2-135m-instruct"] == "hermes"
    assert named["llama-3.1-8b-instruct"] == "llama3_json"
    assert named["mistral-7b-instruct-v0.3"] == "mistral"
    assert all(parser in FORMATS for parser in named.values() if parser)


def test_the_resolved_spec_carries_the_manifest_parser(tmp_path: Path) -> None:
    from nimble.models.cache import ModelCache

    spec = resolve_model("smollm2-135m-instruct", cache=ModelCache(tmp_path))
    assert spec.options["tool_parser"] == "hermes"
