"""The engine contracts: the only things the runtime knows about an engine.

Every engine has the core (`Engine`); what it can do beyond that it says by having the
methods of a capability (`Generator`, `Embedder`, `Ranker`, `Classifier`, `CacheReporter`,
`Tokenizer`, `AdapterHost`).
The runtime checks, when a model is loaded, that its engine has the capability of each task
the model serves (`runtime/served.py`), and routes requests by that: an engine never
answers for a capability it does not have. A new capability is a new Protocol here and a
row in `runtime/served.py`; engines without it are not touched.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator
from typing import Protocol, runtime_checkable

from nimble.models.adapters import AdapterSpec
from nimble.models.spec import ModelSpec
from nimble.types import (
    ClassifyRequest,
    ClassifyResult,
    EmbedRequest,
    EmbedResult,
    EngineInfo,
    GenerateRequest,
    GenerationChunk,
    RankRequest,
    RankResult,
    TokenizeRequest,
    Tokens,
)


@runtime_checkable
class Engine(Protocol):
    """One loaded model. Requests arrive already validated (ranges, context length)."""

    spec: ModelSpec

    async def start(self) -> None:
        """Load the model and pass one real warm-up (a generation, an embedding, a score):
        readiness depends on it. Raises ModelLoadError naming the file and the cause."""

    async def stop(self) -> None:
        """Free everything. Safe to call twice."""

    def info(self) -> EngineInfo:
        """Engine name and version, context window, files with sha256 (after start)."""

    async def health(self) -> bool:
        """True while the engine can serve."""


@runtime_checkable
class Generator(Protocol):
    """Text generation: chat and completions."""

    async def prompt_tokens(self, request: GenerateRequest, fits: int) -> int:
        """Tokens of the prompt as the engine will see it (chat template applied). An engine
        may answer with a cheap upper bound instead of the exact count when that bound is
        at most `fits`: the runtime only needs the exact count to refuse a prompt."""

    def generate(self, request: GenerateRequest) -> AsyncGenerator[GenerationChunk, None]:
        """Stream chunks; `aclose()` (or cancelling the consumer) aborts the generation in the
        engine, so this is an async generator, not just an iterator."""


@runtime_checkable
class Embedder(Protocol):
    """Embeddings (bi-encoders)."""

    async def embed(self, request: EmbedRequest) -> EmbedResult:
        """Embed the inputs (one vector each, L2-normalised where the model expects it)."""


@runtime_checkable
class Ranker(Protocol):
    """Scores of documents against a query (cross-encoders)."""

    async def rank(self, request: RankRequest) -> RankResult:
        """Score each document against the query (raw logits)."""


@runtime_checkable
class Classifier(Protocol):
    """Sequence classification: each text to a probability per label of the model."""

    async def classify(self, request: ClassifyRequest) -> ClassifyResult:
        """Each input's probabilities over the model's labels (id2label order): a softmax,
        or a sigmoid per label for a multi-label model (`problem_type`
        multi_label_classification). Concurrent requests share batches."""


@runtime_checkable
class CacheReporter(Protocol):
    """Engines with a KV cache report how full it is (a Prometheus gauge)."""

    async def cache_usage(self) -> float | None:
        """Share (0..1) of the engine's KV cache in use; None: no reading right now."""


@runtime_checkable
class Tokenizer(Protocol):
    """The model's own tokenizer: text, or a conversation through the chat template, to
    token ids, and ids back to text (`/tokenize`, `/detokenize`, documents cut to a number
    of tokens)."""

    def vocab_size(self) -> int | None:
        """Ids run from 0 to this, exclusive (after start); None: unknown here, and
        `detokenize` refuses an id outside the vocabulary itself."""

    async def tokenize(self, request: TokenizeRequest) -> Tokens:
        """The ids of the prompt, or of the conversation as the engine's own chat
        completion renders it (the runtime has already written tools in where the template
        cannot show them)."""

    async def detokenize(self, ids: tuple[int, ...]) -> str:
        """The text of `ids` (special tokens included, as written in the vocabulary)."""


@runtime_checkable
class AdapterHost(Protocol):
    """LoRA adapters over the model: those of `spec.adapters` are loaded by `start`; more
    come and go here at run time. A request names its adapter in `GenerateRequest.adapter`
    (None: the base model), and requests for different adapters and the base share the
    engine."""

    async def load_adapter(self, adapter: AdapterSpec) -> None:
        """Load (or replace, same name) an adapter without disturbing requests in flight.
        Raises InvalidRequest naming the file when it does not fit the model."""

    async def unload_adapter(self, name: str) -> None:
        """Free an adapter; the runtime has already waited for its requests."""
