"""A resolved model: which engine runs it, for which tasks, from which local files."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from nimble.models.adapters import AdapterSpec
from nimble.types import ClassifierTraits, EmbeddingTraits, Task


@dataclass(frozen=True)
class ModelSpec:
    """Everything an engine needs to load a model, resolved to local paths."""

    id: str
    engine: str
    tasks: frozenset[Task]
    weights: Path
    source: str
    # tokenizer file for engines that tokenize in Python (ONNX); None when the weights carry it
    tokenizer: Path | None = None
    # trained context window (None: ask the engine)
    context_length: int | None = None
    # engine settings from the selected profile (tensor_parallel_size, dtype, max_num_seqs...)
    options: dict[str, str] = field(default_factory=dict)
    # id and name of the profile this spec was built from (None: generated for a local path)
    profile_id: str | None = None
    profile_name: str | None = None
    # embedding models: prefixes per input type and the vector sizes allowed
    embedding: EmbeddingTraits | None = None
    # sequence classifiers: label names, the safe labels and the flagging threshold
    classifier: ClassifierTraits | None = None
    # NVIDIA GPUs (NVML indices) nimble placed this model on (`models/placement.py`): a
    # vLLM process sees only these, a GGUF offloads to this one; (): on the CPU although
    # there are GPUs; None: nimble chose nothing (no NVIDIA GPU, or a vLLM model alone on
    # the GPUs): the engine's own default
    devices: tuple[int, ...] | None = None
    # LoRA adapters the engine loads with the model (more come and go at run time through
    # `AdapterHost`); each is served under its own name
    adapters: tuple[AdapterSpec, ...] = ()
