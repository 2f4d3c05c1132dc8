"""Models end to end: several models from a config file, routing by `model`, the
deployment record of a real server (and `nimble inspect --url`), profile overrides and
offline failures that stop `nimble serve` with one clear line."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
import yaml

from nimble.models.resolve import resolve_model

pytestmark = [pytest.mark.e2e, pytest.mark.models]

SECRET = "hf_e2e-secret-never-in-the-record"


def test_several_models_from_a_config_file_and_the_deployment_record(
    nimble_process: type, tmp_path: Path
) -> None:
    gguf = resolve_model("smollm2-135m-instruct").weights
    config = tmp_path / "nimble.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "model": ["smollm2-135m-instruct", str(gguf), "all-minilm-l6-v2"],
                "served_model_name": ["chat-a", "chat-b", "embed"],
                "max_running": 2,
            }
        )
    )
    env = {"NIMBLE_CACHE_PATH": str(tmp_path / "cache"), "NIMBLE_HF_TOKEN": SECRET}
    server = nimble_process(["--config", str(config)], env=env).wait_ready()
    client = server.client()
    assert sorted(m.id for m in client.models.list()) == ["chat-a", "chat-b", "embed"]
    for model in ("chat-a", "chat-b"):
        answer = client.chat.completions.create(
            model=model, messages=[{"role": "user", "content": "Hi"}], max_tokens=4
        )
        assert answer.model == model and answer.usage is not None
    assert len(client.embeddings.create(model="embed", input="x").data[0].embedding) == 384

    response = httpx.get(server.base_url + "/v1/manifest")
    assert response.status_code == 200 and SECRET not in response.text
    record = response.json()
    models = {m["id"]: m for m in record["models"]}
    a, b, embed = models["chat-a"], models["chat-b"], models["embed"]
    assert a["profile"]["name"] == "llamacpp-q4_1-cpu"
    assert "fit in" in a["profile"]["reason"]
    assert a["files"][0]["verified"] is True
    assert a["files"][0]["sha256"] == (
        "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
    )
    assert a["engine"]["name"] == "llamacpp" and a["engine"]["version"]
    # a local file: a generated profile, its hash measured by the engine
    assert b["profile"]["name"] == "llamacpp-gguf-cpu"
    assert b["files"][0]["sha256"] == a["files"][0]["sha256"]
    assert b["files"][0]["verified"] is False
    assert embed["profile"]["name"] == "onnx-int8-cpu" and embed["state"] == "loaded"
    assert record["configuration"]["hf_token"] == "**********"
    assert record["configuration"]["max_running"] == 2
    assert record["state"] == "ready"

    metadata = httpx.get(server.base_url + "/v1/metadata").json()
    assert [m["profile"] for m in metadata["models"]] == [
        "llamacpp-q4_1-cpu",
        "llamacpp-gguf-cpu",
        "onnx-int8-cpu",
    ]
    assert metadata["models"][0]["profile_id"] == a["profile"]["id"]
    assert "CPU cores" in metadata["hardware"]

    inspected = subprocess.run(
        [sys.executable, "-m", "nimble.cli.main", "inspect", "--url", server.base_url],
        capture_output=True,
        text=True,
        check=True,
    )
    remote = json.loads(inspected.stdout)
    assert [m["profile"]["id"] for m in remote["models"]] == [
        m["profile"]["id"] for m in record["models"]
    ]
    assert server.terminate() == 0


def serve_fails(args: list[str], env: dict[str, str]) -> tuple[int, str]:
    done = subprocess.run(
        [sys.executable, "-m", "nimble.cli.main", "serve", "--port", "0", *args],
        capture_output=True,
        text=True,
        env={**os.environ, **env},
        timeout=60,
    )
    return done.returncode, done.stderr


def test_a_profile_that_cannot_run_here_is_refused(tmp_path: Path) -> None:
    code, err = serve_fails(
        ["--model", "smollm2-135m-instruct"],
        {"NIMBLE_MODEL_PROFILE": "vllm-bf16-tp1", "NIMBLE_CACHE_PATH": str(tmp_path)},
    )
    assert code == 2
    assert err.strip().splitlines()[-1] == (
        "nimble: profile vllm-bf16-tp1 of smollm2-135m-instruct cannot run here: "
        "needs 1 NVIDIA GPU(s), found none"
    )


def test_offline_with_a_file_missing_from_the_cache(tmp_path: Path) -> None:
    code, err = serve_fails(
        ["--model", "qwen2.5-0.5b-instruct", "--offline"], {"NIMBLE_CACHE_PATH": str(tmp_path)}
    )
    assert code == 1
    last = err.strip().splitlines()[-1]
    assert last.startswith("nimble: cannot serve: ")
    assert "qwen2.5-0.5b-instruct-q4_k_m.gguf" in last and "NIMBLE_OFFLINE" in last
