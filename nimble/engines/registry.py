"""Engines by import string, imported lazily so that `import nimble` stays light."""

from __future__ import annotations

import importlib
import importlib.util
import shutil
from dataclasses import dataclass
from typing import cast

from nimble.engines.base import Engine
from nimble.engines.config import EngineConfig
from nimble.errors import ModelLoadError
from nimble.models.spec import ModelSpec


@dataclass(frozen=True)
class EngineEntry:
    """Where an engine lives and what this installation needs to run it."""

    target: str  # "module:Class"
    extra: str  # the pip extra that provides its libraries
    needs: tuple[str, ...] = ()  # Python modules it imports
    executable: str | None = None  # a supervised engine's program (engine_command overrides)
    # started before the other engines of the process: llama.cpp's prompt processing is 2-3 %
    # slower for good when numpy and ONNX Runtime were loaded before its model (onnx/compute.py)
    loads_first: bool = False


_ENGINES: dict[str, EngineEntry] = {
    "llamacpp": EngineEntry(
        "nimble.engines.llamacpp.engine:LlamaCppEngine",
        "nimble[llamacpp]",
        ("xllamacpp",),
        loads_first=True,
    ),
    "onnx": EngineEntry(
        "nimble.engines.onnx.engine:OnnxEmbeddingEngine",
        "nimble[onnx]",
        ("onnxruntime", "tokenizers"),
    ),
    "transformers": EngineEntry(
        "nimble.engines.transformers.engine:TransformersEngine",
        "nimble[transformers]",
        ("torch", "transformers"),
    ),
    "vllm": EngineEntry("nimble.engines.vllm.engine:VllmEngine", "nimble[gpu]", executable="vllm"),
    "sentence_transformers": EngineEntry(
        "nimble.engines.sentence_transformers.engine:SentenceTransformersEngine",
        "nimble[st]",
        ("torch", "sentence_transformers"),
    ),
    "fake": EngineEntry("nimble.engines.fake.engine:FakeEngine", "nimble"),
}


def known_engines() -> tuple[str, ...]:
    return tuple(sorted(_ENGINES))


def loads_first(name: str) -> bool:
    """Whether models of engine `name` start before the others of the process."""
    entry = _ENGINES.get(name)
    return entry is not None and entry.loads_first


def engine_unavailable(name: str, command: tuple[str, ...] | None = None) -> str | None:
    """Why `name` cannot run in this installation (None: it can). Imports nothing heavy."""
    entry = _ENGINES.get(name)
    if entry is None:
        return f"engine {name} is not part of this nimble version"
    if entry.executable is not None:
        executable = (command or (entry.executable,))[0]
        if shutil.which(executable) is None:
            return f"engine {name}: `{executable}` not found (pip install '{entry.extra}')"
        return None
    missing = [m for m in entry.needs if importlib.util.find_spec(m) is None]
    if missing:
        return f"engine {name} needs {', '.join(missing)} (pip install '{entry.extra}')"
    return None


def create_engine(spec: ModelSpec, config: EngineConfig) -> Engine:
    entry = _ENGINES.get(spec.engine)
    if entry is None:
        raise ModelLoadError(
            f"{spec.weights}: unknown engine {spec.engine!r} for model {spec.id!r} "
            f"(known: {', '.join(known_engines())})"
        )
    module_name, _, class_name = entry.target.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ModelLoadError(
            f"{spec.weights}: engine {spec.engine!r} needs {exc.name or 'a library'} that is "
            f"not installed (pip install '{entry.extra}')"
        ) from exc
    engine_cls = getattr(module, class_name)
    return cast(Engine, engine_cls(spec, config))
