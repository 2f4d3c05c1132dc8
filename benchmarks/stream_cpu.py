"""Server CPU per output token, streaming: nimble (and another nimble build) vs the engine.

On 2 cores every cycle the serving layer spends is taken from llama.cpp, so the cost of
nimble's streaming path is measured as CPU time, not only as throughput. Each run starts one
server (as `run_llm.py` does: same GGUF, threads, slots, window), warms it up, waits for a
quiet machine, and streams one level of `loadgen.py` (closed loop, C clients, N distinct chat
prompts, max_tokens M, temperature 0). Around the level it reads the server process's CPU
time from /proc (all its threads), and the event-loop thread's own (the main thread: HTTP,
routes, SSE; for the engine's server it does nothing), and reports

- server CPU ms per output token, and its event-loop share;
- output tokens/s, TTFT p50, ITL p50 (loadgen's), and other CPU % (anything else's share).

Runs alternate over the targets (`--repeat` rounds, every run in the table, none dropped),
so that drift on a shared machine hits all of them alike. nimble's CPU per token less the
engine's is what the serving layer costs.

    python benchmarks/stream_cpu.py --targets nimble,engine --repeat 3
    python benchmarks/stream_cpu.py --targets nimble-base,nimble,engine --repeat 3 \\
        --base-cmd '/usr/bin/env PYTHONPATH=/tmp/nimble-base {bin}/nimble serve --model \\
        {model} --port {port} --max-running {parallel} --threads {threads} --context-length {ctx}'

Writes `out/stream_cpu.md` and `out/stream_cpu.json` (`--out` to change the stem).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import httpx
from loadgen import chat_body, first_model, prompts, run_level, stream_one, wait_for_quiet
from run_llm import (
    DEFAULT_MODEL,
    OUT,
    TARGETS,
    Settings,
    free_port,
    machine,
    rel,
    stop,
    wait_ready,
)

NIMBLE_CMD = (
    "{bin}/nimble serve --model {model} --port {port} --max-running {parallel} "
    "--threads {threads} --context-length {ctx}"
)


def thread_ticks(pid: int) -> dict[int, int] | None:
    """utime + stime of every thread of the process (clock ticks), from /proc."""
    found = {}
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return None
    for tid in tids:
        try:
            with open(f"/proc/{pid}/task/{tid}/stat") as stat:
                fields = stat.read().rsplit(")", 1)[1].split()
        except OSError:
            continue  # a thread that just ended
        found[int(tid)] = int(fields[11]) + int(fields[12])
    return found


def split(before: dict[int, int], after: dict[int, int], pid: int, compute: int) -> Cpu:
    """The run's CPU seconds: all threads; the main thread; all but the `compute` busiest
    threads (llama.cpp's compute threads, as many as --threads: what is left is the
    serving layer, HTTP threads included)."""
    spent = {t: after[t] - before.get(t, 0) for t in after}
    busiest = sorted(spent.values(), reverse=True)[:compute]
    total = sum(spent.values())
    return Cpu(total * TICK_S, spent.get(pid, 0) * TICK_S, (total - sum(busiest)) * TICK_S)


@dataclass(frozen=True)
class Cpu:
    total_s: float
    main_s: float
    serving_s: float


TICK_S = 1.0 / os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True)
class Run:
    round: int
    target: str
    requests: int
    errors: int
    completion_tokens: int
    wall_s: float
    tokens_per_s: float
    ttft_p50_ms: float
    itl_p50_ms: float
    other_cpu_pct: float
    server_cpu_s: float
    loop_cpu_s: float
    serving_cpu_s: float

    def per_token(self, seconds: float) -> float:
        return 1000 * seconds / self.completion_tokens if self.completion_tokens else 0.0

    @property
    def cpu_ms_per_token(self) -> float:
        return self.per_token(self.server_cpu_s)

    @property
    def loop_ms_per_token(self) -> float:
        return self.per_token(self.loop_cpu_s)

    @property
    def serving_ms_per_token(self) -> float:
        return self.per_token(self.serving_cpu_s)


async def measure(url: str, pid: int, args: argparse.Namespace) -> tuple[dict[str, float], Cpu]:
    """One loadgen level against a running server: its stats and the server's CPU seconds."""
    timeout = httpx.Timeout(600.0, connect=10.0)
    limits = httpx.Limits(max_connections=args.concurrency + 2)
    async with httpx.AsyncClient(
        base_url=url, timeout=timeout, limits=limits, trust_env=False
    ) as client:
        model = await first_model(client)
        for _ in range(2):  # warm-up: first requests pay one-off costs
            warm = await stream_one(client, chat_body(model, "Say hello.", 16))
            if not warm.ok:
                raise RuntimeError(f"warm-up request failed: {warm.error}")
        if args.quiet_below > 0:
            await wait_for_quiet([pid], args.quiet_below, 300.0)
        before = thread_ticks(pid)
        texts = prompts(args.requests)
        stats = await run_level(client, model, args.concurrency, texts, args.max_tokens, [pid])
        after = thread_ticks(pid)
    if before is None or after is None:
        raise RuntimeError("server process gone")
    return asdict(stats), split(before, after, pid, args.threads)


async def run_one(
    number: int, name: str, settings: Settings, args: argparse.Namespace, logs: Path
) -> Run:
    port = free_port()
    argv = TARGETS[name].command(settings, port)
    log = logs / f"stream_cpu-{name}.log"
    print(f"[round {number} {name}] {' '.join(argv)}", flush=True)
    with log.open("wb") as sink:
        proc = subprocess.Popen(argv, stdout=sink, stderr=subprocess.STDOUT)
    try:
        await wait_ready(proc, f"http://127.0.0.1:{port}{TARGETS[name].ready_path}", log)
        stats, cpu = await measure(f"http://127.0.0.1:{port}", proc.pid, args)
    finally:
        stop(proc)
    run = Run(
        number,
        name,
        int(stats["requests"]),
        int(stats["errors"]),
        int(stats["completion_tokens"]),
        float(stats["wall_s"]),
        float(stats["tokens_per_s"]),
        float(stats["ttft_p50_ms"]),
        float(stats["itl_p50_ms"]),
        float(stats["other_cpu_pct"]),
        cpu.total_s,
        cpu.main_s,
        cpu.serving_s,
    )
    print(
        f"  {run.tokens_per_s:.1f} tok/s, {run.cpu_ms_per_token:.2f} CPU ms/token "
        f"(serving layer {run.serving_ms_per_token:.3f}, event loop {run.loop_ms_per_token:.3f}), "
        f"other CPU {run.other_cpu_pct:.0f}%",
        flush=True,
    )
    return run


HEADERS = [
    "round",
    "server",
    "ok",
    "tokens",
    "output tok/s",
    "TTFT p50 ms",
    "ITL p50 ms",
    "server CPU s",
    "CPU ms/token",
    "serving layer ms/token",
    "event loop ms/token",
    "other CPU %",
]


def table(runs: Sequence[Run]) -> list[str]:
    lines = ["| " + " | ".join(HEADERS) + " |", "|" + "---|" * len(HEADERS)]
    for r in runs:
        cells = [
            str(r.round),
            r.target,
            f"{r.requests - r.errors}/{r.requests}",
            str(r.completion_tokens),
            f"{r.tokens_per_s:.1f}",
            f"{r.ttft_p50_ms:.0f}",
            f"{r.itl_p50_ms:.1f}",
            f"{r.server_cpu_s:.2f}",
            f"{r.cpu_ms_per_token:.2f}",
            f"{r.serving_ms_per_token:.3f}",
            f"{r.loop_ms_per_token:.3f}",
            f"{r.other_cpu_pct:.0f}",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def medians(runs: Sequence[Run]) -> list[str]:
    """Per target, the medians over its runs, and CPU per token over the engine's."""
    names = list(dict.fromkeys(r.target for r in runs))
    engine = [r.cpu_ms_per_token for r in runs if r.target == "engine"]
    base = statistics.median(engine) if engine else None
    lines = [
        "| server | runs | output tok/s | CPU ms/token | serving layer ms/token | "
        "event loop ms/token | CPU/token ÷ engine | CPU ms/token over the engine |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name in names:
        mine = [r for r in runs if r.target == name]
        cpu = statistics.median(r.cpu_ms_per_token for r in mine)
        ratio = f"{cpu / base:.2f}x" if base else "-"
        over = f"{cpu - base:+.2f}" if base is not None else "-"
        lines.append(
            f"| {name} | {len(mine)} | {statistics.median(r.tokens_per_s for r in mine):.1f} | "
            f"{cpu:.2f} | {statistics.median(r.serving_ms_per_token for r in mine):.3f} | "
            f"{statistics.median(r.loop_ms_per_token for r in mine):.3f} | "
            f"{ratio} | {over} |"
        )
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--targets", default="nimble,engine")
    parser.add_argument("--model", type=Path, default=DEFAULT_MODEL)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--requests", type=int, default=40)
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--ctx", type=int, default=8192)
    parser.add_argument("--parallel", type=int, default=4)
    parser.add_argument("--quiet-below", type=float, default=10.0, help="%% CPU (0: off)")
    parser.add_argument("--nimble-cmd", default=NIMBLE_CMD)
    parser.add_argument("--base-cmd", default="")
    parser.add_argument("--out", default="stream_cpu", help="file stem under benchmarks/out")
    args = parser.parse_args()
    names = [n.strip() for n in args.targets.split(",") if n.strip()]
    if any(n not in TARGETS for n in names):
        parser.error(f"targets: choose from {sorted(TARGETS)}")
    if "nimble-base" in names and not args.base_cmd:
        parser.error("the nimble-base target needs --base-cmd")
    settings = Settings(
        args.model.resolve(), args.threads, args.ctx, args.parallel, args.nimble_cmd, args.base_cmd
    )
    OUT.mkdir(exist_ok=True)
    started = time.strftime("%Y-%m-%d %H:%M:%S %Z")
    runs = [
        asyncio.run(run_one(number, name, settings, args, OUT))
        for number in range(1, args.repeat + 1)
        for name in names
    ]
    info = machine(settings)
    commands = {n: " ".join(TARGETS[n].command(settings, 0)) for n in names}
    note = (
        f"Started {started}. Streaming chat, concurrency {args.concurrency}, "
        f"{args.requests} distinct prompts per run, max_tokens {args.max_tokens}, "
        f"temperature 0; {args.parallel} slots, {args.threads} threads, window {args.ctx}. "
        "Server CPU: utime+stime of the server process (all threads) over the run, from "
        f"/proc; serving layer: all its threads but the {args.threads} busiest (llama.cpp's "
        "compute threads): nimble's event loop and engine threads, or llama.cpp's HTTP "
        "threads; event loop: the main thread. Runs alternate over the servers; every run "
        "is listed."
    )
    lines = ["# Server CPU per output token, streaming", "", note, ""]
    lines += ["| | |", "|---|---|"] + [f"| {k} | {rel(v)} |" for k, v in info] + [""]
    lines += [*table(runs), "", "Medians:", "", *medians(runs), ""]
    lines += [f"- {n}: `{rel(c)}`" for n, c in commands.items()]
    text = "\n".join(lines) + "\n"
    print(text)
    (OUT / f"{args.out}.md").write_text(text)
    raw = {
        "machine": dict(info),
        "args": vars(args) | {"model": str(args.model)},
        "commands": commands,
        "runs": [asdict(r) | {"cpu_ms_per_token": r.cpu_ms_per_token} for r in runs],
    }
    (OUT / f"{args.out}.json").write_text(json.dumps(raw, indent=2))
    print(f"wrote {OUT / (args.out + '.md')} and {OUT / (args.out + '.json')}")


if __name__ == "__main__":
    try:
        main()
    except KeyboardInterrupt:
        sys.exit("interrupted; servers stopped")
