"""The audit log behind the app: a thousand concurrent requests give a thousand chained lines
(none lost), whose fields match the responses; probes are not logged; refusals are."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import httpx
import yaml

from nimble.security.audit import verify
from nimble.security.keys import hash_key
from tests.conftest import FAKE_MODEL, chat_body, fake_service


def read_log(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_bytes().splitlines()]


async def test_a_thousand_concurrent_requests_give_a_thousand_chained_lines(
    tmp_path: Path,
) -> None:
    path = tmp_path / "audit.jsonl"
    async with fake_service(audit_log=path, max_running=16, max_waiting=1000) as (_, client):

        async def call(n: int) -> httpx.Response:
            kind = n % 10
            if kind < 7:
                return await client.post(
                    "/v1/chat/completions", json=chat_body(max_tokens=1 + n % 5)
                )
            if kind < 9:
                return await client.post(
                    "/v1/embeddings", json={"model": FAKE_MODEL, "input": f"text {n}"}
                )
            if n % 20 == 9:
                return await client.get("/v1/models")
            return await client.post("/v1/chat/completions", json=chat_body(model="no-such"))

        async def probe() -> None:
            for _ in range(5):
                assert (await client.get("/v1/health/live")).status_code == 200
                assert (await client.get("/v1/health/ready")).status_code == 200
                assert (await client.get("/health")).status_code == 200  # vLLM's
                await asyncio.sleep(0)

        responses, *_ = await asyncio.gather(
            asyncio.gather(*(call(n) for n in range(1000))), probe(), probe()
        )

    result = verify(path)
    assert result.ok, [str(p) for p in result.problems]
    assert result.lines == 1000  # every request, no probe

    lines = read_log(path)
    by_id = {line["request_id"]: line for line in lines}
    assert len(by_id) == 1000
    statuses: dict[int, int] = {}
    for response in responses:
        line = by_id[response.headers["x-request-id"]]
        assert line["status"] == response.status_code
        statuses[response.status_code] = statuses.get(response.status_code, 0) + 1
        assert line["client"].startswith("127.0.0.1:")
        assert line["key_id"] is None  # keys are off
        assert line["latency_ms"] >= 0
        assert line["time"].endswith("Z")
        if line["path"] == "/v1/chat/completions" and response.status_code == 200:
            usage = response.json()["usage"]
            assert line["endpoint"] == "chat" and line["model"] == FAKE_MODEL
            assert line["prompt_tokens"] == usage["prompt_tokens"] > 0
            assert line["completion_tokens"] == usage["completion_tokens"] > 0
        elif line["path"] == "/v1/embeddings":
            assert response.status_code == 200
            assert line["endpoint"] == "embeddings" and line["model"] == FAKE_MODEL
            assert line["prompt_tokens"] == response.json()["usage"]["prompt_tokens"] > 0
            assert line["completion_tokens"] == 0
        elif line["path"] == "/v1/models":
            assert line["method"] == "GET" and line["endpoint"] == "models"
            assert line["prompt_tokens"] == line["completion_tokens"] == 0
    assert statuses == {200: 950, 404: 50}


async def test_refused_requests_are_logged_with_their_key(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    key = "nb-audit-test-key-0123456789abcdef0123456789"
    key_file = tmp_path / "keys.yaml"
    key_file.write_text(
        yaml.safe_dump({"keys": [{"id": "team-a", "sha256": hash_key(key), "endpoints": ["chat"]}]})
    )
    async with fake_service(
        audit_log=path, api_keys_file=key_file, max_running=1, max_waiting=1, token_delay=0.01
    ) as (_, client):
        auth = {"Authorization": f"Bearer {key}"}
        missing = await client.post("/v1/chat/completions", json=chat_body())
        wrong = await client.post(
            "/v1/chat/completions", json=chat_body(), headers={"Authorization": "Bearer nb-x"}
        )
        denied = await client.post(
            "/v1/embeddings", json={"model": FAKE_MODEL, "input": "x"}, headers=auth
        )
        unknown = await client.get("/v1/nothing-here", headers=auth)
        burst = await asyncio.gather(
            *(
                client.post("/v1/chat/completions", json=chat_body(max_tokens=5), headers=auth)
                for _ in range(6)
            )
        )
    responses = [missing, wrong, denied, unknown, *burst]
    assert [r.status_code for r in responses[:4]] == [401, 401, 403, 404]
    assert {r.status_code for r in burst} == {200, 429}

    assert verify(path).ok
    lines = read_log(path)
    assert len(lines) == len(responses)
    by_id = {line["request_id"]: line for line in lines}
    for response in responses:
        line = by_id[response.headers["x-request-id"]]
        assert line["status"] == response.status_code
        assert line["key_id"] == (None if response.status_code == 401 else "team-a")
    assert by_id[unknown.headers["x-request-id"]]["endpoint"] is None


async def test_a_restarted_service_continues_the_chain(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    for _ in range(2):
        async with fake_service(audit_log=path) as (_, client):
            for _ in range(3):
                assert (await client.get("/v1/models")).status_code == 200
    result = verify(path)
    assert result.ok and result.lines == 6
