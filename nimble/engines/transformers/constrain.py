"""Grammar-constrained decoding for the transformers engine, with llguidance.

A request's constraint is compiled once (`Grammars.compile`, on a worker thread, before any
token is produced: a grammar llguidance refuses is an UnsupportedParameter naming the
constraint's parameter, with llguidance's message) into one llguidance matcher per choice.
On the scheduler thread each constrained choice then, per token (`Constrained`):

- `masked(logits)`: the row's logits with every token the grammar forbids set to -inf (the
  allowed-token bitmask is computed by llguidance on the CPU and unpacked where the logits
  are); greedy, sampling, top_p, penalties and logprobs all read the masked row;
- `accept(token, tokens)`: the matcher consumes the sampled token; `finished` says when the
  grammar allows nothing more than the end of the sequence, and the choice then stops with
  finish_reason "stop" (a grammar that may go on, like `a+`, lets the model pick EOS).

Constraints, in llguidance's terms: a JSON schema is compiled by llguidance's JSON-schema
compiler with `x-guidance` options for compact JSON and `oneOf` read as `anyOf` (as on the
llama.cpp engine); a regex is llguidance's (Rust `regex` syntax, the whole output matches it;
lookarounds and backreferences are refused); choices are a Lark alternative of string
literals; a grammar is Lark in llguidance's dialect, or llama.cpp GBNF, which llguidance's
converter turns into Lark; tool calls are a Lark grammar around `%json { call schema }`.

Lazy tool calls (tool_choice auto): the model writes freely, no mask, until the decoded text
contains the trigger (`begin` without its whitespace); from then on the grammar binds the rest
to `begin-after-the-trigger CALL end (separator begin CALL end)*`. When the token that
completes the trigger also wrote text after it that does not fit that grammar, the token is
replaced (it is not in the KV cache yet) by the tokens of its text up to the trigger's end,
fed one per step, so the text and the tokens stay the same thing.
"""

from __future__ import annotations

import json
import threading
from collections import deque
from typing import TYPE_CHECKING, Any

import torch

from nimble.errors import EngineError, UnsupportedParameter
from nimble.structured.json_schema import llguidance_schema
from nimble.types import (
    ChoiceConstraint,
    Constraint,
    GrammarConstraint,
    JsonSchemaConstraint,
    RegexConstraint,
    ToolCallConstraint,
)

if TYPE_CHECKING:
    from llguidance import LLMatcher, LLTokenizer

_BITS = 32  # tokens per word of llguidance's bitmask
_INSTALL = "pip install 'nimble[transformers]'"


class ConstraintFailed(EngineError):
    """The grammar state broke while decoding (a bug, not the client's fault): the request
    fails alone, the batch goes on."""


def param_of(constraint: Constraint) -> str:
    """The request parameter a constraint comes from, for error messages."""
    match constraint:
        case JsonSchemaConstraint():
            return "response_format"
        case RegexConstraint():
            return "guided_regex"
        case ChoiceConstraint():
            return "guided_choice"
        case GrammarConstraint():
            return "guided_grammar"
        case ToolCallConstraint():
            return "tools"
    raise AssertionError(f"unknown constraint {constraint!r}")


class Grammars:
    """Compiles constraints for one model's tokenizer (the llguidance tokenizer is built once,
    on the first constrained request: about half a second)."""

    def __init__(self, tokenizer: Any, eos_ids: frozenset[int]):
        self._tokenizer = tokenizer
        self._eos = sorted(eos_ids)
        self._lock = threading.Lock()
        self._ll: LLTokenizer | None = None

    def compile(self, constraint: Constraint, n: int) -> list[Constrained]:
        """Blocking: one fresh constraint state per choice; UnsupportedParameter when
        llguidance cannot compile it."""
        param = param_of(constraint)
        ll = self._ll_tokenizer(param)
        try:
            grammar, trigger = _grammar(constraint)
        except ValueError as exc:
            raise UnsupportedParameter(f"{param}: {exc}", param=param) from exc
        matcher = _matcher(ll, grammar, param)
        copies = [matcher] + [matcher.deep_copy() for _ in range(n - 1)]
        return [Constrained(ll, copy, trigger) for copy in copies]

    def _ll_tokenizer(self, param: str) -> LLTokenizer:
        with self._lock:
            if self._ll is None:
                try:
                    import llguidance.hf
                except ImportError as exc:
                    raise UnsupportedParameter(
                        f"{param}: constrained decoding on the transformers engine needs "
                        f"llguidance, which is not installed ({_INSTALL})",
                        param=param,
                    ) from exc
                try:
                    self._ll = llguidance.hf.from_tokenizer(
                        self._tokenizer, eos_token=self._eos or None
                    )
                except ValueError as exc:  # a slow (Python) tokenizer
                    raise UnsupportedParameter(
                        f"{param}: constrained decoding needs a fast tokenizer: {exc}",
                        param=param,
                    ) from exc
            return self._ll


class Constrained:
    """The grammar state of one choice (used on the scheduler thread only)."""

    def __init__(self, ll: LLTokenizer, matcher: LLMatcher, trigger: str | None):
        self.finished = False
        self._ll = ll
        # lazy: the trigger (as bytes) and the matcher it binds, until the text shows it
        self._trigger = trigger.encode() if trigger else None
        self._waiting = matcher if trigger else None
        self._matcher = None if trigger else matcher
        self._forced: deque[int] = deque()  # tokens to feed before sampling again
        self._bitmask = torch.zeros((ll.vocab_size + _BITS - 1) // _BITS, dtype=torch.int32)

    def masked(self, logits: torch.Tensor) -> torch.Tensor:
        """This row's logits with what the grammar forbids at -inf (a new tensor: the row may
        be shared by the choices of one prefill)."""
        if self._forced:
            allowed = torch.zeros(logits.shape[-1], dtype=torch.bool, device=logits.device)
            allowed[self._forced[0]] = True
            return logits.masked_fill(~allowed, float("-inf"))
        matcher = self._matcher
        if matcher is None:
            return logits
        matcher.unsafe_compute_mask_ptr(self._bitmask.data_ptr(), self._bitmask.numel() * 4)
        if matcher.is_error():
            raise ConstraintFailed(f"the grammar broke: {matcher.get_error()}")
        return logits.masked_fill(~_unpack(self._bitmask, logits), float("-inf"))

    def accept(self, token: int, tokens: list[int]) -> int:
        """Advance past `token` (sampled after `tokens`); the token to keep, which differs
        from `token` only when a lazy trigger's token wrote text the calls cannot start with."""
        if self._forced:
            self._forced.popleft()
            return token
        if self._matcher is not None:
            if not self._matcher.consume_token(token):
                raise ConstraintFailed(f"the grammar broke: {self._matcher.get_error()}")
            self.finished = self._matcher.is_stopped()
            return token
        return self._watch(token, tokens)

    def _watch(self, token: int, tokens: list[int]) -> int:
        """Lazy, not bound yet: bind the grammar once the output shows the trigger."""
        trigger, template = self._trigger, self._waiting
        assert trigger is not None and template is not None
        # the trigger was not there before, so it ends in this token; every token has at
        # least one byte, so as many tokens before it as the trigger has bytes are enough
        before = self._ll.decode_bytes(tokens[-len(trigger) :])
        mine = self._ll.decode_bytes([token])
        at = (before + mine).find(trigger, max(0, len(before) - len(trigger) + 1))
        if at < 0:
            return token
        self._trigger = self._waiting = None
        cut = at + len(trigger) - len(before)  # bytes of this token up to the trigger's end
        after = mine[cut:]
        matcher = template.deep_copy()
        if not after or matcher.consume_tokens(self._ll.tokenize_bytes(after)):
            self._matcher = matcher
            self.finished = matcher.is_stopped()
            return token
        # what this token wrote after the trigger cannot start the calls: it was not fed to
        # the model yet, so replace it by tokens of its bytes up to the trigger's end
        self._matcher = template
        replacement = self._ll.tokenize_bytes(mine[:cut])
        if not replacement or self._ll.decode_bytes(replacement) != mine[:cut]:
            raise ConstraintFailed(f"cannot cut the token {token} at the tool-call trigger")
        self._forced.extend(replacement[1:])
        return replacement[0]


def _unpack(bitmask: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
    """llguidance's bitmask (bit j of word i: token 32*i+j) as booleans the size of `logits`;
    logits past the tokenizer's vocabulary are never allowed."""
    words = bitmask.to(logits.device)
    shifts = torch.arange(_BITS, dtype=torch.int32, device=logits.device)
    allowed = ((words.unsqueeze(1) >> shifts) & 1).view(-1).bool()
    size = logits.shape[-1]
    if allowed.numel() >= size:
        return allowed[:size]
    return torch.cat([allowed, allowed.new_zeros(size - allowed.numel())])


def _matcher(ll: LLTokenizer, grammar: str, param: str) -> LLMatcher:
    from llguidance import LLMatcher

    matcher = LLMatcher(ll, grammar, log_level=0)
    if matcher.is_error():
        raise UnsupportedParameter(
            f"{param}: llguidance cannot compile it: {matcher.get_error().strip()}", param=param
        )
    return matcher


def _grammar(constraint: Constraint) -> tuple[str, str | None]:
    """llguidance's grammar for a constraint, and the trigger a lazy one waits for."""
    from llguidance import LLMatcher
    from llguidance.gbnf_to_lark import any_to_lark

    match constraint:
        case JsonSchemaConstraint(schema=schema):
            return LLMatcher.grammar_from_json_schema(json.dumps(llguidance_schema(schema))), None
        case RegexConstraint(pattern=pattern):
            return LLMatcher.grammar_from_regex(pattern), None
        case ChoiceConstraint(choices=choices):
            return LLMatcher.grammar_from_lark(_lark_start(" | ".join(map(_string, choices)))), None
        case GrammarConstraint(grammar=grammar):
            try:
                lark = any_to_lark(grammar)
            except Exception as exc:  # the converter raises its own parse errors
                raise ValueError(f"not Lark, and not GBNF that converts to Lark: {exc}") from exc
            return LLMatcher.grammar_from_lark(lark), None
        case ToolCallConstraint() as calls:
            trigger = (calls.begin.strip() or calls.begin) if calls.lazy else ""
            return LLMatcher.grammar_from_lark(_tool_calls(calls, trigger)), trigger or None
    raise AssertionError(f"unknown constraint {constraint!r}")


def _tool_calls(calls: ToolCallConstraint, trigger: str) -> str:
    """`begin CALL end (separator begin CALL end)*` (at most `max_calls` calls) in Lark; the
    first `begin` without what comes up to the end of `trigger` (lazy: it is written already)."""
    if calls.max_calls is not None and calls.max_calls < 1:
        raise ValueError(f"max_calls must be at least 1, got {calls.max_calls}")
    first = calls.begin[calls.begin.find(trigger) + len(trigger) :] if trigger else calls.begin

    def around(before: str) -> str:
        parts = [_string(before)] if before else []
        return " ".join([*parts, "call", *([_string(calls.end)] if calls.end else [])])

    rules = [f"first_call: {around(first)}"]
    if calls.max_calls == 1:
        start = "first_call"
    else:
        more = "*" if calls.max_calls is None else f"{{0,{calls.max_calls - 1}}}"
        start = f"first_call next_call{more}"
        rules.append(f"next_call: {around(calls.separator + calls.begin)}")
    rules.append(f"call: %json {json.dumps(llguidance_schema(calls.call_schema))}")
    return "\n".join([_lark_start(start), *rules]) + "\n"


def _lark_start(body: str) -> str:
    return f"%llguidance {{}}\nstart: {body}"


def _string(text: str) -> str:
    """A Lark string literal (a JSON string, with DEL escaped too)."""
    return json.dumps(text).replace("\x7f", "\\u007f")
