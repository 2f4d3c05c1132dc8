"""Unit tests of the load generator's pure functions: `pytest benchmarks` (no server needed)."""

from __future__ import annotations

import math

import pytest
from loadgen import (
    DONE,
    CpuSample,
    RequestResult,
    content_of,
    other_cpu_pct,
    parse_sse_line,
    percentile,
    prompts,
    summarize,
)


def test_percentile_interpolates_between_ranks() -> None:
    assert percentile([4.0, 1.0, 3.0, 2.0], 50) == 2.5
    assert percentile([1.0, 2.0, 3.0, 4.0, 5.0], 95) == pytest.approx(4.8)
    assert percentile([7.0], 95) == 7.0
    assert math.isnan(percentile([], 50))
    with pytest.raises(ValueError):
        percentile([1.0], 101)


def test_parse_sse_line() -> None:
    assert parse_sse_line('data: {"a": 1}') == {"a": 1}
    assert parse_sse_line("data: [DONE]") == DONE
    assert parse_sse_line(": ping - 2024") is None
    assert parse_sse_line("") is None
    assert parse_sse_line("event: message") is None


def test_content_of_ignores_role_and_usage_chunks() -> None:
    assert content_of({"choices": [{"delta": {"content": "Hi"}}]}) == "Hi"
    assert content_of({"choices": [{"delta": {"role": "assistant", "content": None}}]}) == ""
    assert content_of({"choices": [], "usage": {"completion_tokens": 3}}) == ""


def test_summarize_counts_only_successful_requests() -> None:
    ok = RequestResult(True, 2.0, 0.5, (0.1, 0.3), 10, True)
    ok2 = RequestResult(True, 3.0, 1.5, (0.2,), 30, True)
    failed = RequestResult(False, 0.1, None, (), 0, False, "HTTP 500")
    stats = summarize(4, [ok, ok2, failed], wall_s=4.0)
    assert (stats.requests, stats.errors, stats.completion_tokens) == (3, 1, 40)
    assert stats.tokens_per_s == 10.0
    assert stats.ttft_p50_ms == pytest.approx(1000.0)
    assert stats.itl_p50_ms == pytest.approx(200.0)
    assert stats.usage_reported
    assert stats.latency_max_s == 3.0


def test_prompts_are_distinct_across_levels() -> None:
    texts = prompts(8) + prompts(32, offset=8)
    assert len(set(texts)) == 40


def test_other_cpu_pct_subtracts_the_watched_processes() -> None:
    before = CpuSample(busy=1000, total=4000, own=500)
    after = CpuSample(busy=1900, total=5000, own=1300)  # 900 busy, 800 of it ours
    assert other_cpu_pct(before, after) == pytest.approx(10.0)
    assert other_cpu_pct(after, after) != other_cpu_pct(after, after)  # NaN: no time passed
