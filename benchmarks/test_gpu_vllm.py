"""Unit tests of gpu_vllm's tables, targets and model builder: `pytest benchmarks` (no GPU,
no server). The whole path, servers included, runs in tests/shipping/test_gpu_check.py."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest
from gpu_vllm import (
    QWEN_05B,
    Measured,
    Plan,
    build_model,
    level_table,
    render,
    result_of,
    ttft_summary,
    with_port,
)

LEVELS = (1, 16)


def stats(c: int, tok_s: float, ttft_ms: float = 20.0, errors: int = 0) -> dict[str, Any]:
    return {
        "concurrency": c,
        "requests": 8,
        "errors": errors,
        "tokens_per_s": tok_s,
        "ttft_p50_ms": ttft_ms,
        "itl_p50_ms": 3.0,
        "client_cpu_pct": 40.0,
    }


def measured(nimble: list[list[float]], vllm: list[list[float]]) -> Measured:
    """Rounds of tokens/s per level for each side."""
    m = Measured()
    for n_round, v_round in zip(nimble, vllm, strict=True):
        m.rounds.append(
            {
                "nimble": [stats(c, x) for c, x in zip(LEVELS, n_round, strict=True)],
                "vllm": [stats(c, x) for c, x in zip(LEVELS, v_round, strict=True)],
            }
        )
    return m


def plan() -> Plan:
    return Plan(LEVELS, 128, 4, 3, 10, 16, deadline=math.inf)


META = {
    "when": "now",
    "gpu": "NVIDIA H200",
    "vllm_version": "0.11.0",
    "nimble_version": "0.1.0",
    "revision": "abc",
    "python": "3.12",
    "model": "m",
    "engine_argv": "vllm serve m",
    "nimble_argv": "nimble serve",
    "max_tokens": 128,
    "per_slot": 4,
    "ttft_max_tokens": 16,
}


def test_the_ratio_is_of_the_means_over_rounds_with_each_rounds_own_beside_it() -> None:
    rows = level_table(measured([[98, 970], [102, 990]], [[100, 1000], [100, 1000]]), LEVELS)
    assert [row["streams"] for row in rows] == [1, 16]
    assert rows[0]["ratio"] == pytest.approx(1.0)
    assert rows[0]["round_ratios"] == pytest.approx([0.98, 1.02])
    assert rows[1]["ratio"] == pytest.approx(0.98) and rows[1]["passed"]
    low = level_table(measured([[96, 1000]], [[100, 1000]]), LEVELS)
    assert low[0]["ratio"] == pytest.approx(0.96) and not low[0]["passed"]


def test_ttft_is_the_median_of_the_paired_differences() -> None:
    m = Measured()
    m.ttft_pairs_ms = {"vllm": [10.0, 11.0, 30.0, 10.0], "nimble": [12.0, 13.0, 31.0, 40.0]}
    summary = ttft_summary(m)
    assert summary is not None
    assert summary["delta_ms"] == pytest.approx(2.0)  # of +2, +2, +1, +30
    assert summary["passed"]
    m.ttft_pairs_ms["nimble"] = [v + 6.0 for v in m.ttft_pairs_ms["vllm"]]
    assert not ttft_summary(m)["passed"]  # type: ignore[index]
    assert ttft_summary(Measured()) is None


def test_targets_and_the_report() -> None:
    m = measured([[99, 900]], [[100, 1000]])  # 16 streams: 0.90x
    m.ttft_pairs_ms = {"vllm": [10.0] * 4, "nimble": [11.0] * 4}
    m.rounds[0]["nimble"][0]["errors"] = 0
    result = result_of(m, plan(), META)
    assert result["targets"] == {
        "tokens/s at 1 stream(s) >= 0.97x": True,
        "tokens/s at 16 stream(s) >= 0.97x": False,
        "TTFT at 1 stream within 5 ms": True,
    }
    report = render(result)
    assert "| 16 | 1000.0 | 900.0 | 0.900 | 0.900 | FAIL |" in report
    assert "- tokens/s at 16 stream(s) >= 0.97x: FAIL" in report
    assert "+1.00 ms" in report
    json.dumps(result)  # the raw file is JSON


def test_errors_through_nimble_miss_the_target_and_missing_levels_are_not_measured() -> None:
    m = measured([[100, 1000]], [[100, 1000]])
    m.rounds[0]["nimble"][1]["errors"] = 1
    targets = result_of(m, Plan((1, 16, 64), 128, 4, 3, 10, 16, math.inf), META)["targets"]
    assert targets["tokens/s at 1 stream(s) >= 0.97x"] is True
    assert targets["tokens/s at 16 stream(s) >= 0.97x"] is False
    assert targets["tokens/s at 64 stream(s) >= 0.97x"] is None
    assert targets["TTFT at 1 stream within 5 ms"] is None


def test_with_port_replaces_only_the_port() -> None:
    argv = ["/m", "--host", "127.0.0.1", "--port", "1234", "--max-num-seqs", "64"]
    assert with_port(argv, 99) == ["/m", "--host", "127.0.0.1", "--port", "99", *argv[-2:]]


def test_build_model_never_stops_early_and_decodes_every_id(tmp_path: Path) -> None:
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    small = {
        "vocab_size": 300,
        "hidden_size": 64,
        "intermediate_size": 128,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
    }
    folder = build_model(tmp_path / "m", shape=small, context=256)
    config = json.loads((folder / "config.json").read_text())
    assert config["architectures"] == ["Qwen2ForCausalLM"]
    assert config["vocab_size"] == 300 and config["tie_word_embeddings"] is True
    # the generic fast tokenizer, as transformers 4 (vLLM's) loads this folder; transformers
    # 5's AutoTokenizer would rebuild a Qwen2 BPE tokenizer from the model type instead
    tokenizer = transformers.PreTrainedTokenizerFast.from_pretrained(folder)
    assert len(tokenizer) == 300
    assert tokenizer.decode([299]) == "w107"  # 4 special tokens, 2 x 94 characters, w0...
    one, two = (tokenizer("story #1").input_ids, tokenizer("story #2").input_ids)
    assert one != two and len(one) == 7 and tokenizer.unk_token_id not in one
    assert tokenizer.decode(one) == "story #1"
    prompt = tokenizer.apply_chat_template(
        [{"role": "user", "content": "write a story"}], add_generation_prompt=True, tokenize=False
    )
    assert prompt.endswith("<|im_start|>assistant ")
    model = transformers.AutoModelForCausalLM.from_pretrained(folder, dtype=torch.bfloat16)
    eos = tokenizer.eos_token_id
    assert config["eos_token_id"] == eos
    assert not model.get_output_embeddings().weight[eos].any()
    ids = tokenizer(prompt, return_tensors="pt").input_ids
    out = model.generate(ids, max_new_tokens=24, do_sample=False, min_new_tokens=0)
    assert out.shape[1] == ids.shape[1] + 24  # greedy never picks the end of text
    assert QWEN_05B["hidden_size"] == 896 and QWEN_05B["num_hidden_layers"] == 24
