"""OpenTelemetry tracing: a server span per request (W3C `traceparent` in and out), with
child spans for the queue wait and the engine work.

The child spans are built when the request ends, from the times the runtime wrote into the
request record: no span context is attached across the awaits and yields of a streaming
generation (an async generator resumes in other tasks, where detaching a context fails).
Attributes follow the OpenTelemetry HTTP and GenAI semantic conventions; never a prompt,
a completion or a key.
"""

from __future__ import annotations

import time

from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.trace import Span, SpanKind, Status, StatusCode
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
from starlette.types import Scope

from nimble.observability.record import RequestRecord
from nimble.version import __version__

_PROPAGATOR = TraceContextTextMapPropagator()


def _incoming_context(scope: Scope) -> Context:
    """The caller's trace context from the `traceparent`/`tracestate` headers (if valid)."""
    carrier = {
        key.decode("latin-1").lower(): value.decode("latin-1")
        for key, value in scope.get("headers", [])
        if key.lower() in (b"traceparent", b"tracestate")
    }
    return _PROPAGATOR.extract(carrier)


def _trace_id(span: Span) -> str | None:
    context = span.get_span_context()
    return trace.format_trace_id(context.trace_id) if context.is_valid else None


class RequestSpan:
    """The span of one request, from its arrival to the last byte of its answer."""

    def __init__(self, span: Span, tracer: trace.Tracer | None):
        self._span = span
        self._tracer = tracer
        self.trace_id = _trace_id(span)

    def response_headers(self) -> list[tuple[bytes, bytes]]:
        """`traceparent` (and `tracestate`) naming this request's span, when it records."""
        if self._tracer is None:
            return []
        carrier: dict[str, str] = {}
        _PROPAGATOR.inject(carrier, context=trace.set_span_in_context(self._span))
        return [(key.encode(), value.encode()) for key, value in carrier.items()]

    def end(self, record: RequestRecord) -> None:
        if self._tracer is None:
            return
        span = self._span
        span.set_attribute("http.response.status_code", record.status)
        if record.status >= 500 or record.status == 0:
            span.set_status(Status(StatusCode.ERROR))
        if record.key_id:
            span.set_attribute("nimble.key_id", record.key_id)
        if record.model is not None:
            span.set_attributes(
                {
                    "gen_ai.request.model": record.model,
                    "gen_ai.response.model": record.model,
                    "gen_ai.usage.input_tokens": record.prompt_tokens,
                    "gen_ai.usage.output_tokens": record.completion_tokens,
                }
            )
            if record.finish_reasons:
                span.set_attribute("gen_ai.response.finish_reasons", record.finish_reasons)
            if record.dropped_tool_calls:  # the policy gate: names only
                span.set_attribute("nimble.tool_calls_dropped", record.dropped_tool_calls)
            self._children(record)
        self._rails(record)
        span.end()

    def _children(self, record: RequestRecord) -> None:
        assert self._tracer is not None
        parent = trace.set_span_in_context(self._span)
        model = record.model or ""
        if record.queued_at is not None and record.admitted_at is not None:
            queue = self._tracer.start_span(
                "nimble.queue",
                context=parent,
                start_time=record.wall_ns(record.queued_at),
                attributes={"gen_ai.request.model": model},
            )
            queue.end(end_time=record.wall_ns(record.admitted_at))
        if record.admitted_at is None:
            return
        finished = record.finished_at if record.finished_at is not None else time.monotonic()
        engine = self._tracer.start_span(
            "nimble.engine",
            context=parent,
            start_time=record.wall_ns(record.admitted_at),
            attributes={
                "gen_ai.request.model": model,
                "nimble.task": record.task or "",
                "gen_ai.usage.input_tokens": record.prompt_tokens,
                "gen_ai.usage.output_tokens": record.completion_tokens,
                "nimble.aborted": record.aborted,
            },
        )
        if record.first_token_at is not None:
            engine.add_event("first_token", timestamp=record.wall_ns(record.first_token_at))
            engine.set_attribute(
                "nimble.time_to_first_token_s", record.first_token_at - record.started
            )
        if record.aborted:
            engine.set_status(Status(StatusCode.ERROR, "aborted: client gone or engine error"))
        engine.end(end_time=record.wall_ns(finished))

    def _rails(self, record: RequestRecord) -> None:
        """A span per guardrail check (over the input, or over one window of the output):
        the rail, its verdict, score and category; never the text it read."""
        assert self._tracer is not None
        parent = trace.set_span_in_context(self._span)
        for check in record.guardrails:
            attributes: dict[str, str | float] = {
                "nimble.guardrail.rail": check.rail,
                "nimble.guardrail.stage": check.stage,
                "nimble.guardrail.decision": check.decision,
            }
            if check.score is not None:
                attributes["nimble.guardrail.score"] = check.score
            if check.category is not None:
                attributes["nimble.guardrail.category"] = check.category
            span = self._tracer.start_span(
                "nimble.guardrail",
                context=parent,
                start_time=record.wall_ns(check.started),
                attributes=attributes,
            )
            span.end(end_time=record.wall_ns(check.finished))


class RequestTracing:
    """Starts request spans on `provider`. Without one, tracing is off: no spans, but the
    trace id of an incoming `traceparent` still reaches the logs and the audit log."""

    def __init__(self, provider: TracerProvider | None = None):
        self._provider = provider
        self._tracer = provider.get_tracer("nimble", __version__) if provider else None

    @property
    def enabled(self) -> bool:
        return self._tracer is not None

    def start(self, record: RequestRecord, scope: Scope) -> RequestSpan:
        incoming = _incoming_context(scope)
        if self._tracer is None:
            return RequestSpan(trace.get_current_span(incoming), None)
        route = record.path if record.endpoint is not None or _is_probe(record.path) else None
        span = self._tracer.start_span(
            f"{record.method} {route or 'unmatched'}",
            context=incoming,
            kind=SpanKind.SERVER,
            start_time=record.started_wall_ns,
            attributes={
                "http.request.method": record.method,
                "url.path": record.path,
                "nimble.request_id": record.request_id,
                **({"client.address": record.client.rsplit(":", 1)[0]} if record.client else {}),
            },
        )
        return RequestSpan(span, self._tracer)

    def shutdown(self) -> None:
        """Export what is buffered and stop (at server shutdown)."""
        if self._provider is not None:
            self._provider.shutdown()


def _is_probe(path: str) -> bool:
    return path.startswith("/v1/health/")


def otlp_traces_url(endpoint: str) -> str:
    """OTEL_EXPORTER_OTLP_ENDPOINT is a base URL: traces go to `<base>/v1/traces` (as the
    exporter does when it reads the variable itself)."""
    base = endpoint.rstrip("/")
    return base if base.endswith("/v1/traces") else base + "/v1/traces"


def configure_tracing(service_name: str, otlp_endpoint: str | None) -> RequestTracing:
    """The request tracing of `nimble serve`: OTLP/HTTP export in batches when an endpoint
    is set, off otherwise. The provider is nimble's own (not the global one)."""
    if not otlp_endpoint:
        return RequestTracing()
    # imported here: the exporter pulls in protobuf and requests, unused without a collector
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    provider = TracerProvider(
        resource=Resource.create({"service.name": service_name, "service.version": __version__})
    )
    provider.add_span_processor(
        BatchSpanProcessor(OTLPSpanExporter(endpoint=otlp_traces_url(otlp_endpoint)))
    )
    return RequestTracing(provider)
