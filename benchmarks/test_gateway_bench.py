"""Unit tests of gateway.py's pure functions: `pytest benchmarks` (no server needed)."""

from __future__ import annotations

import math
from collections import Counter

import pytest
from gateway import (
    Scrape,
    assignment,
    cached_share,
    counter_diff,
    failure_kinds,
    seeded,
    system_prompt,
    tokens_per_s,
    ttfts,
)


def record(**fields: object) -> dict[str, object]:
    base: dict[str, object] = {
        "error": None,
        "phase": None,
        "ttft": 0.1,
        "prompt_tokens": 100,
        "cached_tokens": 0,
        "completion_tokens": 16,
    }
    return {**base, **fields}


def test_assignment_uses_every_prefix_equally_in_a_mixed_order() -> None:
    order = assignment(12, 96, seeded("order", 1))
    assert Counter(order) == dict.fromkeys(range(12), 8)
    # not the round-robin-friendly cycle 0, 1, 2, ...: both replicas of round-robin see a
    # prefix (a prefix at positions of one parity only would stay on one replica)
    assert order != [i % 12 for i in range(96)]
    assert all({i % 2 for i, p in enumerate(order) if p == k} == {0, 1} for k in range(12))
    assert assignment(12, 96, seeded("order", 1)) == order  # seeded: the same in each policy


def test_prompts_are_fresh_per_key_and_differ_from_the_first_word() -> None:
    a = system_prompt(seeded("prefix", "s", 1, "round-robin"), 50)
    b = system_prompt(seeded("prefix", "s", 1, "prefix-aware"), 50)
    assert a != b
    assert a == system_prompt(seeded("prefix", "s", 1, "round-robin"), 50)
    assert len(a.split()) > 50


def test_cached_share_counts_answered_requests_only() -> None:
    records = [
        record(prompt_tokens=1000, cached_tokens=990),
        record(prompt_tokens=1000, cached_tokens=0),
        record(prompt_tokens=1000, cached_tokens=1000, error="boom", phase="mid-stream"),
    ]
    assert cached_share(records) == pytest.approx(0.495)
    assert math.isnan(cached_share([]))


def test_failure_kinds_and_throughput() -> None:
    records = [
        record(),
        record(error="HTTP 503", phase="before first byte", completion_tokens=None),
        record(error="error event", phase="mid-stream", ttft=None),
    ]
    assert failure_kinds(records) == {"ok": 1, "before first byte": 1, "mid-stream": 1}
    assert tokens_per_s(records, 2.0) == 8.0
    assert ttfts(records) == [0.1]


def test_counter_diff_sums_the_growth_by_one_label() -> None:
    name = "nimble_gateway_upstream_requests_total"
    a, b = (("status", "200"), ("upstream", "u1")), (("status", "429"), ("upstream", "u1"))
    before: Scrape = {(name, a): 3.0}
    after: Scrape = {(name, a): 10.0, (name, b): 1.0, ("other_total", a): 5.0}
    assert counter_diff(before, after, name, "upstream") == {"u1": 8.0}
    assert counter_diff(after, after, name, "upstream") == {}
