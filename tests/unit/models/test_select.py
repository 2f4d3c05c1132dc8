"""Profile selection on a table of fake machines, and hardware detection (NVML faked)."""

from __future__ import annotations

import sys
import types
from pathlib import Path
from typing import Any

import pytest

from nimble.errors import ConfigError
from nimble.models.catalog import builtin_catalog
from nimble.models.hardware import GpuInfo, HardwareInfo, detect_hardware, load_hardware
from nimble.models.manifest import parse_manifest
from nimble.models.select import Concurrency, assess, select_profile

AVX = frozenset({"avx", "avx2", "fma", "f16c"})


def cpu_box(ram_gb: float = 24, flags: frozenset[str] = AVX) -> HardwareInfo:
    return HardwareInfo(cpu_cores=2, cpu_features=flags, ram_gb=ram_gb, source="test")


def gpu_box(count: int, name: str, memory_gb: float, cc: float) -> HardwareInfo:
    gpus = tuple(
        GpuInfo(index=i, name=name, memory_gb=memory_gb, compute_capability=cc)
        for i in range(count)
    )
    return HardwareInfo(cpu_cores=32, cpu_features=AVX, ram_gb=256, gpus=gpus, source="test")


def everything(engine: str) -> str | None:
    return None


def select(model: str, hardware: HardwareInfo, **kw: Any) -> Any:
    kw.setdefault("engine_check", everything)
    return select_profile(builtin_catalog()[model], hardware, **kw)


@pytest.mark.parametrize(
    ("model", "machine", "expected"),
    [
        # CPU only: the GGUF on llama.cpp
        ("llama-3.1-8b-instruct", cpu_box(), "llamacpp-q4_k_m-cpu"),
        ("smollm2-135m-instruct", cpu_box(), "llamacpp-q4_1-cpu"),
        ("all-minilm-l6-v2", cpu_box(), "onnx-int8-cpu"),
        # one 24 GB L4 (Ada, cc 8.9): bf16 weights and context do not fit, FP8 does
        ("llama-3.1-8b-instruct", gpu_box(1, "NVIDIA L4", 24, 8.9), "vllm-fp8-tp1"),
        # one 24 GB A10 (Ampere, cc 8.6): no FP8, so bf16 on two GPUs is not possible either;
        # the GGUF on CPU remains
        ("llama-3.1-8b-instruct", gpu_box(1, "NVIDIA A10", 24, 8.6), "llamacpp-q4_k_m-cpu"),
        # two A10s: bf16 split over both
        ("llama-3.1-8b-instruct", gpu_box(2, "NVIDIA A10", 24, 8.6), "vllm-bf16-tp2"),
        # 8x H100 80 GB: every 70B profile fits with full context; bf16, all eight GPUs
        ("llama-3.3-70b-instruct", gpu_box(8, "NVIDIA H100 80GB HBM3", 80, 9.0), "vllm-bf16-tp8"),
        # 2x H100: only the FP8 profile fits
        ("llama-3.3-70b-instruct", gpu_box(2, "NVIDIA H100 80GB HBM3", 80, 9.0), "vllm-fp8-tp2"),
        ("qwen2.5-7b-instruct", gpu_box(1, "Tesla T4", 16, 7.5), "vllm-awq-int4-tp1"),
    ],
)
def test_selection_on_fake_machines(model: str, machine: HardwareInfo, expected: str) -> None:
    selection = select(model, machine)
    assert selection.profile.name == expected, [
        (c.profile.name, c.status, c.reason) for c in selection.candidates
    ]
    assert expected in selection.reason


def test_gpu_profiles_come_before_cpu_and_reasons_name_the_shortfall() -> None:
    selection = select("llama-3.1-8b-instruct", gpu_box(1, "NVIDIA L4", 24, 8.9))
    by_name = {c.profile.name: c for c in selection.candidates}
    assert by_name["vllm-bf16-tp1"].status == "not_runnable"
    assert "needs 1x GPU with >= 40 GB" in by_name["vllm-bf16-tp1"].reason
    assert "found 0 such of NVIDIA L4 24 GB" in by_name["vllm-bf16-tp1"].reason
    assert "needs 2x GPU" in by_name["vllm-bf16-tp2"].reason
    assert by_name["llamacpp-q4_k_m-cpu"].status == "runnable"  # runnable, but ranked after
    order = [c.profile.name for c in selection.candidates]
    assert order.index("vllm-fp8-tp1") < order.index("llamacpp-q4_k_m-cpu")


def test_cpu_without_avx2_cannot_run_the_gguf_profiles() -> None:
    old_cpu = cpu_box(flags=frozenset({"sse4_2"}))
    with pytest.raises(ConfigError, match=r"no profile of llama-3.1-8b-instruct can run here"):
        select("llama-3.1-8b-instruct", old_cpu)
    candidate = assess(
        builtin_catalog()["llama-3.1-8b-instruct"],
        builtin_catalog()["llama-3.1-8b-instruct"].profile("llamacpp-q4_k_m-cpu"),
        old_cpu,
        engine_check=everything,
    )
    assert candidate.reason == "CPU lacks avx2"


def test_less_memory_gives_less_context_and_says_how_much() -> None:
    # 10 GB RAM: 8 GB usable, 4.9 GB of weights and 1 GB overhead leave ~2 GB of KV cache
    selection = select("llama-3.1-8b-instruct", cpu_box(ram_gb=10))
    chosen = selection.selected
    assert chosen.status == "reduced"
    assert chosen.context is not None and 2048 <= chosen.context < 32768
    assert chosen.context % 256 == 0
    assert f"only {chosen.context} of 32768 tokens of context x 4 slots fit" in chosen.reason
    # a context that fits is asked for: then the profile is fully runnable
    fits = select("llama-3.1-8b-instruct", cpu_box(ram_gb=10), context=2048)
    assert fits.selected.status == "runnable" and fits.selected.context == 2048
    # below the profile's minimum RAM: not runnable at all
    with pytest.raises(ConfigError, match=r"needs 7.4 GB RAM, the machine has 6.0 GB"):
        select("llama-3.1-8b-instruct", cpu_box(ram_gb=6))
    # weights that fit with room for less than 2048 tokens of context: not runnable
    manifest = parse_manifest(
        {
            "id": "wide-kv",
            "tasks": ["chat"],
            "context_length": 8192,
            "kv_bytes_per_token": 1_000_000,
            "profiles": [
                {
                    "engine": "llamacpp",
                    "precision": "q8_0",
                    "weights_gb": 10,
                    "files": [{"name": "m.gguf", "source": "/m.gguf"}],
                }
            ],
        },
        "test",
    )
    with pytest.raises(ConfigError, match=r"llamacpp-q8_0-cpu: weights fit but less than 2048"):
        select_profile(manifest, cpu_box(ram_gb=14.5), engine_check=everything)


def test_requested_profile_overrides_the_ranking_but_not_the_checks() -> None:
    machine = gpu_box(2, "NVIDIA A10", 24, 8.6)
    chosen = select("llama-3.1-8b-instruct", machine, requested="llamacpp-q4_k_m-cpu")
    assert chosen.profile.name == "llamacpp-q4_k_m-cpu"
    assert chosen.reason.startswith("requested by NIMBLE_MODEL_PROFILE")
    by_id = select("llama-3.1-8b-instruct", machine, requested=chosen.profile.id[:12])
    assert by_id.profile is chosen.profile
    with pytest.raises(
        ConfigError,
        match=r"profile vllm-fp8-tp1 of llama-3.1-8b-instruct cannot"
        " run here: needs 1x GPU with >= 24 GB, compute capability >= 8.9",
    ):
        select("llama-3.1-8b-instruct", machine, requested="vllm-fp8-tp1")
    with pytest.raises(ConfigError, match=r"has no profile 'nope'"):
        select("llama-3.1-8b-instruct", machine, requested="nope")


def test_an_engine_that_is_not_installed_is_not_runnable() -> None:
    def no_vllm(engine: str) -> str | None:
        return "engine vllm: `vllm` not found" if engine == "vllm" else None

    selection = select(
        "llama-3.1-8b-instruct", gpu_box(1, "NVIDIA H100", 80, 9.0), engine_check=no_vllm
    )
    assert selection.profile.name == "llamacpp-q4_k_m-cpu"
    reasons = {c.profile.name: c.reason for c in selection.candidates}
    assert reasons["vllm-bf16-tp1"] == reasons["vllm-fp8-tp1"] == "engine vllm: `vllm` not found"
    assert reasons["vllm-bf16-tp2"].startswith("needs 2x GPU")  # the hardware is said first


def test_every_catalog_model_selects_a_gpu_profile_on_a_big_gpu_box() -> None:
    big = gpu_box(8, "NVIDIA H100 80GB HBM3", 80, 9.0)
    for manifest in builtin_catalog().values():
        if manifest.remote_code:
            continue  # never selected: see test_a_model_that_needs_remote_code_is_refused
        assert select_profile(manifest, big, engine_check=everything).profile.uses_gpu, manifest.id


def test_a_model_that_needs_remote_code_is_refused() -> None:
    big = gpu_box(8, "NVIDIA H100 80GB HBM3", 80, 9.0)
    with pytest.raises(
        ConfigError,
        match=r"no profile of nv-embed-v2 can run here \(.*"
        r"needs the Python code of its model repository \(trust_remote_code\)",
    ):
        select("nv-embed-v2", big)


def test_llama_cpp_memory_counts_a_window_per_slot() -> None:
    # one 4096-token window (4.1 GB of KV cache) fits in the 6 GB left; four do not
    manifest = parse_manifest(
        {
            "id": "slots",
            "tasks": ["chat"],
            "context_length": 4096,
            "kv_bytes_per_token": 1_000_000,
            "profiles": [
                {
                    "engine": "llamacpp",
                    "precision": "q8_0",
                    "weights_gb": 1,
                    "files": [{"name": "m.gguf", "source": "/m.gguf"}],
                }
            ],
        },
        "test",
    )
    (profile,) = manifest.profiles
    box = cpu_box(ram_gb=10)  # 8 GB usable: 1 GB of weights and 1 GB of overhead leave 6
    four = assess(manifest, profile, box, engine_check=everything)  # 4 slots by default
    assert four.status == "not_runnable"
    assert "less than 2048 tokens of context x 4 slots" in four.reason
    one = assess(
        manifest, profile, box, engine_check=everything, concurrency=Concurrency(max_running=1)
    )
    assert (one.status, one.context) == ("runnable", 4096)
    # the operator's batch size counts before max_running, as llama.cpp takes it
    two = Concurrency(max_batch_size=2, max_running=1)
    assert two.slots(profile) == 2
    reduced = assess(manifest, profile, box, engine_check=everything, concurrency=two)
    assert (reduced.status, reduced.context) == ("reduced", 2816)


def test_detects_this_machine() -> None:
    hardware = detect_hardware()
    assert hardware.cpu_cores >= 1 and hardware.ram_gb > 0.5
    assert hardware.source == "detected"
    assert hardware.cpu_features  # /proc/cpuinfo flags were read
    assert "CPU cores" in hardware.summary()


def test_detects_nvidia_gpus_through_nvml(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[str] = []

    class Memory:
        total = 80 * 10**9

    fake = types.ModuleType("pynvml")
    fake.NVMLError = RuntimeError  # type: ignore[attr-defined]
    fake.nvmlInit = lambda: calls.append("init")  # type: ignore[attr-defined]
    fake.nvmlShutdown = lambda: calls.append("shutdown")  # type: ignore[attr-defined]
    fake.nvmlSystemGetDriverVersion = lambda: b"560.35.03"  # type: ignore[attr-defined]
    fake.nvmlDeviceGetCount = lambda: 2  # type: ignore[attr-defined]
    fake.nvmlDeviceGetHandleByIndex = lambda i: i  # type: ignore[attr-defined]
    fake.nvmlDeviceGetName = lambda h: "NVIDIA H100 80GB HBM3"  # type: ignore[attr-defined]
    fake.nvmlDeviceGetMemoryInfo = lambda h: Memory()  # type: ignore[attr-defined]
    fake.nvmlDeviceGetCudaComputeCapability = lambda h: (9, 0)  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "pynvml", fake)
    hardware = detect_hardware()
    assert [g.name for g in hardware.gpus] == ["NVIDIA H100 80GB HBM3"] * 2
    assert hardware.gpus[1].index == 1 and hardware.gpus[0].memory_gb == 80
    assert hardware.gpus[0].compute_capability == 9.0
    assert hardware.driver_version == "560.35.03"
    assert calls == ["init", "shutdown"]
    assert "2x NVIDIA H100 80GB HBM3 80 GB" in hardware.summary()

    def no_driver() -> None:
        raise RuntimeError("Driver Not Loaded")

    fake.nvmlInit = no_driver  # type: ignore[attr-defined]
    hardware = detect_hardware()
    assert hardware.gpus == () and "no NVIDIA driver: Driver Not Loaded" in hardware.notes


def test_hardware_from_a_file(tmp_path: Path) -> None:
    described = tmp_path / "hw.yaml"
    described.write_text(
        "cpu_cores: 64\nram_gb: 512\ncpu_features: [avx2, avx512f]\n"
        "gpus:\n  - {name: NVIDIA A100-SXM4-80GB, memory_gb: 80, compute_capability: 8.0}\n"
    )
    hardware = load_hardware(described)
    assert hardware.gpus[0].name == "NVIDIA A100-SXM4-80GB"
    assert hardware.source == f"file {described}"
    described.write_text("cpu_cores: 0\nram_gb: -1\n")
    with pytest.raises(ConfigError, match=r"invalid hardware description: cpu_cores"):
        load_hardware(described)


def test_an_avx2_only_cpu_skips_the_avx512_build() -> None:
    manifest = parse_manifest(
        {
            "id": "two-builds",
            "tasks": ["chat"],
            "profiles": [
                {
                    "engine": "llamacpp",
                    "precision": "q4_0",
                    "name": "avx512",
                    "weights_gb": 1,
                    "hardware": {"cpu_features": ["AVX512F", "avx512_vnni"]},
                    "files": [{"name": "a.gguf", "source": "/a.gguf"}],
                },
                {
                    "engine": "llamacpp",
                    "precision": "q4_0",
                    "name": "avx2",
                    "weights_gb": 1,
                    "hardware": {"cpu_features": ["avx2"]},
                    "files": [{"name": "b.gguf", "source": "/b.gguf"}],
                },
            ],
            "engine_order": ["llamacpp"],
        },
        "test",
    )
    avx2_only = select_profile(manifest, cpu_box(), engine_check=everything)
    assert avx2_only.profile.name == "avx2"
    skipped = next(c for c in avx2_only.candidates if c.profile.name == "avx512")
    assert skipped.reason == "CPU lacks avx512f, avx512_vnni"
    server = cpu_box(flags=AVX | {"avx512f", "avx512_vnni"})
    # both run: equal rank, the manifest's order decides
    assert select_profile(manifest, server, engine_check=everything).profile.name == "avx512"
