"""nimble's own text exposition is prometheus-client's, byte for byte."""

from __future__ import annotations

from prometheus_client import Counter, Summary, generate_latest

from nimble.observability.metrics import Metrics, ModelGauges
from nimble.observability.record import RequestRecord

ODD = 'we"ird\\model\nname'  # a served name with every character the format escapes


class _Gauges:
    def gauges(self) -> list[ModelGauges]:
        return [ModelGauges("chat", 3, 1, 4, 0.25), ModelGauges(ODD, 0, 0, 1, None)]


def _record(model: str, status: int = 200, aborted: bool = False) -> RequestRecord:
    return RequestRecord(
        "r",
        method="POST",
        path="/v1/chat/completions",
        endpoint="chat",
        status=status,
        model=model,
        task="chat",
        prompt_tokens=128,
        completion_tokens=64,
        cached_tokens=5,
        queued_at=10.0,
        admitted_at=10.5,
        first_token_at=11.0,
        last_token_at=13.0,
        finish_reasons=["length"],
        aborted=aborted,
        started=9.0,
    )


def test_the_exposition_is_generate_latest_s_text() -> None:
    metrics = Metrics(_Gauges())
    assert metrics.exposition() == generate_latest(metrics.registry)  # nothing observed yet
    for latency in (0.001, 0.3, 7.0, 1e9):  # bucket edges, +Inf, a value Go writes as 1e+09
        metrics.observe(_record("chat"), latency)
    metrics.observe(_record(ODD, status=499, aborted=True), 2.0)
    metrics.observe(RequestRecord("m", method="BREW", path="/x", status=404), 0.01)
    text = metrics.exposition()
    assert text == generate_latest(metrics.registry)
    assert text == metrics.exposition()  # the label texts kept from the first scrape
    assert b'model_name="we\\"ird\\\\model\\nname"' in text


def test_a_metric_of_another_kind_is_written_by_prometheus_client() -> None:
    metrics = Metrics(_Gauges())
    summary = Summary(
        "nimble_test_seconds", "A kind nimble does not use", registry=metrics.registry
    )
    summary.observe(1.5)
    Counter("nimble_test_other", "A plain counter", registry=metrics.registry).inc()
    assert metrics.exposition() == generate_latest(metrics.registry)
