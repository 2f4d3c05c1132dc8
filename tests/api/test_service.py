"""Models list and retrieval, health probes (vLLM's /health too), version, metadata, request
ids and the OpenAPI document."""

from __future__ import annotations

from pathlib import Path

import httpx
import openai
import pytest

from nimble import __version__
from nimble.api import create_app
from nimble.config import Settings
from nimble.runtime import ServiceState
from nimble.runtime.assemble import build_runtime
from nimble.security.keys import hash_key
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
        "/v2/rerank",
        "/v1/classify",
        "/classify",
        "/v1/moderations",
        "/tokenize",
        "/detokenize",
        "/v1/responses",
        "/v1/responses/{response_id}",
        "/v1/messages",
        "/v1/messages/count_tokens",
        "/v1/models",
        "/v1/models/{model_id}",
        "/health",
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
        ("/v2/rerank", "RerankV2Request"),
        ("/tokenize", "TokenizeBody"),
        ("/detokenize", "DetokenizeBody"),
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
        ("/v2/rerank", "post", "RerankV2Response"),
        ("/tokenize", "post", "TokenizeResponse"),
        ("/detokenize", "post", "DetokenizeResponse"),
        ("/v1/models/{model_id}", "get", "ModelCard"),
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
    from nimble.api.routes import chat, completions, embeddings, health, ranking, service, tokenize

    for module in (chat, completions, embeddings, health, ranking, service, tokenize):
        for route in module.router.routes:
            for method in route.methods:  # type: ignore[attr-defined]
                # the document's path: `{model_id:path}` is `{model_id}` there
                assert method.lower() in paths[route.path_format]  # type: ignore[attr-defined]


async def test_models_retrieve_is_the_lists_entry(oai: openai.AsyncOpenAI) -> None:
    model = await oai.models.retrieve(FAKE_MODEL)
    (listed,) = (await oai.models.list()).data
    assert model.model_dump() == listed.model_dump()
    assert (model.id, model.object, model.owned_by) == (FAKE_MODEL, "model", "nimble")
    with pytest.raises(openai.NotFoundError) as missing:
        await oai.models.retrieve("no-such-model")
    assert (missing.value.code, missing.value.param) == ("model_not_found", "model")


async def test_model_ids_with_slashes_and_keys(tmp_path: Path) -> None:
    keys = tmp_path / "keys.yaml"
    keys.write_text(
        f"keys:\n  - id: one\n    sha256: {hash_key('k-one')}\n    models: [acme/tiny-chat]\n"
    )
    settings = Settings(model=("fake", "fake:acme/tiny-chat"), api_keys_file=keys)
    runtime, deployment = build_runtime(settings)
    app = create_app(settings, runtime=runtime, deployment=deployment, load_on_startup=False)
    await runtime.start()
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://nimble.test") as client:
        oai = openai.AsyncOpenAI(
            api_key="k-one", base_url="http://nimble.test/v1", http_client=client, max_retries=0
        )
        model = await oai.models.retrieve("acme/tiny-chat")
        assert model.id == "acme/tiny-chat"
        assert [m.id for m in (await oai.models.list()).data] == ["acme/tiny-chat"]
        # a model the key may not use is as absent as in its list
        with pytest.raises(openai.NotFoundError):
            await oai.models.retrieve(FAKE_MODEL)
        for path in ("/v1/models/acme/none", "/v1/models/acme/tiny-chat/x"):
            response = await client.get(path, headers={"Authorization": "Bearer k-one"})
            assert assert_openai_error(response, 404, "model")["code"] == "model_not_found"
        anonymous = await client.get("/v1/models/acme/tiny-chat")
        assert_openai_error(anonymous, 401, None)
    await runtime.stop()


async def test_vllm_health_is_readiness_with_an_empty_body(tmp_path: Path) -> None:
    keys = tmp_path / "keys.yaml"
    keys.write_text(f"keys:\n  - id: k\n    sha256: {hash_key('k')}\n")
    async with fake_service(load=False, api_keys_file=keys) as (runtime, client):
        loading = await client.get("/health")  # no key: probes never need one
        assert (loading.status_code, loading.content) == (503, b"")
        await runtime.start()
        ready = await client.get("/health")
        assert (ready.status_code, ready.content) == (200, b"")
        engine = runtime.models[FAKE_MODEL].engine
        engine.started = False  # type: ignore[attr-defined]  # as if its server died
        assert (await client.get("/health")).status_code == 503
        engine.started = True  # type: ignore[attr-defined]
        runtime.begin_drain()
        assert (await client.get("/health")).status_code == 503
        scraped = await client.get("/metrics", headers={"Authorization": "Bearer k"})
    assert 'endpoint="health",method="GET",status="200"' in scraped.text
    assert 'endpoint="health",method="GET",status="503"' in scraped.text


async def test_vllm_health_is_an_endpoint_of_the_allowlist() -> None:
    async with fake_service(endpoints=("chat",)) as (_, client):
        assert_openai_error(await client.get("/health"), 404, None)
        assert (await client.get("/v1/health/ready")).status_code == 200
