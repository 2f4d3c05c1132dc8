"""Engine token logprobs in the OpenAI chat and completions shapes."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from nimble.types import TokenLogprob


def chat_logprobs(tokens: Sequence[TokenLogprob]) -> dict[str, Any]:
    return {
        "content": [
            {
                "token": t.token,
                "logprob": t.logprob,
                "bytes": list(t.bytes) if t.bytes is not None else None,
                "top_logprobs": [
                    {
                        "token": top.token,
                        "logprob": top.logprob,
                        "bytes": list(top.bytes) if top.bytes is not None else None,
                    }
                    for top in t.top
                ],
            }
            for t in tokens
        ]
    }


def completion_logprobs(tokens: Sequence[TokenLogprob], offset: int = 0) -> dict[str, Any]:
    """The legacy shape. The first token of an echoed prompt has no logprob: its logprob
    and its alternatives are null, as OpenAI and vLLM answer."""
    offsets = []
    position = offset
    for t in tokens:
        offsets.append(position)
        position += len(t.token)
    return {
        "tokens": [t.token for t in tokens],
        "token_logprobs": [t.logprob for t in tokens],
        "top_logprobs": [
            None if t.logprob is None else {top.token: top.logprob for top in t.top} for t in tokens
        ],
        "text_offset": offsets,
    }
