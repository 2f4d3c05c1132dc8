"""`nimble serve` choosing a vLLM profile on a (described) GPU machine, supervising the
stand-in engine: the openai client end to end, the deployment record, the KV cache gauge,
a dying engine restarted under the default policy (503 meanwhile, then served again), one
that stops nimble under `--engine-restart fail`, two models that split one GPU by need, and
two that cannot share it, refused in one line before any engine starts."""

from __future__ import annotations

import json
import os
import shlex
import subprocess
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


L4_BOX = (
    "cpu_cores: 16\nram_gb: 128\ncpu_features: [avx2]\ngpus:\n"
    "  - {name: NVIDIA L4, memory_gb: 24, compute_capability: 8.9}\n"
)


def gpu_only_model(tmp_path: Path, name: str, weights_gb: float) -> str:
    """A chat model with one vLLM profile (local files; 4096 tokens of 128 KiB KV cache)."""
    folder = tmp_path / name
    folder.mkdir()
    (folder / "config.json").write_text('{"architectures": ["LlamaForCausalLM"]}')
    (folder / "model.safetensors").write_bytes(b"\x03" * 512)
    manifest = {
        "id": name,
        "tasks": ["chat", "completion"],
        "context_length": 4096,
        "kv_bytes_per_token": 131072,
        "profiles": [
            {
                "engine": "vllm",
                "precision": "bf16",
                "weights_gb": weights_gb,
                "hardware": {"gpu": {"count": 1, "min_memory_gb": 16}},
                "files": [
                    {"name": n, "source": str(folder / n)}
                    for n in ("config.json", "model.safetensors")
                ],
            }
        ],
    }
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(manifest))
    return str(path)


def two_models(
    tmp_path: Path, box: str, weights: tuple[float, float]
) -> tuple[list[str], dict[str, str]]:
    hardware = tmp_path / "box.yaml"
    hardware.write_text(box)
    command = shlex.join([sys.executable, str(STANDIN), "serve"])
    args = ["--engine-command", command]
    for name, gb in zip(("big", "small"), weights, strict=True):
        args += ["--model", gpu_only_model(tmp_path, name, gb)]
    env = {
        "NIMBLE_HARDWARE_FILE": str(hardware),
        "NIMBLE_CACHE_PATH": str(tmp_path / "cache"),
        "STANDIN_LOG": str(tmp_path / "standin.jsonl"),
    }
    return args, env


def test_two_vllm_models_split_one_gpu_by_need(nimble_process: type, tmp_path: Path) -> None:
    args, env = two_models(tmp_path, GPU_BOX, (40, 20))
    server = nimble_process(args, env=env).wait_ready()
    for model in ("big", "small"):
        answer = httpx.post(
            server.base_url + "/v1/completions",
            json={"model": model, "prompt": "hi", "max_tokens": 1},
            timeout=30,
        )
        assert answer.status_code == 200, answer.text
    started = [json.loads(line) for line in (tmp_path / "standin.jsonl").read_text().splitlines()]
    shares = {}
    for entry in (e for e in started if "argv" in e):
        argv = entry["argv"]
        flags = {f: argv[i + 1] for i, f in enumerate(argv[:-1]) if f.startswith("--")}
        shares[flags["--served-model-name"]] = float(flags["--gpu-memory-utilization"])
        assert entry["cuda_visible_devices"] == "0"
        assert flags["--max-num-seqs"] == "1024"  # vLLM's own on an H100, said out loud
    assert shares["big"] > shares["small"] and 0.89 <= sum(shares.values()) <= 0.9
    assert server.terminate() == 0


def test_models_that_cannot_share_the_gpu_stop_the_start_with_one_line(tmp_path: Path) -> None:
    args, env = two_models(tmp_path, L4_BOX, (12, 8))
    result = subprocess.run(
        [sys.executable, "-m", "nimble.cli.main", "serve", *args],
        capture_output=True,
        text=True,
        env={**os.environ, **env},
        timeout=120,
    )
    assert result.returncode == 2, result.stderr
    (line,) = [x for x in result.stderr.splitlines() if x.startswith("nimble: ")]
    assert line.startswith("nimble: the models do not fit on GPU 0 (NVIDIA L4, 24 GB): big ")
    assert "big 13.5 GB, small 9.5 GB need 23.1 GB, 21.6 GB usable (90%)" in line
    assert not (tmp_path / "standin.jsonl").exists()  # no engine was started
