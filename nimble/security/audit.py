"""The audit log: one hash-chained JSON line per request, and its verification.

Each line is a compact JSON object whose last field, `prev`, is the sha256 (hex) of the
exact bytes of the line before it (without its newline); the first line of a chain has
`prev` = 64 zeros. The hash covers the whole previous line, its own `prev` included, so
every line is linked to all the lines before it: editing, removing, inserting or moving a
line breaks the link of the line after it, which `verify` reports by line number.

The writer appends with O_APPEND, one `os.write` per line under a lock (no line is lost or
interleaved when requests finish concurrently), and continues the chain of an existing file
from its last line, read from the end of the file.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import threading
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from nimble.errors import ConfigError
from nimble.observability.record import RequestRecord, rail_summary

log = logging.getLogger("nimble.audit")

GENESIS = "0" * 64
"""`prev` of the first line of a chain."""

SKIPPED_PATHS = frozenset({"/v1/health/live", "/v1/health/ready", "/health"})
"""Health probes (every few seconds, from the orchestrator) would drown the log."""

_TAIL_CHUNK = 64 * 1024
_HEX64 = re.compile(r"^[0-9a-f]{64}$")


def line_hash(line: bytes) -> str:
    """The sha256 hex of one line's bytes, without its newline: the next line's `prev`."""
    return hashlib.sha256(line).hexdigest()


def audit_line(record: RequestRecord, latency: float, prev: str) -> bytes:
    """The bytes of one audit line (no newline): compact JSON, ASCII only, fixed key order."""
    arrived = datetime.fromtimestamp(record.started_wall_ns / 1e9, tz=UTC)
    fields: dict[str, Any] = {
        "time": arrived.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
        "request_id": record.request_id,
        "trace_id": record.trace_id,
        "key_id": record.key_id,
        "client": record.client,
        "method": record.method,
        "path": record.path,
        "endpoint": record.endpoint,
        "model": record.model,
        "status": record.status,
        "prompt_tokens": record.prompt_tokens,
        "completion_tokens": record.completion_tokens,
        "latency_ms": round(latency * 1000, 1),
    }
    # what the policy gate did: present only when there is something to say
    if record.key_purpose is not None:
        fields["key_purpose"] = record.key_purpose
    if record.dropped_tool_calls:
        fields["dropped_tool_calls"] = record.dropped_tool_calls
    if record.guardrails:  # each rail's verdict per stage: never the text it read
        fields["guardrails"] = [summary.as_json() for summary in rail_summary(record.guardrails)]
    fields["prev"] = prev  # last, always
    return json.dumps(fields, separators=(",", ":")).encode()


def _parse(line: bytes) -> tuple[str | None, str | None]:
    """(prev, None) for an audit line, or (None, why not)."""
    try:
        parsed = json.loads(line)
    except ValueError:
        return None, "not JSON"
    if not isinstance(parsed, dict):
        return None, "not a JSON object"
    prev = parsed.get("prev")
    if not isinstance(prev, str) or not _HEX64.match(prev):
        return None, "no valid `prev` field (64 lowercase hex digits)"
    return prev, None


def _is_chain_line(line: bytes) -> bool:
    """Whether `line` is a whole audit line: a JSON object with a well-formed `prev`."""
    return _parse(line)[1] is None


def read_tail(path: Path) -> tuple[bytes | None, bytes]:
    """(the last newline-terminated line of the file or None, the bytes after it), read
    backwards from the end in chunks: a large log is not read whole."""
    with open(path, "rb") as f:
        pos = f.seek(0, os.SEEK_END)
        buf = b""
        while True:
            end = buf.rfind(b"\n")
            if end != -1:
                start = buf.rfind(b"\n", 0, end)
                if start != -1 or pos == 0:
                    return buf[start + 1 : end], buf[end + 1 :]
            elif pos == 0:
                return None, buf
            step = min(_TAIL_CHUNK, pos)
            pos -= step
            f.seek(pos)
            buf = f.read(step) + buf


class AuditLog:
    """Appends one line per finished request to `path` (created with mode 0600).

    `write` is the request-record sink: thread-safe, one `os.write` per line, no fsync
    unless `fsync=True` (then each line reaches the disk before `write` returns, at the
    cost of a disk flush per request on the event loop)."""

    def __init__(self, path: Path, *, fsync: bool = False):
        self.path = path
        self._fsync = fsync
        self._lock = threading.Lock()
        try:
            fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)
        except OSError as exc:
            raise ConfigError(f"audit log {path}: {exc.strerror or exc}") from exc
        try:
            self._prev, self._torn = self._resume()
            self._size = os.fstat(fd).st_size
        except OSError as exc:
            os.close(fd)
            raise ConfigError(f"audit log {path}: {exc.strerror or exc}") from exc
        self._fd: int | None = fd

    def _resume(self) -> tuple[str, bool]:
        """(the hash to chain to, whether the file ends in an incomplete line)."""
        last, rest = read_tail(self.path)
        if rest and _is_chain_line(rest):
            # a whole line that lost only its newline: keep it in the chain
            return line_hash(rest), True
        if rest:
            log.warning(
                "audit log %s ends in an incomplete line (a crash during a write?): "
                "continuing the chain from the last complete line; "
                "`nimble audit verify` will report the incomplete one",
                self.path,
            )
        if last is None:
            return GENESIS, bool(rest)
        if not _is_chain_line(last):
            log.warning("audit log %s: its last line is not an audit line", self.path)
        return line_hash(last), bool(rest)

    def write(self, record: RequestRecord, latency: float) -> None:
        """Append the line of one finished request (health probes are skipped)."""
        if record.path in SKIPPED_PATHS:
            return
        with self._lock:
            if self._fd is None:
                raise RuntimeError(f"audit log {self.path} is closed")
            line = audit_line(record, latency, self._prev)
            # an earlier write cut short (or a crash) left a fragment: end it first
            data = (b"\n" if self._torn else b"") + line + b"\n"
            self._check_size()
            self._write_all(data)
            self._prev = line_hash(line)
            self._torn = False
            if self._fsync:
                os.fsync(self._fd)

    def _check_size(self) -> None:
        """Warn when someone else changed the file: the chain continues from this process's
        last line regardless, so that lines removed from the end are reported by `verify`."""
        assert self._fd is not None
        size = os.fstat(self._fd).st_size
        if size != self._size:
            log.warning(
                "audit log %s changed behind nimble's back (%d bytes, expected %d)",
                self.path,
                size,
                self._size,
            )
            self._size = size

    def _write_all(self, data: bytes) -> None:
        assert self._fd is not None
        view = memoryview(data)
        try:
            while view:
                written = os.write(self._fd, view)
                self._size += written
                view = view[written:]
        except OSError:
            if len(view) < len(data):
                self._torn = True  # part of the line is in the file: the next write ends it
            raise

    def close(self) -> None:
        with self._lock:
            if self._fd is not None:
                os.close(self._fd)
                self._fd = None


@dataclass(frozen=True)
class Problem:
    """One break found by `verify`."""

    line: int | None  # None: the whole file (a missing anchor)
    message: str

    def __str__(self) -> str:
        return self.message if self.line is None else f"line {self.line}: {self.message}"


@dataclass(frozen=True)
class VerifyResult:
    """What `verify` found: `problems` holds the first `max_problems` of `problem_count`."""

    lines: int
    last_hash: str  # sha256 of the last line (the `start` hash for an empty file)
    problems: tuple[Problem, ...]
    problem_count: int
    anchor_line: int | None = None  # the line whose sha256 is the anchor, if asked and found

    @property
    def ok(self) -> bool:
        return self.problem_count == 0


def _lines(path: Path) -> Iterator[tuple[bytes, bool]]:
    """(line without newline, whether it had one), streaming."""
    with open(path, "rb") as f:
        for raw in f:
            if raw.endswith(b"\n"):
                yield raw[:-1], True
            else:
                yield raw, False


class _Walk:
    """The state of one pass over the file: hashes of recent lines, for diagnoses."""

    def __init__(self, start: str, window: int):
        self.start = start
        self.recent: dict[str, int] = {}
        self.order: deque[str] = deque()
        self.window = window
        self.last_hash = start
        self.last_valid = True
        self.hash_before_last = start  # of line n-2 while line n is checked

    def step(self, digest: str, number: int, valid: bool) -> None:
        """Line `number`, with sha256 `digest`, was checked."""
        self.hash_before_last = self.last_hash
        self.last_hash = digest
        self.last_valid = valid
        self.remember(digest, number)

    def remember(self, digest: str, number: int) -> None:
        self.recent[digest] = number
        self.order.append(digest)
        if len(self.order) > self.window:
            old = self.order.popleft()
            if self.recent.get(old, 0) <= number - self.window:
                self.recent.pop(old, None)

    def broken_link(self, number: int, prev: str) -> str:
        """Why line `number`, whose `prev` does not match the line before it, is broken."""
        if number == 1:
            return (
                f"prev is not {'64 zeros' if self.start == GENESIS else 'the expected start'}"
                ": the chain does not start here (its first lines were removed, or the "
                "file continues an earlier one)"
            )
        before = number - 1
        if not self.last_valid and prev == self.hash_before_last:
            return (
                f"chains past the incomplete line {before} to the line before it, as nimble "
                f"does after a crash during a write: the record of line {before} is lost"
            )
        if prev == GENESIS:
            return (
                "prev is 64 zeros: a new chain starts in the middle of the file (another "
                f"log appended, or lines 1-{before} replaced)"
            )
        target = self.recent.get(prev)
        if target == number - 2:
            return (
                f"chains to line {target}, skipping line {before}: line {before} was "
                "inserted or moved"
            )
        if target is not None:
            return (
                f"chains to line {target}, not line {before}: lines {target + 1}-{before} "
                "were inserted or moved"
            )
        return (
            f"prev is not the sha256 of line {before}: line {before} was edited, or "
            f"lines were removed or moved before line {number}"
        )


def verify(
    path: Path,
    *,
    start: str = GENESIS,
    anchor: str | None = None,
    max_problems: int = 20,
    window: int = 10_000,
) -> VerifyResult:
    """Check every line of the audit log at `path`: it is a JSON object, its `prev` is the
    sha256 of the line before it (`start` for the first line), and it ends in a newline.
    With `anchor` (a line hash noted earlier, e.g. a previous `last_hash`), a file that no
    longer holds that line is reported too. Streams the file; raises OSError if unreadable."""
    walk = _Walk(start, window)
    problems: list[Problem] = []
    count = 0
    anchor_line: int | None = None

    def report(number: int | None, message: str) -> None:
        nonlocal count
        count += 1
        if len(problems) < max_problems:
            problems.append(Problem(number, message))

    number = 0
    for number, (line, terminated) in enumerate(_lines(path), start=1):
        prev, invalid = _parse(line)
        if not terminated and invalid is not None:
            report(
                number,
                f"incomplete last line ({invalid}, no newline): a write cut short by a "
                "crash or a full disk, or the end of the file was cut off",
            )
        elif invalid is not None:
            report(number, f"{invalid}: an incomplete or foreign line")
        elif prev != walk.last_hash:
            report(number, walk.broken_link(number, str(prev)))
        digest = line_hash(line)
        if digest == anchor:
            anchor_line = number
        walk.step(digest, number, invalid is None)
    if anchor is not None and anchor_line is None:
        report(
            None,
            f"no line has the anchor sha256 {anchor}: the file was cut before it, or rewritten",
        )
    return VerifyResult(number, walk.last_hash, tuple(problems), count, anchor_line)
