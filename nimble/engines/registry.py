"""Engines by import string, imported lazily so that `import nimble` stays light."""

from __future__ import annotations

import importlib
import importlib.util
import shutil
from typing import cast

from nimble.engines.base import Engine, EngineConfig
from nimble.errors import ModelLoadError
from nimble.models.spec import ModelSpec

# name -> ("module:Class", pip extra that provides its library)
_ENGINES: dict[str, tuple[str, str]] = {
    "llamacpp": ("nimble.engines.llamacpp:LlamaCppEngine", "nimble[llamacpp]"),
    "onnx": ("nimble.engines.onnx_embed:OnnxEmbeddingEngine", "nimble[onnx]"),
    "transformers": ("nimble.engines.hf_transformers:TransformersEngine", "nimble[transformers]"),
    "vllm": ("nimble.engines.vllm_server:VllmEngine", "nimble[gpu]"),
    "sentence_transformers": (
        "nimble.engines.st_engine:SentenceTransformersEngine",
        "nimble[st]",
    ),
    "fake": ("nimble.engines.fake:FakeEngine", "nimble"),
}


# engine -> the Python modules it needs (a supervised engine needs its executable instead)
_NEEDS: dict[str, tuple[str, ...]] = {
    "llamacpp": ("xllamacpp",),
    "onnx": ("onnxruntime", "tokenizers"),
    "transformers": ("torch", "transformers"),
    "sentence_transformers": ("torch", "sentence_transformers"),
    "fake": (),
}


def known_engines() -> tuple[str, ...]:
    return tuple(sorted(_ENGINES))


def engine_unavailable(name: str, command: tuple[str, ...] | None = None) -> str | None:
    """Why `name` cannot run in this installation (None: it can). Imports nothing heavy."""
    if name not in _ENGINES:
        return f"engine {name} is not part of this nimble version"
    extra = _ENGINES[name][1]
    if name == "vllm":
        executable = (command or ("vllm",))[0]
        if shutil.which(executable) is None:
            return f"engine vllm: `{executable}` not found (pip install '{extra}')"
        return None
    missing = [m for m in _NEEDS.get(name, ()) if importlib.util.find_spec(m) is None]
    if missing:
        return f"engine {name} needs {', '.join(missing)} (pip install '{extra}')"
    return None


def create_engine(spec: ModelSpec, config: EngineConfig) -> Engine:
    try:
        target, extra = _ENGINES[spec.engine]
    except KeyError:
        raise ModelLoadError(
            f"{spec.weights}: unknown engine {spec.engine!r} for model {spec.id!r} "
            f"(known: {', '.join(known_engines())})"
        ) from None
    module_name, _, class_name = target.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ModelLoadError(
            f"{spec.weights}: engine {spec.engine!r} needs {exc.name or 'a library'} that is "
            f"not installed (pip install '{extra}')"
        ) from exc
    engine_cls = getattr(module, class_name)
    return cast(Engine, engine_cls(spec, config))
