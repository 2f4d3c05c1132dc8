"""Grammars for llama.cpp's grammar-constrained decoding, built as plain strings.

GBNF is llama.cpp's grammar format (`grammars/README.md` in llama.cpp): rules `name ::= ...`,
string literals, character classes, `( )`, `|`, `*`, `+`, `?` and `{m,n}`; the start rule is
`root`. Nothing here imports llama.cpp.

- `literal` / `choice_grammar`: exact text and a choice among texts.
- regular expressions: `gbnf_regex.regex_grammar`.
- `tool_calls_grammar`: one or more tool calls between begin/end markers around the grammar of
  one call. That grammar may be GBNF (start rule `root`) or llguidance's Lark format (it starts
  with `%llguidance`, start rule `start`): xllamacpp's `json_schema_to_grammar` returns the
  latter when llama.cpp is built with llguidance, as the prebuilt wheel is.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass

# the most repetitions of one item every llama.cpp grammar parser takes (MAX_REPETITION_THRESHOLD
# is 2000; some versions refuse `rules in the repeated item * count >= 2000`)
MAX_REPEAT = 1999
MAX_CODE_POINT = 0x10FFFF

Ranges = tuple[tuple[int, int], ...]


# -- literals and choices ------------------------------------------------------------------------


def literal(text: str) -> str:
    """A GBNF string literal that matches exactly `text` (pure ASCII, everything else escaped)."""
    return '"' + "".join(char_escape(ord(c), in_class=False) for c in text) + '"'


def choice_grammar(choices: Sequence[str]) -> str:
    """`root ::= "a" | "b" ...`: exactly one of `choices`."""
    if not choices:
        raise ValueError("a choice grammar needs at least one choice")
    return "root ::= " + " | ".join(literal(choice) for choice in choices) + "\n"


def char_escape(cp: int, *, in_class: bool) -> str:
    if cp == 0x09:
        return "\\t"
    if cp == 0x0A:
        return "\\n"
    if cp == 0x0D:
        return "\\r"
    special = '\\[]-^"' if in_class else '\\"'
    if 0x20 <= cp < 0x7F and chr(cp) not in special:
        return chr(cp)
    if not in_class and chr(cp) in special:
        return "\\" + chr(cp)
    if cp <= 0xFF:
        return f"\\x{cp:02X}"
    if cp <= 0xFFFF:
        return f"\\u{cp:04X}"
    return f"\\U{cp:08X}"


# -- character sets ------------------------------------------------------------------------------


def repeat_suffix(low: int, high: int | None) -> str:
    if (low, high) == (0, None):
        return "*"
    if (low, high) == (1, None):
        return "+"
    if (low, high) == (0, 1):
        return "?"
    if high is None:
        return f"{{{low},}}"
    return f"{{{low}}}" if low == high else f"{{{low},{high}}}"


# -- tool calls ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Dialect:
    start: str  # the start rule's name
    define: str  # between a rule's name and its body
    word: re.Pattern[str]  # a rule name

    def string(self, text: str) -> str:
        if self.start == "root":
            return literal(text)
        # Lark strings are JSON strings, except that DEL must be escaped too
        return json.dumps(text).replace("\x7f", "\\u007f")


_GBNF = _Dialect("root", " ::= ", re.compile(r"[A-Za-z0-9-]+"))
_LARK = _Dialect("start", ": ", re.compile(r"[A-Za-z0-9_-]+"))


def _skip_to(text: str, i: int, close: str) -> int:
    """The index after the `close` that ends the quoted span opened at `i` (escapes honoured)."""
    j = i + 1
    while j < len(text):
        if text[j] == "\\":
            j += 2
        elif text[j] == close:
            return j + 1
        else:
            j += 1
    return len(text)


def _rule_names(text: str, dialect: _Dialect) -> list[tuple[int, int]]:
    """Spans of the rule names in a grammar: what is outside strings, character classes,
    regexes, special tokens and comments."""
    lark = dialect is _LARK
    spans: list[tuple[int, int]] = []
    i = 0
    while i < len(text):
        c = text[i]
        if c == '"':
            i = _skip_to(text, i, '"')
        elif c == "[" and not lark:
            i = _skip_to(text, i, "]")
        elif c == "#" or (lark and text.startswith("//", i)):
            end = text.find("\n", i)
            i = len(text) if end < 0 else end
        elif c == "/" and lark:
            i = _skip_to(text, i, "/")
        elif c == "<":
            end = text.find(">", i)
            i = len(text) if end < 0 else end + 1
        elif c == "@" and lark:  # a reference to another grammar, not a rule
            match = dialect.word.match(text, i + 1)
            i = match.end() if match else i + 1
        elif match := dialect.word.match(text, i):
            spans.append(match.span())
            i = match.end()
        else:
            i += 1
    return spans


def _fresh(name: str, taken: set[str]) -> str:
    candidate, n = name, 1
    while candidate in taken:
        n += 1
        candidate = f"{name}-{n}"
    taken.add(candidate)
    return candidate


def tool_calls_grammar(
    call_rule_grammar: str, begin: str, end: str, separator: str, max_calls: int | None
) -> str:
    """`begin call end (separator begin call end)*`, at most `max_calls` calls in all.

    `call_rule_grammar` is the grammar of one call: GBNF whose start rule is `root`, or
    llguidance's Lark format (starting with `%llguidance`) whose start rule is `start`, as
    llama.cpp's json-schema-to-grammar writes them. Its start rule is renamed (`call`, or a
    free variant) and the result is in the same format.
    """
    if max_calls is not None and not 1 <= max_calls <= MAX_REPEAT + 1:
        raise ValueError(f"max_calls must be between 1 and {MAX_REPEAT + 1}, got {max_calls}")
    dialect = _LARK if call_rule_grammar.lstrip().startswith("%llguidance") else _GBNF
    spans = _rule_names(call_rule_grammar, dialect)
    taken = {call_rule_grammar[a:b] for a, b in spans}
    if dialect.start not in taken:
        raise ValueError(f"the grammar of one call has no {dialect.start!r} rule")
    call, one, more = (_fresh(n, taken) for n in ("call", "tool-call", "next-tool-call"))
    pieces, last = [], 0
    for a, b in spans:
        if call_rule_grammar[a:b] == dialect.start:
            pieces += [call_rule_grammar[last:a], call]
            last = b
    renamed = "".join([*pieces, call_rule_grammar[last:]]).rstrip("\n")

    def around(name: str, before: str, after: str = "") -> str:
        strings = (dialect.string(before) if before else "", dialect.string(after) if after else "")
        return " ".join(part for part in (strings[0], name, strings[1]) if part)

    if max_calls == 1:
        start = one
    else:
        start = f"{one} {more}{repeat_suffix(0, None if max_calls is None else max_calls - 1)}"
    rules = [
        renamed,
        f"{dialect.start}{dialect.define}{start}",
        f"{one}{dialect.define}{around(call, begin, end)}",
    ]
    if max_calls != 1:
        rules.append(f"{more}{dialect.define}{around(one, separator)}")
    return "\n".join(rules) + "\n"
