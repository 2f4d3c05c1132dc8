"""A sequence classifier's labels and probabilities, the same for every engine: the names in
its config's `id2label` (by class index), and a softmax over the logits, or a sigmoid per
label when the config says `problem_type: multi_label_classification` (each label is then
a yes/no of its own, as transformers trains it)."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from nimble.errors import InvalidRequest, ModelLoadError
from nimble.types import Classification, ClassifyResult

if TYPE_CHECKING:  # numpy is imported when logits are there (see onnx/compute.py)
    import numpy as np
    from numpy.typing import NDArray

MULTI_LABEL = "multi_label_classification"


def labels_of(config: Mapping[str, Any], where: Path) -> tuple[tuple[str, ...], bool]:
    """(label names by class index, multi-label) from a model config (config.json's dict)."""
    id2label = config.get("id2label")
    if id2label is None:  # transformers leaves its default out: 2 labels, LABEL_0 and LABEL_1
        count = config.get("num_labels", 2)
        id2label = {i: f"LABEL_{i}" for i in range(count if isinstance(count, int) else 0)}
    if not isinstance(id2label, Mapping) or not id2label:
        raise ModelLoadError(f"{where}: no labels (id2label): not a sequence classifier's config")
    try:
        ordered = sorted((int(k), str(v)) for k, v in id2label.items())
    except ValueError:
        raise ModelLoadError(f"{where}: id2label keys must be class indices") from None
    if [i for i, _ in ordered] != list(range(len(ordered))):
        raise ModelLoadError(f"{where}: id2label must name classes 0 to {len(ordered) - 1}")
    return tuple(name for _, name in ordered), config.get("problem_type") == MULTI_LABEL


def read_config(folders: Sequence[Path]) -> tuple[Path, dict[str, Any]]:
    """The first config.json found in `folders`, and its content."""
    for folder in folders:
        path = folder / "config.json"
        if path.is_file():
            try:
                config = json.loads(path.read_text())
            except (OSError, ValueError) as exc:
                raise ModelLoadError(f"{path}: not readable JSON: {exc}") from None
            if isinstance(config, dict):
                return path, config
    where = ", ".join(str(f) for f in folders)
    raise ModelLoadError(f"{where}: no config.json with the classifier's labels (id2label)")


def positions(config: Mapping[str, Any]) -> int | None:
    """Tokens the model's position embeddings allow (None: the config does not say).
    RoBERTa's positions start after its padding index: two fewer."""
    count = config.get("max_position_embeddings")
    if not isinstance(count, int) or count <= 0:
        return None
    return count - 2 if config.get("model_type") in ("roberta", "xlm-roberta") else count


def probabilities(logits: NDArray[np.float32], multi_label: bool) -> NDArray[np.float64]:
    """Rows of logits to rows of probabilities."""
    import numpy as np

    values = logits.astype(np.float64)
    if multi_label:
        out: NDArray[np.float64] = 1.0 / (1.0 + np.exp(-values))
        return out
    shifted = np.exp(values - values.max(axis=1, keepdims=True))
    out = shifted / shifted.sum(axis=1, keepdims=True)
    return out


def result(
    labels: tuple[str, ...], multi_label: bool, logits: NDArray[np.float32], tokens: int
) -> ClassifyResult:
    probs = probabilities(logits, multi_label)
    return ClassifyResult(
        tuple(Classification(labels, tuple(float(p) for p in row)) for row in probs),
        tokens,
        multi_label,
    )


def fit(ids: list[int], limit: int | None, window: int, tail: int, i: int, model: str) -> list[int]:
    """An input's token ids (special tokens included) within `limit` tokens, the last `tail`
    of them (the closing special tokens) kept; with no limit, refused past the window."""
    if limit is None:
        if len(ids) > window:
            raise InvalidRequest(
                f"input {i} has {len(ids)} tokens, more than the {window} of model {model} "
                "(ask for truncation to cut it)",
                param="input",
            )
        return ids
    if len(ids) <= limit:
        return ids
    keep = max(limit - tail, 0)
    return ids[:keep] + ids[len(ids) - tail :] if tail else ids[:limit]
