"""Start a real `nimble serve` process on a free port; poll (never sleep) until it is ready."""

from __future__ import annotations

import http.client
import os
import select
import signal
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, cast

import httpx
import openai
import pytest

CHAT_MODEL = "smollm2-135m-instruct"
EMBED_MODEL = "all-minilm-l6-v2"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class NimbleProcess:
    """A `nimble serve` (or `nimble gateway`) subprocess with its log in a file."""

    def __init__(
        self,
        args: list[str],
        log_path: Path,
        env: dict[str, str] | None = None,
        *,
        scheme: str = "http",
        verify: ssl.SSLContext | bool = True,
        command: str = "serve",
        port: int | None = None,
    ):
        self.port = port or free_port()
        self.base_url = f"{scheme}://127.0.0.1:{self.port}"
        self.verify = verify  # what polling trusts (and presents, for mutual TLS)
        self.log_path = log_path
        self._log = log_path.open("wb")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "nimble.cli.main", command, "--port", str(self.port), *args],
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env={**os.environ, **(env or {})},
        )

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_status(self, path: str, status: int, timeout: float = 120.0) -> None:
        """Poll `path` until it answers `status` (fails if the process dies or time runs out)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"nimble exited {self.proc.returncode}:\n{self.log()}")
            try:
                answer = httpx.get(self.base_url + path, timeout=2, verify=self.verify)
                if answer.status_code == status:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.05)  # polling interval, not a wait for readiness
        raise AssertionError(f"{path} never answered {status}:\n{self.log()}")

    def wait_ready(self) -> NimbleProcess:
        self.wait_status("/v1/health/ready", 200)
        return self

    def client(self, **kwargs: object) -> openai.OpenAI:
        return openai.OpenAI(
            api_key="unused",
            base_url=self.base_url + "/v1",
            max_retries=0,
            **kwargs,  # type: ignore[arg-type]
        )

    def terminate(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()
        return self.proc.returncode


@pytest.fixture
def nimble_process(tmp_path: Path) -> Iterator[type[NimbleProcess]]:
    """Factory for processes that the test starts; all are stopped at the end."""
    started: list[NimbleProcess] = []
    counter = iter(range(1000))

    class Tracked(NimbleProcess):
        def __init__(self, args: list[str], env: dict[str, str] | None = None, **kwargs: Any):
            super().__init__(args, tmp_path / f"nimble-{next(counter)}.log", env, **kwargs)
            started.append(self)

    yield Tracked  # type: ignore[misc]
    for process in started:
        process.terminate()


@pytest.fixture(scope="module")
def default_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NimbleProcess]:
    """`nimble serve` with no model arguments: the two default models."""
    process = NimbleProcess([], tmp_path_factory.mktemp("default") / "nimble.log")
    try:
        yield process.wait_ready()
    finally:
        process.terminate()


def idle_connection(url: str) -> socket.socket:
    """A connection that has had one answered request (GET /v1/health/live) and is idle."""
    host, port = url.removeprefix("http://").split(":")
    connection = http.client.HTTPConnection(host, int(port), timeout=30)
    connection.request("GET", "/v1/health/live")
    response = connection.getresponse()
    assert response.status == 200 and response.read()
    assert response.getheader("connection", "keep-alive").lower() != "close"
    assert connection.sock is not None
    return cast(socket.socket, connection.sock)


def seconds_until_closed(sock: socket.socket, timeout: float = 30.0) -> float:
    """Seconds until the server closes an idle connection (it sends nothing else first);
    closes our end too."""
    idle = time.monotonic()
    readable, _, _ = select.select([sock], [], [], timeout)
    waited = time.monotonic() - idle
    try:
        assert readable == [sock], f"still open after {timeout:.0f} s"
        assert sock.recv(1) == b"", "the server sent something on an idle connection"
    finally:
        sock.close()
    return waited
