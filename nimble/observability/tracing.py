"""OpenTelemetry tracing: a server span per request (W3C `traceparent` in and out), with
child spans for the queue wait and the engine work, built from the request record."""

from __future__ import annotations

from starlette.types import Scope

from nimble.observability.record import RequestRecord


class RequestSpan:
    """The span of one request, from the first byte in to the last byte out."""

    trace_id: str | None = None

    def response_headers(self) -> list[tuple[bytes, bytes]]:
        return []

    def end(self, record: RequestRecord) -> None:
        return None


class RequestTracing:
    """Starts request spans. TODO(tracing): OTel implementation."""

    def start(self, record: RequestRecord, scope: Scope) -> RequestSpan:
        return RequestSpan()


def configure_tracing(service_name: str, otlp_endpoint: str | None) -> RequestTracing:
    """The request tracing of `nimble serve`. TODO(tracing): OTLP exporter when an endpoint
    is set; otherwise spans are not exported (trace ids still propagate)."""
    return RequestTracing()
