"""sentence_transformers engine: cross-encoder rerankers and sentence-transformers embedding
folders, through the `sentence-transformers` library on PyTorch.

- A reranker (`Task.RERANK`) is loaded as a `CrossEncoder` with an identity activation, so
  each (query, document) pair gives its raw logit (`/v1/ranking` answers logits; `/v1/rerank`
  turns them into probabilities). A pair longer than the window loses the end of the longer
  text, the document as a rule (`truncate=END`), or is refused (`NONE`).
- An embedding model (`Task.EMBEDDING`) is loaded as a `SentenceTransformer`: the folder's
  own modules (pooling, dense layers, normalisation) apply; vectors are L2-normalised.
- A sequence classifier (`Task.CLASSIFY`) is loaded by transformers with its
  classification head (`classifier.py`); concurrent requests share batches.
The window is the tokenizer's limit, capped by the model's positions and `context_length`.
Work runs on one worker thread, so the event loop never waits on PyTorch.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from nimble.engines.config import ENCODER_PASS, EngineConfig
from nimble.engines.onnx.batching import LaneStats
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
    RankRequest,
    RankResult,
    Task,
    TokenizeRequest,
    Tokens,
)

if TYPE_CHECKING:  # torch, and numpy with it, load when the engine starts (onnx/compute.py)
    from nimble.engines.sentence_transformers.classifier import TorchClassifier

_T = TypeVar("_T")
_WEIGHTS = ("*.safetensors", "*.bin", "config.json", "tokenizer.json", "modules.json")


class SentenceTransformersEngine:
    """A cross-encoder (the model serves `rerank`), a bi-encoder (it serves `embedding`) or
    a sequence classifier (`classify`): one folder is one of the three, never two."""

    def __init__(self, spec: ModelSpec, config: EngineConfig):
        self.spec = spec
        self._config = config
        self._rerank = Task.RERANK in spec.tasks
        self._model: Any = None  # CrossEncoder or SentenceTransformer
        self._pool: ThreadPoolExecutor | None = None
        self._max_length = 512
        self._device = "cpu"
        self._files: tuple[ModelFile, ...] = ()
        self._classifier: TorchClassifier | None = None  # made by start(), for `classify`

    async def start(self) -> None:
        folder = self.spec.weights
        kinds = self.spec.tasks & {Task.RERANK, Task.EMBEDDING, Task.CLASSIFY}
        if len(kinds) > 1:
            raise ModelLoadError(
                f"{folder}: model {self.spec.id!r} is a cross-encoder (rerank), a bi-encoder "
                "(embedding) or a classifier (classify) on the sentence_transformers engine, "
                "not both"
            )
        if not (folder / "config.json").is_file():
            raise ModelLoadError(f"{folder}: not a model folder (no config.json)")
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="nimble-st")
        try:
            await self._in_worker(self._load)
        except ModelLoadError:
            await self.stop()
            raise
        if self._classifier is not None:
            stopped = f"model {self.spec.id!r} was stopped"
            self._classifier.start(
                self._pool,
                self._config.embed_batch_size,
                self._config.embed_max_wait,
                closed=lambda: Unavailable(stopped),
            )
            await self.classify(ClassifyRequest("warmup", ("warm up",)))
        elif self._rerank:  # one real pass: readiness needs it
            await self.rank(RankRequest("warmup", "warm up", ("a warm-up passage",)))
        else:
            await self.embed(EmbedRequest("warmup", ("warm up",)))

    def _load(self) -> None:
        import sentence_transformers
        import torch
        import transformers

        folder = self.spec.weights
        # transformers' progress bars are not log lines (global: this process's transformers)
        transformers.utils.logging.disable_progress_bar()  # type: ignore[no-untyped-call]
        if self._config.threads:
            torch.set_num_threads(self._config.threads)
        self._device = "cuda" if torch.cuda.is_available() else "cpu"
        if Task.CLASSIFY in self.spec.tasks:
            from nimble.engines.sentence_transformers.classifier import TorchClassifier

            self._classifier = TorchClassifier(folder, self.spec.id)
            self._classifier.load(self._device, self._config.context_length)
            self._max_length = self._classifier.max_length
            self._files = _files(folder)
            return
        try:
            if self._rerank:
                model: Any = sentence_transformers.CrossEncoder(
                    str(folder),
                    device=self._device,
                    local_files_only=True,
                    activation_fn=torch.nn.Identity(),
                )
            else:
                model = sentence_transformers.SentenceTransformer(
                    str(folder), device=self._device, local_files_only=True
                )
        except (OSError, ValueError, RuntimeError, KeyError) as exc:
            raise ModelLoadError(
                f"{folder}: cannot load with sentence-transformers: {exc}"
            ) from exc
        if model.tokenizer is None:
            raise ModelLoadError(f"{folder}: no tokenizer in the model folder")
        if self._rerank and model.num_labels != 1:
            raise ModelLoadError(
                f"{folder}: a reranker needs one output (num_labels 1), this model has "
                f"{model.num_labels}"
            )
        config = model.transformers_model.config if model.transformers_model else None
        positions = int(getattr(config, "max_position_embeddings", 0) or 512)
        limit = min(int(model.max_seq_length or positions), positions)
        self._max_length = min(limit, self._config.context_length or limit)
        model.max_seq_length = self._max_length
        self._model = model.eval()
        self._files = _files(folder)

    async def stop(self) -> None:
        if self._classifier is not None:
            await self._classifier.stop()
        pool, self._pool = self._pool, None
        if pool is not None:
            await asyncio.to_thread(pool.shutdown, wait=True)
        self._model = None

    async def health(self) -> bool:
        return self._tokenizer() is not None and self._pool is not None

    def info(self) -> EngineInfo:
        import sentence_transformers  # loaded by start()
        import torch
        import transformers

        kind = {"kind": "cross-encoder" if self._rerank else "bi-encoder"}
        if self._classifier is not None:
            labels = str(len(self._classifier.labels))
            multi = str(self._classifier.multi_label).lower()
            kind = {"kind": "classifier", "num_labels": labels, "multi_label": multi}
        return EngineInfo(
            engine="sentence_transformers",
            engine_version=f"sentence-transformers {sentence_transformers.__version__}",
            tasks=self.spec.tasks,
            context_length=self._max_length,
            supports_logprobs=False,
            files=self._files,
            extra={
                "torch": torch.__version__,
                "transformers": transformers.__version__,
                "device": self._device,
                **kind,
            },
        )

    async def classify(self, request: ClassifyRequest) -> ClassifyResult:
        if self._classifier is None:
            raise Unavailable(f"model {self.spec.id!r} is not a classifier")
        return await self._classifier.classify(request)

    @property
    def batch_stats(self) -> LaneStats | None:
        """How the classifier's batches went (None: not a classifier)."""
        return self._classifier.stats if self._classifier is not None else None

    async def rank(self, request: RankRequest) -> RankResult:
        return await self._in_worker(lambda: self._rank_sync(request))

    def _rank_sync(self, request: RankRequest) -> RankResult:
        documents = list(request.documents)
        lengths = self._lengths([request.query] * len(documents), documents)
        if request.truncate == "NONE":
            for i, n in enumerate(lengths):
                if n > self._max_length:
                    raise InvalidRequest(
                        f"query and passage {i} are {n} tokens together, more than the "
                        f"{self._max_length} of model {self.spec.id} (truncate is NONE)",
                        param="passages",
                    )
        logits = self._model.predict(
            [(request.query, d) for d in documents],
            batch_size=ENCODER_PASS,
            show_progress_bar=False,
            convert_to_numpy=True,
        )
        tokens = sum(min(n, self._max_length) for n in lengths)
        return RankResult(tuple(float(x) for x in logits.reshape(-1)), tokens)

    async def embed(self, request: EmbedRequest) -> EmbedResult:
        if any(not isinstance(i, str) for i in request.inputs):
            raise InvalidRequest(
                f"model {self.spec.id}: token arrays are not supported by this engine",
                param="input",
            )
        return await self._in_worker(lambda: self._embed_sync(request))

    def _embed_sync(self, request: EmbedRequest) -> EmbedResult:
        texts = [str(i) for i in request.inputs]
        lengths = self._lengths(texts)
        if request.truncate == "NONE":
            for i, n in enumerate(lengths):
                if n > self._max_length:
                    raise InvalidRequest(
                        f"input {i} has {n} tokens, more than the {self._max_length} of "
                        f"model {self.spec.id} (truncate is NONE)",
                        param="input",
                    )
        # one worker thread: the side holds for this call only
        self._model.tokenizer.truncation_side = "left" if request.truncate == "START" else "right"
        vectors = self._model.encode(
            texts,
            batch_size=ENCODER_PASS,
            show_progress_bar=False,
            convert_to_numpy=True,
            normalize_embeddings=True,
        )
        tokens = sum(min(n, self._max_length) for n in lengths)
        return EmbedResult(tuple(tuple(float(x) for x in row) for row in vectors), tokens)

    def vocab_size(self) -> int | None:
        tokenizer = self._tokenizer()
        return len(tokenizer) if tokenizer is not None else None

    def _tokenizer(self) -> Any:
        """The model's tokenizer (None before start)."""
        if self._classifier is not None:
            return self._classifier.tokenizer
        return self._model.tokenizer if self._model is not None else None

    async def tokenize(self, request: TokenizeRequest) -> Tokens:
        """A text as the model reads it, untruncated (a cross-encoder reads a pair: the
        query's and the document's tokens between its special tokens); no chat template."""
        if request.chat is not None:
            raise InvalidRequest(f"model {self.spec.id} has no chat template", param="messages")
        text = request.prompt or ""
        return await self._in_worker(lambda: self._tokenize_sync(text, request.add_special_tokens))

    def _tokenize_sync(self, text: str, special: bool) -> Tokens:
        tokenizer = self._tokenizer()
        ids = tokenizer(text, add_special_tokens=special, verbose=False)["input_ids"]
        return Tokens(tuple(ids), tuple(tokenizer.convert_ids_to_tokens(ids)))

    async def detokenize(self, ids: tuple[int, ...]) -> str:
        return str(await self._in_worker(lambda: self._tokenizer().decode(list(ids))))

    def _lengths(self, texts: Sequence[str], pairs: Sequence[str] | None = None) -> list[int]:
        """Tokens of each text (or text pair) with special tokens, before any truncation."""
        ids = self._model.tokenizer(
            list(texts), list(pairs) if pairs is not None else None, verbose=False
        )["input_ids"]
        return [len(x) for x in ids]

    async def _in_worker(self, work: Callable[[], _T]) -> _T:
        if self._pool is None:
            raise Unavailable(f"model {self.spec.id!r} is not loaded")
        return await asyncio.get_running_loop().run_in_executor(self._pool, work)


def _files(folder: Path) -> tuple[ModelFile, ...]:
    paths = sorted({p for pattern in _WEIGHTS for p in folder.glob(pattern) if p.is_file()})
    return tuple(ModelFile(str(p), sha256_of(p), p.stat().st_size) for p in paths)
