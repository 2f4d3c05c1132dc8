"""Incremental reading of tool calls written as JSON objects, as the text streams in.

A call object looks like `{"name": "f", "arguments": {...}}` (Llama 3 writes `parameters`).
Calls may sit alone, one after another (separated by `;`, `,` or whitespace), or inside one
JSON array. The scanner tracks nesting, strings and escapes character by character, so it
knows where the arguments object starts and ends before the call is complete: its text is
handed out as it arrives, and the pieces joined are exactly the arguments the call ends with.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from nimble import jsontext

NAME_KEYS = ("name",)
ARGUMENT_KEYS = ("arguments", "parameters")


@dataclass
class ScannedCall:
    """What is known so far of one call object."""

    name: str | None = None
    arguments: str = ""  # arguments text handed out so far
    streaming: bool = False  # inside the arguments object right now
    done: bool = False
    valid: bool = False  # the whole object parsed as JSON with a name and object arguments


@dataclass
class JsonCallScanner:
    """Feed text with `feed`; read `calls` (in order) after each feed."""

    calls: list[ScannedCall] = field(default_factory=list)
    _text: str = ""
    _pos: int = 0
    _depth: int = 0
    _base: int | None = None  # nesting depth of call objects (1 inside an array)
    _in_string: bool = False
    _escape: bool = False
    _string_start: int = 0
    _last_string: str | None = None
    _key: str | None = None  # key at call level whose value comes next
    _object_start: int = 0
    _args_start: int | None = None
    stray: str = ""  # non-JSON text outside any call (not markup: the caller may keep it)

    @property
    def at_top(self) -> bool:
        """Between calls: not inside any JSON value."""
        return self._depth == 0 and not self._in_string

    def feed(self, text: str) -> None:
        self._text += text
        while self._pos < len(self._text):
            self._step(self._text[self._pos])
            self._pos += 1
        self._flush_arguments()

    def _step(self, char: str) -> None:
        if self._in_string:
            if self._escape:
                self._escape = False
            elif char == "\\":
                self._escape = True
            elif char == '"':
                self._in_string = False
                self._last_string = self._text[self._string_start : self._pos + 1]
                self._on_string_end()
            return
        if char == '"':
            self._in_string = True
            self._string_start = self._pos
            return
        if char in "{[":
            self._open(char)
        elif char in "}]":
            self._close()
        elif char == ":" and self._at_call_level() and self._last_string is not None:
            self._key = _decode(self._last_string)
            self._last_string = None
        elif char == "," and self._at_call_level():
            self._key = None
        elif self._depth == 0 and not char.isspace() and char not in ";,":
            self.stray += char

    def _at_call_level(self) -> bool:
        return self._base is not None and self._depth == self._base + 1

    def _open(self, char: str) -> None:
        if self._base is None:
            self._base = 1 if char == "[" else 0
        if self._depth == self._base and char == "{":
            self.calls.append(ScannedCall())
            self._object_start = self._pos
            self._key = None
        elif self._at_call_level() and char == "{" and self._key in ARGUMENT_KEYS:
            self._args_start = self._pos
            call = self.calls[-1]
            call.streaming = call.name is not None  # stream only once the name is known
        self._depth += 1

    def _close(self) -> None:
        self._depth = max(0, self._depth - 1)
        if self._base is None or not self.calls:
            return
        if self._at_call_level() and self._args_start is not None:
            self._flush_arguments(end=self._pos + 1)
            self.calls[-1].streaming = False
            self._args_start = None
        elif self._depth == self._base and not self.calls[-1].done:
            self._finish(self._text[self._object_start : self._pos + 1])
        if self._depth == 0 and self._base == 1:
            self._base = None  # the array ended: a new one may follow

    def _on_string_end(self) -> None:
        if self._at_call_level() and self._key in NAME_KEYS and self.calls:
            value = _decode(self._last_string or '""')
            if self.calls[-1].name is None:
                self.calls[-1].name = value
            self._key = None
            self._last_string = None

    def _flush_arguments(self, end: int | None = None) -> None:
        if self._args_start is None or not self.calls or not self.calls[-1].streaming:
            return
        call = self.calls[-1]
        upto = self._pos if end is None else end
        call.arguments = self._text[self._args_start : upto]

    def _finish(self, raw: str) -> None:
        call = self.calls[-1]
        call.done = True
        try:
            parsed: Any = jsontext.loads(raw)
        except ValueError:
            return
        if not isinstance(parsed, dict):
            return
        name = parsed.get("name")
        args: Any = next((parsed[k] for k in ARGUMENT_KEYS if k in parsed), {})
        if not isinstance(name, str) or not isinstance(args, dict):
            return
        call.name = name
        if not call.arguments:
            call.arguments = json.dumps(args, ensure_ascii=False)
        call.valid = True


def _decode(literal: str) -> str:
    try:
        value = jsontext.loads(literal)
    except ValueError:
        return literal.strip('"')
    return value if isinstance(value, str) else str(value)
