"""Starting and freeing llama.cpp's in-process server: the window per slot, the parameters
(`xllamacpp.CommonParams`), the layers on the GPU, the load with a clear error, and the
release that waits for in-flight generations before llama.cpp's loop is joined.

GPU offload: `pip install xllamacpp` is a CPU-only build; the CUDA build comes from
xllamacpp's own package index (`CUDA_INSTALL` below). When nimble placed the model on an
NVIDIA GPU (`ModelSpec.devices`, see `nimble.models.placement`) and this build of llama.cpp
sees a GPU device, every layer goes to that GPU; when the build sees none, one warning says
how to install the CUDA build, and the model runs on the CPU. A model nimble kept on the CPU
although there are GPUs (no room left on them) gets no layer there; without an NVIDIA GPU
llama.cpp's own default applies (it offloads to Metal on a Mac)."""

from __future__ import annotations

import gc
import logging
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import xllamacpp

from nimble.engines.config import EngineConfig
from nimble.engines.llamacpp.gguf import GgufSummary
from nimble.engines.threads import usable_cpus
from nimble.errors import ModelLoadError
from nimble.models.spec import ModelSpec

MAX_DEFAULT_CONTEXT = 8192  # without a configured window, the trained one is capped here
_FALLBACK_CONTEXT = 4096  # for a GGUF file that does not say its trained window
_VERBOSITY_ERRORS, _VERBOSITY_INFO = 1, 3
ALL_LAYERS = 999  # more layers than any model has: llama.cpp puts all of them on the GPU
CUDA_INSTALL = (
    "pip install --force-reinstall 'xllamacpp=={version}' "
    "--index-url https://xorbitsai.github.io/xllamacpp/whl/cu128 (CUDA 12.8; cu132 for 13.2)"
)

log = logging.getLogger("nimble.engines.llamacpp")


def slots(spec: ModelSpec, config: EngineConfig) -> int:
    """Sequences llama.cpp runs at once, each in a slot with a whole window: the
    max_batch_size setting, the profile's, else max_running (as nimble's memory estimate
    counts them, `nimble.models.select.Concurrency`)."""
    return config.batch_size(spec) or config.max_running


def gpu_layers(spec: ModelSpec) -> int | None:
    """Layers on the GPU for the place nimble chose (None: llama.cpp's default)."""
    if spec.devices is None:
        return None
    if not spec.devices:
        return 0  # kept on the CPU: the GPUs' memory is promised to other models
    if not any(_is_gpu(device) for device in xllamacpp.get_device_info()):
        log.warning(
            "model %s: an NVIDIA GPU is here, but this llama.cpp build (xllamacpp %s) is "
            "CPU-only, so the model runs on the CPU; for the CUDA build: %s",
            spec.id,
            xllamacpp.__version__,
            CUDA_INSTALL.format(version=xllamacpp.__version__),
        )
        return 0
    log.info("model %s: llama.cpp offloads every layer to GPU %d", spec.id, spec.devices[0])
    return ALL_LAYERS


def _is_gpu(device: dict[str, Any]) -> bool:
    kind = device.get("type")
    return kind in (
        xllamacpp.ggml_backend_dev_type.GGML_BACKEND_DEVICE_TYPE_GPU,
        xllamacpp.ggml_backend_dev_type.GGML_BACKEND_DEVICE_TYPE_IGPU,
    )


def window(spec: ModelSpec, config: EngineConfig, summary: GgufSummary) -> int:
    """The context window of one request (each slot gets a whole one)."""
    if config.context_length:
        return config.context_length
    if "context_length" in spec.options:  # the selected profile's (maybe reduced)
        return int(spec.options["context_length"])
    trained = summary.context_length or spec.context_length or _FALLBACK_CONTEXT
    return min(trained, MAX_DEFAULT_CONTEXT)


def server_params(spec: ModelSpec, config: EngineConfig, window: int, secret: str) -> Any:
    """llama.cpp's server parameters: one slot per running request, each with its own
    window; the HTTP listener on loopback, locked with `secret`."""
    parallel = slots(spec, config)
    threads = config.threads or usable_cpus()
    params = xllamacpp.CommonParams()
    params.model.path = str(spec.weights)
    params.n_parallel = parallel
    params.n_ctx = window * parallel
    layers = gpu_layers(spec)
    if layers is not None:
        params.n_gpu_layers = layers
    if layers and spec.devices:  # one GPU, the one nimble counted it on
        params.split_mode = xllamacpp.llama_split_mode.LLAMA_SPLIT_MODE_NONE
        params.main_gpu = spec.devices[0]
    params.kv_unified = False
    params.cpuparams.n_threads = threads
    params.cpuparams_batch.n_threads = threads
    params.hostnames = ["127.0.0.1"]
    params.port = 0
    params.api_keys = [secret]
    params.ui = False
    params.endpoint_slots = True  # internal listener only: for cache_usage()
    params.endpoint_metrics = False
    params.verbosity = _VERBOSITY_INFO if config.engine_log else _VERBOSITY_ERRORS
    if config.chat_template:
        params.chat_template = config.chat_template
    if config.prompt_cache_mib is not None:
        params.cache_ram_mib = config.prompt_cache_mib
    # the thinking stays in the text: nimble's reasoning parser (or none) decides, the
    # same for every engine (llama.cpp would move it to a field nimble does not read)
    params.reasoning_format = xllamacpp.common_reasoning_format.COMMON_REASONING_FORMAT_NONE
    return params


def load(params: Any, path: Path) -> Any:
    try:
        return xllamacpp.Server(params)
    except RuntimeError as exc:
        raise ModelLoadError(
            f"{path}: llama.cpp could not load this GGUF file (incomplete or corrupt "
            "tensors, unsupported architecture, or not enough memory; set engine_log to "
            "see llama.cpp's reason)"
        ) from exc


def load_failure(path: Path, exc: BaseException) -> ModelLoadError:
    if isinstance(exc, ModelLoadError):
        return exc
    error = ModelLoadError(f"{path}: cannot read the model file: {exc}")
    error.__cause__ = exc
    return error


def release(box: list[Any], pool: ThreadPoolExecutor | None) -> None:
    """Worker thread: wait for in-flight generations, then free llama.cpp (joins its loop)."""
    if pool is not None:
        pool.shutdown(wait=True)
    box.clear()
    gc.collect()
