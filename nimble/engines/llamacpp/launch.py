"""Starting and freeing llama.cpp's in-process server: the window per slot, the parameters
(`xllamacpp.CommonParams`), the load with a clear error, and the release that waits for
in-flight generations before llama.cpp's loop is joined."""

from __future__ import annotations

import gc
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
    slots = config.max_running
    threads = config.threads or usable_cpus()
    params = xllamacpp.CommonParams()
    params.model.path = str(spec.weights)
    params.n_parallel = slots
    params.n_ctx = window * slots
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
