"""One choice of a request in the transformers engine: how its next token is picked, and how
its tokens become text, stop strings, logprobs and a finish reason.

Runs on the scheduler's thread only. Text is produced by decoding the whole completion so far
and sending the new suffix, so multi-token characters are never split: a suffix that ends in
an incomplete UTF-8 sequence (U+FFFD) or in the start of a stop string is held back until the
next token settles it.

A choice with a constraint (`constrain.Constrained`) masks its row's logits before anything
reads them (sampling, penalties and logprobs all see the masked distribution), feeds the
chosen token to its grammar, and stops with "stop" once the grammar is complete.

The scores a token is picked from, in order: logit_bias added; the end-of-text tokens
banned (ignore_eos, or fewer than min_tokens so far; stop_token_ids too then); the
repetition penalty (Hugging Face's and vLLM's: a seen token's positive score divided by it,
a negative one multiplied, over the prompt and the output); presence and frequency
penalties (output only); then temperature (0: the best score), top_k, min_p, top_p.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, Literal

import torch

from nimble.engines.transformers.constrain import Constrained
from nimble.types import GenerationChunk, SamplingParams, TokenLogprob, TopLogprob, Usage

_INCOMPLETE = "\ufffd"  # what a decoder shows for a partial UTF-8 sequence


class Sampler:
    """Sampling state, tokens and emitted text of one choice (one row of the batch)."""

    def __init__(
        self,
        index: int,
        params: SamplingParams,
        *,
        prompt_length: int,
        budget: int,
        tokenizer: Any,
        eos_ids: frozenset[int],
        generator: torch.Generator,
        constraint: Constrained | None = None,
        prompt_ids: Sequence[int] = (),
    ):
        self.index = index
        self.prompt_length = prompt_length
        self._prompt_ids = prompt_ids  # read by the repetition penalty only
        self.tokens: list[int] = []
        self.finish: Literal["stop", "length"] | None = None
        self._stopped_by: str | None = None  # the stop string that ended the text
        self._params = params
        self._temperature = params.temperature if params.temperature is not None else 1.0
        self._top_p = params.top_p if params.top_p is not None else 1.0
        self._budget = budget
        self._tokenizer = tokenizer
        self._eos = eos_ids
        self._generator = generator
        self._constraint = constraint
        self._stops = tuple(stop for stop in params.stop if stop)
        self._stop_ids = frozenset(params.stop_token_ids)
        self._top_k = params.top_k or 0
        self._min_p = params.min_p or 0.0
        self._repetition = params.repetition_penalty or 1.0
        self._seen: torch.Tensor | None = None  # tokens of the prompt and output (repetition)
        self._bias: tuple[torch.Tensor, torch.Tensor] | None = None  # logit_bias ids, values
        self._longest_stop = max((len(stop) for stop in self._stops), default=0)
        self._counts: torch.Tensor | None = None  # token counts, only with penalties
        self._text = ""  # decoded completion so far (without end-of-sequence tokens)
        self._sent = 0  # characters of `_text` already sent
        self._pending: list[TokenLogprob] = []  # logprobs of tokens whose text is not sent yet

    @property
    def position(self) -> int:
        """Position of the last token, the one the next forward pass reads."""
        return self.prompt_length + len(self.tokens) - 1

    @property
    def last_token(self) -> int:
        return self.tokens[-1]

    def step(self, logits: torch.Tensor) -> list[GenerationChunk]:
        """Pick the next token from this row's logits (1-D, float32); the chunks to send."""
        constraint = self._constraint
        if constraint is not None:
            logits = constraint.masked(logits)
        token = self._choose(logits)
        if constraint is not None:
            token = constraint.accept(token, self.tokens)
        logprob = self._logprob(logits, token) if self._params.top_logprobs is not None else None
        return self._accept(token, logprob)

    # sampling

    def _choose(self, logits: torch.Tensor) -> int:
        unscaled = self._penalised(self._banned(self._biased(logits)))
        if self._temperature == 0.0:
            return int(torch.argmax(unscaled).item())
        scores = unscaled / self._temperature
        if 0 < self._top_k < scores.shape[-1]:
            kth = torch.topk(scores, self._top_k).values[-1]
            scores = scores.masked_fill(scores < kth, -math.inf)
        probs = torch.softmax(scores, dim=-1)
        if not bool(torch.isfinite(probs).all()):
            # float32 overflowed: a temperature of 1e-40 or a repetition_penalty of 1e-300
            # (the scores infinite, the softmax NaN); their limit is the likeliest token
            return int(torch.argmax(torch.nan_to_num(unscaled, nan=-math.inf)).item())
        if self._min_p > 0.0:  # tokens less likely than min_p times the likeliest are out
            probs = probs.masked_fill(probs < self._min_p * probs.max(), 0.0)
            probs = probs / probs.sum()
        if self._top_p < 1.0:
            sorted_probs, order = torch.sort(probs, descending=True)
            # keep the smallest head whose mass reaches top_p (the first token always stays)
            outside = sorted_probs.cumsum(-1) - sorted_probs > self._top_p
            sorted_probs = sorted_probs.masked_fill(outside, 0.0)
            pick = torch.multinomial(sorted_probs, 1, generator=self._generator)
            return int(order[pick].item())
        return int(torch.multinomial(probs, 1, generator=self._generator).item())

    def _biased(self, logits: torch.Tensor) -> torch.Tensor:
        """OpenAI's logit_bias, added to the scores (ids were checked against the vocabulary)."""
        if not self._params.logit_bias:
            return logits
        if self._bias is None:
            pairs = self._params.logit_bias
            self._bias = (
                torch.tensor([t for t, _ in pairs], dtype=torch.long, device=logits.device),
                torch.tensor([b for _, b in pairs], dtype=logits.dtype, device=logits.device),
            )
        ids, values = self._bias
        return logits.index_add(0, ids, values)

    def _banned(self, logits: torch.Tensor) -> torch.Tensor:
        """No end of text with ignore_eos, nor before min_tokens (nor a stop token then).
        If that leaves nothing to pick (a grammar that allows only its end), nothing is."""
        early = len(self.tokens) < self._params.min_tokens
        banned = set(self._eos) if self._params.ignore_eos or early else set()
        if early:
            banned |= self._stop_ids
        banned = {token for token in banned if token < logits.shape[-1]}
        if not banned:
            return logits
        masked = logits.index_fill(0, torch.tensor(sorted(banned), device=logits.device), -math.inf)
        return logits if bool(torch.isinf(masked).all()) else masked

    def _penalised(self, logits: torch.Tensor) -> torch.Tensor:
        """The repetition penalty (prompt and output), then OpenAI's presence and frequency
        penalties over the tokens generated so far."""
        logits = self._repeated(logits)
        presence, frequency = self._params.presence_penalty, self._params.frequency_penalty
        if not presence and not frequency:
            return logits
        if self._counts is None:
            self._counts = torch.zeros(logits.shape[-1], dtype=logits.dtype, device=logits.device)
            for token in self.tokens:
                self._counts[token] += 1
        seen = (self._counts > 0).to(logits.dtype)
        return logits - frequency * self._counts - presence * seen

    def _repeated(self, logits: torch.Tensor) -> torch.Tensor:
        if self._repetition == 1.0:
            return logits
        if self._seen is None:
            self._seen = torch.zeros(logits.shape[-1], dtype=torch.bool, device=logits.device)
            for token in (*self._prompt_ids, *self.tokens):
                if token < logits.shape[-1]:
                    self._seen[token] = True
        penalised = torch.where(logits > 0, logits / self._repetition, logits * self._repetition)
        return torch.where(self._seen, penalised, logits)

    def _logprob(self, logits: torch.Tensor, token: int) -> TokenLogprob:
        """The model's own log-probabilities (before penalties, temperature and top_p; after a
        grammar's mask, so over the tokens the choice could pick)."""
        logprobs = torch.log_softmax(logits, dim=-1)
        top: tuple[TopLogprob, ...] = ()
        if self._params.top_logprobs:
            values, ids = torch.topk(logprobs, self._params.top_logprobs)
            top = tuple(
                TopLogprob(piece, value, tuple(piece.encode()))
                for piece, value in zip(
                    (self._piece(int(i)) for i in ids.tolist()), values.tolist(), strict=True
                )
                if not math.isinf(value)  # a token a grammar forbids is no alternative
            )
        piece = self._piece(token)
        return TokenLogprob(piece, float(logprobs[token].item()), tuple(piece.encode()), top)

    def _piece(self, token: int) -> str:
        return str(self._tokenizer.decode([token], skip_special_tokens=False))

    # text

    def _accept(self, token: int, logprob: TokenLogprob | None) -> list[GenerationChunk]:
        self.tokens.append(token)
        if self._counts is not None:
            self._counts[token] += 1
        if self._seen is not None and token < self._seen.shape[-1]:
            self._seen[token] = True
        early = len(self.tokens) < self._params.min_tokens
        keep_stop = self._params.include_stop_str_in_output
        if token in self._eos or (token in self._stop_ids and not keep_stop):
            return self._finish("stop", len(self._text))
        if logprob is not None:
            self._pending.append(logprob)
        self._text = str(
            self._tokenizer.decode(
                [t for t in self.tokens if t not in self._eos],
                skip_special_tokens=self._params.skip_special_tokens,
                clean_up_tokenization_spaces=False,
            )
        )
        if token in self._stop_ids:  # kept in the text (include_stop_str_in_output)
            return self._finish("stop", len(self._text))
        cut = None if early else self._stop_at()
        if cut is not None:
            return self._finish("stop", cut)
        if self._constraint is not None and self._constraint.finished:
            return self._finish("stop", len(self._text))
        if len(self.tokens) >= self._budget:
            return self._finish("length", len(self._text))
        safe = self._safe_end()
        if safe <= self._sent:
            return []
        piece, self._sent = self._text[self._sent : safe], safe
        chunk = GenerationChunk(
            index=self.index, text=piece, logprobs=tuple(self._pending), progress=self._progress()
        )
        self._pending.clear()
        return [chunk]

    def _progress(self) -> Usage | None:
        if not self._params.continuous_usage:
            return None
        return Usage(self.prompt_length, len(self.tokens))

    def _finish(self, reason: Literal["stop", "length"], end: int) -> list[GenerationChunk]:
        self.finish = reason
        piece = self._text[self._sent : end] if end > self._sent else ""
        self._sent = max(self._sent, end)
        logprobs = tuple(self._pending)
        self._pending.clear()
        return [
            GenerationChunk(
                index=self.index,
                text=piece,
                finish_reason=reason,
                logprobs=logprobs,
                progress=self._progress(),
                stop_sequence=self._stopped_by,
            )
        ]

    def _stop_at(self) -> int | None:
        """Where the text ends at a stop string: its start, or its end when the stop string
        is kept (include_stop_str_in_output); None if no stop string is in it."""
        if not self._stops:
            return None
        start = max(0, self._sent - self._longest_stop)
        found = [(self._text.find(s, start), s) for s in self._stops]
        found = [(at, stop) for at, stop in found if at >= 0]
        if not found:
            return None
        at, stop = min(found)
        self._stopped_by = stop
        return at + len(stop) if self._params.include_stop_str_in_output else at

    def _safe_end(self) -> int:
        """How much of the text can be sent: not a partial character, not a partial stop."""
        end = len(self._text)
        while end > self._sent and self._text[end - 1] == _INCOMPLETE:
            end -= 1
        held = 0
        for stop in self._stops:
            for size in range(min(len(stop) - 1, end - self._sent), held, -1):
                if self._text.endswith(stop[:size], 0, end):
                    held = size
                    break
        return end - held


SEED_BITS = 63  # a request's seed when it gives none: this many random bits


def seeded_generator(device: torch.device, seed: int, index: int) -> torch.Generator:
    """The random stream of choice `index` of a request with `seed`."""
    generator = torch.Generator(device=device)
    generator.manual_seed((seed * 1_000_003 + index) % (1 << SEED_BITS))
    return generator
