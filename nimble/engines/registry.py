"""Engines by import string, imported lazily so that `import nimble` stays light."""

from __future__ import annotations

import importlib
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
    "fake": ("nimble.engines.fake:FakeEngine", "nimble"),
}


def known_engines() -> tuple[str, ...]:
    return tuple(sorted(_ENGINES))


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
