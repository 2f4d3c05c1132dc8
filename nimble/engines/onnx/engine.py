"""Sentence embeddings from an ONNX export (all-MiniLM-L6-v2 and alike), and sequence
classification from an ONNX export of a classifier, without torch.

The pipeline is sentence-transformers' Transformer -> Pooling(mean) -> Normalize: the
tokenizer truncates to the context length (the end by default, the start with
`truncate=START`; `NONE` refuses a longer input), the model gives token embeddings, which
are averaged over the attention mask and L2-normalised. A model whose ONNX graph already
returns a pooled `sentence_embedding` is used as it is (and normalised). Token-id inputs
get the model's special tokens around them, as a text input would.

Concurrent requests share batches (`embed_batching.EmbedBatcher`): each request is
tokenized on its own, then its sequences (cut into jobs of 32 / threads, at least 8) join
the next batch. Batches run side by side, one per CPU thread (the `threads` setting,
default all cores), each as a single-threaded ONNX Runtime run of the shared session: two
runs on one thread each beat one run on two threads, whose every operator waits for the
slower thread (measured: benchmarks/RESULTS.md).

A classifier (the model serves `classify`) is an export whose graph answers `logits`; its
labels come from the config.json beside it (`engines/labels.py`). Its inputs share batches
the same way; an input longer than the window is refused unless the request asks for
truncation.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn, TypeVar

from tokenizers import Tokenizer

from nimble.engines import labels
from nimble.engines.config import ENCODER_PASS, EngineConfig
from nimble.engines.onnx.batching import EmbedBatcher, LaneStats
from nimble.engines.threads import usable_cpus
from nimble.errors import InvalidRequest, ModelLoadError, Unavailable
from nimble.models.files import sha256_of
from nimble.models.spec import ModelSpec
from nimble.types import (
    ClassifyRequest,
    ClassifyResult,
    EmbedRequest,
    EmbedResult,
    EngineInfo,
    ModelFile,
    Task,
    TokenizeRequest,
    Tokens,
)

if TYPE_CHECKING:  # numpy and ONNX Runtime come with compute.py, when the engine starts
    import numpy as np
    import onnxruntime as ort
    from numpy.typing import NDArray

    from nimble.engines.onnx.compute import Graph

_T = TypeVar("_T")
_BERT_POSITIONS = 512  # limit when neither the spec nor the folder says otherwise
_TOKEN_OUTPUTS = ("last_hidden_state", "token_embeddings")
_POOLED_OUTPUTS = ("sentence_embedding",)
_LOGITS = "logits"  # a classifier's output
_KNOWN_INPUTS = frozenset({"input_ids", "attention_mask", "token_type_ids"})


class OnnxEmbeddingEngine:
    def __init__(self, spec: ModelSpec, config: EngineConfig):
        self.spec = spec
        self._config = config
        self._max_length = _max_length(spec, config)
        self._executor: ThreadPoolExecutor | None = None
        self._session: ort.InferenceSession | None = None
        self._tokenizer: Tokenizer | None = None  # truncating the end, for embed()
        self._left: Tokenizer | None = None  # truncating the start (truncate=START)
        self._counter: Tokenizer | None = None  # not truncating: the length before truncation
        self._wrap: tuple[list[int], list[int]] = ([], [])  # special tokens around a text
        self._vocab = 0
        self._batcher: EmbedBatcher | None = None
        self._graph: Graph | None = None  # what to feed the session and read from it
        self._dimensions = 0
        self._files: tuple[ModelFile, ...] = ()
        self._classifier = Task.CLASSIFY in spec.tasks
        self._labels: tuple[str, ...] = ()
        self._multi_label = False

    # ----- lifecycle -----
    async def start(self) -> None:
        tokenizer_path = self.spec.tokenizer
        if tokenizer_path is None:
            raise ModelLoadError(f"{self.spec.weights}: the onnx engine needs a tokenizer.json")
        for path in (self.spec.weights, tokenizer_path):
            if not path.is_file():
                raise ModelLoadError(f"{path}: no such file (needed by model {self.spec.id!r})")
        self._tokenizer = _load_tokenizer(tokenizer_path, self._max_length)
        self._left = _load_tokenizer(tokenizer_path, self._max_length, direction="left")
        self._counter = _load_tokenizer(tokenizer_path, None)
        self._wrap = _special_wrap(self._counter)
        if self._classifier:  # its labels and its window from the config.json beside it
            weights = self.spec.weights
            path, config = labels.read_config(
                [weights.parent, tokenizer_path.parent, weights.parent.parent]
            )
            self._labels, self._multi_label = labels.labels_of(config, path)
            self._max_length = min(self._max_length, labels.positions(config) or self._max_length)
        self._vocab = self._counter.get_vocab_size()
        lanes = self._config.threads or usable_cpus()
        self._executor = ThreadPoolExecutor(max_workers=lanes, thread_name_prefix="nimble-onnx")
        self._batcher = EmbedBatcher(
            self._run_batch,
            self._executor,
            self._config.embed_batch_size,
            self._config.embed_max_wait,
            closed=lambda: Unavailable(f"model {self.spec.id!r} was stopped"),
            lanes=lanes,
            chunk=max(8, ENCODER_PASS // lanes),  # a big request spreads over the lanes too
        )
        try:
            session, digest = await self._in_worker(self._load_weights)
            self._inspect_model(session)
        except BaseException:
            await self.stop()
            raise
        self._session = session
        self._files = (ModelFile(str(self.spec.weights), digest, self.spec.weights.stat().st_size),)
        if self._classifier:
            await self.classify(ClassifyRequest("warmup", ("warm up",)))
            return
        result = await self.embed(EmbedRequest(request_id="warmup", inputs=("warm up",)))
        self._dimensions = len(result.vectors[0])
        if self._graph is not None:  # the width of an empty answer, now known
            self._graph = dataclasses.replace(self._graph, width=self._dimensions)

    def _load_weights(self) -> tuple[ort.InferenceSession, str]:
        from nimble.engines.onnx import compute  # here, not at the top: see compute.py

        path = self.spec.weights
        return compute.open_session(path), sha256_of(path)

    def _inspect_model(self, session: ort.InferenceSession) -> None:
        from nimble.engines.onnx.compute import Graph

        names = {node.name for node in session.get_inputs()}
        unknown = names - _KNOWN_INPUTS
        if unknown or "input_ids" not in names:
            _bad_model(self.spec.weights, f"unexpected inputs {sorted(names)}")
        outputs = {node.name: node.shape for node in session.get_outputs()}
        if self._classifier:
            if _LOGITS not in outputs:
                _bad_model(
                    self.spec.weights,
                    f"a classifier needs a `logits` output, has {sorted(outputs)}",
                )
            width = outputs[_LOGITS][-1]
            if isinstance(width, int) and width != len(self._labels):
                _bad_model(self.spec.weights, f"{width} logits for {len(self._labels)} labels")
            self._graph = Graph(frozenset(names), _LOGITS, True, False, len(self._labels))
            return
        token_output = next((name for name in _TOKEN_OUTPUTS if name in outputs), None)
        pooled_output = next((name for name in _POOLED_OUTPUTS if name in outputs), None)
        chosen = token_output or pooled_output
        if chosen is None:
            _bad_model(self.spec.weights, f"no embedding output among {sorted(outputs)}")
        last = outputs[chosen][-1]
        self._dimensions = last if isinstance(last, int) else 0
        pooled = token_output is None
        self._graph = Graph(frozenset(names), chosen, pooled, True, self._dimensions)

    async def stop(self) -> None:
        # queued work now fails fast with Unavailable; the batch running finishes first
        batcher, self._batcher = self._batcher, None
        if batcher is not None:
            await batcher.close()
        executor, self._executor, self._session = self._executor, None, None
        if executor is not None:
            await asyncio.to_thread(executor.shutdown, wait=True)

    async def health(self) -> bool:
        return self._session is not None and self._executor is not None

    def info(self) -> EngineInfo:
        from nimble.engines.onnx import compute

        extra = (
            {"num_labels": str(len(self._labels)), "multi_label": str(self._multi_label).lower()}
            if self._classifier
            else {
                "dimensions": str(self._dimensions),
                "pooling": "model" if self._graph and self._graph.pooled else "mean",
                "normalized": "true",
            }
        )
        return EngineInfo(
            engine="onnx",
            engine_version=f"onnxruntime {compute.VERSION}",
            tasks=self.spec.tasks,
            context_length=self._max_length,
            supports_logprobs=False,
            files=self._files,
            extra=extra,
        )

    # ----- requests -----
    async def embed(self, request: EmbedRequest) -> EmbedResult:
        batcher = self._batcher
        if batcher is None:
            raise Unavailable(f"model {self.spec.id!r} is not loaded")
        sequences = self._sequences(request)
        rows = await batcher.embed(sequences)
        return EmbedResult(
            vectors=tuple(map(tuple, rows.tolist())),
            prompt_tokens=sum(len(s) for s in sequences),
        )

    async def classify(self, request: ClassifyRequest) -> ClassifyResult:
        batcher, counter = self._batcher, self._counter
        if batcher is None or counter is None:
            raise Unavailable(f"model {self.spec.id!r} is not loaded")
        texts = list(request.inputs)
        encodings = counter.encode_batch(texts) if len(texts) > 1 else [counter.encode(texts[0])]
        limit = min(request.truncate, self._max_length) if request.truncate else None
        tail = len(self._wrap[1])
        sequences = [
            labels.fit(list(e.ids), limit, self._max_length, tail, i, self.spec.id)
            for i, e in enumerate(encodings)
        ]
        logits = await batcher.embed(sequences)
        tokens = sum(len(s) for s in sequences)
        return labels.result(self._labels, self._multi_label, logits, tokens)

    def vocab_size(self) -> int | None:
        return self._vocab or None

    async def tokenize(self, request: TokenizeRequest) -> Tokens:
        """A text as the model reads it, untruncated; an embedding model has no chat
        template (the runtime refuses `messages` before this)."""
        counter = self._counter
        if counter is None:
            raise Unavailable(f"model {self.spec.id!r} is not loaded")
        if request.chat is not None:
            raise InvalidRequest(f"model {self.spec.id} has no chat template", param="messages")
        encoding = counter.encode(
            request.prompt or "", add_special_tokens=request.add_special_tokens
        )
        return Tokens(tuple(encoding.ids), tuple(encoding.tokens))

    async def detokenize(self, ids: tuple[int, ...]) -> str:
        if self._counter is None:
            raise Unavailable(f"model {self.spec.id!r} is not loaded")
        return self._counter.decode(list(ids), skip_special_tokens=False)

    @property
    def batch_stats(self) -> LaneStats | None:
        return self._batcher.stats if self._batcher else None

    def _sequences(self, request: EmbedRequest) -> list[list[int]]:
        """Token ids of each input, with special tokens, truncated as the request asks."""
        right, left, counter = self._tokenizer, self._left, self._counter
        if right is None or left is None or counter is None:
            raise Unavailable(f"model {self.spec.id!r} is not loaded")
        texts = [(i, text) for i, text in enumerate(request.inputs) if isinstance(text, str)]
        out: list[list[int]] = [[] for _ in request.inputs]
        if texts:
            tokenizer = (
                counter
                if request.truncate == "NONE"
                else (left if request.truncate == "START" else right)
            )
            if len(texts) == 1:  # encode_batch hands even one text to its thread pool
                encodings = [tokenizer.encode(texts[0][1])]
            else:
                encodings = tokenizer.encode_batch([text for _, text in texts])
            for (i, _), encoding in zip(texts, encodings, strict=True):
                out[i] = list(encoding.ids)
        head, tail = self._wrap
        room = self._max_length - len(head) - len(tail)
        for i, item in enumerate(request.inputs):
            if isinstance(item, str):
                continue
            if any(t >= self._vocab for t in item):
                raise InvalidRequest(
                    f"input {i}: token ids must be below the vocabulary size {self._vocab}",
                    param="input",
                )
            ids = list(item)
            if len(ids) > room and request.truncate != "NONE":
                ids = ids[-room:] if request.truncate == "START" else ids[:room]
            out[i] = [*head, *ids, *tail]
        for i, ids in enumerate(out):
            if len(ids) > self._max_length:  # only with truncate=NONE
                raise InvalidRequest(
                    f"input {i} has {len(ids)} tokens, more than the {self._max_length} of "
                    f"model {self.spec.id} (truncate is NONE; use END or START to cut it)",
                    param="input",
                )
        return out

    def _run_batch(self, sequences: list[Sequence[int]]) -> NDArray[np.float32]:
        session, graph = self._session, self._graph
        if session is None or graph is None:
            raise Unavailable(f"model {self.spec.id!r} is not loaded")
        from nimble.engines.onnx import compute

        return compute.run_batch(session, graph, sequences)

    async def _in_worker(self, work: Callable[[], _T]) -> _T:
        if self._executor is None:
            raise Unavailable(f"model {self.spec.id!r} is not loaded")
        return await asyncio.get_running_loop().run_in_executor(self._executor, work)


def _max_length(spec: ModelSpec, config: EngineConfig) -> int:
    """The model's limit (spec, else the folder's sentence-transformers config), which the
    global --context-length may lower but never raise past the position embeddings."""
    limit = spec.context_length or _folder_max_length(spec.tokenizer) or _BERT_POSITIONS
    return min(limit, config.context_length) if config.context_length else limit


def _folder_max_length(tokenizer: Path | None) -> int | None:
    config = tokenizer.parent / "sentence_bert_config.json" if tokenizer else None
    if config is None or not config.is_file():
        return None
    value: Any = json.loads(config.read_text()).get("max_seq_length")
    return value if isinstance(value, int) and value > 0 else None


def _load_tokenizer(path: Path, max_length: int | None, direction: str = "right") -> Tokenizer:
    try:
        tokenizer = Tokenizer.from_file(str(path))
    except Exception as exc:  # tokenizers raises a plain Exception
        raise ModelLoadError(f"{path}: not a loadable tokenizer.json: {exc}") from exc
    tokenizer.no_padding()  # padding is done per batch (compute.py)
    if max_length is None:
        tokenizer.no_truncation()
    else:
        tokenizer.enable_truncation(max_length, direction=direction)
    return tokenizer


def _special_wrap(tokenizer: Tokenizer) -> tuple[list[int], list[int]]:
    """The special tokens the tokenizer puts before and after a text ([CLS] ... [SEP])."""
    plain = tokenizer.encode("a", add_special_tokens=False).ids
    full = tokenizer.encode("a").ids
    for start in range(len(full) - len(plain) + 1):
        if full[start : start + len(plain)] == plain:
            return full[:start], full[start + len(plain) :]
    return [], []


def _bad_model(path: Path, why: str) -> NoReturn:
    raise ModelLoadError(f"{path}: not a sentence-embedding ONNX model: {why}")
