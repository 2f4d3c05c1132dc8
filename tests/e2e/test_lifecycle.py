"""Process-level behaviour: overload 429, disconnects free slots, SIGTERM drain, load failures."""

from __future__ import annotations

import signal
import time
from pathlib import Path

import httpx
import pytest

from tests.e2e.conftest import CHAT_MODEL, NimbleProcess

pytestmark = [pytest.mark.e2e, pytest.mark.models]

LONG = {
    "model": CHAT_MODEL,
    "messages": [{"role": "user", "content": "Write a very long story about a dragon."}],
    "max_tokens": 4000,
    "temperature": 0.9,
}
SHORT = {**LONG, "max_tokens": 2}


def _one_slot(nimble_process: type[NimbleProcess]) -> NimbleProcess:
    return nimble_process(
        ["--model", CHAT_MODEL, "--max-running", "1", "--max-waiting", "0"]
    ).wait_ready()


def _admitted_again(server: NimbleProcess, deadline_s: float = 10.0) -> bool:
    """True once a short request is admitted (not 429). A 4000-token generation still holding
    the only slot would take over a minute on this model, so success means it was aborted."""
    deadline = time.monotonic() + deadline_s
    while time.monotonic() < deadline:
        response = httpx.post(server.base_url + "/v1/chat/completions", json=SHORT, timeout=30)
        if response.status_code == 200:
            return True
        assert response.status_code == 429, response.text
    return False


def test_overload_429_then_streaming_disconnect_frees_slot(
    nimble_process: type[NimbleProcess],
) -> None:
    server = _one_slot(nimble_process)
    with (
        httpx.Client(base_url=server.base_url, timeout=60) as client,
        client.stream("POST", "/v1/chat/completions", json={**LONG, "stream": True}) as r,
    ):
        lines = r.iter_lines()
        assert next(line for line in lines if line.startswith("data: "))
        refused = httpx.post(server.base_url + "/v1/chat/completions", json=SHORT)
        assert refused.status_code == 429
        assert refused.json()["error"]["type"] == "rate_limit_error"
        assert int(refused.headers["retry-after"]) >= 1
    # leaving the block closed the connection mid-stream
    assert _admitted_again(server)


def test_non_streaming_disconnect_frees_slot(nimble_process: type[NimbleProcess]) -> None:
    server = _one_slot(nimble_process)
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(server.base_url + "/v1/chat/completions", json=LONG, timeout=1.5)
    assert _admitted_again(server)


def test_sigterm_drains_in_flight_then_exits_zero(nimble_process: type[NimbleProcess]) -> None:
    server = nimble_process(["--model", CHAT_MODEL, "--drain-timeout", "60"]).wait_ready()
    body = {**LONG, "max_tokens": 120, "stream": True, "stream_options": {"include_usage": True}}
    with (
        httpx.Client(base_url=server.base_url, timeout=60) as client,
        client.stream("POST", "/v1/chat/completions", json=body) as r,
    ):
        lines = r.iter_lines()
        assert next(line for line in lines if line.startswith("data: "))
        server.proc.send_signal(signal.SIGTERM)
        server.wait_status("/v1/health/ready", 503)
        refused = client.post("/v1/chat/completions", json=SHORT)
        assert refused.status_code == 503
        assert refused.json()["error"]["type"] == "service_unavailable_error"
        rest = [line for line in lines if line.startswith("data: ")]
    assert rest[-1] == "data: [DONE]"
    assert '"completion_tokens":120' in rest[-2]
    assert server.proc.wait(timeout=60) == 0


@pytest.mark.parametrize(
    ("content", "engine", "cause"),
    [
        (None, None, "no such file"),
        (b"not a gguf file at all", None, "GGUF"),
        (b"GGUF" + b"\x03\x00\x00\x00" + b"\xff" * 64, None, "load"),
        (b"GGUF", "warp-drive", "unknown engine"),
    ],
    ids=["missing", "not-gguf", "corrupt-gguf", "unknown-engine"],
)
def test_unloadable_model_exits_nonzero_with_one_line(
    nimble_process: type[NimbleProcess],
    tmp_path: Path,
    content: bytes | None,
    engine: str | None,
    cause: str,
) -> None:
    path = tmp_path / "broken.gguf"
    if content is not None:
        path.write_bytes(content)
    args = ["--model", str(path)] + (["--engine", engine] if engine else [])
    server = nimble_process(args)
    assert server.proc.wait(timeout=60) != 0
    lines = [line for line in server.log().splitlines() if line.startswith("nimble: ")]
    assert len(lines) == 1, server.log()
    assert str(path) in lines[0] and cause.lower() in lines[0].lower(), lines[0]
