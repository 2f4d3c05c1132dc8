"""The audit log: the chain it writes, its continuation after a restart or a crash, and
`verify` finding edited, removed, moved, inserted, foreign and incomplete lines."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import stat
import threading
from pathlib import Path

import pytest

from nimble.errors import ConfigError
from nimble.observability.record import RequestRecord
from nimble.security import audit
from nimble.security.audit import GENESIS, AuditLog, read_tail, verify


def record(n: int, *, path: str = "/v1/chat/completions", status: int = 200) -> RequestRecord:
    return RequestRecord(
        request_id=f"req-{n}",
        method="POST",
        path=path,
        endpoint="chat",
        client="10.0.0.1:5000",
        key_id="analytics",
        status=status,
        trace_id="ab" * 16,
        model="fake-model",
        prompt_tokens=7,
        completion_tokens=n,
        started_wall_ns=1_700_000_000_123_456_789,
    )


def write_log(path: Path, count: int, first: int = 0) -> None:
    log = AuditLog(path)
    for n in range(first, first + count):
        log.write(record(n), 0.0125)
    log.close()


def lines_of(path: Path) -> list[bytes]:
    return path.read_bytes().splitlines()


def sha(line: bytes) -> str:
    return hashlib.sha256(line).hexdigest()


def test_lines_hold_the_fields_and_chain_by_sha256(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    write_log(path, 3)
    lines = lines_of(path)
    assert len(lines) == 3
    first = json.loads(lines[0])
    assert first == {
        "time": "2023-11-14T22:13:20.123Z",
        "request_id": "req-0",
        "trace_id": "ab" * 16,
        "key_id": "analytics",
        "client": "10.0.0.1:5000",
        "method": "POST",
        "path": "/v1/chat/completions",
        "endpoint": "chat",
        "model": "fake-model",
        "status": 200,
        "prompt_tokens": 7,
        "completion_tokens": 0,
        "latency_ms": 12.5,
        "prev": GENESIS,
    }
    assert b" " not in lines[0]  # compact
    assert json.loads(lines[1])["prev"] == sha(lines[0])
    assert json.loads(lines[2])["prev"] == sha(lines[1])
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    result = verify(path)
    assert result.ok and result.lines == 3 and result.problems == ()
    assert result.last_hash == sha(lines[2])


def test_health_probes_are_skipped_and_errors_are_kept(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    log = AuditLog(path)
    log.write(record(0, path="/v1/health/live"), 0.001)
    log.write(record(1, path="/v1/health/ready", status=503), 0.001)
    for status in (401, 403, 404, 429):
        log.write(record(status, status=status), 0.001)
    log.close()
    assert [json.loads(line)["status"] for line in lines_of(path)] == [401, 403, 404, 429]


def test_reopening_continues_the_chain(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    write_log(path, 2)
    write_log(path, 2, first=2)
    lines = lines_of(path)
    assert [json.loads(line)["request_id"] for line in lines] == [f"req-{n}" for n in range(4)]
    assert json.loads(lines[2])["prev"] == sha(lines[1])
    assert verify(path).ok


def test_the_tail_is_read_from_the_end_across_chunks(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(audit, "_TAIL_CHUNK", 7)  # lines span several chunks
    path = tmp_path / "audit.jsonl"
    write_log(path, 3)
    lines = lines_of(path)
    assert read_tail(path) == (lines[-1], b"")
    write_log(path, 1, first=3)
    assert verify(path).ok
    path.write_bytes(b"only fragment")
    assert read_tail(path) == (None, b"only fragment")
    path.write_bytes(b"one\n")
    assert read_tail(path) == (b"one", b"")
    path.write_bytes(b"")
    assert read_tail(path) == (None, b"")


def test_a_crash_mid_line_is_ended_and_chained_past_and_verify_names_it(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "audit.jsonl"
    write_log(path, 3)
    whole = lines_of(path)
    with open(path, "ab") as f:
        f.write(whole[0][:40])  # a write cut short
    result = verify(path)
    assert not result.ok
    assert result.problems[0].line == 4
    assert "incomplete last line" in result.problems[0].message

    with caplog.at_level(logging.WARNING, logger="nimble.audit"):
        write_log(path, 2, first=3)
    assert "incomplete line" in caplog.text
    lines = lines_of(path)
    assert len(lines) == 6
    assert lines[3] == whole[0][:40]
    assert json.loads(lines[4])["prev"] == sha(lines[2])  # chained to the last whole line
    result = verify(path)
    assert [p.line for p in result.problems] == [4, 5]
    assert "not JSON" in result.problems[0].message
    assert "past the incomplete line 4" in result.problems[1].message
    assert result.last_hash == sha(lines[5])


def test_a_whole_line_that_lost_only_its_newline_stays_in_the_chain(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    write_log(path, 2)
    path.write_bytes(path.read_bytes()[:-1])
    assert verify(path).ok  # nothing is lost
    write_log(path, 1, first=2)
    assert len(lines_of(path)) == 3
    assert verify(path).ok


def test_a_failed_write_is_ended_by_the_next_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "audit.jsonl"
    log = AuditLog(path)
    log.write(record(0), 0.01)
    real_write = os.write
    calls = 0

    def disk_full(fd: int, data: bytes | memoryview) -> int:
        nonlocal calls
        calls += 1
        if calls == 1:
            return real_write(fd, bytes(data[:10]))
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(audit.os, "write", disk_full)
    with pytest.raises(OSError):
        log.write(record(1), 0.01)
    monkeypatch.setattr(audit.os, "write", real_write)
    log.write(record(2), 0.01)
    log.close()
    lines = lines_of(path)
    assert len(lines) == 3 and len(lines[1]) == 10
    assert json.loads(lines[2])["prev"] == sha(lines[0])
    assert [p.line for p in verify(path).problems] == [2, 3]


def test_concurrent_writers_from_threads_lose_no_line(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    log = AuditLog(path)

    def burst(base: int) -> None:
        for n in range(base, base + 200):
            log.write(record(n), 0.001)

    threads = [threading.Thread(target=burst, args=(1000 * t,)) for t in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    log.close()
    result = verify(path)
    assert result.ok and result.lines == 1600
    ids = {json.loads(line)["request_id"] for line in lines_of(path)}
    assert len(ids) == 1600


def test_write_after_close_raises(tmp_path: Path) -> None:
    log = AuditLog(tmp_path / "audit.jsonl")
    log.close()
    log.close()  # idempotent
    with pytest.raises(RuntimeError, match="closed"):
        log.write(record(0), 0.01)


def test_an_unwritable_path_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="audit log"):
        AuditLog(tmp_path / "missing-dir" / "audit.jsonl")


# --- verify ---


@pytest.fixture
def chain(tmp_path: Path) -> Path:
    path = tmp_path / "audit.jsonl"
    write_log(path, 8)
    return path


def rewrite(path: Path, lines: list[bytes]) -> None:
    path.write_bytes(b"".join(line + b"\n" for line in lines))


def test_verify_finds_an_edited_line_at_the_next_one(chain: Path) -> None:
    lines = lines_of(chain)
    lines[3] = lines[3].replace(b'"status":200', b'"status":201')
    rewrite(chain, lines)
    result = verify(chain)
    assert not result.ok and result.problem_count == 1
    assert result.problems[0].line == 5
    assert "not the sha256 of line 4: line 4 was edited" in result.problems[0].message
    assert str(result.problems[0]).startswith("line 5: ")


def test_verify_finds_a_removed_line(chain: Path) -> None:
    lines = lines_of(chain)
    del lines[2]
    rewrite(chain, lines)
    result = verify(chain)
    assert [p.line for p in result.problems] == [3]
    assert "removed" in result.problems[0].message


def test_verify_finds_moved_lines(chain: Path) -> None:
    lines = lines_of(chain)
    lines[4], lines[5] = lines[5], lines[4]
    rewrite(chain, lines)
    result = verify(chain)
    assert [p.line for p in result.problems] == [5, 6, 7]
    assert "chains to line 4, skipping line 5" in result.problems[1].message


def test_verify_finds_an_inserted_line_even_when_it_chains(chain: Path) -> None:
    lines = lines_of(chain)
    forged = json.loads(lines[2])
    forged["request_id"] = "forged"
    forged["prev"] = sha(lines[1])  # a well-formed link to the line before it
    lines.insert(2, json.dumps(forged, separators=(",", ":")).encode())
    rewrite(chain, lines)
    result = verify(chain)
    assert [p.line for p in result.problems] == [4]
    assert "chains to line 2, skipping line 3: line 3 was inserted" in str(result.problems[0])


def test_verify_finds_non_json_lines(chain: Path) -> None:
    lines = lines_of(chain)
    lines[1] = b"hello"
    lines[5] = b'{"no": "prev"}'
    rewrite(chain, lines)
    result = verify(chain)
    assert [p.line for p in result.problems] == [2, 3, 6, 7]
    assert "not JSON" in result.problems[0].message
    assert "no valid `prev`" in result.problems[2].message


def test_verify_finds_a_truncated_last_line(chain: Path) -> None:
    chain.write_bytes(chain.read_bytes()[:-30])
    result = verify(chain)
    assert [p.line for p in result.problems] == [8]
    assert "incomplete last line" in result.problems[0].message


def test_verify_finds_lines_removed_from_the_top_and_a_restarted_chain(chain: Path) -> None:
    lines = lines_of(chain)
    rewrite(chain, lines[2:])
    result = verify(chain)
    assert [p.line for p in result.problems] == [1]
    assert "does not start here" in result.problems[0].message
    assert verify(chain, start=sha(lines[1])).ok  # a file continuing an earlier one

    other = chain.with_name("other.jsonl")
    write_log(other, 2)
    rewrite(chain, lines + lines_of(other))
    result = verify(chain)
    assert [p.line for p in result.problems] == [9]
    assert "new chain starts" in result.problems[0].message


def test_verify_anchor_finds_a_cut_tail(chain: Path) -> None:
    lines = lines_of(chain)
    noted = verify(chain).last_hash
    assert verify(chain, anchor=noted).anchor_line == 8
    rewrite(chain, lines[:6])  # the tail cut off: the chain alone is still whole
    assert verify(chain).ok
    result = verify(chain, anchor=noted)
    assert not result.ok and result.problems[0].line is None
    assert "anchor" in str(result.problems[0])


def test_verify_counts_every_problem_but_keeps_the_first_few(chain: Path) -> None:
    rewrite(chain, [b"x"] * 30)
    result = verify(chain, max_problems=5)
    assert result.problem_count == 30 and len(result.problems) == 5
    assert result.problems[0].line == 1


def test_verify_an_empty_file(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    path.write_bytes(b"")
    result = verify(path)
    assert result.ok and result.lines == 0 and result.last_hash == GENESIS
    with pytest.raises(OSError):
        verify(tmp_path / "missing.jsonl")
