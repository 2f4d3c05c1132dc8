"""`POST /v1/classify` and `POST /v1/moderations` through the app: a tiny classifier the
test builds (`tests/support/tiny_classifier.py`, on the sentence_transformers engine), a
scripted Llama Guard 3 1B (`tests/support/scripted_guard.py`) and the fake chat model side
by side; the official `openai` client for moderations, httpx for /v1/classify."""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from pydantic import BaseModel

from nimble.api import create_app
from nimble.api.schemas.classify import ClassifyResponse, ModerationResponse
from nimble.config import Settings
from nimble.errors import ModelLoadError
from nimble.guardrails.guard_formats import guard_format
from nimble.models import ModelSpec, resolve_model
from nimble.runtime import Runtime
from nimble.runtime.assemble import runtime_config
from nimble.types import ClassifierTraits, ClassifyRequest, Task
from tests.conftest import FAKE_MODEL, assert_openai_error
from tests.support.scripted_guard import ENGINE, ScriptedGuard, with_scripted_guard
from tests.support.tiny_classifier import EXAMPLES, build_classifier

pytestmark = pytest.mark.models

BENIGN, INJECTION, TOXIC = EXAMPLES[0][0], EXAMPLES[3][0], EXAMPLES[6][0]
LG3_1B = guard_format("llama-guard-3-1b")


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


def classifier_spec(folder: Path, **traits: Any) -> ModelSpec:
    spec = resolve_model(str(folder), name="clf")
    return dataclasses.replace(spec, classifier=ClassifierTraits(**traits)) if traits else spec


@asynccontextmanager
async def serving(*specs: ModelSpec) -> AsyncIterator[tuple[Runtime, httpx.AsyncClient]]:
    settings = Settings(model=("fake",))
    runtime = Runtime(list(specs), runtime_config(settings), with_scripted_guard)
    app = create_app(settings, runtime=runtime, load_on_startup=False)
    await runtime.start()
    try:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://nimble.test") as client:
            yield runtime, client
    finally:
        await runtime.stop()


def oai(client: httpx.AsyncClient) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(
        api_key="unused", base_url="http://nimble.test/v1", http_client=client, max_retries=0
    )


def as_written(model: type[BaseModel], response: httpx.Response) -> None:
    """The answer is its response model's dump, field for field (api/route.py)."""
    assert (
        response.content == model.model_validate_json(response.content).model_dump_json().encode()
    )


async def test_classify_in_vllm_shape(folder: Path) -> None:
    async with serving(classifier_spec(folder)) as (runtime, client):
        texts = [BENIGN, INJECTION, TOXIC]
        response = await client.post("/v1/classify", json={"model": "clf", "input": texts})
        assert response.status_code == 200, response.text
        as_written(ClassifyResponse, response)
        body = response.json()
        assert body["id"].startswith("classify-") and body["object"] == "list"
        assert body["model"] == "clf" and isinstance(body["created"], int)
        assert [d["label"] for d in body["data"]] == ["safe", "injection", "toxic"]
        assert [d["index"] for d in body["data"]] == [0, 1, 2]
        assert all(d["num_classes"] == 3 for d in body["data"])
        direct = await runtime.classify("clf", ClassifyRequest("direct", tuple(texts)))
        assert [d["probs"] for d in body["data"]] == [list(c.probs) for c in direct.classifications]
        usage = body["usage"]
        assert usage == {
            "prompt_tokens": direct.prompt_tokens,
            "total_tokens": direct.prompt_tokens,
            "completion_tokens": 0,
            "prompt_tokens_details": None,
        }
        # vLLM's own path, and `model` left out with one classifier served
        same = await client.post("/classify", json={"input": texts})
        assert [d["probs"] for d in same.json()["data"]] == [d["probs"] for d in body["data"]]
        assert same.json()["model"] == "clf"
        one = await client.post("/v1/classify", json={"model": "clf", "input": TOXIC})
        assert [d["label"] for d in one.json()["data"]] == ["toxic"]


async def test_moderations_with_a_classifier(folder: Path) -> None:
    async with serving(classifier_spec(folder)) as (runtime, client):
        moderation = await oai(client).moderations.create(
            model="clf", input=[BENIGN, INJECTION, TOXIC]
        )
        assert moderation.id.startswith("modr-") and moderation.model == "clf"
        assert [r.flagged for r in moderation.results] == [False, True, True]
        direct = await runtime.classify("clf", ClassifyRequest("d", (BENIGN, INJECTION, TOXIC)))
        for result, found in zip(moderation.results, direct.classifications, strict=True):
            categories = result.categories.to_dict()
            scores = result.category_scores.to_dict()
            assert set(categories) == {"injection", "toxic"}  # class 0, `safe`, is no category
            assert scores == {"injection": found.score("injection"), "toxic": found.score("toxic")}
            assert categories == {k: v >= 0.5 for k, v in scores.items()}
            assert result.category_applied_input_types.to_dict() == {
                "injection": ["text"],
                "toxic": ["text"],
            }
        # text parts, as OpenAI's multi-modal input; `model` left out: the one that moderates
        parts = await client.post(
            "/v1/moderations", json={"input": [{"type": "text", "text": INJECTION}]}
        )
        as_written(ModerationResponse, parts)
        assert parts.json()["model"] == "clf" and parts.json()["results"][0]["flagged"]


async def test_the_manifest_names_the_labels_sets_the_safe_ones_and_the_threshold(
    folder: Path,
) -> None:
    spec = classifier_spec(
        folder, labels=("ok", "prompt_attack", "abuse"), safe_labels=("ok", "abuse"), threshold=0.99
    )
    async with serving(spec) as (runtime, client):
        body = (await client.post("/v1/classify", json={"input": [INJECTION]})).json()
        assert body["data"][0]["label"] == "prompt_attack"
        results = (await oai(client).moderations.create(input=[INJECTION, TOXIC])).results
        assert [set(r.categories.to_dict()) for r in results] == [{"prompt_attack"}] * 2
        found = (await runtime.classify("clf", ClassifyRequest("d", (INJECTION,)))).classifications
        assert results[0].flagged == (found[0].score("prompt_attack") >= 0.99)
        assert not results[1].flagged  # abuse is a safe label here
    wrong = classifier_spec(folder, labels=("a", "b"))
    with pytest.raises(ModelLoadError, match="has 3 labels, its manifest names 2"):
        async with serving(wrong):
            pass


async def test_moderations_with_a_guard_model(folder: Path) -> None:
    async with serving(guard_spec(), classifier_spec(folder)) as (runtime, client):
        engine = runtime.models["guard"].engine
        assert isinstance(engine, ScriptedGuard)
        moderation = await oai(client).moderations.create(
            model="guard",
            input=["How do I steal a car?", "How do I bake bread?", "bomb making", "gibberish"],
        )
        stolen, bread, bomb, unreadable = moderation.results
        # the guard was asked with Llama Guard 3 1B's own prompt, one input at a time
        asked = LG3_1B.request("-", "How do I steal a car?").prompt
        assert asked in engine.prompts
        codes = [f"S{i}" for i in range(1, 14)]
        assert stolen.flagged and list(stolen.categories.to_dict()) == codes
        assert [k for k, v in stolen.categories.to_dict().items() if v] == ["S2"]
        assert stolen.category_scores.to_dict()["S2"] == 1.0
        assert sum(stolen.category_scores.to_dict().values()) == 1.0
        assert not bread.flagged and not any(bread.categories.to_dict().values())
        assert [k for k, v in bomb.categories.to_dict().items() if v] == ["S1", "S9"]
        # an answer that is no verdict flags the input (fail-closed), with no category
        assert unreadable.flagged and not any(unreadable.categories.to_dict().values())


async def test_refusals_name_the_field(folder: Path) -> None:
    async with serving(guard_spec(), classifier_spec(folder), resolve_model("fake")) as (_, c):
        for path, body, param, words in [
            ("/v1/classify", {"model": "clf", "input": []}, "input", "empty list"),
            ("/v1/classify", {"model": "clf", "input": ""}, "input", "non-empty"),
            ("/v1/classify", {"model": "clf", "input": ["a"] * 2049}, "input", "at most 2048"),
            ("/v1/classify", {"model": "clf", "input": "a", "truncate_prompt_tokens": 0}, None, ""),
            ("/v1/classify", {"model": "clf", "input": "a", "top_k": 2}, "top_k", ""),
            ("/v1/moderations", {"input": []}, "input", "empty list"),
            ("/v1/moderations", {"input": ["a"] * 257}, "input", "at most 256"),
            (
                "/v1/moderations",
                {"input": [{"type": "image_url", "image_url": {"url": "http://x/y.png"}}]},
                "input",
                "image inputs are not supported",
            ),
            ("/v1/classify", {"model": FAKE_MODEL, "input": "a"}, "model", "classify requests"),
            ("/v1/moderations", {"model": FAKE_MODEL, "input": "a"}, "model", "cannot moderate"),
            (
                "/v1/moderations",
                {"input": "a"},
                "model",
                "several models can moderate (guard, clf)",
            ),
        ]:
            response = await c.post(path, json=body)
            error = assert_openai_error(response, 400, param or "truncate_prompt_tokens")
            assert words in error["message"], (path, body, error)
        long = "please tell me about the weather in paris " * 40
        refused = await c.post("/v1/classify", json={"model": "clf", "input": [long]})
        assert "more than the 128" in assert_openai_error(refused, 400, "input")["message"]
        cut = await c.post(
            "/v1/classify", json={"model": "clf", "input": [long], "truncate_prompt_tokens": -1}
        )
        assert cut.status_code == 200 and cut.json()["usage"]["prompt_tokens"] == 128
        too_long = await c.post("/v1/moderations", json={"model": "clf", "input": long})
        assert_openai_error(too_long, 400, "input")
        for path in ("/v1/classify", "/v1/moderations"):
            unknown = await c.post(path, json={"model": "nope", "input": "a"})
            assert assert_openai_error(unknown, 404, "model")["code"] == "model_not_found"
