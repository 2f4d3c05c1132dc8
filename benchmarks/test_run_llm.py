"""Unit tests of run_llm's table logic: `pytest benchmarks` (no server needed)."""

from __future__ import annotations

import math

from loadgen import LevelStats
from run_llm import TargetRun, combine, rows


def level(c: int, tok_s: float, other: float = 0.0) -> LevelStats:
    return LevelStats(c, 8, 0, 10.0, int(tok_s * 10), tok_s, 100.0, 200.0, 10.0, 1.0, True, other)


def test_combine_keeps_the_least_disturbed_round_per_level() -> None:
    first = TargetRun("engine", [level(1, 50.0, other=40.0), level(4, 90.0, other=1.0)])
    second = TargetRun("engine", [level(1, 70.0, other=2.0), level(4, 20.0, other=math.nan)])
    failed = TargetRun("engine", skipped="failed: boom")
    combined = combine([first, failed, second])
    assert [s.tokens_per_s for s in combined.levels] == [70.0, 90.0]


def test_rows_put_nimble_first_with_ratios_to_each_server() -> None:
    runs = [
        TargetRun("llama-cpp-python", [level(1, 25.0)]),
        TargetRun("nimble", [level(1, 100.0)]),
        TargetRun("engine", [level(1, 80.0)]),
        TargetRun("absent", skipped="not found"),
    ]
    table = rows(runs)
    assert [r[1] for r in table] == ["nimble", "engine", "llama-cpp-python"]
    assert [r[-1] for r in table] == ["1.00x", "1.25x", "4.00x"]
