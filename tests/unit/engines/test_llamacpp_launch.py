"""llama.cpp's parameters as nimble sets them, without loading a model: the slots and the
window per slot that the memory estimate counts, and the layers on the GPU for the place
nimble chose, on a CUDA build (faked: its device list) and on a CPU-only one."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pytest
import xllamacpp

from nimble.config import Settings
from nimble.engines.config import EngineConfig
from nimble.engines.llamacpp import launch
from nimble.models.catalog import builtin_catalog
from nimble.models.resolve import engine_options
from nimble.models.select import Concurrency
from nimble.models.spec import ModelSpec
from nimble.runtime.assemble import runtime_config
from nimble.types import Task

DEVICE = xllamacpp.ggml_backend_dev_type
CPU_ONLY = [{"name": "CPU", "type": DEVICE.GGML_BACKEND_DEVICE_TYPE_CPU}]
CUDA = [*CPU_ONLY, {"name": "CUDA0", "type": DEVICE.GGML_BACKEND_DEVICE_TYPE_GPU}]


def gguf(devices: tuple[int, ...] | None = None, **options: str) -> ModelSpec:
    return ModelSpec(
        id="tiny",
        engine="llamacpp",
        tasks=frozenset({Task.CHAT}),
        weights=Path("/models/tiny.gguf"),
        source="/models/tiny.gguf",
        options=options,
        devices=devices,
    )


def params(spec: ModelSpec, config: EngineConfig | None = None, window: int = 512) -> Any:
    return launch.server_params(spec, config or EngineConfig(), window, "secret")


@pytest.fixture
def build(monkeypatch: pytest.MonkeyPatch) -> Any:
    """Choose what the installed llama.cpp build reports as its devices."""

    def choose(devices: list[dict[str, Any]]) -> None:
        monkeypatch.setattr(xllamacpp, "get_device_info", lambda: devices)

    return choose


def test_a_cuda_build_takes_every_layer_onto_the_gpu_nimble_chose(build: Any) -> None:
    build(CUDA)
    placed = params(gguf(devices=(0,)))
    assert placed.n_gpu_layers == launch.ALL_LAYERS
    assert placed.split_mode == xllamacpp.llama_split_mode.LLAMA_SPLIT_MODE_NONE
    assert placed.main_gpu == 0
    # kept on the CPU although there is a GPU: its memory is promised to other models
    assert params(gguf(devices=())).n_gpu_layers == 0
    # no NVIDIA GPU here: llama.cpp's own default (Metal on a Mac) is left alone
    assert params(gguf(devices=None)).n_gpu_layers == xllamacpp.CommonParams().n_gpu_layers


def test_a_cpu_only_build_on_a_gpu_machine_says_how_to_get_the_cuda_build(
    build: Any, caplog: pytest.LogCaptureFixture
) -> None:
    build(CPU_ONLY)
    with caplog.at_level(logging.WARNING, logger="nimble.engines.llamacpp"):
        assert params(gguf(devices=(0,))).n_gpu_layers == 0
    (warning,) = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert "model tiny: an NVIDIA GPU is here, but this llama.cpp build" in warning
    assert "CPU-only, so the model runs on the CPU" in warning
    assert (
        f"pip install --force-reinstall 'xllamacpp=={xllamacpp.__version__}' "
        "--index-url https://xorbitsai.github.io/xllamacpp/whl/cu128" in warning
    )


def test_the_window_is_allocated_once_per_slot() -> None:
    allocated = params(gguf(), EngineConfig(max_running=3), window=1024)
    assert (allocated.n_parallel, allocated.n_ctx) == (3, 3 * 1024)
    # the profile's batch size, then the operator's, before max_running
    assert params(gguf(max_num_seqs="6"), EngineConfig(max_running=3)).n_parallel == 6
    operator = EngineConfig(max_running=3, max_batch_size=2)
    assert params(gguf(max_num_seqs="6"), operator).n_parallel == 2


@pytest.mark.parametrize(
    ("settings", "profile_batch"),
    [({}, None), ({"max_running": 2}, None), ({"max_batch_size": 8}, 16), ({}, 16)],
)
def test_the_memory_estimate_counts_the_slots_llama_cpp_allocates(
    settings: dict[str, int], profile_batch: int | None
) -> None:
    manifest = builtin_catalog()["smollm2-135m-instruct"]
    profile = manifest.profile("llamacpp-q4_1-cpu")
    if profile_batch is not None:
        tuned = profile.settings.model_copy(update={"max_batch_size": profile_batch})
        profile = profile.model_copy(update={"settings": tuned})
    config = runtime_config(Settings(model=("fake",), **settings)).engine
    spec = gguf(**engine_options(profile))
    counted = Concurrency(settings.get("max_batch_size"), settings.get("max_running"))
    assert counted.slots(profile) == launch.slots(spec, config) == params(spec, config).n_parallel
