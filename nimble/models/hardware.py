"""What this machine has: CPU (cores, flags, RAM) and NVIDIA GPUs (through NVML).

`detect_hardware()` reads the real machine; `load_hardware(path)` reads a YAML/JSON
description instead (the fake hardware source that tests and `list-profiles` demos use,
set with NIMBLE_HARDWARE_FILE). NVML comes from the `nvidia-ml-py` package (`pynvml`),
imported only here and only when detecting; without it, or without a driver, the machine
simply has no GPUs, and the reason is kept in `HardwareInfo.notes`.
"""

from __future__ import annotations

import os
import platform
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from nimble.errors import ConfigError

_GB = 1e9


class GpuInfo(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    index: int = 0
    vendor: str = "nvidia"
    name: str
    memory_gb: float = Field(gt=0)
    compute_capability: float | None = None


class HardwareInfo(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    cpu_model: str = ""
    cpu_cores: int = Field(ge=1)
    cpu_features: frozenset[str] = frozenset()
    ram_gb: float = Field(gt=0)
    gpus: tuple[GpuInfo, ...] = ()
    driver_version: str | None = None
    source: str = "detected"
    notes: tuple[str, ...] = ()

    def summary(self) -> str:
        flags = [f for f in ("avx2", "avx512f", "amx_tile", "neon") if f in self.cpu_features]
        features = ", ".join(flags) or "no AVX2"
        cpu = f"{self.cpu_cores} CPU cores ({features}), {self.ram_gb:.0f} GB RAM"
        if not self.gpus:
            return f"{cpu}, no GPU"
        names: dict[str, int] = {}
        for gpu in self.gpus:
            key = f"{gpu.name} {gpu.memory_gb:.0f} GB"
            names[key] = names.get(key, 0) + 1
        return f"{cpu}, " + ", ".join(f"{n}x {key}" for key, n in names.items())

    def as_record(self) -> dict[str, Any]:
        return self.model_dump(mode="json") | {"cpu_features": sorted(self.cpu_features)}


def detect_hardware() -> HardwareInfo:
    model, flags = _cpuinfo()
    gpus, driver, notes = _nvml_gpus()
    return HardwareInfo(
        cpu_model=model or platform.processor() or platform.machine(),
        cpu_cores=len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else 1,
        cpu_features=flags,
        ram_gb=_ram_bytes() / _GB,
        gpus=gpus,
        driver_version=driver,
        notes=notes,
    )


def load_hardware(path: Path) -> HardwareInfo:
    """A machine described in a file (for tests and what-if listings)."""
    try:
        data = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigError(f"{path}: cannot read hardware description: {exc}") from None
    try:
        return HardwareInfo.model_validate({"source": f"file {path}", **(data or {})})
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        raise ConfigError(f"{path}: invalid hardware description: {problems}") from None


def _cpuinfo() -> tuple[str, frozenset[str]]:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return "", frozenset()
    model, flags = "", frozenset[str]()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key = key.strip()
        if key == "model name" and not model:
            model = value.strip()
        elif key in ("flags", "Features") and not flags:
            flags = frozenset(value.split())
    return model, flags


def _ram_bytes() -> int:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError):
        return int(8 * _GB)


def _nvml_gpus() -> tuple[tuple[GpuInfo, ...], str | None, tuple[str, ...]]:
    try:
        import pynvml
    except ImportError:
        return (), None, ("no NVML (pip install 'nimble[gpu]' for NVIDIA GPU detection)",)
    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError as exc:
        return (), None, (f"no NVIDIA driver: {exc}",)
    try:
        driver = _text(pynvml.nvmlSystemGetDriverVersion())
        gpus = []
        for index in range(pynvml.nvmlDeviceGetCount()):
            handle = pynvml.nvmlDeviceGetHandleByIndex(index)
            major, minor = pynvml.nvmlDeviceGetCudaComputeCapability(handle)
            gpus.append(
                GpuInfo(
                    index=index,
                    name=_text(pynvml.nvmlDeviceGetName(handle)),
                    memory_gb=pynvml.nvmlDeviceGetMemoryInfo(handle).total / _GB,
                    compute_capability=float(f"{major}.{minor}"),
                )
            )
        return tuple(gpus), driver, ()
    except pynvml.NVMLError as exc:
        return (), None, (f"NVML error: {exc}",)
    finally:
        pynvml.nvmlShutdown()


def _text(value: str | bytes) -> str:
    return value.decode() if isinstance(value, bytes) else value
