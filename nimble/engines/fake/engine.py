"""A deterministic engine with no weights: the same request always gives the same output.

It honours the sampling parameters that matter for API behaviour (max_tokens, stop, n,
seed, logprobs) so that the API and runtime can be tested without a model.
"""

from __future__ import annotations

import asyncio
import hashlib
import math
import re
from collections.abc import AsyncGenerator
from typing import Literal

from nimble.engines.config import EngineConfig
from nimble.engines.fake.constrained import constrained_text
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
    SamplingParams,
    TokenLogprob,
    TopLogprob,
    Usage,
)
from nimble.version import __version__

_WORDS = [
    "alpha",
    "bravo",
    "charlie",
    "delta",
    "echo",
    "foxtrot",
    "golf",
    "hotel",
    "india",
    "juliet",
    "kilo",
    "lima",
    "mike",
    "november",
    "oscar",
    "papa",
    "quebec",
    "romeo",
    "sierra",
    "tango",
    "uniform",
    "victor",
    "whiskey",
    "xray",
    "yankee",
    "zulu",
]
_EMBED_DIM = 16


def _digest(*parts: object) -> bytes:
    return hashlib.sha256("\x1f".join(map(str, parts)).encode()).digest()


class FakeEngine:
    def __init__(self, spec: ModelSpec, config: EngineConfig):
        self.spec = spec
        self._config = config
        self._context = config.context_length or spec.context_length or 2048
        self.started = False
        self.aborted = 0
        self.running = 0

    async def start(self) -> None:
        self.started = True
        request = GenerateRequest("warmup", SamplingParams(max_tokens=1), prompt="warm up")
        async for _ in self.generate(request):
            pass

    async def stop(self) -> None:
        self.started = False

    def info(self) -> EngineInfo:
        return EngineInfo(
            engine="fake",
            engine_version=__version__,
            tasks=self.spec.tasks,
            context_length=self._context,
            supports_logprobs=True,
        )

    def _prompt_text(self, request: GenerateRequest) -> str:
        if request.messages is not None:
            return "\n".join(f"{m.role}: {m.content}" for m in request.messages)
        return request.prompt or ""

    async def prompt_tokens(self, request: GenerateRequest, fits: int) -> int:
        return self._count(request)  # always exact: keeps the API tests on the exact path

    def _count(self, request: GenerateRequest) -> int:
        """One token per whitespace-separated word, plus 3 per chat message (the template)."""
        text = self._prompt_text(request)
        extra = 3 * len(request.messages) if request.messages is not None else 0
        return len(text.split()) + extra

    async def generate(self, request: GenerateRequest) -> AsyncGenerator[GenerationChunk, None]:
        params = request.params
        prompt = self._prompt_text(request)
        prompt_tokens = self._count(request)
        budget = params.max_tokens or (self._context - prompt_tokens)
        completion_tokens = 0
        self.running += 1
        finished = False
        forced = None
        if request.constraint is not None:
            forced = constrained_text(request, request.constraint)
        try:
            for index in range(params.n):
                if forced is not None:
                    pieces = re.findall(r"\S+\s*", forced)[:budget]
                    for piece in pieces:
                        completion_tokens += 1
                        yield GenerationChunk(index=index, text=piece)
                    done = len(pieces) == len(re.findall(r"\S+\s*", forced))
                    yield GenerationChunk(index=index, finish_reason="stop" if done else "length")
                    continue
                seed = _digest(prompt, params.seed, index)
                natural_length = 8 + seed[0] % 8
                text = ""
                finish: Literal["stop", "length"] = "length"
                for step in range(budget):
                    if step >= natural_length:
                        finish = "stop"
                        break
                    if self._config.fake_token_delay:
                        await asyncio.sleep(self._config.fake_token_delay)
                    word = _WORDS[_digest(seed, step)[0] % len(_WORDS)]
                    piece = word if step == 0 else " " + word
                    completion_tokens += 1
                    stop_at = _first_stop(text + piece, params.stop)
                    if stop_at is not None:
                        cut = (text + piece)[:stop_at][len(text) :]
                        if cut:
                            yield GenerationChunk(index=index, text=cut)
                        finish = "stop"
                        break
                    text += piece
                    yield GenerationChunk(
                        index=index, text=piece, logprobs=_logprobs(piece, params.top_logprobs)
                    )
                yield GenerationChunk(index=index, finish_reason=finish)
            finished = True
            yield GenerationChunk(usage=Usage(prompt_tokens, completion_tokens))
        finally:
            self.running -= 1
            if not finished:
                self.aborted += 1

    async def rank(self, request: RankRequest) -> RankResult:
        """Deterministic: the number of query words a document shares, minus a little per
        word of length (so ties break the same way every time)."""
        limit = self.spec.context_length or 2048
        for index, doc in enumerate(request.documents):
            words = len(request.query.split()) + len(doc.split()) + 3
            if words > limit and request.truncate == "NONE":
                raise InvalidRequest(
                    f"query and passage {index} are {words} tokens together, more than the "
                    f"model's {limit} (truncate is NONE)",
                    param="passages",
                )
        query = set(request.query.lower().split())
        scores = tuple(
            len(query & set(doc.lower().split())) - 0.01 * len(doc.split())
            for doc in request.documents
        )
        tokens = sum(
            min(len(request.query.split()) + len(doc.split()) + 3, limit)
            for doc in request.documents
        )
        return RankResult(scores, tokens)

    async def embed(self, request: EmbedRequest) -> EmbedResult:
        vectors = []
        limit = self.spec.context_length or 2048
        texts = [i if isinstance(i, str) else " ".join(map(str, i)) for i in request.inputs]
        for index, text in enumerate(texts):
            words = len(text.split()) + 2
            if words > limit and request.truncate == "NONE":
                raise InvalidRequest(
                    f"input {index} has {words} tokens, more than the model's {limit} "
                    "(truncate is NONE)",
                    param="input",
                )
            raw = [b - 127.5 for b in _digest(text)[:_EMBED_DIM]]
            norm = math.sqrt(sum(v * v for v in raw)) or 1.0
            vectors.append(tuple(v / norm for v in raw))
        tokens = sum(min(len(text.split()) + 2, limit) for text in texts)
        return EmbedResult(vectors=tuple(vectors), prompt_tokens=tokens)

    async def health(self) -> bool:
        return self.started

    async def cache_usage(self) -> float | None:
        """Simulated: the share of slots generating (real engines report their KV cache)."""
        return min(1.0, self.running / self._config.max_running)


def _first_stop(text: str, stops: tuple[str, ...]) -> int | None:
    positions = [text.find(stop) for stop in stops if stop and stop in text]
    return min(positions) if positions else None


def _logprobs(piece: str, top: int | None) -> tuple[TokenLogprob, ...]:
    if top is None:
        return ()
    alternatives = tuple(
        TopLogprob(token=piece if rank == 0 else f"<alt{rank}>", logprob=-0.1 - rank)
        for rank in range(top)
    )
    return (TokenLogprob(token=piece, logprob=-0.1, bytes=tuple(piece.encode()), top=alternatives),)
