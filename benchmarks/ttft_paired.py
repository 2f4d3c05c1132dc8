"""Time to first token at one stream, nimble against the engine's own server, paired.

`run_llm.py` runs one server after the other; on a small shared machine the engine's own
time to first token drifts by more than the 5 ms the target allows between two runs
minutes apart. Here both servers are up at once (same GGUF file, same settings as
run_llm.py) and the requests alternate between them, one at a time, in a varying order:
request i goes to both, with the same prompt, so each pair sees the same machine state.
Reported: each server's TTFT p50, and the median of the per-pair differences (nimble minus
engine) with a bootstrap 95% interval.

    python benchmarks/ttft_paired.py --pairs 200     # writes benchmarks/out/ttft.md
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import random
import statistics
import subprocess
import sys
import time
from pathlib import Path

import httpx

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from loadgen import chat_body, first_model, prompts, stream_one  # noqa: E402
from run_llm import (  # noqa: E402
    DEFAULT_MODEL,
    NIMBLE_CMD,
    OUT,
    TARGETS,
    Settings,
    free_port,
    stop,
    wait_ready,
)

GAP_S = 0.05  # between requests: llama.cpp's threads stop polling for work before the next
WARMUP = 4  # pairs sent first and not counted


def start(name: str, settings: Settings) -> tuple[subprocess.Popen[bytes], str, Path]:
    target, port = TARGETS[name], free_port()
    log = OUT / f"ttft-{name}.log"
    argv = target.command(settings, port)
    with log.open("wb") as sink:  # the child keeps its own copy of the file
        proc = subprocess.Popen(argv, stdout=sink, stderr=subprocess.STDOUT)
    return proc, f"http://127.0.0.1:{port}", log


def bootstrap(diffs: list[float], rounds: int = 2000) -> tuple[float, float]:
    rng = random.Random(0)
    medians = sorted(statistics.median(rng.choices(diffs, k=len(diffs))) for _ in range(rounds))
    return medians[int(0.025 * rounds)], medians[int(0.975 * rounds)]


async def alternate(
    clients: dict[str, httpx.AsyncClient], pairs: int, max_tokens: int
) -> dict[str, list[float]]:
    """Each prompt to every server, one request at a time, in a shuffled order: TTFTs (ms)."""
    models = {name: await first_model(client) for name, client in clients.items()}
    ttft: dict[str, list[float]] = {name: [] for name in clients}
    order = list(clients)
    for i, text in enumerate(prompts(pairs + WARMUP)):
        random.Random(i).shuffle(order)
        for name in order:
            result = await stream_one(clients[name], chat_body(models[name], text, max_tokens))
            if not result.ok or result.ttft is None:
                raise RuntimeError(f"{name}: {result.error}")
            if i >= WARMUP:
                ttft[name].append(result.ttft * 1000)
            time.sleep(GAP_S)  # nothing else runs here; the loop may as well block
    return ttft


async def run(settings: Settings, pairs: int, max_tokens: int) -> str:
    servers: dict[str, tuple[subprocess.Popen[bytes], str, Path]] = {}
    try:
        for name in ("nimble", "engine"):
            servers[name] = start(name, settings)  # stopped below even if the next fails
        for name, (proc, url, log) in servers.items():
            await wait_ready(proc, url + TARGETS[name].ready_path, log)
        async with contextlib.AsyncExitStack() as stack:
            clients = {
                name: await stack.enter_async_context(
                    httpx.AsyncClient(base_url=url, timeout=120, trust_env=False)
                )
                for name, (_, url, _) in servers.items()
            }
            ttft = await alternate(clients, pairs, max_tokens)
    finally:
        for proc, _, _ in servers.values():
            stop(proc)
    diffs = [a - b for a, b in zip(ttft["nimble"], ttft["engine"], strict=True)]
    low, high = bootstrap(diffs)
    when = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    return "\n".join(
        [
            f"# TTFT at one stream, paired ({when})",
            "",
            f"{pairs} pairs, max_tokens {max_tokens}, {settings.threads} threads, "
            f"model {settings.model.name}",
            "",
            "| server | TTFT p50 ms | TTFT p95 ms |",
            "|---|---|---|",
            *(
                f"| {name} | {statistics.median(v):.1f} | "
                f"{sorted(v)[int(0.95 * (len(v) - 1))]:.1f} |"
                for name, v in ttft.items()
            ),
            "",
            f"nimble - engine, median of the pairs: {statistics.median(diffs):+.1f} ms "
            f"(95% interval {low:+.1f} .. {high:+.1f} ms)",
            "",
        ]
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", type=Path, default=DEFAULT_MODEL)
    parser.add_argument("--pairs", type=int, default=200)
    parser.add_argument("--max-tokens", type=int, default=8)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--nimble-cmd", default=NIMBLE_CMD, help="as in run_llm.py")
    args = parser.parse_args()
    settings = Settings(args.model.resolve(), args.threads, 8192, 8, args.nimble_cmd)
    OUT.mkdir(exist_ok=True)
    report = asyncio.run(run(settings, args.pairs, args.max_tokens))
    (OUT / "ttft.md").write_text(report)
    print(report)


if __name__ == "__main__":
    main()
