"""What the gateway adds to time to first token, paired: one `nimble serve` replica and one
`nimble gateway` in front of it, both up at once; request i goes once straight to the
replica and once through the gateway, one request at a time, in a shuffled order, so each
pair sees the same machine state. Each side has its own prompt (the same length) so that
neither finds the other's whole prompt in llama.cpp's cache. Reported: each side's TTFT p50
and p95, and the median of the per-pair differences (gateway minus direct) with a bootstrap
95% interval.

    python benchmarks/gateway_ttft_paired.py --pairs 200   # writes benchmarks/out/gateway_ttft.md

`--model fake` puts nimble's fake engine (no weights, tokens at once) behind the replica
instead: what is left of the difference is the gateway's own hop, with no model time in
either side to blur it.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import random
import statistics
import subprocess
import sys
import time
from pathlib import Path

import httpx

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from loadgen import chat_body, prompts, stream_one  # noqa: E402
from run_llm import OUT, free_port, stop, wait_ready  # noqa: E402
from ttft_paired import GAP_S, WARMUP, bootstrap  # noqa: E402

MODEL = "smollm2-135m-instruct"


def start(name: str, argv: list[str]) -> subprocess.Popen[bytes]:
    with (OUT / f"gateway-ttft-{name}.log").open("wb") as sink:
        return subprocess.Popen(argv, stdout=sink, stderr=subprocess.STDOUT)


async def run(
    pairs: int, max_tokens: int, threads: int, model: str
) -> tuple[str, dict[str, list[float]]]:
    nimble = [sys.executable, "-m", "nimble.cli.main"]
    replica_port, gateway_port = free_port(), free_port()
    replica = f"http://127.0.0.1:{replica_port}"
    gateway = f"http://127.0.0.1:{gateway_port}"
    procs: dict[str, subprocess.Popen[bytes]] = {}
    try:
        procs["replica"] = start(
            "replica",
            [*nimble, "serve", "--model", model, "--port", str(replica_port),
             "--threads", str(threads), "--log-level", "warning",
             *(["--fake-token-delay", "0"] if model.startswith("fake") else [])],
        )  # fmt: skip
        await wait_ready(
            procs["replica"], replica + "/v1/health/ready", OUT / "gateway-ttft-replica.log"
        )
        procs["gateway"] = start(
            "gateway",
            [*nimble, "gateway", "--upstream", replica, "--port", str(gateway_port),
             "--log-level", "warning"],
        )  # fmt: skip
        await wait_ready(
            procs["gateway"], gateway + "/v1/health/ready", OUT / "gateway-ttft-gateway.log"
        )
        served = httpx.get(replica + "/v1/models", trust_env=False).json()["data"][0]["id"]
        ttft: dict[str, list[float]] = {"direct": [], "gateway": []}
        texts = prompts(2 * (pairs + WARMUP))
        async with (
            httpx.AsyncClient(base_url=replica, timeout=120, trust_env=False) as direct,
            httpx.AsyncClient(base_url=gateway, timeout=120, trust_env=False) as through,
        ):
            clients = {"direct": direct, "gateway": through}
            order = list(clients)
            for i in range(pairs + WARMUP):
                random.Random(i).shuffle(order)
                for side, name in enumerate(order):
                    body = chat_body(served, texts[2 * i + side], max_tokens)
                    result = await stream_one(clients[name], body)
                    if not result.ok or result.ttft is None:
                        raise RuntimeError(f"{name}: {result.error}")
                    if i >= WARMUP:
                        ttft[name].append(result.ttft * 1000)
                    time.sleep(GAP_S)  # nothing else runs here; the loop may as well block
    finally:
        for proc in procs.values():
            stop(proc)
    diffs = [g - d for g, d in zip(ttft["gateway"], ttft["direct"], strict=True)]
    low, high = bootstrap(diffs)
    when = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    lines = [
        f"# TTFT at one stream, through the gateway vs straight to the replica ({when})",
        "",
        f"{pairs} pairs, max_tokens {max_tokens}, replica with {threads} threads, {model}",
        "",
        "| path | TTFT p50 ms | TTFT p95 ms |",
        "|---|---|---|",
        *(
            f"| {name} | {statistics.median(v):.1f} | {sorted(v)[int(0.95 * (len(v) - 1))]:.1f} |"
            for name, v in ttft.items()
        ),
        "",
        f"gateway - direct, median of the pairs: {statistics.median(diffs):+.1f} ms "
        f"(95% interval {low:+.1f} .. {high:+.1f} ms)",
        "",
    ]
    return "\n".join(lines), ttft


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--pairs", type=int, default=200)
    parser.add_argument("--max-tokens", type=int, default=4)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--model", default=MODEL, help="fake: the gateway's own hop alone")
    args = parser.parse_args()
    OUT.mkdir(exist_ok=True)
    report, raw = asyncio.run(run(args.pairs, args.max_tokens, args.threads, args.model))
    (OUT / "gateway_ttft.md").write_text(report)
    (OUT / "gateway_ttft.json").write_text(json.dumps(raw))
    print(report)


if __name__ == "__main__":
    main()
