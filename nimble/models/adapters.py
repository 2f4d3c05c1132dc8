"""LoRA adapters on disk: what one is, where nimble finds them, and which model each adapts.

Two formats, by engine: a GGUF adapter file (llama.cpp; `convert_lora_to_gguf.py` writes
them) and a PEFT folder (`adapter_config.json` + `adapter_model.safetensors`: vLLM and
transformers). In `--lora-dir DIR` each adapter is one entry, named by it without its
extension: `DIR/pirate.gguf`, `DIR/pirate/` (a PEFT folder, or a folder with one `.gguf`).
Names starting with `.` are skipped (Kubernetes' ConfigMap and Secret volumes keep their
real files in `..data`), and so are `.tmp`/`.part` files still being written.

Which model an adapter adapts: `base: <model id>` in a small manifest beside it
(`DIR/pirate.yaml` for a file, `nimble-adapter.yaml` inside a folder); without one, the
only generative model served. With several and no manifest the adapter is refused, naming
the file and the manifest to write.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import yaml

from nimble.errors import ConfigError
from nimble.models.files import sha256_of

AdapterFormat = Literal["gguf", "peft"]
AdapterOrigin = Literal["flag", "dir", "api", "manifest"]  # manifest: a model manifest's `lora`

FOLDER_MANIFEST = "nimble-adapter.yaml"
PEFT_CONFIG = "adapter_config.json"
_PEFT_WEIGHTS = ("adapter_model.safetensors", "adapter_model.bin")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:@/-]{0,127}$")
_SKIPPED_SUFFIXES = (".tmp", ".part", ".partial", ".yaml", ".yml", ".json", ".md", ".txt")


@dataclass(frozen=True)
class AdapterSpec:
    """One LoRA adapter, resolved: served as `name`, applied over model `base`."""

    name: str
    base: str
    path: Path  # the GGUF file, or the PEFT folder
    format: AdapterFormat
    sha256: str  # of the GGUF file, or of the PEFT folder's weights file
    origin: AdapterOrigin = "flag"
    rank: int | None = None  # PEFT's `r` (GGUF files do not all say it)


@dataclass(frozen=True)
class FoundAdapter:
    """An adapter on disk before its base is known."""

    name: str
    path: Path
    format: AdapterFormat


def check_name(name: str, where: str) -> str:
    if not _NAME.match(name):
        raise ConfigError(
            f"{where}: `{name}` cannot name an adapter (letters, digits and ._:@/- only, "
            "starting with a letter or digit, at most 128)"
        )
    return name


def parse_flag(value: str) -> FoundAdapter:
    """`--lora NAME=PATH`: a GGUF file or a PEFT folder (a folder with one GGUF file too)."""
    name, sep, path = value.partition("=")
    if not sep or not name or not path:
        raise ConfigError(f"--lora {value}: write NAME=PATH (a GGUF adapter or a PEFT folder)")
    found = identify(Path(path).expanduser(), check_name(name, f"--lora {value}"))
    if found is None:
        raise ConfigError(
            f"--lora {value}: {path} is neither a GGUF adapter file nor a PEFT adapter folder "
            f"(with {PEFT_CONFIG})"
        )
    return found


def identify(path: Path, name: str) -> FoundAdapter | None:
    """The adapter at `path` (None: nothing there is one)."""
    if path.is_file() and path.suffix == ".gguf":
        return FoundAdapter(name, path, "gguf")
    if path.is_dir():
        if (path / PEFT_CONFIG).is_file():
            return FoundAdapter(name, path, "peft")
        ggufs = sorted(p for p in path.glob("*.gguf") if p.is_file())
        if len(ggufs) == 1:
            return FoundAdapter(name, ggufs[0], "gguf")
    return None


def scan(directory: Path) -> dict[str, FoundAdapter]:
    """Every adapter in `directory` by name (files still being written are left out)."""
    found: dict[str, FoundAdapter] = {}
    if not directory.is_dir():
        return found
    for entry in sorted(directory.iterdir()):
        if entry.name.startswith(".") or entry.name.endswith(_SKIPPED_SUFFIXES):
            continue
        name = entry.stem if entry.is_file() else entry.name
        if not _NAME.match(name):
            continue
        adapter = identify(entry, name)
        if adapter is not None:
            found[name] = adapter
    return found


def fingerprint(adapter: FoundAdapter) -> tuple[tuple[str, int, int], ...]:
    """Size and modification time of the adapter's files and its manifest: a change in
    any of them is a changed adapter (and a fingerprint that moves between two looks is a
    file still being copied)."""
    root = adapter.path if adapter.format == "peft" else adapter.path.parent
    paths = [*_manifest_paths(adapter)]
    paths += sorted(root.iterdir()) if adapter.format == "peft" else [adapter.path]
    marks = []
    for path in paths:
        try:
            stat = path.stat()
        except OSError:
            continue
        if path.is_file():
            marks.append((path.name, stat.st_size, stat.st_mtime_ns))
    return tuple(marks)


def resolve(
    adapter: FoundAdapter, generative: list[str], origin: AdapterOrigin, base: str | None = None
) -> AdapterSpec:
    """The adapter with its base model (`base`, else from its manifest, else the only
    generative model), its sha256 and rank. `generative`: the ids of the served
    chat/completion models."""
    base = base or _manifest_base(adapter)
    where = adapter.path
    if base is None:
        if len(generative) != 1:
            manifest = _manifest_paths(adapter)[0]
            served = ", ".join(generative) or "none"
            raise ConfigError(
                f"{where}: cannot tell which model adapter `{adapter.name}` adapts; write "
                f"`base: <model id>` in {manifest} (generative models served: {served})"
            )
        base = generative[0]
    elif base not in generative:
        raise ConfigError(
            f"{where}: adapter `{adapter.name}` names base `{base}`, which is not a "
            f"generative model served here ({', '.join(generative) or 'none'})"
        )
    rank = _peft_rank(adapter.path) if adapter.format == "peft" else None
    weights = adapter.path
    if adapter.format == "peft":
        weights = next((weights / n for n in _PEFT_WEIGHTS if (weights / n).is_file()), weights)
        if not weights.is_file():
            raise ConfigError(f"{adapter.path}: a PEFT adapter folder without adapter weights")
    return AdapterSpec(
        adapter.name, base, adapter.path, adapter.format, sha256_of(weights), origin, rank
    )


def _manifest_paths(adapter: FoundAdapter) -> list[Path]:
    if adapter.format == "peft":
        return [adapter.path / FOLDER_MANIFEST]
    folder_manifest = adapter.path.parent / FOLDER_MANIFEST
    return [adapter.path.with_suffix(".yaml"), folder_manifest]


def _manifest_base(adapter: FoundAdapter) -> str | None:
    for path in _manifest_paths(adapter):
        if not path.is_file():
            continue
        try:
            data = yaml.safe_load(path.read_text())
        except (OSError, yaml.YAMLError) as exc:
            raise ConfigError(f"{path}: not a readable adapter manifest: {exc}") from exc
        if not isinstance(data, dict) or not isinstance(data.get("base"), str):
            raise ConfigError(f"{path}: an adapter manifest is `base: <model id>`")
        return str(data["base"])
    return None


def _peft_rank(folder: Path) -> int | None:
    try:
        config = json.loads((folder / PEFT_CONFIG).read_text())
    except (OSError, ValueError) as exc:
        raise ConfigError(f"{folder / PEFT_CONFIG}: not a readable PEFT config: {exc}") from exc
    rank = config.get("r") if isinstance(config, dict) else None
    return rank if isinstance(rank, int) else None
