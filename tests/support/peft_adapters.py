"""PEFT LoRA adapter folders written by hand (no torch, no peft): `adapter_config.json`
and `adapter_model.safetensors` with the tensor names and shapes PEFT saves
(`base_model.model.<layer>.lora_A.weight` [r, in], `lora_B.weight` [out, r]), float32
values from a seed, so that two seeds are two different adapters. Also a safetensors file
of base-model weights (shapes only matter: zeros)."""

from __future__ import annotations

import json
import math
import struct
from pathlib import Path


def write_safetensors(
    path: Path, tensors: dict[str, tuple[list[int], list[float] | None]], note: str = ""
) -> Path:
    """A safetensors file of float32 tensors (values None: zeros)."""
    header: dict[str, object] = {"__metadata__": {"note": note}} if note else {}
    data = bytearray()
    for name, (shape, values) in tensors.items():
        count = math.prod(shape)
        chunk = struct.pack(f"<{count}f", *values) if values is not None else bytes(4 * count)
        header[name] = {
            "dtype": "F32",
            "shape": shape,
            "data_offsets": [len(data), len(data) + len(chunk)],
        }
        data += chunk
    raw = json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + bytes(data))
    return path


def write_peft(
    folder: Path,
    *,
    rank: int = 8,
    layers: dict[str, tuple[int, int]] | None = None,
    targets: tuple[str, ...] | None = None,
    seed: int = 1,
    scale: float = 0.05,
    alpha: int | None = None,
    extra: dict[str, object] | None = None,
) -> Path:
    """A LoRA adapter folder over `layers` ({"model.layers.0.self_attn.q_proj": (in, out)});
    `targets`: the config's target_modules (default: the layers' last names); `extra`: more
    adapter_config.json fields."""
    layers = layers or {"model.layers.0.self_attn.q_proj": (64, 64)}
    folder.mkdir(parents=True, exist_ok=True)
    tensors: dict[str, tuple[list[int], list[float] | None]] = {}
    for n, (layer, (size_in, size_out)) in enumerate(sorted(layers.items())):
        a = [scale * math.sin(seed * 7.1 + n + i * 0.37) for i in range(rank * size_in)]
        b = [scale * math.cos(seed * 3.3 + n + i * 0.53) for i in range(size_out * rank)]
        tensors[f"base_model.model.{layer}.lora_A.weight"] = ([rank, size_in], a)
        tensors[f"base_model.model.{layer}.lora_B.weight"] = ([size_out, rank], b)
    write_safetensors(folder / "adapter_model.safetensors", tensors, note=f"seed {seed}")
    names = targets if targets is not None else sorted({k.rsplit(".", 1)[-1] for k in layers})
    config = {
        "peft_type": "LORA",
        "task_type": "CAUSAL_LM",
        "r": rank,
        "lora_alpha": alpha if alpha is not None else 2 * rank,
        "lora_dropout": 0.0,
        "bias": "none",
        "target_modules": list(names),
        "base_model_name_or_path": None,
        **(extra or {}),
    }
    (folder / "adapter_config.json").write_text(json.dumps(config, indent=2))
    return folder
