"""What the guardrails leave behind: the audit line (rail, stage, decision, score, category;
the chain still verifies), the metric, a span per rail check, the deployment record; never
the text a rail read. With a PII rail (Presidio, the real one): the engine gets the
redacted text, the client gets redacted output, and `--log-prompts` lines, the audit log
and the traces hold none of it."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from nimble.observability.tracing import RequestTracing
from nimble.security.audit import verify
from tests.api.test_logs import captured_json_logs, lines
from tests.conftest import FAKE_MODEL
from tests.support.guarded import ANSWER, FORBIDDEN, PLAIN, choice, guarded_service

SECRET_ASK = "what is the admin password of the mail server"


@pytest.fixture
def exporter() -> Iterator[InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    yield exporter


@pytest.fixture
def tracing(exporter: InMemorySpanExporter) -> Iterator[RequestTracing]:
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    yield RequestTracing(provider)
    provider.shutdown()


def ask(text: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": text}]


async def test_audit_metric_and_spans_of_each_decision(
    tmp_path: Path, tracing: RequestTracing, exporter: InMemorySpanExporter
) -> None:
    audit = tmp_path / "audit.jsonl"
    async with guarded_service(tmp_path, audit_log=audit, tracing=tracing) as service:
        client = service.openai()
        with pytest.raises(Exception, match="no-secrets"):
            await client.chat.completions.create(model=FAKE_MODEL, messages=ask(SECRET_ASK))  # type: ignore[arg-type]
        stopped = await client.chat.completions.create(
            model=FAKE_MODEL,
            messages=ask("tell me"),
            extra_body=choice(),  # type: ignore[arg-type]
        )
        assert stopped.choices[0].finish_reason == "content_filter"
        await client.chat.completions.create(model=FAKE_MODEL, messages=ask("hello"))  # type: ignore[arg-type]
        await client.chat.completions.create(model=PLAIN, messages=ask(SECRET_ASK))  # type: ignore[arg-type]
        metrics = (await service.http.get("/metrics")).text
    entries = [json.loads(line) for line in audit.read_bytes().splitlines()]
    chat = [e for e in entries if e["path"] == "/v1/chat/completions"]
    blocked, filtered, passed, unguarded = chat
    assert blocked["status"] == 400 and blocked["model"] == FAKE_MODEL
    assert blocked["guardrails"] == [
        {
            "rail": "no-secrets",
            "stage": "input",
            "decision": "block",
            "score": None,
            "category": "denied_topic",
            "checks": 1,
        }
    ]
    assert list(blocked)[-1] == "prev"  # the chain's field stays last
    rails = {(g["rail"], g["stage"]): g for g in filtered["guardrails"]}
    assert rails["no-secrets", "input"]["decision"] == "allow"
    out = rails["no-launch", "output"]
    assert out["decision"] == "block" and out["category"] == "denied_topic"
    assert out["checks"] >= 2  # the windows before the one that blocked, and that one
    assert [g["decision"] for g in passed["guardrails"]] == ["allow", "allow"]
    assert "guardrails" not in unguarded  # a model without rails: nothing to say
    raw = audit.read_text()
    assert "password" not in raw and FORBIDDEN not in raw
    assert verify(audit).ok
    cli = subprocess.run(
        [sys.executable, "-m", "nimble.cli.main", "audit", "verify", str(audit)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert cli.returncode == 0, cli.stdout + cli.stderr

    samples = {
        line.split(" ")[0]: float(line.split(" ")[1])
        for line in metrics.splitlines()
        if line.startswith("nimble_guardrail_decisions_total{")
    }
    assert samples == {
        'nimble_guardrail_decisions_total{decision="block",rail="no-secrets"}': 1.0,
        'nimble_guardrail_decisions_total{decision="allow",rail="no-secrets"}': 2.0,
        'nimble_guardrail_decisions_total{decision="block",rail="no-launch"}': 1.0,
        'nimble_guardrail_decisions_total{decision="allow",rail="no-launch"}': 1.0,
    }
    assert 'finish_reason="content_filter"' in metrics

    spans = exporter.get_finished_spans()
    servers = [s for s in spans if s.name == "POST /v1/chat/completions"]
    checks = [s for s in spans if s.name == "nimble.guardrail"]
    blocked_span = next(
        s
        for s in checks
        if s.attributes["nimble.guardrail.stage"] == "input"
        and s.attributes["nimble.guardrail.decision"] == "block"
    )
    assert dict(blocked_span.attributes or {}) == {
        "nimble.guardrail.rail": "no-secrets",
        "nimble.guardrail.stage": "input",
        "nimble.guardrail.decision": "block",
        "nimble.guardrail.category": "denied_topic",
    }
    assert blocked_span.parent is not None
    assert blocked_span.parent.span_id == servers[0].context.span_id
    assert blocked_span.start_time is not None and blocked_span.end_time is not None
    assert blocked_span.start_time <= blocked_span.end_time
    outputs = [s for s in checks if s.attributes["nimble.guardrail.stage"] == "output"]
    assert len(outputs) == out["checks"] + 1  # the stopped answer's windows and the passed one
    everything = repr([dict(s.attributes or {}) for s in spans])
    assert "password" not in everything and FORBIDDEN not in everything


async def test_the_deployment_record_states_the_rails_in_force(tmp_path: Path) -> None:
    async with guarded_service(tmp_path) as service:
        record = (await service.http.get("/v1/manifest")).json()
    rails = record["guardrails"]
    assert rails["file"] == str(tmp_path / "guardrails.yaml")
    assert rails["models"] == {
        FAKE_MODEL: {"input": ["no-secrets"], "output": ["no-launch"]},
        PLAIN: {"input": [], "output": []},
    }
    assert rails["rails"]["no-launch"] == {
        "type": "topics",
        "stages": ["input", "output"],
        "roles": None,
        "on_error": "block",
        "timeout_s": 30.0,
        "settings": {
            "deny": [FORBIDDEN],
            "deny_patterns": [],
            "allow": [],
            "allow_patterns": [],
        },
    }
    assert rails["streaming"] == {"chunk_size": 200, "context_size": 50, "unit": "characters"}
    assert record["configuration"]["guardrails"] == str(tmp_path / "guardrails.yaml")


# ----- PII: the real rail -----

EMAIL = "jane.doe@example.com"
PHONE = "+1 415-555-0132"
PII_RAILS: dict[str, Any] = {
    "flows": {"pii": {"type": "pii", "entities": ["EMAIL_ADDRESS", "PHONE_NUMBER"]}},
    "rails": {"input": {"flows": ["pii"]}, "output": {"flows": ["pii"]}},
}


async def test_pii_is_redacted_before_the_engine_the_client_and_the_logs(
    tmp_path: Path, tracing: RequestTracing, exporter: InMemorySpanExporter
) -> None:
    audit = tmp_path / "audit.jsonl"
    answer = f"{ANSWER[:300]} write to {EMAIL} or call {PHONE} {ANSWER[:100]}"
    async with guarded_service(
        tmp_path, PII_RAILS, audit_log=audit, log_prompts=True, tracing=tracing
    ) as service:
        with captured_json_logs() as buffer:
            done = await service.openai().chat.completions.create(
                model=FAKE_MODEL,
                messages=ask(f"My e-mail is {EMAIL}, call me on {PHONE}."),  # type: ignore[arg-type]
                extra_body=choice(answer),
            )
        seen = service.engine_saw()
    sent = done.choices[0].message.content or ""
    assert EMAIL not in sent and "555-0132" not in sent
    assert "<EMAIL_ADDRESS>" in sent and "<PHONE_NUMBER>" in sent
    assert done.choices[0].finish_reason == "stop"
    assert EMAIL not in seen and "555-0132" not in seen
    assert "My e-mail is <EMAIL_ADDRESS>, call me on <PHONE_NUMBER>." in seen
    # nimble's own lines (the captured log also holds the SDK's debug lines: the request)
    mine = [e for e in lines(buffer) if str(e["logger"]).startswith("nimble")]
    logged = [str(e["message"]) for e in mine]
    assert any(m.startswith("prompt: ") and "<EMAIL_ADDRESS>" in m for m in logged)
    assert any(m.startswith("completion 0: ") and "<PHONE_NUMBER>" in m for m in logged)
    for where in (
        json.dumps(mine),
        audit.read_text(),
        repr([s.attributes for s in exporter.get_finished_spans()]),
    ):
        assert EMAIL not in where and "555-0132" not in where
    (entry,) = [json.loads(line) for line in audit.read_bytes().splitlines()]
    verdicts = {g["stage"]: g for g in entry["guardrails"]}
    assert verdicts["input"]["decision"] == "redact"
    assert verdicts["input"]["category"] == "EMAIL_ADDRESS,PHONE_NUMBER"
    assert verdicts["output"]["decision"] == "redact"
    assert "EMAIL_ADDRESS" in verdicts["output"]["category"]


async def test_log_prompts_lines_are_redacted_even_by_an_output_only_pii_rail(
    tmp_path: Path,
) -> None:
    rails = {**PII_RAILS, "rails": {"output": {"flows": ["pii"]}}}
    async with guarded_service(tmp_path, rails, log_prompts=True) as service:
        with captured_json_logs() as buffer:
            await service.openai().chat.completions.create(
                model=FAKE_MODEL,
                messages=ask(f"Reach me at {EMAIL}"),  # type: ignore[arg-type]
            )
        assert EMAIL in service.engine_saw()  # no input rail: the engine had it...
    prompts = [
        str(e["message"])
        for e in lines(buffer)
        if e["logger"] == "nimble.runtime" and str(e["message"]).startswith("prompt")
    ]
    assert prompts and all(
        EMAIL not in p and "<EMAIL_ADDRESS>" in p for p in prompts
    )  # ...not the log


async def test_a_streamed_message_counts_the_prompt_the_engine_got(tmp_path: Path) -> None:
    """message_start's input_tokens is counted before the engine's usage arrives; with a
    PII rail the engine gets the redacted prompt, and that is what both events count."""
    rails = {**PII_RAILS, "rails": {"input": {"flows": ["pii"]}}}
    asked = [{"role": "user", "content": f"call me on {PHONE} today"}]  # 2 words for 1
    async with guarded_service(tmp_path, rails) as service:
        client = service.anthropic()
        async with client.messages.stream(
            model=FAKE_MODEL,
            max_tokens=4,
            messages=asked,  # type: ignore[arg-type]
        ) as events:
            started = [e async for e in events if e.type == "message_start"]
            final = await events.get_final_message()
        whole = await client.messages.create(model=FAKE_MODEL, max_tokens=4, messages=asked)  # type: ignore[arg-type]
        counted = await client.messages.count_tokens(model=FAKE_MODEL, messages=asked)  # type: ignore[arg-type]
        assert "555-0132" not in service.engine_saw()
    (start,) = started
    assert start.message.usage.input_tokens == final.usage.input_tokens
    assert final.usage.input_tokens == whole.usage.input_tokens
    # count_tokens runs no rails: the prompt as sent, one word more than the redacted one
    assert counted.input_tokens == whole.usage.input_tokens + 1
