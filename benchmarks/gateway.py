"""The gateway in front of two replicas (issue 17): the routing policies side by side, the
gateway's own cost, and what clients see when a replica dies.

    python benchmarks/gateway.py --rounds 3

Two `nimble serve` replicas of SmolLM2-135M (llama.cpp, 1 thread, 2 slots, `--prompt-cache-mib`
M of llama.cpp's host prompt cache each) and three `nimble gateway`s in front of them:
prefix-aware and round-robin over both replicas, and one over replica 1 alone. In one run:

0. warm set: how many ~1,000-token prefixes one replica keeps warm. For n in --warm-probe:
   n fresh prefixes one after another straight to replica 1, then the first one again: is it
   still read from the cache (its usage.prompt_tokens_details.cached_tokens)?
1. shared prefixes: K system prompts of ~1,000 tokens; R requests, each one of them plus a
   short question of its own (16 tokens), from 4 clients (closed loop), through each policy's
   gateway. Per policy: TTFT p50/p90 and the share of prompt tokens read from the replicas'
   prefix caches, sum(cached_tokens) / sum(prompt_tokens).
2. no shared prefix: unique ~300-token prompts, 64 tokens each, 4 clients: tokens/s per policy.
3. overhead: the one-upstream gateway against replica 1 straight, alternating (ABAB...), 4
   streams of 64 tokens; plus a few requests alone (TTFT with no queue).
4. failure: 4 streaming clients through the prefix-aware gateway; SIGKILL replica 2; time
   until the gateway's nimble_gateway_upstream_up for it is 0 (/metrics polled every 50 ms);
   restart it on its port and time until it is up and serving again.

Rounds of 1 and 2 run the policies in turn, the order swapped each round; every round and
policy has prompts of its own (random words seeded by part, round and policy), so a cache
filled by an earlier run never helps a later one. Generation ignores EOS (every answer is
max_tokens long). Prints Markdown tables and writes them to benchmarks/out/gateway.md; every
request's raw numbers go to benchmarks/out/gateway.json; process logs to out/gateway-*.log.

Sizing of part 1: one replica keeps 1 + floor(M / 22 MiB) ~1,000-token prefixes warm (part 0
measures it: 3 at M=64, at least 6 at M=128). The defaults (M=64, K=6, R=36) are what ran
on 2026-12-03 to fit the time on 2 cores (a cold prefill there takes 12-15 s); they leave
prefix-aware routing no spare room (3 prefixes per replica, a warm set of 3). Where time
allows: --prompt-cache-mib 128 --prefixes 12 --requests 96 (see RESULTS.md).
`--source DIR` runs every process from another source tree (a `git archive` copy), so that
edits in the working tree during a run do not change what runs.
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
import random
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import httpx
from prometheus_client.parser import text_string_to_metric_families

sys.path.insert(0, str(Path(__file__).parent))
from loadgen import (
    DONE,
    content_of,
    other_cpu_pct,
    parse_sse_line,
    percentile,
    sample_cpu,
    wait_for_quiet,
)
from run_llm import OUT, _field, _read, free_port, stop, wait_ready

MODEL = "smollm2-135m-instruct"
POLICIES = ("prefix-aware", "round-robin")
# common English words, nearly all one SmolLM2 token each with their leading space
_WORD_TEXT = (
    "time year people way day man thing woman life child world school state family student "
    "group country problem hand part place case week company system program question work "
    "government number night point home water room mother area money story fact month lot "
    "right study book eye job word business issue side kind head house service friend "
    "father power hour game line end member law car city community name president team "
    "minute idea kid body information back parent face others level office door health "
    "person art war history party result change morning reason research girl guy moment "
    "air teacher force education foot boy age policy music market sense nation plan "
    "college interest death experience effect class control care field development role "
    "effort rate heart drug show leader light voice wife police mind price report decision "
    "son view relationship town road arm difference value building action model season "
    "society tax director position player record paper space ground form event official "
    "matter center couple site project activity star table need court oil situation cost "
    "industry figure street image phone data picture practice piece land product doctor "
    "wall patient worker news test movie north love support technology step baby computer "
    "type attention film tree source organization hair window evidence population site "
    "green blue red river mountain garden bread stone"
)
WORDS = _WORD_TEXT.split()


# --- prompts (pure) ---


def words(rng: random.Random, count: int) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(count))


def seeded(*key: object) -> random.Random:
    """A generator of its own for each (part, round, policy, ...): fresh text per run."""
    return random.Random("/".join(str(k) for k in key))


def system_prompt(rng: random.Random, count: int) -> str:
    """~count words of random text; it differs from its first word on, so no two prompts
    share a block of the gateway's prefix hashing (nor more than the template in tokens)."""
    return f"{words(rng, count)}. Answer questions about the list of words above."


def assignment(prefixes: int, requests: int, rng: random.Random) -> list[int]:
    """Which prefix each request uses: every prefix equally often (±1), in a random order (so
    that round-robin over 2 replicas does not send a prefix to the same one by accident)."""
    order = [i % prefixes for i in range(requests)]
    rng.shuffle(order)
    return order


def chat(messages: list[dict[str, str]], max_tokens: int) -> dict[str, Any]:
    return {
        "model": MODEL,
        "messages": messages,
        "max_tokens": max_tokens,
        "temperature": 0,
        "ignore_eos": True,
        "stream": True,
        "stream_options": {"include_usage": True},
    }


# --- statistics (pure) ---


def ms(seconds: float | None) -> float:
    return math.nan if seconds is None else seconds * 1000


def ok(records: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    return [r for r in records if r["error"] is None]


def ttfts(records: Sequence[dict[str, Any]]) -> list[float]:
    return [r["ttft"] for r in ok(records) if r["ttft"] is not None]


def cached_share(records: Sequence[dict[str, Any]]) -> float:
    """sum(cached_tokens) / sum(prompt_tokens) over the answered requests."""
    done = [r for r in ok(records) if r["prompt_tokens"]]
    prompt = sum(r["prompt_tokens"] for r in done)
    cached = sum(r["cached_tokens"] or 0 for r in done)
    return cached / prompt if prompt else math.nan


def tokens_per_s(records: Sequence[dict[str, Any]], wall: float) -> float:
    return sum(r["completion_tokens"] or 0 for r in ok(records)) / wall if wall > 0 else math.nan


def failure_kinds(records: Sequence[dict[str, Any]]) -> dict[str, int]:
    kinds = {"ok": 0, "before first byte": 0, "mid-stream": 0}
    for r in records:
        kinds["ok" if r["error"] is None else r["phase"]] += 1
    return kinds


Scrape = dict[tuple[str, tuple[tuple[str, str], ...]], float]  # (sample, labels) -> value


def counter_diff(
    before: Scrape,
    after: Scrape,
    name: str,
    label: str,
) -> dict[str, float]:
    """The growth of counter `name` between two scrapes, summed by one label."""
    grown: dict[str, float] = {}
    for (sample, labels), value in after.items():
        if sample != name:
            continue
        key = dict(labels).get(label, "")
        grown[key] = grown.get(key, 0.0) + value - before.get((sample, labels), 0.0)
    return {k: v for k, v in grown.items() if v}


def fmt(value: float, digits: int = 0) -> str:
    return "n/a" if value is None or math.isnan(value) else f"{value:.{digits}f}"


# --- requests ---


async def stream(client: httpx.AsyncClient, url: str, body: dict[str, Any]) -> dict[str, Any]:
    """One streamed chat request. `phase` of a failure: "before first byte" (a refused
    connection, or an error answer instead of a stream) or "mid-stream" (an error event, a
    broken connection or an end without [DONE] after some of the stream)."""
    start = time.perf_counter()
    record: dict[str, Any] = {
        "start": start,
        "status": None,
        "first_byte": None,
        "ttft": None,
        "latency": None,
        "prompt_tokens": None,
        "cached_tokens": None,
        "completion_tokens": None,
        "error": None,
        "phase": None,
    }
    done = False
    try:
        async with client.stream("POST", url + "/v1/chat/completions", json=body) as response:
            record["status"] = response.status_code
            if response.status_code != 200:
                text = (await response.aread()).decode(errors="replace")[:300]
                record["error"] = f"HTTP {response.status_code}: {text}"
                return record
            async for line in response.aiter_lines():
                now = time.perf_counter() - start
                if record["first_byte"] is None:
                    record["first_byte"] = now
                event = parse_sse_line(line)
                if event == DONE:
                    done = True
                    break
                if not isinstance(event, dict):
                    continue
                if "error" in event:
                    record["error"] = f"error event: {json.dumps(event['error'])[:300]}"
                    break
                if record["ttft"] is None and content_of(event):
                    record["ttft"] = now
                usage = event.get("usage")
                if isinstance(usage, dict):
                    details = usage.get("prompt_tokens_details") or {}
                    record["prompt_tokens"] = usage.get("prompt_tokens")
                    record["completion_tokens"] = usage.get("completion_tokens")
                    record["cached_tokens"] = details.get("cached_tokens")
            if not done and record["error"] is None:
                record["error"] = "stream ended without [DONE]"
    except (httpx.HTTPError, ValueError) as exc:
        record["error"] = f"{type(exc).__name__}: {exc}"[:300]
    finally:
        record["latency"] = time.perf_counter() - start
        if record["error"] is not None:
            phase = "before first byte" if record["first_byte"] is None else "mid-stream"
            record["phase"] = phase
    return record


async def closed_loop(
    client: httpx.AsyncClient,
    url: str,
    bodies: Sequence[dict[str, Any]],
    concurrency: int,
    tags: Sequence[dict[str, Any]] | None = None,
) -> tuple[list[dict[str, Any]], float]:
    """`concurrency` clients drain the bodies in order; (records in body order, wall s)."""
    records: list[dict[str, Any] | None] = [None] * len(bodies)
    queue = iter(range(len(bodies)))

    async def worker() -> None:
        for i in queue:
            records[i] = {"index": i, **(tags[i] if tags else {})}
            records[i].update(await stream(client, url, bodies[i]))  # type: ignore[union-attr]

    start = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    wall = time.perf_counter() - start
    done = [r for r in records if r is not None]
    for r in done:
        r["start"] -= start
    return done, wall


async def scrape(client: httpx.AsyncClient, url: str) -> Scrape:
    answer = await client.get(url + "/metrics")
    answer.raise_for_status()
    values: Scrape = {}
    for family in text_string_to_metric_families(answer.text):
        for sample in family.samples:
            values[(sample.name, tuple(sorted(sample.labels.items())))] = float(sample.value)
    return values


def upstream_value(values: Scrape, name: str, upstream: str) -> float:
    """Sum of the samples of `name` for one upstream (over its other labels)."""
    return sum(
        v
        for (n, labels), v in values.items()
        if n == name and dict(labels).get("upstream") == upstream
    )


# --- processes ---


class Fleet:
    """The replicas and gateways this run started; `stop_all` ends every one."""

    def __init__(self, env: dict[str, str], cwd: str | None):
        self.env, self.cwd = env, cwd
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.argv: dict[str, list[str]] = {}
        self.logs: dict[str, Path] = {}

    def start(self, name: str, argv: list[str]) -> subprocess.Popen[bytes]:
        log = OUT / f"gateway-{name}.log"
        self.logs[name], self.argv[name] = log, argv
        with log.open("ab") as sink:
            proc = subprocess.Popen(argv, stdout=sink, stderr=sink, env=self.env, cwd=self.cwd)
        self.procs[name] = proc
        return proc

    def pids(self) -> list[int]:
        return [p.pid for p in self.procs.values() if p.poll() is None]

    def stop_all(self) -> None:
        for proc in self.procs.values():
            try:
                stop(proc)
            except Exception:  # keep stopping the others
                proc.kill()


def nimble(*args: str) -> list[str]:
    return [sys.executable, "-m", "nimble.cli.main", *args]


async def wait_all_up(
    client: httpx.AsyncClient, gateway: str, upstreams: Sequence[str], timeout: float = 120.0
) -> None:
    """Until the gateway has every upstream in its rotation."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            values = await scrape(client, gateway)
            if all(upstream_value(values, "nimble_gateway_upstream_up", u) == 1 for u in upstreams):
                return
        except httpx.HTTPError:
            pass
        await asyncio.sleep(0.2)
    raise RuntimeError(f"gateway {gateway}: not every upstream of {upstreams} up in {timeout} s")


async def quiet(fleet: Fleet, args: argparse.Namespace) -> None:
    if args.quiet_below > 0:
        await wait_for_quiet(fleet.pids(), args.quiet_below, args.quiet_max_wait)


class CpuWatch:
    """Other processes' share of all cores between `start` and `stop` (loadgen's /proc)."""

    def __init__(self, fleet: Fleet):
        self.watched = [os.getpid(), *fleet.pids()]
        self.before = sample_cpu(self.watched)

    def stop(self) -> float:
        after = sample_cpu(self.watched)
        if self.before is None or after is None:
            return math.nan
        return other_cpu_pct(self.before, after)


# --- the parts ---


async def warm_set(
    client: httpx.AsyncClient, urls: Sequence[str], args: argparse.Namespace
) -> list[dict[str, Any]]:
    """The probes of --warm-probe, the i-th on replica i mod 2, those on different replicas
    at the same time (each replica has its own thread)."""
    jobs: dict[str, list[int]] = {}
    for i, n in enumerate(args.warm_probe):
        jobs.setdefault(urls[i % len(urls)], []).append(n)
    found = await asyncio.gather(*(warm_probes(client, u, ns, args) for u, ns in jobs.items()))
    return sorted((r for rs in found for r in rs), key=lambda r: r["n"])


async def warm_probes(
    client: httpx.AsyncClient, url: str, sizes: Sequence[int], args: argparse.Namespace
) -> list[dict[str, Any]]:
    results = []
    for n in sizes:
        rng = seeded("warm", args.seed, n)
        prefixes = [system_prompt(rng, args.prefix_words) for _ in range(n)]
        firsts = []
        for i, prefix in enumerate(prefixes):
            question = f"Question {i}: which word comes first in the list?"
            body = chat(
                [{"role": "system", "content": prefix}, {"role": "user", "content": question}], 16
            )
            firsts.append(await stream(client, url, body))
        again = chat(
            [
                {"role": "system", "content": prefixes[0]},
                {"role": "user", "content": "And which word comes last?"},
            ],
            16,
        )
        back = await stream(client, url, again)
        cold = statistics.median(ttfts(firsts)) if ttfts(firsts) else math.nan
        result: dict[str, Any] = {
            "n": n,
            "replica": url,
            "back": back,
            "cold_ttft_median": cold,
            "cold_prompt_tokens": [r["prompt_tokens"] for r in firsts],
            "cold_cached_tokens": [r["cached_tokens"] for r in firsts],
        }
        print(
            f"  warm set: after {n} prefixes the first again: cached {back['cached_tokens']} of "
            f"{back['prompt_tokens']} tokens, TTFT {ms(back['ttft']):.0f} ms (cold: "
            f"{ms(cold):.0f} ms)",
            flush=True,
        )
        results.append(result)
    return results


async def policy_run(
    client: httpx.AsyncClient,
    fleet: Fleet,
    gateway: str,
    bodies: list[dict[str, Any]],
    tags: list[dict[str, Any]],
    args: argparse.Namespace,
) -> dict[str, Any]:
    await quiet(fleet, args)
    before = await scrape(client, gateway)
    watch = CpuWatch(fleet)
    records, wall = await closed_loop(client, gateway, bodies, args.concurrency, tags)
    other = watch.stop()
    after = await scrape(client, gateway)
    return {
        "wall_s": wall,
        "other_cpu_pct": other,
        "per_upstream": counter_diff(
            before, after, "nimble_gateway_upstream_requests_total", "upstream"
        ),
        "decisions": counter_diff(
            before, after, "nimble_gateway_routing_decisions_total", "reason"
        ),
        "records": records,
    }


async def shared_prefixes(
    client: httpx.AsyncClient, fleet: Fleet, gateways: dict[str, str], args: argparse.Namespace
) -> list[dict[str, Any]]:
    runs = []
    for number in range(1, args.rounds + 1):
        order = assignment(args.prefixes, args.requests, seeded("order", args.seed, number))
        policies = POLICIES if number % 2 else POLICIES[::-1]
        for policy in policies:
            rng = seeded("prefix", args.seed, number, policy)
            prefixes = [system_prompt(rng, args.prefix_words) for _ in range(args.prefixes)]
            bodies, tags = [], []
            for i, k in enumerate(order):
                question = (
                    f"Question {i + 1}: which word of the list above comes after word {i % 50 + 1}?"
                )
                messages = [
                    {"role": "system", "content": prefixes[k]},
                    {"role": "user", "content": question},
                ]
                bodies.append(chat(messages, args.prefix_max_tokens))
                tags.append({"prefix": k})
            run = await policy_run(client, fleet, gateways[policy], bodies, tags, args)
            run.update(round=number, policy=policy)
            print(
                f"  shared prefixes, round {number}, {policy}: TTFT p50 "
                f"{ms(percentile(ttfts(run['records']), 50)):.0f} ms, cached share "
                f"{cached_share(run['records']):.2f}, errors "
                f"{len(run['records']) - len(ok(run['records']))}, "
                f"other CPU {run['other_cpu_pct']:.0f}%",
                flush=True,
            )
            runs.append(run)
    return runs


async def unique_prompts(
    client: httpx.AsyncClient, fleet: Fleet, gateways: dict[str, str], args: argparse.Namespace
) -> list[dict[str, Any]]:
    runs = []
    for number in range(1, args.rounds + 1):
        policies = POLICIES if number % 2 else POLICIES[::-1]
        for policy in policies:
            rng = seeded("unique", args.seed, number, policy)
            bodies = [
                chat(
                    [
                        {
                            "role": "user",
                            "content": f"{words(rng, args.unique_words)}. "
                            "Write a story with these words.",
                        }
                    ],
                    args.unique_max_tokens,
                )
                for _ in range(args.unique_requests)
            ]
            run = await policy_run(
                client, fleet, gateways[policy], bodies, [{}] * len(bodies), args
            )
            run.update(round=number, policy=policy)
            print(
                f"  no shared prefix, round {number}, {policy}: "
                f"{tokens_per_s(run['records'], run['wall_s']):.1f} tok/s, errors "
                f"{len(run['records']) - len(ok(run['records']))}, "
                f"other CPU {run['other_cpu_pct']:.0f}%",
                flush=True,
            )
            runs.append(run)
    return runs


def short_prompt(key: str, i: int) -> str:
    topics = (
        "a lighthouse keeper",
        "a lost robot",
        "a cat detective",
        "a shy volcano",
        "two rival snowmen",
    )
    return f"Write a short story about {topics[i % len(topics)]} (story {key}-{i})."


async def overhead(
    client: httpx.AsyncClient, fleet: Fleet, direct: str, gateway: str, args: argparse.Namespace
) -> list[dict[str, Any]]:
    runs = []
    for number in range(1, args.overhead_rounds + 1):
        for target, url in (("direct", direct), ("gateway", gateway)):
            await quiet(fleet, args)
            key = f"{number}{target[0]}"
            alone = [
                await stream(
                    client, url, chat([{"role": "user", "content": short_prompt(key + "a", i)}], 4)
                )
                for i in range(args.alone_requests)
            ]
            bodies = [
                chat([{"role": "user", "content": short_prompt(key, i)}], args.overhead_max_tokens)
                for i in range(args.overhead_requests)
            ]
            watch = CpuWatch(fleet)
            records, wall = await closed_loop(client, url, bodies, args.concurrency)
            run = {
                "round": number,
                "target": target,
                "wall_s": wall,
                "other_cpu_pct": watch.stop(),
                "alone": alone,
                "records": records,
            }
            print(
                f"  overhead, round {number}, {target}: {tokens_per_s(records, wall):.1f} tok/s, "
                f"TTFT p50 {ms(percentile(ttfts(records), 50)):.0f} ms, alone "
                f"{ms(percentile(ttfts(alone), 50)):.1f} ms, "
                f"errors {len(records) - len(ok(records))}",
                flush=True,
            )
            runs.append(run)
    return runs


async def failure(
    client: httpx.AsyncClient,
    fleet: Fleet,
    gateway: str,
    victim: str,
    victim_url: str,
    args: argparse.Namespace,
) -> dict[str, Any]:
    """Load through `gateway`; SIGKILL replica `victim` after --kill-after s; restart it."""
    t0 = time.perf_counter()
    records: list[dict[str, Any]] = []
    timeline: list[tuple[float, float, float]] = []  # (t, upstream_up, its requests_total)
    events: dict[str, float] = {}
    stopping = asyncio.Event()
    counter = iter(range(10**9))

    async def worker() -> None:
        while not stopping.is_set():
            i = next(counter)
            record = await stream(
                client,
                gateway,
                chat([{"role": "user", "content": short_prompt("f", i)}], args.overhead_max_tokens),
            )
            record["index"], record["start"] = i, record["start"] - t0
            records.append(record)

    async def poll() -> None:
        async with httpx.AsyncClient(timeout=5.0, trust_env=False) as poller:
            while not stopping.is_set():
                try:
                    values = await scrape(poller, gateway)
                    timeline.append(
                        (
                            time.perf_counter() - t0,
                            upstream_value(values, "nimble_gateway_upstream_up", victim_url),
                            upstream_value(
                                values, "nimble_gateway_upstream_requests_total", victim_url
                            ),
                        )
                    )
                except httpx.HTTPError:
                    pass
                await asyncio.sleep(args.poll_interval)

    async def first(condition: Any, since: float, timeout: float) -> float | None:
        deadline = time.perf_counter() + timeout
        while time.perf_counter() < deadline:
            for t, up, served in list(timeline):
                if t >= since and condition(up, served):
                    return t
            await asyncio.sleep(args.poll_interval / 2)
        return None

    workers = [asyncio.create_task(worker()) for _ in range(args.concurrency)]
    poller = asyncio.create_task(poll())
    try:
        await asyncio.sleep(args.kill_after)
        proc = fleet.procs[victim]
        proc.send_signal(signal.SIGKILL)
        events["kill"] = time.perf_counter() - t0
        proc.wait()
        down = await first(lambda up, served: up == 0, events["kill"], 30.0)
        events["gateway_down"] = down if down is not None else math.nan
        await asyncio.sleep(args.down_for)
        events["restart"] = time.perf_counter() - t0
        fleet.start(victim, fleet.argv[victim])
        served_before = timeline[-1][2] if timeline else 0.0
        up = await first(lambda up, served: up == 1, events["restart"], 180.0)
        events["gateway_up"] = up if up is not None else math.nan
        serving = await first(lambda up, served: served > served_before, events["restart"], 60.0)
        events["serving"] = serving if serving is not None else math.nan
        await asyncio.sleep(args.after_restart)
    finally:
        stopping.set()
        await asyncio.gather(*workers, return_exceptions=True)
        await asyncio.gather(poller, return_exceptions=True)
    events["end"] = time.perf_counter() - t0
    return {"events": events, "records": records, "timeline": timeline}


# --- tables ---


def median_of(values: Sequence[float]) -> float:
    clean = [v for v in values if not math.isnan(v)]
    return statistics.median(clean) if clean else math.nan


def table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    return lines + ["| " + " | ".join(row) + " |" for row in rows]


def split_of(run: dict[str, Any], upstreams: Sequence[str]) -> str:
    return " / ".join(str(int(run["per_upstream"].get(u, 0))) for u in upstreams)


def decisions_of(run: dict[str, Any]) -> str:
    d = run["decisions"]
    if "round-robin" in d:
        return "-"
    return " / ".join(
        str(int(d.get(k, 0))) for k in ("prefix-hit", "prefix-miss", "prefix-overloaded")
    )


def warm_table(results: Sequence[dict[str, Any]]) -> list[str]:
    rows = [
        [
            str(r["n"]),
            f"{r['back']['cached_tokens']} / {r['back']['prompt_tokens']}",
            fmt(ms(r["back"]["ttft"])),
            fmt(ms(r["cold_ttft_median"])),
        ]
        for r in results
    ]
    return table(
        [
            "prefixes sent, then the first again",
            "its cached / prompt tokens",
            "its TTFT (ms)",
            "cold TTFT, median (ms)",
        ],
        rows,
    )


def prefix_table(runs: Sequence[dict[str, Any]], upstreams: Sequence[str]) -> list[str]:
    rows = []
    for run in sorted(runs, key=lambda r: (r["round"], POLICIES.index(r["policy"]))):
        records = run["records"]
        prompt = [r["prompt_tokens"] for r in ok(records) if r["prompt_tokens"]]
        rows.append(
            [
                str(run["round"]),
                run["policy"],
                f"{len(ok(records))}/{len(records)}",
                fmt(ms(percentile(ttfts(records), 50))),
                fmt(ms(percentile(ttfts(records), 90))),
                fmt(cached_share(records), 3),
                fmt(statistics.mean(prompt) if prompt else math.nan),
                split_of(run, upstreams),
                decisions_of(run),
                fmt(run["other_cpu_pct"]),
            ]
        )
    return table(
        [
            "round",
            "policy",
            "answered",
            "TTFT p50 (ms)",
            "TTFT p90 (ms)",
            "cached share",
            "prompt tokens / request",
            "requests to replica 1 / 2",
            "prefix hit / miss / overloaded",
            "other CPU %",
        ],
        rows,
    )


def pairs(runs: Sequence[dict[str, Any]], key: str) -> dict[int, dict[str, dict[str, Any]]]:
    out: dict[int, dict[str, dict[str, Any]]] = {}
    for run in runs:
        out.setdefault(run["round"], {})[run[key]] = run
    return out


def prefix_summary(runs: Sequence[dict[str, Any]]) -> list[str]:
    rows, ratios, shares = [], [], []
    for number, by in sorted(pairs(runs, "policy").items()):
        pa, rr = by["prefix-aware"]["records"], by["round-robin"]["records"]
        ratio = percentile(ttfts(pa), 50) / percentile(ttfts(rr), 50)
        ratios.append(ratio)
        shares.append(cached_share(pa))
        rows.append(
            [str(number), fmt(ratio, 2), fmt(cached_share(pa), 3), fmt(cached_share(rr), 3)]
        )
    rows.append(["median", fmt(median_of(ratios), 2), fmt(median_of(shares), 3), ""])
    return table(
        [
            "round",
            "TTFT p50 prefix-aware ÷ round-robin",
            "cached share, prefix-aware",
            "cached share, round-robin",
        ],
        rows,
    )


def unique_table(runs: Sequence[dict[str, Any]], upstreams: Sequence[str]) -> list[str]:
    rows = []
    for number, by in sorted(pairs(runs, "policy").items()):
        tps = {p: tokens_per_s(by[p]["records"], by[p]["wall_s"]) for p in POLICIES}
        for policy in POLICIES:
            run = by[policy]
            prompt = [r["prompt_tokens"] for r in ok(run["records"]) if r["prompt_tokens"]]
            rows.append(
                [
                    str(number),
                    policy,
                    f"{len(ok(run['records']))}/{len(run['records'])}",
                    fmt(tps[policy], 1),
                    fmt(ms(percentile(ttfts(run["records"]), 50))),
                    fmt(statistics.mean(prompt) if prompt else math.nan),
                    split_of(run, upstreams),
                    fmt(run["other_cpu_pct"]),
                    fmt(tps["prefix-aware"] / tps["round-robin"], 3)
                    if policy == POLICIES[-1]
                    else "",
                ]
            )
    return table(
        [
            "round",
            "policy",
            "answered",
            "tokens/s",
            "TTFT p50 (ms)",
            "prompt tokens / request",
            "requests to replica 1 / 2",
            "other CPU %",
            "prefix-aware ÷ round-robin",
        ],
        rows,
    )


def overhead_table(runs: Sequence[dict[str, Any]]) -> list[str]:
    rows, diffs, ratios, alone = [], [], [], []
    for number, by in sorted(pairs(runs, "target").items()):
        got = {}
        for target in ("direct", "gateway"):
            run = by[target]
            got[target] = (
                tokens_per_s(run["records"], run["wall_s"]),
                percentile(ttfts(run["records"]), 50),
                percentile(ttfts(run["alone"]), 50),
            )
            rows.append(
                [
                    str(number),
                    target,
                    f"{len(ok(run['records']))}/{len(run['records'])}",
                    fmt(got[target][0], 1),
                    fmt(ms(got[target][1]), 1),
                    fmt(ms(got[target][2]), 1),
                    fmt(run["other_cpu_pct"]),
                    "",
                    "",
                    "",
                ]
            )
        diff = ms(got["gateway"][1] - got["direct"][1])
        ratio = got["gateway"][0] / got["direct"][0]
        lone = ms(got["gateway"][2] - got["direct"][2])
        diffs.append(diff)
        ratios.append(ratio)
        alone.append(lone)
        rows[-1][-3:] = [f"{diff:+.1f}", fmt(ratio, 3), f"{lone:+.1f}"]
    rows.append(
        [
            "median",
            "",
            "",
            "",
            "",
            "",
            "",
            f"{median_of(diffs):+.1f}",
            fmt(median_of(ratios), 3),
            f"{median_of(alone):+.1f}",
        ]
    )
    return table(
        [
            "round",
            "target",
            "answered",
            "tokens/s",
            "TTFT p50 (ms)",
            "TTFT alone, p50 (ms)",
            "other CPU %",
            "TTFT p50 gateway - direct (ms)",
            "tokens/s gateway ÷ direct",
            "TTFT alone gateway - direct (ms)",
        ],
        rows,
    )


def failure_lines(result: dict[str, Any]) -> list[str]:
    ev = result["events"]
    kinds = failure_kinds(result["records"])
    errors = sorted({r["error"][:120] for r in result["records"] if r["error"]})
    around = [
        r
        for r in result["records"]
        if r["error"] is None and r["start"] > ev.get("restart", math.inf)
    ]
    lines = [
        f"- requests: {len(result['records'])} ({kinds['ok']} answered whole, "
        f"{kinds['before first byte']} failed before any streamed byte, "
        f"{kinds['mid-stream']} broken mid-stream)",
        f"- SIGKILL at {ev['kill']:.2f} s; nimble_gateway_upstream_up = 0 after "
        f"{ev['gateway_down'] - ev['kill']:.3f} s (/metrics polled every "
        f"{result['poll_interval'] * 1000:.0f} ms)",
        f"- restarted at {ev['restart']:.2f} s; up = 1 after "
        f"{ev['gateway_up'] - ev['restart']:.2f} s, "
        f"serving (its nimble_gateway_upstream_requests_total grew) after "
        f"{ev['serving'] - ev['restart']:.2f} s",
        f"- requests started after the restart and answered: {len(around)}",
    ]
    lines += [f"- error seen: `{e}`" for e in errors]
    return lines


def machine(args: argparse.Namespace) -> list[tuple[str, str]]:
    kib = _field(_read("/proc/meminfo"), "MemTotal", ":").split()[0]
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
    stamp = Path(args.source, "COMMIT") if args.source else None
    head = stamp.read_text().strip() if stamp and stamp.exists() else commit.stdout.strip()
    top = subprocess.run(
        ["ps", "-eo", "pcpu,etime,comm", "--sort=-pcpu"], capture_output=True, text=True
    )

    def version(dist: str) -> str:
        try:
            return importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            return "not installed"

    return [
        ("date", dt.datetime.now(dt.UTC).isoformat(timespec="seconds")),
        ("CPU", _field(_read("/proc/cpuinfo"), "model name", ":")),
        ("cores", f"{os.cpu_count()} (usable: {len(os.sched_getaffinity(0))})"),
        ("RAM", f"{int(kib) / 2**20:.1f} GiB" if kib.isdigit() else "unknown"),
        ("OS", f"{_field(_read('/etc/os-release'), 'PRETTY_NAME', '=')}, {platform.release()}"),
        ("Python", platform.python_version()),
        (
            "nimble",
            f"{version('nimble')}, commit {head}, source {args.source or 'the working tree'}",
        ),
        ("xllamacpp", version("xllamacpp")),
        ("load average before", " ".join(f"{x:.2f}" for x in os.getloadavg())),
        (
            "busiest processes before",
            "; ".join(line.strip() for line in top.stdout.splitlines()[1:6]),
        ),
    ]


# --- main ---


async def run(args: argparse.Namespace) -> dict[str, Any]:
    OUT.mkdir(exist_ok=True)
    env = dict(os.environ)
    source = str(Path(args.source).resolve()) if args.source else None
    if source:  # `python -m` puts its working directory first on sys.path: run from there
        env["PYTHONPATH"] = source
    fleet = Fleet(env, source)
    for old in OUT.glob("gateway-*.log"):
        old.unlink()
    raw: dict[str, Any] = {"machine": dict(machine(args)), "settings": vars(args).copy()}
    timeout = httpx.Timeout(600.0, connect=10.0)
    limits = httpx.Limits(max_connections=64, max_keepalive_connections=64)
    try:
        ports = {name: free_port() for name in ("replica-1", "replica-2")}
        replica = {name: f"http://127.0.0.1:{port}" for name, port in ports.items()}
        for name, port in ports.items():
            fleet.start(
                name,
                nimble(
                    "serve", "--model", MODEL, "--port", str(port), "--threads", "1",
                    "--max-running", str(args.max_running),
                    "--prompt-cache-mib", str(args.prompt_cache_mib),
                    "--max-queue-wait", str(args.max_queue_wait), "--log-level", "warning",
                ),
            )  # fmt: skip
        for name, url in replica.items():
            await wait_ready(fleet.procs[name], url + "/v1/health/ready", fleet.logs[name])
        upstreams = [replica["replica-1"], replica["replica-2"]]
        raw["upstreams"] = upstreams
        gateways: dict[str, str] = {}
        for name, ups in (
            ("prefix-aware", upstreams),
            ("round-robin", upstreams),
            ("single", upstreams[:1]),
        ):
            port = free_port()
            policy = "round-robin" if name == "single" else name
            argv = nimble(
                "gateway",
                "--port",
                str(port),
                "--routing-policy",
                policy,
                "--probe-interval",
                "0.2",
            )
            for u in ups:
                argv += ["--upstream", u]
            fleet.start(f"gateway-{name}", [*argv, "--log-level", "warning"])
            gateways[name] = f"http://127.0.0.1:{port}"
        async with httpx.AsyncClient(timeout=timeout, limits=limits, trust_env=False) as client:
            for name, ups in (
                ("prefix-aware", upstreams),
                ("round-robin", upstreams),
                ("single", upstreams[:1]),
            ):
                gw = gateways[name]
                await wait_ready(
                    fleet.procs[f"gateway-{name}"],
                    gw + "/v1/health/ready",
                    fleet.logs[f"gateway-{name}"],
                )
                await wait_all_up(client, gw, ups)
            raw["replicas"], raw["gateways"] = replica, gateways
            raw["commands"] = {name: " ".join(argv) for name, argv in fleet.argv.items()}
            for url in (*upstreams, gateways["single"]):  # one short warm-up each
                warm = await stream(
                    client, url, chat([{"role": "user", "content": "Say hello."}], 8)
                )
                if warm["error"]:
                    raise RuntimeError(f"warm-up through {url} failed: {warm['error']}")
            started = time.perf_counter()
            if args.warm_probe:
                print("0. warm set of one replica", flush=True)
                raw["warm_set"] = await warm_set(client, upstreams, args)
            if "prefix" in args.parts:
                print("1. shared prefixes", flush=True)
                raw["prefix"] = await shared_prefixes(client, fleet, gateways, args)
            if "unique" in args.parts:
                print("2. no shared prefix", flush=True)
                raw["unique"] = await unique_prompts(client, fleet, gateways, args)
            if "overhead" in args.parts:
                print("3. overhead", flush=True)
                raw["overhead"] = await overhead(
                    client, fleet, replica["replica-1"], gateways["single"], args
                )
            if "failure" in args.parts:
                print("4. failure", flush=True)
                await quiet(fleet, args)
                result = await failure(
                    client, fleet, gateways["prefix-aware"], "replica-2", replica["replica-2"], args
                )
                result["poll_interval"] = args.poll_interval
                raw["failure"] = result
                print("\n".join(failure_lines(result)), flush=True)
            raw["measured_s"] = time.perf_counter() - started
    finally:
        fleet.stop_all()
        raw["stopped"] = {name: proc.returncode for name, proc in fleet.procs.items()}
    return raw


def markdown(raw: dict[str, Any]) -> str:
    s = raw["settings"]
    ups = raw["upstreams"]
    lines = ["# nimble gateway, two replicas of SmolLM2-135M (issue 17)", ""]
    lines += [
        *table(["", ""], [[k, str(v).replace("|", "\\|")] for k, v in raw["machine"].items()]),
        "",
    ]
    lines += [
        f"- `{name}`: `{cmd.replace(sys.executable, 'python')}`"
        for name, cmd in raw["commands"].items()
    ]
    lines += [""]
    if raw.get("warm_set"):
        lines += ["## 0. Warm set of one replica", ""]
        lines += [
            f"{s['prefix_words']}-word system prompts, 16 tokens each, one at a time, "
            "straight to a replica (the i-th probe on replica i mod 2, both at once) "
            f"(`--prompt-cache-mib {s['prompt_cache_mib']}`); then the first prefix again.",
            "",
        ]
        lines += [*warm_table(raw["warm_set"]), ""]
    if raw.get("prefix"):
        lines += ["## 1. Shared prefixes", ""]
        lines += [
            f"K = {s['prefixes']} system prompts of {s['prefix_words']} words, R = {s['requests']} "
            f"requests (each a prefix + its own question), max_tokens {s['prefix_max_tokens']}, "
            f"{s['concurrency']} clients, {s['rounds']} rounds (policy order swapped each round).",
            "",
        ]
        lines += [*prefix_table(raw["prefix"], ups), "", *prefix_summary(raw["prefix"]), ""]
    if raw.get("unique"):
        lines += ["## 2. No shared prefix", ""]
        lines += [
            f"{s['unique_requests']} unique prompts of {s['unique_words']} words, max_tokens "
            f"{s['unique_max_tokens']}, {s['concurrency']} clients.",
            "",
        ]
        lines += [*unique_table(raw["unique"], ups), ""]
    if raw.get("overhead"):
        lines += ["## 3. Overhead: one upstream through the gateway vs straight", ""]
        lines += [
            f"{s['overhead_requests']} short prompts, max_tokens {s['overhead_max_tokens']}, "
            f"{s['concurrency']} streams; before each, {s['alone_requests']} requests alone "
            "(max_tokens 4, one at a time: TTFT without a queue). "
            "Order: direct, gateway, per round.",
            "",
        ]
        lines += [*overhead_table(raw["overhead"]), ""]
    if raw.get("failure"):
        lines += ["## 4. A replica killed under load (prefix-aware gateway)", ""]
        lines += [*failure_lines(raw["failure"]), ""]
    return "\n".join(lines) + "\n"


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--parts", default="prefix,unique,overhead,failure")
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--prompt-cache-mib", type=int, default=64)
    parser.add_argument(
        "--max-running",
        type=int,
        default=2,
        help="the replicas' slots (llama.cpp slots share no KV: two requests with one prefix "
        "in flight on one replica are both prefilled; with 1 slot the second waits and reuses)",
    )
    parser.add_argument(
        "--max-queue-wait",
        type=float,
        default=15.0,
        help="the replicas' bound on the wait for a slot (their default, 15 s, is about one "
        "cold ~1,000-token prefill on one thread here: their 429s then move requests off "
        "the replica that holds their prefix)",
    )
    parser.add_argument("--prefixes", type=int, default=6, help="K: distinct system prompts")
    parser.add_argument("--requests", type=int, default=36, help="R: requests per policy and round")
    parser.add_argument("--prefix-words", type=int, default=960, help="words per system prompt")
    parser.add_argument("--prefix-max-tokens", type=int, default=16)
    parser.add_argument(
        "--warm-probe", default="4,5", help="prefixes sent before the first again ('' : skip)"
    )
    parser.add_argument("--unique-requests", type=int, default=12)
    parser.add_argument("--unique-words", type=int, default=270, help="words per unique prompt")
    parser.add_argument("--unique-max-tokens", type=int, default=64)
    parser.add_argument("--overhead-rounds", type=int, default=3)
    parser.add_argument("--overhead-requests", type=int, default=12)
    parser.add_argument("--overhead-max-tokens", type=int, default=64)
    parser.add_argument("--alone-requests", type=int, default=4)
    parser.add_argument(
        "--kill-after", type=float, default=4.0, help="seconds of load before the kill"
    )
    parser.add_argument(
        "--down-for", type=float, default=2.0, help="seconds from ejection to restart"
    )
    parser.add_argument(
        "--after-restart", type=float, default=3.0, help="seconds of load after it serves"
    )
    parser.add_argument("--poll-interval", type=float, default=0.05)
    parser.add_argument("--quiet-below", type=float, default=10.0)
    parser.add_argument("--quiet-max-wait", type=float, default=20.0)
    parser.add_argument("--seed", default=dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%S"))
    parser.add_argument("--source", default="", help="a nimble source tree put first on PYTHONPATH")
    args = parser.parse_args()
    args.parts = [p.strip() for p in args.parts.split(",") if p.strip()]
    args.warm_probe = [int(n) for n in args.warm_probe.split(",") if n.strip()]
    signal.signal(signal.SIGTERM, _interrupt)  # a stopped benchmark stops its processes too
    raw = asyncio.run(run(args))
    text = markdown(raw)
    print(text)
    (OUT / "gateway.md").write_text(text)
    (OUT / "gateway.json").write_text(json.dumps(raw, indent=1))
    print(f"wrote {OUT / 'gateway.md'} and {OUT / 'gateway.json'}")


if __name__ == "__main__":
    try:
        main()
    except KeyboardInterrupt:
        sys.exit("interrupted; replicas and gateways stopped")
