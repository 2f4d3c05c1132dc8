"""OpenTelemetry: a server span per request with queue and engine children, W3C
`traceparent` in and out, GenAI attributes; off by default yet the caller's trace id still
reaches the logs; OTLP/HTTP export to a collector (a local one the test starts)."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, HTTPServer
from typing import ClassVar

import pytest
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from nimble.observability.tracing import RequestTracing, configure_tracing, otlp_traces_url
from tests.api.test_logs import captured_json_logs, lines
from tests.conftest import FAKE_MODEL, chat_body, fake_service

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT_ID = "00f067aa0ba902b7"
TRACEPARENT = f"00-{TRACE_ID}-{PARENT_ID}-01"


@pytest.fixture
def exporter() -> InMemorySpanExporter:
    return InMemorySpanExporter()


@pytest.fixture
def tracing(exporter: InMemorySpanExporter) -> Iterator[RequestTracing]:
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    yield RequestTracing(provider)
    provider.shutdown()


def by_name(spans: tuple[ReadableSpan, ...]) -> dict[str, ReadableSpan]:
    return {span.name: span for span in spans}


async def test_request_queue_and_engine_spans(
    tracing: RequestTracing, exporter: InMemorySpanExporter
) -> None:
    async with fake_service(tracing=tracing) as (_, client):
        response = await client.post(
            "/v1/chat/completions", json=chat_body(), headers={"X-Request-Id": "t-1"}
        )
    usage = response.json()["usage"]
    spans = by_name(exporter.get_finished_spans())
    assert set(spans) == {"POST /v1/chat/completions", "nimble.queue", "nimble.engine"}
    server, queue, engine = (
        spans["POST /v1/chat/completions"],
        spans["nimble.queue"],
        spans["nimble.engine"],
    )
    assert server.kind is SpanKind.SERVER and server.parent is None
    for child in (queue, engine):
        assert child.parent is not None
        assert child.parent.span_id == server.context.span_id
        assert child.context.trace_id == server.context.trace_id
    attrs = server.attributes or {}
    assert attrs["http.request.method"] == "POST"
    assert attrs["http.response.status_code"] == 200
    assert attrs["nimble.request_id"] == "t-1"
    assert attrs["gen_ai.request.model"] == FAKE_MODEL
    assert attrs["gen_ai.usage.input_tokens"] == usage["prompt_tokens"]
    assert attrs["gen_ai.usage.output_tokens"] == usage["completion_tokens"]
    assert tuple(attrs["gen_ai.response.finish_reasons"]) == ("stop",)  # type: ignore[arg-type]
    # times nest: queue, then engine, both inside the request
    assert server.start_time is not None and server.end_time is not None
    assert queue.start_time is not None and queue.end_time is not None
    assert engine.start_time is not None and engine.end_time is not None
    assert server.start_time <= queue.start_time <= queue.end_time <= engine.start_time
    assert engine.end_time <= server.end_time
    assert [event.name for event in engine.events] == ["first_token"]
    # the answer names the server span: the caller can find the trace
    trace_id = format(server.context.trace_id, "032x")
    span_id = format(server.context.span_id, "016x")
    assert response.headers["traceparent"].startswith(f"00-{trace_id}-{span_id}-")


async def test_incoming_traceparent_is_the_parent(
    tracing: RequestTracing, exporter: InMemorySpanExporter
) -> None:
    async with fake_service(tracing=tracing) as (_, client):
        response = await client.post(
            "/v1/embeddings",
            json={"model": FAKE_MODEL, "input": "x"},
            headers={"traceparent": TRACEPARENT},
        )
    server = by_name(exporter.get_finished_spans())["POST /v1/embeddings"]
    assert format(server.context.trace_id, "032x") == TRACE_ID
    assert server.parent is not None and format(server.parent.span_id, "016x") == PARENT_ID
    assert response.headers["traceparent"].startswith(f"00-{TRACE_ID}-")
    assert PARENT_ID not in response.headers["traceparent"]  # our span, not the caller's


async def test_streaming_spans_end_with_the_stream(
    tracing: RequestTracing, exporter: InMemorySpanExporter
) -> None:
    async with fake_service(tracing=tracing, token_delay=0.01) as (_, client):
        response = await client.post("/v1/chat/completions", json=chat_body(stream=True))
    assert response.text.rstrip().endswith("data: [DONE]")
    spans = by_name(exporter.get_finished_spans())
    server, engine = spans["POST /v1/chat/completions"], spans["nimble.engine"]
    assert engine.end_time is not None and engine.start_time is not None
    assert server.end_time is not None and engine.end_time <= server.end_time
    # ten-odd tokens 10 ms apart: the engine span covers the generation
    assert engine.end_time - engine.start_time >= 50_000_000
    assert (engine.attributes or {})["gen_ai.usage.output_tokens"] > 0


async def test_refusals_and_unknown_paths(
    tracing: RequestTracing, exporter: InMemorySpanExporter
) -> None:
    async with fake_service(tracing=tracing) as (_, client):
        await client.get("/v1/secret/admin-path")
        await client.post("/v1/chat/completions", json=chat_body(model="nope"))
    names = [span.name for span in exporter.get_finished_spans()]
    assert names == ["GET unmatched", "POST /v1/chat/completions"]  # no raw unknown path
    refused = exporter.get_finished_spans()[1]
    assert (refused.attributes or {})["http.response.status_code"] == 404
    assert "gen_ai.request.model" not in (refused.attributes or {})


async def test_a_server_error_marks_the_span(
    tracing: RequestTracing, exporter: InMemorySpanExporter
) -> None:
    async with fake_service(tracing=tracing) as (runtime, client):

        async def broken(request: object) -> object:
            raise RuntimeError("boom")

        runtime.models[FAKE_MODEL].engine.embed = broken  # type: ignore[method-assign]
        await client.post("/v1/embeddings", json={"model": FAKE_MODEL, "input": "x"})
    spans = by_name(exporter.get_finished_spans())
    assert spans["POST /v1/embeddings"].status.status_code is StatusCode.ERROR
    assert spans["nimble.engine"].status.status_code is StatusCode.ERROR


async def test_tracing_off_still_logs_the_callers_trace_id() -> None:
    async with fake_service() as (_, client):
        with captured_json_logs() as buffer:
            response = await client.post(
                "/v1/chat/completions", json=chat_body(), headers={"traceparent": TRACEPARENT}
            )
            plain = await client.get("/v1/models")
    assert "traceparent" not in response.headers and "traceparent" not in plain.headers
    access = [e for e in lines(buffer) if e["logger"] == "nimble.access"]
    assert access[0]["trace_id"] == TRACE_ID
    assert "trace_id" not in access[1]  # no incoming context, no tracing: no id


def test_otlp_endpoint_is_a_base_url() -> None:
    assert otlp_traces_url("http://collector:4318") == "http://collector:4318/v1/traces"
    assert otlp_traces_url("http://collector:4318/") == "http://collector:4318/v1/traces"
    assert otlp_traces_url("http://c:4318/v1/traces") == "http://c:4318/v1/traces"
    assert not configure_tracing("nimble", None).enabled


class _Collector(BaseHTTPRequestHandler):
    received: ClassVar[list[tuple[str, str, bytes]]] = []

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        self.received.append((self.path, self.headers["Content-Type"], body))
        self.send_response(200)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: object) -> None:
        return None


async def test_spans_are_exported_over_otlp_http() -> None:
    collector = HTTPServer(("127.0.0.1", 0), _Collector)
    thread = threading.Thread(target=collector.serve_forever, daemon=True)
    thread.start()
    try:
        endpoint = f"http://127.0.0.1:{collector.server_address[1]}"
        tracing = configure_tracing("nimble-test", endpoint)
        async with fake_service(tracing=tracing) as (_, client):
            response = await client.post("/v1/chat/completions", json=chat_body())
        tracing.shutdown()  # flushes the batch
    finally:
        collector.shutdown()
        collector.server_close()
        thread.join()
    assert response.status_code == 200
    (path, content_type, body) = _Collector.received[-1]
    assert path == "/v1/traces"
    assert content_type == "application/x-protobuf"
    assert b"nimble-test" in body and b"nimble.engine" in body
