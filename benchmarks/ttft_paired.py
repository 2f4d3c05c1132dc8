"""Time to first token at one stream, nimble against the engine's own server, paired.

`run_llm.py` runs one server after the other; on a small shared machine the engine's own
time to first token drifts by more than the 5 ms the target allows between two runs
minutes apart. Here both servers are up at once (same GGUF file, same settings as
run_llm.py) and the requests alternate between them, one at a time, in a varying order:
request i goes to both, with the same prompt, so each pair sees the same machine state.
Reported: each server's TTFT p50, and the median of the per-pair differences (nimble minus
engine) with a bootstrap 95% interval.

    python benchmarks/ttft_paired.py --pairs 200     # writes benchmarks/out/ttft.{md,json}

`--split` also starts both servers with llama.cpp's own log on and reads, for every request,
the time llama.cpp spent reading the prompt (its `prompt eval time` line): each TTFT is then
split into that prefill and the rest (HTTP, templating, the serving layer, the first decode
step), and the pairs are compared part by part. The prefill is the same computation in both
servers; on a small shared machine its speed drifts by more than the 10 ms asked of TTFT
within minutes, and the rest is the part the serving layer owns. `--prompts-from` takes
aiperf's `inputs.json` (its synthetic ~128-token prompts) instead of loadgen's short ones, and
`--pin SERVER:CLIENT` puts both servers on the CPUs SERVER and this client on CLIENT:

    python benchmarks/ttft_paired.py --pairs 100 --threads 1 --pin 0:1 --split \
        --prompts-from benchmarks/results/2026-12-03/aiperf_ttft_pinned_c1/inputs.json

`--servers engine,engine` (or `nimble,nimble`) pairs two fresh processes of the same server:
the control that says how far two processes of one program differ on this machine, so that
a difference between nimble and the engine can be read against it.

With `--max-tokens` above 1 each request's inter-token latency (the mean gap between its
streamed tokens) is paired too; `--ignore-eos` makes every answer `--max-tokens` long.
`--scrape SECONDS` has each server's `/metrics` fetched at that interval throughout, as
aiperf does (every 0.333 s by default; llama.cpp's own server answers it with an error):

    python benchmarks/ttft_paired.py --pairs 40 --max-tokens 64 --ignore-eos --scrape 0.333 \
        --threads 1 --pin 0:1 --prompts-from \
        benchmarks/results/2026-12-03/aiperf_ttft_pinned_c1/inputs.json
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import json
import os
import random
import re
import statistics
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import httpx

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from loadgen import chat_body, first_model, prompts, stream_one  # noqa: E402
from run_aiperf import parse_pin, pinned  # noqa: E402
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


# llama.cpp's line at the end of each request's prompt (info log), one per request
PROMPT_EVAL = re.compile(r"prompt eval time =\s*([\d.]+) ms /\s*(\d+) tokens")
LOG_FLAGS = {"nimble": ["--engine-log"], "engine": ["--verbose"]}
Server = tuple[subprocess.Popen[bytes], str, Path]
Measured = dict[str, dict[str, list[float]]]  # what -> server -> one value per pair (ms)


@dataclass(frozen=True)
class Options:
    pairs: int
    max_tokens: int
    split: bool = False  # read llama.cpp's prefill time per request from its log
    server_cpus: str = ""  # taskset CPU list for both servers ("": any)
    texts: tuple[str, ...] = ()  # prompts to cycle through (empty: loadgen's)
    nimble_env: tuple[tuple[str, str], ...] = ()  # set for nimble's server only
    servers: tuple[str, str] = ("nimble", "engine")  # the pair, first minus second
    ignore_eos: bool = False  # every answer max_tokens long
    scrape_s: float = 0.0  # fetch each server's /metrics this often (0: never)


def labels(servers: tuple[str, str]) -> tuple[str, str]:
    """Names for the two servers of a pair: a server paired with itself is `NAME` and
    `NAME-2`."""
    first, second = servers
    return (first, f"{second}-2") if first == second else (first, second)


def target_of(label: str) -> str:
    return label.removesuffix("-2")


def start(label: str, settings: Settings, options: Options) -> Server:
    name = target_of(label)
    target, port = TARGETS[name], free_port()
    log = OUT / f"ttft-{label}.log"
    argv = target.command(settings, port) + (LOG_FLAGS[name] if options.split else [])
    env = {**os.environ, **dict(options.nimble_env)} if name == "nimble" else None
    with log.open("wb") as sink:  # the child keeps its own copy of the file
        proc = subprocess.Popen(
            pinned(options.server_cpus, argv), stdout=sink, stderr=subprocess.STDOUT, env=env
        )
    return proc, f"http://127.0.0.1:{port}", log


def prompt_texts(options: Options, count: int) -> list[str]:
    """`count` distinct prompts: loadgen's, or the given ones cycled, each with its number
    first (no two share more than the chat template's prefix)."""
    if not options.texts:
        return prompts(count)
    return [f"(request {i + 1}) {options.texts[i % len(options.texts)]}" for i in range(count)]


def aiperf_texts(path: Path) -> tuple[str, ...]:
    """The user messages of aiperf's `inputs.json` (its export of the payloads it sent)."""
    data = json.loads(path.read_text())
    return tuple(
        str(payload["messages"][0]["content"])
        for session in data["data"]
        for payload in session["payloads"]
    )


def prefill_times(log_text: str, count: int) -> list[float]:
    """llama.cpp's prompt time (ms) of the last `count` requests in a server's log, in order.
    Anything the server ran before them (nimble's warm-up at load) comes first and is left."""
    times = [float(m.group(1)) for m in PROMPT_EVAL.finditer(log_text)]
    if len(times) < count:
        raise RuntimeError(f"{len(times)} prompt timings in the log, {count} requests sent")
    return times[-count:]


def cpu_list(value: str) -> set[int]:
    """taskset's CPU list (`0`, `0-1`, `0,2`) as a set, for sched_setaffinity."""
    cpus: set[int] = set()
    for part in value.split(","):
        low, _, high = part.partition("-")
        cpus.update(range(int(low), int(high or low) + 1))
    return cpus


def bootstrap(diffs: list[float], rounds: int = 2000) -> tuple[float, float]:
    rng = random.Random(0)
    medians = sorted(statistics.median(rng.choices(diffs, k=len(diffs))) for _ in range(rounds))
    return medians[int(0.025 * rounds)], medians[int(0.975 * rounds)]


def request_body(model: str, text: str, options: Options) -> dict[str, object]:
    body = chat_body(model, text, options.max_tokens)
    if options.ignore_eos:
        body["ignore_eos"] = True
    return body


def mean_gap_ms(gaps: tuple[float, ...]) -> float:
    """A request's inter-token latency: the mean of the gaps between its tokens (ms)."""
    if not gaps:
        raise RuntimeError("one token streamed: no inter-token latency (try --ignore-eos)")
    return statistics.fmean(gaps) * 1000


async def scrape(client: httpx.AsyncClient, every_s: float) -> None:
    """Fetch `/metrics` every `every_s` until cancelled, whatever it answers (as aiperf)."""
    while True:
        with contextlib.suppress(httpx.HTTPError):
            await client.get("/metrics")
        await asyncio.sleep(every_s)


async def alternate(clients: dict[str, httpx.AsyncClient], options: Options) -> Measured:
    """Each prompt to every server, one request at a time, in a shuffled order: TTFTs (ms),
    and inter-token latencies when more than one token is asked for, warm-up pairs included
    (the first WARMUP)."""
    models = {name: await first_model(client) for name, client in clients.items()}
    ttft: dict[str, list[float]] = {name: [] for name in clients}
    itl: dict[str, list[float]] = {name: [] for name in clients}
    order = list(clients)
    for i, text in enumerate(prompt_texts(options, options.pairs + WARMUP)):
        random.Random(i).shuffle(order)
        for name in order:
            result = await stream_one(clients[name], request_body(models[name], text, options))
            if not result.ok or result.ttft is None:
                raise RuntimeError(f"{name}: {result.error}")
            ttft[name].append(result.ttft * 1000)
            if options.max_tokens > 1:
                itl[name].append(mean_gap_ms(result.gaps))
            await asyncio.sleep(GAP_S)  # the scrapers, if any, run meanwhile
    return {"ttft_ms": ttft, "itl_ms": itl} if options.max_tokens > 1 else {"ttft_ms": ttft}


async def run(settings: Settings, options: Options) -> Measured:
    """Both servers up, the pairs sent; the measurements, per request (warm-up left out)."""
    servers: dict[str, Server] = {}
    try:
        for label in labels(options.servers):
            servers[label] = start(label, settings, options)  # stopped below if the next fails
        for label, (proc, url, log) in servers.items():
            await wait_ready(proc, url + TARGETS[target_of(label)].ready_path, log)
        async with contextlib.AsyncExitStack() as stack:
            clients = {
                name: await stack.enter_async_context(
                    httpx.AsyncClient(base_url=url, timeout=120, trust_env=False)
                )
                for name, (_, url, _) in servers.items()
            }
            scrapers = [
                asyncio.create_task(scrape(client, options.scrape_s))
                for client in clients.values()
                if options.scrape_s > 0
            ]
            try:
                measured = await alternate(clients, options)
            finally:
                for task in scrapers:
                    task.cancel()
                await asyncio.gather(*scrapers, return_exceptions=True)
    finally:
        for proc, _, _ in servers.values():
            stop(proc)
    sent = options.pairs + WARMUP
    result: Measured = {
        what: {name: v[WARMUP:] for name, v in values.items()} for what, values in measured.items()
    }
    if options.split:
        result["prefill_ms"] = {
            name: prefill_times(log.read_text(errors="replace"), sent)[WARMUP:]
            for name, (_, _, log) in servers.items()
        }
    return result


def compare(label: str, values: dict[str, list[float]]) -> list[str]:
    """A table row per server (p50, p95) and the paired difference, the first server minus
    the second."""
    first, second = values
    diffs = [a - b for a, b in zip(values[first], values[second], strict=True)]
    low, high = bootstrap(diffs)
    share = 100 * statistics.median(diffs) / statistics.median(values[second])
    return [
        f"| {label} | {name} | {statistics.median(v):.1f} | "
        f"{sorted(v)[int(0.95 * (len(v) - 1))]:.1f} |"
        for name, v in values.items()
    ] + [
        f"| {label} | {first} - {second}, median of the pairs | {statistics.median(diffs):+.1f} "
        f"(95% interval {low:+.1f} .. {high:+.1f}; {share:+.1f}% of {second}'s p50) | |"
    ]


def report(settings: Settings, options: Options, result: Measured) -> str:
    ttft = result["ttft_ms"]
    parts = [("TTFT", ttft)]
    if "prefill_ms" in result:
        prefill = result["prefill_ms"]
        rest = {
            name: [t - p for t, p in zip(ttft[name], prefill[name], strict=True)] for name in ttft
        }
        parts += [("llama.cpp's prefill", prefill), ("TTFT - prefill", rest)]
    if "itl_ms" in result:
        parts.append(("inter-token latency", result["itl_ms"]))
    when = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    prompts_from = f"{len(options.texts)} given prompts" if options.texts else "loadgen's prompts"
    pin = f", servers on CPUs {options.server_cpus}" if options.server_cpus else ""
    pin += "".join(f", nimble with {key}={value}" for key, value in options.nimble_env)
    pin += ", ignore_eos" if options.ignore_eos else ""
    pin += f", /metrics fetched every {options.scrape_s:g} s" if options.scrape_s else ""
    return "\n".join(
        [
            f"# TTFT at one stream, paired ({when})",
            "",
            f"{' against '.join(labels(options.servers))}: "
            f"{options.pairs} pairs, max_tokens {options.max_tokens}, {settings.threads} "
            f"threads, model {settings.model.name}, {prompts_from}{pin}",
            "",
            "| what | server | p50 ms | p95 ms |",
            "|---|---|---|---|",
            *(row for label, values in parts for row in compare(label, values)),
            "",
        ]
    )


def parse_env(value: str) -> tuple[str, str]:
    key, sep, setting = value.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError("write KEY=VALUE")
    return key, setting


def parse_servers(value: str) -> tuple[str, str]:
    names = tuple(value.split(","))
    if len(names) != 2 or not all(name in LOG_FLAGS for name in names):
        raise argparse.ArgumentTypeError(f"write two of {', '.join(LOG_FLAGS)}, e.g. engine,engine")
    return names[0], names[1]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", type=Path, default=DEFAULT_MODEL)
    parser.add_argument("--pairs", type=int, default=200)
    parser.add_argument("--max-tokens", type=int, default=8)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--nimble-cmd", default=NIMBLE_CMD, help="as in run_llm.py")
    parser.add_argument(
        "--split", action="store_true", help="split each TTFT into llama.cpp's prefill and rest"
    )
    parser.add_argument("--prompts-from", type=Path, help="aiperf's inputs.json")
    parser.add_argument("--ignore-eos", action="store_true", help="answers max_tokens long")
    parser.add_argument(
        "--scrape", type=float, default=0.0, metavar="SECONDS", help="fetch /metrics this often"
    )
    parser.add_argument("--pin", type=parse_pin, help="SERVER:CLIENT CPU lists, e.g. 0:1")
    parser.add_argument("--out", default="ttft", help="name of the report in benchmarks/out/")
    parser.add_argument(
        "--servers",
        type=parse_servers,
        default=("nimble", "engine"),
        metavar="A,B",
        help="the pair, A minus B (default nimble,engine; engine,engine is the control)",
    )
    parser.add_argument(
        "--nimble-env",
        action="append",
        type=parse_env,
        default=[],
        metavar="KEY=VALUE",
        help="set in nimble's environment only (repeat), e.g. LD_PRELOAD=libjemalloc.so.2",
    )
    args = parser.parse_args()
    settings = Settings(args.model.resolve(), args.threads, 8192, 8, args.nimble_cmd)
    server_cpus, client_cpus = args.pin or ("", "")
    if client_cpus:
        os.sched_setaffinity(0, cpu_list(client_cpus))
    options = Options(
        pairs=args.pairs,
        max_tokens=args.max_tokens,
        split=args.split,
        server_cpus=server_cpus,
        texts=aiperf_texts(args.prompts_from) if args.prompts_from else (),
        nimble_env=tuple(args.nimble_env),
        servers=args.servers,
        ignore_eos=args.ignore_eos,
        scrape_s=args.scrape,
    )
    OUT.mkdir(exist_ok=True)
    result = asyncio.run(run(settings, options))
    text = report(settings, options, result)
    (OUT / f"{args.out}.md").write_text(text)
    (OUT / f"{args.out}.json").write_text(json.dumps(result, indent=1))
    print(text)


if __name__ == "__main__":
    main()
