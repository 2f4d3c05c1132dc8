"""nimble and llama.cpp's own server side by side under NVIDIA's aiperf, in one run.

aiperf (the benchmark tool for NIM and OpenAI-compatible servers) is the second load
generator beside `loadgen.py`: the numbers are aiperf's own (output tokens/s, time to first
token, inter-token latency), read from the JSON it exports for each run. The servers:

  nimble  `nimble serve --model smollm2-135m-instruct --max-running P --max-batch-size P
          --threads T --context-length C` (`--nimble-cmd` to change it)
  engine  benchmarks/engine_server.py: xllamacpp.Server alone on the same GGUF file (P slots,
          a whole window each, T threads), the engine nimble drives with nothing in front
  nimble-base  another build of nimble (`--base-cmd`), to show a change against the code
          before it in the same run

One server runs at a time; the runs alternate (nimble, engine, nimble, engine, ...; `--rounds`)
so that drift on a shared machine hits both alike, and every run is in the table. Each run:
start the server, poll its readiness, warm it up (a few streamed requests, outside aiperf's
window), wait for a quiet machine, then `aiperf profile` (chat, streaming, concurrency 4, 40
requests, 128-token synthetic prompts, 64 output tokens with ignore_eos so that every answer
has 64), then stop the server. Around the aiperf run it reads from /proc the server
process's CPU time (all threads, and its main thread: nimble's event loop), aiperf's own (its
whole process tree), and the machine's, giving server CPU ms per output token and the share
of the cores that anything else used ("other CPU %": above a few percent, the run was
disturbed).

aiperf lives in its own virtual environment (`bash benchmarks/setup_aiperf.sh`), with a
tokenizer folder written from the GGUF file itself (`gguf_tokenizer.py`; no hub here),
checked against llama.cpp's own /tokenize before the first run.

    python benchmarks/run_aiperf.py                     # 2 rounds: nimble, engine, nimble, engine
    python benchmarks/run_aiperf.py --rounds 3 --requests 40 --concurrency 4
    python benchmarks/run_aiperf.py --order nimble-base,nimble,engine --base-cmd \
        '/usr/bin/env PYTHONPATH=/tmp/nimble-base {bin}/nimble serve --model {served} ...'

Writes benchmarks/out/aiperf.md (every run, then nimble ÷ engine per round) and aiperf.json;
aiperf's own exports per run under benchmarks/out/aiperf/<round>-<server>/.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import shlex
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import httpx
from loadgen import chat_body, first_model, other_cpu_pct, sample_cpu, stream_one, wait_for_quiet
from run_llm import DEFAULT_MODEL, OUT, free_port, machine, rel, stop, wait_ready
from run_llm import Settings as LlmSettings

HERE = Path(__file__).resolve().parent
AIPERF_VENV = HERE / ".venv-aiperf"
AIPERF = AIPERF_VENV / "bin" / "aiperf"
TOKENIZER = AIPERF_VENV / "tokenizers"
SERVED = "smollm2-135m-instruct"
NIMBLE_CMD = (
    "{bin}/nimble serve --model {served} --port {port} --max-running {parallel} "
    "--max-batch-size {parallel} --threads {threads} --context-length {ctx}"
)
WARMUP_REQUESTS = 4
TICK_S = 1.0 / os.sysconf("SC_CLK_TCK")
# aiperf's summary metrics that the table shows, by their tag in profile_export_aiperf.json
METRICS = (
    "output_token_throughput",
    "time_to_first_token",
    "inter_token_latency",
    "request_latency",
    "output_sequence_length",
    "input_sequence_length",
    "request_count",
    "error_request_count",
    "total_output_tokens",
    "benchmark_duration",
)


@dataclass(frozen=True)
class Plan:
    concurrency: int
    requests: int
    isl: int
    osl: int
    seed: int
    quiet_below: float
    quiet_max_wait: float
    extra: tuple[str, ...] = ()


@dataclass
class Run:
    round: int
    server: str
    command: str
    aiperf_command: str = ""
    artifacts: str = ""
    metrics: dict[str, dict[str, float]] = field(default_factory=dict)
    server_cpu_s: float = math.nan
    loop_cpu_s: float = math.nan
    aiperf_cpu_s: float = math.nan
    wall_s: float = math.nan
    other_cpu_pct: float = math.nan
    failed: str | None = None

    def value(self, tag: str, stat: str = "avg") -> float:
        return float(self.metrics.get(tag, {}).get(stat, math.nan))

    @property
    def output_tokens(self) -> float:
        """Output tokens of the profiled requests (aiperf's total, else mean x count)."""
        total = self.value("total_output_tokens")
        if not math.isnan(total):
            return total
        return self.value("output_sequence_length") * self.value("request_count")

    def per_token_ms(self, seconds: float) -> float:
        tokens = self.output_tokens
        return 1000 * seconds / tokens if tokens > 0 else math.nan


# --- pure helpers (tested in test_run_aiperf.py) ---


def aiperf_args(plan: Plan, url: str, tokenizer: Path, artifacts: Path) -> list[str]:
    """`aiperf profile` for one run: chat, streaming, synthetic prompts of exactly `isl`
    tokens, exactly `osl` output tokens (ignore_eos; the legacy max_tokens field, which both
    servers read), aiperf's own warm-up off (the runner warms the server up outside the
    measured window), no TUI."""
    return [
        "profile",
        "--model", SERVED,
        "--url", url,
        "--endpoint-type", "chat",
        "--streaming",
        "--concurrency", str(plan.concurrency),
        "--request-count", str(plan.requests),
        "--synthetic-input-tokens-mean", str(plan.isl),
        "--synthetic-input-tokens-stddev", "0",
        "--output-tokens-mean", str(plan.osl),
        "--output-tokens-stddev", "0",
        "--use-legacy-max-tokens",
        "--extra-inputs", "ignore_eos:true",
        "--extra-inputs", "temperature:0",
        "--tokenizer", str(tokenizer),
        "--random-seed", str(plan.seed),
        "--artifact-dir", str(artifacts),
        "--ui-type", "none",
        *plan.extra,
    ]  # fmt: skip


def read_metrics(export: dict[str, Any]) -> dict[str, dict[str, float]]:
    """aiperf's summary (profile_export_aiperf.json): each metric's statistics by tag.

    The metrics sit at the top level of the document (`{"time_to_first_token": {"unit":
    "ms", "avg": ..., "p50": ...}}`) or, in other versions, in a `records` list or mapping of
    entries with a `tag`; both are read."""
    found: dict[str, dict[str, float]] = {}
    records = export.get("records")
    entries: list[tuple[str, Any]] = list(export.items())
    if isinstance(records, dict):
        entries += list(records.items())
    elif isinstance(records, list):
        entries += [(str(r.get("tag")), r) for r in records if isinstance(r, dict)]
    for tag, entry in entries:
        if tag in METRICS and isinstance(entry, dict):
            found[tag] = {
                k: float(v) for k, v in entry.items() if isinstance(v, int | float) and k != "tag"
            }
    return found


def ratio(a: float, b: float) -> str:
    return f"{a / b:.2f}x" if b and not math.isnan(a) and not math.isnan(b) else "-"


def runs_table(runs: Sequence[Run]) -> list[str]:
    head = [
        "round", "server", "requests ok", "output tok/s", "TTFT avg ms", "TTFT p50 ms",
        "TTFT p99 ms", "ITL avg ms", "ITL p50 ms", "OSL avg", "ISL avg", "server CPU s",
        "server CPU ms/token", "event loop ms/token", "aiperf CPU s", "other CPU %",
    ]  # fmt: skip
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in runs:
        if r.failed:
            lines.append(f"| {r.round} | {r.server} | failed: {r.failed.splitlines()[0]} |")
            continue
        count = r.value("request_count")
        errors = r.value("error_request_count")
        ok = count if math.isnan(errors) else count - errors
        cells = [
            str(r.round),
            r.server,
            f"{ok:.0f}/{count + (0 if math.isnan(errors) else errors):.0f}",
            f"{r.value('output_token_throughput'):.1f}",
            f"{r.value('time_to_first_token'):.0f}",
            f"{r.value('time_to_first_token', 'p50'):.0f}",
            f"{r.value('time_to_first_token', 'p99'):.0f}",
            f"{r.value('inter_token_latency'):.2f}",
            f"{r.value('inter_token_latency', 'p50'):.2f}",
            f"{r.value('output_sequence_length'):.1f}",
            f"{r.value('input_sequence_length'):.1f}",
            f"{r.server_cpu_s:.1f}",
            f"{r.per_token_ms(r.server_cpu_s):.2f}",
            f"{r.per_token_ms(r.loop_cpu_s):.2f}",
            f"{r.aiperf_cpu_s:.1f}",
            f"{r.other_cpu_pct:.0f}",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def pairs_table(runs: Sequence[Run], ours: str = "nimble") -> list[str]:
    """`ours` (nimble, or nimble-base) ÷ engine within each round (the runs next to each
    other), then the median over rounds; TTFT also as a difference in ms (the target is
    absolute)."""
    head = [
        "round", "output tok/s ÷", "TTFT avg ÷", "TTFT avg diff (ms)", "TTFT p50 diff (ms)",
        "ITL avg ÷", "server CPU/token ÷",
    ]  # fmt: skip
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    columns: list[list[float]] = [[] for _ in head[1:]]
    rounds = sorted({r.round for r in runs})
    for number in rounds:
        pair = {r.server: r for r in runs if r.round == number and not r.failed}
        nimble, engine = pair.get(ours), pair.get("engine")
        if nimble is None or engine is None:
            continue
        values = [
            nimble.value("output_token_throughput") / engine.value("output_token_throughput"),
            nimble.value("time_to_first_token") / engine.value("time_to_first_token"),
            nimble.value("time_to_first_token") - engine.value("time_to_first_token"),
            nimble.value("time_to_first_token", "p50") - engine.value("time_to_first_token", "p50"),
            nimble.value("inter_token_latency") / engine.value("inter_token_latency"),
            nimble.per_token_ms(nimble.server_cpu_s) / engine.per_token_ms(engine.server_cpu_s),
        ]
        for column, value in zip(columns, values, strict=True):
            column.append(value)
        lines.append(
            f"| {number} | " + " | ".join(_cell(i, v) for i, v in enumerate(values)) + " |"
        )
    if all(columns):
        medians = [statistics.median(c) for c in columns]
        lines.append("| median | " + " | ".join(_cell(i, v) for i, v in enumerate(medians)) + " |")
    return lines


def _cell(index: int, value: float) -> str:
    return f"{value:+.0f}" if index in (2, 3) else f"{value:.2f}x"


# --- running ---


def process_ticks(pid: int) -> tuple[int, int] | None:
    """utime + stime of a process (all threads) and of its main thread, in clock ticks."""

    def ticks(path: str) -> int:
        with open(path) as stat:
            fields = stat.read().rsplit(")", 1)[1].split()
        return int(fields[11]) + int(fields[12])

    try:
        return ticks(f"/proc/{pid}/stat"), ticks(f"/proc/{pid}/task/{pid}/stat")
    except (OSError, ValueError, IndexError):
        return None


def children_ticks() -> int:
    """CPU ticks of this process's waited-for children and their descendants (aiperf's tree)."""
    with open("/proc/self/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return int(fields[13]) + int(fields[14])  # cutime, cstime


def server_command(name: str, settings: LlmSettings, port: int) -> list[str]:
    if name == "engine":
        return [
            sys.executable, str(HERE / "engine_server.py"), "--model", str(settings.model),
            "--port", str(port), "--parallel", str(settings.parallel), "--ctx",
            str(settings.ctx), "--threads", str(settings.threads),
        ]  # fmt: skip
    values = {
        "bin": str(Path(sys.executable).parent),
        "served": SERVED,
        "model": str(settings.model),
        "port": str(port),
        "parallel": str(settings.parallel),
        "threads": str(settings.threads),
        "ctx": str(settings.ctx),
    }
    command = settings.base_cmd if name == "nimble-base" else settings.nimble_cmd
    return [part.format(**values) for part in shlex.split(command)]


READY = {"nimble": "/v1/health/ready", "nimble-base": "/v1/health/ready", "engine": "/health"}


async def warm_up(url: str) -> None:
    async with httpx.AsyncClient(base_url=url, timeout=120.0, trust_env=False) as client:
        model = await first_model(client)
        for i in range(WARMUP_REQUESTS):
            result = await stream_one(client, chat_body(model, f"Say hello ({i}).", 16))
            if not result.ok:
                raise RuntimeError(f"warm-up request failed: {result.error}")


async def check_tokenizer(url: str, tokenizer: Path) -> None:
    """The tokenizer folder must give llama.cpp's own ids (nimble's /tokenize asks it)."""
    text = "Write a short story about a lighthouse keeper, 1234 words; it's 2026 ünïcode."
    async with httpx.AsyncClient(base_url=url, timeout=30.0, trust_env=False) as client:
        body = {"model": SERVED, "prompt": text, "add_special_tokens": False}
        response = await client.post("/tokenize", json=body)
        response.raise_for_status()
        engine_ids = response.json()["tokens"]
    code = (
        "import json, sys; from transformers import AutoTokenizer; "
        "t = AutoTokenizer.from_pretrained(sys.argv[1]); "
        "print(json.dumps(t(sys.argv[2], add_special_tokens=False).input_ids))"
    )
    python = AIPERF_VENV / "bin" / "python"
    done = subprocess.run(
        [str(python), "-c", code, str(tokenizer), text], capture_output=True, text=True
    )
    if done.returncode != 0:
        raise RuntimeError(f"tokenizer check failed: {done.stderr.strip()[-500:]}")
    ours = json.loads(done.stdout.strip().splitlines()[-1])
    if ours != engine_ids:
        raise RuntimeError(f"tokenizer differs from llama.cpp's: {ours} vs {engine_ids}")
    print(f"tokenizer {rel(str(tokenizer))} gives llama.cpp's ids ({len(ours)} tokens)")


def run_one(
    number: int,
    name: str,
    settings: LlmSettings,
    plan: Plan,
    out: Path,
    check: bool,
    pin: tuple[str, str] | None = None,
) -> Run:
    port = free_port()
    server_cpus, aiperf_cpus = pin or ("", "")
    argv = pinned(server_cpus, server_command(name, settings, port))
    run = Run(number, name, shlex.join(argv))
    log = out / f"{number}-{name}.log"
    artifacts = out / f"{number}-{name}"
    url = f"http://127.0.0.1:{port}"
    args = aiperf_args(plan, url, TOKENIZER, artifacts)
    aiperf = pinned(aiperf_cpus, [str(AIPERF), *args])
    run.aiperf_command = shlex.join(aiperf)
    run.artifacts = str(artifacts)
    print(f"[round {number} {name}] {run.command}", flush=True)
    with log.open("wb") as sink:
        proc = subprocess.Popen(argv, stdout=sink, stderr=subprocess.STDOUT)
    try:
        asyncio.run(wait_ready(proc, url + READY[name], log))
        if check and name == "nimble":
            asyncio.run(check_tokenizer(url, TOKENIZER))
        asyncio.run(warm_up(url))
        if plan.quiet_below > 0:
            asyncio.run(wait_for_quiet([proc.pid], plan.quiet_below, plan.quiet_max_wait))
        before, machine_before = process_ticks(proc.pid), sample_cpu([proc.pid, os.getpid()])
        kids_before, started = children_ticks(), time.monotonic()
        with (out / f"{number}-{name}.aiperf.txt").open("wb") as sink:
            done = subprocess.run(aiperf, stdout=sink, stderr=subprocess.STDOUT, check=False)
        run.wall_s = time.monotonic() - started
        after, machine_after = process_ticks(proc.pid), sample_cpu([proc.pid, os.getpid()])
        run.aiperf_cpu_s = (children_ticks() - kids_before) * TICK_S
        if done.returncode != 0:
            raise RuntimeError(f"aiperf exited with {done.returncode}, see {rel(str(sink.name))}")
        if before is None or after is None:
            raise RuntimeError("the server process went away during the run")
        run.server_cpu_s = (after[0] - before[0]) * TICK_S
        run.loop_cpu_s = (after[1] - before[1]) * TICK_S
        if machine_before is not None and machine_after is not None:
            total_s = (machine_after.total - machine_before.total) * TICK_S
            # aiperf's tree counted as "own" too: the other share is everything else's
            aiperf_share = 100 * run.aiperf_cpu_s / total_s if total_s > 0 else 0.0
            run.other_cpu_pct = max(
                0.0, other_cpu_pct(machine_before, machine_after) - aiperf_share
            )
        export = next(artifacts.rglob("profile_export_aiperf.json"), None)
        if export is None:
            raise RuntimeError(f"no profile_export_aiperf.json under {rel(str(artifacts))}")
        run.metrics = read_metrics(json.loads(export.read_text()))
    except (RuntimeError, httpx.HTTPError, OSError, ValueError) as exc:
        run.failed = str(exc)
        print(f"  failed: {exc}", flush=True)
    finally:
        stop(proc)
    if not run.failed:
        print(
            f"  {run.value('output_token_throughput'):.1f} tok/s, TTFT "
            f"{run.value('time_to_first_token'):.0f} ms, ITL "
            f"{run.value('inter_token_latency'):.2f} ms, server CPU "
            f"{run.per_token_ms(run.server_cpu_s):.2f} ms/token, other CPU "
            f"{run.other_cpu_pct:.0f}%",
            flush=True,
        )
    return run


def markdown(runs: Sequence[Run], info: Sequence[tuple[str, str]], plan: Plan) -> str:
    note = (
        f"aiperf profile: chat, streaming, concurrency {plan.concurrency}, {plan.requests} "
        f"requests, synthetic prompts of {plan.isl} tokens, {plan.osl} output tokens "
        "(ignore_eos), temperature 0; aiperf's own numbers (TTFT, ITL in ms). Runs alternate "
        "between the servers; every run is listed. Server CPU: the server process's CPU time "
        "(all threads) over the aiperf run, from /proc; event loop: its main thread's. Other "
        "CPU %: share of all cores used by anything but the server, aiperf and this runner."
    )
    lines = ["# nimble vs llama.cpp's server under aiperf", "", note, ""]
    lines += ["| | |", "|---|---|"] + [f"| {k} | {rel(v)} |" for k, v in info] + [""]
    lines += [*runs_table(runs), "", "nimble ÷ engine, per round:", "", *pairs_table(runs)]
    if any(r.server == "nimble-base" for r in runs):
        lines += ["", "nimble-base ÷ engine, per round:", "", *pairs_table(runs, "nimble-base")]
    lines += ["", "Commands (first round):", ""]
    for r in runs:
        if r.round == runs[0].round:
            lines += [f"- {r.server}: `{rel(r.command)}`", f"  - `{rel(r.aiperf_command)}`"]
    return "\n".join(lines) + "\n"


def pinned(cpus: str, argv: list[str]) -> list[str]:
    """`argv` run on the CPUs `cpus` only (taskset execs it: the same process); "": as is."""
    return ["taskset", "-c", cpus, *argv] if cpus else argv


def parse_pin(value: str) -> tuple[str, str]:
    """`--pin SERVER:AIPERF`, each a CPU list as taskset takes it (`0`, `0-1`, `0,2`)."""
    server, sep, client = value.partition(":")
    if not sep or not server or not client:
        raise argparse.ArgumentTypeError("write SERVER_CPUS:AIPERF_CPUS, e.g. 0:1")
    return server, client


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--order", default="nimble,engine", help="servers of one round, in order")
    parser.add_argument("--model", type=Path, default=DEFAULT_MODEL, help="the engine's GGUF")
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--requests", type=int, default=40)
    parser.add_argument("--isl", type=int, default=128, help="prompt tokens")
    parser.add_argument("--osl", type=int, default=64, help="output tokens")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--parallel", type=int, default=4, help="slots of both servers")
    parser.add_argument("--ctx", type=int, default=8192, help="window per slot")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quiet-below", type=float, default=10.0, help="%% CPU (0: off)")
    parser.add_argument("--quiet-max-wait", type=float, default=600.0, help="seconds")
    parser.add_argument(
        "--nimble-cmd",
        default=NIMBLE_CMD,
        help="fields {bin} {served} {model} {port} {parallel} {threads} {ctx}",
    )
    parser.add_argument(
        "--base-cmd",
        default="",
        help="nimble-base's command (another build), with --nimble-cmd's fields, e.g. "
        "'/usr/bin/env PYTHONPATH=/tmp/nimble-base ' + the nimble command",
    )
    parser.add_argument(
        "--aiperf-arg",
        action="append",
        default=[],
        help="one more argument for aiperf profile (repeat), e.g. --aiperf-arg=--no-server-metrics",
    )
    parser.add_argument(
        "--pin",
        type=parse_pin,
        default=None,
        help="SERVER:AIPERF CPU lists (taskset), e.g. 0:1: the load generator on a core of its own",
    )
    parser.add_argument("--out", default="aiperf", help="name under benchmarks/out")
    args = parser.parse_args()
    if not AIPERF.exists() or not (TOKENIZER / "tokenizer.json").exists():
        parser.error("aiperf is not installed: bash benchmarks/setup_aiperf.sh")
    order = [n.strip() for n in args.order.split(",") if n.strip()]
    if any(n not in READY for n in order):
        parser.error(f"--order: choose from {sorted(READY)}")
    if "nimble-base" in order and not args.base_cmd:
        parser.error("nimble-base needs --base-cmd")
    settings = LlmSettings(
        args.model.resolve(), args.threads, args.ctx, args.parallel, args.nimble_cmd,
        args.base_cmd,
    )  # fmt: skip
    plan = Plan(
        args.concurrency,
        args.requests,
        args.isl,
        args.osl,
        args.seed,
        args.quiet_below,
        args.quiet_max_wait,
        tuple(args.aiperf_arg),
    )
    out = OUT / args.out
    out.mkdir(parents=True, exist_ok=True)
    signal.signal(signal.SIGTERM, _interrupt)  # a stopped benchmark stops its server too
    runs: list[Run] = []
    for number in range(1, args.rounds + 1):
        for name in order:
            runs.append(run_one(number, name, settings, plan, out, not runs, args.pin))
    text = markdown(runs, machine(settings), plan)
    print(text)
    (OUT / f"{args.out}.md").write_text(text)
    raw = {"plan": asdict(plan), "runs": [asdict(r) for r in runs]}
    (OUT / f"{args.out}.json").write_text(json.dumps(raw, indent=2))
    print(f"wrote {OUT / (args.out + '.md')}, {OUT / (args.out + '.json')} and {rel(str(out))}/")


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


if __name__ == "__main__":
    try:
        main()
    except KeyboardInterrupt:
        sys.exit("interrupted; servers stopped")
