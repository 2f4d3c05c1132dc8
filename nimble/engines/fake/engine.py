"""A deterministic engine with no weights: the same request always gives the same output.

It honours the sampling parameters that matter for API behaviour (max_tokens, stop, n,
seed, logprobs, ignore_eos, min_tokens, stop_token_ids, include_stop_str_in_output,
continuous usage) so that the API and runtime can be tested without a model. Its tokens are
words: a word's token id is its place in `_WORDS` (alpha is 0). Without logits, top_k,
min_p, repetition_penalty and logit_bias change nothing.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import math
import re
from collections import deque
from collections.abc import AsyncGenerator
from typing import Literal

from nimble.engines.config import EngineConfig
from nimble.engines.fake.constrained import constrained_text
from nimble.errors import InvalidRequest, ModelLoadError
from nimble.models.adapters import AdapterSpec
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
    TokenizeRequest,
    TokenLogprob,
    Tokens,
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
# the tokenizer's vocabulary: the words (a word's id is its place in _WORDS), then an
# unknown word, and the chat template's three tokens per message
_VOCAB = (*_WORDS, "<unk>", "<|im_start|>", "<|im_end|>", "\n")
_IDS = {token: i for i, token in enumerate(_VOCAB)}
_UNK, _START, _END, _NL = (_IDS[t] for t in ("<unk>", "<|im_start|>", "<|im_end|>", "\n"))


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
        self.adapters: dict[str, AdapterSpec] = {}
        # the latest requests it was asked to generate for (tests assert on what reached it)
        self.requests: deque[GenerateRequest] = deque(maxlen=64)

    async def start(self) -> None:
        for adapter in self.spec.adapters:
            try:
                await self.load_adapter(adapter)
            except InvalidRequest as exc:
                raise ModelLoadError(str(exc)) from exc
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

    async def load_adapter(self, adapter: AdapterSpec) -> None:
        """Any file or folder is an adapter, but an empty file (the stand-in for one that
        does not fit the model)."""
        if adapter.path.is_file() and adapter.path.stat().st_size == 0:
            raise InvalidRequest(
                f"{adapter.path}: not a LoRA adapter of model `{self.spec.id}` (empty file)",
                param="lora_path",
            )
        self.adapters[adapter.name] = adapter

    async def unload_adapter(self, name: str) -> None:
        self.adapters.pop(name, None)

    def _prompt_text(self, request: GenerateRequest) -> str:
        if request.messages is not None:
            return "\n".join(f"{m.role}: {m.content}" for m in request.messages)
        if isinstance(request.prompt, tuple):  # token ids: their words
            return " ".join(_VOCAB[i] for i in request.prompt)
        return request.prompt or ""

    async def prompt_tokens(self, request: GenerateRequest, fits: int) -> int:
        return self._count(request)  # always exact: keeps the API tests on the exact path

    def _count(self, request: GenerateRequest) -> int:
        """One token per whitespace-separated word, plus 3 per chat message (the template);
        token ids count one each."""
        if isinstance(request.prompt, tuple):
            return len(request.prompt)
        text = self._prompt_text(request)
        extra = 3 * len(request.messages) if request.messages is not None else 0
        return len(text.split()) + extra

    async def generate(self, request: GenerateRequest) -> AsyncGenerator[GenerationChunk, None]:
        self.requests.append(request)
        if _asks_to_think(request):
            async for chunk in self._think_first(request):
                yield chunk
            return
        params = request.params
        prompt = self._prompt_text(request)
        prompt_tokens = self._count(request)
        budget = self._context - prompt_tokens if params.max_tokens is None else params.max_tokens
        echo = _echo(request, prompt) if request.echo else None
        completion_tokens = 0
        self.running += 1
        finished = False
        forced = None
        if request.constraint is not None:
            forced = constrained_text(request, request.constraint)
        try:
            for index in range(params.n):
                if echo is not None:
                    yield dataclasses.replace(echo, index=index)
                if forced is not None:
                    pieces = re.findall(r"\S+\s*", forced)[:budget]
                    for step, piece in enumerate(pieces):
                        completion_tokens += 1
                        done_so_far = Usage(prompt_tokens, step + 1)
                        progress = done_so_far if params.continuous_usage else None
                        yield GenerationChunk(index=index, text=piece, progress=progress)
                    done = len(pieces) == len(re.findall(r"\S+\s*", forced))
                    yield GenerationChunk(index=index, finish_reason="stop" if done else "length")
                    continue
                seed = _digest(prompt, params.seed, index, *_adapter_of(request, self.adapters))
                # where the text would end by itself (its end-of-text token)
                natural_length = budget if params.ignore_eos else 8 + seed[0] % 8
                natural_length = max(natural_length, params.min_tokens)
                text = ""
                finish: Literal["stop", "length"] = "length"
                stopped_by: str | None = None  # the stop string that ended the text
                for step in range(budget):
                    if step >= natural_length:
                        finish = "stop"
                        break
                    if self._config.fake_token_delay:
                        await asyncio.sleep(self._config.fake_token_delay)
                    token = _digest(seed, step)[0] % len(_WORDS)
                    piece = _WORDS[token] if step == 0 else " " + _WORDS[token]
                    if step == 0 and request.adapter is not None:
                        piece = f"[{request.adapter}]"  # which adapter answered
                    completion_tokens += 1
                    progress = Usage(prompt_tokens, step + 1) if params.continuous_usage else None
                    may_end = step >= params.min_tokens  # vLLM: no end before min_tokens
                    cut = _stop_cut(text, piece, params) if may_end else None
                    if cut is not None:
                        stopped_by = _first_stop(text + piece, params)[1]
                    if cut is None and may_end and token in params.stop_token_ids:
                        cut = piece if params.include_stop_str_in_output else ""
                    if cut is not None:
                        if cut:
                            yield GenerationChunk(index=index, text=cut, progress=progress)
                        finish = "stop"
                        break
                    text += piece
                    yield GenerationChunk(
                        index=index,
                        text=piece,
                        logprobs=_logprobs(piece, params.top_logprobs),
                        progress=progress,
                    )
                yield GenerationChunk(index=index, finish_reason=finish, stop_sequence=stopped_by)
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

    def vocab_size(self) -> int:
        return len(_VOCAB)

    async def tokenize(self, request: TokenizeRequest) -> Tokens:
        """One token per word (`<unk>` outside the vocabulary); a chat message is
        `<|im_start|>`, the words of "role: content", `<|im_end|>` and a newline: as many
        tokens as a chat completion counts."""
        if request.chat is None:
            ids = [_IDS.get(word, _UNK) for word in (request.prompt or "").split()]
        else:
            ids = []
            for m in request.chat.messages or ():
                words = f"{m.role}: {m.content}".split()
                ids += [_START, *(_IDS.get(word, _UNK) for word in words), _END, _NL]
        return Tokens(tuple(ids), tuple(_VOCAB[i] for i in ids))

    async def detokenize(self, ids: tuple[int, ...]) -> str:
        return " ".join(_VOCAB[i] for i in ids)

    async def _think_first(self, request: GenerateRequest) -> AsyncGenerator[GenerationChunk, None]:
        """A chat message that says `/think` (Qwen3's switch): each choice first thinks, in
        `<think>...</think>` (a few words, one token each, as are the tags), then answers
        as without the switch, in what is left of max_tokens."""
        params = request.params
        words = _digest("think", self._prompt_text(request))
        thought = [_WORDS[b % len(_WORDS)] for b in words[1 : 4 + words[0] % 3]]
        pieces = ["<think>", thought[0], *(" " + word for word in thought[1:]), "</think>"]
        budget = params.max_tokens
        if budget is not None and budget <= len(pieces):
            for index in range(params.n):  # never closes its thoughts
                for piece in pieces[:budget]:
                    yield GenerationChunk(index=index, text=piece)
                yield GenerationChunk(index=index, finish_reason="length")
            yield GenerationChunk(usage=Usage(self._count(request), params.n * budget))
            return
        rest = None if budget is None else budget - len(pieces)
        assert request.messages  # _asks_to_think
        last = request.messages[-1]
        unswitched = dataclasses.replace(last, content=last.content.replace("/think", ""))
        answer = dataclasses.replace(
            request,
            params=dataclasses.replace(params, max_tokens=rest),
            messages=(*request.messages[:-1], unswitched),
        )
        started: set[int] = set()
        async for chunk in self.generate(answer):
            if chunk.usage is not None:
                spent = chunk.usage.completion_tokens + params.n * len(pieces)
                yield GenerationChunk(usage=Usage(self._count(request), spent))
                continue
            if chunk.index not in started:
                started.add(chunk.index)
                for piece in pieces:
                    yield GenerationChunk(index=chunk.index, text=piece)
            yield chunk

    async def health(self) -> bool:
        return self.started

    async def cache_usage(self) -> float | None:
        """Simulated: the share of slots generating (real engines report their KV cache)."""
        return min(1.0, self.running / self._config.max_running)


def _adapter_of(request: GenerateRequest, loaded: dict[str, AdapterSpec]) -> tuple[str, ...]:
    """What the adapter adds to the seed: its name and file's sha256 (a changed file
    answers differently), nothing for the base model."""
    if request.adapter is None:
        return ()
    adapter = loaded.get(request.adapter)
    if adapter is None:
        raise InvalidRequest(f"adapter `{request.adapter}` is not loaded", param="model")
    return (adapter.name, adapter.sha256)


def _stop_cut(text: str, piece: str, params: SamplingParams) -> str | None:
    """The part of `piece` to send when a stop string ends the text in it (up to the
    stop string, or through it with include_stop_str_in_output); None: no stop."""
    whole = text + piece
    at, stop = _first_stop(whole, params)
    if at < 0:
        return None
    end = at + len(stop) if params.include_stop_str_in_output else at
    return whole[:end][len(text) :]


def _first_stop(text: str, params: SamplingParams) -> tuple[int, str]:
    """Where the first stop string in `text` starts, and which it is; (-1, "") if none."""
    found = [(text.find(stop), stop) for stop in params.stop if stop and stop in text]
    return min(found) if found else (-1, "")


def _asks_to_think(request: GenerateRequest) -> bool:
    last = request.messages[-1] if request.messages else None
    return last is not None and "/think" in last.content and request.constraint is None


def _echo(request: GenerateRequest, text: str) -> GenerationChunk:
    """The prompt as the start of a choice: its text and, with logprobs, one per word
    (deterministic: a digest of the words up to it; the first has none)."""
    top = request.params.top_logprobs
    if top is None:
        return GenerationChunk(text=text)
    pieces = re.findall(r"\s*\S+", text) or [text]
    pieces[-1] += text[len("".join(pieces)) :]  # trailing blanks belong to the last word
    tokens = []
    for position, piece in enumerate(pieces):
        if position == 0:
            tokens.append(TokenLogprob(piece, None, tuple(piece.encode())))
            continue
        value = -(1 + _digest(*pieces[: position + 1])[0] % 40) / 10
        alternatives = tuple(
            TopLogprob(piece if rank == 0 else f"<alt{rank}>", value - rank) for rank in range(top)
        )
        tokens.append(TokenLogprob(piece, value, tuple(piece.encode()), alternatives))
    return GenerationChunk(text=text, logprobs=tuple(tokens))


def _logprobs(piece: str, top: int | None) -> tuple[TokenLogprob, ...]:
    if top is None:
        return ()
    alternatives = tuple(
        TopLogprob(token=piece if rank == 0 else f"<alt{rank}>", logprob=-0.1 - rank)
        for rank in range(top)
    )
    return (TokenLogprob(token=piece, logprob=-0.1, bytes=tuple(piece.encode()), top=alternatives),)
