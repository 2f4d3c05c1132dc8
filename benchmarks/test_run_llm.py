"""Unit tests of run_llm's table logic: `pytest benchmarks` (no server needed)."""

from __future__ import annotations

import math
import shlex
import sys
from pathlib import Path

from loadgen import LevelStats
from run_llm import HEADERS, TARGETS, Settings, TargetRun, combine, headers, rows


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


def test_a_base_build_gets_its_own_ratio_to_the_engine() -> None:
    runs = [
        TargetRun("engine", [level(1, 80.0), level(4, 100.0)]),
        TargetRun("nimble-base", [level(1, 40.0), level(4, 100.0)]),
        TargetRun("nimble", [level(1, 100.0), level(4, 90.0)]),
    ]
    assert headers(runs)[-2:] == ["server ÷ engine (tok/s)", "nimble ÷ server (tok/s)"]
    table = rows(runs)
    assert [r[1] for r in table] == ["nimble", "nimble-base", "engine"] * 2
    assert [r[-2:] for r in table[:3]] == [
        ["1.25x", "1.00x"],
        ["0.50x", "2.50x"],
        ["1.00x", "1.25x"],
    ]
    assert [r[-2] for r in table[3:]] == ["0.90x", "1.00x", "1.00x"]
    assert all(len(r) == len(headers(runs)) for r in table)


def test_without_a_base_build_the_table_is_unchanged() -> None:
    runs = [TargetRun("nimble", [level(1, 100.0)]), TargetRun("nimble-base", skipped="failed")]
    assert headers(runs) == HEADERS
    assert all(len(r) == len(HEADERS) for r in rows(runs))


def test_the_base_command_fills_the_same_fields_as_nimbles() -> None:
    template = "/usr/bin/env PYTHONPATH=/old {bin}/nimble serve --model {model} --port {port} "
    template += "\\\n    --max-running {parallel} --threads {threads} --context-length {ctx}"
    settings = Settings(Path("/m.gguf"), 2, 8192, 8, "unused", template)
    argv = TARGETS["nimble-base"].command(settings, 1234)
    assert argv[:2] == ["/usr/bin/env", "PYTHONPATH=/old"]
    assert argv[2] == str(Path(sys.executable).parent / "nimble")
    assert shlex.join(argv[3:]) == (
        "serve --model /m.gguf --port 1234 --max-running 8 --threads 2 --context-length 8192"
    )
