"""Anthropic's Messages API on the fake engine, through the official `anthropic` SDK (over
the in-process ASGI transport) and raw HTTP: shapes, stream events, tool use, errors in
Anthropic's shape, `x-api-key`. End to end on a real model: tests/clients/test_anthropic.py."""

from __future__ import annotations

import json
from collections.abc import AsyncGenerator, AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anthropic
import httpx2
import pytest

from nimble.api import create_app
from nimble.api.schemas.messages import MessagesRequest
from nimble.api.schemas.messages_out import MessageResponse
from nimble.config import Settings
from nimble.errors import EngineError, InvalidRequest
from nimble.runtime import Runtime
from nimble.runtime.assemble import build_runtime
from nimble.types import ChatMessage, GenerateRequest, GenerationChunk, ToolCall
from tests.api.test_auth import ADMIN, write_keys
from tests.conftest import FAKE_MODEL

ASK = [{"role": "user", "content": "hello"}]  # the fake model answers "zulu charlie papa ..."
TIME_TOOL = {
    "name": "get_time",
    "description": "The time in a time zone",
    "input_schema": {
        "type": "object",
        "properties": {"tz": {"type": "string"}},
        "required": ["tz"],
    },
}
Pair = tuple[Runtime, httpx2.AsyncClient]


@asynccontextmanager
async def messages_service(**settings: Any) -> AsyncIterator[Pair]:
    """The fake model behind the app, with an httpx2 client (the transport Anthropic's SDK
    is built on)."""
    config = Settings(model=("fake",), max_running=4, max_waiting=8, **settings)
    runtime, deployment = build_runtime(config)
    app = create_app(config, runtime=runtime, deployment=deployment, load_on_startup=False)
    await runtime.start()
    transport = httpx2.ASGITransport(app=app)
    async with httpx2.AsyncClient(transport=transport, base_url="http://nimble.test") as client:
        yield runtime, client
    await runtime.stop()


def sdk(client: httpx2.AsyncClient, key: str = "unused") -> anthropic.AsyncAnthropic:
    return anthropic.AsyncAnthropic(
        api_key=key, base_url="http://nimble.test", http_client=client, max_retries=0
    )


@pytest.fixture
async def service() -> AsyncIterator[Pair]:
    async with messages_service() as pair:
        yield pair


def body(**overrides: Any) -> dict[str, Any]:
    return {"model": FAKE_MODEL, "max_tokens": 30, "messages": ASK, **overrides}


def anthropic_error(response: httpx2.Response, status: int, param: str | None) -> dict[str, Any]:
    """The answer is Anthropic's error shape (with nimble's param and code kept)."""
    assert response.status_code == status, response.text
    payload = response.json()
    assert set(payload) == {"type", "error", "request_id"}
    assert payload["type"] == "error"
    assert payload["request_id"] == response.headers["x-request-id"]
    error = payload["error"]
    assert set(error) == {"type", "message", "param", "code"}
    assert error["message"]
    assert error["param"] == param, error
    return dict(error)


def events(text: str) -> list[tuple[str, dict[str, Any]]]:
    """(event name, data) of each server-sent event; every event is named."""
    out = []
    for block in text.strip().split("\n\n"):
        name_line, data_line = block.split("\n")
        name = name_line.removeprefix("event: ")
        data = json.loads(data_line.removeprefix("data: "))
        assert data["type"] == name
        out.append((name, data))
    return out


async def test_text_message(service: Pair) -> None:
    _, client = service
    message = await sdk(client).messages.create(
        model=FAKE_MODEL, max_tokens=30, system="Be brief.", messages=ASK
    )
    assert message.type == "message" and message.role == "assistant"
    assert message.id.startswith("msg_")
    assert message.model == FAKE_MODEL
    [block] = message.content
    assert block.type == "text" and block.text
    assert (message.stop_reason, message.stop_sequence) == ("end_turn", None)
    assert message.usage.output_tokens == len(block.text.split())  # a word a token
    assert message._request_id  # the `request-id` header the SDK reads
    raw = await client.post("/v1/messages", json=body(system="Be brief."))
    assert raw.headers["request-id"] == raw.headers["x-request-id"]
    answer = raw.json()
    # every field, in the documented model's order
    assert json.loads(MessageResponse.model_validate(answer).model_dump_json()) == answer
    assert list(answer) == list(MessageResponse.model_fields)
    counted = await sdk(client).messages.count_tokens(
        model=FAKE_MODEL, system="Be brief.", messages=ASK
    )
    assert counted.input_tokens == message.usage.input_tokens == answer["usage"]["input_tokens"]


async def test_stop_reasons(service: Pair) -> None:
    _, client = service
    plain = await sdk(client).messages.create(model=FAKE_MODEL, max_tokens=30, messages=ASK)
    words = plain.content[0].text.split()  # type: ignore[union-attr]
    assert len(words) >= 4
    stopped = await sdk(client).messages.create(
        model=FAKE_MODEL, max_tokens=30, messages=ASK, stop_sequences=["nowhere", words[2]]
    )
    assert (stopped.stop_reason, stopped.stop_sequence) == ("stop_sequence", words[2])
    assert stopped.content[0].text == " ".join(words[:2]) + " "  # type: ignore[union-attr]
    cut = await sdk(client).messages.create(model=FAKE_MODEL, max_tokens=2, messages=ASK)
    assert (cut.stop_reason, cut.usage.output_tokens) == ("max_tokens", 2)


async def test_sampling_fields_and_output_format(service: Pair) -> None:
    _, client = service
    sampled = await client.post("/v1/messages", json=body(temperature=0, top_p=0.5, top_k=5))
    assert sampled.status_code == 200, sampled.text
    schema = {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}
    shaped = await sdk(client).messages.create(
        model=FAKE_MODEL,
        max_tokens=50,
        messages=ASK,
        output_config={"format": {"type": "json_schema", "schema": schema}, "effort": "low"},
        thinking={"type": "disabled"},
        metadata={"user_id": "u-1"},
        extra_body={"cache_control": {"type": "ephemeral"}},
    )
    assert isinstance(json.loads(shaped.content[0].text)["city"], str)  # type: ignore[union-attr]


async def test_stream_events(service: Pair) -> None:
    _, client = service
    raw = await client.post("/v1/messages", json=body(stream=True, stop_sequences=["papa"]))
    assert raw.headers["content-type"].startswith("text/event-stream")
    assert "[DONE]" not in raw.text
    seen = events(raw.text)
    names = [name for name, _ in seen]
    deltas = names.count("content_block_delta")
    assert deltas >= 1
    assert names == [
        "message_start",
        "ping",
        "content_block_start",
        *["content_block_delta"] * deltas,
        "content_block_stop",
        "message_delta",
        "message_stop",
    ]
    start = seen[0][1]["message"]
    assert (start["content"], start["stop_reason"], start["usage"]["output_tokens"]) == (
        [],
        None,
        0,
    )
    text = "".join(data["delta"]["text"] for name, data in seen if name == "content_block_delta")
    end = seen[-2][1]
    assert end["delta"] == {"stop_reason": "stop_sequence", "stop_sequence": "papa"}
    assert end["usage"]["output_tokens"] >= 1
    assert end["usage"]["input_tokens"] == start["usage"]["input_tokens"] > 0
    # the SDK's stream helper: the text as it streams, and the same final message
    async with sdk(client).messages.stream(
        model=FAKE_MODEL, max_tokens=30, messages=ASK, stop_sequences=["papa"]
    ) as stream:
        streamed = "".join([piece async for piece in stream.text_stream])
        final = await stream.get_final_message()
    assert streamed == text == final.content[0].text  # type: ignore[union-attr]
    assert final.stop_reason == "stop_sequence"
    assert final.usage.input_tokens == start["usage"]["input_tokens"]
    whole = await sdk(client).messages.create(
        model=FAKE_MODEL, max_tokens=30, messages=ASK, stop_sequences=["papa"]
    )
    assert whole.content[0].text == text  # type: ignore[union-attr]


async def test_tool_use_round_trip(service: Pair) -> None:
    _, client = service
    forced = {"type": "tool", "name": "get_time"}
    message = await sdk(client).messages.create(
        model=FAKE_MODEL, max_tokens=50, messages=ASK, tools=[TIME_TOOL], tool_choice=forced
    )
    assert message.stop_reason == "tool_use"
    [call] = message.content
    assert call.type == "tool_use" and call.name == "get_time"
    assert isinstance(call.input, dict) and isinstance(call.input["tz"], str)
    counted = await sdk(client).messages.count_tokens(
        model=FAKE_MODEL, messages=ASK, tools=[TIME_TOOL], tool_choice=forced
    )
    assert counted.input_tokens == message.usage.input_tokens  # the tools' prompt included
    # streamed: the call's input as input_json_delta pieces
    raw = await client.post(
        "/v1/messages", json=body(tools=[TIME_TOOL], tool_choice=forced, stream=True)
    )
    seen = events(raw.text)
    [(_, started)] = [e for e in seen if e[0] == "content_block_start"]
    assert started["content_block"]["type"] == "tool_use"
    assert started["content_block"]["input"] == {}
    partial = "".join(
        data["delta"]["partial_json"] for name, data in seen if name == "content_block_delta"
    )
    assert json.loads(partial)["tz"] == call.input["tz"]  # type: ignore[index]
    assert seen[-2][1]["delta"]["stop_reason"] == "tool_use"
    # the result goes back; the model answers in text
    history = [
        *ASK,
        {"role": "assistant", "content": [call.model_dump(exclude_none=True)]},
        {
            "role": "user",
            "content": [
                {"type": "tool_result", "tool_use_id": call.id, "content": "It is noon."},
                {"type": "text", "text": "Thanks!"},
            ],
        },
    ]
    answer = await sdk(client).messages.create(
        model=FAKE_MODEL,
        max_tokens=30,
        messages=history,
        tools=[TIME_TOOL],  # type: ignore[arg-type]
    )
    assert answer.stop_reason == "end_turn"
    assert answer.content[0].type == "text"


def test_conversation_as_chat_turns() -> None:
    request = MessagesRequest.model_validate(
        {
            "model": FAKE_MODEL,
            "max_tokens": 5,
            "system": [{"type": "text", "text": "One."}, {"type": "text", "text": "Two."}],
            "messages": [
                {"role": "user", "content": "Time in Paris?"},
                {
                    "role": "assistant",
                    "content": [
                        {"type": "thinking", "thinking": "a tool", "signature": "s"},
                        {"type": "text", "text": "Checking."},
                        {"type": "tool_use", "id": "t1", "name": "f", "input": {"tz": "CET"}},
                        {"type": "tool_use", "id": "t2", "name": "f", "input": {}},
                    ],
                },
                {
                    "role": "user",
                    "content": [
                        {"type": "tool_result", "tool_use_id": "t1", "content": "noon"},
                        {
                            "type": "tool_result",
                            "tool_use_id": "t2",
                            "content": [{"type": "text", "text": "no zone"}],
                            "is_error": True,
                            "cache_control": {"type": "ephemeral"},
                        },
                        {"type": "text", "text": "And?"},
                    ],
                },
            ],
        }
    )
    assert request.chat_messages() == (
        ChatMessage("system", "One.\n\nTwo."),
        ChatMessage("user", "Time in Paris?"),
        ChatMessage(
            "assistant",
            "Checking.",
            tool_calls=(ToolCall("t1", "f", '{"tz": "CET"}'), ToolCall("t2", "f", "{}")),
        ),
        ChatMessage("tool", "noon", tool_call_id="t1"),
        ChatMessage("tool", "Error: no zone", tool_call_id="t2"),
        ChatMessage("user", "And?"),
    )
    assert request.tool_choice_value(()) == "none"
    with pytest.raises(InvalidRequest, match="prefill"):
        MessagesRequest.model_validate(
            body(messages=[*ASK, {"role": "assistant", "content": "Sure"}])
        ).chat_messages()


@pytest.mark.parametrize(
    ("path", "sent", "status", "param"),
    [
        ("/v1/messages", {"max_tokens": None}, 400, "max_tokens"),
        ("/v1/messages", {"max_tokens": 0}, 400, "max_tokens"),
        ("/v1/messages", {"temperature": 1.5}, 400, "temperature"),
        ("/v1/messages", {"stop_sequences": ["x", ""]}, 400, "stop_sequences"),
        ("/v1/messages", {"model": "nope"}, 404, "model"),
        ("/v1/messages", {"logit_bias": {"1": 2}}, 400, "logit_bias"),
        (
            "/v1/messages",
            {
                "messages": [
                    {
                        "role": "user",
                        "content": [
                            {"type": "text", "text": "What is this?"},
                            {"type": "image", "source": {"type": "url", "url": "http://x"}},
                        ],
                    }
                ]
            },
            400,
            "messages.0.content.1",
        ),
        (
            "/v1/messages",
            {"system": [{"type": "document", "source": {}}]},
            400,
            "system.0",
        ),
        # a type that is not a string (an object cannot be looked up: this was a 500)
        ("/v1/messages", {"system": [{"type": {}, "text": "x"}]}, 400, "system.0"),
        (
            "/v1/messages/count_tokens",
            {"messages": [{"role": "user", "content": [{"type": ["text"], "text": "x"}]}]},
            400,
            "messages.0.content.0",
        ),
        (
            "/v1/messages",
            {"tools": [{"type": "web_search_20250305", "name": "web_search"}]},
            400,
            "tools.0",
        ),
        ("/v1/messages", {"tool_choice": {"type": "any"}}, 400, "tool_choice"),
        (
            "/v1/messages",
            {"tools": [TIME_TOOL], "tool_choice": {"type": "tool", "name": "other"}},
            400,
            "tool_choice.name",
        ),
        ("/v1/messages", {"tools": [TIME_TOOL, TIME_TOOL]}, 400, "tools.1.name"),
        (
            "/v1/messages",
            {"tools": [{**TIME_TOOL, "input_schema": {"type": "object", "required": 3}}]},
            400,
            "tools.0.input_schema",
        ),
        (
            "/v1/messages",
            {
                "messages": [
                    {
                        "role": "user",
                        "content": [{"type": "tool_result", "tool_use_id": "t9", "content": "x"}],
                    }
                ]
            },
            400,
            "messages.0.content.0.tool_use_id",
        ),
        (
            "/v1/messages",
            {
                "messages": [
                    {
                        "role": "user",
                        "content": [{"type": "tool_use", "id": "t", "name": "f", "input": {}}],
                    }
                ]
            },
            400,
            "messages.0.content.0",
        ),
        (
            "/v1/messages",
            {"messages": [*ASK, {"role": "assistant", "content": "{"}]},
            400,
            "messages.1",
        ),
        ("/v1/messages/count_tokens", {}, 400, "max_tokens"),
        ("/v1/messages/count_tokens", {"max_tokens": None, "messages": []}, 400, "messages"),
    ],
)
async def test_bad_requests(
    service: Pair, path: str, sent: dict[str, Any], status: int, param: str
) -> None:
    _, client = service
    sent = {key: value for key, value in body(**sent).items() if value is not None}
    error = anthropic_error(await client.post(path, json=sent), status, param)
    assert error["type"] == ("not_found_error" if status == 404 else "invalid_request_error")


async def test_errors_through_the_sdk(service: Pair) -> None:
    _, client = service
    with pytest.raises(anthropic.BadRequestError) as bad:
        await sdk(client).messages.create(
            model=FAKE_MODEL, max_tokens=5, messages=ASK, extra_body={"temperature": 3.0}
        )
    assert bad.value.type == "invalid_request_error"
    assert "temperature" in str(bad.value.api_message)
    assert bad.value.request_id
    with pytest.raises(anthropic.NotFoundError):
        await sdk(client).messages.count_tokens(model="nope", messages=ASK)
    # too large for the window: nimble's context check, before anything streams
    with pytest.raises(anthropic.BadRequestError) as long:
        await sdk(client).messages.create(model=FAKE_MODEL, max_tokens=20_000, messages=ASK)
    assert long.value.type == "invalid_request_error"
    assert long.value.body["error"]["param"] == "max_tokens"  # type: ignore[index]
    # other routes keep the OpenAI shape
    other = await client.post("/v1/chat/completions", json={"model": FAKE_MODEL})
    assert set(other.json()) == {"error"}
    assert "request-id" not in other.headers


async def test_error_after_the_stream_began(service: Pair, monkeypatch: pytest.MonkeyPatch) -> None:
    runtime, client = service
    engine = runtime.models[FAKE_MODEL].engine

    async def failing(request: GenerateRequest) -> AsyncGenerator[GenerationChunk, None]:
        yield GenerationChunk(text="Hello")
        raise EngineError("the engine fell over")

    monkeypatch.setattr(engine, "generate", failing)
    raw = await client.post("/v1/messages", json=body(stream=True))
    seen = events(raw.text)
    assert [name for name, _ in seen[-3:]] == [
        "content_block_start",
        "content_block_delta",
        "error",
    ]
    error = seen[-1][1]
    assert error["error"]["type"] == "api_error"
    assert "fell over" not in error["error"]["message"]  # a generic message, with the id
    assert error["request_id"] in error["error"]["message"]
    with pytest.raises(anthropic.APIStatusError) as failed:
        async with sdk(client).messages.stream(
            model=FAKE_MODEL, max_tokens=5, messages=ASK
        ) as stream:
            await stream.get_final_message()
    assert failed.value.type == "api_error"


async def test_x_api_key_and_scopes(tmp_path: Path) -> None:
    keys = {
        "nb-chat-only": {"id": "chat", "endpoints": ["chat"]},
        "nb-no-tools": {"id": "notools", "tools": False},
    }
    key_file = write_keys(tmp_path / "keys.yaml", {ADMIN: {"id": "admin"}, **keys})
    async with messages_service(api_keys_file=key_file) as (_, client):
        missing = await client.post("/v1/messages", json=body())
        assert anthropic_error(missing, 401, None)["type"] == "authentication_error"
        with pytest.raises(anthropic.AuthenticationError):
            await sdk(client, "nb-wrong").messages.create(
                model=FAKE_MODEL, max_tokens=5, messages=ASK
            )
        message = await sdk(client, ADMIN).messages.create(
            model=FAKE_MODEL, max_tokens=5, messages=ASK
        )
        assert message.content
        # x-api-key works on every route, the bearer token on this one
        chat = {"model": FAKE_MODEL, "messages": ASK}
        by_header = await client.post(
            "/v1/chat/completions", json=chat, headers={"x-api-key": ADMIN}
        )
        assert by_header.status_code == 200
        bearer = {"Authorization": f"Bearer {ADMIN}"}
        assert (await client.post("/v1/messages", json=body(), headers=bearer)).status_code == 200
        # its own endpoint name: a key for chat only may not use it
        with pytest.raises(anthropic.PermissionDeniedError) as denied:
            await sdk(client, "nb-chat-only").messages.count_tokens(model=FAKE_MODEL, messages=ASK)
        assert denied.value.type == "permission_error"
        assert denied.value.body["error"]["code"] == "endpoint_denied"  # type: ignore[index]
        # tools need the key's tools grant
        no_tools = await client.post(
            "/v1/messages", json=body(tools=[TIME_TOOL]), headers={"x-api-key": "nb-no-tools"}
        )
        assert anthropic_error(no_tools, 403, "tools")["code"] == "tools_denied"
        plain = await client.post("/v1/messages", json=body(), headers={"x-api-key": "nb-no-tools"})
        assert plain.status_code == 200


async def test_endpoint_switch_metrics_and_openapi() -> None:
    async with messages_service(endpoints=("chat", "metrics", "openapi")) as (_, client):
        off = await client.post("/v1/messages", json=body())  # as an unknown path
        assert off.status_code == 404 and set(off.json()) == {"error"}
        paths = (await client.get("/openapi.json")).json()["paths"]
        assert "/v1/messages" not in paths
    async with messages_service() as (_, client):
        assert (await client.post("/v1/messages", json=body())).status_code == 200
        doc = (await client.get("/openapi.json")).json()
        create = doc["paths"]["/v1/messages"]["post"]
        assert create["requestBody"]["content"]["application/json"]["schema"]["$ref"].endswith(
            "/MessagesRequest"
        )
        assert "text/event-stream" in create["responses"]["200"]["content"]
        assert "/v1/messages/count_tokens" in doc["paths"]
        metrics = (await client.get("/metrics")).text
        assert 'endpoint="messages",method="POST",status="200"' in metrics
