"""A real `nimble serve` (fake engine: no weights) with keys, the audit log and JSON logs on:
the settings reach the app through the CLI, and the audit file verifies afterwards."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path
from typing import ClassVar

import httpx
import openai
import pytest
import yaml

from nimble.security.keys import hash_key
from tests.e2e.conftest import NimbleProcess

pytestmark = [pytest.mark.e2e]

KEY = "nb-e2e-operations-key-0123456789abcdef"


def test_keys_audit_and_json_logs_through_the_cli(
    tmp_path: Path, nimble_process: type[NimbleProcess]
) -> None:
    keys = tmp_path / "keys.yaml"
    keys.write_text(yaml.safe_dump({"keys": [{"id": "ops", "sha256": hash_key(KEY)}]}))
    audit = tmp_path / "audit.jsonl"
    server = nimble_process(
        ["--model", "fake", "--api-keys-file", str(keys), "--audit-log", str(audit)],
        env={"NIMBLE_JSONL_LOGGING": "1"},
    ).wait_ready()
    with openai.OpenAI(api_key=KEY, base_url=server.base_url + "/v1", max_retries=0) as client:
        reply = client.chat.completions.create(
            model="fake-model", messages=[{"role": "user", "content": "hello"}]
        )
    with server.client() as anonymous, pytest.raises(openai.AuthenticationError):
        anonymous.models.list()  # the default client sends no valid key
    assert httpx.get(server.base_url + "/v1/metrics").status_code == 401
    assert server.terminate() == 0

    lines = [json.loads(line) for line in audit.read_text().splitlines()]
    assert [(e["path"], e["status"], e["key_id"]) for e in lines] == [
        ("/v1/chat/completions", 200, "ops"),
        ("/v1/models", 401, None),
        ("/v1/metrics", 401, None),
    ]
    assert reply.usage is not None
    assert lines[0]["completion_tokens"] == reply.usage.completion_tokens
    verify = subprocess.run(
        [sys.executable, "-m", "nimble.cli.main", "audit", "verify", str(audit)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert verify.returncode == 0, verify.stdout + verify.stderr
    assert "ok: 3 lines" in verify.stdout

    access = [
        json.loads(line)
        for line in server.log().splitlines()
        if line.startswith("{") and '"nimble.access"' in line
    ]
    chat = next(e for e in access if e["path"] == "/v1/chat/completions")
    assert (chat["status"], chat["key_id"], chat["model"]) == (200, "ops", "fake-model")
    assert chat["request_id"] == lines[0]["request_id"]
    assert KEY not in server.log()


class _Collector(BaseHTTPRequestHandler):
    received: ClassVar[list[tuple[str, bytes]]] = []

    def do_POST(self) -> None:
        self.received.append((self.path, self.rfile.read(int(self.headers["Content-Length"]))))
        self.send_response(200)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: object) -> None:
        return None


def test_traces_reach_the_collector_named_by_the_otel_variable(
    nimble_process: type[NimbleProcess],
) -> None:
    collector = HTTPServer(("127.0.0.1", 0), _Collector)
    thread = threading.Thread(target=collector.serve_forever, daemon=True)
    thread.start()
    try:
        endpoint = f"http://127.0.0.1:{collector.server_address[1]}"
        server = nimble_process(
            ["--model", "fake"],
            env={"OTEL_EXPORTER_OTLP_ENDPOINT": endpoint, "OTEL_SERVICE_NAME": "nimble-e2e"},
        ).wait_ready()
        trace_id = "0af7651916cd43dd8448eb211c80319c"
        answer = httpx.post(
            server.base_url + "/v1/embeddings",
            json={"model": "fake-model", "input": "x"},
            headers={"traceparent": f"00-{trace_id}-b7ad6b7169203331-01"},
        )
        assert answer.headers["traceparent"].startswith(f"00-{trace_id}-")
        assert server.terminate() == 0  # shutdown flushes the batch of spans
    finally:
        collector.shutdown()
        collector.server_close()
        thread.join()
    bodies = [body for path, body in _Collector.received if path == "/v1/traces"]
    assert bodies, "no spans were exported"
    exported = b"".join(bodies)
    assert b"nimble-e2e" in exported and b"nimble.engine" in exported
    assert bytes.fromhex(trace_id) in exported
