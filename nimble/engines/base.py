"""The engine Protocol: the only thing the runtime knows about an engine."""

from __future__ import annotations

import os
from collections.abc import AsyncGenerator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from nimble.errors import InvalidRequest
from nimble.models.spec import ModelSpec
from nimble.types import (
    EmbedRequest,
    EmbedResult,
    EngineInfo,
    GenerateRequest,
    GenerationChunk,
    RankRequest,
    RankResult,
    ToolFunction,
)


@dataclass(frozen=True)
class EngineConfig:
    """Engine-level settings taken from `Settings` at the edge."""

    threads: int | None = None
    context_length: int | None = None
    max_running: int = 4
    engine_log: bool = False
    fake_token_delay: float = 0.0
    # a chat template (Jinja text) used instead of the model's own; None: the model's
    chat_template: str | None = None
    # embedding engines: sequences per batch across concurrent requests, and how long the
    # first request of a batch may wait for others (seconds)
    embed_batch_size: int = 32
    embed_max_wait: float = 0.002
    # where engines may keep derived files (converted weights, compiled graphs); None: none
    cache_path: Path | None = None
    # supervised engine processes (vllm): the command that starts the engine server (None:
    # the engine's own default, e.g. `vllm serve`), what to do when it dies ("restart" or
    # "fail"), and how long to wait for its health before giving up
    engine_command: tuple[str, ...] | None = None
    engine_restart: str = "restart"
    engine_start_timeout: float = 900.0
    # called (from any thread) when an engine can no longer serve and will not recover;
    # the server then stops with a non-zero exit code
    on_fatal: Callable[[str], None] | None = None


def tool_json(tool: ToolFunction) -> dict[str, Any]:
    """A declared function in OpenAI's `tools` shape (what chat templates and vLLM read)."""
    function: dict[str, Any] = {"name": tool.name}
    if tool.description:
        function["description"] = tool.description
    function["parameters"] = tool.parameters or {"type": "object", "properties": {}}
    return {"type": "function", "function": function}


def llguidance_schema(schema: dict[str, Any]) -> dict[str, Any]:
    """A JSON schema with llguidance's options, for the engines whose grammars llguidance
    compiles (llama.cpp's JSON-schema conversion in the xllamacpp build, the transformers
    engine): compact JSON (a small model otherwise may write whitespace until max_tokens)
    and `oneOf` read as `anyOf` (llguidance refuses a oneOf whose branches it cannot prove
    disjoint, and llama.cpp then generates unconstrained text without saying so). The
    schema's own `x-guidance` wins."""
    options = {"whitespace_flexible": False, "coerce_one_of": True}
    return {**schema, "x-guidance": {**options, **schema.get("x-guidance", {})}}


def cannot_rank(model_id: str) -> InvalidRequest:
    """What an engine that is not a cross-encoder answers to `rank`."""
    return InvalidRequest(f"model {model_id} does not support ranking", param="model")


class EncoderOnly:
    """For encoder engines (embeddings, rerankers): chat and completion requests are refused
    with the same 400, and the Protocol's generation methods need no copy per engine."""

    spec: ModelSpec

    async def count_prompt_tokens(self, request: GenerateRequest) -> int:
        raise self._no_generation()

    def prompt_tokens_bound(self, request: GenerateRequest) -> int | None:
        raise self._no_generation()

    async def generate(self, request: GenerateRequest) -> AsyncGenerator[GenerationChunk, None]:
        raise self._no_generation()
        yield GenerationChunk()  # pragma: no cover - makes this an async generator

    def _no_generation(self) -> InvalidRequest:
        return InvalidRequest(
            f"model {self.spec.id} does not support chat/completions", param="model"
        )


@runtime_checkable
class Engine(Protocol):
    """One loaded model. Requests arrive already validated (ranges, context length)."""

    spec: ModelSpec

    async def start(self) -> None:
        """Load the model. Raises ModelLoadError naming the file and the cause."""

    async def stop(self) -> None:
        """Free everything. Safe to call twice."""

    async def warmup(self) -> None:
        """Run one real generation (or embedding): readiness depends on it."""

    def info(self) -> EngineInfo:
        """Engine name and version, context window, files with sha256 (after start)."""

    async def count_prompt_tokens(self, request: GenerateRequest) -> int:
        """Tokens of the prompt as the engine will see it (chat template applied)."""

    def prompt_tokens_bound(self, request: GenerateRequest) -> int | None:
        """A cheap upper bound of `count_prompt_tokens` (None: unknown). When the bound fits
        the context window, the runtime skips the exact count."""

    def generate(self, request: GenerateRequest) -> AsyncGenerator[GenerationChunk, None]:
        """Stream chunks; `aclose()` (or cancelling the consumer) aborts the generation in the
        engine, so this is an async generator, not just an iterator."""

    async def embed(self, request: EmbedRequest) -> EmbedResult:
        """Embed the inputs (one vector each, L2-normalised where the model expects it)."""

    async def rank(self, request: RankRequest) -> RankResult:
        """Score each document against the query (cross-encoders; others raise
        InvalidRequest: the runtime ranks with an embedding model's cosine instead)."""

    async def health(self) -> bool:
        """True while the engine can serve."""

    async def cache_usage(self) -> float | None:
        """Share (0..1) of the engine's KV cache in use; None where it has no such cache."""


def usable_cpus() -> int:
    """The cores this process may run on (a container's cpuset, not the host's count)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1
