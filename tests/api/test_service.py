"""Models list, health probes, version, metadata, request ids and the OpenAPI document."""

from __future__ import annotations

import httpx
import openai

from nimble import __version__
from nimble.runtime import ServiceState
from tests.conftest import FAKE_MODEL, assert_openai_error, chat_body, fake_service


async def test_models_list(oai: openai.AsyncOpenAI) -> None:
    page = await oai.models.list()
    assert [m.id for m in page.data] == [FAKE_MODEL]
    assert page.data[0].object == "model"


async def test_health_before_and_after_load_and_while_draining() -> None:
    async with fake_service(load=False) as (runtime, client):
        assert (await client.get("/v1/health/live")).status_code == 200
        not_ready = await client.get("/v1/health/ready")
        assert not_ready.status_code == 503
        assert not_ready.json()["status"] == "starting"
        # requests before readiness: 503 in the OpenAI shape
        assert_openai_error(await client.post("/v1/chat/completions", json=chat_body()), 503, None)
        await runtime.start()
        assert (await client.get("/v1/health/ready")).status_code == 200
        runtime.begin_drain()
        assert runtime.state is ServiceState.DRAINING
        assert (await client.get("/v1/health/ready")).status_code == 503
        assert (await client.get("/v1/health/live")).status_code == 200
        response = await client.post("/v1/chat/completions", json=chat_body())
        assert_openai_error(response, 503, None)
        assert "Retry-After" in response.headers


async def test_readiness_follows_engine_health() -> None:
    async with fake_service() as (runtime, client):
        engine = runtime.models[FAKE_MODEL].engine
        engine.started = False  # type: ignore[attr-defined]  # as if its server died
        down = await client.get("/v1/health/ready")
        assert down.status_code == 503
        assert down.json() == {
            "object": "health.response",
            "status": "engine_down",
            "message": f"Service is not ready: the engine of {FAKE_MODEL} is down.",
        }
        engine.started = True  # type: ignore[attr-defined]
        assert (await client.get("/v1/health/ready")).status_code == 200


async def test_version_and_metadata(client: httpx.AsyncClient) -> None:
    assert (await client.get("/v1/version")).json()["release"] == __version__
    meta = (await client.get("/v1/metadata")).json()
    assert meta["state"] == "ready"
    (model,) = meta["models"]
    assert model["id"] == FAKE_MODEL and model["engine"] == "fake"
    assert model["context_length"] == 2048


async def test_request_id_generated_and_honoured(client: httpx.AsyncClient) -> None:
    generated = await client.get("/v1/models")
    assert len(generated.headers["x-request-id"]) == 32
    honoured = await client.post(
        "/v1/chat/completions", json=chat_body(), headers={"X-Request-Id": "abc-123"}
    )
    assert honoured.headers["x-request-id"] == "abc-123"
    assert honoured.json()["id"] == "chatcmpl-abc-123"
    # an id with unsafe characters is replaced, never echoed
    unsafe = await client.get("/v1/models", headers={"X-Request-Id": "evil\tvalue"})
    assert unsafe.headers["x-request-id"] != "evil\tvalue"
    # errors carry it too
    missing = await client.get("/nope", headers={"X-Request-Id": "err-1"})
    assert missing.headers["x-request-id"] == "err-1"


async def test_openapi_lists_every_route_with_schemas(client: httpx.AsyncClient) -> None:
    doc = (await client.get("/openapi.json")).json()
    paths = doc["paths"]
    assert set(paths) == {
        "/v1/chat/completions",
        "/v1/completions",
        "/v1/embeddings",
        "/v1/ranking",
        "/v1/rerank",
        "/v1/responses",
        "/v1/responses/{response_id}",
        "/v1/models",
        "/v1/health/live",
        "/v1/health/ready",
        "/v1/version",
        "/v1/metadata",
        "/v1/manifest",
        "/v1/metrics",
        "/metrics",
    }
    assert "text/plain" in str(paths["/v1/metrics"]["get"]["responses"]["200"]["content"])
    chat = paths["/v1/chat/completions"]["post"]
    assert chat["requestBody"]["content"]["application/json"]["schema"]["$ref"].endswith(
        "ChatCompletionRequest"
    )
    assert "text/event-stream" in chat["responses"]["200"]["content"]
    # routes parse their bodies themselves (api/route.py): each is still documented, as a
    # schema component
    for path, name in (
        ("/v1/chat/completions", "ChatCompletionRequest"),
        ("/v1/completions", "CompletionRequest"),
        ("/v1/embeddings", "EmbeddingRequest"),
        ("/v1/ranking", "RankingRequest"),
        ("/v1/rerank", "RerankRequest"),
        ("/v1/responses", "CreateResponseRequest"),
    ):
        body = paths[path]["post"]["requestBody"]
        assert body["required"] is True
        ref = body["content"]["application/json"]["schema"]["$ref"]
        assert ref == f"#/components/schemas/{name}"
        assert doc["components"]["schemas"][name]["properties"]["model"]
    replay = paths["/v1/responses/{response_id}"]["get"]
    assert {(p["name"], p["in"], p["required"]) for p in replay["parameters"]} == {
        ("response_id", "path", True),
        ("stream", "query", False),
    }
    for path, method, name in (
        ("/v1/completions", "post", "CompletionResponse"),
        ("/v1/ranking", "post", "RankingResponse"),
        ("/v1/rerank", "post", "RerankResponse"),
        ("/v1/responses", "post", "ResponseObject"),
        ("/v1/responses/{response_id}", "get", "ResponseObject"),
        ("/v1/models", "get", "ModelList"),
        ("/v1/metadata", "get", "MetadataResponse"),
        ("/v1/health/ready", "get", "HealthResponse"),
    ):
        answer = paths[path][method]["responses"]["200"]["content"]["application/json"]
        assert answer["schema"]["$ref"] == f"#/components/schemas/{name}", path
    embeddings_body = paths["/v1/embeddings"]["post"]["requestBody"]
    schema = doc["components"]["schemas"]["EmbeddingRequest"]
    assert embeddings_body["required"] is True
    assert {"model", "input"} <= set(schema["required"])
    assert {"encoding_format", "dimensions", "input_type", "truncate"} <= set(schema["properties"])
    assert doc["paths"]["/v1/embeddings"]["post"]["responses"]["200"]["content"][
        "application/json"
    ]["schema"]["$ref"].endswith("EmbeddingResponse")
    for status in ("400", "404", "429", "503"):
        assert chat["responses"][status]["content"]["application/json"]["schema"]["$ref"].endswith(
            "ErrorResponse"
        )
    # every route module's routes are documented, with their methods
    from nimble.api.routes import chat, completions, embeddings, service

    for module in (chat, completions, embeddings, service):
        for route in module.router.routes:
            for method in route.methods:  # type: ignore[attr-defined]
                assert method.lower() in paths[route.path]  # type: ignore[attr-defined]
