"""vLLM's sampling extensions and OpenAI's logit_bias on llama.cpp's server.

llama.cpp's server takes most of them in its own names (`sampling_fields`): top_k (0 is
off, as nimble's), min_p, repeat_penalty (over the whole window, `repeat_last_n`, as
vLLM's repetition_penalty reads the prompt and the output; llama.cpp's default is the last
64 tokens), ignore_eos (it bans every
end-of-generation token), logit_bias (token ids as keys). What it has no field for:

- `stop_token_ids`, and stop strings kept in the text (`include_stop_str_in_output`; llama.cpp
  always cuts the stop string off): `Cutter` does both on the stream, from the token ids and
  per-token timings llama.cpp sends when asked (`logprobs`, `timings_per_token`), and the
  engine stops the generation when every choice has ended.
- `min_tokens`: llama.cpp can ban the end only for the whole generation (ignore_eos), not
  for its first tokens, and a request cannot change its sampling midway. So it is honoured
  where it holds by itself (ignore_eos with no stop string or stop token: only max_tokens
  ends the text) and refused (400, `param` min_tokens) otherwise.
- `skip_special_tokens: false`: llama.cpp never writes control tokens into the text; refused.
"""

from __future__ import annotations

from typing import Any

from nimble.errors import InvalidRequest, UnsupportedParameter
from nimble.types import SamplingParams

Json = dict[str, Any]


def sampling_fields(params: SamplingParams, vocab: int | None, window: int) -> Json:
    """llama.cpp's fields for what the request sets (llama.cpp's defaults for the rest:
    top_k 40, min_p 0.05); refusals for what it cannot do (`vocab`: its size, if known;
    `window`: the context length)."""
    refuse_unsupported(params)
    fields: Json = {}
    if params.top_k is not None:
        fields["top_k"] = params.top_k
    if params.min_p is not None:
        fields["min_p"] = params.min_p
    if params.repetition_penalty is not None:
        fields["repeat_penalty"] = params.repetition_penalty
        fields["repeat_last_n"] = window  # the whole window, as vLLM and Hugging Face
    if params.ignore_eos:
        fields["ignore_eos"] = True
    if params.logit_bias:
        outside = sorted(token for token, _ in params.logit_bias if vocab and token >= vocab)
        if outside:  # llama.cpp would skip them without a word
            raise InvalidRequest(
                f"logit_bias: token id {outside[0]} is not in the model's vocabulary "
                f"(0 to {vocab - 1 if vocab else 0})",
                param="logit_bias",
            )
        fields["logit_bias"] = {str(token): bias for token, bias in params.logit_bias}
    if params.continuous_usage or needs_cutter(params):
        fields["timings_per_token"] = True  # each chunk: prompt and predicted token counts
    if needs_cutter(params) and params.top_logprobs is None:
        fields["logprobs"] = 1  # the token ids (the mapper drops what was not asked for)
    if keeps_stops(params):
        fields["stop"] = []  # the Cutter finds them, and keeps them
    return fields


def refuse_unsupported(params: SamplingParams) -> None:
    if not params.skip_special_tokens:
        raise UnsupportedParameter(
            "skip_special_tokens: llama.cpp never writes special tokens into the text; "
            "false is not supported on the llamacpp engine",
            param="skip_special_tokens",
        )
    only_length_ends = params.ignore_eos and not params.stop and not params.stop_token_ids
    if params.min_tokens and not only_length_ends:
        raise UnsupportedParameter(
            "min_tokens: llama.cpp's server cannot hold back the end of text for the first "
            "tokens only (its one ban, ignore_eos, lasts the whole generation); on the "
            "llamacpp engine min_tokens works with ignore_eos and no stop or stop_token_ids "
            "(the text then always runs to max_tokens)",
            param="min_tokens",
        )


def keeps_stops(params: SamplingParams) -> bool:
    return params.include_stop_str_in_output and bool(params.stop)


def needs_cutter(params: SamplingParams) -> bool:
    return bool(params.stop_token_ids) or keeps_stops(params)


class Cutter:
    """Ends choices on llama.cpp's completion stream where llama.cpp would not: after a
    token of `stop_token_ids` (its text left out, unless include_stop_str_in_output), or
    through a stop string (include_stop_str_in_output). Rewrites each raw payload before
    the ChunkMapper reads it: the ended choice's text cut, its finish_reason "stop", and
    its usage (prompt tokens and the tokens predicted through the one that ended it, from
    llama.cpp's per-token timings); what llama.cpp still sends for it afterwards is dropped.

    Needs token ids (`logprobs`) and `timings_per_token` in the request, and llama.cpp's
    completion path: its chat stream sends each choice's usage without the choice's index.
    """

    def __init__(self, params: SamplingParams):
        self._stop_ids = frozenset(params.stop_token_ids)
        self._stops = tuple(stop for stop in params.stop if stop) if keeps_stops(params) else ()
        self._keep = params.include_stop_str_in_output
        self._n = params.n
        self._text: dict[int, str] = {}
        self.ended: set[int] = set()

    @property
    def done(self) -> bool:
        """Every choice ended here: the generation can be stopped."""
        return len(self.ended) >= self._n

    def rewrite(self, payload: Json) -> Json | None:
        """The payload as the mapper should see it; None: nothing of it is to be sent."""
        choices = payload.get("choices")
        if not isinstance(choices, list) or not choices:
            return payload
        kept: list[Json] = []
        usage = payload.get("usage")
        for choice in choices:
            index = int(choice.get("index", 0))
            if index in self.ended:
                continue  # llama.cpp goes on with a choice that ended here
            cut = self._cut(choice, index)
            if cut is None:
                kept.append(choice)
                continue
            chosen, tokens = cut
            self.ended.add(index)
            kept.append(chosen)
            usage = _usage_at(payload.get("timings"), tokens, len(_entries(choice)))
        if not kept:
            return None
        return {**payload, "choices": kept, "usage": usage}

    def _cut(self, choice: Json, index: int) -> tuple[Json, int] | None:
        """The choice ended here, and how many of its tokens in this payload were generated
        up to and including the one that ended it; None if it goes on."""
        text = str(choice.get("text") or "")
        entries = _entries(choice)
        before = self._text.get(index, "")
        self._text[index] = before + text
        for at, entry in enumerate(entries):
            if entry.get("id") in self._stop_ids:
                kept = entries[: at + 1] if self._keep else entries[:at]
                return _ended(choice, _decoded(kept), entries[: at + 1]), at + 1
        end = self._stop_end(before, text)
        if end is None:
            return None
        head = text[:end]
        covering = _covering(entries, len(head.encode()))
        return _ended(choice, head, covering), len(covering)

    def _stop_end(self, before: str, text: str) -> int | None:
        """Where in `text` the first stop string ends (it may begin in `before`)."""
        if not self._stops:
            return None
        whole = before + text
        start = max(0, len(before) - max(len(stop) for stop in self._stops) + 1)
        found = [(whole.find(stop, start), stop) for stop in self._stops]
        ends = [at + len(stop) - len(before) for at, stop in found if at >= 0]
        return min(ends) if ends else None


def _entries(choice: Json) -> list[Json]:
    logprobs = choice.get("logprobs")
    content = logprobs.get("content") if isinstance(logprobs, dict) else None
    return [entry for entry in content or () if isinstance(entry, dict)]


def _bytes(entry: Json) -> bytes:
    raw = entry.get("bytes")
    return bytes(raw) if isinstance(raw, list) else str(entry.get("token", "")).encode()


def _decoded(entries: list[Json]) -> str:
    return b"".join(_bytes(entry) for entry in entries).decode("utf-8", "ignore")


def _covering(entries: list[Json], size: int) -> list[Json]:
    """The tokens whose bytes make up the first `size` bytes of the text."""
    covered, out = 0, []
    for entry in entries:
        if covered >= size:
            break
        out.append(entry)
        covered += len(_bytes(entry))
    return out or entries[:1]


def _ended(choice: Json, text: str, entries: list[Json]) -> Json:
    logprobs = {"content": entries} if isinstance(choice.get("logprobs"), dict) else None
    return {**choice, "text": text, "finish_reason": "stop", "logprobs": logprobs}


def _usage_at(timings: object, used: int, sent: int) -> Json:
    """The ended choice's usage: its prompt, and its tokens predicted before this payload
    (llama.cpp's `predicted_n` counts the `sent` tokens of this payload too) plus the
    `used` ones of it, through the token that ended it."""
    if not isinstance(timings, dict):
        return {"prompt_tokens": 0, "completion_tokens": used}
    prompt = int(timings.get("prompt_n", 0)) + int(timings.get("cache_n", 0))
    predicted = int(timings.get("predicted_n", 0)) - sent + used
    return {"prompt_tokens": prompt, "completion_tokens": predicted}
