"""CORS: off by default; with origins set, preflights answer without a key, allowed
origins get the headers (errors included), others get none."""

from __future__ import annotations

from pathlib import Path

import yaml

from nimble.security.keys import hash_key
from tests.conftest import chat_body, fake_service

ORIGIN = "https://app.example"
PREFLIGHT = {
    "Origin": ORIGIN,
    "Access-Control-Request-Method": "POST",
    "Access-Control-Request-Headers": "authorization, content-type",
}


async def test_off_by_default() -> None:
    async with fake_service() as (_, client):
        answer = await client.post(
            "/v1/chat/completions", json=chat_body(), headers={"Origin": ORIGIN}
        )
        preflight = await client.options("/v1/chat/completions", headers=PREFLIGHT)
    assert answer.status_code == 200
    assert not any(h.startswith("access-control-") for h in answer.headers)
    assert preflight.status_code == 405
    assert not any(h.startswith("access-control-") for h in preflight.headers)


async def test_allowed_and_refused_origins() -> None:
    async with fake_service(cors_allow_origins=(ORIGIN,), cors_max_age=120) as (_, client):
        preflight = await client.options("/v1/chat/completions", headers=PREFLIGHT)
        assert preflight.status_code == 200
        assert preflight.headers["access-control-allow-origin"] == ORIGIN
        assert "POST" in preflight.headers["access-control-allow-methods"]
        allowed = preflight.headers["access-control-allow-headers"].lower()
        assert "authorization" in allowed and "content-type" in allowed
        assert preflight.headers["access-control-max-age"] == "120"

        answer = await client.post(
            "/v1/chat/completions", json=chat_body(), headers={"Origin": ORIGIN}
        )
        assert answer.headers["access-control-allow-origin"] == ORIGIN
        assert "x-request-id" in answer.headers["access-control-expose-headers"].lower()

        stranger = {**PREFLIGHT, "Origin": "https://evil.example"}
        refused = await client.options("/v1/chat/completions", headers=stranger)
        assert refused.status_code == 400
        assert "access-control-allow-origin" not in refused.headers
        plain = await client.post(
            "/v1/chat/completions", json=chat_body(), headers={"Origin": "https://evil.example"}
        )
        assert "access-control-allow-origin" not in plain.headers

        method = {**PREFLIGHT, "Access-Control-Request-Method": "DELETE"}
        assert (await client.options("/v1/models", headers=method)).status_code == 400


async def test_with_api_keys(tmp_path: Path) -> None:
    keys = tmp_path / "keys.yaml"
    keys.write_text(yaml.safe_dump({"keys": [{"id": "web", "sha256": hash_key("nb-web")}]}))
    async with fake_service(cors_allow_origins=(ORIGIN,), api_keys_file=keys) as (_, client):
        preflight = await client.options("/v1/chat/completions", headers=PREFLIGHT)
        assert preflight.status_code == 200  # a browser sends no key with a preflight
        denied = await client.post(
            "/v1/chat/completions", json=chat_body(), headers={"Origin": ORIGIN}
        )
        assert denied.status_code == 401
        # the page can read why it was refused
        assert denied.headers["access-control-allow-origin"] == ORIGIN
        ok = await client.post(
            "/v1/chat/completions",
            json=chat_body(),
            headers={"Origin": ORIGIN, "Authorization": "Bearer nb-web"},
        )
        assert ok.status_code == 200 and ok.headers["access-control-allow-origin"] == ORIGIN


async def test_an_anthropic_browser_client_passes_the_preflight() -> None:
    """Anthropic's SDK sends the key in x-api-key, with anthropic-version."""
    headers = {**PREFLIGHT, "Access-Control-Request-Headers": "x-api-key, anthropic-version"}
    async with fake_service(cors_allow_origins=(ORIGIN,)) as (_, client):
        preflight = await client.options("/v1/messages", headers=headers)
    assert preflight.status_code == 200, preflight.text
    allowed = preflight.headers["access-control-allow-headers"].lower()
    assert "x-api-key" in allowed and "anthropic-version" in allowed
