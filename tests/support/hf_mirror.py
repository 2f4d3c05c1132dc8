"""A local "Hugging Face mirror" on 127.0.0.1: files served the way the Hub serves them
(`/<org>/<repo>/resolve/<revision>/<path>`, Range requests, 401 for gated repos), with knobs
to break transfers. Import `mirror_fixture` (the fixture `mirror`) and `Mirror` into a test
module."""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import pytest


@dataclass
class Request:
    path: str
    range: str | None
    authorization: str | None


@dataclass
class Mirror:
    """Files under `folder/<org>/<repo>/<revision>/<path>`, served the way the Hub does."""

    folder: Path
    url: str = ""
    requests: list[Request] = field(default_factory=list)
    sent: list[int] = field(default_factory=list)  # body bytes of each file response
    cut_after: int | None = None  # the next file response breaks off after this many bytes
    ignore_range: bool = False
    chunk_delay: float = 0.0  # seconds between 16 KB chunks (a slow server)
    hold: threading.Event | None = None  # file bodies wait for this event
    token: str = "hf_secret_token_42"  # what repositories of the org `gated` require
    stop: Any = None

    def publish(self, data: bytes, repo: str = "org/repo", path: str = "weights/model.bin") -> str:
        file = self.folder / repo / "v1" / path
        file.parent.mkdir(parents=True, exist_ok=True)
        file.write_bytes(data)
        return f"hf://{repo}@v1/{path}"


class _Handler(BaseHTTPRequestHandler):
    mirror: Mirror  # set on a subclass per server

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_GET(self) -> None:
        mirror = self.mirror
        mirror.requests.append(
            Request(self.path, self.headers.get("Range"), self.headers.get("Authorization"))
        )
        match = re.fullmatch(r"/([^/]+)/([^/]+)/resolve/([^/]+)/(.+)", unquote(self.path))
        if match is None:
            return self._answer(404)
        org, repo, revision, path = match.groups()
        if org == "gated" and self.headers.get("Authorization") != f"Bearer {mirror.token}":
            return self._answer(401)
        file = mirror.folder / org / repo / revision / path
        if not file.is_file():
            return self._answer(404)
        data = file.read_bytes()
        start = 0
        wanted = re.fullmatch(r"bytes=(\d+)-", self.headers.get("Range", ""))
        if wanted and not mirror.ignore_range:
            start = int(wanted[1])
            if start >= len(data):
                return self._answer(416, {"Content-Range": f"bytes */{len(data)}"})
        body = data[start:]
        self.send_response(206 if start else 200)
        self.send_header("Content-Length", str(len(body)))
        if start:
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        self.end_headers()
        if mirror.hold is not None:
            mirror.hold.wait(30)
        if mirror.cut_after is not None:
            body, mirror.cut_after = body[: mirror.cut_after], None
        mirror.sent.append(len(body))  # before writing: the client may finish first
        for offset in range(0, len(body), 16384):
            self.wfile.write(body[offset : offset + 16384])
            if mirror.chunk_delay:
                time.sleep(mirror.chunk_delay)

    def _answer(self, status: int, headers: dict[str, str] | None = None) -> None:
        self.send_response(status)
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.send_header("Content-Length", "0")
        self.end_headers()


@pytest.fixture(name="mirror")
def mirror_fixture(tmp_path: Path) -> Iterator[Mirror]:
    mirror = Mirror(tmp_path / "mirror")
    handler = type("Handler", (_Handler,), {"mirror": mirror})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, args=(0.02,), daemon=True)
    thread.start()
    mirror.url = f"http://127.0.0.1:{server.server_address[1]}"
    stopped = False

    def stop() -> None:
        nonlocal stopped
        if not stopped:
            stopped = True
            if mirror.hold is not None:
                mirror.hold.set()
            server.shutdown()
            server.server_close()
            thread.join(10)

    mirror.stop = stop
    try:
        yield mirror
    finally:
        stop()
