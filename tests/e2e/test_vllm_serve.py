"""`nimble serve` choosing a vLLM profile on a (described) GPU machine, supervising the
stand-in engine: the openai client end to end, the deployment record, the KV cache gauge,
a dying engine restarted under the default policy (503 meanwhile, then served again), and
one that stops nimble under `--engine-restart fail`."""

from __future__ import annotations

import shlex
import sys
import time
from pathlib import Path

import httpx
import pytest
import yaml

pytestmark = pytest.mark.e2e

STANDIN = Path(__file__).parents[1] / "support" / "vllm_standin.py"
GPU_BOX = (
    "cpu_cores: 16\nram_gb: 128\ncpu_features: [avx2]\ngpus:\n"
    "  - {name: NVIDIA H100 80GB HBM3, memory_gb: 80, compute_capability: 9.0}\n"
)


def setup(tmp_path: Path) -> tuple[list[str], dict[str, str]]:
    folder = tmp_path / "weights"
    folder.mkdir()
    (folder / "config.json").write_text('{"architectures": ["LlamaForCausalLM"]}')
    (folder / "model.safetensors").write_bytes(b"\x02" * 2048)
    manifest = {
        "id": "gpu-llama",
        "tasks": ["chat", "completion"],
        "context_length": 4096,
        "profiles": [
            {
                "engine": "vllm",
                "precision": "bf16",
                "weights_gb": 16,
                "hardware": {"gpu": {"count": 1, "min_memory_gb": 40}},
                "files": [
                    {"name": "config.json", "source": str(folder / "config.json")},
                    {"name": "model.safetensors", "source": str(folder / "model.safetensors")},
                ],
            },
            {
                "engine": "llamacpp",
                "precision": "q4_k_m",
                "weights_gb": 5,
                "files": [{"name": "m.gguf", "source": str(folder / "absent.gguf")}],
            },
        ],
    }
    path = tmp_path / "gpu-llama.yaml"
    path.write_text(yaml.safe_dump(manifest))
    hardware = tmp_path / "gpu.yaml"
    hardware.write_text(GPU_BOX)
    command = shlex.join([sys.executable, str(STANDIN), "serve"])
    args = ["--model", str(path), "--engine-command", command, "--max-running", "2"]
    env = {
        "NIMBLE_HARDWARE_FILE": str(hardware),
        "NIMBLE_CACHE_PATH": str(tmp_path / "cache"),
        "STANDIN_LOG": str(tmp_path / "standin.jsonl"),
    }
    return args, env


def test_nimble_serves_through_a_supervised_vllm(nimble_process: type, tmp_path: Path) -> None:
    args, env = setup(tmp_path)
    server = nimble_process(args, env=env).wait_ready()
    client = server.client()
    answer = client.chat.completions.create(
        model="gpu-llama", messages=[{"role": "user", "content": "hello gpu"}], max_tokens=3
    )
    assert answer.choices[0].message.content == "<|user|> hello gpu "
    assert answer.usage is not None and answer.usage.completion_tokens == 3
    stream = client.completions.create(
        model="gpu-llama", prompt="one two", max_tokens=4, stream=True
    )
    assert "".join(c.choices[0].text for c in stream if c.choices) == "one two one two "
    record = httpx.get(server.base_url + "/v1/manifest").json()
    (model,) = record["models"]
    assert model["profile"]["name"] == "vllm-bf16-tp1"
    assert "on 1 GPU(s)" in model["profile"]["reason"]
    assert model["engine"]["name"] == "vllm" and model["engine"]["version"] == "0.11.0+standin"
    assert record["hardware"]["gpus"][0]["name"] == "NVIDIA H100 80GB HBM3"
    metrics = httpx.get(server.base_url + "/metrics").text
    assert 'nimble_kv_cache_usage_ratio{model_name="gpu-llama"} 0.0' in metrics
    assert server.terminate() == 0


def test_a_dying_engine_stops_nimble_under_the_fail_policy(
    nimble_process: type, tmp_path: Path
) -> None:
    args, env = setup(tmp_path)
    env["STANDIN_CRASH_AFTER_TOKENS"] = "2"
    server = nimble_process([*args, "--engine-restart", "fail"], env=env).wait_ready()
    broken = httpx.post(
        server.base_url + "/v1/completions",
        json={"model": "gpu-llama", "prompt": "a b", "max_tokens": 8},
        timeout=30,
    )
    assert broken.status_code == 500
    assert server.proc.wait(timeout=60) == 1
    assert "engine failed: vllm for gpu-llama exited with code 1" in server.log()


def test_a_dying_engine_is_restarted_under_the_default_policy(
    nimble_process: type, tmp_path: Path
) -> None:
    args, env = setup(tmp_path)
    env["STANDIN_CRASH_AFTER_TOKENS"] = "2"  # every instance dies on its third token
    server = nimble_process(args, env=env).wait_ready()
    broken = httpx.post(
        server.base_url + "/v1/completions",
        json={"model": "gpu-llama", "prompt": "a b", "max_tokens": 8},
        timeout=30,
    )
    assert broken.status_code == 500
    # readiness turns 503 while the engine restarts (the supervisor saw it die before the
    # 500 went out), so a load balancer stops sending requests here meanwhile
    restarting = httpx.get(server.base_url + "/v1/health/ready", timeout=10)
    assert restarting.status_code == 503, restarting.text
    assert restarting.json()["status"] == "engine_down"
    statuses: list[int] = []
    deadline = time.monotonic() + 60
    while not statuses or statuses[-1] != 200:
        assert time.monotonic() < deadline, f"never served again: {statuses}"
        answer = httpx.post(
            server.base_url + "/v1/completions",
            json={"model": "gpu-llama", "prompt": "a b", "max_tokens": 2},
            timeout=30,
        )
        statuses.append(answer.status_code)
        time.sleep(0.05)  # polling interval
    assert set(statuses) <= {503, 200}  # Unavailable while it restarts, never a 500
    assert answer.json()["choices"][0]["text"] == "a b "
    assert server.proc.poll() is None
    assert "vllm for gpu-llama: up again after a restart" in server.log()
    assert httpx.get(server.base_url + "/v1/health/ready", timeout=10).status_code == 200
    assert server.terminate() == 0
