"""/tokenize and /detokenize (vLLM's shapes) on the fake engine: counts equal to a chat
completion's usage, tools, round trips, every refusal naming its param, an engine without a
tokenizer, an embedding model's prompt, key scopes and the allowlist."""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncGenerator, AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from nimble.api import create_app
from nimble.config import Settings
from nimble.engines import EngineConfig, create_engine
from nimble.engines.fake.engine import FakeEngine
from nimble.models import ModelSpec, resolve_model
from nimble.runtime import Runtime
from nimble.runtime.assemble import runtime_config
from nimble.security.keys import hash_key
from nimble.types import EngineInfo, GenerateRequest, GenerationChunk, Task
from tests.conftest import FAKE_MODEL, assert_openai_error, chat_body

TOOL = {
    "type": "function",
    "function": {
        "name": "get_time",
        "description": "The time in a time zone",
        "parameters": {"type": "object", "properties": {"tz": {"type": "string"}}},
    },
}


class Untokenized:
    """The fake engine's core and generation, without a tokenizer."""

    def __init__(self, spec: ModelSpec, config: EngineConfig):
        self.spec = spec
        self._inner = FakeEngine(spec, config)

    async def start(self) -> None:
        await self._inner.start()

    async def stop(self) -> None:
        await self._inner.stop()

    def info(self) -> EngineInfo:
        return self._inner.info()

    async def health(self) -> bool:
        return await self._inner.health()

    async def prompt_tokens(self, request: GenerateRequest, fits: int) -> int:
        return await self._inner.prompt_tokens(request, fits)

    def generate(self, request: GenerateRequest) -> AsyncGenerator[GenerationChunk, None]:
        return self._inner.generate(request)


@pytest.fixture
async def client() -> AsyncIterator[httpx.AsyncClient]:
    """The fake chat model, an embedding-only model, and a model whose engine has no
    tokenizer."""
    embedder = dataclasses.replace(
        resolve_model("fake:embedder"), tasks=frozenset({Task.EMBEDDING})
    )
    plain = dataclasses.replace(resolve_model("fake:plain"), tasks=frozenset({Task.CHAT}))
    specs = [resolve_model("fake"), embedder, plain]

    def engines(spec: ModelSpec, config: EngineConfig) -> Any:
        return Untokenized(spec, config) if spec.id == "plain" else create_engine(spec, config)

    settings = Settings(model=("fake",))
    runtime = Runtime(specs, runtime_config(settings), engines)
    app = create_app(settings, runtime=runtime, load_on_startup=False)
    await runtime.start()
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://nimble.test"
    ) as http:
        yield http
    await runtime.stop()


async def test_messages_count_equals_the_chat_completions_prompt_tokens(
    client: httpx.AsyncClient,
) -> None:
    messages = [
        {"role": "system", "content": "Answer in one word"},
        {"role": "user", "content": "alpha bravo, what comes next?"},
    ]
    for extra in ({}, {"tools": [TOOL]}):  # with tools: written into the prompt as for chat
        completion = await client.post(
            "/v1/chat/completions", json=chat_body(messages=messages, max_tokens=1, **extra)
        )
        assert completion.status_code == 200, completion.text
        counted = await client.post(
            "/tokenize", json={"model": FAKE_MODEL, "messages": messages, **extra}
        )
        assert counted.status_code == 200, counted.text
        body = counted.json()
        assert body["count"] == completion.json()["usage"]["prompt_tokens"] == len(body["tokens"])
        assert body["max_model_len"] == 2048 and body["token_strs"] is None
    # the tools make the prompt longer: they were not ignored
    plain = await client.post("/tokenize", json={"model": FAKE_MODEL, "messages": messages})
    assert body["count"] > plain.json()["count"]


async def test_prompt_round_trip_and_token_strs(client: httpx.AsyncClient) -> None:
    response = await client.post(
        "/tokenize",
        json={"model": FAKE_MODEL, "prompt": "alpha bravo zebra", "return_token_strs": True},
    )
    assert response.status_code == 200, response.text
    body = response.json()
    # a word's id is its place in the fake vocabulary; an unknown word is <unk>
    assert body == {
        "count": 3,
        "max_model_len": 2048,
        "tokens": [0, 1, 26],
        "token_strs": ["alpha", "bravo", "<unk>"],
    }
    completion = await client.post(
        "/v1/completions", json={"model": FAKE_MODEL, "prompt": "alpha bravo zebra"}
    )
    assert completion.json()["usage"]["prompt_tokens"] == body["count"]
    back = await client.post("/detokenize", json={"model": FAKE_MODEL, "tokens": body["tokens"]})
    assert back.status_code == 200, back.text
    assert back.json() == {"prompt": "alpha bravo <unk>"}
    empty = await client.post("/detokenize", json={"model": FAKE_MODEL, "tokens": []})
    assert empty.json() == {"prompt": ""}


async def test_an_embedding_model_tokenizes_prompts_not_messages(
    client: httpx.AsyncClient,
) -> None:
    ok = await client.post("/tokenize", json={"model": "embedder", "prompt": "alpha"})
    assert ok.status_code == 200 and ok.json()["count"] == 1
    refused = await client.post(
        "/tokenize", json={"model": "embedder", "messages": [{"role": "user", "content": "hi"}]}
    )
    assert "chat template" in assert_openai_error(refused, 400, "messages")["message"]


USER = [{"role": "user", "content": "hi"}]
ASSISTANT_LAST = [*USER, {"role": "assistant", "content": "Hel"}]


@pytest.mark.parametrize(
    ("path", "body", "status", "param"),
    [
        ("/tokenize", {"model": FAKE_MODEL}, 400, "prompt"),
        ("/tokenize", {"model": FAKE_MODEL, "prompt": "a", "messages": USER}, 400, "prompt"),
        ("/tokenize", {"model": FAKE_MODEL, "prompt": "a", "tools": [TOOL]}, 400, "tools"),
        ("/tokenize", {"model": FAKE_MODEL, "messages": []}, 400, "messages"),
        (
            "/tokenize",
            {"model": FAKE_MODEL, "messages": ASSISTANT_LAST, "continue_final_message": True},
            400,
            "continue_final_message",
        ),
        (
            "/tokenize",
            {
                "model": FAKE_MODEL,
                "messages": USER,
                "continue_final_message": True,
                "add_generation_prompt": False,
            },
            400,
            "continue_final_message",
        ),
        (
            "/tokenize",
            {"model": FAKE_MODEL, "messages": USER, "chat_template": "{{ messages }}"},
            400,
            "chat_template",
        ),
        (
            "/tokenize",
            {"model": FAKE_MODEL, "messages": USER, "chat_template_kwargs": {"x": 1}},
            400,
            "chat_template_kwargs",
        ),
        ("/tokenize", {"model": FAKE_MODEL, "prompt": "a", "lora": "x"}, 400, "lora"),
        ("/tokenize", {"model": "nope", "prompt": "a"}, 404, "model"),
        ("/tokenize", {"model": "plain", "prompt": "a"}, 400, "model"),
        ("/detokenize", {"model": "plain", "tokens": [1]}, 400, "model"),
        ("/detokenize", {"model": FAKE_MODEL, "tokens": [0, 30]}, 400, "tokens"),
        ("/detokenize", {"model": FAKE_MODEL, "tokens": [-1]}, 400, "tokens"),
        ("/detokenize", {"model": FAKE_MODEL, "tokens": ["a"]}, 400, "tokens.0"),
        ("/detokenize", {"model": FAKE_MODEL}, 400, "tokens"),
        ("/detokenize", {"model": "nope", "tokens": [1]}, 404, "model"),
    ],
)
async def test_refusals_name_their_param(
    client: httpx.AsyncClient, path: str, body: dict[str, Any], status: int, param: str
) -> None:
    assert_openai_error(await client.post(path, json=body), status, param)


async def test_continuing_the_final_message(client: httpx.AsyncClient) -> None:
    body = {
        "model": FAKE_MODEL,
        "messages": ASSISTANT_LAST,
        "continue_final_message": True,
        "add_generation_prompt": False,
    }
    response = await client.post("/tokenize", json=body)
    assert response.status_code == 200, response.text


async def test_key_scopes_and_the_allowlist(tmp_path: Path) -> None:
    keys = tmp_path / "keys.yaml"
    keys.write_text(
        "keys:\n"
        f"  - id: chat-only\n    sha256: {hash_key('k-chat')}\n    endpoints: [chat]\n"
        f"  - id: tokens\n    sha256: {hash_key('k-tok')}\n    endpoints: [tokenize]\n"
        f"  - id: other\n    sha256: {hash_key('k-other')}\n    models: [other]\n"
    )
    settings = Settings(model=("fake", "fake:other"), api_keys_file=keys)
    for enabled, expect in ((settings.endpoints, 200), (("chat",), 404)):
        config = settings.model_copy(update={"endpoints": enabled})
        runtime = Runtime(
            [resolve_model("fake"), resolve_model("fake:other")], runtime_config(config)
        )
        app = create_app(config, runtime=runtime, load_on_startup=False)
        await runtime.start()
        async with httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app), base_url="http://t"
        ) as http:
            for path, body in (
                ("/tokenize", {"model": FAKE_MODEL, "prompt": "alpha"}),
                ("/detokenize", {"model": FAKE_MODEL, "tokens": [0]}),
            ):
                allowed = await http.post(
                    path, json=body, headers={"Authorization": "Bearer k-tok"}
                )
                assert allowed.status_code == expect, (enabled, path, allowed.text)
                if expect == 404:
                    continue
                assert_openai_error(await http.post(path, json=body), 401, None)
                denied = await http.post(
                    path, json=body, headers={"Authorization": "Bearer k-chat"}
                )
                assert assert_openai_error(denied, 403, None)["code"] == "endpoint_denied"
                other = await http.post(
                    path, json=body, headers={"Authorization": "Bearer k-other"}
                )
                assert assert_openai_error(other, 403, "model")["code"] == "model_denied"
        await runtime.stop()
