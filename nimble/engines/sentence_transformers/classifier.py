"""A sequence classifier on PyTorch: a Hugging Face folder with a sequence-classification
head (`...ForSequenceClassification`, more than one label), loaded by transformers.

Concurrent requests share batches as embeddings do on ONNX (`EmbedBatcher`): each request
is tokenized on the event loop, its sequences join the next batch, and one worker thread
runs the batch (padded to its longest sequence, sorted by length so that padding stays
small). Labels and probabilities as every engine gives them (`engines/labels.py`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from concurrent.futures import Executor
from pathlib import Path
from typing import Any

import numpy as np
import torch
import transformers
from numpy.typing import NDArray

from nimble.engines import labels
from nimble.engines.config import ENCODER_PASS
from nimble.engines.onnx.batching import EmbedBatcher, LaneStats
from nimble.errors import ModelLoadError, Unavailable
from nimble.types import ClassifyRequest, ClassifyResult


class TorchClassifier:
    """Loaded on the engine's worker thread (`load`), then used from the event loop."""

    def __init__(self, folder: Path, model_id: str):
        self._folder = folder
        self._model_id = model_id
        self._model: Any = None
        self._tokenizer: Any = None
        self._batcher: EmbedBatcher | None = None
        self._tail = 0  # special tokens after a text ([SEP], </s>)
        self._pad = 0
        self.labels: tuple[str, ...] = ()
        self.multi_label = False
        self.max_length = 512

    def load(self, device: str, context_length: int | None) -> None:
        folder = self._folder
        try:
            model = transformers.AutoModelForSequenceClassification.from_pretrained(
                str(folder), local_files_only=True
            )
            tokenizer = transformers.AutoTokenizer.from_pretrained(
                str(folder), local_files_only=True
            )
        except (OSError, ValueError, RuntimeError, KeyError) as exc:
            raise ModelLoadError(f"{folder}: cannot load as a sequence classifier: {exc}") from exc
        self.labels, self.multi_label = labels.labels_of(model.config.to_dict(), folder)
        if len(self.labels) < 2:
            raise ModelLoadError(
                f"{folder}: a classifier needs two labels or more; one output is a reranker's"
            )
        usable = labels.positions(model.config.to_dict()) or 512
        limit = min(int(tokenizer.model_max_length or usable), usable)
        self.max_length = min(limit, context_length or limit)
        plain = tokenizer("a", add_special_tokens=False)["input_ids"]
        full = tokenizer("a")["input_ids"]
        self._tail = len(full) - len(plain) - full.index(plain[0]) if plain else 0
        self._pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        self._model = model.to(device).eval()
        self._tokenizer = tokenizer

    def start(
        self, executor: Executor, max_batch: int, max_wait: float, closed: Callable[[], Exception]
    ) -> None:
        self._batcher = EmbedBatcher(self._run, executor, max_batch, max_wait, closed=closed)

    @property
    def tokenizer(self) -> Any:
        return self._tokenizer

    @property
    def stats(self) -> LaneStats | None:
        return self._batcher.stats if self._batcher else None

    async def stop(self) -> None:
        batcher, self._batcher = self._batcher, None
        if batcher is not None:
            await batcher.close()

    async def classify(self, request: ClassifyRequest) -> ClassifyResult:
        batcher, tokenizer = self._batcher, self._tokenizer
        if batcher is None or tokenizer is None:
            raise Unavailable(f"model {self._model_id!r} is not loaded")
        encoded = tokenizer(list(request.inputs), verbose=False)["input_ids"]
        limit = min(request.truncate, self.max_length) if request.truncate else None
        sequences = [
            labels.fit(list(ids), limit, self.max_length, self._tail, i, self._model_id)
            for i, ids in enumerate(encoded)
        ]
        logits = await batcher.embed(sequences)
        tokens = sum(len(s) for s in sequences)
        return labels.result(self.labels, self.multi_label, logits, tokens)

    def _run(self, sequences: list[Sequence[int]]) -> NDArray[np.float32]:
        model = self._model
        if model is None:
            raise Unavailable(f"model {self._model_id!r} is not loaded")
        order = sorted(range(len(sequences)), key=lambda i: len(sequences[i]))
        out = np.empty((len(sequences), len(self.labels)), dtype=np.float32)
        for start in range(0, len(order), ENCODER_PASS):
            rows = order[start : start + ENCODER_PASS]
            width = max(len(sequences[i]) for i in rows)
            ids = torch.full((len(rows), width), self._pad, dtype=torch.long)
            mask = torch.zeros((len(rows), width), dtype=torch.long)
            for row, i in enumerate(rows):
                ids[row, : len(sequences[i])] = torch.tensor(sequences[i], dtype=torch.long)
                mask[row, : len(sequences[i])] = 1
            with torch.inference_mode():
                logits = model(input_ids=ids.to(model.device), attention_mask=mask.to(model.device))
            out[rows] = logits.logits.float().cpu().numpy()
        return out
