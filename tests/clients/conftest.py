"""The clients people point at an OpenAI- or Anthropic-compatible server, run end to end
against one live `nimble serve` of the real SmolLM2 model (shared by the whole package:
each server start costs seconds)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.e2e.conftest import CHAT_MODEL, NimbleProcess

__all__ = ["CHAT_MODEL", "NimbleProcess"]


@pytest.fixture(scope="package")
def smollm2(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NimbleProcess]:
    """`nimble serve --model smollm2-135m-instruct` on a free port, ready."""
    log = tmp_path_factory.mktemp("clients") / "nimble.log"
    process = NimbleProcess(["--model", CHAT_MODEL, "--max-running", "4"], log)
    try:
        yield process.wait_ready()
    finally:
        process.terminate()
