"""The gateway's own Prometheus series, per upstream, beside the per-request ones that
`nimble serve` also has (`nimble_http_requests_total`, latency histograms): the table in
docs/scaling.md lists them."""

from __future__ import annotations

from collections.abc import Callable, Iterator

from prometheus_client import Counter, Histogram
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from nimble.gateway.upstreams import Upstream
from nimble.observability.metrics import PREFIX, Metrics

_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 40, 80)
NAME = PREFIX + "gateway_"


class _UpstreamGauges(Collector):
    def __init__(self, upstreams: Callable[[], list[Upstream]]):
        self._upstreams = upstreams

    def collect(self) -> Iterator[Metric]:
        up = GaugeMetricFamily(
            NAME + "upstream_up", "1 while the upstream is in the rotation", labels=["upstream"]
        )
        flight = GaugeMetricFamily(
            NAME + "upstream_in_flight",
            "Requests the gateway has sent the upstream that have not finished",
            labels=["upstream"],
        )
        for upstream in self._upstreams():
            up.add_metric([upstream.url], 1.0 if upstream.ready else 0.0)
            flight.add_metric([upstream.url], upstream.in_flight)
        yield up
        yield flight


class GatewayMetrics:
    """Counters of what the gateway did with each request, on the service's registry."""

    def __init__(self, metrics: Metrics, upstreams: Callable[[], list[Upstream]]):
        registry = metrics.registry
        registry.register(_UpstreamGauges(upstreams))
        self.requests = Counter(
            NAME + "upstream_requests",
            "Requests sent to an upstream, by the status it answered",
            ["upstream", "status"],
            registry=registry,
        )
        self.errors = Counter(
            NAME + "upstream_errors",
            "Upstream failures: connect (refused, unreachable), disconnected (a pooled "
            "connection closed before an answer: sent again on a new one), status (429/503 "
            "before the first byte), broken (the stream ended early)",
            ["upstream", "kind"],
            registry=registry,
        )
        self.retries = Counter(
            NAME + "retries",
            "Requests sent to another upstream after one failed before its first byte",
            ["upstream"],
            registry=registry,
        )
        self.first_byte = Histogram(
            NAME + "upstream_first_byte_seconds",
            "From sending the request to an upstream to its first byte of answer",
            ["upstream"],
            buckets=_LATENCY_BUCKETS,
            registry=registry,
        )
        self.decisions = Counter(
            NAME + "routing_decisions",
            "Routing decisions by policy and reason (prefix-hit: the replica that held the "
            "prompt's prefix; prefix-miss; prefix-overloaded: it held it but was too busy)",
            ["policy", "reason"],
            registry=registry,
        )
        self.prefix_chars = Counter(
            NAME + "prefix_matched_chars",
            "Prompt characters sent to a replica known to hold them (prefix-aware)",
            registry=registry,
        )
