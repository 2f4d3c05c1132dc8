"""The Responses API (`/v1/responses`) through the official SDK and raw HTTP, on the fake
engine: text and message input, streaming events, store and retrieve, conversations
through `previous_response_id`, function calls, structured output, and every refusal."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncGenerator
from pathlib import Path
from typing import Any

import httpx
import openai
import pydantic
import pytest

from nimble.api import create_app
from nimble.api.endpoints import endpoint_of
from nimble.config import Settings
from nimble.errors import InvalidRequest
from nimble.runtime import Runtime
from nimble.runtime.assemble import build_runtime
from nimble.runtime.response_store import ResponseNotFound, ResponseStore, StoredResponse
from nimble.types import ChatMessage, GenerateRequest, GenerationChunk
from tests.api.test_auth import bearer, keyed_service, sdk
from tests.conftest import FAKE_MODEL, assert_openai_error, fake_service

WEATHER = {
    "type": "function",
    "name": "get_weather",
    "description": "The weather in a city",
    "parameters": {
        "type": "object",
        "properties": {"city": {"type": "string"}},
        "required": ["city"],
        "additionalProperties": False,
    },
    "strict": True,
}
PERSON_SCHEMA = {
    "type": "object",
    "properties": {"name": {"type": "string"}, "age": {"type": "integer"}},
    "required": ["name", "age"],
    "additionalProperties": False,
}
TEXT_EVENTS_HEAD = [
    "response.created",
    "response.in_progress",
    "response.output_item.added",
    "response.content_part.added",
]
TEXT_EVENTS_TAIL = [
    "response.output_text.done",
    "response.content_part.done",
    "response.output_item.done",
]


def body(**fields: Any) -> dict[str, Any]:
    return {"model": FAKE_MODEL, "input": "Say something", **fields}


async def chat_answer(oai: openai.AsyncOpenAI, messages: list[dict[str, Any]]) -> tuple[str, int]:
    """The fake's answer and prompt size for the same conversation through chat completions:
    the fake engine is deterministic in the prompt, so equal answers mean equal prompts."""
    result = await oai.chat.completions.create(model=FAKE_MODEL, messages=messages)
    return result.choices[0].message.content or "", result.usage.prompt_tokens


# ----- text -----
async def test_text_input(oai: openai.AsyncOpenAI) -> None:
    response = await oai.responses.create(model=FAKE_MODEL, input="hello there")
    assert response.id.startswith("resp_")
    assert (response.object, response.status, response.model) == (
        "response",
        "completed",
        FAKE_MODEL,
    )
    assert response.incomplete_details is None and response.error is None
    (message,) = response.output
    assert message.type == "message" and message.role == "assistant"
    assert message.id.startswith("msg_") and message.status == "completed"
    assert [part.type for part in message.content] == ["output_text"]
    text, prompt_tokens = await chat_answer(oai, [{"role": "user", "content": "hello there"}])
    assert response.output_text == text and len(text.split()) >= 8
    usage = response.usage
    assert usage is not None
    assert (usage.input_tokens, usage.output_tokens) == (prompt_tokens, len(text.split()))
    assert usage.total_tokens == usage.input_tokens + usage.output_tokens
    assert usage.input_tokens_details.cached_tokens == 0
    assert usage.output_tokens_details.reasoning_tokens == 0
    assert (response.tool_choice, response.tools, response.parallel_tool_calls) == (
        "auto",
        [],
        True,
    )
    assert response.text is not None and response.text.format is not None
    assert response.text.format.type == "text"
    assert response.previous_response_id is None and response.instructions is None


async def test_message_list_with_instructions(oai: openai.AsyncOpenAI) -> None:
    response = await oai.responses.create(
        model=FAKE_MODEL,
        instructions="Answer in one word",
        input=[
            {"role": "user", "content": "hi"},
            {
                "type": "message",
                "role": "assistant",
                "content": [{"type": "output_text", "text": "hello friend"}],
            },
            {"role": "developer", "content": "be kind"},
            {
                "type": "message",
                "role": "user",
                "content": [{"type": "input_text", "text": "again"}],
            },
        ],
        temperature=0.5,
        top_p=0.9,
        metadata={"case": "list"},
        user="u-1",
    )
    text, prompt_tokens = await chat_answer(
        oai,
        [
            {"role": "system", "content": "Answer in one word"},
            {"role": "user", "content": "hi"},
            {"role": "assistant", "content": "hello friend"},
            {"role": "developer", "content": "be kind"},
            {"role": "user", "content": "again"},
        ],
    )
    assert response.output_text == text
    assert response.usage is not None and response.usage.input_tokens == prompt_tokens
    assert response.instructions == "Answer in one word"
    assert (response.temperature, response.top_p) == (0.5, 0.9)
    assert (response.metadata, response.user) == ({"case": "list"}, "u-1")


async def test_max_output_tokens_makes_it_incomplete(oai: openai.AsyncOpenAI) -> None:
    response = await oai.responses.create(model=FAKE_MODEL, input="hello", max_output_tokens=3)
    assert response.status == "incomplete"
    assert response.incomplete_details is not None
    assert response.incomplete_details.reason == "max_output_tokens"
    assert response.output[0].status == "incomplete"
    assert len(response.output_text.split()) == 3 and response.max_output_tokens == 3
    assert response.usage is not None and response.usage.output_tokens == 3


# ----- streaming -----
async def test_streaming_events_in_order(oai: openai.AsyncOpenAI) -> None:
    stream = await oai.responses.create(model=FAKE_MODEL, input="hello there", stream=True)
    events = [event async for event in stream]
    kinds = [event.type for event in events]
    deltas = [e.delta for e in events if e.type == "response.output_text.delta"]
    assert len(deltas) >= 8
    assert kinds == [
        *TEXT_EVENTS_HEAD,
        *["response.output_text.delta"] * len(deltas),
        *TEXT_EVENTS_TAIL,
        "response.completed",
    ]
    assert [event.sequence_number for event in events] == list(range(len(events)))
    created, final = events[0], events[-1]
    assert created.type == "response.created" and final.type == "response.completed"
    assert created.response.status == "in_progress" and created.response.output == []
    assert final.response.id == created.response.id and final.response.status == "completed"
    text = "".join(deltas)
    done = events[-4]
    assert done.type == "response.output_text.done" and done.text == text
    assert final.response.output_text == text
    assert text == (await oai.responses.create(model=FAKE_MODEL, input="hello there")).output_text
    item_ids = {getattr(e, "item_id", None) for e in events} - {None}
    assert item_ids == {final.response.output[0].id}


async def test_stream_helper_final_text_is_the_deltas(oai: openai.AsyncOpenAI) -> None:
    async with oai.responses.stream(model=FAKE_MODEL, input="tell me") as stream:
        deltas = [e.delta async for e in stream if e.type == "response.output_text.delta"]
        final = await stream.get_final_response()
    assert deltas and final.output_text == "".join(deltas)
    assert final.status == "completed"


async def test_raw_stream_has_named_events_and_no_done(client: httpx.AsyncClient) -> None:
    response = await client.post("/v1/responses", json=body(stream=True, max_output_tokens=2))
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/event-stream")
    blocks = [block for block in response.text.split("\n\n") if block]
    assert "[DONE]" not in response.text
    kinds = []
    for block in blocks:
        event_line, data_line = block.split("\n")
        data = json.loads(data_line.removeprefix("data: "))
        assert event_line == f"event: {data['type']}"
        kinds.append(data["type"])
    assert kinds == [
        *TEXT_EVENTS_HEAD,
        "response.output_text.delta",
        "response.output_text.delta",
        *TEXT_EVENTS_TAIL,
        "response.incomplete",
    ]
    final = json.loads(blocks[-1].split("\n")[1].removeprefix("data: "))["response"]
    assert final["incomplete_details"] == {"reason": "max_output_tokens"}
    assert final["output"][0]["status"] == "incomplete"


async def test_streaming_refusal_is_a_plain_http_error(client: httpx.AsyncClient) -> None:
    response = await client.post("/v1/responses", json=body(model="nope", stream=True))
    assert_openai_error(response, 404, "model")


async def test_stream_disconnect_aborts_and_stores_nothing() -> None:
    """Driven as raw ASGI: httpx's ASGI transport cannot hang up in the middle of a body."""
    settings = Settings(model=("fake",), fake_token_delay=0.05)
    runtime, deployment = build_runtime(settings)
    app = create_app(settings, runtime=runtime, deployment=deployment, load_on_startup=False)
    await runtime.start()
    hung_up = asyncio.Event()
    incoming = [{"type": "http.request", "body": json.dumps(body(stream=True)).encode()}]

    async def receive() -> dict[str, Any]:
        if incoming:
            return incoming.pop()
        await hung_up.wait()
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        if b"response.output_text.delta" in message.get("body", b""):
            hung_up.set()

    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": "/v1/responses",
        "raw_path": b"/v1/responses",
        "root_path": "",
        "query_string": b"",
        "headers": [(b"content-type", b"application/json"), (b"host", b"nimble.test")],
        "client": ("127.0.0.1", 5000),
        "server": ("nimble.test", 80),
    }
    try:
        await asyncio.wait_for(app(scope, receive, send), timeout=10)
        engine = runtime.models[FAKE_MODEL].engine
        assert hung_up.is_set()
        assert engine.aborted == 1
        assert len(runtime.responses) == 0
    finally:
        await runtime.stop()


async def test_error_after_the_stream_began_is_one_error_event(
    service: tuple[Runtime, httpx.AsyncClient], oai: openai.AsyncOpenAI
) -> None:
    runtime, client = service

    async def failing(model: str, request: GenerateRequest) -> AsyncGenerator[GenerationChunk]:
        yield GenerationChunk(text="partial")
        raise InvalidRequest("the engine refused halfway", param="input")

    runtime.generate = failing
    response = await client.post("/v1/responses", json=body(stream=True))
    events = [
        json.loads(b.split("\n")[1].removeprefix("data: "))
        for b in response.text.split("\n\n")
        if b
    ]
    assert [e["type"] for e in events] == [
        *TEXT_EVENTS_HEAD,
        "response.output_text.delta",
        "error",
    ]
    error = events[-1]
    assert error["sequence_number"] == len(events) - 1
    assert (error["message"], error["param"], error["code"]) == (
        "the engine refused halfway",
        "input",
        "invalid_request",
    )
    assert error["error"]["type"] == "invalid_request_error"
    assert len(runtime.responses) == 0
    with pytest.raises(openai.APIError, match="the engine refused halfway"):
        async for _ in await oai.responses.create(model=FAKE_MODEL, input="x", stream=True):
            pass


# ----- store, retrieve, previous_response_id -----
async def test_store_and_retrieve(oai: openai.AsyncOpenAI) -> None:
    created = await oai.responses.create(model=FAKE_MODEL, input="remember me", metadata={"k": "v"})
    fetched = await oai.responses.retrieve(created.id)
    assert fetched.model_dump() == created.model_dump()
    assert fetched.output_text == created.output_text and fetched.metadata == {"k": "v"}


async def test_streamed_response_is_stored(oai: openai.AsyncOpenAI) -> None:
    stream = await oai.responses.create(model=FAKE_MODEL, input="stream me", stream=True)
    events = [event async for event in stream]
    final = events[-1]
    assert final.type == "response.completed"
    fetched = await oai.responses.retrieve(final.response.id)
    assert fetched.model_dump() == final.response.model_dump()


async def test_store_false_keeps_nothing(
    oai: openai.AsyncOpenAI, client: httpx.AsyncClient
) -> None:
    created = await oai.responses.create(model=FAKE_MODEL, input="forget me", store=False)
    assert created.model_dump()["store"] is False
    missing = await client.get(f"/v1/responses/{created.id}")
    assert assert_openai_error(missing, 404, "response_id")["code"] == "response_not_found"
    follow = await client.post("/v1/responses", json=body(previous_response_id=created.id))
    assert_openai_error(follow, 404, "previous_response_id")


async def test_unknown_ids_are_404(client: httpx.AsyncClient, oai: openai.AsyncOpenAI) -> None:
    unknown = await client.get("/v1/responses/resp_unknown")
    error = assert_openai_error(unknown, 404, "response_id")
    assert "resp_unknown" in error["message"]
    previous = await client.post("/v1/responses", json=body(previous_response_id="resp_nope"))
    assert (
        assert_openai_error(previous, 404, "previous_response_id")["code"] == "response_not_found"
    )
    with pytest.raises(openai.NotFoundError):
        await oai.responses.create(model=FAKE_MODEL, input="x", previous_response_id="resp_nope")
    replay = await client.get("/v1/responses/resp_unknown?stream=true")
    assert_openai_error(replay, 400, "stream")


async def test_previous_response_id_continues_the_conversation(oai: openai.AsyncOpenAI) -> None:
    first = await oai.responses.create(
        model=FAKE_MODEL, input="first question", instructions="only for the first turn"
    )
    second = await oai.responses.create(
        model=FAKE_MODEL, input="second question", previous_response_id=first.id
    )
    history = [
        {"role": "user", "content": "first question"},
        {"role": "assistant", "content": first.output_text},
        {"role": "user", "content": "second question"},
    ]
    text, prompt_tokens = await chat_answer(oai, history)  # instructions are not carried over
    assert second.output_text == text
    assert second.usage is not None and second.usage.input_tokens == prompt_tokens
    alone = await oai.responses.create(model=FAKE_MODEL, input="second question")
    assert alone.usage is not None and second.usage.input_tokens > alone.usage.input_tokens
    assert second.previous_response_id == first.id
    # a third turn carries both earlier turns
    third = await oai.responses.create(
        model=FAKE_MODEL, input="third", previous_response_id=second.id, store=False
    )
    history += [
        {"role": "assistant", "content": second.output_text},
        {"role": "user", "content": "third"},
    ]
    assert third.output_text == (await chat_answer(oai, history))[0]


async def test_store_is_bounded_lru(service: tuple[Runtime, httpx.AsyncClient]) -> None:
    runtime, client = service
    runtime.responses = ResponseStore(2)
    ids = []
    for word in ("one", "two"):
        response = await client.post("/v1/responses", json=body(input=word))
        ids.append(response.json()["id"])
    assert (await client.get(f"/v1/responses/{ids[0]}")).status_code == 200  # now most recent
    third = await client.post("/v1/responses", json=body(input="three"))
    ids.append(third.json()["id"])
    statuses = [(await client.get(f"/v1/responses/{i}")).status_code for i in ids]
    assert statuses == [200, 404, 200]
    runtime.responses = ResponseStore(0)
    nothing = await client.post("/v1/responses", json=body())
    assert (await client.get(f"/v1/responses/{nothing.json()['id']}")).status_code == 404


def test_store_unit() -> None:
    store = ResponseStore(1)
    entry = StoredResponse({"id": "a"}, (ChatMessage("user", "x"),), owner="k1")
    store.put("a", entry)
    assert store.get("a", "k1", param="p") is entry
    with pytest.raises(ResponseNotFound) as other_owner:
        store.get("a", "k2", param="p")
    assert other_owner.value.param == "p"
    store.put("b", StoredResponse({"id": "b"}, ()))
    assert len(store) == 1
    with pytest.raises(ResponseNotFound):
        store.get("a", "k1", param=None)


async def test_responses_belong_to_their_api_key(tmp_path: Path) -> None:
    keys = {"nb-alice": {"id": "alice"}, "nb-bob": {"id": "bob"}}
    async with keyed_service(tmp_path, keys) as (_, client):
        alice, bob = sdk(client, "nb-alice"), sdk(client, "nb-bob")
        created = await alice.responses.create(model=FAKE_MODEL, input="mine")
        assert (await alice.responses.retrieve(created.id)).id == created.id
        with pytest.raises(openai.NotFoundError):
            await bob.responses.retrieve(created.id)
        follow = await client.post(
            "/v1/responses", json=body(previous_response_id=created.id), headers=bearer("nb-bob")
        )
        assert_openai_error(follow, 404, "previous_response_id")


# ----- structured output -----
async def test_json_schema_format(oai: openai.AsyncOpenAI) -> None:
    response = await oai.responses.create(
        model=FAKE_MODEL,
        input="a person",
        text={
            "format": {
                "type": "json_schema",
                "name": "person",
                "schema": PERSON_SCHEMA,
                "strict": True,
            }
        },
    )
    person = json.loads(response.output_text)
    assert set(person) == {"name", "age"}
    assert isinstance(person["name"], str) and isinstance(person["age"], int)
    assert response.text is not None and response.text.format is not None
    echoed = response.text.format.model_dump(by_alias=True, exclude_none=True)
    assert echoed == {
        "type": "json_schema",
        "name": "person",
        "schema": PERSON_SCHEMA,
        "strict": True,
    }


async def test_sdk_parse_with_a_pydantic_model(oai: openai.AsyncOpenAI) -> None:
    class Person(pydantic.BaseModel):
        name: str
        age: int

    parsed = await oai.responses.parse(model=FAKE_MODEL, input="a person", text_format=Person)
    assert isinstance(parsed.output_parsed, Person)


async def test_json_object_format(oai: openai.AsyncOpenAI) -> None:
    response = await oai.responses.create(
        model=FAKE_MODEL, input="anything", text={"format": {"type": "json_object"}}
    )
    assert isinstance(json.loads(response.output_text), dict)


# ----- function calls -----
async def test_function_call_round_trip(oai: openai.AsyncOpenAI) -> None:
    asked = "What is the weather in Paris?"
    first = await oai.responses.create(
        model=FAKE_MODEL,
        input=asked,
        tools=[WEATHER],
        tool_choice="required",
    )
    calls = [item for item in first.output if item.type == "function_call"]
    assert [item.type for item in first.output] == ["function_call"]
    call = calls[0]
    assert call.name == "get_weather" and call.status == "completed"
    assert call.id is not None and call.id.startswith("fc_") and call.call_id
    arguments = json.loads(call.arguments)
    assert set(arguments) == {"city"} and isinstance(arguments["city"], str)
    assert first.output_text == "" and first.tool_choice == "required"

    async def answer(result: str, **extra: Any) -> openai.types.responses.Response:
        return await oai.responses.create(
            model=FAKE_MODEL,
            input=[
                {"role": "user", "content": asked},
                *first.output,  # the SDK's own output items, as OpenAI's guide passes them back
                {"type": "function_call_output", "call_id": call.call_id, "output": result},
            ],
            tools=[WEATHER],
            **extra,
        )

    second = await answer("sunny")
    assert [item.type for item in second.output] == ["message"]
    assert len(second.output_text.split()) >= 1
    longer = await answer("sunny and warm today")
    assert second.usage is not None and longer.usage is not None
    assert longer.usage.input_tokens == second.usage.input_tokens + 3  # the result is in the prompt
    # the same turn through previous_response_id: the stored call joins the prompt
    chained = await oai.responses.create(
        model=FAKE_MODEL,
        previous_response_id=first.id,
        input=[{"type": "function_call_output", "call_id": call.call_id, "output": "sunny"}],
        tools=[WEATHER],
    )
    assert chained.output_text == second.output_text
    assert chained.usage is not None and chained.usage.input_tokens == second.usage.input_tokens


async def test_named_tool_choice_and_streamed_call(oai: openai.AsyncOpenAI) -> None:
    other = {**WEATHER, "name": "get_time", "description": "The time in a city"}
    stream = await oai.responses.create(
        model=FAKE_MODEL,
        input="What time is it in Oslo?",
        tools=[WEATHER, other],
        tool_choice={"type": "function", "name": "get_time"},
        stream=True,
    )
    events = [event async for event in stream]
    kinds = [event.type for event in events]
    deltas = [e.delta for e in events if e.type == "response.function_call_arguments.delta"]
    assert deltas
    assert kinds == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        *["response.function_call_arguments.delta"] * len(deltas),
        "response.function_call_arguments.done",
        "response.output_item.done",
        "response.completed",
    ]
    final = events[-1].response
    (call,) = final.output
    assert call.type == "function_call" and call.name == "get_time"
    assert call.arguments == "".join(deltas) == events[-3].arguments
    assert final.tool_choice.model_dump() == {"type": "function", "name": "get_time"}


# ----- refusals: 4xx in the OpenAI shape, naming the field -----
@pytest.mark.parametrize(
    ("fields", "status", "param"),
    [
        ({"tools": [{"type": "web_search"}]}, 400, "tools"),
        ({"tools": [WEATHER, {"type": "file_search", "vector_store_ids": ["x"]}]}, 400, "tools"),
        ({"tools": [{**WEATHER, "name": "bad name"}]}, 400, "tools.0.name"),
        ({"tools": [WEATHER, WEATHER]}, 400, "tools"),
        ({"tool_choice": "required"}, 400, "tool_choice"),
        (
            {"tools": [WEATHER], "tool_choice": {"type": "function", "name": "nope"}},
            400,
            "tool_choice",
        ),
        ({"tools": [WEATHER], "tool_choice": {"type": "web_search_preview"}}, 400, "tool_choice"),
        ({"unknown_field": 1}, 400, "unknown_field"),
        ({"n": 2}, 400, "n"),
        ({"input": []}, 400, "input"),
        # (a reasoning item is accepted: tests/api/test_reasoning.py)
        ({"input": [{"type": "file_search_call", "queries": []}]}, 400, "input.0"),
        ({"input": [{"role": "user"}]}, 400, "input.0"),
        ({"input": [{"role": "tool", "content": "x"}]}, 400, "input.0.role"),
        (
            {"input": [{"role": "user", "content": [{"type": "input_image", "image_url": "x"}]}]},
            400,
            "input.0.content.0",
        ),
        (
            {"input": [{"type": "function_call_output", "call_id": "call_x", "output": "1"}]},
            400,
            "input.0.call_id",
        ),
        ({"input": [{"type": "function_call", "call_id": "c", "name": "f"}]}, 400, "input.0"),
        ({"text": {"format": {"type": "json_schema", "name": "x"}}}, 400, "text.format"),
        ({"text": {"format": {"type": "grammar"}}}, 400, "text.format.type"),
        ({"temperature": 3}, 400, "temperature"),
        ({"top_p": 0}, 400, "top_p"),
        ({"max_output_tokens": 0}, 400, "max_output_tokens"),
        ({"metadata": {str(i): "v" for i in range(17)}}, 400, "metadata"),
        ({"stream_options": {"include_obfuscation": False}}, 400, "stream_options"),
        ({"background": True}, 400, "background"),
        ({"reasoning": {"effort": "high"}}, 400, "reasoning"),
        (
            {"include": ["reasoning.encrypted_content", "message.output_text.logprobs"]},
            400,
            "include",
        ),
        ({"truncation": "auto"}, 400, "truncation"),
        ({"conversation": "conv_1"}, 400, "conversation"),
        ({"model": "unknown-model"}, 404, "model"),
    ],
)
async def test_bad_requests_name_the_field(
    client: httpx.AsyncClient, fields: dict[str, Any], status: int, param: str
) -> None:
    response = await client.post("/v1/responses", json=body(**fields))
    assert_openai_error(response, status, param)


async def test_moot_options_are_accepted(client: httpx.AsyncClient) -> None:
    response = await client.post(
        "/v1/responses",
        json=body(
            include=["reasoning.encrypted_content"],
            reasoning={"effort": None},
            service_tier="auto",
            truncation="disabled",
            prompt_cache_key="k",
            safety_identifier="s",
            parallel_tool_calls=False,
            tools=[],
            tool_choice="none",
            text={"format": {"type": "text"}, "verbosity": "low"},
        ),
    )
    assert response.status_code == 200, response.text
    answer = response.json()
    assert answer["parallel_tool_calls"] is False and answer["tool_choice"] == "none"
    assert answer["text"] == {"format": {"type": "text"}, "verbosity": "low"}


async def test_missing_input_and_bad_json(client: httpx.AsyncClient) -> None:
    missing = await client.post("/v1/responses", json={"model": FAKE_MODEL})
    assert_openai_error(missing, 400, "input")
    broken = await client.post(
        "/v1/responses", content=b"{not json", headers={"content-type": "application/json"}
    )
    assert_openai_error(broken, 400, None)


async def test_sdk_raises_bad_request(oai: openai.AsyncOpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as refused:
        await oai.responses.create(
            model=FAKE_MODEL,
            input="x",
            tools=[{"type": "web_search"}],
        )
    assert refused.value.param == "tools"


# ----- endpoint allowlist -----
async def test_responses_follow_the_chat_endpoint_switch() -> None:
    assert endpoint_of("/v1/responses") == endpoint_of("/v1/responses/resp_1") == "chat"
    assert endpoint_of("/v1/responses/resp_1/input_items") is None
    async with fake_service(endpoints=("models",)) as (_, client):
        assert_openai_error(await client.post("/v1/responses", json=body()), 404, None)
        assert_openai_error(await client.get("/v1/responses/resp_1"), 404, None)
