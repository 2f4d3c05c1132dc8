"""Shared fixtures: an app on the fake engine, driven through httpx's ASGI transport."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import httpx
import openai
import pytest

from nimble.api import create_app
from nimble.config import Settings
from nimble.observability.tracing import RequestTracing
from nimble.runtime import Runtime
from nimble.runtime.assemble import build_runtime

FAKE_MODEL = "fake-model"


@asynccontextmanager
async def fake_service(
    *,
    max_running: int = 4,
    max_waiting: int = 8,
    token_delay: float = 0.0,
    max_body_bytes: int = 4 * 1024 * 1024,
    load: bool = True,
    tracing: RequestTracing | None = None,
    **settings: Any,
) -> AsyncIterator[tuple[Runtime, httpx.AsyncClient]]:
    """The fake model behind the app, built from settings as `nimble serve` builds it;
    `settings` are extra Settings fields (keys, CORS...)."""
    config = Settings(
        model=("fake",),
        max_running=max_running,
        max_waiting=max_waiting,
        fake_token_delay=token_delay,
        max_body_bytes=max_body_bytes,
        **settings,
    )
    runtime, deployment = build_runtime(config)
    app = create_app(
        config, runtime=runtime, deployment=deployment, load_on_startup=False, tracing=tracing
    )
    if load:
        await runtime.start()
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://nimble.test") as client:
        yield runtime, client
    await runtime.stop()


@pytest.fixture
async def service() -> AsyncIterator[tuple[Runtime, httpx.AsyncClient]]:
    async with fake_service() as pair:
        yield pair


@pytest.fixture
async def client(service: tuple[Runtime, httpx.AsyncClient]) -> httpx.AsyncClient:
    return service[1]


@pytest.fixture
def oai(client: httpx.AsyncClient) -> openai.AsyncOpenAI:
    """The official SDK, over the in-process ASGI transport."""
    return openai.AsyncOpenAI(
        api_key="unused", base_url="http://nimble.test/v1", http_client=client, max_retries=0
    )


def chat_body(**overrides: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "model": FAKE_MODEL,
        "messages": [{"role": "user", "content": "Say something"}],
    }
    body.update(overrides)
    return body


ErrorCheck = Callable[[httpx.Response, int, str | None], dict[str, Any]]


def assert_openai_error(response: httpx.Response, status: int, param: str | None) -> dict[str, Any]:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"}
    error = body["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["message"]
    assert error["param"] == param
    return dict(error)
