"""The official `openai` SDK against `nimble serve` on the transformers engine (CPU)."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest

from tests.e2e.conftest import CHAT_MODEL, NimbleProcess

pytestmark = [pytest.mark.e2e, pytest.mark.models]

QUESTION = [{"role": "user", "content": "What is the capital of France?"}]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NimbleProcess]:
    # the same cache folder as tests/models/test_transformers_engine.py: one GGUF conversion
    # per test session, whichever runs first
    cache = tmp_path_factory.getbasetemp() / "transformers-engine-cache"
    process = NimbleProcess(
        ["--model", CHAT_MODEL, "--engine", "transformers", "--max-running", "2"],
        tmp_path_factory.mktemp("transformers") / "nimble.log",
        {"NIMBLE_CACHE_PATH": str(cache)},
    )
    try:
        yield process.wait_ready()
    finally:
        process.terminate()


def test_chat_with_and_without_streaming(server: NimbleProcess) -> None:
    client = server.client()
    whole = client.chat.completions.create(
        model=CHAT_MODEL, messages=QUESTION, max_tokens=16, temperature=0
    )
    text = whole.choices[0].message.content or ""
    assert "Paris" in text
    assert whole.usage is not None and whole.usage.prompt_tokens > 10
    assert 0 < whole.usage.completion_tokens <= 16

    stream = client.chat.completions.create(
        model=CHAT_MODEL,
        messages=QUESTION,
        max_tokens=16,
        temperature=0,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    pieces = [c.choices[0].delta.content or "" for c in chunks if c.choices]
    assert len([p for p in pieces if p]) >= 2
    assert "".join(pieces) == text
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices]
    assert finishes[-1] == whole.choices[0].finish_reason
    assert chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens == whole.usage.completion_tokens

    (model,) = httpx.get(server.base_url + "/v1/metadata").json()["models"]
    assert (model["engine"], model["details"]["device"]) == ("transformers", "cpu")
