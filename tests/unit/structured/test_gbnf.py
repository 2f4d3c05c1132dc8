"""GBNF grammars: exact text, a small GBNF matcher as oracle, and the real model under them.

The oracle (`Gbnf` below) reads the subset of GBNF these grammars use and decides whether a
string is in the language, so `regex_grammar` is compared with `re.fullmatch` on thousands of
strings. The tests marked `models` load the real default model (SmolLM2-135M-Instruct, GGUF)
into llama.cpp in-process and check what it generates under each grammar.
"""

from __future__ import annotations

import gc
import itertools
import json
import os
import re
import signal
from collections.abc import Iterator
from typing import Any

import jsonschema
import pytest

from nimble.models import resolve_model
from nimble.structured.gbnf import MAX_REPEAT, choice_grammar, literal, tool_calls_grammar
from nimble.structured.gbnf_regex import regex_grammar

# -- a GBNF oracle -------------------------------------------------------------------------------

Node = tuple[Any, ...]
_ESCAPES = {"t": "\t", "r": "\r", "n": "\n", "\\": "\\", '"': '"', "[": "[", "]": "]", "-": "-"}


class Gbnf:
    """Parses GBNF (literals, classes, `.`, groups, `|`, `* + ? {m,n}`, rule references) and
    matches whole strings against `root`, as llama.cpp reads them."""

    def __init__(self, text: str):
        self.rules: dict[str, Node] = {}
        for line in text.splitlines():
            if not line.strip():
                continue
            name, body = line.split(" ::= ", 1)
            assert re.fullmatch(r"[a-zA-Z0-9-]+", name), name
            self.src, self.pos = body, 0
            self.rules[name] = self.alt()
            assert self.pos == len(body), f"unparsed: {body[self.pos :]!r}"
        self.memo: dict[tuple[int, int], frozenset[int]] = {}

    # parsing
    def peek(self) -> str:
        return self.src[self.pos] if self.pos < len(self.src) else ""

    def space(self) -> None:
        while self.peek() == " ":
            self.pos += 1
        if self.peek() == "#":  # a comment, to the end of the line
            self.pos = len(self.src)

    def alt(self) -> Node:
        seqs = [self.seq()]
        while self.peek() == "|":
            self.pos += 1
            seqs.append(self.seq())
        return ("alt", seqs)

    def seq(self) -> Node:
        items: list[Node] = []
        while True:
            self.space()
            if self.peek() in ("", "|", ")"):
                return ("seq", items)
            atom = self.atom()
            self.space()
            while self.peek() and self.peek() in "*+?{":
                atom = self.quantified(atom)
                self.space()
            items.append(atom)

    def char(self) -> int:
        c = self.src[self.pos]
        if c != "\\":
            self.pos += 1
            return ord(c)
        kind = self.src[self.pos + 1]
        width = {"x": 2, "u": 4, "U": 8}.get(kind)
        if width:
            digits = self.src[self.pos + 2 : self.pos + 2 + width]
            self.pos += 2 + width
            return int(digits, 16)
        self.pos += 2
        return ord(_ESCAPES[kind])

    def atom(self) -> Node:
        c = self.peek()
        if c == '"':
            self.pos += 1
            chars = []
            while self.peek() != '"':
                chars.append(self.char())
            self.pos += 1
            return ("seq", [("set", False, ((cp, cp),)) for cp in chars])
        if c == "[":
            self.pos += 1
            negated = self.peek() == "^"
            self.pos += negated
            ranges = []
            while self.peek() != "]":
                lo = hi = self.char()
                if self.peek() == "-" and self.src[self.pos + 1] != "]":
                    self.pos += 1
                    hi = self.char()
                ranges.append((lo, hi))
            self.pos += 1
            return ("set", negated, tuple(ranges))
        if c == ".":
            self.pos += 1
            return ("set", True, ())
        if c == "(":
            self.pos += 1
            inner = self.alt()
            assert self.peek() == ")"
            self.pos += 1
            return inner
        name = re.match(r"[a-zA-Z0-9-]+", self.src[self.pos :])
        assert name, self.src[self.pos :]
        self.pos += name.end()
        return ("ref", name.group())

    def quantified(self, atom: Node) -> Node:
        c = self.src[self.pos]
        self.pos += 1
        if c != "{":
            low, high = {"*": (0, None), "+": (1, None), "?": (0, 1)}[c]
            return ("rep", atom, low, high)
        end = self.src.index("}", self.pos)
        counts = self.src[self.pos : end].split(",")
        self.pos = end + 1
        low = int(counts[0])
        high = low if len(counts) == 1 else (int(counts[1]) if counts[1] else None)
        assert low < 2000 and (high is None or high < 2000), "llama.cpp refuses this count"
        return ("rep", atom, low, high)

    # matching
    def accepts(self, text: str) -> bool:
        self.memo = {}
        return len(text) in self.ends(self.rules["root"], text, 0)

    def ends(self, node: Node, text: str, i: int) -> frozenset[int]:
        key = (id(node), i)
        if key not in self.memo:
            self.memo[key] = frozenset()  # a rule that reaches itself without input: nothing
            self.memo[key] = self.compute(node, text, i)
        return self.memo[key]

    def compute(self, node: Node, text: str, i: int) -> frozenset[int]:
        kind = node[0]
        if kind == "set":
            if i >= len(text):
                return frozenset()
            inside = any(lo <= ord(text[i]) <= hi for lo, hi in node[2])
            return frozenset({i + 1}) if inside != node[1] else frozenset()
        if kind == "ref":
            return self.ends(self.rules[node[1]], text, i)
        if kind == "alt":
            return frozenset().union(*(self.ends(seq, text, i) for seq in node[1]))
        if kind == "seq":
            here = frozenset({i})
            for item in node[1]:
                here = frozenset().union(*(self.ends(item, text, p) for p in here))
            return here
        _, item, low, high = node
        found: set[int] = {i} if low == 0 else set()
        here, count = frozenset({i}), 0
        while here and (high is None or count < high):
            count += 1
            here = frozenset().union(*(self.ends(item, text, p) for p in here))
            if count >= low:
                if here <= found and count > low:
                    break
                found |= here
        return frozenset(found)


def strings(alphabet: str, longest: int) -> Iterator[str]:
    for n in range(longest + 1):
        for chars in itertools.product(alphabet, repeat=n):
            yield "".join(chars)


# -- text ----------------------------------------------------------------------------------------


def test_literal_escapes_quotes_backslashes_controls_and_non_ascii() -> None:
    assert literal("") == '""'
    assert literal('say "hi" \\o/') == '"say \\"hi\\" \\\\o/"'
    assert literal("a\nb\tc\rd") == '"a\\nb\\tc\\rd"'
    assert literal("\x00\x1f\x7f") == '"\\x00\\x1F\\x7F"'
    assert literal("é€😀") == '"\\xE9\\u20AC\\U0001F600"'
    assert literal("[x-y]^#(|)*") == '"[x-y]^#(|)*"'
    for text in ['say "hi" \\o/', "a\nb\t", "é€😀\x7f", "[^]-#"]:
        assert Gbnf(f"root ::= {literal(text)}").accepts(text)


def test_choice_grammar_is_one_literal_per_choice() -> None:
    assert choice_grammar(["yes", 'a "b"', "é"]) == 'root ::= "yes" | "a \\"b\\"" | "\\xE9"\n'
    grammar = Gbnf(choice_grammar(["red", "green", "re"]))
    assert [grammar.accepts(s) for s in ("red", "green", "re", "", "redgreen", "r")] == [
        True,
        True,
        True,
        False,
        False,
        False,
    ]
    with pytest.raises(ValueError, match="at least one choice"):
        choice_grammar([])


@pytest.mark.parametrize(
    ("pattern", "grammar"),
    [
        (r"\d{3}-\d{4}", 'root ::= [0-9]{3} "-" [0-9]{4}'),
        (r"^(yes|no)$", 'root ::= "yes" | "no"'),
        (r"[A-Z][a-z]{2,8}", "root ::= [A-Z] [a-z]{2,8}"),
        (r"(\+|-)?\d+(\.\d+)?", 'root ::= [+\\x2D]? [0-9]+ part-1?\npart-1 ::= "." [0-9]+'),
        (r"(?a)\w+\s*", "root ::= [0-9A-Z_a-z]+ [\\t-\\r ]*"),
        (r".", "root ::= [^\\n]"),
        (r"(?s).", "root ::= ."),
        (r"[-\]^\\]", "root ::= [\\x2D\\x5C-\\x5E]"),
        (r"[^\s\S]?x", 'root ::= [^\\x00-\\U0010FFFF]? "x"'),
        (r"(ab){2,5}?c{3,}", 'root ::= part-1{2,5} "c"{3,}\npart-1 ::= "ab"'),
        # a repeat of what can be empty repeats its non-empty part (no left recursion)
        (r"(a?b?)+c", 'root ::= part-1* "c"\npart-1 ::= "a" "b"? | "b"'),
        (r"(a*)*", 'root ::= part-1*\npart-1 ::= "a"+'),
        (r"", 'root ::= ""'),
    ],
)
def test_regex_grammar_text(pattern: str, grammar: str) -> None:
    assert regex_grammar(pattern) == grammar + "\n"


# ASCII letters, digits, punctuation, whitespace, non-ASCII letters, digits and spaces
_MIXED = "a1_ \n-é٣\u2003"


@pytest.mark.parametrize(
    ("pattern", "alphabet", "longest"),
    [
        (r"\d{2}-\d", "05-a", 5),
        (r"(yes|no)", "yesno ", 3),
        (r"[A-C][a-c]{1,3}", "AaCcz", 5),
        (r"(\+|-)?\d+(\.\d+)?", "+-.19", 5),
        (r"[a-z]+@[a-z]+\.(c|or)", "ao@.c", 6),
        (r"(a?b?)+c", "abc", 6),
        (r"((a*)*b)*", "ab", 6),
        (r"(a|bc)*d?", "abcd", 5),
        (r"x{2,3}y{0,2}?", "xy", 6),
        (r"[^a-c]\D\W\S", _MIXED, 4),
        (r"[^\d\s]\w\s\d", _MIXED, 4),
        (r"(?a)\w\d\s\W", _MIXED, 4),
        (r".\.[.]", "a.\n", 4),
        (r"(?s)..", "a\n", 3),
        (r"^a|b$", "ab", 3),
        (r"\Aab?\Z", "ab", 3),
        (r"(^a|b)(c|d$)", "abcd", 3),
        (r'[-\]^\\"]+', '-]^\\"a', 3),
        ('é😀\t"|\\(', 'é😀\t"|\\(', 2),
        (r"(ab){2}|(?:c|)", "abc", 4),
        (r"[^\s\S]?x", "x\n", 2),
        (r"", "a", 1),
    ],
)
def test_regex_grammar_accepts_what_python_accepts(
    pattern: str, alphabet: str, longest: int
) -> None:
    grammar = Gbnf(regex_grammar(pattern))
    matches = 0
    for text in strings(alphabet, longest):
        python = re.fullmatch(pattern, text) is not None
        ours = grammar.accepts(text)
        matches += python
        # never more than Python; the same on ASCII (Python's Unicode \s also has \x1c-\x1f)
        assert python or not ours, f"{pattern!r} allows {text!r}, Python does not"
        if text.isascii():
            assert ours == python, f"{pattern!r} on {text!r}: grammar {ours}, Python {python}"
    assert matches > 0


def test_the_negated_categories_leave_out_every_character_python_refuses() -> None:
    for pattern in (r"\D", r"\W", r"\S", r"[^\d]", r"[^\w]", r"[^\s]", r"[^\d\s]", "[^a]"):
        grammar = Gbnf(regex_grammar(pattern))
        refused = [
            cp
            for cp in range(0, 0x3100)  # the ranges where Unicode digits, letters, spaces abound
            if grammar.accepts(chr(cp)) and not re.fullmatch(pattern, chr(cp))
        ]
        assert refused == [], pattern


@pytest.mark.parametrize(
    ("pattern", "feature"),
    [
        (r"(a)\1", "backreferences"),
        (r"a(?=b)", "lookahead assertions"),
        (r"a(?!b)", "negative lookahead assertions"),
        (r"(?<=a)b", "lookbehind assertions"),
        (r"(?<!a)b", "negative lookbehind assertions"),
        (r"(a)?(?(1)b|c)", "conditional groups"),
        (r"a++", "possessive quantifiers"),
        (r"(?>a)", "atomic groups"),
        (r"\ba", "word boundaries \\b"),
        (r"a\B", "non-boundaries \\B"),
        (r"a^", "anchors"),
        (r"(a$)*", "anchors"),
        (r"(?i)a", "case-insensitive matching"),
        (r"a{1,2000}", f"repetition counts above {MAX_REPEAT}"),
        (r"a{2000,}", f"repetition counts above {MAX_REPEAT}"),
        (r"(", "invalid regular expression"),
    ],
)
def test_regex_grammar_names_what_it_cannot_express(pattern: str, feature: str) -> None:
    with pytest.raises(ValueError, match=re.escape(feature)):
        regex_grammar(pattern)


def test_the_largest_repetition_count_llama_cpp_takes_is_accepted() -> None:
    assert regex_grammar(f"a{{{MAX_REPEAT}}}b{{0,{MAX_REPEAT}}}") == (
        f'root ::= "a"{{{MAX_REPEAT}}} "b"{{0,{MAX_REPEAT}}}\n'
    )


# -- tool calls ----------------------------------------------------------------------------------

# a call grammar as llama.cpp's json-schema-to-grammar writes it (rules sorted, `root-` names,
# quotes and backslashes inside classes, a rule that refers back to `root`)
CALL_GBNF = r"""arguments ::= "{" space arguments-city-kv "," space arguments-unit-kv "}" space
arguments-city-kv ::= "\"city\"" space ":" space string
arguments-kv ::= "\"arguments\"" space ":" space arguments
arguments-unit ::= ("\"c\"" | "\"f\"") space
arguments-unit-kv ::= "\"unit\"" space ":" space arguments-unit
char ::= [^"\\\x7F\x00-\x1F] | [\\] (["\\bfnrt] | "u" [0-9a-fA-F]{4})
name ::= "\"get_weather\"" space
name-kv ::= "\"name\"" space ":" space name
root ::= "{" space name-kv "," space arguments-kv "}" space
space ::= | " " | "\n"{1,2} [ \t]{0,20}
string ::= "\"" char* "\"" space
"""

TOY_CALL = """root ::= "{" body "}" # a comment about root
body ::= [a-z]+ | root | root-word
root-word ::= "root" [root]
"""


def test_tool_calls_grammar_renames_only_the_root_rule() -> None:
    grammar = tool_calls_grammar(TOY_CALL, "<c>", "</c>", ",", None)
    assert grammar == (
        'call ::= "{" body "}" # a comment about root\n'
        "body ::= [a-z]+ | call | root-word\n"
        'root-word ::= "root" [root]\n'
        "root ::= tool-call next-tool-call*\n"
        'tool-call ::= "<c>" call "</c>"\n'
        'next-tool-call ::= "," tool-call\n'
    )
    parsed = Gbnf(grammar)
    assert parsed.accepts("<c>{a}</c>")
    assert parsed.accepts("<c>{{rootr}}</c>,<c>{b}</c>,<c>{c}</c>")
    for wrong in ("", "<c>{a}</c>,", "<c>{a}</c><c>{b}</c>", "{a}", "<c>{root1}</c>"):
        assert not parsed.accepts(wrong), wrong


def test_tool_calls_grammar_counts_calls() -> None:
    calls = ["<c>{a}</c>", "<c>{b}</c>", "<c>{c}</c>"]
    for max_calls in (1, 2, 3):
        parsed = Gbnf(tool_calls_grammar(TOY_CALL, "<c>", "</c>", "\n", max_calls))
        for n in (1, 2, 3):
            assert parsed.accepts("\n".join(calls[:n])) == (n <= max_calls), (max_calls, n)
    assert tool_calls_grammar(TOY_CALL, "<c>", "</c>", "\n", 1).endswith(
        'root ::= tool-call\ntool-call ::= "<c>" call "</c>"\n'
    )
    assert "root ::= tool-call next-tool-call{0,4}\n" in tool_calls_grammar(TOY_CALL, "", "", "", 5)
    for bad in (0, -1, MAX_REPEAT + 2):
        with pytest.raises(ValueError, match="max_calls"):
            tool_calls_grammar(TOY_CALL, "<c>", "</c>", "\n", bad)


def test_tool_calls_grammar_keeps_clear_of_names_in_use_and_of_marker_text() -> None:
    taken = 'root ::= call tool-call\ncall ::= "x"\ntool-call ::= "y"\n'
    grammar = tool_calls_grammar(taken, "call", "tool-call", "", None)
    assert grammar == (
        "call-2 ::= call tool-call\n"
        'call ::= "x"\n'
        'tool-call ::= "y"\n'
        "root ::= tool-call-2 next-tool-call*\n"
        'tool-call-2 ::= "call" call-2 "tool-call"\n'
        "next-tool-call ::= tool-call-2\n"
    )
    assert Gbnf(grammar).accepts("callxytool-callcallxytool-call")


def test_tool_calls_grammar_with_a_real_converter_grammar() -> None:
    grammar = Gbnf(tool_calls_grammar(CALL_GBNF, "<tool_call>\n", "\n</tool_call>", "\n", 2))
    call = '{"name": "get_weather", "arguments": {"city": "Pa\\"ris", "unit": "c"}}'
    one = f"<tool_call>\n{call}\n</tool_call>"
    assert grammar.accepts(one)
    assert grammar.accepts(f"{one}\n{one}")
    assert not grammar.accepts(f"{one}\n{one}\n{one}")
    assert not grammar.accepts(one.replace('"c"', '"k"'))


def test_tool_calls_grammar_in_llguidance_lark_format() -> None:
    lark = (
        "%llguidance {}\n"
        'start: %json {"type": "string", "const": "start"} // start\n'
        'other: "start" /start/ start <start> @start\n'
    )
    grammar = tool_calls_grammar(lark, "<tool_call>\n", "\n</tool_call>\x7f", "\n", 3)
    assert grammar == (
        "%llguidance {}\n"
        'call: %json {"type": "string", "const": "start"} // start\n'
        'other: "start" /start/ call <start> @start\n'
        "start: tool-call next-tool-call{0,2}\n"
        'tool-call: "<tool_call>\\n" call "\\n</tool_call>\\u007f"\n'
        'next-tool-call: "\\n" tool-call\n'
    )
    with pytest.raises(ValueError, match="no 'start' rule"):
        tool_calls_grammar("%llguidance {}\nmain: %json {}\n", "", "", "", None)
    with pytest.raises(ValueError, match="no 'root' rule"):
        tool_calls_grammar('main ::= "root"\n', "", "", "", None)


# -- the real model under these grammars ---------------------------------------------------------


@pytest.fixture(scope="module")
def server() -> Iterator[Any]:
    import xllamacpp

    params = xllamacpp.CommonParams()
    params.model.path = str(resolve_model("smollm2-135m-instruct").weights)
    params.n_parallel = 1
    params.n_ctx = 2048
    params.port = 0
    params.hostnames = ["127.0.0.1"]
    params.verbosity = 1
    # llama.cpp's threads spin while they wait: more than half the cores of a shared machine
    # slows it down many times over
    threads = max(1, min(4, (os.cpu_count() or 2) // 2))
    params.cpuparams.n_threads = threads
    params.cpuparams_batch.n_threads = threads
    # llama.cpp installs its own SIGINT/SIGTERM handlers: give them back to Python
    handlers = {number: signal.getsignal(number) for number in (signal.SIGINT, signal.SIGTERM)}
    try:
        box = [xllamacpp.Server(params)]
    finally:
        for number, handler in handlers.items():
            if handler is not None:
                signal.signal(number, handler)
    yield box[0]
    box.clear()
    gc.collect()


def generate(server: Any, prompt: str, grammar: str, **params: Any) -> tuple[str, str]:
    """(text, finish_reason) of one greedy (or seeded) completion under `grammar`."""
    body = {"prompt": prompt, "grammar": grammar, "stream": False, "temperature": 0, **params}
    chunks: list[dict[str, Any]] = []
    server.handle_completions(body, lambda chunk: chunks.append(chunk) or False)
    assert len(chunks) == 1 and "error" not in chunks[0], chunks
    choice = chunks[0]["choices"][0]
    return choice["text"], choice["finish_reason"]


SAMPLINGS = [{}, {"temperature": 1.0, "seed": 7}, {"temperature": 1.5, "seed": 11}]


@pytest.mark.models
@pytest.mark.parametrize(
    ("pattern", "prompt"),
    [
        (r"\d{3}-\d{4}", "Call me at"),
        (r"(yes|no)", "Is the sky blue? Answer:"),
        (r"[A-Z][a-z]{2,8}", "My name is"),
        (r"[a-z]{1,12}@[a-z]{1,12}\.(com|org)", "Write to me at"),
        (r"(\+|-)?\d{1,6}(\.\d{1,4})?", "The temperature outside is"),
        (r"\D\W\S.", "Symbols:"),
        (r"(a?b?)+c", "Letters:"),
        (r'[^\s\S]?"\\\[-\]\^ é😀"', "Repeat after me:"),
    ],
)
def test_the_model_writes_only_what_the_regex_accepts(
    server: Any, pattern: str, prompt: str
) -> None:
    grammar = regex_grammar(pattern)
    for sampling in SAMPLINGS:
        text, finish = generate(server, prompt, grammar, max_tokens=48, **sampling)
        assert finish == "stop", (pattern, sampling, text)
        assert re.fullmatch(pattern, text), (pattern, sampling, text)


@pytest.mark.models
def test_llama_cpp_takes_nested_and_large_repeats(server: Any) -> None:
    # a repeated group inside a repeated group: llama.cpp refuses `("a" "b"){40}{60}`, which
    # multiplies the rules, but takes rules that refer to each other
    grammar = regex_grammar(r"((ab){40}){60}x{1999}")
    assert grammar == 'root ::= part-2{60} "x"{1999}\npart-1 ::= "ab"\npart-2 ::= part-1{40}\n'
    text, finish = generate(server, "Letters:", grammar, max_tokens=8)
    assert finish == "length"
    assert len(text) >= 8
    assert ("ab" * 2400).startswith(text)


@pytest.mark.models
def test_the_model_picks_exactly_one_choice(server: Any) -> None:
    choices = ["red", "green", "blue", "Paris is nice", "yes"]
    grammar = choice_grammar(choices)
    seen = set()
    for prompt in ("The capital of France is", "Pick a color:", "Is water wet?", "Hi"):
        for sampling in SAMPLINGS:
            text, finish = generate(server, prompt, grammar, max_tokens=16, **sampling)
            assert (text, finish) in [(choice, "stop") for choice in choices], (prompt, text)
            seen.add(text)
    assert len(seen) > 1  # the prompts lead it to different choices


CALL_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "name": {"const": "get_weather"},
        "arguments": {
            "type": "object",
            "properties": {"city": {"type": "string"}, "unit": {"enum": ["c", "f"]}},
            "required": ["city", "unit"],
            "additionalProperties": False,
        },
    },
    "required": ["name", "arguments"],
    "additionalProperties": False,
}
BEGIN, END, SEPARATOR = "<tool_call>\n", "\n</tool_call>", "\n"
CALL_PROMPT = (
    "Tools: get_weather(city, unit). Call it once for each city.\n"
    "User: the weather in Paris, London and Rome, in celsius\nAssistant:\n"
)


def tool_calls(text: str, finish: str) -> list[Any]:
    """The calls in `text`; the last one may be cut short only when the length ran out."""
    calls, rest = [], text
    while True:
        if not rest.startswith(BEGIN):
            assert finish == "length" and BEGIN.startswith(rest), text
            return calls
        body, closed, rest = rest[len(BEGIN) :].partition(END)
        if not closed:
            assert finish == "length", text
            return calls
        call = json.loads(body)
        jsonschema.validate(call, CALL_SCHEMA)
        calls.append(call)
        if not rest:
            return calls
        assert rest.startswith(SEPARATOR), rest
        rest = rest[len(SEPARATOR) :]


@pytest.mark.models
@pytest.mark.parametrize("format", ["llguidance", "gbnf"])
def test_the_model_writes_valid_tool_calls(server: Any, format: str) -> None:
    import xllamacpp

    if format == "llguidance":  # what the llama.cpp in the wheel converts a schema to
        call_grammar = xllamacpp.json_schema_to_grammar(json.dumps(CALL_SCHEMA))
        assert call_grammar.startswith("%llguidance")
    else:
        call_grammar = CALL_GBNF

    def run(max_calls: int | None) -> list[Any]:
        grammar = tool_calls_grammar(call_grammar, BEGIN, END, SEPARATOR, max_calls)
        text, finish = generate(server, CALL_PROMPT, grammar, max_tokens=300)
        if max_calls is not None:
            assert finish == "stop", text
        return tool_calls(text, finish)

    one = run(1)
    assert len(one) == 1
    assert one[0]["arguments"]["city"] == "Paris"
    two = run(2)  # it would go on: the grammar stops it
    assert [call["arguments"]["city"] for call in two] == ["Paris", "London"]
    many = run(None)
    assert len(many) >= 3  # it goes on past two calls when nothing stops it
    assert [call["arguments"]["city"] for call in many[:3]] == ["Paris", "London", "Rome"]
