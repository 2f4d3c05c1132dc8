"""llama.cpp's prefix cache, as nimble reports it: `usage.prompt_tokens_details.cached_tokens`
and `nimble_prompt_tokens_cached_total`; and `--prompt-cache-mib`, the host memory that keeps
prompts warm beyond the running slots (what prefix-aware routing counts on)."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest

from tests.clients.conftest import CHAT_MODEL, NimbleProcess

pytestmark = [pytest.mark.e2e, pytest.mark.models]

ONE = "alpha bravo charlie delta " * 50  # ~200 tokens each, nothing shared
TWO = "echo foxtrot golf hotel " * 50


def cached(server: NimbleProcess, prompt: str) -> int:
    body = {"model": CHAT_MODEL, "prompt": prompt, "max_tokens": 1, "temperature": 0}
    answer = httpx.post(server.base_url + "/v1/completions", json=body, timeout=60)
    assert answer.status_code == 200, answer.text
    usage = answer.json()["usage"]
    assert usage["prompt_tokens"] > 150
    return int(usage["prompt_tokens_details"]["cached_tokens"])


@pytest.fixture(params=[None, "0"], ids=["default host cache", "no host cache"])
def one_slot(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[NimbleProcess, str | None]]:
    args = ["--model", CHAT_MODEL, "--max-running", "1"]
    if request.param is not None:
        args += ["--prompt-cache-mib", request.param]
    process = NimbleProcess(args, tmp_path_factory.mktemp("cache") / "nimble.log")
    try:
        yield process.wait_ready(), request.param
    finally:
        process.terminate()


def test_a_prompt_seen_before_is_read_from_the_cache(
    one_slot: tuple[NimbleProcess, str | None],
) -> None:
    server, mib = one_slot
    seen = [cached(server, ONE)]
    assert seen[-1] <= 1  # cold: at most the BOS token of the warm-up
    seen.append(cached(server, ONE))
    assert seen[-1] > 150  # the slot still holds it
    seen.append(cached(server, TWO))
    assert seen[-1] <= 1
    # ONE left the only slot for TWO: only the host cache can have kept it
    seen.append(cached(server, ONE))
    if mib == "0":
        assert seen[-1] <= 1
    else:
        assert seen[-1] > 150
    metrics = httpx.get(server.base_url + "/metrics", timeout=10).text
    name = f'nimble_prompt_tokens_cached_total{{model_name="{CHAT_MODEL}"}}'
    line = next(x for x in metrics.splitlines() if x.startswith(name))
    assert float(line.rsplit(" ", 1)[1]) == sum(seen)
