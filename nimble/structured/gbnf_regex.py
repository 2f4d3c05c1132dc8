"""Regular expressions as llama.cpp grammars (GBNF), for `guided_regex`.

`regex_grammar(pattern)` builds a grammar for the strings that Python's
`re.fullmatch(pattern, s)` accepts, from `re`'s own parse tree. `\\d`, `\\w` and `\\s` allow
their ASCII members only (`[0-9]`, `[a-zA-Z0-9_]`, `[ \\t\\n\\r\\f\\v]`, as JSON Schema and
other servers read them); `\\D`, `\\W`, `\\S` and negated classes leave out every character
Python would refuse, so a generated string always passes `re.fullmatch` (the two agree exactly
on ASCII text). Features a grammar cannot express raise `ValueError` naming them:
backreferences, lookarounds, conditionals, possessive quantifiers and atomic groups,
`\\b`/`\\B`, case-insensitive matching, anchors other than a leading `^`/`\\A` or trailing
`$`/`\\Z`, and repetition counts above `MAX_REPEAT` (llama.cpp refuses counts above 2000, and
2000 itself in some versions, and silently reads a maximum above 2000 as unbounded).
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from functools import cache
from typing import TYPE_CHECKING, Any

from nimble.structured.gbnf import (
    MAX_CODE_POINT,
    MAX_REPEAT,
    Ranges,
    char_escape,
    literal,
    repeat_suffix,
)

if TYPE_CHECKING:  # the stubs live under the old names, which warn when imported at run time
    import sre_constants as _c
    import sre_parse as _parser
else:
    from re import _constants as _c
    from re import _parser


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
        return self.repeatable(item) + repeat_suffix(low, high)

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
        return f"[^{char_escape(0, in_class=True)}-{char_escape(MAX_CODE_POINT, in_class=True)}]"
    if ranges == _ALL:
        return "."
    if len(ranges) == 1 and _single(ranges):
        return literal(chr(ranges[0][0]))
    negated = _complement(ranges)
    shown, caret = (negated, "^") if len(negated) < len(ranges) else (ranges, "")
    body = "".join(
        char_escape(lo, in_class=True) + ("" if lo == hi else "-" + char_escape(hi, in_class=True))
        for lo, hi in shown
    )
    return f"[{caret}{body}]"


def regex_grammar(pattern: str) -> str:
    """A GBNF grammar whose `root` matches the strings `re.fullmatch(pattern, s)` accepts.

    Raises ValueError naming the feature for a pattern it cannot express (see the module doc).
    """
    return _Emitter("part-").grammar(_parse(pattern))
