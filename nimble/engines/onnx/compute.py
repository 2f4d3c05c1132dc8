"""The ONNX engine's numerical half: the session, padded batches, pooling, normalising.

`engine.py` imports this module when the engine starts, not when it is created: numpy and
ONNX Runtime loaded into a process before llama.cpp has loaded its model slow llama.cpp's
prompt processing by 2-3 % for the life of the process (27 ms on a 0.8 s prefill), loaded
after it they do not (benchmarks/RESULTS.md, 2026-12-05). The runtime starts llama.cpp's
models first, so a server of a language model and an embedder keeps its time to first token.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnxruntime as ort
from numpy.typing import NDArray

from nimble.engines.config import ENCODER_PASS
from nimble.errors import ModelLoadError

VERSION = ort.__version__


@dataclass(frozen=True)
class Graph:
    """What to feed the graph and what to read from it."""

    inputs: frozenset[str]  # of input_ids, attention_mask, token_type_ids
    output: str
    pooled: bool  # the output is one row per sequence already (else mean-pooled here)
    normalise: bool  # L2-normalise the rows (embeddings; not a classifier's logits)
    width: int  # the row width, for an empty batch


def open_session(path: Path) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1  # parallel across batches, not inside one
    options.inter_op_num_threads = 1
    options.log_severity_level = 3  # errors only: ORT warns on stderr otherwise
    try:
        return ort.InferenceSession(
            str(path), sess_options=options, providers=["CPUExecutionProvider"]
        )
    except Exception as exc:  # ORT raises its own pybind types, all plain Exceptions
        raise ModelLoadError(f"{path}: not a loadable ONNX model: {exc}") from exc


def run_batch(
    session: ort.InferenceSession, graph: Graph, sequences: list[Sequence[int]]
) -> NDArray[np.float32]:
    """One row per sequence, in the order given."""
    if not sequences:
        return np.zeros((0, graph.width), dtype=np.float32)
    order = sorted(range(len(sequences)), key=lambda i: len(sequences[i]))
    batches = [order[start : start + ENCODER_PASS] for start in range(0, len(order), ENCODER_PASS)]
    pooled = np.concatenate([_run(session, graph, [sequences[i] for i in b]) for b in batches])
    rows = np.empty_like(pooled)
    rows[order] = pooled  # back to the request's order
    return _l2_normalise(rows) if graph.normalise else rows


def _run(
    session: ort.InferenceSession, graph: Graph, batch: list[Sequence[int]]
) -> NDArray[np.float32]:
    ids, mask = _pad(batch)
    feed = {"input_ids": ids, "attention_mask": mask, "token_type_ids": np.zeros_like(ids)}
    (hidden,) = session.run([graph.output], {k: v for k, v in feed.items() if k in graph.inputs})
    hidden = np.asarray(hidden, dtype=np.float32)
    return hidden if graph.pooled else _mean_pool(hidden, mask)


def _pad(batch: list[Sequence[int]]) -> tuple[NDArray[np.int64], NDArray[np.int64]]:
    width = max(len(sequence) for sequence in batch)
    ids = np.zeros((len(batch), width), dtype=np.int64)  # pad id is irrelevant: masked out
    mask = np.zeros((len(batch), width), dtype=np.int64)
    for row, sequence in enumerate(batch):
        ids[row, : len(sequence)] = sequence
        mask[row, : len(sequence)] = 1
    return ids, mask


def _mean_pool(hidden: NDArray[np.float32], mask: NDArray[np.int64]) -> NDArray[np.float32]:
    weights = mask[..., None].astype(np.float32)
    summed = (hidden * weights).sum(axis=1)
    pooled: NDArray[np.float32] = summed / np.maximum(weights.sum(axis=1), 1e-9)
    return pooled


def _l2_normalise(vectors: NDArray[np.float32]) -> NDArray[np.float32]:
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    unit: NDArray[np.float32] = vectors / np.maximum(norms, 1e-12)
    return unit
