"""Async load generator for OpenAI-compatible chat servers (streaming SSE).

For one base URL it runs a concurrency sweep: at each level C, N distinct chat requests are
sent by C concurrent workers (closed loop), each streamed with SSE. Per level it reports:

- output tokens/s: total completion tokens / wall time of the level. Tokens come from the
  final usage chunk (`stream_options.include_usage`); a server that sends no usage is counted
  by its non-empty content deltas (about one per token).
- TTFT p50/p95: request start to first non-empty content delta.
- ITL p50: gaps between consecutive content deltas, pooled over all requests of the level.
- other CPU %: the machine's CPU time used by anything but the server and this load generator
  during the level, as a share of all cores (Linux /proc). Above a few percent, the level was
  disturbed by other work and its numbers are not comparable.

The statistics are pure functions (`percentile`, `summarize`, `parse_sse_line`) so they are
testable without a server.

    python benchmarks/loadgen.py http://127.0.0.1:8000 --concurrency 1,4,8 --max-tokens 128
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import math
import os
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from typing import Any

import httpx

TOPICS = (
    "a lighthouse keeper",
    "a lost robot",
    "a dragon who bakes bread",
    "the last tree on Mars",
    "a cat detective",
    "a time-travelling postman",
    "a shy volcano",
    "a library at the bottom of the sea",
    "a clockmaker's apprentice",
    "two rival snowmen",
    "a pirate afraid of water",
    "a garden that grows music",
)

DONE = "[DONE]"


@dataclass(frozen=True)
class RequestResult:
    """One streamed request; times are seconds relative to the request start."""

    ok: bool
    latency: float
    ttft: float | None
    gaps: tuple[float, ...]
    completion_tokens: int
    usage_reported: bool
    error: str | None = None


@dataclass(frozen=True)
class LevelStats:
    concurrency: int
    requests: int
    errors: int
    wall_s: float
    completion_tokens: int
    tokens_per_s: float
    ttft_p50_ms: float
    ttft_p95_ms: float
    itl_p50_ms: float
    latency_p50_s: float
    usage_reported: bool
    other_cpu_pct: float = math.nan
    latency_max_s: float = math.nan


@dataclass(frozen=True)
class CpuSample:
    """Clock ticks: all cores busy, all cores in total, and the watched processes' own."""

    busy: int
    total: int
    own: int


def other_cpu_pct(before: CpuSample, after: CpuSample) -> float:
    """Share (0-100) of all cores' time spent on processes other than the watched ones."""
    total = after.total - before.total
    if total <= 0:
        return math.nan
    foreign = (after.busy - before.busy) - (after.own - before.own)
    return max(0.0, 100.0 * foreign / total)


def sample_cpu(pids: Sequence[int]) -> CpuSample | None:
    """Read /proc (Linux); None where it is not there or a process has gone."""
    try:
        with open("/proc/stat") as stat:
            ticks = [int(v) for v in stat.readline().split()[1:]]
        own = 0
        for pid in pids:
            with open(f"/proc/{pid}/stat") as proc:
                fields = proc.read().rsplit(")", 1)[1].split()
            own += int(fields[11]) + int(fields[12])  # utime, stime
    except (OSError, ValueError, IndexError):
        return None
    idle = ticks[3] + ticks[4]  # idle + iowait
    return CpuSample(busy=sum(ticks[:8]) - idle, total=sum(ticks[:8]), own=own)


async def wait_for_quiet(
    pids: Sequence[int], below_pct: float, max_wait_s: float, hold_s: float = 3.0, log: Any = print
) -> None:
    """Poll /proc until other processes use under below_pct of the CPU for hold_s in a row.

    Two processes that both run llama.cpp's spinning thread barriers on the same cores slow
    each other down many times over, so a level starts only on a quiet machine. Gives up after
    max_wait_s (the level's "other CPU %" then shows the disturbance).
    """
    watched = [os.getpid(), *pids]
    start = time.monotonic()
    quiet_since = start
    previous = sample_cpu(watched)
    warned = False
    while previous is not None and time.monotonic() - start < max_wait_s:
        await asyncio.sleep(0.5)
        current = sample_cpu(watched)
        if current is None:
            return
        share = other_cpu_pct(previous, current)
        previous = current
        now = time.monotonic()
        if not share < below_pct:
            quiet_since = now
            if not warned:
                log(f"  waiting for other processes to go quiet (they use {share:.0f}% CPU)")
                warned = True
        elif now - quiet_since >= hold_s:
            return
    if previous is not None:
        log(f"  machine still busy after {max_wait_s:.0f} s; measuring anyway")


def percentile(values: Sequence[float], q: float) -> float:
    """Linear-interpolated percentile (q in [0, 100]); NaN for no values."""
    if not 0 <= q <= 100:
        raise ValueError(f"percentile {q} is outside [0, 100]")
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = (len(ordered) - 1) * q / 100
    low = math.floor(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def summarize(concurrency: int, results: Sequence[RequestResult], wall_s: float) -> LevelStats:
    """Aggregate one level's results; only successful requests count towards the metrics."""
    ok = [r for r in results if r.ok]
    tokens = sum(r.completion_tokens for r in ok)
    ttfts = [r.ttft for r in ok if r.ttft is not None]
    gaps = [g for r in ok for g in r.gaps]
    return LevelStats(
        concurrency=concurrency,
        requests=len(results),
        errors=len(results) - len(ok),
        wall_s=wall_s,
        completion_tokens=tokens,
        tokens_per_s=tokens / wall_s if wall_s > 0 else math.nan,
        ttft_p50_ms=percentile(ttfts, 50) * 1000,
        ttft_p95_ms=percentile(ttfts, 95) * 1000,
        itl_p50_ms=percentile(gaps, 50) * 1000,
        latency_p50_s=percentile([r.latency for r in ok], 50),
        usage_reported=bool(ok) and all(r.usage_reported for r in ok),
        latency_max_s=max((r.latency for r in ok), default=math.nan),
    )


def parse_sse_line(line: str) -> dict[str, Any] | str | None:
    """One SSE line: the JSON payload of a `data:` line, DONE, or None for anything else."""
    if not line.startswith("data:"):
        return None  # blank separators, comments/pings (": ping"), event:/id: fields
    data = line[5:].strip()
    if data == DONE:
        return DONE
    if not data:
        return None
    payload = json.loads(data)
    return payload if isinstance(payload, dict) else None


def content_of(chunk: dict[str, Any]) -> str:
    """The text of a chat chunk's first choice delta ('' when there is none)."""
    choices = chunk.get("choices") or []
    if not choices:
        return ""
    delta = choices[0].get("delta") or {}
    content = delta.get("content")
    return content if isinstance(content, str) else ""


def prompts(count: int, offset: int = 0) -> list[str]:
    """Distinct prompts, so no two requests of a run share the whole prompt."""
    return [
        f"Write a short story about {TOPICS[i % len(TOPICS)]} (story #{i + 1})."
        for i in range(offset, offset + count)
    ]


def chat_body(model: str, prompt: str, max_tokens: int) -> dict[str, Any]:
    return {
        "model": model,
        "messages": [{"role": "user", "content": prompt}],
        "max_tokens": max_tokens,
        "temperature": 0,
        "stream": True,
        "stream_options": {"include_usage": True},
    }


async def stream_one(client: httpx.AsyncClient, body: dict[str, Any]) -> RequestResult:
    start = time.perf_counter()
    stamps: list[float] = []
    usage_tokens: int | None = None
    try:
        async with client.stream("POST", "/v1/chat/completions", json=body) as response:
            if response.status_code != 200:
                text = (await response.aread()).decode(errors="replace")[:200]
                raise RuntimeError(f"HTTP {response.status_code}: {text}")
            async for line in response.aiter_lines():
                event = parse_sse_line(line)
                if event == DONE:
                    break
                if not isinstance(event, dict):
                    continue
                if "error" in event:
                    raise RuntimeError(f"stream error: {event['error']}")
                if content_of(event):
                    stamps.append(time.perf_counter() - start)
                usage = event.get("usage")
                if isinstance(usage, dict) and "completion_tokens" in usage:
                    usage_tokens = int(usage["completion_tokens"])
    except (httpx.HTTPError, RuntimeError, ValueError) as exc:
        return RequestResult(False, time.perf_counter() - start, None, (), 0, False, str(exc))
    return RequestResult(
        ok=True,
        latency=time.perf_counter() - start,
        ttft=stamps[0] if stamps else None,
        gaps=tuple(b - a for a, b in itertools.pairwise(stamps)),
        completion_tokens=usage_tokens if usage_tokens is not None else len(stamps),
        usage_reported=usage_tokens is not None,
    )


async def run_level(
    client: httpx.AsyncClient,
    model: str,
    concurrency: int,
    texts: Sequence[str],
    max_tokens: int,
    pids: Sequence[int] = (),
) -> LevelStats:
    """Closed loop: `concurrency` workers drain a queue of prompts."""
    queue: asyncio.Queue[str] = asyncio.Queue()
    for text in texts:
        queue.put_nowait(text)
    results: list[RequestResult] = []

    async def worker() -> None:
        while not queue.empty():
            text = queue.get_nowait()
            results.append(await stream_one(client, chat_body(model, text, max_tokens)))

    watched = [os.getpid(), *pids]
    cpu_before = sample_cpu(watched)
    start = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    stats = summarize(concurrency, results, time.perf_counter() - start)
    cpu_after = sample_cpu(watched)
    if cpu_before is None or cpu_after is None:
        return stats
    return replace(stats, other_cpu_pct=other_cpu_pct(cpu_before, cpu_after))


async def first_model(client: httpx.AsyncClient) -> str:
    response = await client.get("/v1/models")
    response.raise_for_status()
    return str(response.json()["data"][0]["id"])


def requests_for(concurrency: int, per_slot: int, minimum: int) -> int:
    return max(per_slot * concurrency, minimum)


async def sweep(
    base_url: str,
    levels: Sequence[int],
    max_tokens: int,
    per_slot: int = 4,
    minimum: int = 8,
    pids: Sequence[int] = (),
    quiet_below_pct: float = 0.0,
    quiet_max_wait_s: float = 900.0,
    log: Any = print,
) -> list[LevelStats]:
    """Warm up once, then run every concurrency level in turn (pids: the server's)."""
    timeout = httpx.Timeout(600.0, connect=10.0)
    limits = httpx.Limits(max_connections=max(levels) + 2)
    async with httpx.AsyncClient(
        base_url=base_url, timeout=timeout, limits=limits, trust_env=False
    ) as client:
        model = await first_model(client)
        warm = await stream_one(client, chat_body(model, "Say hello.", 16))
        if not warm.ok:
            raise RuntimeError(f"warm-up request failed: {warm.error}")
        stats: list[LevelStats] = []
        offset = 0
        for level in levels:
            count = requests_for(level, per_slot, minimum)
            texts = prompts(count, offset)
            offset += count
            if quiet_below_pct > 0:
                await wait_for_quiet(pids, quiet_below_pct, quiet_max_wait_s, log=log)
            result = await run_level(client, model, level, texts, max_tokens, pids)
            log(
                f"  c={level}: {result.tokens_per_s:.1f} tok/s, "
                f"TTFT p50 {result.ttft_p50_ms:.0f} ms, errors {result.errors}/{result.requests}, "
                f"other CPU {result.other_cpu_pct:.0f}%"
            )
            stats.append(result)
        return stats


def main() -> None:
    parser = argparse.ArgumentParser(description="Concurrency sweep against one server.")
    parser.add_argument("base_url")
    parser.add_argument("--concurrency", default="1,4,8")
    parser.add_argument("--max-tokens", type=int, default=128)
    parser.add_argument("--requests", type=int, default=4, help="requests per slot per level")
    args = parser.parse_args()
    levels = [int(c) for c in args.concurrency.split(",")]
    for stat in asyncio.run(sweep(args.base_url, levels, args.max_tokens, args.requests)):
        print(json.dumps(asdict(stat)))


if __name__ == "__main__":
    main()
