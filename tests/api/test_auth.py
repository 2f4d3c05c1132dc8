"""API keys: 401 without a valid key, 403 outside its scopes, 429 over its limits, every route
but the health probes behind a key, reload without a restart; through httpx and the SDK."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
import yaml
from fastapi import FastAPI
from fastapi.routing import APIRoute

from nimble.api import create_app
from nimble.api.endpoints import ENDPOINT_PATHS, HEALTH_PATHS
from nimble.config import Settings
from nimble.runtime.assemble import build_runtime
from nimble.security.keys import hash_key
from tests.conftest import FAKE_MODEL, assert_openai_error, chat_body

OTHER_MODEL = "other-model"
ADMIN = "nb-admin-key-0123456789abcdef0123456789abcdef"


def write_keys(path: Path, keys: dict[str, dict[str, Any]]) -> Path:
    """{key: entry without sha256} -> a key file holding only the hashes."""
    entries = [{**entry, "sha256": hash_key(key)} for key, entry in keys.items()]
    path.write_text(yaml.safe_dump({"keys": entries}))
    return path


@asynccontextmanager
async def keyed_service(
    tmp_path: Path,
    keys: dict[str, dict[str, Any]],
    *,
    token_delay: float = 0.0,
    **settings: Any,
) -> AsyncIterator[tuple[FastAPI, httpx.AsyncClient]]:
    """Two fake models behind an app with API keys on."""
    key_file = write_keys(tmp_path / "keys.yaml", {ADMIN: {"id": "admin"}, **keys})
    config = Settings(
        model=("fake", f"fake:{OTHER_MODEL}"),
        api_keys_file=key_file,
        fake_token_delay=token_delay,
        max_running=4,
        max_waiting=8,
        **settings,
    )
    runtime, deployment = build_runtime(config)
    app = create_app(config, runtime=runtime, deployment=deployment, load_on_startup=False)
    await runtime.start()
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://nimble.test") as client:
        yield app, client
    await runtime.stop()


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def sdk(client: httpx.AsyncClient, key: str) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(
        api_key=key, base_url="http://nimble.test/v1", http_client=client, max_retries=0
    )


async def test_every_route_but_health_needs_a_key(tmp_path: Path) -> None:
    async with keyed_service(tmp_path, {}) as (app, client):
        routes = [
            (method, route.path)
            for route in app.routes
            if isinstance(route, APIRoute)
            for method in sorted(route.methods)
        ]
        routes.append(("GET", "/openapi.json"))
        assert len(routes) >= 11  # the walk must actually see the route table
        checked = 0
        public = {*HEALTH_PATHS, *ENDPOINT_PATHS["health"]}  # vLLM's /health: no key either
        console = set(ENDPOINT_PATHS["ui"])  # the console's files: no key (test_console.py)
        for method, path in routes:
            anonymous = await client.request(method, path, json={})
            if path in console:
                assert anonymous.status_code != 401, path
                continue
            if path in public:
                assert anonymous.status_code == 200, path
                continue
            if path.startswith("/v1/messages"):  # Anthropic's shape there (test_messages.py)
                error = anonymous.json()["error"]
                assert (anonymous.status_code, error["type"]) == (401, "authentication_error")
            else:
                assert_openai_error(anonymous, 401, None)
            assert anonymous.headers["www-authenticate"] == "Bearer"
            keyed = await client.request(method, path, json={}, headers=bearer(ADMIN))
            assert keyed.status_code != 401, (method, path)
            checked += 1
        assert checked == len(routes) - len(public) - len(console)
        # unknown paths too: a stranger learns nothing about the route table
        assert (await client.get("/v1/secret-admin")).status_code == 401
        assert (await client.get("/v1/secret-admin", headers=bearer(ADMIN))).status_code == 404


async def test_missing_wrong_and_malformed_keys(tmp_path: Path) -> None:
    async with keyed_service(tmp_path, {}) as (_, client):
        missing = await client.post("/v1/chat/completions", json=chat_body())
        assert assert_openai_error(missing, 401, None)["code"] == "missing_api_key"
        wrong = await client.post("/v1/chat/completions", json=chat_body(), headers=bearer("nb-x"))
        error = assert_openai_error(wrong, 401, None)
        assert (error["type"], error["code"]) == ("authentication_error", "invalid_api_key")
        assert "nb-x" not in wrong.text  # the presented key is never echoed
        basic = await client.post(
            "/v1/chat/completions", json=chat_body(), headers={"Authorization": f"Basic {ADMIN}"}
        )
        assert_openai_error(basic, 401, None)
        ok = await client.post("/v1/chat/completions", json=chat_body(), headers=bearer(ADMIN))
        assert ok.status_code == 200
        with pytest.raises(openai.AuthenticationError):
            await sdk(client, "nb-wrong").models.list()


async def test_scopes_models_endpoints_tools(tmp_path: Path) -> None:
    keys = {
        "nb-embed-only": {"id": "embedder", "endpoints": ["embeddings", "models"]},
        "nb-other-model": {"id": "other", "models": [OTHER_MODEL]},
        "nb-no-tools": {"id": "notools", "tools": False},
    }
    async with keyed_service(tmp_path, keys) as (_, client):
        embedder = sdk(client, "nb-embed-only")
        vectors = await embedder.embeddings.create(model=FAKE_MODEL, input="hi")
        assert len(vectors.data) == 1
        with pytest.raises(openai.PermissionDeniedError) as denied:
            await embedder.chat.completions.create(
                model=FAKE_MODEL, messages=[{"role": "user", "content": "hi"}]
            )
        assert denied.value.code == "endpoint_denied"

        other = sdk(client, "nb-other-model")
        listed = [m.id for m in (await other.models.list()).data]
        assert listed == [OTHER_MODEL]
        for path, body in (
            ("/v1/chat/completions", chat_body()),
            ("/v1/completions", {"model": FAKE_MODEL, "prompt": "hi"}),
            ("/v1/embeddings", {"model": FAKE_MODEL, "input": "hi"}),
        ):
            response = await client.post(path, json=body, headers=bearer("nb-other-model"))
            error = assert_openai_error(response, 403, "model")
            assert (error["type"], error["code"]) == ("permission_error", "model_denied")
        allowed = await client.post(
            "/v1/chat/completions",
            json=chat_body(model=OTHER_MODEL),
            headers=bearer("nb-other-model"),
        )
        assert allowed.status_code == 200

        tool = {"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}
        no_tools = await client.post(
            "/v1/chat/completions", json=chat_body(tools=[tool]), headers=bearer("nb-no-tools")
        )
        assert assert_openai_error(no_tools, 403, "tools")["code"] == "tools_denied"
        plain = await client.post(
            "/v1/chat/completions", json=chat_body(), headers=bearer("nb-no-tools")
        )
        assert plain.status_code == 200
        flat = {"type": "function", "name": "f", "parameters": {"type": "object"}}
        no_tools = await client.post(
            "/v1/responses",
            json={"model": FAKE_MODEL, "input": "hi", "tools": [flat]},
            headers=bearer("nb-no-tools"),
        )
        assert assert_openai_error(no_tools, 403, "tools")["code"] == "tools_denied"
        # a key that may use tools gets its call
        called = await client.post(
            "/v1/chat/completions",
            json=chat_body(tools=[tool], tool_choice="required"),
            headers=bearer(ADMIN),
        )
        assert called.json()["choices"][0]["message"]["tool_calls"][0]["function"]["name"] == "f"


async def test_requests_per_minute(tmp_path: Path) -> None:
    keys = {"nb-rpm": {"id": "rpm", "limits": {"requests_per_minute": 2}}}
    async with keyed_service(tmp_path, keys) as (_, client):
        for _ in range(2):
            ok = await client.get("/v1/models", headers=bearer("nb-rpm"))
            assert ok.status_code == 200
        limited = await client.get("/v1/models", headers=bearer("nb-rpm"))
        error = assert_openai_error(limited, 429, None)
        assert (error["type"], error["code"]) == ("rate_limit_error", "rate_limit_exceeded")
        assert 1 <= int(limited.headers["retry-after"]) <= 30  # 1 request refills in 30 s
        # other keys are not affected
        assert (await client.get("/v1/models", headers=bearer(ADMIN))).status_code == 200
        with pytest.raises(openai.RateLimitError):
            await sdk(client, "nb-rpm").models.list()


async def test_tokens_per_minute(tmp_path: Path) -> None:
    keys = {"nb-tpm": {"id": "tpm", "limits": {"tokens_per_minute": 10}}}
    async with keyed_service(tmp_path, keys) as (_, client):
        first = await client.post(
            "/v1/chat/completions", json=chat_body(), headers=bearer("nb-tpm")
        )
        assert first.status_code == 200
        assert first.json()["usage"]["total_tokens"] > 10  # the first one may overdraw...
        second = await client.post(
            "/v1/chat/completions", json=chat_body(), headers=bearer("nb-tpm")
        )
        error = assert_openai_error(second, 429, None)  # ...then the key waits for the refill
        assert "tokens per minute" in error["message"]
        assert int(second.headers["retry-after"]) >= 1


async def test_metrics_access_is_a_setting(tmp_path: Path) -> None:
    keys = {"nb-chat": {"id": "chat", "endpoints": ["chat"]}}
    async with keyed_service(tmp_path, keys) as (_, client):
        assert (await client.get("/metrics")).status_code == 401
        assert (await client.get("/v1/metrics", headers=bearer("nb-chat"))).status_code == 403
        assert (await client.get("/v1/metrics", headers=bearer(ADMIN))).status_code == 200
    async with keyed_service(tmp_path, keys, metrics_require_key=False) as (_, client):
        for path in ("/metrics", "/v1/metrics"):
            assert (await client.get(path)).status_code == 200
        assert (await client.get("/v1/models")).status_code == 401


async def test_keys_reload_without_restart(tmp_path: Path) -> None:
    async with keyed_service(tmp_path, {"nb-old": {"id": "old"}}) as (app, client):
        assert (await client.get("/v1/models", headers=bearer("nb-old"))).status_code == 200
        key_file = tmp_path / "keys.yaml"
        write_keys(key_file, {"nb-new": {"id": "new"}})
        assert app.state.keys.reload()
        assert (await client.get("/v1/models", headers=bearer("nb-old"))).status_code == 401
        assert (await client.get("/v1/models", headers=bearer("nb-new"))).status_code == 200
        # a broken file keeps the keys in use (and says so in the log)
        key_file.write_text("keys: [{id: broken}]")
        assert not app.state.keys.reload()
        assert (await client.get("/v1/models", headers=bearer("nb-new"))).status_code == 200


async def test_concurrent_requests(tmp_path: Path) -> None:
    keys = {"nb-one": {"id": "one", "limits": {"concurrent_requests": 1}}}
    async with keyed_service(tmp_path, keys, token_delay=0.05) as (app, client):
        admission = app.state.runtime.models[FAKE_MODEL].admission

        async def hold() -> asyncio.Task[httpx.Response]:
            task = asyncio.create_task(
                client.post("/v1/chat/completions", json=chat_body(), headers=bearer("nb-one"))
            )
            while admission.running == 0:  # poll until it holds the key's only slot
                assert not task.done(), task.result().text
                await asyncio.sleep(0.002)
            return task

        first = await hold()
        second = await client.post(
            "/v1/chat/completions", json=chat_body(), headers=bearer("nb-one")
        )
        assert_openai_error(second, 429, None)
        assert "limit is 1" in second.json()["error"]["message"]
        assert second.headers["retry-after"] == "1"
        assert (await first).status_code == 200  # a finished request gives its slot back...

        dropped = await hold()
        dropped.cancel()  # ...and so does a client that goes away
        with pytest.raises(asyncio.CancelledError):
            await dropped
        again = await client.post(
            "/v1/chat/completions", json=chat_body(), headers=bearer("nb-one")
        )
        assert again.status_code == 200
