"""Prompt scoring on llama.cpp: the logprob of every prompt token (`echo` with `logprobs`).

llama.cpp's server has no prompt logprobs (its OpenAI completions refuse `echo`: "Only no
echo is supported"). What it does report, for each token it generates, is the model's own
distribution at that step before any sampler or grammar (`n_probs`, without
`post_sampling_probs`): the logprob of the token it picked and the best alternatives. So the
prompt is scored by having llama.cpp generate it (teacher forcing): the prompt's first token
is the prompt, and a grammar of token ids (llguidance's `<[id]>`, one per step) forces the
others in order; each step's logprob is the model's logprob of that prompt token given the
tokens before it. That costs one decode step per prompt token, where vLLM and transformers
score a prompt in one batched pass; the numbers are the same to float rounding (a batched
pass's logprobs of the same tokens differ by ~1e-5: tests/clients/test_lm_eval.py).

An end-of-generation token in the prompt (`<|im_end|>`) ends a llama.cpp generation after
its own logprob is reported: the scoring goes on from the token after it, with a new
generation (its prompt, the tokens scored so far, is in llama.cpp's prompt cache).
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncGenerator, Callable

from nimble.engines.openai_wire import Json, error_from, is_error
from nimble.errors import EngineError
from nimble.types import TokenLogprob, TopLogprob

# what OpenAI reports for a token too unlikely to have a finite logprob
_UNLIKELY = -9999.0

Payloads = Callable[[Json], AsyncGenerator[Json, None]]


def forcing_body(scored: tuple[int, ...], rest: tuple[int, ...], top: int) -> Json:
    """A llama.cpp completion of `scored` that must write exactly the ids `rest`, with
    the model's logprobs (before the grammar) of each and of `top` alternatives."""
    return {
        "prompt": list(scored),
        "max_tokens": len(rest),
        "n_probs": max(top, 1),  # llama.cpp sends no probabilities for 0
        "post_sampling_probs": False,
        "temperature": 0.0,
        "grammar": "%llguidance {}\nstart: " + " ".join(f"<[{token}]>" for token in rest),
        "cache_prompt": True,
        "stream": True,
    }


async def prompt_logprobs(
    payloads: Payloads, ids: tuple[int, ...], pieces: tuple[str, ...], top: int
) -> tuple[TokenLogprob, ...]:
    """The logprob of each of `ids` given those before it (None for the first) with `top`
    alternatives, by forced generation (`payloads` runs one llama.cpp completion body and
    yields its streamed payloads). `pieces`: each token's text."""
    scored = [TokenLogprob(pieces[0], None, tuple(pieces[0].encode()))]
    while len(scored) < len(ids):
        before = len(scored)
        body = forcing_body(ids[:before], ids[before:], top)
        async with contextlib.aclosing(payloads(body)) as stream:
            async for payload in stream:
                if is_error(payload):
                    raise error_from(payload, "prompt")
                for entry in _entries(payload):
                    scored.append(_scored(entry, ids, pieces, len(scored), top))
        if len(scored) == before:
            raise EngineError("llama.cpp scored no token of the prompt")
    return tuple(scored)


def _entries(payload: Json) -> list[Json]:
    entries: list[Json] = []
    for choice in payload.get("choices") or ():
        logprobs = choice.get("logprobs")
        if isinstance(logprobs, dict):
            entries.extend(logprobs.get("content") or ())
    return entries


def _scored(
    entry: Json, ids: tuple[int, ...], pieces: tuple[str, ...], at: int, top: int
) -> TokenLogprob:
    if at >= len(ids) or int(entry.get("id", -1)) != ids[at]:
        raise EngineError(
            f"llama.cpp did not follow the prompt while scoring it (token {at}: "
            f"{entry.get('id')}, not {ids[at] if at < len(ids) else 'the end'})"
        )
    alternatives = tuple(
        TopLogprob(str(alt.get("token", "")), _logprob(alt), _bytes(alt))
        for alt in (entry.get("top_logprobs") or ())[:top]
    )
    piece = pieces[at]
    return TokenLogprob(piece, _logprob(entry), tuple(piece.encode()), alternatives)


def _logprob(entry: Json) -> float:
    value = entry.get("logprob")
    return _UNLIKELY if value is None else float(value)


def _bytes(entry: Json) -> tuple[int, ...] | None:
    raw = entry.get("bytes")
    return tuple(raw) if isinstance(raw, list) else None
