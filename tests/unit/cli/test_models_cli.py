"""`nimble list-profiles | download | create-model-store | inspect` in-process, on the
catalog, with fake machines described in files."""

from __future__ import annotations

import hashlib
import json
import os
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from nimble.cli.main import app
from nimble.models.resolve import resolve_model
from tests.support.hf_mirror import Mirror, mirror_fixture  # noqa: F401 (the fixture)

H100X8 = """cpu_cores: 96
ram_gb: 1024
cpu_features: [avx2, avx512f]
gpus:
""" + "".join(
    f"  - {{index: {i}, name: NVIDIA H100 80GB HBM3, memory_gb: 80, compute_capability: 9.0}}\n"
    for i in range(8)
)
LAPTOP = "cpu_cores: 8\nram_gb: 16\ncpu_features: [avx2]\n"
OLD_CPU = "cpu_cores: 4\nram_gb: 8\ncpu_features: [sse4_2]\n"


@pytest.fixture
def env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    for name in list(os.environ):
        if name.startswith("NIMBLE_"):
            monkeypatch.delenv(name)
    return {"NIMBLE_CACHE_PATH": str(tmp_path / "cache"), "COLUMNS": "200"}


def machine(tmp_path: Path, text: str) -> str:
    path = tmp_path / "machine.yaml"
    path.write_text(text)
    return str(path)


def run(args: list[str], env: dict[str, str]) -> tuple[int, str]:
    result = CliRunner().invoke(app, args, env=env)
    return result.exit_code, result.output


def test_list_profiles_groups_and_marks_the_selected(tmp_path: Path, env: dict[str, str]) -> None:
    code, out = run(
        ["list-profiles", "llama-3.1-8b-instruct", "--hardware-file", machine(tmp_path, LAPTOP)],
        env,
    )
    assert code == 0, out
    assert out.startswith("Hardware: 8 CPU cores (avx2), 16 GB RAM, no GPU (file ")
    lines = out.splitlines()
    # four llama.cpp slots of 32768 tokens each (17 GB of KV cache) do not fit in 12.8 GB
    runnable = lines.index("  Runnable with less context:")
    not_runnable = lines.index("  Not runnable:")
    assert runnable < not_runnable
    assert lines[runnable + 1].startswith("   * llamacpp-q4_k_m-cpu")
    assert "only 13056 of 32768 tokens of context x 4 slots fit in 12.8 GB of RAM" in out
    assert "vllm-bf16-tp1" in out and "needs 1 NVIDIA GPU(s), found none" in out


def test_list_profiles_json_on_a_gpu_box(tmp_path: Path, env: dict[str, str]) -> None:
    code, out = run(
        [
            "list-profiles",
            "llama-3.3-70b-instruct",
            "smollm2-135m-instruct",
            "--json",
            "--hardware-file",
            machine(tmp_path, H100X8),
            "--engine-command",
            "true",  # stands for an installed `vllm`
        ],
        env,
    )
    assert code == 0, out
    report = json.loads(out)
    assert len(report["hardware"]["gpus"]) == 8
    llama = report["models"][0]
    selected = [p for p in llama["profiles"] if p["selected"]]
    assert [p["name"] for p in selected] == ["vllm-bf16-tp8"]
    assert selected[0]["id"] == llama["selected"]
    assert {p["status"] for p in llama["profiles"]} == {"runnable"}


def test_list_profiles_with_less_context_and_nothing_runnable(
    tmp_path: Path, env: dict[str, str]
) -> None:
    small = machine(tmp_path, "cpu_cores: 4\nram_gb: 10\ncpu_features: [avx2]\n")
    code, out = run(["list-profiles", "llama-3.1-8b-instruct", "--hardware-file", small], env)
    assert code == 0
    assert (
        "  Runnable with less context:" in out and "of 32768 tokens of context x 4 slots fit" in out
    )
    code, out = run(
        ["list-profiles", "llama-3.1-8b-instruct", "--hardware-file", machine(tmp_path, OLD_CPU)],
        env,
    )
    assert code == 0
    assert "CPU lacks avx2" in out and "none selected: no profile of" in out


def test_list_profiles_of_an_unknown_model(env: dict[str, str]) -> None:
    code, out = run(["list-profiles", "no-such-model"], env)
    assert code == 2
    assert "no-such-model: no such file or folder, and not a catalog model" in out


def test_download_of_packaged_weights_verifies_them(env: dict[str, str]) -> None:
    code, out = run(["download", "all-minilm-l6-v2", "--profile", "onnx-int8-cpu"], env)
    assert code == 0, out
    assert "all-minilm-l6-v2 onnx-int8-cpu" in out
    assert "ok model.onnx -> " in out and "sha256 8199be6f699a395f" in out
    assert "ok tokenizer.json" in out


def test_download_offline_names_the_missing_file(env: dict[str, str]) -> None:
    code, out = run(
        ["download", "qwen2.5-0.5b-instruct", "--profile", "llamacpp-q4_k_m-cpu", "--offline"],
        {**env, "NIMBLE_HF_ENDPOINT": "http://127.0.0.1:9"},
    )
    assert code == 1
    assert "failed qwen2.5-0.5b-instruct-q4_k_m.gguf" in out
    assert "NIMBLE_OFFLINE" in out


def test_download_refuses_profile_and_all_together(env: dict[str, str]) -> None:
    code, out = run(["download", "all-minilm-l6-v2", "--profile", "x", "--all"], env)
    assert code == 2 and "give --profile or --all, not both" in out


def test_create_model_store_writes_a_folder_an_engine_opens(
    tmp_path: Path, env: dict[str, str]
) -> None:
    folder = tmp_path / "store"
    code, out = run(["create-model-store", "--profile", "onnx-int8-cpu", str(folder)], env)
    assert code == 0, out
    assert {p.name for p in folder.iterdir()} == {"model.onnx", "tokenizer.json"}
    catalog = resolve_model("all-minilm-l6-v2")
    assert (folder / "model.onnx").read_bytes() == catalog.weights.read_bytes()
    spec = resolve_model(str(folder))  # the folder is a model nimble serves as it is
    assert spec.engine == "onnx" and spec.weights == folder / "model.onnx"
    code, out = run(["create-model-store", "--profile", "nope", str(folder)], env)
    assert code == 2 and "no catalog model has a profile 'nope'" in out
    # the same name in several models needs --model
    code, out = run(["create-model-store", "--profile", "vllm-bf16-tp1", str(folder)], env)
    assert code == 2 and "exists for several models" in out


def test_inspect_prints_the_record_without_serving(env: dict[str, str]) -> None:
    code, out = run(["inspect", "--model", "all-minilm-l6-v2"], env)
    assert code == 0, out
    record = json.loads(out)
    (model,) = record["models"]
    assert model["profile"]["name"] == "onnx-int8-cpu"
    assert model["files"][0]["sha256"].startswith("8199be6f")
    assert record["hardware"]["source"] == "detected"


def test_inspect_lists_the_adapters_with_source_sha256_and_base(
    env: dict[str, str], tmp_path: Path
) -> None:
    adapter = tmp_path / "support.gguf"
    adapter.write_bytes(b"adapter weights")
    code, out = run(["inspect", "--model", "fake", "--lora", f"support={adapter}"], env)
    assert code == 0, out
    (served,) = json.loads(out)["adapters"]["served"]
    assert (served["name"], served["base"], served["source"], served["sha256"]) == (
        "support",
        "fake-model",
        str(adapter),
        hashlib.sha256(b"adapter weights").hexdigest(),
    )
    code, out = run(["inspect", "--model", "fake", "--lora", f"support={tmp_path}/none"], env)
    assert code == 2 and "neither a GGUF adapter file nor a PEFT adapter folder" in out


def test_inspect_states_each_key_by_its_ref_and_refuses_a_broken_key_file(
    env: dict[str, str], tmp_path: Path
) -> None:
    keys = tmp_path / "keys.yaml"
    digest = hashlib.sha256(b"nb-claims-secret").hexdigest()
    entry = {
        "id": "acme-claims",
        "sha256": digest,
        "purpose": "claims-triage-agent",
        "tools": {"declare": ["lookup_claim", "send_email"], "call": ["lookup_claim"]},
        "limits": {"concurrent_requests": 2},
    }
    keys.write_text(yaml.safe_dump({"keys": [entry]}))
    args = ["inspect", "--model", "fake", "--api-keys-file", str(keys)]
    code, out = run(args, env)
    assert code == 0, out
    auth = json.loads(out)["auth"]
    (key,) = auth["keys"]
    assert key["ref"].startswith("key-") and key["purpose"] == "claims-triage-agent"
    assert key["tools"] == {"declare": ["lookup_claim", "send_email"], "call": ["lookup_claim"]}
    assert key["limits"]["concurrent_requests"] == 2 and key["rails"] == []
    assert "acme-claims" not in out and digest not in out
    code, out = run(["inspect", "--model", "fake"], env)
    assert code == 0 and json.loads(out)["auth"]["keys"] is None  # keys off
    entry["tools"] = {"declare": ["a"], "call": ["b"]}
    keys.write_text(yaml.safe_dump({"keys": [entry]}))
    code, out = run(args, env)
    assert code == 2 and "keys.0.tools: Value error, call names b" in out
    # bound to a rail: known only with the guardrails file that defines it
    del entry["tools"]
    entry["rails"] = ["no-secrets"]
    keys.write_text(yaml.safe_dump({"keys": [entry]}))
    code, out = run(args, env)
    assert code == 2 and "unknown rails no-secrets (configured: none" in out
    rails = tmp_path / "guardrails.yaml"
    rails.write_text("flows:\n  no-secrets: {type: topics, deny: [password]}\n")
    code, out = run([*args, "--guardrails", str(rails)], env)
    assert code == 0, out
    assert json.loads(out)["auth"]["keys"][0]["rails"] == ["no-secrets"]


def test_download_from_a_mirror_resumes_nothing_twice_and_refuses_a_bad_hash(
    tmp_path: Path, env: dict[str, str], mirror: Mirror
) -> None:
    catalog = resolve_model("all-minilm-l6-v2")
    onnx, tokenizer = catalog.weights.read_bytes(), catalog.tokenizer.read_bytes()  # type: ignore[union-attr]
    manifest = {
        "id": "mirrored-minilm",
        "tasks": ["embedding"],
        "profiles": [
            {
                "engine": "onnx",
                "precision": "int8",
                "files": [
                    {
                        "name": "model.onnx",
                        "source": mirror.publish(onnx, repo="org/minilm", path="onnx/model.onnx"),
                        "sha256": hashlib.sha256(onnx).hexdigest(),
                    },
                    {
                        "name": "tokenizer.json",
                        "source": mirror.publish(
                            tokenizer, repo="org/minilm", path="tokenizer.json"
                        ),
                    },
                ],
            }
        ],
    }
    path = tmp_path / "mirrored.yaml"
    path.write_text(yaml.safe_dump(manifest))
    env = {**env, "NIMBLE_HF_ENDPOINT": mirror.url}
    code, out = run(["download", str(path)], env)
    assert code == 0, out
    assert "mirrored-minilm onnx-int8-cpu" in out and "ok model.onnx" in out
    assert len(mirror.sent) == 2
    code, out = run(["download", str(path)], env)  # all there: no request
    assert code == 0 and len(mirror.sent) == 2
    # served from the cache, offline, as a model folder
    store = tmp_path / "store"
    code, out = run(
        [
            "create-model-store",
            "--model",
            str(path),
            "--profile",
            "onnx-int8-cpu",
            str(store),
            "--offline",
        ],
        env,
    )
    assert code == 0, out
    assert (store / "model.onnx").read_bytes() == onnx
    # a manifest whose hash does not match what the mirror serves
    manifest["profiles"][0]["files"][0]["sha256"] = "0" * 64  # type: ignore[index]
    path.write_text(yaml.safe_dump(manifest))
    code, out = run(["download", str(path)], env)
    assert code == 1
    assert "failed model.onnx" in out and "0000000000" in out


class _ManifestHandler(BaseHTTPRequestHandler):
    """A stand-in server: answers /v1/manifest with the Authorization header it received."""

    def do_GET(self) -> None:
        body = json.dumps({"path": self.path, "auth": self.headers.get("Authorization")})
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.end_headers()
        self.wfile.write(body.encode())

    def log_message(self, format: str, *args: object) -> None:  # quiet test output
        pass


def test_inspect_url_sends_the_key_from_option_or_env(env: dict[str, str]) -> None:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _ManifestHandler)  # listening already
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        code, out = run(["inspect", "--url", url, "--api-key", "k-flag"], env)
        assert code == 0, out
        assert json.loads(out) == {"path": "/v1/manifest", "auth": "Bearer k-flag"}
        code, out = run(["inspect", "--url", url], {**env, "NIMBLE_API_KEY": "k-env"})
        assert code == 0, out
        assert json.loads(out)["auth"] == "Bearer k-env"
        code, out = run(["inspect", "--url", url], env)
        assert code == 0, out
        assert json.loads(out)["auth"] is None
        code, out = run(["inspect", "--help"], env)
        assert "--api-key" in out and "NIMBLE_API_KEY" in out
    finally:
        server.shutdown()
        server.server_close()
        thread.join()
