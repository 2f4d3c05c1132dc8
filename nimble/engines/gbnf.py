"""Grammars for llama.cpp's grammar-constrained decoding, built as plain strings.

GBNF is llama.cpp's grammar format (`grammars/README.md` in llama.cpp): rules `name ::= ...`,
string literals, character classes, `( )`, `|`, `*`, `+`, `?` and `{m,n}`; the start rule is
`root`. Nothing here imports llama.cpp.

- `literal` / `choice_grammar`: exact text and a choice among texts.
- `regex_grammar`: a grammar for the strings that Python's `re.fullmatch(pattern, s)` accepts,
  built from `re`'s own parse tree. `\\d`, `\\w` and `\\s` allow their ASCII members only
  (`[0-9]`, `[a-zA-Z0-9_]`, `[ \\t\\n\\r\\f\\v]`, as JSON Schema and other servers read them);
  `\\D`, `\\W`, `\\S` and negated classes leave out every character Python would refuse, so a
  generated string always passes `re.fullmatch` (the two agree exactly on ASCII text). Features
  a grammar cannot express raise `ValueError` naming them: backreferences, lookarounds,
  conditionals, possessive quantifiers and atomic groups, `\\b`/`\\B`, case-insensitive
  matching, anchors other than a leading `^`/`\\A` or trailing `$`/`\\Z`, and repetition counts
  above `MAX_REPEAT` (llama.cpp refuses counts above 2000, and 2000 itself in some versions,
  and silently reads a maximum above 2000 as unbounded).
- `tool_calls_grammar`: one or more tool calls between begin/end markers around the grammar of
  one call. That grammar may be GBNF (start rule `root`) or llguidance's Lark format (it starts
  with `%llguidance`, start rule `start`): xllamacpp's `json_schema_to_grammar` returns the
  latter when llama.cpp is built with llguidance, as the prebuilt wheel is.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from functools import cache
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # the stubs live under the old names, which warn when imported at run time
    import sre_constants as _c
    import sre_parse as _parser
else:
    from re import _constants as _c
    from re import _parser

# the most repetitions of one item every llama.cpp grammar parser takes (MAX_REPETITION_THRESHOLD
# is 2000; some versions refuse `rules in the repeated item * count >= 2000`)
MAX_REPEAT = 1999
MAX_CODE_POINT = 0x10FFFF

Ranges = tuple[tuple[int, int], ...]


# -- literals and choices ------------------------------------------------------------------------


def literal(text: str) -> str:
    """A GBNF string literal that matches exactly `text` (pure ASCII, everything else escaped)."""
    return '"' + "".join(_char(ord(c), in_class=False) for c in text) + '"'


def choice_grammar(choices: Sequence[str]) -> str:
    """`root ::= "a" | "b" ...`: exactly one of `choices`."""
    if not choices:
        raise ValueError("a choice grammar needs at least one choice")
    return "root ::= " + " | ".join(literal(choice) for choice in choices) + "\n"


def _char(cp: int, *, in_class: bool) -> str:
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


def _normalize(ranges: Iterable[tuple[int, int]]) -> Ranges:
    merged: list[tuple[int, int]] = []
    for lo, hi in sorted(ranges):
        if merged and lo <= merged[-1][1] + 1:
            merged[-1] = (merged[-1][0], max(merged[-1][1], hi))
        else:
            merged.append((lo, hi))
    return tuple(merged)


def _complement(ranges: Ranges) -> Ranges:
    out: list[tuple[int, int]] = []
    nxt = 0
    for lo, hi in ranges:
        if lo > nxt:
            out.append((nxt, lo - 1))
        nxt = hi + 1
    if nxt <= MAX_CODE_POINT:
        out.append((nxt, MAX_CODE_POINT))
    return tuple(out)


def _from_codes(codes: Iterable[int]) -> Ranges:
    return _normalize((cp, cp) for cp in codes)


_ASCII_DIGIT = ((0x30, 0x39),)
_ASCII_WORD = _normalize([(0x30, 0x39), (0x41, 0x5A), (0x5F, 0x5F), (0x61, 0x7A)])
_ASCII_SPACE = _from_codes(map(ord, " \t\n\r\f\v"))
_ALL: Ranges = ((0, MAX_CODE_POINT),)
_NEWLINE = ((0x0A, 0x0A),)


@cache
def _unicode_category(name: str) -> Ranges:
    """Every code point Python's (Unicode) `\\d`, `\\w` or `\\s` matches (computed once)."""
    test = {"digit": str.isdecimal, "word": str.isalnum, "space": str.isspace}[name]
    codes = [cp for cp in range(MAX_CODE_POINT + 1) if test(chr(cp))]
    return _from_codes([*codes, ord("_")] if name == "word" else codes)


def _category(code: Any, ascii_only: bool) -> tuple[Ranges, Ranges]:
    """(lower, upper) bounds of a category: lower is what the grammar allows."""
    positive = {
        _c.CATEGORY_DIGIT: ("digit", _ASCII_DIGIT),
        _c.CATEGORY_WORD: ("word", _ASCII_WORD),
        _c.CATEGORY_SPACE: ("space", _ASCII_SPACE),
    }
    negative = {
        _c.CATEGORY_NOT_DIGIT: _c.CATEGORY_DIGIT,
        _c.CATEGORY_NOT_WORD: _c.CATEGORY_WORD,
        _c.CATEGORY_NOT_SPACE: _c.CATEGORY_SPACE,
    }
    if code in negative:
        low, high = _category(negative[code], ascii_only)
        return _complement(high), _complement(low)
    if code not in positive:
        raise ValueError(f"the regex category {code} is not supported")
    name, ascii_set = positive[code]
    return ascii_set, ascii_set if ascii_only else _unicode_category(name)


def _class_bounds(items: Any, ascii_only: bool) -> tuple[Ranges, Ranges]:
    """(lower, upper) bounds of a `[...]` set: negation swaps and complements them."""
    negate = False
    low: list[tuple[int, int]] = []
    high: list[tuple[int, int]] = []
    for op, av in items:
        if op is _c.NEGATE:
            negate = True
        elif op is _c.LITERAL:
            low.append((av, av))
            high.append((av, av))
        elif op is _c.RANGE:
            low.append(av)
            high.append(av)
        elif op is _c.CATEGORY:
            item_low, item_high = _category(av, ascii_only)
            low.extend(item_low)
            high.extend(item_high)
        else:
            raise ValueError(f"the regex set item {op} is not supported")
    lower, upper = _normalize(low), _normalize(high)
    return (_complement(upper), _complement(lower)) if negate else (lower, upper)


# -- the regex tree ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Chars:
    ranges: Ranges


@dataclass(frozen=True)
class Seq:
    items: tuple[Node, ...]


@dataclass(frozen=True)
class Alt:
    items: tuple[Node, ...]


@dataclass(frozen=True)
class Repeat:
    item: Node
    low: int
    high: int | None  # None: unbounded


Node = Chars | Seq | Alt | Repeat

_LEADING_ANCHORS = (_c.AT_BEGINNING, _c.AT_BEGINNING_STRING)
_TRAILING_ANCHORS = (_c.AT_END, _c.AT_END_STRING)


def _unsupported_op(op: Any, av: Any) -> str:
    if op is _c.ASSERT or op is _c.ASSERT_NOT:
        kind = "lookahead" if av[0] == 1 else "lookbehind"
        return f"{'negative ' if op is _c.ASSERT_NOT else ''}{kind} assertions"
    names = {
        _c.GROUPREF: "backreferences",
        _c.GROUPREF_EXISTS: "conditional groups (?(id)yes|no)",
        _c.ATOMIC_GROUP: "atomic groups (?>...)",
        _c.POSSESSIVE_REPEAT: "possessive quantifiers (*+, ++, ?+, {m,n}+)",
    }
    return names.get(op, f"the regex operation {str(op).lower()}")


def _anchor_name(code: Any) -> str:
    if code is _c.AT_BOUNDARY:
        return "word boundaries \\b"
    if code is _c.AT_NON_BOUNDARY:
        return "non-boundaries \\B"
    return "anchors (^, $, \\A, \\Z) other than a leading ^ or a trailing $"


def _parse(pattern: str) -> Node:
    try:
        tree = _parser.parse(pattern, 0)
    except re.error as exc:
        raise ValueError(f"invalid regular expression: {exc}") from exc
    except (OverflowError, RecursionError) as exc:
        raise ValueError(f"invalid regular expression: {exc}") from exc
    return _walk(tree.data, tree.state.flags, at_start=True, at_end=True)


def _walk(items: list[Any], flags: int, *, at_start: bool, at_end: bool) -> Node:
    if flags & _c.SRE_FLAG_IGNORECASE:
        raise ValueError("case-insensitive matching (?i) is not supported")
    if at_start:
        while items and items[0][0] is _c.AT and items[0][1] in _LEADING_ANCHORS:
            items = items[1:]
    if at_end:
        while items and items[-1][0] is _c.AT and items[-1][1] in _TRAILING_ANCHORS:
            items = items[:-1]
    last = len(items) - 1
    nodes = [
        _item(op, av, flags, at_start=at_start and i == 0, at_end=at_end and i == last)
        for i, (op, av) in enumerate(items)
    ]
    return nodes[0] if len(nodes) == 1 else Seq(tuple(nodes))


def _item(op: Any, av: Any, flags: int, *, at_start: bool, at_end: bool) -> Node:
    ascii_only = bool(flags & _c.SRE_FLAG_ASCII)
    if op is _c.LITERAL:
        return Chars(((av, av),))
    if op is _c.NOT_LITERAL:
        return Chars(_complement(((av, av),)))
    if op is _c.ANY:
        return Chars(_ALL if flags & _c.SRE_FLAG_DOTALL else _complement(_NEWLINE))
    if op is _c.IN:
        return Chars(_class_bounds(av, ascii_only)[0])
    if op is _c.CATEGORY:
        return Chars(_category(av, ascii_only)[0])
    if op is _c.SUBPATTERN:
        _group, add_flags, del_flags, sub = av
        inner = (flags | add_flags) & ~del_flags
        return _walk(list(sub), inner, at_start=at_start, at_end=at_end)
    if op is _c.BRANCH:
        return Alt(tuple(_walk(list(b), flags, at_start=at_start, at_end=at_end) for b in av[1]))
    if op is _c.MAX_REPEAT or op is _c.MIN_REPEAT:  # a lazy repeat matches the same strings
        low, high, sub = av
        unbounded = high == _c.MAXREPEAT
        if low > MAX_REPEAT or (not unbounded and high > MAX_REPEAT):
            raise ValueError(f"repetition counts above {MAX_REPEAT} are not supported")
        body = _walk(list(sub), flags, at_start=False, at_end=False)
        return Repeat(body, low, None if unbounded else high)
    if op is _c.AT:
        raise ValueError(f"{_anchor_name(av)} are not supported")
    raise ValueError(f"{_unsupported_op(op, av)} are not supported")


def _nullable(node: Node) -> bool:
    if isinstance(node, Chars):
        return False
    if isinstance(node, Seq):
        return all(_nullable(item) for item in node.items)
    if isinstance(node, Alt):
        return any(_nullable(item) for item in node.items)
    return node.low == 0 or node.high == 0 or _nullable(node.item)


def _non_empty(node: Node) -> Node | None:
    """The strings of `node` less the empty one (None: nothing is left).

    An unbounded repeat of an `x` that can match the empty string is written as a repeat of
    `_non_empty(x)`: the same strings, and no rule that reaches itself without reading a
    character (llama.cpp refuses left recursion, and an empty match repeated is ambiguous).
    """
    if not _nullable(node):
        return node
    if isinstance(node, Seq):  # every item is nullable: the first non-empty one starts it
        alternatives = []
        for i, item in enumerate(node.items):
            head = _non_empty(item)
            if head is not None:
                alternatives.append(Seq((head, *node.items[i + 1 :])))
        return Alt(tuple(alternatives)) if alternatives else None
    if isinstance(node, Alt):
        branches = [b for b in map(_non_empty, node.items) if b is not None]
        return Alt(tuple(branches)) if branches else None
    assert isinstance(node, Repeat)
    if node.high == 0:
        return None
    if not _nullable(node.item):  # low == 0
        return Repeat(node.item, 1, node.high)
    head = _non_empty(node.item)  # x{m,n} with nullable x is x{0,n}: e e{0,n-1}
    if head is None:
        return None
    rest = None if node.high is None else node.high - 1
    return head if rest == 0 else Seq((head, Repeat(head, 0, rest)))


class _Emitter:
    """Writes a tree as GBNF; every repeated item that is not one character is its own rule
    (llama.cpp multiplies the rules of a repeated group, a rule reference counts once)."""

    def __init__(self, prefix: str):
        self.prefix = prefix
        self.rules: dict[str, str] = {}  # body -> name

    def grammar(self, root: Node) -> str:
        body = self.expr(root)
        lines = [f"root ::= {body}"]
        lines += [f"{name} ::= {rule}" for rule, name in self.rules.items()]
        return "\n".join(lines) + "\n"

    def expr(self, node: Node) -> str:
        if isinstance(node, Alt):
            if not node.items:
                return _chars(())
            return " | ".join(self.expr(item) for item in node.items)
        return self.sequence(node)

    def sequence(self, node: Node) -> str:
        items = node.items if isinstance(node, Seq) else (node,)
        parts: list[str] = []
        text: list[int] = []
        for item in _flatten(items):
            if isinstance(item, Chars) and len(item.ranges) == 1 and _single(item.ranges):
                text.append(item.ranges[0][0])
                continue
            if text:
                parts.append(literal("".join(map(chr, text))))
                text = []
            parts.append(self.atom(item))
        if text or not parts:
            parts.append(literal("".join(map(chr, text))))
        return " ".join(parts)

    def atom(self, node: Node) -> str:
        if isinstance(node, Chars):
            return _chars(node.ranges)
        if isinstance(node, Repeat):
            return self.repeat(node)
        return f"({self.expr(node)})"

    def repeat(self, node: Repeat) -> str:
        item, low, high = node.item, node.low, node.high
        if _nullable(item) and high is None:
            head = _non_empty(item)
            if head is None:
                return '""'
            item, low = head, 0
        if high == 0:
            return '""'
        if low == high == 1:
            return self.atom(item)
        return self.repeatable(item) + _count(low, high)

    def repeatable(self, node: Node) -> str:
        if isinstance(node, Chars):
            return _chars(node.ranges)
        body = self.expr(node)
        name = self.rules.get(body)
        if name is None:
            name = self.rules[body] = f"{self.prefix}{len(self.rules) + 1}"
        return name


def _flatten(items: Iterable[Node]) -> Iterable[Node]:
    for item in items:
        if isinstance(item, Seq):
            yield from _flatten(item.items)
        else:
            yield item


def _single(ranges: Ranges) -> bool:
    return ranges[0][0] == ranges[0][1]


def _chars(ranges: Ranges) -> str:
    if not ranges:  # nothing matches: no code point lies outside all of them
        return f"[^{_char(0, in_class=True)}-{_char(MAX_CODE_POINT, in_class=True)}]"
    if ranges == _ALL:
        return "."
    if len(ranges) == 1 and _single(ranges):
        return literal(chr(ranges[0][0]))
    negated = _complement(ranges)
    shown, caret = (negated, "^") if len(negated) < len(ranges) else (ranges, "")
    body = "".join(
        _char(lo, in_class=True) + ("" if lo == hi else "-" + _char(hi, in_class=True))
        for lo, hi in shown
    )
    return f"[{caret}{body}]"


def _count(low: int, high: int | None) -> str:
    if (low, high) == (0, None):
        return "*"
    if (low, high) == (1, None):
        return "+"
    if (low, high) == (0, 1):
        return "?"
    if high is None:
        return f"{{{low},}}"
    return f"{{{low}}}" if low == high else f"{{{low},{high}}}"


def regex_grammar(pattern: str) -> str:
    """A GBNF grammar whose `root` matches the strings `re.fullmatch(pattern, s)` accepts.

    Raises ValueError naming the feature for a pattern it cannot express (see the module doc).
    """
    return _Emitter("part-").grammar(_parse(pattern))


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
        start = f"{one} {more}{_count(0, None if max_calls is None else max_calls - 1)}"
    rules = [
        renamed,
        f"{dialect.start}{dialect.define}{start}",
        f"{one}{dialect.define}{around(call, begin, end)}",
    ]
    if max_calls != 1:
        rules.append(f"{more}{dialect.define}{around(one, separator)}")
    return "\n".join(rules) + "\n"
