"""Several models of one `nimble serve` on described GPU machines: vLLM models on GPUs of
their own while there are enough, a shared GPU split by need, one clear line when they do
not fit (before any download), a GGUF offloaded where it fits, and vLLM's own batch size
as both its --max-num-seqs and nimble's admission limit."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from nimble.config import Settings
from nimble.engines.vllm.engine import VllmEngine
from nimble.errors import ConfigError
from nimble.models.hardware import GpuInfo, HardwareInfo
from nimble.models.placement import place, vllm_max_num_seqs
from nimble.models.resolve import plan_model
from nimble.models.select import Concurrency
from nimble.runtime.assemble import build_runtime

STANDIN = Path(__file__).parents[2] / "support" / "vllm_standin.py"
H100 = {"name": "NVIDIA H100 80GB HBM3", "memory_gb": 80, "compute_capability": 9.0}
L4 = {"name": "NVIDIA L4", "memory_gb": 24, "compute_capability": 8.9}
KV = 131072  # bytes per token: 8192 tokens of context are 1.07 GB


def machine(tmp_path: Path, *gpus: dict[str, Any]) -> Path:
    described = {
        "cpu_cores": 16,
        "ram_gb": 128,
        "cpu_features": ["avx2"],
        "gpus": [{"index": i, **gpu} for i, gpu in enumerate(gpus)],
    }
    path = tmp_path / "machine.yaml"
    path.write_text(yaml.safe_dump(described))
    return path


def vllm_model(
    tmp_path: Path, name: str, weights_gb: float, *, hub: bool = False, **settings: int
) -> str:
    """A chat model with one vLLM profile: its files local, or on the hub (`hub`)."""
    folder = tmp_path / name
    folder.mkdir()
    (folder / "config.json").write_text('{"architectures": ["LlamaForCausalLM"]}')
    (folder / "model.safetensors").write_bytes(b"\x01" * 64)
    files = [
        {"name": n, "source": f"hf://org/{name}@main/{n}" if hub else str(folder / n)}
        for n in ("config.json", "model.safetensors")
    ]
    manifest = {
        "id": name,
        "tasks": ["chat", "completion"],
        "context_length": 8192,
        "kv_bytes_per_token": KV,
        "profiles": [
            {
                "engine": "vllm",
                "precision": "bf16",
                "weights_gb": weights_gb,
                "hardware": {"gpu": {"count": 1, "min_memory_gb": 16}},
                "files": files,
                "settings": settings,
            }
        ],
    }
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(manifest))
    return str(path)


def serve(tmp_path: Path, hardware: Path, *models: str, **settings: Any) -> dict[str, Any]:
    """What each model's vLLM process would be started with, and nimble's admission."""
    config = Settings(
        model=models,
        hardware_file=hardware,
        cache_path=tmp_path / "cache",
        engine_command=f"{sys.executable} {STANDIN} serve",
        **settings,
    )
    runtime, _ = build_runtime(config)
    started = {}
    for name, served in runtime.models.items():
        assert isinstance(served.engine, VllmEngine)
        launch = served.engine._launch()
        argv = list(launch.argv)
        flags = {f: argv[i + 1] for i, f in enumerate(argv[:-1]) if f.startswith("--")}
        started[name] = (flags, dict(launch.env), served.admission.max_running)
    return started


def need_gb(weights_gb: float) -> float:
    return weights_gb + 1 + 8192 * KV / 1e9  # weights, overhead, one window of KV cache


def test_two_vllm_models_share_one_gpu_by_need(tmp_path: Path) -> None:
    big, small = vllm_model(tmp_path, "big", 16), vllm_model(tmp_path, "small", 8)
    started = serve(tmp_path, machine(tmp_path, H100), big, small)
    shares = {}
    for name, weights in (("big", 16), ("small", 8)):
        flags, env, admitted = started[name]
        assert env["CUDA_VISIBLE_DEVICES"] == "0" and env["CUDA_DEVICE_ORDER"] == "PCI_BUS_ID"
        shares[name] = float(flags["--gpu-memory-utilization"])
        assert shares[name] * 80 >= need_gb(weights)  # at least what it needs
        # vLLM's own batch on an H100, and nimble admits as many: neither starves
        assert flags["--max-num-seqs"] == "1024" and admitted == 1024
    assert 0.89 <= shares["big"] + shares["small"] <= 0.9  # not 90% each
    ratio = shares["big"] / shares["small"]
    assert ratio == pytest.approx(need_gb(16) / need_gb(8), rel=0.01)  # split by need


def test_two_vllm_models_on_two_gpus_get_one_each(tmp_path: Path) -> None:
    big, small = vllm_model(tmp_path, "big", 16), vllm_model(tmp_path, "small", 8)
    started = serve(tmp_path, machine(tmp_path, H100, H100), big, small)
    devices = {name: env["CUDA_VISIBLE_DEVICES"] for name, (_, env, _) in started.items()}
    assert sorted(devices.values()) == ["0", "1"]
    for flags, _, _ in started.values():
        assert "--gpu-memory-utilization" not in flags  # alone on its GPU: vLLM's default


def test_one_vllm_model_alone_is_left_to_vllm_defaults(tmp_path: Path) -> None:
    (flags, env, admitted) = serve(
        tmp_path, machine(tmp_path, L4), vllm_model(tmp_path, "solo", 8)
    )["solo"]
    assert "CUDA_VISIBLE_DEVICES" not in env and "--gpu-memory-utilization" not in flags
    assert flags["--max-num-seqs"] == "256" and admitted == 256  # vLLM's own on an L4
    # the operator's settings: the engine's batch, and admission apart from it
    again = tmp_path / "again"
    again.mkdir()
    model, box = vllm_model(again, "solo", 8), machine(again, L4)
    (flags, _, admitted) = serve(again, box, model, max_batch_size=64, max_running=32)["solo"]
    assert flags["--max-num-seqs"] == "64" and admitted == 32


def test_models_that_cannot_share_the_gpu_are_refused_before_any_download(
    tmp_path: Path,
) -> None:
    first = vllm_model(tmp_path, "first", 12)
    second = vllm_model(tmp_path, "second", 8, hub=True)  # offline: a download would fail
    with pytest.raises(ConfigError) as refused:
        serve(tmp_path, machine(tmp_path, L4), first, second, offline=True)
    message = str(refused.value)
    assert "\n" not in message
    assert message.startswith("the models do not fit on GPU 0 (NVIDIA L4, 24 GB): ")
    assert "first 14.1 GB, second 10.1 GB need 24.1 GB, 21.6 GB usable (90%)" in message


def gpu_box(*gpus: dict[str, Any]) -> HardwareInfo:
    return HardwareInfo(
        cpu_cores=16,
        ram_gb=128,
        cpu_features=frozenset({"avx2"}),
        gpus=tuple(GpuInfo(index=i, **gpu) for i, gpu in enumerate(gpus)),
        source="test",
    )


def test_a_gguf_model_is_offloaded_where_it_fits(tmp_path: Path) -> None:
    hardware = gpu_box(L4)

    def no_vllm(engine: str) -> str | None:
        return "vllm is not installed" if engine == "vllm" else None

    gguf = plan_model("smollm2-135m-instruct", hardware, engine_check=no_vllm)
    assert gguf.profile.engine == "llamacpp"
    (alone,) = place([gguf], hardware, Concurrency()).values()
    assert alone.devices == (0,) and "every layer on GPU 0" in alone.note
    # a vLLM model that takes the GPU leaves the GGUF on the CPU, and stays unpinned
    hog = plan_model(vllm_model(tmp_path, "hog", 19), hardware, engine_check=lambda _: None)
    places = place([hog, gguf], hardware, Concurrency())
    assert places["smollm2-135m-instruct"].devices == ()
    assert places["smollm2-135m-instruct"].note.startswith("on the CPU: it needs ")
    assert places["hog"].devices is None and places["hog"].memory_fraction is None
    # no NVIDIA GPU: nothing is placed (llama.cpp's own default applies)
    cpu = HardwareInfo(cpu_cores=2, ram_gb=8, source="test")
    assert place([gguf], cpu, Concurrency()) == {}


def test_vllm_batch_is_the_profiles_or_vllms_own(tmp_path: Path) -> None:
    hardware = gpu_box(H100)

    def placed(name: str, **settings: int) -> int | None:
        model = vllm_model(tmp_path, name, 8, **settings)
        selection = plan_model(model, hardware, engine_check=lambda _: None)
        return place([selection], hardware, Concurrency())[name].max_num_seqs

    assert placed("own") == 1024
    assert placed("budget", max_batched_tokens=512) == 512  # as vLLM clamps its default
    assert placed("profile", max_batch_size=64) is None  # the profile's goes as it is


def test_vllm_default_batch_follows_the_gpu() -> None:
    assert vllm_max_num_seqs(GpuInfo(**H100)) == 1024
    a100 = GpuInfo(name="NVIDIA A100-SXM4-80GB", memory_gb=85, compute_capability=8.0)
    assert vllm_max_num_seqs(a100) == 256  # vLLM keeps A100s at 256
    assert vllm_max_num_seqs(GpuInfo(**L4)) == 256
