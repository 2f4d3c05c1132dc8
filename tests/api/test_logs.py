"""Logs: one JSON object per line with the request's fields; prompts and completions never
appear unless `log_prompts` says so."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator
from contextlib import contextmanager

import httpx

from nimble.api import create_app
from nimble.config import Settings
from nimble.observability.logging import configure_logging
from nimble.runtime.assemble import build_runtime
from tests.conftest import FAKE_MODEL, chat_body, fake_service

SECRET = "zebra-secret-prompt-words"


@contextmanager
def captured_json_logs() -> Iterator[io.StringIO]:
    """nimble's own JSON log setup, writing to a buffer (restored afterwards)."""
    root = logging.getLogger()
    saved = (root.handlers[:], root.level)
    configure_logging("debug", jsonl=True)
    buffer = io.StringIO()
    root.handlers[0].setStream(buffer)  # type: ignore[attr-defined]
    try:
        yield buffer
    finally:
        root.handlers[:], level = saved
        root.setLevel(level)


def lines(buffer: io.StringIO) -> list[dict[str, object]]:
    return [json.loads(line) for line in buffer.getvalue().splitlines()]


async def test_access_line_is_one_json_object_with_the_request_fields() -> None:
    async with fake_service() as (_, client):
        with captured_json_logs() as buffer:
            response = await client.post(
                "/v1/chat/completions", json=chat_body(), headers={"X-Request-Id": "req-42"}
            )
    usage = response.json()["usage"]
    entries = lines(buffer)  # every line parses as JSON
    access = [e for e in entries if e["logger"] == "nimble.access"]
    assert len(access) == 1
    entry = access[0]
    assert entry["level"] == "info"
    assert str(entry["time"]).endswith("+00:00")
    assert entry["request_id"] == "req-42"
    assert (entry["method"], entry["path"], entry["status"]) == (
        "POST",
        "/v1/chat/completions",
        200,
    )
    assert entry["model"] == FAKE_MODEL
    assert entry["prompt_tokens"] == usage["prompt_tokens"]
    assert entry["completion_tokens"] == usage["completion_tokens"]
    assert isinstance(entry["latency_ms"], float) and entry["latency_ms"] > 0


async def test_prompts_and_completions_are_not_logged_by_default() -> None:
    async with fake_service() as (_, client):
        with captured_json_logs() as buffer:
            answer = await client.post(
                "/v1/chat/completions",
                json=chat_body(messages=[{"role": "user", "content": SECRET}]),
            )
            await client.post("/v1/embeddings", json={"model": FAKE_MODEL, "input": SECRET})
    completion = answer.json()["choices"][0]["message"]["content"]
    text = buffer.getvalue()
    assert len(lines(buffer)) >= 2  # the capture did see the requests...
    assert SECRET not in text  # ...but not what was said
    assert completion not in text


async def test_log_prompts_setting_logs_them() -> None:
    settings = Settings(model=("fake",), log_prompts=True)
    runtime, deployment = build_runtime(settings)
    app = create_app(settings, runtime=runtime, deployment=deployment, load_on_startup=False)
    await runtime.start()
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
        with captured_json_logs() as buffer:
            answer = await client.post(
                "/v1/chat/completions",
                json=chat_body(messages=[{"role": "user", "content": SECRET}]),
            )
    await runtime.stop()
    completion = answer.json()["choices"][0]["message"]["content"]
    messages = [str(e["message"]) for e in lines(buffer)]
    assert any(SECRET in m for m in messages)
    assert any(completion in m for m in messages)


def test_httpx_lines_only_at_debug() -> None:
    """httpx writes a line per request at INFO (each call to an engine's own server, each
    proxied request): nimble's access line already has the request, so they show at DEBUG
    only."""
    root = logging.getLogger()
    saved = (root.handlers[:], root.level)
    try:
        configure_logging("info", jsonl=False)
        assert not logging.getLogger("httpx").isEnabledFor(logging.INFO)
        assert logging.getLogger("httpx").isEnabledFor(logging.WARNING)
        configure_logging("debug", jsonl=False)
        assert logging.getLogger("httpx").isEnabledFor(logging.DEBUG)
    finally:
        root.handlers[:], level = saved
        root.setLevel(level)
        logging.getLogger("httpx").setLevel(logging.NOTSET)
