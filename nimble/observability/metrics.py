"""Prometheus metrics, per served model. Labels carry model names (the served names, never
the requested ones), endpoint names, finish reasons and status codes: no user data, no
prompt, no key (a metric per key is labelled with its hashed ref). The table in
docs/operations.md lists every name."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Protocol

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Histogram,
    disable_created_metrics,
    generate_latest,
)
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from nimble.observability.record import RequestRecord, rail_summary

PREFIX = "nimble_"

_LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 40, 80, 160)
_TOKEN_TIME_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5)
_TOKEN_BUCKETS = (1, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192, 16384, 32768)


@dataclass(frozen=True)
class ModelGauges:
    """A point-in-time reading of one model, taken at scrape time."""

    model: str
    running: int
    waiting: int
    max_running: int
    cache_usage: float | None  # the engine's KV cache use, 0..1, where it has one


class GaugeSource(Protocol):
    """What the metrics read at scrape time (the runtime implements it)."""

    def gauges(self) -> list[ModelGauges]: ...


class _GaugeCollector(Collector):
    def __init__(self, source: GaugeSource):
        self._source = source

    def collect(self) -> Iterator[Metric]:
        readings = self._source.gauges()
        families = {
            "running": GaugeMetricFamily(
                PREFIX + "num_requests_running",
                "Requests running in the engine",
                labels=["model_name"],
            ),
            "waiting": GaugeMetricFamily(
                PREFIX + "num_requests_waiting",
                "Requests waiting for a running slot",
                labels=["model_name"],
            ),
            "max_running": GaugeMetricFamily(
                PREFIX + "num_request_max",
                "Requests that may run at once (--max-running)",
                labels=["model_name"],
            ),
        }
        cache = GaugeMetricFamily(
            PREFIX + "kv_cache_usage_ratio",
            "Share of the engine's KV cache in use (0..1), for engines that have one",
            labels=["model_name"],
        )
        for reading in readings:
            families["running"].add_metric([reading.model], reading.running)
            families["waiting"].add_metric([reading.model], reading.waiting)
            families["max_running"].add_metric([reading.model], reading.max_running)
            if reading.cache_usage is not None:
                cache.add_metric([reading.model], reading.cache_usage)
        yield from families.values()
        yield cache


class Metrics:
    """The metrics of one service, in their own registry (so that tests and several apps in
    one process do not share counters)."""

    def __init__(self, source: GaugeSource | None = None):
        # no `*_created` series: they double the exposition and no dashboard reads them
        # (prometheus-client only offers a process-wide switch)
        disable_created_metrics()  # type: ignore[no-untyped-call]
        self.registry = CollectorRegistry(auto_describe=True)
        if source is not None:
            self.registry.register(_GaugeCollector(source))
        model = ["model_name"]

        def counter(name: str, doc: str, labels: list[str]) -> Counter:
            return Counter(PREFIX + name, doc, labels, registry=self.registry)

        def histogram(name: str, doc: str, buckets: tuple[float, ...]) -> Histogram:
            return Histogram(PREFIX + name, doc, model, buckets=buckets, registry=self.registry)

        self.prompt_tokens = counter("prompt_tokens", "Prompt tokens processed", model)
        self.cached_tokens = counter(
            "prompt_tokens_cached",
            "Of the prompt tokens, those the engine read from its prefix cache (llama.cpp, vLLM)",
            model,
        )
        self.generation_tokens = counter("generation_tokens", "Tokens generated", model)
        self.finished = counter(
            "request_finish",
            "Requests finished, by finish reason (stop, length, abort: client gone or error)",
            ["model_name", "finish_reason"],
        )
        self.http = counter(
            "http_requests",
            "HTTP responses by method, endpoint name (`other` for unknown paths, `health` for "
            "probes) and status code",
            ["method", "endpoint", "status"],
        )
        # by key ref (the deployment record's hashed key id; as many as keys in the file),
        # not by tool: a tool name is the model's text, without bound
        self.tool_calls_dropped = counter(
            "tool_calls_dropped",
            "Tool calls the model made that the caller's API key may not make, dropped from "
            "the answer (the policy gate)",
            ["model_name", "key"],
        )
        # by rail name (from the guardrails file: bounded) and decision (allow, block, redact)
        self.guardrail_decisions = counter(
            "guardrail_decisions",
            "Guardrail verdicts: one per rail and stage of each request (its worst: block, "
            "redact or allow)",
            ["rail", "decision"],
        )
        self.ttft = histogram(
            "time_to_first_token_seconds",
            "From the request's arrival to its first generated token",
            _LATENCY_BUCKETS,
        )
        self.tpot = histogram(
            "time_per_output_token_seconds",
            "Mean time between generated tokens of one request",
            _TOKEN_TIME_BUCKETS,
        )
        self.e2e = histogram(
            "e2e_request_latency_seconds",
            "From the request's arrival to its last byte sent",
            _LATENCY_BUCKETS,
        )
        self.queue = histogram(
            "request_queue_time_seconds",
            "Time spent waiting for a running slot",
            _LATENCY_BUCKETS,
        )
        self.request_prompt = histogram(
            "request_prompt_tokens", "Prompt tokens per request", _TOKEN_BUCKETS
        )
        self.request_generation = histogram(
            "request_generation_tokens", "Generated tokens per request", _TOKEN_BUCKETS
        )

    def observe(self, record: RequestRecord, latency: float) -> None:
        """Account one finished HTTP request."""
        endpoint = record.endpoint or (
            "health" if record.path.startswith("/v1/health") else "other"
        )
        method = record.method if record.method in _METHODS else "OTHER"
        self.http.labels(method, endpoint, str(record.status)).inc()
        for summary in rail_summary(record.guardrails):  # a blocked input has no model numbers
            self.guardrail_decisions.labels(summary.rail, summary.decision).inc()
        model = record.model
        if model is None or record.admitted_at is None:
            return  # refused before the engine: no model-level numbers
        self.e2e.labels(model).observe(latency)
        self.queue.labels(model).observe(record.admitted_at - (record.queued_at or record.started))
        self.prompt_tokens.labels(model).inc(record.prompt_tokens)
        self.cached_tokens.labels(model).inc(record.cached_tokens)
        self.request_prompt.labels(model).observe(record.prompt_tokens)
        if record.dropped_tool_calls:
            dropped = self.tool_calls_dropped.labels(model, record.key_ref or "none")
            dropped.inc(len(record.dropped_tool_calls))
        if not _generated(record):
            return
        self.generation_tokens.labels(model).inc(record.completion_tokens)
        self.request_generation.labels(model).observe(record.completion_tokens)
        if record.first_token_at is not None:
            self.ttft.labels(model).observe(record.first_token_at - record.started)
            choices = max(1, len(record.finish_reasons))
            steps = record.completion_tokens - choices
            if steps > 0 and record.last_token_at is not None:
                self.tpot.labels(model).observe(
                    (record.last_token_at - record.first_token_at) / steps
                )
        if record.aborted:
            self.finished.labels(model, "abort").inc()
        else:
            for reason in record.finish_reasons:
                self.finished.labels(model, reason).inc()

    def exposition(self) -> bytes:
        return generate_latest(self.registry)


# tasks that generate no tokens (a replica's and the gateway's records name them alike)
_NOT_GENERATIVE = frozenset({"embedding", "rerank", "classify"})


def _generated(record: RequestRecord) -> bool:
    """Whether the request is one that generates tokens (a moderation does when a guard
    model answers it, not when a classifier does): only those count in the generation
    metrics, so that a rerank is not a request that generated 0 tokens."""
    if record.task == "moderation":
        return record.first_token_at is not None
    return record.task not in _NOT_GENERATIVE


_METHODS = frozenset({"GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"})
