"""The policy gate for agents through the API: a key's tool scope refuses a declared tool
outside it (403 `tool_denied`, in OpenAI's and Anthropic's shapes), the model's calls outside
it are dropped from the answer (streaming or not, on chat, responses and messages), and the
audit log, the metrics and the deployment record say so; through the official SDKs."""

from __future__ import annotations

import json
import re
from collections.abc import AsyncGenerator, AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anthropic
import httpx
import httpx2
import openai
import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from nimble.api import create_app
from nimble.config import Settings
from nimble.engines.fake.engine import FakeEngine
from nimble.errors import ConfigError
from nimble.models import resolve_model
from nimble.observability.tracing import RequestTracing
from nimble.runtime import Runtime
from nimble.runtime.assemble import build_runtime, runtime_config
from nimble.security.keys import hash_key
from nimble.types import GenerateRequest, GenerationChunk, Usage
from tests.api.test_auth import write_keys
from tests.conftest import FAKE_MODEL

AGENT = "nb-claims-agent-0123456789abcdef0123456789abcdef"
OPEN = "nb-open-key-0123456789abcdef0123456789abcdef0123"
PURPOSE = "claims-triage-agent"


def call(name: str, arguments: dict[str, Any]) -> str:
    return f"<tool_call>\n{json.dumps({'name': name, 'arguments': arguments})}\n</tool_call>"


# what the scripted model writes, by a word of the last user message (hermes markup: the
# fake model's tool format)
SCRIPTS = {
    "both": "Checking.\n"
    + call("send_email", {"to": "boss@example.com", "body": "secret-body"})
    + call("lookup_claim", {"id": 7}),
    "email": call("send_email", {"to": "boss@example.com", "body": "secret-body"}),
    "lookup": call("lookup_claim", {"id": 7}),
}


class Scripted(FakeEngine):
    """Writes the script its prompt names, in pieces of 5 characters (a call spans chunks);
    as the fake model without one."""

    async def generate(self, request: GenerateRequest) -> AsyncGenerator[GenerationChunk, None]:
        asked = request.messages[-1].content if request.messages else ""
        text = next((out for word, out in SCRIPTS.items() if word in asked), None)
        if text is None:  # the warm-up
            async for chunk in super().generate(request):
                yield chunk
            return
        for at in range(0, len(text), 5):
            yield GenerationChunk(text=text[at : at + 5])
        yield GenerationChunk(finish_reason="stop")
        yield GenerationChunk(usage=Usage(5, (len(text) + 4) // 5))


def tool(name: str) -> dict[str, Any]:
    return {"type": "function", "function": {"name": name, "parameters": {"type": "object"}}}


TOOLS = [tool("lookup_claim"), tool("send_email")]


@dataclass
class Service:
    oai: httpx.AsyncClient
    claude: httpx2.AsyncClient
    audit: Path

    def openai(self, key: str) -> openai.AsyncOpenAI:
        return openai.AsyncOpenAI(
            api_key=key, base_url="http://nimble.test/v1", http_client=self.oai, max_retries=0
        )

    def anthropic(self, key: str) -> anthropic.AsyncAnthropic:
        return anthropic.AsyncAnthropic(
            api_key=key, base_url="http://nimble.test", http_client=self.claude, max_retries=0
        )

    def audit_lines(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self.audit.read_bytes().splitlines()]


@asynccontextmanager
async def gated_service(
    tmp_path: Path, tracing: RequestTracing | None = None
) -> AsyncIterator[Service]:
    keys = write_keys(
        tmp_path / "keys.yaml",
        {
            AGENT: {
                "id": "claims-agent",
                "purpose": PURPOSE,
                "tools": {"declare": ["lookup_claim", "send_email"], "call": ["lookup_claim"]},
            },
            OPEN: {"id": "open"},
        },
    )
    settings = Settings(model=("fake",), api_keys_file=keys, audit_log=tmp_path / "audit.jsonl")
    runtime = Runtime([resolve_model("fake")], runtime_config(settings), engine_factory=Scripted)
    app = create_app(settings, runtime=runtime, load_on_startup=False, tracing=tracing)
    await runtime.start()
    try:
        async with (
            httpx.AsyncClient(
                transport=httpx.ASGITransport(app=app), base_url="http://nimble.test"
            ) as oai,
            httpx2.AsyncClient(
                transport=httpx2.ASGITransport(app=app), base_url="http://nimble.test"
            ) as claude,
        ):
            yield Service(oai, claude, settings.audit_log)  # type: ignore[arg-type]
    finally:
        await runtime.stop()


def ask(word: str) -> list[Any]:
    return [{"role": "user", "content": f"please {word}"}]


async def test_a_declared_tool_outside_the_scope_is_403_naming_it(tmp_path: Path) -> None:
    async with gated_service(tmp_path) as service:
        agent = service.openai(AGENT)
        with pytest.raises(openai.PermissionDeniedError) as chat:
            await agent.chat.completions.create(
                model=FAKE_MODEL, messages=ask("lookup"), tools=[*TOOLS, tool("delete_claim")]
            )
        error = chat.value.body
        assert isinstance(error, dict)
        assert (chat.value.status_code, error["code"], error["param"]) == (
            403,
            "tool_denied",
            "tools",
        )
        assert error["type"] == "permission_error"
        assert error["message"] == "API key `claims-agent` may not declare the tool `delete_claim`"
        with pytest.raises(openai.PermissionDeniedError) as responses:
            await agent.responses.create(
                model=FAKE_MODEL,
                input="please lookup",
                tools=[{"type": "function", "name": "delete_claim", "parameters": {}}],
            )
        assert isinstance(responses.value.body, dict)
        assert responses.value.body["code"] == "tool_denied"
        assert "`delete_claim`" in responses.value.body["message"]
        with pytest.raises(anthropic.PermissionDeniedError) as messages:
            await service.anthropic(AGENT).messages.create(
                model=FAKE_MODEL,
                max_tokens=32,
                messages=ask("lookup"),
                tools=[{"name": "delete_claim", "input_schema": {"type": "object"}}],
            )
        body = messages.value.body
        assert isinstance(body, dict) and body["type"] == "error"  # Anthropic's shape
        assert body["error"]["type"] == "permission_error"
        assert (body["error"]["code"], body["error"]["param"]) == ("tool_denied", "tools")
        # /tokenize writes the tools in as a chat completion would: the same scope holds
        tokenized = await service.oai.post(
            "/tokenize",
            headers={"Authorization": f"Bearer {AGENT}"},
            json={"model": FAKE_MODEL, "messages": ask("lookup"), "tools": [tool("delete_claim")]},
        )
        assert tokenized.status_code == 403, tokenized.text
        assert tokenized.json()["error"]["code"] == "tool_denied"
        in_scope = await service.oai.post(
            "/tokenize",
            headers={"Authorization": f"Bearer {AGENT}"},
            json={"model": FAKE_MODEL, "messages": ask("lookup"), "tools": TOOLS},
        )
        assert in_scope.status_code == 200 and in_scope.json()["count"] > 0
        # the tools in scope are let in, and another key may declare any
        allowed = await agent.chat.completions.create(
            model=FAKE_MODEL, messages=ask("lookup"), tools=TOOLS
        )
        assert allowed.choices[0].finish_reason == "tool_calls"
        other = await service.openai(OPEN).chat.completions.create(
            model=FAKE_MODEL, messages=ask("lookup"), tools=[tool("delete_claim")]
        )
        assert other.choices[0].message.tool_calls is not None
    refused = [line for line in service.audit_lines() if line["status"] == 403]
    assert len(refused) == 4
    assert all(line["key_purpose"] == PURPOSE for line in refused)
    assert all(line["model"] is None for line in refused)  # refused before any model ran


async def test_a_call_outside_the_scope_is_dropped_from_the_answer(tmp_path: Path) -> None:
    async with gated_service(tmp_path) as service:
        agent = service.openai(AGENT)
        both = await agent.chat.completions.create(
            model=FAKE_MODEL, messages=ask("both"), tools=TOOLS
        )
        choice = both.choices[0]
        assert choice.finish_reason == "tool_calls"
        assert choice.message.content == "Checking.\n"
        calls = choice.message.tool_calls or []
        assert [(c.function.name, c.function.arguments) for c in calls] == [
            ("lookup_claim", '{"id": 7}')
        ]
        # every call dropped: the answer stops, with no calls
        alone = await agent.chat.completions.create(
            model=FAKE_MODEL, messages=ask("email"), tools=TOOLS
        )
        assert alone.choices[0].finish_reason == "stop"
        assert alone.choices[0].message.tool_calls is None
        assert "secret-body" not in alone.model_dump_json() + both.model_dump_json()
        # the same model, another key: both calls made
        unscoped = await service.openai(OPEN).chat.completions.create(
            model=FAKE_MODEL, messages=ask("both"), tools=TOOLS
        )
        names = [c.function.name for c in unscoped.choices[0].message.tool_calls or []]
        assert names == ["send_email", "lookup_claim"]
    lines = service.audit_lines()
    assert [line.get("dropped_tool_calls") for line in lines] == [
        ["send_email"],
        ["send_email"],
        None,
    ]
    assert [line.get("key_purpose") for line in lines] == [PURPOSE, PURPOSE, None]


async def test_streamed_calls_are_dropped_and_numbered_densely(tmp_path: Path) -> None:
    async with gated_service(tmp_path) as service:
        agent = service.openai(AGENT)
        stream = await agent.chat.completions.create(
            model=FAKE_MODEL, messages=ask("both"), tools=TOOLS, stream=True
        )
        chunks = [chunk async for chunk in stream]
        deltas = [d for c in chunks for d in c.choices[0].delta.tool_calls or ()]
        assert deltas[0].index == 0 and deltas[0].id and deltas[0].function
        assert deltas[0].function.name == "lookup_claim"
        assert all(d.index == 0 and d.id is None for d in deltas[1:])
        assert "".join(d.function.arguments or "" for d in deltas if d.function) == '{"id": 7}'
        finishes = [c.choices[0].finish_reason for c in chunks if c.choices[0].finish_reason]
        assert finishes == ["tool_calls"]
        stream = await agent.chat.completions.create(
            model=FAKE_MODEL, messages=ask("email"), tools=TOOLS, stream=True
        )
        chunks = [chunk async for chunk in stream]
        assert not any(c.choices[0].delta.tool_calls for c in chunks)
        assert [c.choices[0].finish_reason for c in chunks if c.choices[0].finish_reason] == [
            "stop"
        ]
        # the Responses API and Anthropic's Messages read the same gated stream
        response = await agent.responses.create(
            model=FAKE_MODEL,
            input="please both",
            tools=[
                {"type": "function", "name": "lookup_claim", "parameters": {"type": "object"}},
                {"type": "function", "name": "send_email", "parameters": {"type": "object"}},
            ],
        )
        called = [item.name for item in response.output if item.type == "function_call"]
        assert called == ["lookup_claim"]
        claude = service.anthropic(AGENT)
        schema = {"type": "object"}
        message = await claude.messages.create(
            model=FAKE_MODEL,
            max_tokens=64,
            messages=ask("email"),
            tools=[
                {"name": "lookup_claim", "input_schema": schema},
                {"name": "send_email", "input_schema": schema},
            ],
        )
        assert message.stop_reason == "end_turn"
        assert not [block for block in message.content if block.type == "tool_use"]
        async with claude.messages.stream(
            model=FAKE_MODEL,
            max_tokens=64,
            messages=ask("both"),
            tools=[
                {"name": "lookup_claim", "input_schema": schema},
                {"name": "send_email", "input_schema": schema},
            ],
        ) as events:
            final = await events.get_final_message()
        used = [block for block in final.content if block.type == "tool_use"]
        assert [(b.name, b.input) for b in used] == [("lookup_claim", {"id": 7})]
        assert final.stop_reason == "tool_use"
        scrape = (await service.oai.get("/metrics", headers={"x-api-key": OPEN})).text
        record = (await service.oai.get("/v1/manifest", headers={"x-api-key": OPEN})).json()
    lines = service.audit_lines()
    dropped = [line.get("dropped_tool_calls") for line in lines if line["model"] is not None]
    assert dropped == [["send_email"]] * 5
    (ref,) = [k["ref"] for k in record["auth"]["keys"] if k["purpose"] == PURPOSE]
    counted = re.findall(r"^nimble_tool_calls_dropped_total\{(.*)\} (\S+)$", scrape, re.M)
    assert counted == [(f'key="{ref}",model_name="{FAKE_MODEL}"', "5.0")]


async def test_the_record_lists_each_key_by_its_ref_with_no_secret(tmp_path: Path) -> None:
    async with gated_service(tmp_path) as service:
        response = await service.oai.get("/v1/manifest", headers={"x-api-key": AGENT})
    assert response.status_code == 200
    auth = response.json()["auth"]
    assert auth["mode"] == "api_keys"
    agent, unscoped = auth["keys"]
    assert agent == {
        "ref": agent["ref"],
        "purpose": PURPOSE,
        "models": ["*"],
        "endpoints": ["*"],
        "tools": {"declare": ["lookup_claim", "send_email"], "call": ["lookup_claim"]},
        "rails": [],
        "limits": {
            "requests_per_minute": None,
            "tokens_per_minute": None,
            "concurrent_requests": None,
        },
    }
    assert re.fullmatch(r"key-[0-9a-f]{12}", agent["ref"]) and agent["ref"] != unscoped["ref"]
    assert unscoped["tools"] == {"declare": ["*"], "call": ["*"]}
    for secret in (AGENT, OPEN, hash_key(AGENT), hash_key(OPEN), "claims-agent", '"open"'):
        assert secret not in response.text


async def test_a_key_bound_to_a_rail_cannot_skip_it_nor_load_without_it(tmp_path: Path) -> None:
    bound, free = "nb-bound-key-0123456789abcdef0123456789abcdef01", OPEN
    keys = write_keys(
        tmp_path / "keys.yaml",
        {bound: {"id": "bound", "rails": ["no-secrets"]}, free: {"id": "free"}},
    )
    without = Settings(model=("fake",), api_keys_file=keys)
    with pytest.raises(ConfigError) as refused:
        create_app(without, load_on_startup=False)
    assert str(refused.value) == (
        f"API key file {keys}: key `bound`: unknown rails no-secrets (configured: none: see "
        "--guardrails)"
    )
    rails = tmp_path / "guardrails.yaml"
    rails.write_text("flows:\n  no-secrets: {type: topics, deny: [password]}\n")
    settings = Settings(model=("fake",), api_keys_file=keys, guardrails=rails)
    runtime, deployment = build_runtime(settings)
    app = create_app(settings, runtime=runtime, deployment=deployment, load_on_startup=False)
    await runtime.start()
    try:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://nimble.test") as http:
            body = {"model": FAKE_MODEL, "messages": [{"role": "user", "content": "my password"}]}
            blocked = await http.post(
                "/v1/chat/completions", json=body, headers={"x-api-key": bound}
            )
            assert blocked.status_code == 400
            assert blocked.json()["error"]["code"] == "content_filter"
            passed = await http.post("/v1/chat/completions", json=body, headers={"x-api-key": free})
            assert passed.status_code == 200  # the file runs the rail for no model by itself
            record = (await http.get("/v1/manifest", headers={"x-api-key": free})).json()
    finally:
        await runtime.stop()
    assert [key["rails"] for key in record["auth"]["keys"]] == [["no-secrets"], []]


async def test_the_request_span_names_the_dropped_calls(tmp_path: Path) -> None:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    try:
        async with gated_service(tmp_path, RequestTracing(provider)) as service:
            for word in ("both", "lookup"):
                await service.openai(AGENT).chat.completions.create(
                    model=FAKE_MODEL, messages=ask(word), tools=TOOLS
                )
    finally:
        provider.shutdown()
    spans = [s for s in exporter.get_finished_spans() if s.name == "POST /v1/chat/completions"]
    dropped = [(s.attributes or {}).get("nimble.tool_calls_dropped") for s in spans]
    assert dropped == [("send_email",), None]
