"""A real `nimble serve` (fake engine: no weights) with keys, the audit log and JSON logs on:
the settings reach the app through the CLI, and the audit file verifies afterwards."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

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
