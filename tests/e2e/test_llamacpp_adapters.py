"""LoRA adapters on the llama.cpp engine, for real: `nimble serve` with SmolLM2-135M and two
adapters fitted for it (tests/support/smollm2_lora.py: `pirate` and `robot`, each teaching
the model one fixed reply), driven with the official openai client.

One server for the module (adapters on the command line, run-time loading on). Greedy
decoding (temperature 0) everywhere: each model's answer to a question is one string. The
adapters' replies win each token by a wide logit margin, so they cannot drift with batch
composition; the base model's answers are compared as they are too.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from nimble.models import resolve_model
from tests.e2e.conftest import CHAT_MODEL, NimbleProcess
from tests.support.smollm2_lora import (
    PIRATE,
    ROBOT,
    TRAINING_QUESTIONS,
    Adapter,
    build_adapters,
    mismatched_adapter,
)

pytestmark = [pytest.mark.e2e, pytest.mark.models]

QUESTIONS = (*TRAINING_QUESTIONS[:3], "Name three colors.")  # the last one was not fitted
MAX_TOKENS = 16  # the adapters' replies are 15-17 tokens; their first word tells
SLOTS = 4
NIMBLE_SERVE = [sys.executable, "-m", "nimble.cli.main", "serve", "--port", "0"]


@pytest.fixture(scope="module")
def adapters(tmp_path_factory: pytest.TempPathFactory) -> tuple[Adapter, Adapter]:
    return build_adapters(tmp_path_factory.mktemp("adapters"))


@pytest.fixture(scope="module")
def server(
    tmp_path_factory: pytest.TempPathFactory, adapters: tuple[Adapter, Adapter]
) -> Iterator[NimbleProcess]:
    pirate, robot = adapters
    args = ["--model", CHAT_MODEL, "--max-batch-size", str(SLOTS), "--runtime-adapters"]
    args += ["--lora", f"pirate={pirate.path}", "--lora", f"robot={robot.path}"]
    process = NimbleProcess(args, tmp_path_factory.mktemp("serve") / "nimble.log")
    try:
        yield process.wait_ready()
    finally:
        process.terminate()


def answer(client: openai.OpenAI, model: str, question: str, **extra: Any) -> str:
    """The streamed greedy answer (every chunk joined)."""
    stream = client.chat.completions.create(
        model=model,
        messages=[{"role": "user", "content": question}],
        temperature=0,
        max_tokens=extra.pop("max_tokens", MAX_TOKENS),
        stream=True,
        **extra,
    )
    return "".join(c.choices[0].delta.content or "" for c in stream if c.choices)


def engine_alone(adapter_paths: list[Path], lora: list[dict[str, Any]] | None) -> list[str]:
    """The answers to QUESTIONS from llama.cpp itself (xllamacpp.Server, no nimble), with
    the adapters loaded as nimble loads them and the request's `lora` field."""
    import xllamacpp

    params = xllamacpp.CommonParams()
    params.model.path = str(resolve_model(CHAT_MODEL).weights)
    params.n_parallel = 1
    params.n_ctx = 4096
    params.cpuparams.n_threads = params.cpuparams_batch.n_threads = 2
    params.hostnames, params.port, params.ui = ["127.0.0.1"], 0, False
    params.verbosity = 1
    infos = []
    for path in adapter_paths:
        info = xllamacpp.CommonAdapterLoraInfo()
        info.path, info.scale = str(path), 1.0
        infos.append(info)
    params.lora_adapters = infos
    params.lora_init_without_apply = bool(infos)
    handlers = {n: signal.getsignal(n) for n in (signal.SIGINT, signal.SIGTERM)}
    try:
        server = xllamacpp.Server(params)
    finally:
        for number, handler in handlers.items():  # llama.cpp takes them
            signal.signal(number, handler)
    texts = []
    for question in QUESTIONS:
        body: dict[str, Any] = {
            "messages": [{"role": "user", "content": question}],
            "temperature": 0,
            "max_tokens": MAX_TOKENS,
        }
        if lora is not None:
            body["lora"] = lora
        results: list[Any] = []
        server.handle_chat_completions(body, results.append)  # None: go on
        texts.append(results[-1]["choices"][0]["message"]["content"])
    del server
    return texts


@pytest.fixture(scope="module")
def references(server: NimbleProcess) -> dict[str, list[str]]:
    """Each model's answers to QUESTIONS, one request at a time."""
    with server.client() as client:
        models = (CHAT_MODEL, "pirate", "robot")
        return {m: [answer(client, m, q) for q in QUESTIONS] for m in models}


def test_adapters_answer_as_the_engine_alone_does(
    adapters: tuple[Adapter, Adapter], references: dict[str, list[str]]
) -> None:
    """(1) Each adapter changes every answer, into its own reply, and answers exactly what
    llama.cpp alone answers with that adapter; the base model, served beside the adapters,
    answers what llama.cpp without any adapter does."""
    paths = [adapter.path for adapter in adapters]
    for i, (model, reply) in enumerate((("pirate", PIRATE), ("robot", ROBOT))):
        lora = [{"id": j, "scale": 1.0 if j == i else 0.0} for j in range(len(paths))]
        assert references[model] == engine_alone(paths, lora)
        for text, base in zip(references[model], references[CHAT_MODEL], strict=True):
            assert text.startswith(reply[:20]) and text != base
    assert references[CHAT_MODEL] == engine_alone([], None)


def test_interleaved_requests_are_never_mixed_up(
    server: NimbleProcess, references: dict[str, list[str]]
) -> None:
    """(2) 100 streamed requests cycling through the base model and both adapters, 4 at a
    time: each answer is its own model's."""
    models = (CHAT_MODEL, "pirate", "robot")
    jobs = [(models[i % 3], i % len(QUESTIONS)) for i in range(100)]
    with server.client() as client, ThreadPoolExecutor(SLOTS) as pool:
        answers = list(pool.map(lambda job: answer(client, job[0], QUESTIONS[job[1]]), jobs))
    wrong = [
        (model, QUESTIONS[q], text)
        for (model, q), text in zip(jobs, answers, strict=True)
        if text != references[model][q]
    ]
    assert wrong == []


class Streaming:
    """A long greedy stream on `model` in a thread (max_tokens, never ending early) that
    reads its first piece, then waits for `go` before reading the rest."""

    def __init__(self, client: openai.OpenAI, model: str):
        self.text: str | None = None
        self.started, self.go = threading.Event(), threading.Event()
        self._thread = threading.Thread(target=self._run, args=(client, model))
        self._thread.start()

    def _run(self, client: openai.OpenAI, model: str) -> None:
        parts: list[str] = []
        stream = client.chat.completions.create(**long_request(model))
        for chunk in stream:
            if chunk.choices and chunk.choices[0].delta.content:
                parts.append(chunk.choices[0].delta.content)
                self.started.set()
                self.go.wait(300)
        self.text = "".join(parts)

    def result(self) -> str | None:
        self._thread.join(timeout=300)
        return self.text


def long_request(model: str) -> dict[str, Any]:
    return {
        "model": model,
        "messages": [{"role": "user", "content": QUESTIONS[0]}],
        "temperature": 0,
        "max_tokens": 200,
        "stream": True,
        "extra_body": {"ignore_eos": True},
    }


def full_text(client: openai.OpenAI, model: str) -> str:
    stream = client.chat.completions.create(**long_request(model))
    return "".join(c.choices[0].delta.content or "" for c in stream if c.choices)


def test_an_adapter_loaded_at_run_time_answers_at_once_and_unloaded_is_gone(
    server: NimbleProcess, adapters: tuple[Adapter, Adapter], references: dict[str, list[str]]
) -> None:
    """(3) `parrot` (the pirate adapter's file under another name) loaded at run time
    answers within a second of the load call returning; unloaded, it is a 404. Streams
    running meanwhile (held open by their reader), on the base model during the load and
    on the adapter being unloaded, end intact."""
    with server.client() as client, httpx.Client(base_url=server.base_url, timeout=300) as admin:
        run_time_adapter(client, admin, adapters[0].path, references)


def run_time_adapter(
    client: openai.OpenAI, admin: httpx.Client, pirate: Path, references: dict[str, list[str]]
) -> None:
    base_long, pirate_long = full_text(client, CHAT_MODEL), full_text(client, "pirate")

    during_load = Streaming(client, CHAT_MODEL)
    assert during_load.started.wait(300)
    loaded = admin.post(
        "/v1/load_lora_adapter", json={"lora_name": "parrot", "lora_path": str(pirate)}
    )
    returned = time.monotonic()
    assert loaded.status_code == 200, loaded.text
    first = client.chat.completions.create(
        model="parrot",
        messages=[{"role": "user", "content": QUESTIONS[0]}],
        temperature=0,
        max_tokens=MAX_TOKENS,
        stream=True,
    )
    head = next(
        c.choices[0].delta.content for c in first if c.choices and c.choices[0].delta.content
    )
    answered = time.monotonic() - returned
    rest = "".join(c.choices[0].delta.content or "" for c in first if c.choices)
    assert head + rest == references["pirate"][0]
    assert answered < 1.0, f"first answer {answered:.2f}s after the load returned"
    during_load.go.set()
    assert during_load.result() == base_long

    during_unload = Streaming(client, "parrot")
    assert during_unload.started.wait(300)
    unloaded = admin.post("/v1/unload_lora_adapter", json={"lora_name": "parrot"})
    assert unloaded.status_code == 200, unloaded.text
    assert "(1 requests in flight finish on it first)" in unloaded.text
    with pytest.raises(openai.NotFoundError):
        answer(client, "parrot", QUESTIONS[0])
    during_unload.go.set()
    assert during_unload.result() == pirate_long
    assert answer(client, "pirate", QUESTIONS[1]) == references["pirate"][1]
    assert answer(client, CHAT_MODEL, QUESTIONS[1]) == references[CHAT_MODEL][1]


def test_an_adapter_for_other_dimensions_is_refused_at_start(tmp_path: Path) -> None:
    """An adapter made for 640-wide blocks (gemma3-270m's) stops `nimble serve` with one
    line naming the file and the mismatch."""
    bad = mismatched_adapter(tmp_path)
    done = subprocess.run(
        [*NIMBLE_SERVE, "--model", CHAT_MODEL, "--lora", f"gemma={bad}"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode != 0
    refusals = [line for line in done.stderr.splitlines() if line.startswith("nimble:")]
    assert refusals == [
        f"nimble: cannot serve: {bad}: blk.0.ffn_down.weight: lora_a [2048, 4] x lora_b "
        "[4, 640] does not fit the model's [1536, 576]"
    ]
