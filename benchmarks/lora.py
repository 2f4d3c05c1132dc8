"""Tokens/s with a LoRA adapter against the base model, on `nimble serve` (llama.cpp engine).

One server: SmolLM2-135M-Instruct with one real adapter (`pirate`, fitted by
tests/support/smollm2_lora.py: a rank-16 LoRA on the last block's ffn_down) loaded at
start. Each level streams the same chat prompts (loadgen.py's, closed loop, C clients,
temperature 0, `ignore_eos` so every request writes exactly max_tokens) to one target:

- `base`: the base model (with the adapter loaded beside it: every request sends llama.cpp
  all adapters at scale 0);
- `adapter`: the adapter;
- `mixed`: requests alternating base and adapter. llama.cpp never batches slots whose
  adapters differ, so this shows what mixed traffic costs at c > 1.

Rounds alternate the targets' order (`--rounds`, every run in the raw JSON), so drift on a
shared machine hits all of them alike; the table shows each level's median and its ratio
to the base model's.

    python benchmarks/lora.py --rounds 3
    python benchmarks/lora.py --rounds 1 --requests 4 --max-tokens 8   # a smoke run

Writes `out/lora.md` and `out/lora.json` (`--out` to change the stem).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import httpx
from loadgen import LevelStats, chat_body, prompts, stream_one, summarize
from run_llm import OUT, free_port, stop, wait_ready

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests.support
from tests.support.smollm2_lora import BASE_MODEL, PIRATE, build_adapter

TARGETS = ("base", "adapter", "mixed")


def models_of(target: str, count: int) -> list[str]:
    if target == "base":
        return [BASE_MODEL] * count
    if target == "adapter":
        return ["pirate"] * count
    return [BASE_MODEL if i % 2 == 0 else "pirate" for i in range(count)]


async def level(
    client: httpx.AsyncClient, target: str, concurrency: int, texts: list[str], max_tokens: int
) -> LevelStats:
    """Closed loop: `concurrency` workers drain the prompts, each to its target model."""
    queue: asyncio.Queue[tuple[str, str]] = asyncio.Queue()
    for model, text in zip(models_of(target, len(texts)), texts, strict=True):
        queue.put_nowait((model, text))
    results = []

    async def worker() -> None:
        while not queue.empty():
            model, text = queue.get_nowait()
            body: dict[str, Any] = {**chat_body(model, text, max_tokens), "ignore_eos": True}
            results.append(await stream_one(client, body))

    start = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return summarize(concurrency, results, time.perf_counter() - start)


async def bench(args: argparse.Namespace, adapter: Path, log: Path) -> list[dict[str, Any]]:
    port = free_port()
    command = [
        *(sys.executable, "-m", "nimble.cli.main", "serve", "--model", BASE_MODEL),
        *("--port", str(port), "--lora", f"pirate={adapter}"),
        *("--max-batch-size", str(max(args.concurrency)), "--threads", str(args.threads)),
        *("--log-level", "warning"),
    ]
    runs: list[dict[str, Any]] = []
    with log.open("wb") as out:
        proc = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT)
    try:
        url = f"http://127.0.0.1:{port}"
        await wait_ready(proc, f"{url}/v1/health/ready", log)
        texts = prompts(args.requests)
        async with httpx.AsyncClient(base_url=url, timeout=600, trust_env=False) as client:
            for target in TARGETS:  # warm-up, not recorded
                await level(client, target, 1, texts[:1], args.max_tokens)
            for number in range(args.rounds):
                order = TARGETS if number % 2 == 0 else TARGETS[::-1]
                for concurrency in args.concurrency:
                    for target in order:
                        stats = await level(client, target, concurrency, texts, args.max_tokens)
                        runs.append({"round": number, "target": target, **asdict(stats)})
                        print(
                            f"round {number} c={concurrency} {target}: "
                            f"{stats.tokens_per_s:.1f} tok/s ({stats.errors} errors)",
                            flush=True,
                        )
    finally:
        stop(proc)
    return runs


def table(runs: list[dict[str, Any]], concurrency: list[int]) -> list[str]:
    lines = [
        "| concurrency | target | tokens/s (median) | vs base | TTFT p50 ms | runs | errors |",
        "|---:|---|---:|---:|---:|---:|---:|",
    ]
    for c in concurrency:
        medians = {}
        for target in TARGETS:
            mine = [r for r in runs if r["concurrency"] == c and r["target"] == target]
            medians[target] = statistics.median(r["tokens_per_s"] for r in mine)
            ttft = statistics.median(r["ttft_p50_ms"] for r in mine)
            errors = sum(r["errors"] for r in mine)
            ratio = medians[target] / medians["base"] if medians.get("base") else float("nan")
            lines.append(
                f"| {c} | {target} | {medians[target]:.1f} | {ratio:.2f} | {ttft:.0f} "
                f"| {len(mine)} | {errors} |"
            )
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--concurrency", default="1,4", help="comma-separated levels")
    parser.add_argument("--requests", type=int, default=24, help="per level")
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", default="lora", help="file stem under benchmarks/out")
    args = parser.parse_args()
    args.concurrency = [int(c) for c in args.concurrency.split(",")]
    OUT.mkdir(exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="nimble-lora-") as folder:
        started = time.monotonic()
        adapter = build_adapter(Path(folder), "pirate", PIRATE).path
        print(f"adapter fitted in {time.monotonic() - started:.1f}s: {adapter}", flush=True)
        runs = asyncio.run(bench(args, adapter, OUT / f"{args.out}.log"))
    lines = [
        f"# LoRA adapter vs base model: {BASE_MODEL}, llama.cpp engine",
        "",
        f"{args.requests} streamed chats per level, max_tokens {args.max_tokens} "
        f"(ignore_eos), {args.threads} threads, {args.rounds} rounds (medians).",
        "",
        *table(runs, args.concurrency),
    ]
    (OUT / f"{args.out}.md").write_text("\n".join(lines) + "\n")
    (OUT / f"{args.out}.json").write_text(json.dumps({"args": vars(args), "runs": runs}, indent=1))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
