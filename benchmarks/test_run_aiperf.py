"""Unit tests of run_aiperf's pure parts: `pytest benchmarks` (no aiperf, no server)."""

from __future__ import annotations

import math
from pathlib import Path

from run_aiperf import (
    Plan,
    Run,
    aiperf_args,
    pairs_table,
    read_metrics,
    runs_table,
    server_command,
)
from run_llm import Settings as LlmSettings

PLAN = Plan(concurrency=4, requests=40, isl=128, osl=64, seed=0, quiet_below=10, quiet_max_wait=60)


def test_aiperf_is_asked_for_the_issue_s_load() -> None:
    args = aiperf_args(PLAN, "http://127.0.0.1:9", Path("/tok"), Path("/out/1-nimble"))

    def value(flag: str) -> str:
        return args[args.index(flag) + 1]

    assert args[0] == "profile"
    assert "--streaming" in args and "--use-legacy-max-tokens" in args
    assert value("--endpoint-type") == "chat" and value("--url") == "http://127.0.0.1:9"
    assert value("--concurrency") == "4" and value("--request-count") == "40"
    assert value("--synthetic-input-tokens-mean") == "128"
    assert value("--synthetic-input-tokens-stddev") == "0"
    assert value("--output-tokens-mean") == "64" and value("--output-tokens-stddev") == "0"
    assert "ignore_eos:true" in args  # every answer has 64 tokens
    assert value("--tokenizer") == "/tok" and value("--artifact-dir") == "/out/1-nimble"


def test_read_metrics_takes_aiperf_s_summary_at_the_top_level_or_in_records() -> None:
    top = {
        "schema_version": "1",
        "time_to_first_token": {"unit": "ms", "avg": 150.5, "p50": 149.0},
        "output_token_throughput": {"unit": "tokens/sec", "avg": 120.0},
        "request_count": {"unit": "requests", "avg": 40.0},
        "error_request_count": None,
        "telemetry_data": {"avg": 1},
    }
    assert read_metrics(top) == {
        "time_to_first_token": {"avg": 150.5, "p50": 149.0},
        "output_token_throughput": {"avg": 120.0},
        "request_count": {"avg": 40.0},
    }
    listed = {"records": [{"tag": "inter_token_latency", "avg": 30.0, "unit": "ms"}]}
    assert read_metrics(listed) == {"inter_token_latency": {"avg": 30.0}}


def _run(round_: int, server: str, tok_s: float, ttft: float, itl: float, cpu: float) -> Run:
    metrics = {
        "output_token_throughput": {"avg": tok_s},
        "time_to_first_token": {"avg": ttft, "p50": ttft, "p99": ttft},
        "inter_token_latency": {"avg": itl, "p50": itl},
        "total_output_tokens": {"avg": 2560.0},
        "request_count": {"avg": 40.0},
        "output_sequence_length": {"avg": 64.0},
    }
    return Run(round_, server, "cmd", metrics=metrics, server_cpu_s=cpu, loop_cpu_s=0.5)


def test_every_run_is_listed_and_nimble_is_divided_by_the_engine_of_its_round() -> None:
    runs = [
        _run(1, "nimble", 110.0, 160.0, 30.0, 51.2),
        _run(1, "engine", 100.0, 150.0, 30.0, 25.6),
        _run(2, "nimble", 90.0, 150.0, 33.0, 25.6),
        _run(2, "engine", 100.0, 150.0, 30.0, 25.6),
        Run(3, "nimble", "cmd", failed="aiperf exited with 1"),
    ]
    table = runs_table(runs)
    assert len(table) == 2 + 5
    assert "| 1 | nimble | 40/40 | 110.0 | 160 |" in table[2]
    assert "20.00" in table[2]  # 51.2 s of CPU over 2560 tokens
    assert "failed: aiperf exited with 1" in table[-1]
    pairs = pairs_table(runs)
    assert pairs[2] == "| 1 | 1.10x | 1.07x | +10 | +10 | 1.00x | 2.00x |"
    assert pairs[3] == "| 2 | 0.90x | 1.00x | +0 | +0 | 1.10x | 1.00x |"
    assert pairs[4] == "| median | 1.00x | 1.03x | +5 | +5 | 1.05x | 1.50x |"


def test_a_run_without_numbers_shows_none() -> None:
    run = Run(1, "nimble", "cmd")
    assert math.isnan(run.output_tokens) and math.isnan(run.per_token_ms(1.0))


def test_another_build_is_divided_by_the_engine_of_its_own_round() -> None:
    runs = [
        _run(1, "nimble-base", 80.0, 170.0, 30.0, 25.6),
        _run(1, "nimble", 110.0, 160.0, 30.0, 25.6),
        _run(1, "engine", 100.0, 150.0, 30.0, 25.6),
    ]
    assert (
        pairs_table(runs, "nimble-base")[2] == "| 1 | 0.80x | 1.13x | +20 | +20 | 1.00x | 1.00x |"
    )
    assert pairs_table(runs)[2] == "| 1 | 1.10x | 1.07x | +10 | +10 | 1.00x | 1.00x |"


def test_nimble_base_runs_its_own_command() -> None:
    settings = LlmSettings(
        Path("/m.gguf"),
        2,
        8192,
        4,
        "{bin}/nimble serve --port {port}",
        "/usr/bin/env PYTHONPATH=/base {bin}/nimble serve --port {port}",
    )
    base = server_command("nimble-base", settings, 9)
    assert base[:2] == ["/usr/bin/env", "PYTHONPATH=/base"] and base[-2:] == ["--port", "9"]
    assert server_command("nimble", settings, 9)[0].endswith("/nimble")
