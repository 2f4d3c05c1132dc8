"""The endpoint allowlist: a disabled endpoint answers 404 like an unknown path and leaves
the OpenAPI document; every route belongs to a named endpoint (or is a health probe)."""

from __future__ import annotations

import pytest
from fastapi.routing import APIRoute

from nimble.api import create_app
from nimble.api.endpoints import ENDPOINT_PATHS, HEALTH_PATHS, endpoint_of
from nimble.config import Settings, load_settings
from nimble.errors import ConfigError
from tests.conftest import FAKE_MODEL, assert_openai_error, chat_body, fake_service


def test_every_route_has_an_endpoint_name() -> None:
    app = create_app(Settings(model=("fake",), runtime_adapters=True), load_on_startup=False)
    paths = {route.path for route in app.routes if isinstance(route, APIRoute)}
    assert paths == {p for ps in ENDPOINT_PATHS.values() for p in ps if p != "/openapi.json"} | set(
        HEALTH_PATHS
    )
    for path in paths - set(HEALTH_PATHS):
        assert endpoint_of(path) is not None


async def test_disabled_endpoints_answer_404() -> None:
    async with fake_service(endpoints=("chat", "models")) as (_, client):
        ok = await client.post("/v1/chat/completions", json=chat_body())
        assert ok.status_code == 200
        for method, path in (
            ("POST", "/v1/embeddings"),
            ("POST", "/v1/completions"),
            ("GET", "/v1/metrics"),
            ("GET", "/metrics"),
            ("GET", "/v1/metadata"),
            ("GET", "/openapi.json"),
        ):
            response = await client.request(method, path, json={"model": FAKE_MODEL, "input": "x"})
            error = assert_openai_error(response, 404, None)
            unknown = assert_openai_error(await client.request(method, "/v1/unknown"), 404, None)
            assert (error["type"], error["code"]) == (unknown["type"], unknown["code"]), path
        for path in HEALTH_PATHS:
            assert (await client.get(path)).status_code == 200


async def test_openapi_lists_only_enabled_endpoints() -> None:
    async with fake_service(endpoints=("embeddings", "openapi")) as (_, client):
        paths = set((await client.get("/openapi.json")).json()["paths"])
    assert paths == {"/v1/embeddings", *HEALTH_PATHS}


def test_templated_paths_find_their_endpoint() -> None:
    assert endpoint_of("/v1/models/{model_id:path}") == "models"
    assert endpoint_of("/v1/models/acme/tiny-chat") == "models"  # ids may hold slashes
    assert endpoint_of("/v1/responses/resp_1") == "chat"
    assert endpoint_of("/v1/responses/resp_1/x") is None  # one segment only there
    assert endpoint_of("/v1/models/") is None
    assert (endpoint_of("/tokenize"), endpoint_of("/detokenize")) == ("tokenize", "tokenize")
    assert (endpoint_of("/v2/rerank"), endpoint_of("/health")) == ("rerank", "health")


def test_unknown_endpoint_names_are_refused() -> None:
    with pytest.raises(ConfigError, match="unknown ranking-v2"):
        load_settings(endpoints=("chat", "ranking-v2"))
