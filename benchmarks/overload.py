"""Overload: a burst far beyond capacity, with and without a bound on the wait for a slot.

    python benchmarks/overload.py --burst 200 --rounds 3

One `nimble serve` of SmolLM2 (4 running slots, a queue of 64) per setting, in one run:
`--max-queue-wait 1e9` (no bound: what nimble did before `max_queue_wait`) and the default
(15 s). Each round first times one request alone, then sends `--burst` chat requests at once
and records, per request, its status and how long it took. Admitted requests should finish
in bounded time; the rest get 429 with Retry-After at once. Prints a table; the raw numbers
of every round go to benchmarks/out/overload.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).parent))
from run_llm import OUT, free_port, stop, wait_ready

MODEL = "smollm2-135m-instruct"
SETTINGS = {"unbounded": ["--max-queue-wait", "1e9"], "bounded (default 15 s)": []}


async def one(client: httpx.AsyncClient, url: str, i: int) -> dict[str, Any]:
    body = {
        "model": MODEL,
        "messages": [{"role": "user", "content": f"Count from {i} to {i + 20}."}],
        "max_tokens": 32,
        "temperature": 0,
    }
    started = time.monotonic()
    answer = await client.post(url + "/v1/chat/completions", json=body)
    took = time.monotonic() - started
    return {
        "status": answer.status_code,
        "seconds": round(took, 3),
        "retry_after": answer.headers.get("retry-after"),
    }


async def round_(url: str, burst: int) -> dict[str, Any]:
    limits = httpx.Limits(max_connections=burst + 1, max_keepalive_connections=burst + 1)
    async with httpx.AsyncClient(timeout=600, limits=limits, trust_env=False) as client:
        alone = await one(client, url, 0)
        results = await asyncio.gather(*(one(client, url, i) for i in range(burst)))
    return {"alone_s": alone["seconds"], "requests": results}


def summary(name: str, rounds: list[dict[str, Any]]) -> list[str]:
    rows = []
    for number, data in enumerate(rounds, 1):
        ok = sorted(r["seconds"] for r in data["requests"] if r["status"] == 200)
        shed = [r for r in data["requests"] if r["status"] == 429]
        other = [r for r in data["requests"] if r["status"] not in (200, 429)]
        shed_s = max((r["seconds"] for r in shed), default=0.0)
        with_retry = sum(1 for r in shed if r["retry_after"])
        p50 = statistics.median(ok) if ok else 0.0
        p95 = ok[int(0.95 * (len(ok) - 1))] if ok else 0.0
        rows.append(
            f"| {name} | {number} | {data['alone_s']:.2f} | {len(ok)} | {len(shed)} "
            f"({with_retry} with Retry-After) | {len(other)} | {p50:.1f} | {p95:.1f} | "
            f"{max(ok, default=0.0):.1f} | {shed_s:.1f} |"
        )
    return rows


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--burst", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    OUT.mkdir(exist_ok=True)
    raw: dict[str, list[dict[str, Any]]] = {}
    for name, extra in SETTINGS.items():
        port = free_port()
        argv = [sys.executable, "-m", "nimble.cli.main", "serve", "--model", MODEL]
        argv += ["--port", str(port), "--max-running", "4", "--max-waiting", "64", *extra]
        log = OUT / f"overload-{port}.log"
        with log.open("wb") as sink:
            proc = subprocess.Popen(argv, stdout=sink, stderr=sink)
        try:
            url = f"http://127.0.0.1:{port}"
            await wait_ready(proc, url + "/v1/health/ready", log)
            raw[name] = [await round_(url, args.burst) for _ in range(args.rounds)]
        finally:
            stop(proc)
    (OUT / "overload.json").write_text(json.dumps(raw, indent=1))
    print(
        "| setting | round | one alone (s) | admitted | 429 | other | admitted p50 (s) "
        "| p95 (s) | max (s) | slowest 429 (s) |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    for name, rounds in raw.items():
        print("\n".join(summary(name, rounds)))


if __name__ == "__main__":
    asyncio.run(main())
