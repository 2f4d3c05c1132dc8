"""`echo` on llama.cpp: each choice starts with the prompt, and with `logprobs` the prompt is
scored: the logprob of every prompt token.

llama.cpp's server has no prompt logprobs (its OpenAI completions refuse `echo`: "Only no
echo is supported"). What it does report, for a token it generates, is the model's own
distribution at that step before any sampler (`n_probs` without `post_sampling_probs`: the
logprob of the token it picked and the best alternatives, from the raw logits). So token i
of the prompt is scored by a one-token completion of the tokens before it whose
`logit_bias` makes the model pick token i: the reported logprob is the model's logprob of
that token given the ones before (teacher forcing; the bias moves the pick, not the
reported numbers). One llama.cpp task per prompt token, each reading one new token (the
prefix is in the slot's prompt cache), where vLLM and transformers score a prompt in one
batched pass; the numbers are the same to float rounding (~1e-5 against a batched pass:
tests/clients/test_lm_eval.py). A grammar of token ids would force the whole prompt in one
task, but llama.cpp's GBNF cannot force an end-of-generation token (`<|im_end|>`) or a
lone byte token, and llguidance costs seconds to set up for a vocabulary.

A token that is part of a UTF-8 character (a lone byte) is held back by llama.cpp with its
probabilities until the character is complete, which a one-token completion never is: for
such a token the completion picks a token of whole text instead (`plain`) and asks for the
whole vocabulary's logprobs (`n_probs` = its size), where the token's own is found.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import AsyncGenerator, Awaitable, Callable
from dataclasses import dataclass

from nimble.engines.llamacpp.tokenizer import ServerTokenizer
from nimble.engines.openai_wire import Json, error_from, is_error
from nimble.errors import EngineError
from nimble.types import (
    GenerateRequest,
    GenerationChunk,
    TokenizeRequest,
    TokenLogprob,
    TopLogprob,
    Usage,
)

_FORCE = 1000.0  # a logit bias no model's scores overcome
_UNLIKELY = -9999.0  # what OpenAI reports for a token too unlikely to have a finite logprob

Payloads = Callable[[Json], AsyncGenerator[Json, None]]
Pieces = Callable[[tuple[int, ...]], Awaitable[tuple[str, ...]]]


def forcing_body(before: tuple[int, ...], token: int, top: int) -> Json:
    """A one-token llama.cpp completion of `before` that picks `token`, with the model's
    logprobs (before the bias) of it and of `top` alternatives."""
    return {
        "prompt": list(before),
        "max_tokens": 1,
        "n_probs": top,
        "post_sampling_probs": False,
        "temperature": 0.0,
        "logit_bias": [[token, _FORCE]],
        "cache_prompt": True,
        "stream": False,
    }


@dataclass(frozen=True)
class Model:
    """What scoring needs of the engine: `payloads` runs one llama.cpp completion body and
    yields its payloads; `pieces_of` gives the text of token ids (special tokens as
    written); the vocabulary's size, and a token of whole text (`plain`, asked for only
    when a token is part of a character)."""

    payloads: Payloads
    pieces_of: Pieces
    vocab: int
    plain: Callable[[], Awaitable[int]]


# the scoring Model on a LoRA adapter (None: the base model)
Scoring = Callable[[str | None], Awaitable[Model]]
# the engine's generation, for what follows the prompt
Generate = Callable[[GenerateRequest], AsyncGenerator[GenerationChunk, None]]


async def echoed(
    request: GenerateRequest, tokenizer: ServerTokenizer, scoring: Scoring, generate: Generate
) -> AsyncGenerator[GenerationChunk, None]:
    """Each choice starts with the prompt, its tokens scored first when logprobs are asked
    for; then the generation (`generate`, without echo), none for max_tokens 0."""
    params, prompt = request.params, request.prompt or ""
    text = prompt if isinstance(prompt, str) else await tokenizer.detokenize(prompt)
    ids: tuple[int, ...] | None = None
    logprobs: tuple[TokenLogprob, ...] = ()
    if params.top_logprobs is not None:
        if isinstance(prompt, tuple):
            ids = prompt
        else:
            ids = (await tokenizer.tokenize(TokenizeRequest(prompt))).ids
        if ids:
            model = await scoring(request.adapter)
            logprobs = await prompt_logprobs(model, ids, params.top_logprobs)
    for index in range(params.n):
        yield GenerationChunk(index=index, text=text, logprobs=logprobs)
    if params.max_tokens == 0:  # prompt scoring: nothing generated
        for index in range(params.n):
            yield GenerationChunk(index=index, finish_reason="length")
        counted = len(ids) if ids is not None else await tokenizer.exact(request)
        yield GenerationChunk(usage=Usage(counted, 0))
        return
    plain = dataclasses.replace(request, echo=False)
    async with contextlib.aclosing(generate(plain)) as rest:
        async for chunk in rest:
            yield chunk


async def prompt_logprobs(model: Model, ids: tuple[int, ...], top: int) -> tuple[TokenLogprob, ...]:
    """The logprob of each of `ids` given those before it (None for the first) with `top`
    alternatives."""
    entries = [await _forced(model, ids[:at], ids[at], top) for at in range(1, len(ids))]
    alternatives = sorted({int(alt["id"]) for e in entries for alt in _alternatives(e, top)})
    everything = await model.pieces_of(ids + tuple(alternatives))  # one round trip
    pieces = everything[: len(ids)]
    texts = dict(zip(alternatives, everything[len(ids) :], strict=True))
    scored = [TokenLogprob(pieces[0], None, tuple(pieces[0].encode()))]
    for piece, entry in zip(pieces[1:], entries, strict=True):
        top_ones = tuple(
            TopLogprob(texts[int(alt["id"])], _logprob(alt), tuple(texts[int(alt["id"])].encode()))
            for alt in _alternatives(entry, top)
        )
        scored.append(TokenLogprob(piece, _logprob(entry), tuple(piece.encode()), top_ones))
    return tuple(scored)


async def _forced(model: Model, before: tuple[int, ...], token: int, top: int) -> Json:
    """llama.cpp's logprob entry of `token` after `before` (with `top` alternatives)."""
    # llama.cpp sends no probabilities for n_probs 0
    found = await _entry(model.payloads, forcing_body(before, token, max(top, 1)))
    if found is None:  # part of a UTF-8 character: held back; read it from the whole list
        whole = forcing_body(before, await model.plain(), model.vocab)
        listed = await _entry(model.payloads, whole)
        ranked = list(listed.get("top_logprobs") or ()) if listed is not None else []
        mine = next((alt for alt in ranked if int(alt.get("id", -1)) == token), None)
        found = None if mine is None else {**mine, "top_logprobs": ranked[:top]}
    if found is None or int(found.get("id", -1)) != token:
        picked = None if found is None else found.get("id")
        raise EngineError(f"llama.cpp did not score prompt token {token} (it answered {picked})")
    return found


async def _entry(payloads: Payloads, body: Json) -> Json | None:
    """The logprob entry of the token a one-token completion picked (None: none sent)."""
    found: Json | None = None
    async with contextlib.aclosing(payloads(body)) as stream:
        async for payload in stream:
            if is_error(payload):
                raise error_from(payload, "prompt")
            for choice in payload.get("choices") or ():
                logprobs = choice.get("logprobs")
                content = logprobs.get("content") if isinstance(logprobs, dict) else None
                if content and found is None:
                    found = content[0]
    return found


def _alternatives(entry: Json, top: int) -> list[Json]:
    return list(entry.get("top_logprobs") or ())[:top]


def _logprob(entry: Json) -> float:
    value = entry.get("logprob")
    return _UNLIKELY if value is None else float(value)
