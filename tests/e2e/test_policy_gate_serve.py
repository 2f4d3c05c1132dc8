"""The policy gate on a real `nimble serve` with SmolLM2 (llama.cpp), through the official
SDK: a key that may declare get_weather and get_time but only have the model call
get_weather; a forced get_time call is written by the model and dropped from the answer,
streaming and not; the audit log, the metric and the deployment record say so."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
import yaml

from nimble.security.keys import hash_key
from tests.e2e.conftest import CHAT_MODEL, NimbleProcess

pytestmark = [pytest.mark.e2e, pytest.mark.models]

AGENT = "nb-weather-agent-0123456789abcdef0123456789abcdef"
PURPOSE = "weather-desk-agent"


def function(name: str, properties: dict[str, Any]) -> dict[str, Any]:
    schema = {"type": "object", "properties": properties, "required": list(properties)}
    return {"type": "function", "function": {"name": name, "parameters": schema}}


WEATHER = function("get_weather", {"city": {"type": "string", "maxLength": 20}})
TIME = function("get_time", {"timezone": {"type": "string", "maxLength": 20}})
ASK = [{"role": "user", "content": "What is the weather and the time in Paris?"}]


def forced(name: str) -> dict[str, Any]:
    return {"type": "function", "function": {"name": name}}


def test_a_real_models_call_outside_the_scope_is_dropped(
    nimble_process: type[NimbleProcess], tmp_path: Path
) -> None:
    keys = tmp_path / "keys.yaml"
    entry = {
        "id": "weather-agent",
        "sha256": hash_key(AGENT),
        "purpose": PURPOSE,
        "tools": {"declare": ["get_weather", "get_time"], "call": ["get_weather"]},
    }
    keys.write_text(yaml.safe_dump({"keys": [entry]}))
    audit = tmp_path / "audit.jsonl"
    args = ["--model", CHAT_MODEL, "--api-keys-file", str(keys), "--audit-log", str(audit)]
    server = nimble_process(args).wait_ready()
    client = openai.OpenAI(api_key=AGENT, base_url=server.base_url + "/v1", max_retries=0)
    asked: dict[str, Any] = {"model": CHAT_MODEL, "messages": ASK, "temperature": 0.0}
    asked["max_tokens"] = 120

    with pytest.raises(openai.PermissionDeniedError) as denied:
        client.chat.completions.create(**asked, tools=[WEATHER, function("delete_files", {})])
    assert isinstance(denied.value.body, dict) and denied.value.body["code"] == "tool_denied"

    kept = client.chat.completions.create(
        **asked, tools=[WEATHER, TIME], tool_choice=forced("get_weather")
    )
    assert kept.choices[0].finish_reason == "tool_calls"
    (call,) = kept.choices[0].message.tool_calls or []
    assert call.function.name == "get_weather" and "city" in json.loads(call.function.arguments)

    dropped = client.chat.completions.create(
        **asked, tools=[WEATHER, TIME], tool_choice=forced("get_time")
    )
    assert dropped.choices[0].finish_reason == "stop"
    assert dropped.choices[0].message.tool_calls is None
    assert dropped.usage is not None and dropped.usage.completion_tokens > 5  # it was written

    stream = client.chat.completions.create(
        **asked, tools=[WEATHER, TIME], tool_choice=forced("get_time"), stream=True
    )
    chunks = list(stream)
    assert not any(c.choices[0].delta.tool_calls for c in chunks if c.choices)
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"

    headers = {"Authorization": f"Bearer {AGENT}"}
    scrape = httpx.get(server.base_url + "/metrics", headers=headers).text
    record = httpx.get(server.base_url + "/v1/manifest", headers=headers).json()
    (key,) = record["auth"]["keys"]
    assert key["purpose"] == PURPOSE and key["tools"]["call"] == ["get_weather"]
    counted = re.findall(r"^nimble_tool_calls_dropped_total\{(.*)\} (\S+)$", scrape, re.M)
    assert counted == [(f'key="{key["ref"]}",model_name="{CHAT_MODEL}"', "2.0")]
    assert "weather-agent" not in json.dumps(record) and AGENT not in json.dumps(record)

    assert server.terminate() == 0
    lines = [json.loads(line) for line in audit.read_bytes().splitlines()]
    chats = [line for line in lines if line["path"] == "/v1/chat/completions"]
    assert [line["status"] for line in chats] == [403, 200, 200, 200]
    assert [line.get("dropped_tool_calls") for line in chats] == [
        None,
        None,
        ["get_time"],
        ["get_time"],
    ]
    assert all(line["key_purpose"] == PURPOSE for line in chats)
