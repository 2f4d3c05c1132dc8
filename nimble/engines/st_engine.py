"""sentence_transformers engine: cross-encoder rerankers and sentence-transformers embedding
folders on PyTorch (through transformers, as sentence-transformers does, without it).

- A reranker (`Task.RERANK`) is a sequence-classification model with one output: each
  (query, document) pair is read together and its logit is the score (what
  sentence-transformers' CrossEncoder returns with an identity activation). A pair longer
  than the window loses the end of the document (`truncate=END`) or is refused (`NONE`).
- An embedding model (`Task.EMBEDDING`) pools the token states as its folder says
  (`1_Pooling/config.json`: CLS token or mean; mean by default) and L2-normalises.
Work runs on one worker thread, so the event loop never waits on PyTorch.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncGenerator, Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, NoReturn, TypeVar

import torch
import transformers

from nimble.engines.base import EngineConfig, cannot_rank
from nimble.errors import InvalidRequest, ModelLoadError, Unavailable
from nimble.models.files import sha256_of
from nimble.models.spec import ModelSpec
from nimble.types import (
    EmbedRequest,
    EmbedResult,
    EngineInfo,
    GenerateRequest,
    GenerationChunk,
    ModelFile,
    RankRequest,
    RankResult,
    Task,
)

_T = TypeVar("_T")
_WEIGHTS = ("*.safetensors", "*.bin", "config.json", "tokenizer.json")
_BATCH = 32


class SentenceTransformersEngine:
    def __init__(self, spec: ModelSpec, config: EngineConfig):
        self.spec = spec
        self._config = config
        self._rerank = Task.RERANK in spec.tasks
        self._tokenizer: Any = None
        self._model: Any = None
        self._pool: ThreadPoolExecutor | None = None
        self._max_length = 512
        self._cls_pooling = False
        self._files: tuple[ModelFile, ...] = ()

    async def start(self) -> None:
        folder = self.spec.weights
        if not (folder / "config.json").is_file():
            raise ModelLoadError(f"{folder}: not a model folder (no config.json)")
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="nimble-st")
        try:
            await self._in_worker(self._load)
        except ModelLoadError:
            await self.stop()
            raise

    def _load(self) -> None:
        folder = self.spec.weights
        if self._config.threads:
            torch.set_num_threads(self._config.threads)
        kind = (
            transformers.AutoModelForSequenceClassification
            if self._rerank
            else transformers.AutoModel
        )
        try:
            self._tokenizer = transformers.AutoTokenizer.from_pretrained(str(folder))
            self._model = kind.from_pretrained(str(folder)).eval()
        except (OSError, ValueError, RuntimeError) as exc:
            raise ModelLoadError(f"{folder}: cannot load with transformers: {exc}") from exc
        if self._rerank and self._model.config.num_labels != 1:
            raise ModelLoadError(
                f"{folder}: a reranker needs one output (num_labels 1), this model has "
                f"{self._model.config.num_labels}"
            )
        positions = getattr(self._model.config, "max_position_embeddings", 512) or 512
        limit = min(int(self._tokenizer.model_max_length or positions), int(positions))
        self._max_length = min(limit, self._config.context_length or limit)
        pooling = folder / "1_Pooling" / "config.json"
        if pooling.is_file():
            self._cls_pooling = bool(json.loads(pooling.read_text()).get("pooling_mode_cls_token"))
        paths = sorted({p for pattern in _WEIGHTS for p in folder.glob(pattern) if p.is_file()})
        self._files = tuple(ModelFile(str(p), sha256_of(p), p.stat().st_size) for p in paths)

    async def stop(self) -> None:
        pool, self._pool = self._pool, None
        if pool is not None:
            await asyncio.to_thread(pool.shutdown, wait=True)
        self._model = self._tokenizer = None

    async def warmup(self) -> None:
        if self._rerank:
            await self.rank(RankRequest("warmup", "warm up", ("a warm-up passage",)))
        else:
            await self.embed(EmbedRequest("warmup", ("warm up",)))

    async def health(self) -> bool:
        return self._model is not None and self._pool is not None

    async def cache_usage(self) -> float | None:
        return None

    def info(self) -> EngineInfo:
        return EngineInfo(
            engine="sentence_transformers",
            engine_version=f"transformers {transformers.__version__}",
            tasks=self.spec.tasks,
            context_length=self._max_length,
            supports_logprobs=False,
            files=self._files,
            extra={
                "torch": torch.__version__,
                "kind": "cross-encoder" if self._rerank else "bi-encoder",
            },
        )

    async def rank(self, request: RankRequest) -> RankResult:
        if not self._rerank:
            raise cannot_rank(self.spec.id)
        return await self._in_worker(lambda: self._rank_sync(request))

    def _rank_sync(self, request: RankRequest) -> RankResult:
        tokenizer, model = self._tokenizer, self._model
        queries = [request.query] * len(request.documents)
        documents = list(request.documents)
        if request.truncate == "NONE":
            for i, ids in enumerate(tokenizer(queries, documents)["input_ids"]):
                if len(ids) > self._max_length:
                    raise InvalidRequest(
                        f"query and passage {i} are {len(ids)} tokens together, more than the "
                        f"{self._max_length} of model {self.spec.id} (truncate is NONE)",
                        param="passages",
                    )
        scores: list[float] = []
        tokens = 0
        for start in range(0, len(documents), _BATCH):
            batch = tokenizer(
                queries[start : start + _BATCH],
                documents[start : start + _BATCH],
                padding=True,
                truncation="longest_first",
                max_length=self._max_length,
                return_tensors="pt",
            )
            tokens += int(batch["attention_mask"].sum())
            with torch.inference_mode():
                logits = model(**batch).logits[:, 0]
            scores.extend(float(x) for x in logits)
        return RankResult(tuple(scores), tokens)

    async def embed(self, request: EmbedRequest) -> EmbedResult:
        if self._rerank:
            raise InvalidRequest(f"model {self.spec.id} does not support embeddings", param="model")
        if any(not isinstance(i, str) for i in request.inputs):
            raise InvalidRequest(
                f"model {self.spec.id}: token arrays are not supported by this engine",
                param="input",
            )
        return await self._in_worker(lambda: self._embed_sync(request))

    def _embed_sync(self, request: EmbedRequest) -> EmbedResult:
        tokenizer, model = self._tokenizer, self._model
        texts = [str(i) for i in request.inputs]
        if request.truncate == "NONE":
            for i, ids in enumerate(tokenizer(texts)["input_ids"]):
                if len(ids) > self._max_length:
                    raise InvalidRequest(
                        f"input {i} has {len(ids)} tokens, more than the {self._max_length} of "
                        f"model {self.spec.id} (truncate is NONE)",
                        param="input",
                    )
        tokenizer.truncation_side = "left" if request.truncate == "START" else "right"
        vectors: list[tuple[float, ...]] = []
        tokens = 0
        for start in range(0, len(texts), _BATCH):
            batch = tokenizer(
                texts[start : start + _BATCH],
                padding=True,
                truncation=True,
                max_length=self._max_length,
                return_tensors="pt",
            )
            mask = batch["attention_mask"]
            tokens += int(mask.sum())
            with torch.inference_mode():
                hidden = model(**batch).last_hidden_state
            if self._cls_pooling:
                pooled = hidden[:, 0]
            else:
                weights = mask.unsqueeze(-1).to(hidden.dtype)
                pooled = (hidden * weights).sum(1) / weights.sum(1).clamp(min=1e-9)
            pooled = torch.nn.functional.normalize(pooled, dim=-1)
            vectors.extend(tuple(float(x) for x in row) for row in pooled)
        return EmbedResult(tuple(vectors), tokens)

    async def count_prompt_tokens(self, request: GenerateRequest) -> int:
        self._no_generation()

    def prompt_tokens_bound(self, request: GenerateRequest) -> int | None:
        self._no_generation()

    async def generate(self, request: GenerateRequest) -> AsyncGenerator[GenerationChunk, None]:
        self._no_generation()
        yield GenerationChunk()  # pragma: no cover - makes this an async generator

    def _no_generation(self) -> NoReturn:
        raise InvalidRequest(
            f"model {self.spec.id} does not support chat/completions", param="model"
        )

    async def _in_worker(self, work: Callable[[], _T]) -> _T:
        if self._pool is None:
            raise Unavailable(f"model {self.spec.id!r} is not loaded")
        return await asyncio.get_running_loop().run_in_executor(self._pool, work)
