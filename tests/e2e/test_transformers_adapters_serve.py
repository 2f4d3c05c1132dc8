"""LoRA adapters on `nimble serve --engine transformers`: one static (`--lora`), one loaded and
unloaded at run time (`--runtime-adapters`, vLLM's endpoints), asked with the official
`openai` client and checked against peft's own answers on the same weights."""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import openai
import pytest
from transformers import AutoTokenizer

from tests.e2e.conftest import CHAT_MODEL, NimbleProcess
from tests.support.lora import (
    build_lora,
    one_thread,
    peft_greedy,
    peft_reference,
    smollm2_folder,
)
from tests.support.tiny_llama import build_tiny_llama

pytestmark = [pytest.mark.e2e, pytest.mark.models]

TOKENS = 10
QUESTIONS = ("Name a color.", "What is the capital of France?")


@pytest.fixture(scope="module")
def folders(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    # the cache of the other transformers tests: one GGUF conversion per test session
    cache = tmp_path_factory.getbasetemp() / "transformers-engine-cache"
    out = tmp_path_factory.mktemp("adapters")
    base = smollm2_folder(cache)
    return {
        "cache": cache,
        "base": base,
        "pirate": build_lora(base, out / "pirate", seed=3),
        "parrot": build_lora(base, out / "parrot", seed=4),
        "narrow": build_lora(build_tiny_llama(out / "tiny"), out / "narrow", seed=3),
    }


@pytest.fixture(scope="module")
def expected(folders: dict[str, Path]) -> dict[tuple[str | None, str], str]:
    """peft's greedy answers, by (adapter, question)."""
    model = peft_reference(folders["base"], {n: folders[n] for n in ("pirate", "parrot")})
    tokenizer = AutoTokenizer.from_pretrained(folders["base"])
    with one_thread():
        return {
            (name, q): peft_greedy(model, tokenizer, name, q, TOKENS)
            for name in (None, "pirate", "parrot")
            for q in QUESTIONS
        }


@pytest.fixture(scope="module")
def server(
    folders: dict[str, Path],
    expected: dict[tuple[str | None, str], str],  # first: peft and the server share 2 cores
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[NimbleProcess]:
    # one thread: two engines of the suite may share the 2 cores (llama.cpp's threads spin)
    args = [
        "--model",
        CHAT_MODEL,
        "--engine",
        "transformers",
        "--max-running",
        "4",
        "--threads",
        "1",
    ]
    args += ["--lora", f"pirate={folders['pirate']}", "--runtime-adapters"]
    process = NimbleProcess(
        args,
        tmp_path_factory.mktemp("transformers-adapters") / "nimble.log",
        {"NIMBLE_CACHE_PATH": str(folders["cache"])},
    )
    try:
        yield process.wait_ready()
    finally:
        process.terminate()


def ask(client: openai.OpenAI, model: str, question: str) -> str:
    answer = client.chat.completions.create(
        model=model,
        messages=[{"role": "user", "content": question}],
        max_tokens=TOKENS,
        temperature=0,
    )
    return answer.choices[0].message.content or ""


def test_static_and_runtime_adapters(
    server: NimbleProcess,
    folders: dict[str, Path],
    expected: dict[tuple[str | None, str], str],
) -> None:
    client = server.client()
    models = {m.id: m for m in client.models.list()}
    assert getattr(models["pirate"], "parent", None) == CHAT_MODEL
    assert "parrot" not in models
    assert ask(client, "pirate", QUESTIONS[0]) == expected[("pirate", QUESTIONS[0])]

    loaded = httpx.post(
        server.base_url + "/v1/load_lora_adapter",
        json={"lora_name": "parrot", "lora_path": str(folders["parrot"])},
    )
    assert loaded.status_code == 200, loaded.text
    assert ask(client, "parrot", QUESTIONS[0]) == expected[("parrot", QUESTIONS[0])]

    # the base model and both adapters, interleaved at 4 concurrent requests
    asked = [(name, q) for q in QUESTIONS for name in (None, "pirate", "parrot")]
    with ThreadPoolExecutor(4) as pool:
        answers = list(pool.map(lambda case: ask(client, case[0] or CHAT_MODEL, case[1]), asked))
    assert answers == [expected[case] for case in asked]
    assert len({expected[(name, QUESTIONS[0])] for name in (None, "pirate", "parrot")}) == 3

    unloaded = httpx.post(server.base_url + "/v1/unload_lora_adapter", json={"lora_name": "parrot"})
    assert unloaded.status_code == 200, unloaded.text
    with pytest.raises(openai.NotFoundError):
        ask(client, "parrot", QUESTIONS[0])
    assert ask(client, "pirate", QUESTIONS[1]) == expected[("pirate", QUESTIONS[1])]


def test_an_adapter_for_another_model_is_refused_in_one_line(
    server: NimbleProcess, folders: dict[str, Path]
) -> None:
    refused = httpx.post(
        server.base_url + "/v1/load_lora_adapter",
        json={"lora_name": "narrow", "lora_path": str(folders["narrow"])},
    )
    assert refused.status_code == 400
    error = refused.json()["error"]
    assert error["message"].startswith(f"{folders['narrow']}: not a LoRA adapter for model")
    assert "other dimensions" in error["message"] and "\n" not in error["message"]
    assert error["param"] == "lora_path"
    assert (
        httpx.post(
            server.base_url + "/v1/chat/completions",
            json={"model": "narrow", "messages": [{"role": "user", "content": "Hi"}]},
        ).status_code
        == 404
    )
