"""`echo` in the transformers engine: each choice starts with the prompt, and with logprobs
the prompt's tokens are scored from the prefill's own logits (one forward pass: the logits
after every prompt token, not just the last, so a scored prompt holds a [tokens,
vocabulary] tensor for that pass).

Runs on the scheduler's thread (`batching.Scheduler._prefill`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from nimble.types import TokenLogprob, TopLogprob

_ROWS = 256  # positions turned into log-probabilities at a time (a copy of that many rows)


@dataclass(frozen=True)
class Echo:
    """The prompt's text; `top`: None for no logprobs, else the alternatives per token."""

    text: str
    top: int | None
    tokenizer: Any

    def logprobs(self, logits: torch.Tensor, ids: list[int]) -> tuple[TokenLogprob, ...]:
        """`logits` [tokens, vocabulary]: row i scores the token after prompt token i. The
        first token has no logprob; token i's is row i - 1's (before any sampling)."""
        if self.top is None or not ids:
            return ()
        first = self._piece(ids[0])
        scored = [TokenLogprob(first, None, tuple(first.encode()))]
        targets = torch.tensor(ids[1:], dtype=torch.long, device=logits.device)
        for start in range(0, len(ids) - 1, _ROWS):
            end = min(start + _ROWS, len(ids) - 1)
            rows = torch.log_softmax(logits[start:end].float(), dim=-1)
            picked = rows.gather(1, targets[start:end, None])[:, 0].tolist()
            best = torch.topk(rows, self.top) if self.top else None
            for offset, value in enumerate(picked):
                alternatives: tuple[TopLogprob, ...] = ()
                if best is not None:
                    values, tokens = best.values[offset].tolist(), best.indices[offset].tolist()
                    alternatives = tuple(
                        self._top(int(token), float(v))
                        for v, token in zip(values, tokens, strict=True)
                    )
                piece = self._piece(ids[start + offset + 1])
                scored.append(
                    TokenLogprob(piece, float(value), tuple(piece.encode()), alternatives)
                )
        return tuple(scored)

    def _top(self, token: int, value: float) -> TopLogprob:
        piece = self._piece(token)
        return TopLogprob(piece, value, tuple(piece.encode()))

    def _piece(self, token: int) -> str:
        return str(self.tokenizer.decode([token], skip_special_tokens=False))
