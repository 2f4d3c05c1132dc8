"""Unit tests of ttft_paired's pure parts: `pytest benchmarks` (no server needed)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest
from run_llm import Settings
from ttft_paired import (
    Options,
    aiperf_texts,
    cpu_list,
    labels,
    mean_gap_ms,
    parse_env,
    parse_servers,
    prefill_times,
    prompt_texts,
    report,
    request_body,
)

# llama.cpp's info log as nimble --engine-log prints it: its warm-up at load, then requests
LOG = """\
0.04.514.368 I slot launch_slot_: id  3 | task 0 | processing task, is_child = 0
0.04.531.869 I slot print_timing: id  3 | task 0 | prompt eval time =      16.93 ms /     1 \
tokens (   16.93 ms per token,    59.08 tokens per second)
0.04.531.900 I        eval time =       0.00 ms /     1 tokens
0.08.037.313 I slot print_timing: id  2 | task 2 | prompt eval time =    1304.19 ms /   165 \
tokens (    7.90 ms per token,   126.52 tokens per second)
0.09.197.442 I slot print_timing: id  2 | task 4 | prompt eval time =    1084.79 ms /   134 \
tokens (    8.10 ms per token,   123.53 tokens per second)
"""


def test_prefill_times_are_the_last_requests_in_order() -> None:
    assert prefill_times(LOG, 2) == [1304.19, 1084.79]
    assert prefill_times(LOG, 3) == [16.93, 1304.19, 1084.79]


def test_too_few_timings_in_the_log_is_an_error_not_a_shifted_pairing() -> None:
    with pytest.raises(RuntimeError, match="3 prompt timings in the log, 4 requests sent"):
        prefill_times(LOG, 4)


def test_given_prompts_are_cycled_and_made_distinct() -> None:
    texts = prompt_texts(Options(pairs=3, max_tokens=1, texts=("a b", "c d")), 3)
    assert texts == ["(request 1) a b", "(request 2) c d", "(request 3) a b"]
    own = prompt_texts(Options(pairs=3, max_tokens=1), 3)
    assert len(set(own)) == 3 and not own[0].startswith("(request")


def test_aiperf_inputs_give_their_user_messages(tmp_path: Path) -> None:
    inputs = {
        "data": [
            {"session_id": "s1", "payloads": [{"messages": [{"role": "user", "content": "x y"}]}]},
            {"session_id": "s2", "payloads": [{"messages": [{"role": "user", "content": "z"}]}]},
        ]
    }
    path = tmp_path / "inputs.json"
    path.write_text(json.dumps(inputs))
    assert aiperf_texts(path) == ("x y", "z")


def test_cpu_lists_as_taskset_writes_them() -> None:
    assert cpu_list("0") == {0}
    assert cpu_list("0-2,5") == {0, 1, 2, 5}


def test_the_report_splits_ttft_into_prefill_and_the_rest() -> None:
    result = {
        "ttft_ms": {"nimble": [110.0, 130.0, 120.0], "engine": [100.0, 125.0, 118.0]},
        "prefill_ms": {"nimble": [100.0, 120.0, 110.0], "engine": [92.0, 117.0, 110.0]},
    }
    settings = Settings(Path("/m.gguf"), 1, 8192, 8, "")
    text = report(settings, Options(pairs=3, max_tokens=1, split=True, server_cpus="0"), result)
    lines = text.splitlines()
    assert "servers on CPUs 0" in lines[2]
    diffs = [line for line in lines if "median of the pairs" in line]
    # TTFT 10, 5, 2 -> +5; prefill 8, 3, 0 -> +3; the rest 2, 2, 2 -> +2
    assert [d.split("|")[1].strip() for d in diffs] == [
        "TTFT",
        "llama.cpp's prefill",
        "TTFT - prefill",
    ]
    assert [d.split("|")[3].split()[0] for d in diffs] == ["+5.0", "+3.0", "+2.0"]


def test_without_split_the_report_has_ttft_only() -> None:
    result = {"ttft_ms": {"nimble": [110.0, 130.0], "engine": [100.0, 126.0]}}
    settings = Settings(Path("/m.gguf"), 2, 8192, 8, "")
    text = report(settings, Options(pairs=2, max_tokens=8), result)
    assert "loadgen's prompts" in text and "servers on CPUs" not in text
    diffs = [line for line in text.splitlines() if "median of the pairs" in line]
    assert len(diffs) == 1 and diffs[0].startswith("| TTFT |")


def test_nimble_env_is_parsed_and_named_in_the_report() -> None:
    assert parse_env("LD_PRELOAD=/usr/lib/libjemalloc.so.2") == (
        "LD_PRELOAD",
        "/usr/lib/libjemalloc.so.2",
    )
    assert parse_env("EMPTY=") == ("EMPTY", "")
    for bad in ("NOVALUE", "=x"):
        with pytest.raises(argparse.ArgumentTypeError):
            parse_env(bad)
    result = {"ttft_ms": {"nimble": [110.0], "engine": [100.0]}}
    options = Options(pairs=1, max_tokens=8, nimble_env=(("LD_PRELOAD", "libjemalloc.so.2"),))
    text = report(Settings(Path("/m.gguf"), 1, 8192, 8, ""), options, result)
    assert "nimble with LD_PRELOAD=libjemalloc.so.2" in text.splitlines()[2]


def test_a_server_paired_with_itself_is_the_control() -> None:
    assert parse_servers("engine,engine") == ("engine", "engine")
    assert labels(("engine", "engine")) == ("engine", "engine-2")
    assert labels(("nimble", "engine")) == ("nimble", "engine")
    for bad in ("engine", "engine,vllm", "nimble,engine,engine"):
        with pytest.raises(argparse.ArgumentTypeError):
            parse_servers(bad)
    result = {"ttft_ms": {"engine": [100.0, 130.0], "engine-2": [104.0, 127.0]}}
    options = Options(pairs=2, max_tokens=8, servers=("engine", "engine"))
    text = report(Settings(Path("/m.gguf"), 1, 8192, 8, ""), options, result)
    assert text.splitlines()[2].startswith("engine against engine-2: 2 pairs")
    diffs = [line for line in text.splitlines() if "median of the pairs" in line]
    # -4 and +3: the median of the pairs is -0.5, the first minus the second
    assert diffs == [
        "| TTFT | engine - engine-2, median of the pairs | -0.5 (95% interval -4.0 .. +3.0; "
        "-0.4% of engine-2's p50) | |"
    ]


def test_inter_token_latency_is_paired_when_more_than_one_token_is_asked() -> None:
    assert mean_gap_ms((0.010, 0.014)) == pytest.approx(12.0)
    with pytest.raises(RuntimeError, match="no inter-token latency"):
        mean_gap_ms(())
    options = Options(pairs=2, max_tokens=64, ignore_eos=True, scrape_s=0.333)
    body = request_body("m", "hello", options)
    assert body["ignore_eos"] is True and body["max_tokens"] == 64
    assert "ignore_eos" not in request_body("m", "hello", Options(pairs=2, max_tokens=64))
    result = {
        "ttft_ms": {"nimble": [110.0, 120.0], "engine": [100.0, 100.0]},
        "itl_ms": {"nimble": [13.0, 13.4], "engine": [12.5, 12.5]},
    }
    text = report(Settings(Path("/m.gguf"), 1, 8192, 8, ""), options, result)
    assert "ignore_eos, /metrics fetched every 0.333 s" in text.splitlines()[2]
    itl = [line for line in text.splitlines() if line.startswith("| inter-token latency |")]
    # differences +0.5 and +0.9: median +0.7 ms, 5.6% of the engine's 12.5
    assert itl[-1] == (
        "| inter-token latency | nimble - engine, median of the pairs | +0.7 (95% interval "
        "+0.5 .. +0.9; +5.6% of engine's p50) | |"
    )
