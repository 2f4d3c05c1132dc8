"""Embeddings side by side, one run: nimble with cross-request batching, the same nimble
with batching off (`--embed-batch-size 1`), and the offline limit (the same ONNX engine
encoding all the sentences in one batched call, in-process, no HTTP).

Also the engine's own limit without batching: each sentence in its own call, in-process; and
the same engine behind a bare ASGI app (`bare_embed_server.py`): what an HTTP layer in
Python can reach at best here, without a framework or any of nimble's per-request work.

Load: `--clients` concurrent clients (default 32), each sending one sentence per request,
back to back, for `--requests` requests in all, over keep-alive HTTP/1.1 connections. The
client is a minimal raw-socket HTTP client so that the load generator costs as little CPU
as possible on the same machine. Each server runs alone, then is stopped.

    python benchmarks/run_embed.py            # writes benchmarks/out/embed.md and .json
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import os
import platform
import signal
import socket
import statistics
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import httpx
from rich.console import Console
from rich.table import Table

HERE = Path(__file__).resolve().parent
OUT = HERE / "out"
MODEL = "all-minilm-l6-v2"
TOPICS = ["cats", "the weather", "tax law", "GPUs", "bread", "rivers", "chess", "music"]
SENTENCES = [
    f"Sentence {i} is a short note about {TOPICS[i % len(TOPICS)]} for the benchmark."
    for i in range(256)
]


@dataclass
class Result:
    target: str
    sentences_per_s: float
    p50_ms: float | None
    p99_ms: float | None
    requests: int


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def start_nimble(batch_size: int | None, port: int, log: Path) -> subprocess.Popen[bytes]:
    """nimble serving the model; with `batch_size` None, the bare ASGI server instead."""
    if batch_size is None:
        command = [sys.executable, str(HERE / "bare_embed_server.py"), str(port)]
    else:
        command = [
            str(Path(sys.executable).parent / "nimble"), "serve", "--model", MODEL,
            "--port", str(port), "--embed-batch-size", str(batch_size),
            "--max-waiting", "256", "--log-level", "warning",
        ]  # fmt: skip
    with log.open("wb") as out:  # the child has its own copy
        return subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT)


def wait_ready(proc: subprocess.Popen[bytes], port: int, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"nimble exited {proc.returncode}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/v1/health/ready", timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.1)  # polling interval
    raise RuntimeError("nimble never became ready")


def stop(proc: subprocess.Popen[bytes]) -> None:
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def request_bytes(port: int, sentence: str) -> bytes:
    body = json.dumps({"model": MODEL, "input": sentence}).encode()
    head = (
        f"POST /v1/embeddings HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    )
    return head.encode() + body


async def client(port: int, jobs: asyncio.Queue[bytes], latencies: list[float]) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        while True:
            try:
                payload = jobs.get_nowait()
            except asyncio.QueueEmpty:
                return
            started = time.perf_counter()
            writer.write(payload)
            head = await reader.readuntil(b"\r\n\r\n")
            status = int(head.split(b" ", 2)[1])
            length = next(
                int(line.split(b":", 1)[1])
                for line in head.split(b"\r\n")
                if line.lower().startswith(b"content-length:")
            )
            await reader.readexactly(length)
            if status != 200:
                raise RuntimeError(f"status {status}")
            latencies.append(time.perf_counter() - started)
    finally:
        writer.close()


async def load(port: int, clients: int, requests: int) -> tuple[float, list[float]]:
    jobs: asyncio.Queue[bytes] = asyncio.Queue()
    for i in range(requests):
        jobs.put_nowait(request_bytes(port, SENTENCES[i % len(SENTENCES)]))
    latencies: list[float] = []
    started = time.perf_counter()
    await asyncio.gather(*(client(port, jobs, latencies) for _ in range(clients)))
    return time.perf_counter() - started, latencies


def served(target: str, batch_size: int | None, clients: int, requests: int) -> Result:
    port = free_port()
    proc = start_nimble(batch_size, port, OUT / f"embed-{target}.log")
    try:
        wait_ready(proc, port)
        asyncio.run(load(port, clients, min(requests, 256)))  # warm-up
        elapsed, latencies = asyncio.run(load(port, clients, requests))
    finally:
        stop(proc)
    ordered = sorted(latencies)
    return Result(
        target,
        requests / elapsed,
        statistics.median(ordered) * 1000,
        ordered[int(0.99 * (len(ordered) - 1))] * 1000,
        requests,
    )


def offline(requests: int, one_at_a_time: bool = False) -> Result:
    """The engine in-process, no HTTP: all sentences in one call (the limit), or with
    `one_at_a_time` one call per sentence, all submitted at once to the engine with batching
    off (`embed_batch_size=1`: each runs alone, as many side by side as the engine runs):
    the limit of the engine without cross-request batching."""
    from nimble.engines.config import EngineConfig
    from nimble.engines.onnx.engine import OnnxEmbeddingEngine
    from nimble.models import resolve_model
    from nimble.types import EmbedRequest

    async def run() -> float:
        batch = 1 if one_at_a_time else 32
        engine = OnnxEmbeddingEngine(resolve_model(MODEL), EngineConfig(embed_batch_size=batch))
        await engine.start()
        try:
            texts = tuple(SENTENCES[i % len(SENTENCES)] for i in range(requests))
            await engine.embed(EmbedRequest("warmup", texts[:256]))
            started = time.perf_counter()
            if one_at_a_time:
                await asyncio.gather(
                    *(engine.embed(EmbedRequest(f"r{i}", (t,))) for i, t in enumerate(texts))
                )
            else:
                await engine.embed(EmbedRequest("all", texts))
            return time.perf_counter() - started
        finally:
            await engine.stop()

    name = "offline, one sentence per call" if one_at_a_time else "offline, one batched call"
    return Result(name, requests / asyncio.run(run()), None, None, requests)


def machine() -> str:
    cpu = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ),
        platform.processor(),
    )
    return f"{platform.node()}, {cpu}, {os.cpu_count()} cores, Python {platform.python_version()}"


TARGETS = (
    "nimble, batching (32, 2 ms)",
    "nimble, no cross-request batching",
    "offline, one batched call",
    "offline, one sentence per call",
    "bare ASGI server, same engine",
)


def one_round(clients: int, requests: int) -> tuple[list[Result], tuple[float, float, float]]:
    """Every target once, and the ratios of the round. The machine's speed drifts by 10% and
    more within minutes, so the offline limit is measured right before and right after each
    served run compared with it, and that ratio uses the mean of the two."""
    limits = [offline(requests)]
    batched = served(TARGETS[0], 32, clients, requests)
    limits.append(offline(requests))
    bare = served(TARGETS[4], None, clients, requests)
    limits.append(offline(requests))
    alone = served(TARGETS[1], 1, clients, requests)
    single = offline(requests, one_at_a_time=True)
    rates = [r.sentences_per_s for r in limits]
    limit = Result(TARGETS[2], statistics.mean(rates), None, None, requests)
    ratios = (
        batched.sentences_per_s / alone.sentences_per_s,
        batched.sentences_per_s / statistics.mean(rates[:2]),
        bare.sentences_per_s / statistics.mean(rates[1:]),
    )
    return [batched, alone, limit, single, bare], ratios


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--requests", type=int, default=3000)
    parser.add_argument("--repeat", type=int, default=3, help="rounds over all targets")
    args = parser.parse_args()
    OUT.mkdir(exist_ok=True)
    measured = [one_round(args.clients, args.requests) for _ in range(args.repeat)]
    rounds = [results for results, _ in measured]
    ratios = [round_ratios for _, round_ratios in measured]
    table = Table(title=f"{MODEL} embeddings, {args.clients} clients, one sentence per request")
    columns = (
        "round", *(f"{t} /s" for t in TARGETS), "÷ no batching", "÷ offline", "bare ÷ offline"
    )  # fmt: skip
    for column in columns:
        table.add_column(column)
    for number, (results, round_ratios) in enumerate(measured, 1):
        table.add_row(
            str(number),
            *(f"{r.sentences_per_s:.0f}" for r in results),
            *(f"{ratio:.2f}x" for ratio in round_ratios),
        )
    columns_of_rounds = zip(*rounds, strict=True)
    medians = [statistics.median(r.sentences_per_s for r in col) for col in columns_of_rounds]
    limit, single = medians[2], medians[3]
    table.add_row(
        "median",
        *(f"{m:.0f}" for m in medians),
        *(f"{statistics.median(r[i] for r in ratios):.2f}x" for i in range(3)),
    )
    console = Console(record=True, width=150)
    console.print(table)
    console.print(
        f"batching / no batching (median of rounds): "
        f"{statistics.median(r[0] for r in ratios):.2f}x (target >= 3)"
    )
    console.print(
        f"batching / offline limit (median of rounds): "
        f"{statistics.median(r[1] for r in ratios):.2f}x (target >= 0.8)"
    )
    console.print(
        f"the engine's own batching gain, offline (one batched call / one call per "
        f"sentence): {limit / single:.2f}x (the most any batching can add; a server without "
        "batching is also slower than that limit by its HTTP work)"
    )
    console.print(
        f"bare ASGI server / offline limit (median of rounds): "
        f"{statistics.median(r[2] for r in ratios):.2f}x (the same engine with no framework, "
        "middleware or validation: the most an HTTP layer in Python gets here)"
    )
    when = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    (OUT / "embed.md").write_text(f"# {when} on {machine()}\n\n```\n{console.export_text()}```\n")
    (OUT / "embed.json").write_text(
        json.dumps(
            {
                "when": when,
                "machine": machine(),
                "rounds": [[asdict(r) for r in results] for results in rounds],
                "ratios_vs_unbatched": [r[0] for r in ratios],
                "ratios_vs_offline": [r[1] for r in ratios],
                "bare_vs_offline": [r[2] for r in ratios],
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
