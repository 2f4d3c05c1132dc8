"""Unit tests of run_embed_infinity.py's pure parts: `pytest benchmarks` (no server needed)."""

from __future__ import annotations

from pathlib import Path

import pytest
import run_embed_infinity as bench
from run_embed_infinity import Level


def level(round_: int, target: str, concurrency: int, per_s: float) -> Level:
    return Level(round_, target, concurrency, 100, 1.0, per_s, 1.0, 2.0, 0.0, 1.0, 100.0)


def test_rounds_alternate_the_order_of_the_servers() -> None:
    assert bench.order(["a", "b"], 1) == ["a", "b"]
    assert bench.order(["a", "b"], 2) == ["b", "a"]
    assert bench.order(["a", "b", "c"], 3) == ["a", "b", "c"]


def test_ratios_pair_the_servers_round_by_round() -> None:
    levels = [
        level(1, "nimble", 32, 300), level(1, "infinity", 32, 200),
        level(2, "infinity", 32, 100), level(2, "nimble", 32, 150),
        level(2, "nimble", 1, 60),  # another level, and infinity missing there
    ]  # fmt: skip
    assert bench.ratios(levels, "nimble", "infinity", 32) == [1.5, 1.5]
    assert bench.ratios(levels, "nimble", "infinity", 1) == []


def test_spread_is_the_median_and_the_range_never_the_best() -> None:
    assert bench.spread([300.0, 100.0, 200.0]) == "200 (100-300)"
    assert bench.spread([7.0]) == "7"
    assert bench.spread_ratio([1.2, 0.9, 1.0]) == "1.00x (0.90-1.20)"


def test_cosine() -> None:
    assert bench.cosine([1.0, 0.0], [2.0, 0.0]) == pytest.approx(1.0)
    assert bench.cosine([1.0, 0.0], [0.0, 3.0]) == pytest.approx(0.0)


def test_both_servers_get_the_same_model_name_path_and_log_level(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "bin").mkdir()
    (tmp_path / "bin" / "infinity_emb").touch()
    (tmp_path / "models").mkdir()
    (tmp_path / "models" / "torch-model-path").write_text("/some/folder\n")
    monkeypatch.setattr(bench, "INFINITY_VENV", tmp_path)
    nimble = bench.server("nimble", 8001)
    onnx = bench.server("infinity", 8002)
    torch = bench.server("infinity-torch", 8003)
    assert nimble.command[1:4] == ["serve", "--model", "all-minilm-l6-v2"]
    assert nimble.ready_path == "/v1/health/ready" and onnx.ready_path == "/health"
    for spec in (onnx, torch):
        command = " ".join(spec.command)
        assert "--served-model-name all-minilm-l6-v2" in command
        assert "--url-prefix /v1" in command and "--host 127.0.0.1" in command
        assert "--log-level warning" in command and spec.env and spec.env["HF_HUB_OFFLINE"] == "1"
    assert "--engine optimum" in " ".join(onnx.command)
    assert "--pooling-method mean" in " ".join(onnx.command)  # its `auto` is CLS there
    assert onnx.cwd == tmp_path / "models" / "minilm-onnx-int8"
    assert "--model-id /some/folder --engine torch" in " ".join(torch.command)
    with pytest.raises(SystemExit):
        bench.server("tei", 8004)
