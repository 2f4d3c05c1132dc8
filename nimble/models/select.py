"""Choose the profile to run on this machine, and say why.

1. Drop what cannot run here, each with its reason: missing engine, CPU flags, RAM, GPU
   count/type/memory/compute capability, weights that do not fit.
2. A profile whose weights fit but whose full context does not is kept as "runnable with
   less context", with the context that fits.
3. Among the rest: GPU profiles before CPU ones, then the manifest's engine order, then
   the longest context that fits, then the higher precision, then more GPUs.
`NIMBLE_MODEL_PROFILE` (a name, id or id prefix) skips the ranking, but not the checks.

Memory model (an estimate, stated in every reason): a GPU profile may use
`GPU_MEMORY_UTILIZATION` of each GPU's memory (vLLM's default); a CPU profile
`RAM_UTILIZATION` of the RAM. The need is the weights, plus an overhead for activations
(`OVERHEAD_GB` per device), plus the KV cache of one full context window
(`kv_bytes_per_token` x tokens); llama.cpp gives each of its slots a window of its own
(`n_ctx` = window x slots), so a llama.cpp profile counts one window per slot.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

from nimble.errors import ConfigError
from nimble.models.hardware import GpuInfo, HardwareInfo
from nimble.models.manifest import ModelManifest, Profile

GPU_MEMORY_UTILIZATION = 0.9
RAM_UTILIZATION = 0.8
OVERHEAD_GB = 1.0
MIN_CONTEXT = 2048  # below this a "less context" profile is not worth serving
DEFAULT_SLOTS = 4  # llama.cpp slots without max_batch_size or max_running
REMOTE_CODE = (
    "needs the Python code of its model repository (trust_remote_code), which nimble does not run"
)
_GB = 1e9

Status = Literal["runnable", "reduced", "not_runnable"]
EngineCheck = Callable[[str], str | None]  # engine name -> why it is unavailable, or None


@dataclass(frozen=True)
class Concurrency:
    """The operator's max_batch_size and max_running, as far as memory is concerned."""

    max_batch_size: int | None = None
    max_running: int | None = None

    def slots(self, profile: Profile) -> int:
        """Context windows the profile's engine allocates at once: llama.cpp's slots (the
        operator's max_batch_size, the profile's, max_running, else 4), as the engine
        takes them; one for every other engine (vLLM pages its KV cache)."""
        if profile.engine != "llamacpp":
            return 1
        return (
            self.max_batch_size
            or profile.settings.max_batch_size
            or self.max_running
            or DEFAULT_SLOTS
        )


@dataclass(frozen=True)
class Candidate:
    profile: Profile
    status: Status
    context: int | None  # context it would serve (None when not runnable)
    reason: str


@dataclass(frozen=True)
class Selection:
    manifest: ModelManifest
    hardware: HardwareInfo
    candidates: tuple[Candidate, ...]  # best first; not runnable ones last
    selected: Candidate
    reason: str

    @property
    def profile(self) -> Profile:
        return self.selected.profile


def assess(
    manifest: ModelManifest,
    profile: Profile,
    hardware: HardwareInfo,
    *,
    engine_check: EngineCheck,
    context: int | None = None,
    concurrency: Concurrency = Concurrency(),
) -> Candidate:
    """Can this profile run on this machine, and with how much context?"""
    target = context or profile.settings.context_length or manifest.context_length
    problem = (
        REMOTE_CODE
        if manifest.remote_code
        else _hardware_problem(profile, hardware) or engine_check(profile.engine)
    )
    if problem:
        return Candidate(profile, "not_runnable", None, problem)
    weights = profile.weights_bytes
    if weights is None:
        return Candidate(profile, "runnable", target, "fits (memory need not stated)")
    devices, budget, where = _budget(profile, hardware)
    free = budget - weights - OVERHEAD_GB * _GB * devices
    if free < 0:
        need = (weights + OVERHEAD_GB * _GB * devices) / _GB
        return Candidate(
            profile,
            "not_runnable",
            None,
            f"needs {need:.1f} GB for weights and overhead, {budget / _GB:.1f} GB usable {where}",
        )
    if manifest.kv_bytes_per_token is None or target is None:
        return Candidate(profile, "runnable", target, f"fits in {budget / _GB:.1f} GB {where}")
    slots = concurrency.slots(profile)
    per_slot = f" x {slots} slots" if slots > 1 else ""
    fits = int(free // (manifest.kv_bytes_per_token * slots))
    if fits >= target:
        return Candidate(
            profile,
            "runnable",
            target,
            f"weights and {target} tokens of context{per_slot} fit in "
            f"{budget / _GB:.1f} GB {where}",
        )
    usable = fits // 256 * 256
    if usable >= MIN_CONTEXT:
        return Candidate(
            profile,
            "reduced",
            usable,
            f"only {usable} of {target} tokens of context{per_slot} fit in "
            f"{budget / _GB:.1f} GB {where}",
        )
    return Candidate(
        profile,
        "not_runnable",
        None,
        f"weights fit but less than {MIN_CONTEXT} tokens of context{per_slot} do "
        f"({budget / _GB:.1f} GB {where})",
    )


def select_profile(
    manifest: ModelManifest,
    hardware: HardwareInfo,
    *,
    engine_check: EngineCheck,
    requested: str | None = None,
    context: int | None = None,
    concurrency: Concurrency = Concurrency(),
) -> Selection:
    """Pick the profile to run; ConfigError when none can (every reason listed)."""
    candidates = [
        assess(
            manifest,
            p,
            hardware,
            engine_check=engine_check,
            context=context,
            concurrency=concurrency,
        )
        for p in manifest.profiles
    ]
    ranked = sorted(candidates, key=lambda c: _rank(manifest, c))
    if requested:
        wanted = manifest.profile(requested)
        chosen = next(c for c in candidates if c.profile is wanted)
        if chosen.status == "not_runnable":
            raise ConfigError(
                f"profile {wanted.name} of {manifest.id} cannot run here: {chosen.reason}"
            )
        reason = f"requested by NIMBLE_MODEL_PROFILE; {chosen.reason}"
        return Selection(manifest, hardware, tuple(ranked), chosen, reason)
    runnable = [c for c in ranked if c.status != "not_runnable"]
    if not runnable:
        reasons = "; ".join(f"{c.profile.name}: {c.reason}" for c in candidates)
        raise ConfigError(f"no profile of {manifest.id} can run here ({reasons})")
    chosen = runnable[0]
    return Selection(manifest, hardware, tuple(ranked), chosen, _why(manifest, chosen, runnable))


def _why(manifest: ModelManifest, chosen: Candidate, runnable: list[Candidate]) -> str:
    kind = "GPU" if chosen.profile.uses_gpu else "CPU"
    parts = [f"{chosen.profile.name}: {chosen.reason}"]
    if len(runnable) > 1:
        parts.append(
            f"preferred over {len(runnable) - 1} other runnable profile(s): {kind} "
            f"engine {chosen.profile.engine} ranks "
            f"{_engine_rank(manifest, chosen.profile.engine) + 1} in the engine order"
            + (", longest context" if chosen.status == "runnable" else "")
        )
    else:
        parts.append("the only profile that can run here")
    return "; ".join(parts)


def _rank(manifest: ModelManifest, c: Candidate) -> tuple[int, int, int, int, int, int]:
    order = {"runnable": 0, "reduced": 0, "not_runnable": 1}[c.status]
    return (
        order,
        0 if c.profile.uses_gpu else 1,
        _engine_rank(manifest, c.profile.engine),
        -(c.context or 0),
        -precision_bits(c.profile.precision),
        -c.profile.tensor_parallel_size,
    )


def _engine_rank(manifest: ModelManifest, engine: str) -> int:
    order = list(manifest.engine_order)
    return order.index(engine) if engine in order else len(order)


def precision_bits(precision: str) -> int:
    """bf16 → 16, fp8 → 8, q4_k_m → 4, awq-int4 → 4; unknown → 0."""
    found = re.findall(r"(\d+)", precision)
    return int(found[-1]) if found else 0


def _hardware_problem(profile: Profile, hardware: HardwareInfo) -> str | None:
    needs = profile.hardware
    missing = [flag for flag in needs.cpu_features if flag not in hardware.cpu_features]
    if missing:
        return f"CPU lacks {', '.join(missing)}"
    if hardware.ram_gb < needs.min_ram_gb:
        return f"needs {needs.min_ram_gb:g} GB RAM, the machine has {hardware.ram_gb:.1f} GB"
    gpu = needs.gpu
    if gpu is None:
        return None
    if not hardware.gpus:
        return f"needs {gpu.count} NVIDIA GPU(s), found none"
    fit = eligible_gpus(profile, hardware)
    if len(fit) >= gpu.count:
        return None
    wants = [f"{gpu.count}x GPU with >= {gpu.min_memory_gb:g} GB"]
    if gpu.names:
        wants.append(f"one of {'/'.join(gpu.names)}")
    if gpu.min_compute_capability:
        wants.append(f"compute capability >= {gpu.min_compute_capability:g}")
    found = ", ".join(
        f"{g.name} {g.memory_gb:.0f} GB (cc {g.compute_capability})" for g in hardware.gpus
    )
    return f"needs {', '.join(wants)}; found {len(fit)} such of {found}"


def eligible_gpus(profile: Profile, hardware: HardwareInfo) -> list[GpuInfo]:
    gpu = profile.hardware.gpu
    assert gpu is not None
    return [
        g
        for g in hardware.gpus
        if g.memory_gb >= gpu.min_memory_gb
        and (not gpu.names or any(n.lower() in g.name.lower() for n in gpu.names))
        and (
            gpu.min_compute_capability is None
            or (g.compute_capability or 0) >= gpu.min_compute_capability
        )
    ]


def _budget(profile: Profile, hardware: HardwareInfo) -> tuple[int, float, str]:
    """(devices, usable bytes, where) for the weights and KV cache of this profile."""
    if profile.uses_gpu:
        gpus = sorted(eligible_gpus(profile, hardware), key=lambda g: -g.memory_gb)
        used = gpus[: profile.tensor_parallel_size]
        per_gpu = min(g.memory_gb for g in used) * _GB * GPU_MEMORY_UTILIZATION
        return len(used), per_gpu * len(used), f"on {len(used)} GPU(s)"
    return 1, hardware.ram_gb * _GB * RAM_UTILIZATION, "of RAM"
