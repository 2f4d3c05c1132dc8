"""Frozen value types shared by the runtime and the engines (no behaviour, no imports of layers)."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import Literal


class Task(StrEnum):
    """What a model can be asked to do."""

    CHAT = "chat"
    COMPLETION = "completion"
    EMBEDDING = "embedding"
    RERANK = "rerank"


@dataclass(frozen=True)
class ChatMessage:
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str
    name: str | None = None


@dataclass(frozen=True)
class SamplingParams:
    """Sampling settings, already validated at the API edge."""

    max_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    stop: tuple[str, ...] = ()
    seed: int | None = None
    n: int = 1
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    # number of alternatives per token; None means no logprobs at all
    top_logprobs: int | None = None


@dataclass(frozen=True)
class GenerateRequest:
    """One chat or completion request, as an engine receives it.

    Exactly one of `messages` (chat) or `prompt` (completion) is set.
    """

    request_id: str
    params: SamplingParams
    messages: tuple[ChatMessage, ...] | None = None
    prompt: str | None = None

    @property
    def task(self) -> Task:
        return Task.CHAT if self.messages is not None else Task.COMPLETION


@dataclass(frozen=True)
class TopLogprob:
    token: str
    logprob: float
    bytes: tuple[int, ...] | None = None


@dataclass(frozen=True)
class TokenLogprob:
    token: str
    logprob: float
    bytes: tuple[int, ...] | None = None
    top: tuple[TopLogprob, ...] = ()


@dataclass(frozen=True)
class Usage:
    prompt_tokens: int
    completion_tokens: int

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


@dataclass(frozen=True)
class GenerationChunk:
    """A piece of output for one choice. The last chunk of a choice has `finish_reason`.

    The engine ends its stream with one chunk that carries `usage` (and no text).
    """

    index: int = 0
    text: str = ""
    finish_reason: Literal["stop", "length"] | None = None
    logprobs: tuple[TokenLogprob, ...] = ()
    usage: Usage | None = None


@dataclass(frozen=True)
class EmbeddingTraits:
    """How an embedding model wants its inputs (see the model manifest)."""

    query_prefix: str = ""
    passage_prefix: str = ""
    input_type_required: bool = False
    dimensions: int | None = None
    matryoshka_dimensions: tuple[int, ...] = ()


@dataclass(frozen=True)
class EmbedRequest:
    """Texts (prefixes already applied) or token id arrays, as the engine receives them.

    `truncate`: END cuts the end of an input longer than the model's window, START its
    beginning, NONE refuses it (InvalidRequest with both lengths)."""

    request_id: str
    inputs: tuple[str | tuple[int, ...], ...]
    truncate: Literal["NONE", "START", "END"] = "END"


@dataclass(frozen=True)
class EmbedResult:
    vectors: tuple[tuple[float, ...], ...]
    prompt_tokens: int


@dataclass(frozen=True)
class RankRequest:
    """A query and the documents to score against it (a cross-encoder reads each pair).

    `truncate`: END cuts a pair longer than the model's window, NONE refuses it."""

    request_id: str
    query: str
    documents: tuple[str, ...]
    truncate: Literal["NONE", "END"] = "END"


@dataclass(frozen=True)
class RankResult:
    """One raw score (a logit for a cross-encoder) per document, in the request's order."""

    scores: tuple[float, ...]
    prompt_tokens: int


@dataclass(frozen=True)
class ModelFile:
    path: str
    sha256: str
    size_bytes: int


@dataclass(frozen=True)
class EngineInfo:
    """What an engine tells `/v1/metadata` about itself and the model it runs."""

    engine: str
    engine_version: str
    tasks: frozenset[Task]
    context_length: int
    supports_logprobs: bool
    files: tuple[ModelFile, ...] = ()
    extra: dict[str, str] = field(default_factory=dict)
