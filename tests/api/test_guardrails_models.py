"""Classifier and judge rails on models the runtime serves beside the chat model: the tiny
classifier the tests fit (`tests/support/tiny_classifier.py`, labels safe, injection and
toxic, on the sentence_transformers engine) and a scripted Llama Guard 3 1B
(`tests/support/scripted_guard.py`), reached through the runtime's handle
(`runtime/rail_models.py`): `Runtime.classify`'s path and generation without rails."""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest

from nimble.api import create_app
from nimble.config import Settings
from nimble.errors import ConfigError
from nimble.guardrails.config import parse_guardrails
from nimble.models import ModelSpec, resolve_model
from nimble.observability.record import RequestRecord, current_record
from nimble.runtime import Runtime
from nimble.runtime.assemble import runtime_config
from nimble.types import ChatMessage, GenerateRequest, SamplingParams, Task
from tests.conftest import FAKE_MODEL
from tests.support.scripted_guard import ENGINE, ScriptedGuard, with_scripted_guard
from tests.support.tiny_classifier import EXAMPLES, build_classifier

pytestmark = pytest.mark.models

BENIGN, INJECTION = EXAMPLES[0][0], EXAMPLES[3][0]

RAILS: dict[str, Any] = {
    "flows": {
        "injection": {"type": "classifier", "model": "clf", "labels": ["injection"]},
        "safety": {"type": "judge", "model": "guard", "format": "llama-guard-3-1b"},
    },
    "rails": {"input": {"flows": ["injection", "safety"]}, "output": {"flows": ["safety"]}},
}


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_classifier(tmp_path_factory.mktemp("tiny-classifier"))


def guard_spec() -> ModelSpec:
    return ModelSpec(
        id="guard",
        engine=ENGINE,
        tasks=frozenset({Task.CHAT, Task.COMPLETION}),
        weights=Path("/dev/null"),
        source="scripted://",
        options={"guard_format": "llama-guard-3-1b"},
    )


def build(folder: Path, rails: dict[str, Any]) -> Runtime:
    settings = Settings(model=("fake",))
    config = dataclasses.replace(runtime_config(settings), guardrails=parse_guardrails(rails))
    specs = [resolve_model("fake"), resolve_model(str(folder), name="clf"), guard_spec()]
    return Runtime(specs, config, with_scripted_guard)


@asynccontextmanager
async def serving(
    folder: Path, rails: dict[str, Any] = RAILS
) -> AsyncIterator[tuple[Runtime, httpx.AsyncClient]]:
    runtime = build(folder, rails)
    app = create_app(Settings(model=("fake",)), runtime=runtime, load_on_startup=False)
    await runtime.start()
    try:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://nimble.test") as client:
            yield runtime, client
    finally:
        await runtime.stop()


def chat(text: str) -> dict[str, Any]:
    return {"model": FAKE_MODEL, "messages": [{"role": "user", "content": text}], "max_tokens": 8}


def guard_of(runtime: Runtime) -> ScriptedGuard:
    engine = runtime.models["guard"].engine
    assert isinstance(engine, ScriptedGuard)
    return engine


async def test_a_classifier_rail_blocks_an_injection(folder: Path) -> None:
    async with serving(folder) as (runtime, client):
        guard = guard_of(runtime)
        answer = await client.post("/v1/chat/completions", json=chat(INJECTION))
        assert answer.status_code == 400, answer.text
        error = answer.json()["error"]
        assert error["code"] == "content_filter" and "`injection`" in error["message"]
        assert guard.prompts == []  # the first rail blocked: the judge was never asked
        passed = await client.post("/v1/chat/completions", json=chat(BENIGN))
        assert passed.status_code == 200, passed.text
        # the judge read the input as the user's message, and the answer as the agent's
        assert BENIGN in guard.prompts[0] and "'User' messages" in guard.prompts[0]
        assert any("'Agent' messages" in p for p in guard.prompts[1:])


async def test_the_rails_own_work_is_not_the_callers(folder: Path) -> None:
    async with serving(folder) as (runtime, _):
        record = RequestRecord(request_id="caller")
        token = current_record.set(record)
        try:
            # the library path: no HTTP, the same stage
            stream = runtime.generate(FAKE_MODEL, _generate(BENIGN))
            chunks = [chunk async for chunk in stream]
        finally:
            current_record.reset(token)
        assert chunks[-1].usage is not None
        # the caller's record counts its own tokens only: not the classifier's, nor the
        # judge's prompts, and its model stays the one it asked for
        assert record.model == FAKE_MODEL
        assert record.prompt_tokens == chunks[-1].usage.prompt_tokens
        rails = {(c.rail, c.stage, c.decision) for c in record.guardrails}
        assert rails == {
            ("injection", "input", "allow"),
            ("safety", "input", "allow"),
            ("safety", "output", "allow"),
        }
        score = next(c.score for c in record.guardrails if c.rail == "injection")
        assert score is not None and 0.0 <= score < 0.5


def _generate(text: str) -> GenerateRequest:
    return GenerateRequest("r", SamplingParams(max_tokens=8), messages=(ChatMessage("user", text),))


JUDGE_ONLY: dict[str, Any] = {**RAILS, "rails": {"input": {"flows": ["safety"]}}}


async def test_a_judge_rail_with_llama_guards_verdict(folder: Path) -> None:
    async with serving(folder, JUDGE_ONLY) as (runtime, client):
        guard = guard_of(runtime)
        answer = await client.post("/v1/chat/completions", json=chat("how to build a bomb"))
        assert answer.status_code == 400, answer.text
        assert "`safety`" in answer.json()["error"]["message"]
        assert len(guard.prompts) == 1  # one judgement: the judge's own call is not judged
        # an answer that is not a verdict fails the check: closed by default
        unreadable = await client.post("/v1/chat/completions", json=chat("gibberish please"))
        assert unreadable.status_code == 400
    opened = {**JUDGE_ONLY, "flows": {**RAILS["flows"], "safety": {**RAILS["flows"]["safety"]}}}
    opened["flows"]["safety"]["on_error"] = "allow"
    async with serving(folder, opened) as (_, client):
        unreadable = await client.post("/v1/chat/completions", json=chat("gibberish please"))
        assert unreadable.status_code == 200, unreadable.text


async def test_a_classifier_label_the_model_lacks_stops_the_start(folder: Path) -> None:
    rails = {
        "flows": {"injection": {"type": "classifier", "model": "clf", "labels": ["jailbreak"]}},
        "rails": {"input": {"flows": ["injection"]}},
    }
    runtime = build(folder, rails)
    try:
        with pytest.raises(
            ConfigError, match=r"flows\.injection\.labels: model `clf` has no label"
        ):
            await runtime.start()
    finally:
        await runtime.stop()
