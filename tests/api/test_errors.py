"""Bad input never gets a 500: each case answers a 4xx in the OpenAI error shape."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from tests.conftest import FAKE_MODEL, assert_openai_error, chat_body, fake_service

USER = [{"role": "user", "content": "hi"}]

CHAT_CASES: list[tuple[str, dict[str, Any], int, str | None]] = [
    ("empty messages", chat_body(messages=[]), 400, "messages"),
    ("messages not a list", chat_body(messages="hi"), 400, "messages"),
    (
        "unknown role",
        chat_body(messages=[{"role": "wizard", "content": "x"}]),
        400,
        "messages.0.role",
    ),
    ("user without content", chat_body(messages=[{"role": "user"}]), 400, "messages.0"),
    ("negative max_tokens", chat_body(max_tokens=-5), 400, "max_tokens"),
    ("zero max_tokens", chat_body(max_tokens=0), 400, "max_tokens"),
    ("huge max_tokens", chat_body(max_tokens=10**9), 400, "max_tokens"),
    ("max_tokens wrong type", chat_body(max_tokens="ten"), 400, "max_tokens"),
    ("temperature too high", chat_body(temperature=2.5), 400, "temperature"),
    ("temperature negative", chat_body(temperature=-0.1), 400, "temperature"),
    ("top_p zero", chat_body(top_p=0), 400, "top_p"),
    ("n zero", chat_body(n=0), 400, "n"),
    ("n above limit", chat_body(n=50), 400, "n"),
    ("five stops", chat_body(stop=["a", "b", "c", "d", "e"]), 400, "stop"),
    ("top_logprobs without logprobs", chat_body(top_logprobs=2), 400, "top_logprobs"),
    ("top_logprobs too many", chat_body(logprobs=True, top_logprobs=99), 400, "top_logprobs"),
    ("unknown field", chat_body(frobnicate=True), 400, "frobnicate"),
    (
        "unknown message field",
        chat_body(messages=[{"role": "user", "content": "x", "x": 1}]),
        400,
        "messages.0.x",
    ),
    (
        "tool of an unknown type",
        chat_body(tools=[{"type": "code_interpreter"}]),
        400,
        "tools.0.type",
    ),
    (
        "unknown response_format type",
        chat_body(response_format={"type": "xml"}),
        400,
        "response_format.type",
    ),
    ("logit_bias key not a token id", chat_body(logit_bias={"the": 5}), 400, "logit_bias"),
    (
        "stream_options without stream",
        chat_body(stream_options={"include_usage": True}),
        400,
        "stream_options",
    ),
    ("missing model", {"messages": USER}, 400, "model"),
    ("unknown model", chat_body(model="gpt-9"), 404, "model"),
    (
        "image part",
        chat_body(
            messages=[
                {"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}
            ]
        ),
        400,
        "messages.0.content",
    ),
]


@pytest.mark.parametrize(
    ("case", "body", "status", "param"), CHAT_CASES, ids=[c[0] for c in CHAT_CASES]
)
async def test_chat_bad_input(
    client: httpx.AsyncClient, case: str, body: dict[str, Any], status: int, param: str | None
) -> None:
    response = await client.post("/v1/chat/completions", json=body)
    error = assert_openai_error(response, status, param)
    if param:
        assert param.split(".")[0] in error["message"]


async def test_streaming_refusal_is_plain_http_error(client: httpx.AsyncClient) -> None:
    response = await client.post("/v1/chat/completions", json=chat_body(model="x", stream=True))
    assert_openai_error(response, 404, "model")


# every route's body is parsed by api/route.py's json_body: the same answers as FastAPI's
BODY_PATHS = (
    "/v1/chat/completions",
    "/v1/completions",
    "/v1/embeddings",
    "/v1/ranking",
    "/v1/rerank",
    "/v1/responses",
)
NOT_AN_OBJECT = "The request body must be a JSON object, sent with Content-Type: application/json."


@pytest.mark.parametrize("path", BODY_PATHS)
@pytest.mark.parametrize("content", [b'{"model": ', b"  \n"])
async def test_malformed_json(client: httpx.AsyncClient, path: str, content: bytes) -> None:
    response = await client.post(
        path, content=content, headers={"content-type": "application/json"}
    )
    error = assert_openai_error(response, 400, None)
    assert "not valid JSON" in error["message"]


@pytest.mark.parametrize("path", BODY_PATHS)
async def test_no_body(client: httpx.AsyncClient, path: str) -> None:
    response = await client.post(path)
    error = assert_openai_error(response, 400, None)
    assert error["message"] == "The request needs a JSON body."


@pytest.mark.parametrize("path", BODY_PATHS)
@pytest.mark.parametrize("content_type", ["text/plain", "application/x-www-form-urlencoded"])
async def test_a_body_not_sent_as_json_is_refused_alike(
    client: httpx.AsyncClient, path: str, content_type: str
) -> None:
    body = b'{"model": "%s", "input": "x", "messages": [{"role": "user", "content": "x"}]}'
    response = await client.post(
        path, content=body % FAKE_MODEL.encode(), headers={"content-type": content_type}
    )
    error = assert_openai_error(response, 400, None)
    assert error["message"] == NOT_AN_OBJECT


@pytest.mark.parametrize("path", BODY_PATHS)
@pytest.mark.parametrize("body", [["model", FAKE_MODEL], "model"])
async def test_body_not_an_object(client: httpx.AsyncClient, path: str, body: object) -> None:
    response = await client.post(path, json=body)
    error = assert_openai_error(response, 400, None)
    assert error["message"] == NOT_AN_OBJECT


async def test_embeddings_unknown_field_is_named(client: httpx.AsyncClient) -> None:
    body = {"model": FAKE_MODEL, "input": "x", "frobnicate": 1}
    response = await client.post("/v1/embeddings", json=body)
    error = assert_openai_error(response, 400, "frobnicate")
    assert error["message"] == "Unrecognized request argument supplied: frobnicate"


@pytest.mark.parametrize(
    ("path", "body", "param"),
    [
        ("/v1/completions", {"model": FAKE_MODEL, "prompt": []}, "prompt"),
        ("/v1/completions", {"model": FAKE_MODEL, "prompt": "x", "max_tokens": 0}, "max_tokens"),
        ("/v1/completions", {"model": FAKE_MODEL, "prompt": [[1], [-2]]}, "prompt"),
        ("/v1/completions", {"model": FAKE_MODEL, "prompt": "x", "max_tokens": -1}, "max_tokens"),
        ("/v1/completions", {"model": FAKE_MODEL, "prompt": "x", "logprobs": 50}, "logprobs"),
        ("/v1/embeddings", {"model": FAKE_MODEL, "input": []}, "input"),
        ("/v1/embeddings", {"model": FAKE_MODEL, "input": ""}, "input"),
        (
            "/v1/embeddings",
            {"model": FAKE_MODEL, "input": "x", "encoding_format": "hex"},
            "encoding_format",
        ),
        ("/v1/embeddings", {"model": FAKE_MODEL, "input": "x", "dimensions": 8}, "dimensions"),
        ("/v1/embeddings", {"model": FAKE_MODEL, "input": [1, "a"]}, "input"),
        ("/v1/embeddings", {"model": FAKE_MODEL, "input": [[1, -2]]}, "input"),
        ("/v1/embeddings", {"model": FAKE_MODEL, "input": [[]]}, "input"),
        ("/v1/embeddings", {"model": FAKE_MODEL, "input": "x", "truncate": "MIDDLE"}, "truncate"),
        ("/v1/embeddings", {"model": FAKE_MODEL, "input": "x", "input_type": "doc"}, "input_type"),
    ],
)
async def test_other_routes_bad_input(
    client: httpx.AsyncClient, path: str, body: dict[str, Any], param: str
) -> None:
    response = await client.post(path, json=body)
    assert_openai_error(response, 400, param)


async def test_task_mismatch_is_400() -> None:
    async with fake_service() as (runtime, client):
        model = runtime.models[FAKE_MODEL]
        object.__setattr__(model.spec, "tasks", frozenset())
        response = await client.post("/v1/embeddings", json={"model": FAKE_MODEL, "input": "x"})
        assert_openai_error(response, 400, "model")


async def test_unknown_path_and_method(client: httpx.AsyncClient) -> None:
    assert_openai_error(await client.get("/v1/nothing"), 404, None)
    assert_openai_error(await client.get("/"), 404, None)
    assert_openai_error(await client.get("/v1/chat/completions"), 405, None)
    assert_openai_error(await client.delete("/v1/models"), 405, None)


async def test_body_too_large() -> None:
    async with fake_service(max_body_bytes=2048) as (_, client):
        big = chat_body(messages=[{"role": "user", "content": "x" * 5000}])
        assert_openai_error(await client.post("/v1/chat/completions", json=big), 413, None)

        async def chunked():  # no content-length: counted while reading
            yield b'{"model": "fake-model", "messages": [{"role": "user", "content": "'
            yield b"y" * 4096
            yield b'"}]}'

        response = await client.post(
            "/v1/chat/completions", content=chunked(), headers={"content-type": "application/json"}
        )
        assert_openai_error(response, 413, None)


async def test_context_length_exceeded_names_both_numbers(client: httpx.AsyncClient) -> None:
    long_prompt = "word " * 3000  # fake engine: one token per word, window 2048
    response = await client.post(
        "/v1/chat/completions", json=chat_body(messages=[{"role": "user", "content": long_prompt}])
    )
    error = assert_openai_error(response, 400, "messages")
    assert error["code"] == "context_length_exceeded"
    assert "2048" in error["message"] and "3004" in error["message"]


async def test_an_unexpected_error_is_a_500_with_the_request_id_and_is_counted() -> None:
    async with fake_service() as (runtime, client):
        engine = runtime.models[FAKE_MODEL].engine

        async def broken(request: object) -> object:
            raise RuntimeError("secret internal detail")

        engine.embed = broken  # type: ignore[method-assign]
        response = await client.post(
            "/v1/embeddings",
            json={"model": FAKE_MODEL, "input": "x"},
            headers={"X-Request-Id": "boom-1"},
        )
        error = assert_openai_error(response, 500, None)
        assert error["code"] == "internal_error"
        assert "boom-1" in error["message"]
        assert "secret" not in response.text
        assert response.headers["x-request-id"] == "boom-1"
        metrics = (await client.get("/metrics")).text
        assert (
            'nimble_http_requests_total{endpoint="embeddings",method="POST",status="500"} 1.0'
            in metrics
        )


# a lone UTF-16 surrogate is legal JSON (Python's json reads it) but no Unicode character:
# every route that takes text refuses it, naming the field, rather than changing the text
SURROGATE_CASES: list[tuple[str, dict[str, Any], str]] = [
    (
        "/v1/chat/completions",
        chat_body(messages=[{"role": "user", "content": "hi \ud800 there"}]),
        "messages.0.content",
    ),
    (
        "/v1/chat/completions",
        chat_body(messages=[{"role": "user", "content": [{"type": "text", "text": "\udc00"}]}]),
        "messages.0.content.0.text",
    ),
    (
        "/v1/chat/completions",
        chat_body(
            tools=[{"type": "function", "function": {"name": "f", "description": "a\udfffb"}}]
        ),
        "tools.0.function.description",
    ),
    ("/v1/completions", {"model": FAKE_MODEL, "prompt": "x\ud800"}, "prompt"),
    ("/v1/completions", {"model": FAKE_MODEL, "prompt": ["ok", "\ud800"]}, "prompt.1"),
    ("/v1/embeddings", {"model": FAKE_MODEL, "input": ["ok", "a\ud800"]}, "input.1"),
    (
        "/v1/ranking",
        {"model": FAKE_MODEL, "query": {"text": "q"}, "passages": [{"text": "\ud800"}]},
        "passages.0.text",
    ),
    ("/v1/rerank", {"model": FAKE_MODEL, "query": "q\udbff", "documents": ["d"]}, "query"),
    ("/v1/responses", {"model": FAKE_MODEL, "input": "\ud800"}, "input"),
    ("/v1/chat/completions", {**chat_body(), "metadata": {"k\ud800": "v"}}, "metadata"),
]


@pytest.mark.parametrize(("path", "body", "param"), SURROGATE_CASES)
async def test_a_lone_surrogate_is_a_400_naming_the_field(
    client: httpx.AsyncClient, path: str, body: dict[str, Any], param: str
) -> None:
    import json

    content = json.dumps(body)  # escapes the surrogate as \udXXX, as a client's json does
    answer = await client.post(path, content=content, headers={"content-type": "application/json"})
    error = assert_openai_error(answer, 400, param)
    assert "lone UTF-16 surrogate" in error["message"]
    # a surrogate pair (one character outside the BMP) is fine
    pair = json.dumps(chat_body(messages=[{"role": "user", "content": "smile \U0001f600"}]))
    assert "\\ud83d\\ude00" in pair
    ok = await client.post(
        "/v1/chat/completions", content=pair, headers={"content-type": "application/json"}
    )
    assert ok.status_code == 200, ok.text


@pytest.mark.parametrize("path", ["/v1/chat/completions", "/v1/embeddings", "/v1/responses"])
@pytest.mark.parametrize("depth", [300, 5000])
async def test_json_nested_too_deep_is_a_400(
    client: httpx.AsyncClient, path: str, depth: int
) -> None:
    """Past what pydantic's JSON reader nests (and, at 5,000, Python's `json`): a 400 that
    says so; 5,000 was a 500 (the lone-surrogate check's `json.loads` overflowed)."""
    nested = "[" * depth + "]" * depth
    content = f'{{"model": "{FAKE_MODEL}", "input": {nested}, "messages": {nested}}}'
    answer = await client.post(path, content=content, headers={"content-type": "application/json"})
    error = assert_openai_error(answer, 400, None)
    assert "nests too deeply" in error["message"]


async def test_json_text_nested_too_deep_inside_a_field(client: httpx.AsyncClient) -> None:
    """JSON written inside a string field, past Python's recursion limit: a guided_json
    schema is a 400 naming it, a past call's arguments are shown to the model as written
    (both were 500s)."""
    nested = "[" * 5000 + "]" * 5000
    answer = await client.post("/v1/chat/completions", json=chat_body(guided_json=nested))
    error = assert_openai_error(answer, 400, "guided_json")
    assert "nest too deeply" in error["message"]
    call = {"id": "c1", "type": "function", "function": {"name": "f", "arguments": nested}}
    turns = [
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": None, "tool_calls": [call]},
        {"role": "tool", "tool_call_id": "c1", "content": "done"},
    ]
    tools = [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}]
    answer = await client.post("/v1/chat/completions", json=chat_body(messages=turns, tools=tools))
    assert answer.status_code == 200, answer.text
