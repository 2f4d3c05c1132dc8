"""GET /v1/manifest: the deployment record, built from the running objects, secrets out."""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest

from nimble.api import create_app
from nimble.api.endpoints import ENDPOINT_PATHS
from nimble.config import Settings, load_settings
from nimble.models import resolve_model
from nimble.models.hardware import detect_hardware
from nimble.runtime import Runtime
from nimble.runtime.assemble import runtime_config
from nimble.runtime.deployment import Deployment

SECRET = "hf_s3cr3t-token-that-must-never-leak"


async def record_of(settings: Settings, deployment: Deployment | None = None) -> Any:
    # the fake model serves whatever models the settings name (the default ones here)
    runtime = Runtime([resolve_model("fake")], runtime_config(settings))
    app = create_app(settings, runtime=runtime, deployment=deployment)
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as client,
    ):
        response = await client.get("/v1/manifest")
        assert response.status_code == 200
        assert SECRET not in response.text
        return response.json()


async def test_record_says_what_runs_and_redacts_secrets(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NIMBLE_HF_TOKEN", SECRET)
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", f"https://user:{SECRET}@collector:4318")
    settings = load_settings(endpoints="chat,models,manifest,metrics", log_prompts=False)
    assert settings.hf_token is not None and settings.hf_token.get_secret_value() == SECRET
    record = await record_of(settings, Deployment(settings, detect_hardware(), {}))
    assert record["schema"] == "nimble.deployment/v1"
    assert record["nimble"]["version"]
    assert record["configuration"]["hf_token"] == "**********"
    assert record["tracing"] == {
        "enabled": True,
        "exporter": "otlp/http",
        "endpoint": "https://***@collector:4318",
        "service_name": "nimble",
    }
    assert record["endpoints"] == {
        name: list(ENDPOINT_PATHS[name]) for name in ("chat", "models", "manifest", "metrics")
    }
    assert record["health"]["ready"] == "/v1/health/ready"
    assert record["auth"]["mode"] == "none"
    assert record["hardware"]["cpu_cores"] >= 1
    tools = record["tool_calling"]
    assert (tools["supported"], tools["enabled"], tools["parser_setting"]) == (True, True, None)
    # not loaded in this test: whether its template shows tools is not known yet
    assert tools["models"] == {"fake-model": {"parser": "hermes", "template_renders_tools": None}}
    assert "response_format.json_schema" in tools["structured_output"]
    (model,) = record["models"]
    assert model["id"] == "fake-model" and model["engine"]["name"] == "fake"
    assert json.dumps(record).count(SECRET) == 0


async def test_every_setting_is_in_the_record() -> None:
    record = await record_of(Settings())
    assert set(record["configuration"]) == set(Settings.model_fields)
