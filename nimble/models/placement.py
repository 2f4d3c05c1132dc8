"""Where the models of one `nimble serve` run on the machine's NVIDIA GPUs, and how much of
each GPU each may take.

Each profile is selected as if its model were alone (`select.py`): a vLLM profile counts on
90% of its GPUs. Served together, models share them:

- A model's need is estimated as in `select.py`: its weights, `OVERHEAD_GB` per device and
  the KV cache of its context window (llama.cpp: one window per slot), spread evenly over
  its tensor-parallel GPUs. A vLLM profile that states no weights takes its GPUs whole.
- Engines inside this process that use a GPU when there is one (transformers,
  sentence-transformers) use CUDA's first device: they are placed on the first GPU.
- vLLM models, largest need first, each go to the GPUs its profile may use that have the
  most room left, so that models get GPUs of their own while there are enough. With more
  than one model on the GPUs, each vLLM process sees only its own (CUDA_VISIBLE_DEVICES).
- A GGUF model (llama.cpp, inside this process) offloads every layer to the first GPU when
  its need fits in the room left there; otherwise it runs on the CPU and says why.
- A GPU that holds several models is split by need: a vLLM model gets its need plus a share
  of what is left in proportion to its need (`--gpu-memory-utilization`); the others get
  their need. A model that does not fit in the room left stops the start: ConfigError, one
  line with the models and the numbers.
- A vLLM model runs `max_num_seqs` sequences at once: the profile's, else vLLM's own
  default for its GPU, written down so that nimble's admission and vLLM's batch agree.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from dataclasses import dataclass

from nimble.errors import ConfigError
from nimble.models.hardware import GpuInfo, HardwareInfo
from nimble.models.manifest import ANY_DEVICE_ENGINES
from nimble.models.select import (
    GPU_MEMORY_UTILIZATION,
    OVERHEAD_GB,
    Concurrency,
    Selection,
    eligible_gpus,
)
from nimble.models.spec import ModelSpec

_GB = 1e9
_GIB = 1 << 30


@dataclass(frozen=True)
class Placement:
    """One model's place: `devices` as in ModelSpec.devices; `memory_fraction`: vLLM's
    gpu_memory_utilization (None: vLLM's default); `max_num_seqs`: vLLM's batch when its
    profile sets none; `note`: what was decided, for the log."""

    devices: tuple[int, ...] | None = None
    memory_fraction: float | None = None
    max_num_seqs: int | None = None
    note: str = ""


def vllm_max_num_seqs(gpu: GpuInfo) -> int:
    """vLLM's own default for its OpenAI server (EngineArgs.get_batch_defaults): 1024 on a
    GPU of 70 GiB or more that is not an A100, else 256."""
    big = gpu.memory_gb * _GB >= 70 * _GIB and "a100" not in gpu.name.lower()
    return 1024 if big else 256


def need_bytes(selection: Selection, concurrency: Concurrency) -> int | None:
    """Estimated memory of the selected profile (None: its weights are not stated)."""
    profile = selection.profile
    weights = profile.weights_bytes
    if weights is None:
        return None
    devices = profile.tensor_parallel_size if profile.uses_gpu else 1
    kv, context = selection.manifest.kv_bytes_per_token, selection.selected.context
    cache = kv * context * concurrency.slots(profile) if kv and context else 0
    return int(weights + OVERHEAD_GB * _GB * devices + cache)


def place(
    selections: Sequence[Selection], hardware: HardwareInfo, concurrency: Concurrency
) -> dict[str, Placement]:
    """The place of each model (by served id). Raises ConfigError when they cannot fit."""
    if not hardware.gpus:
        return {}
    plan = _Plan(hardware)
    first = hardware.gpus[0]
    placed: dict[str, tuple[int, ...]] = {}
    notes: dict[str, str] = {}
    for s in selections:  # in this process: on CUDA's first device, as the engine picks it
        if s.profile.engine in ANY_DEVICE_ENGINES:
            small = need_bytes(s, concurrency) or OVERHEAD_GB * _GB
            plan.take(s.manifest.id, (first,), small, vllm=False)
    vllm = [s for s in selections if s.profile.engine == "vllm"]
    for s in sorted(vllm, key=lambda s: -(need_bytes(s, concurrency) or math.inf)):
        gpus = sorted(eligible_gpus(s.profile, hardware), key=lambda g: -plan.room[g.index])
        chosen = tuple(gpus[: s.profile.tensor_parallel_size])
        need = need_bytes(s, concurrency)
        whole = min(plan.usable[g.index] for g in chosen) * len(chosen)
        plan.take(s.manifest.id, chosen, whole if need is None else need, vllm=True)
        placed[s.manifest.id] = tuple(g.index for g in chosen)
    for s in selections:  # llama.cpp offloads to the first GPU when it fits there
        if s.profile.engine == "llamacpp":
            placed[s.manifest.id], notes[s.manifest.id] = _offload(s, plan, first, concurrency)
    pin = plan.residents() > 1
    result = {}
    for s in selections:
        name = s.manifest.id
        if s.profile.engine == "vllm":
            devices = placed[name]
            fraction = plan.fraction(name, devices)
            seqs = None
            if s.profile.settings.max_batch_size is None:
                gpu = next(g for g in hardware.gpus if g.index == devices[0]) if pin else first
                seqs = vllm_max_num_seqs(gpu)
                tokens = s.profile.settings.max_batched_tokens
                if tokens is not None:  # vLLM clamps its default to the token budget
                    seqs = min(seqs, tokens)
            share = f", {fraction:.0%} of its memory" if fraction is not None else ""
            note = f"GPU {','.join(map(str, devices))}{share}" if pin else ""
            result[name] = Placement(devices if pin else None, fraction, seqs, note)
        elif name in placed:
            result[name] = Placement(placed[name], note=notes[name])
    return result


def _offload(
    selection: Selection, plan: _Plan, gpu: GpuInfo, concurrency: Concurrency
) -> tuple[tuple[int, ...], str]:
    need = need_bytes(selection, concurrency)
    room = plan.room[gpu.index]
    if need is not None and need <= room:
        plan.take(selection.manifest.id, (gpu,), need, vllm=False)
        return (gpu.index,), f"every layer on GPU {gpu.index} ({need / _GB:.1f} GB)"
    why = "its memory need is not stated" if need is None else f"it needs {need / _GB:.1f} GB"
    return (), f"on the CPU: {why}, {room / _GB:.1f} GB left on GPU {gpu.index}"


def placed_spec(spec: ModelSpec, placement: Placement) -> ModelSpec:
    """The spec with its place: devices, and vLLM's memory share and batch as options."""
    options = dict(spec.options)
    if placement.memory_fraction is not None:
        options["gpu_memory_utilization"] = f"{placement.memory_fraction:g}"
    if placement.max_num_seqs is not None:
        options.setdefault("max_num_seqs", str(placement.max_num_seqs))
    return dataclasses.replace(spec, devices=placement.devices, options=options)


class _Plan:
    """What each GPU holds so far (bytes per device), and the room left on it."""

    def __init__(self, hardware: HardwareInfo):
        self.gpus = {g.index: g for g in hardware.gpus}
        self.usable = {g.index: g.memory_gb * _GB * GPU_MEMORY_UTILIZATION for g in hardware.gpus}
        self.room = dict(self.usable)
        self.on: dict[int, list[tuple[str, float, bool]]] = {i: [] for i in self.gpus}

    def take(self, name: str, gpus: tuple[GpuInfo, ...], need: float, *, vllm: bool) -> None:
        each = need / len(gpus)
        for gpu in gpus:
            if each > self.room[gpu.index]:
                raise ConfigError(self._refusal(name, each, gpu))
        for gpu in gpus:
            self.room[gpu.index] -= each
            self.on[gpu.index].append((name, each, vllm))

    def residents(self) -> int:
        return len({name for held in self.on.values() for name, _, _ in held})

    def fraction(self, name: str, devices: tuple[int, ...]) -> float | None:
        """vLLM's share of each of its GPUs: its need plus its part of what is left, the
        smallest over its GPUs (None: it is alone on them)."""
        if all(len(self.on[i]) == 1 for i in devices):
            return None
        shares = []
        for i in devices:
            mine = next(each for who, each, _ in self.on[i] if who == name)
            vllm = sum(each for _, each, is_vllm in self.on[i] if is_vllm)
            share = mine + self.room[i] * mine / vllm
            shares.append(share / (self.gpus[i].memory_gb * _GB))
        return math.floor(min(shares) * 1000) / 1000

    def _refusal(self, name: str, each: float, gpu: GpuInfo) -> str:
        held = self.on[gpu.index]
        models = [f"{who} {need / _GB:.1f} GB" for who, need, _ in held] + [
            f"{name} {each / _GB:.1f} GB"
        ]
        total = sum(need for _, need, _ in held) + each
        return (
            f"the models do not fit on GPU {gpu.index} ({gpu.name}, {gpu.memory_gb:.0f} GB): "
            f"{', '.join(models)} need {total / _GB:.1f} GB, "
            f"{self.usable[gpu.index] / _GB:.1f} GB usable ({GPU_MEMORY_UTILIZATION:.0%}); "
            "serve them on more GPUs, with less context (--context-length) or smaller "
            "profiles, or from separate nimble processes"
        )
