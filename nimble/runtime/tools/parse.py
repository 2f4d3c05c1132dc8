"""Turn a model's text, as it streams, into content and tool-call deltas.

One `CallParser` per choice. Text before the format's opening marker is content (held back
only while it could still be the start of the marker); everything after it is read as calls
and never reaches `content`. Arguments stream as JSON text while they are written (see
`scanner.py`); a call that does not parse is dropped, not shown as text.
"""

from __future__ import annotations

import ast
import json
import logging
import secrets
from dataclasses import dataclass, field
from typing import Any

from nimble.runtime.tools.formats import ToolFormat
from nimble.runtime.tools.scanner import JsonCallScanner
from nimble.types import ToolCallDelta

log = logging.getLogger("nimble.tools")


def new_call_id() -> str:
    return "call_" + secrets.token_hex(12)


@dataclass
class Parsed:
    content: str = ""
    calls: list[ToolCallDelta] = field(default_factory=list)


class CallParser:
    def __init__(self, fmt: ToolFormat):
        self._fmt = fmt
        self._pending = ""  # text not yet known to be content or markup
        self._in_calls = False
        self._decided = bool(fmt.begin)  # formats without a marker decide at the first char
        self._scanner = JsonCallScanner()
        self._raw_calls = ""  # pythonic calls: read whole at the end
        self._sent: list[tuple[str, int]] = []  # per call: its id and arguments chars sent
        self._index: dict[int, int] = {}  # scanned call -> its index in the output

    @property
    def called(self) -> bool:
        return bool(self._sent)

    def feed(self, text: str) -> Parsed:
        out = Parsed()
        self._pending += text
        if not self._in_calls:
            out.content = self._take_content(final=False)
        if self._in_calls:
            self._feed_calls(final=False)
            out.calls = self._deltas()
        return out

    def finish(self) -> Parsed:
        out = Parsed()
        if not self._in_calls:
            out.content = self._take_content(final=True)
        if self._in_calls:
            self._feed_calls(final=True)
            out.calls = self._deltas(final=True)
            stray = self._scanner.stray.strip()
            if stray:
                log.debug("text outside tool calls dropped: %r", stray[:200])
        return out

    # content until the calls start

    def _take_content(self, final: bool) -> str:
        fmt = self._fmt
        if not self._decided:
            stripped = self._pending.lstrip()
            for marker in fmt.strip:
                if marker.startswith(stripped) and not final:
                    return ""  # may still become the marker
                if stripped.startswith(marker):
                    stripped = stripped[len(marker) :].lstrip()
            if not stripped:
                if final:
                    content, self._pending = self._pending, ""
                    return content
                return ""
            self._decided = True
            opener = "[" if not fmt.json_calls else "{"
            if stripped[0] == opener:
                self._in_calls = True
                self._pending = stripped
                return ""
            self._begin_marker_off()
        if self._in_calls or not fmt.begin:
            content, self._pending = self._pending, ""
            return content
        at = self._pending.find(fmt.begin)
        if at >= 0:
            content = self._pending[:at]
            self._pending = self._pending[at + len(fmt.begin) :]
            self._in_calls = True
            return content
        keep = 0 if final else _partial_suffix(self._pending, fmt.begin)
        content = self._pending[: len(self._pending) - keep]
        self._pending = self._pending[len(content) :]
        return content

    def _begin_marker_off(self) -> None:
        """A format whose calls must open the output: this output is plain text."""
        self._fmt = ToolFormat(name=self._fmt.name, begin="")

    # calls

    def _feed_calls(self, final: bool) -> None:
        fmt = self._fmt
        text, self._pending = self._pending, ""
        if not fmt.json_calls:
            self._raw_calls += text
            return
        markers = tuple(m for m in (fmt.begin, fmt.end, *fmt.strip) if m)
        scanner = self._scanner
        i = 0
        while i < len(text):
            if scanner.at_top:  # markers count only between calls, never inside a string
                rest = text[i:]
                marker = next((m for m in markers if rest.startswith(m)), None)
                if marker is not None:
                    i += len(marker)
                    continue
                if not final and any(m.startswith(rest) for m in markers):
                    self._pending = rest  # may be the start of a marker
                    return
            scanner.feed(text[i])
            i += 1

    def _deltas(self, final: bool = False) -> list[ToolCallDelta]:
        if not self._fmt.json_calls:
            return self._pythonic_deltas() if final else []
        deltas: list[ToolCallDelta] = []
        for position, call in enumerate(self._scanner.calls):
            index = self._index.get(position)
            if index is None:
                if call.name is None or not (call.streaming or (call.done and call.valid)):
                    continue  # not started, or dropped: indexes stay dense
                index = self._index[position] = len(self._sent)
                call_id = new_call_id()
                self._sent.append((call_id, 0))
                deltas.append(ToolCallDelta(index, call_id, call.name, ""))
            call_id, sent = self._sent[index]
            more = call.arguments[sent:]
            if more:
                self._sent[index] = (call_id, sent + len(more))
                deltas.append(ToolCallDelta(index, arguments=more))
        return deltas

    def _pythonic_deltas(self) -> list[ToolCallDelta]:
        calls = _read_pythonic(self._raw_calls.strip())
        if calls is None:
            log.debug("pythonic tool calls did not parse: %r", self._raw_calls[:200])
            return []
        deltas = []
        for name, arguments in calls:
            call_id = new_call_id()
            self._sent.append((call_id, len(arguments)))
            deltas.append(ToolCallDelta(len(self._sent) - 1, call_id, name, ""))
            deltas.append(ToolCallDelta(len(self._sent) - 1, arguments=arguments))
        return deltas


def _partial_suffix(text: str, marker: str) -> int:
    """Length of the longest end of `text` that is a proper start of `marker`."""
    for size in range(min(len(text), len(marker) - 1), 0, -1):
        if marker.startswith(text[-size:]):
            return size
    return 0


def _read_pythonic(text: str) -> list[tuple[str, str]] | None:
    try:
        tree = ast.parse(text, mode="eval")
    except SyntaxError:
        return None
    body = tree.body
    items = body.elts if isinstance(body, ast.List) else None
    if not items:
        return None
    calls = []
    for item in items:
        if not isinstance(item, ast.Call) or not isinstance(item.func, ast.Name) or item.args:
            return None
        try:
            arguments: dict[str, Any] = {
                str(kw.arg): ast.literal_eval(kw.value) for kw in item.keywords
            }
        except ValueError:
            return None
        calls.append((item.func.id, json.dumps(arguments, ensure_ascii=False)))
    return calls
