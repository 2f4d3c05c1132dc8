"""Loading for the transformers engine: a Hugging Face folder, or a GGUF file converted once.

A GGUF file is dequantized by transformers' GGUF loader (slow: tens of seconds even for a
small model), so with a cache path it is converted once into
`cache_path/transformers/<sha256[:16]>` (model and tokenizer as float32 safetensors, written
under a file lock into a staging folder that is renamed into place) and loaded from there
afterwards; without a cache path it is dequantized at every start. The log says when a
conversion starts and how long each part took (transformers also draws its own progress bar
on stderr while it dequantizes). Runs on a worker thread.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import transformers
from filelock import FileLock
from transformers import AutoModelForCausalLM, AutoTokenizer, GgufConfig

from nimble.engines.config import EngineConfig
from nimble.errors import ModelLoadError
from nimble.models.files import sha256_of
from nimble.models.spec import ModelSpec
from nimble.types import ModelFile

log = logging.getLogger("nimble.engines.transformers")

MAX_CPU_CONTEXT = 8192  # without a configured window, the trained one is capped here on CPU
_FALLBACK_CONTEXT = 4096  # for a model config that does not say its trained window
_WEIGHT_PATTERNS = ("*.safetensors", "*.bin")
_GGUF_MAGIC = b"GGUF"


@dataclass
class Loaded:
    """A model on its device, with what the engine needs to know about it."""

    model: Any
    tokenizer: Any
    device: torch.device
    files: tuple[ModelFile, ...]
    context_length: int
    eos_ids: frozenset[int]
    temperature: float  # defaults from the model's generation_config
    top_p: float


def load(spec: ModelSpec, config: EngineConfig) -> Loaded:
    """Load `spec.weights` on the best device; ModelLoadError names the file and the cause."""
    path = spec.weights
    if not path.exists():
        raise ModelLoadError(f"{path}: no such file or folder")
    if not config.engine_log:
        # transformers' progress bars are not log lines (global: this process's transformers)
        transformers.utils.logging.disable_progress_bar()  # type: ignore[no-untyped-call]
    if config.threads:
        torch.set_num_threads(config.threads)
    cuda = torch.cuda.is_available()
    device = torch.device("cuda" if cuda else "cpu")
    dtype = torch.bfloat16 if cuda else torch.float32
    started = time.monotonic()
    if path.is_dir():
        files = _folder_files(path)
        model, tokenizer = _from_folder(path, dtype)
    elif _is_gguf(path):
        digest = sha256_of(path)
        files = (ModelFile(str(path), digest, path.stat().st_size),)
        if config.cache_path is None:
            log.info("dequantizing %s (no cache path: at every start)", path)
            model, tokenizer = _from_gguf(path, dtype)
        else:
            folder = config.cache_path / "transformers" / digest[:16]
            _convert_once(path, digest, folder)
            model, tokenizer = _from_folder(folder, dtype)
    else:
        raise ModelLoadError(f"{path}: neither a GGUF file nor a Hugging Face model folder")
    model = model.to(device).eval()
    log.info("loaded %s on %s (%s) in %.1fs", path, device, dtype, time.monotonic() - started)
    return Loaded(
        model=model,
        tokenizer=tokenizer,
        device=device,
        files=files,
        context_length=_window(model, spec, config, cuda),
        eos_ids=_eos_ids(model, tokenizer),
        **_sampling_defaults(model),
    )


def _from_folder(folder: Path, dtype: torch.dtype) -> tuple[Any, Any]:
    tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=dtype, local_files_only=True)
    return model, tokenizer


def _from_gguf(path: Path, dtype: torch.dtype) -> tuple[Any, Any]:
    tokenizer = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    model = AutoModelForCausalLM.from_pretrained(
        path.parent,
        gguf_file=path.name,
        dtype=dtype,
        quantization_config=GgufConfig(dequantize=True),
        local_files_only=True,
    )
    return model, tokenizer


def _convert_once(path: Path, digest: str, folder: Path) -> None:
    """Dequantize a GGUF file into a transformers folder, unless an earlier start did."""
    folder.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(folder) + ".lock"):
        if (folder / "config.json").is_file():
            log.info("using the converted copy of %s in %s", path, folder)
            return
        log.info("converting %s for transformers into %s (once; this takes a while)", path, folder)
        started = time.monotonic()
        model, tokenizer = _from_gguf(path, torch.float32)
        log.info("dequantized %s in %.1fs; writing safetensors", path, time.monotonic() - started)
        staging = folder.with_name(f"{folder.name}.partial-{os.getpid()}")
        try:
            model.save_pretrained(staging)
            tokenizer.save_pretrained(staging)
            source = {"gguf": str(path), "sha256": digest, "transformers": transformers.__version__}
            (staging / "nimble-source.json").write_text(json.dumps(source, indent=2) + "\n")
            staging.rename(folder)
        finally:
            shutil.rmtree(staging, ignore_errors=True)  # gone after the rename, unless it failed
        log.info("converted %s in %.1fs", path, time.monotonic() - started)


def _is_gguf(path: Path) -> bool:
    """By content, not name: a cache may keep files under their digest."""
    with path.open("rb") as file:
        return file.read(4) == _GGUF_MAGIC


def _folder_files(folder: Path) -> tuple[ModelFile, ...]:
    paths = sorted({p for pattern in _WEIGHT_PATTERNS for p in folder.glob(pattern)})
    if not paths:
        raise ModelLoadError(f"{folder}: no weight files (*.safetensors or *.bin) in this folder")
    return tuple(ModelFile(str(p), sha256_of(p), p.stat().st_size) for p in paths)


def _window(model: Any, spec: ModelSpec, config: EngineConfig, cuda: bool) -> int:
    if config.context_length:
        return config.context_length
    text_config = model.config.get_text_config(decoder=True)
    trained = getattr(text_config, "max_position_embeddings", None)
    window = int(trained or spec.context_length or _FALLBACK_CONTEXT)
    return window if cuda else min(window, MAX_CPU_CONTEXT)


def _eos_ids(model: Any, tokenizer: Any) -> frozenset[int]:
    ids: set[int] = set()
    for value in (getattr(model.generation_config, "eos_token_id", None), tokenizer.eos_token_id):
        if isinstance(value, int):
            ids.add(value)
        elif isinstance(value, list | tuple):
            ids.update(int(v) for v in value)
    return frozenset(ids)


def _sampling_defaults(model: Any) -> dict[str, float]:
    """Temperature and top_p from generation_config when the model samples by default."""
    generation = model.generation_config
    if not getattr(generation, "do_sample", False):
        return {"temperature": 1.0, "top_p": 1.0}
    temperature = getattr(generation, "temperature", None)
    top_p = getattr(generation, "top_p", None)
    return {
        "temperature": float(temperature) if temperature is not None else 1.0,
        "top_p": float(top_p) if top_p is not None else 1.0,
    }
