"""Routes write their JSON themselves (api/route.py): every answer must be, byte for byte,
what FastAPI's `response_model=` step made of it before: the route's response model
validating the answer and dumping it (every field, in the model's order, defaults such as
`null` included, or left out where the route says `response_model_exclude_none`)."""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from fastapi.routing import APIRoute
from pydantic import TypeAdapter

from nimble.api import create_app
from nimble.api.routes import (
    chat,
    completions,
    embeddings,
    health,
    ranking,
    responses,
    service,
    tokenize,
)
from nimble.config import Settings
from nimble.models import resolve_model
from nimble.runtime import Runtime
from nimble.runtime.assemble import runtime_config
from nimble.types import Task
from tests.conftest import FAKE_MODEL, chat_body, fake_service

ROUTES = {
    (method, route.path): route
    for module in (chat, completions, embeddings, health, ranking, responses, service, tokenize)
    for route in module.router.routes
    if isinstance(route, APIRoute)
    for method in route.methods
}
TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_time",
            "parameters": {"type": "object", "properties": {"tz": {"type": "string"}}},
        },
    }
]
ASK = [{"role": "user", "content": "What time is it?"}]
POSTS: list[tuple[str, dict[str, Any]]] = [
    ("/v1/chat/completions", chat_body()),
    ("/v1/chat/completions", chat_body(n=2, max_tokens=5, stop=["zulu"])),
    ("/v1/chat/completions", chat_body(logprobs=True, top_logprobs=2, max_tokens=3)),
    ("/v1/chat/completions", chat_body(messages=ASK, tools=TOOLS, tool_choice="required")),
    ("/v1/chat/completions", chat_body(response_format={"type": "json_object"})),
    ("/v1/completions", {"model": FAKE_MODEL, "prompt": "Once upon"}),
    (
        "/v1/completions",
        {"model": FAKE_MODEL, "prompt": ["a b", "c d"], "n": 2, "max_tokens": 4, "logprobs": 2},
    ),
    ("/v1/completions", {"model": FAKE_MODEL, "prompt": "x", "guided_choice": ["yes", "no"]}),
    (  # token ids, the prompt echoed with its logprobs (the first one null)
        "/v1/completions",
        {"model": FAKE_MODEL, "prompt": [[0, 1, 2], [3]], "echo": True, "logprobs": 1},
    ),
    ("/v1/embeddings", {"model": FAKE_MODEL, "input": ["hello world", "bye"]}),
    ("/v1/embeddings", {"model": FAKE_MODEL, "input": "hello", "encoding_format": "base64"}),
    (
        "/v1/ranking",
        {"model": FAKE_MODEL, "query": {"text": "cats"}, "passages": [{"text": "a cat"}]},
    ),
    ("/v1/rerank", {"model": FAKE_MODEL, "query": "cats", "documents": ["a cat", "dogs"]}),
    (
        "/v1/rerank",
        {
            "model": FAKE_MODEL,
            "query": "cats",
            "documents": ["a cat", {"text": "dogs"}],
            "top_n": 1,
            "return_documents": True,
        },
    ),
    ("/v2/rerank", {"model": FAKE_MODEL, "query": "cats", "documents": ["a cat", "dogs"]}),
    (
        "/v2/rerank",
        {"model": FAKE_MODEL, "query": "c", "documents": ["a"], "return_documents": True},
    ),
    ("/tokenize", {"model": FAKE_MODEL, "prompt": "alpha bravo"}),
    ("/tokenize", {"model": FAKE_MODEL, "messages": ASK, "return_token_strs": True}),
    ("/detokenize", {"model": FAKE_MODEL, "tokens": [0, 1]}),
    ("/v1/responses", {"model": FAKE_MODEL, "input": "hi", "instructions": "be brief"}),
    ("/v1/responses", {"model": FAKE_MODEL, "input": "hi", "max_output_tokens": 2}),
    (
        "/v1/responses",
        {
            "model": FAKE_MODEL,
            "input": "time?",
            "tools": [{"type": "function", "name": "get_time", "parameters": {"type": "object"}}],
            "tool_choice": "required",
        },
    ),
]
GETS = ["/v1/models", "/v1/version", "/v1/metadata", "/v1/manifest", "/v1/health/live"]
# (the path asked, its route's template)
TEMPLATED_GETS = [(f"/v1/models/{FAKE_MODEL}", "/v1/models/{model_id:path}")]


def _expected(method: str, template: str, response: httpx.Response) -> bytes:
    route = ROUTES[(method, template)]
    model = route.response_model
    if response.status_code != 200:  # documented per status (health: 503)
        model = route.responses[response.status_code]["model"]
    adapter: TypeAdapter[Any] = TypeAdapter(model)
    return adapter.dump_json(
        adapter.validate_json(response.content),
        by_alias=route.response_model_by_alias,
        exclude_none=route.response_model_exclude_none,
    )


@pytest.fixture
async def client() -> AsyncIterator[httpx.AsyncClient]:
    async with fake_service() as (_, client):
        yield client


@pytest.mark.parametrize(("path", "body"), POSTS)
async def test_post_answers_are_their_models_dump(
    client: httpx.AsyncClient, path: str, body: dict[str, Any]
) -> None:
    response = await client.post(path, json=body)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/json"
    assert response.content == _expected("POST", path, response)
    if path == "/v1/responses":  # and retrieved as it was answered
        stored = await client.get(f"/v1/responses/{response.json()['id']}")
        assert stored.content == _expected("GET", "/v1/responses/{response_id}", stored)
        assert stored.json() == response.json()


@pytest.mark.parametrize("path", GETS)
async def test_get_answers_are_their_models_dump(client: httpx.AsyncClient, path: str) -> None:
    response = await client.get(path)
    assert response.status_code == 200, response.text
    assert response.content == _expected("GET", path, response)


@pytest.mark.parametrize(("path", "template"), TEMPLATED_GETS)
async def test_templated_get_answers_are_their_models_dump(
    client: httpx.AsyncClient, path: str, template: str
) -> None:
    response = await client.get(path)
    assert response.status_code == 200, response.text
    assert response.content == _expected("GET", template, response)


async def test_not_ready_is_its_models_dump() -> None:
    async with fake_service(load=False) as (_, client):
        response = await client.get("/v1/health/ready")
    assert response.status_code == 503
    assert response.content == _expected("GET", "/v1/health/ready", response)
    ready = "/v1/health/ready"
    async with fake_service() as (_, client):
        loaded = await client.get(ready)
    assert loaded.status_code == 200
    assert loaded.content == _expected("GET", ready, loaded)


async def test_the_model_list_leaves_out_an_absent_ranking() -> None:
    settings = Settings(model=("fake",))
    chat_only = dataclasses.replace(resolve_model("fake:chatter"), tasks=frozenset({Task.CHAT}))
    runtime = Runtime([resolve_model("fake"), chat_only], runtime_config(settings))
    app = create_app(settings, runtime=runtime, load_on_startup=False)
    await runtime.start()
    try:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
            response = await client.get("/v1/models")
    finally:
        await runtime.stop()
    assert response.content == _expected("GET", "/v1/models", response)
    assert [card.get("ranking", "absent") for card in response.json()["data"]] == [
        "cosine",
        "absent",
    ]
