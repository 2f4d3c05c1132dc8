"""What the guardrails add to a request, in-process on SmolLM2 (llama.cpp), no HTTP:

- the output window: greedy streamed answers with and without an output rail that never
  fires (a topics rail: its check costs microseconds, so what is measured is the holding
  back itself), in alternating order. For every character: when the engine wrote it and
  when the consumer got it, in the same run (a busy machine slows both alike); the
  difference with the rail, less the difference without, is how long the window held it.
- each input rail on a 200-word prompt: the time `check_input` takes (the whole input
  stage), median and p90 over calls: a topics rail (20 keywords, 3 patterns), a
  self-check judge on the served SmolLM2 itself (its prompt and a Yes/No under a
  constraint), a remote moderation service (a stand-in on 127.0.0.1 answering at once: the
  HTTP round trip).

    python benchmarks/guardrails_rails.py --pairs 8 --calls 40
    python benchmarks/guardrails_rails.py --pairs 1 --calls 3      # a smoke run

Writes `out/guardrails_rails.md` and `.json` (`--out` to change the stem).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import socket
import statistics
import sys
import threading
import time
from collections.abc import AsyncGenerator, Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from nimble.config import Settings
from nimble.observability.record import RequestRecord, current_record
from nimble.runtime import Runtime
from nimble.runtime.assemble import build_runtime
from nimble.types import ChatMessage, GenerateRequest, GenerationChunk, SamplingParams

OUT = Path(__file__).parent / "out"
MODEL = "smollm2-135m-instruct"
PROMPTS = (
    "Tell me a long story about a lighthouse keeper and a storm.",
    "Explain how a bicycle gear system works, in detail.",
    "Write a letter to a friend about a trip to the mountains.",
    "Describe a busy market in the morning, what people sell and say.",
)
PROSE = (
    "I am preparing the quarterly summary for the operations team and need a clear draft. "
    "The main points are the migration of the billing service and the new support rota. "
    "Please keep the tone friendly but concise, and avoid any jargon that a customer would "
    "not understand. Last month we closed most of the open tickets, although a few "
    "escalations are still waiting on the vendor. "
)
WORDS = (PROSE * 8).split()


def prompt_200(i: int) -> str:
    """A 200-word prompt, different from the first word on for each `i` (a judge's prefix
    cache must not answer for it: only the prompt's template is shared between calls)."""
    start = (7 * i) % 40
    return f"Request {i}. " + " ".join(WORDS[start : start + 198])


def rails_file(path: Path, moderation_url: str) -> Path:
    words = ["password", "api key", "launch codes", "credit card", "ssn", "passport"]
    words += [f"forbidden{i}" for i in range(14)]
    flows = {
        "never": {"type": "topics", "deny": ["zyzzyva-quux"]},
        "topics": {
            "type": "topics",
            "deny": words,
            "deny_patterns": [r"\bsk-[A-Za-z0-9]{20,}", r"\b\d{3}-\d{2}-\d{4}\b", r"(?i)jailbreak"],
        },
        "judge": {"type": "judge", "model": MODEL, "max_tokens": 2},
        "remote": {"type": "remote", "url": moderation_url, "timeout": 5},
    }
    path.write_text(yaml.safe_dump({"flows": flows}))
    return path


@contextmanager
def moderation_service() -> Iterator[str]:
    body = json.dumps(
        {
            "results": [
                {"flagged": False, "categories": {"x": False}, "category_scores": {"x": 0.01}}
            ]
        }
    ).encode()

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive, as a real service

        def setup(self) -> None:
            super().setup()  # one segment per answer, as uvicorn sends (no Nagle delay)
            self.request.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

        def do_POST(self) -> None:
            self.rfile.read(int(self.headers.get("Content-Length", "0")))
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/v1/moderations"
    finally:
        server.shutdown()
        server.server_close()


Marks = list[tuple[float, int]]  # (seconds, characters so far) at each text chunk


def watch_engine(runtime: Runtime) -> Marks:
    """Note when the engine hands out each text chunk (before any stage of the runtime)."""
    engine = runtime.models[MODEL].engine
    marks: Marks = []
    generate = engine.generate  # type: ignore[attr-defined]

    async def watched(request: GenerateRequest) -> AsyncGenerator[GenerationChunk, None]:
        chars = 0
        async for chunk in generate(request):
            if chunk.text:
                chars += len(chunk.text)
                marks.append((time.perf_counter(), chars))
            yield chunk

    engine.generate = watched  # type: ignore[attr-defined]
    return marks


async def stream(
    runtime: Runtime, engine: Marks, prompt: str, rails: tuple[str, ...], tokens: int
) -> tuple[Marks, Marks, RequestRecord]:
    """When the engine wrote each character, and when the consumer got it."""
    record = RequestRecord(request_id="bench", key_rails=rails)
    token = current_record.set(record)
    engine.clear()
    try:
        request = GenerateRequest(
            "bench",
            SamplingParams(max_tokens=tokens, temperature=0.0, seed=1),
            messages=(ChatMessage("user", prompt),),
        )
        marks: Marks = []
        chars = 0
        async for chunk in runtime.generate(MODEL, request):
            if chunk.text:
                chars += len(chunk.text)
                marks.append((time.perf_counter(), chars))
        return list(engine), marks, record
    finally:
        current_record.reset(token)


def at_offset(marks: Marks, offset: int) -> float:
    """When the character at `offset` was there."""
    return next(t for t, chars in marks if chars > offset)


def written_by(marks: Marks, when: float) -> int:
    """How many characters the engine had written at `when`."""
    return max((chars for t, chars in marks if t <= when), default=0)


async def window(runtime: Runtime, pairs: int, tokens: int) -> dict[str, Any]:
    """Per character, consumer time - engine time, with the rail and without (the runtime's
    own stages): the difference is what the window holds it back. Measured within each
    run, so that a busy machine slows both ends alike."""
    engine = watch_engine(runtime)
    for prompt in PROMPTS:  # warm-up, not counted: the first generations are slower
        await stream(runtime, engine, prompt, (), tokens)
    held: dict[tuple[str, ...], list[float]] = {(): [], ("never",): []}
    ahead: list[int] = []  # characters the engine had written beyond the one released
    first, last, lengths, checks = [], [], [], []
    for i in range(pairs):
        prompt = PROMPTS[i % len(PROMPTS)]
        order = [(), ("never",)] if i % 2 == 0 else [("never",), ()]
        for rails in order:
            wrote, got, record = await stream(runtime, engine, prompt, rails, tokens)
            total = got[-1][1]
            if wrote[-1][1] != total:
                raise SystemExit("the consumer's text differs from the engine's")
            delays = [at_offset(got, k) - at_offset(wrote, k) for k in range(total)]
            held[rails] += delays
            if rails:
                lengths.append(total)
                first.append(delays[0])
                last.append(delays[-1])
                ahead += [written_by(wrote, t) - chars for t, chars in got]
                checks += [c.finished - c.started for c in record.guardrails]
        print(f"pair {i}: {lengths[-1]} chars, first held {first[-1] * 1000:.0f} ms", flush=True)
    base = statistics.median(held[()])
    return {
        "answer_chars_median": statistics.median(lengths),
        "runtime_stages_ms_median": 1000 * base,
        "held_ms_median": 1000 * (statistics.median(held[("never",)]) - base),
        "held_ms_p90": 1000 * (statistics.quantiles(held[("never",)], n=10)[-1] - base),
        "first_char_held_ms_median": 1000 * (statistics.median(first) - base),
        "last_char_held_ms_median": 1000 * (statistics.median(last) - base),
        "chars_ahead_at_release_median": statistics.median(ahead),
        "window_checks": len(checks),
        "check_ms_median": 1000 * statistics.median(checks),
    }


async def input_rails(runtime: Runtime, calls: int) -> dict[str, dict[str, float]]:
    guards = runtime.guardrails
    assert guards is not None

    def request(i: int) -> GenerateRequest:
        return GenerateRequest(
            "bench", SamplingParams(max_tokens=1), messages=(ChatMessage("user", prompt_200(i)),)
        )

    results = {}
    for rail in ("topics", "judge", "remote"):
        plan = guards.plan((MODEL,), (rail,))
        assert plan is not None
        times = []
        for i in range(3):  # warm-up, not counted (the judge's first grammar, a connection)
            await guards.check_input(plan, request(1000 + i), RequestRecord(request_id="warm"))
        for i in range(calls):
            record = RequestRecord(request_id="bench")
            started = time.perf_counter()
            await guards.check_input(plan, request(i), record)
            times.append(time.perf_counter() - started)
            if record.guardrails[-1].category == "error":
                raise SystemExit(f"{rail}: {record.guardrails[-1]}")
        results[rail] = {
            "median_ms": 1000 * statistics.median(times),
            "p90_ms": 1000 * (statistics.quantiles(times, n=10)[-1] if calls >= 2 else times[0]),
        }
        print(f"input rail {rail}: {results[rail]}", flush=True)
    return results


def busy_share() -> float:
    """The share of both cores that the whole machine used over a second."""

    def sample() -> tuple[int, int]:
        fields = [int(x) for x in Path("/proc/stat").read_text().split("\n")[0].split()[1:]]
        return sum(fields), fields[3] + fields[4]

    total0, idle0 = sample()
    time.sleep(1)
    total1, idle1 = sample()
    return 1 - (idle1 - idle0) / max(1, total1 - total0)


async def main(args: argparse.Namespace) -> None:
    with moderation_service() as url:
        path = rails_file(Path(args.out).with_suffix(".yaml"), url)
        runtime, _ = build_runtime(Settings(model=(MODEL,), guardrails=path, threads=2))
        await runtime.start()
        try:
            machine_before = busy_share()
            output = await window(runtime, args.pairs, args.tokens)
            inputs = await input_rails(runtime, args.calls)
            machine_after = busy_share()
        finally:
            await runtime.stop()
    result = {
        "when": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "python": platform.python_version(),
        "cores": os.cpu_count(),
        "busy_before_after": [round(machine_before, 2), round(machine_after, 2)],
        "window": {"chunk_size": 200, "context_size": 50},
        "pairs": args.pairs,
        "max_tokens": args.tokens,
        "output_window": output,
        "input_rails_200_words": inputs,
    }
    Path(args.out).with_suffix(".json").write_text(json.dumps(result, indent=2))
    lines = [
        f"Output window (chunk_size 200, context_size 50 characters), {args.pairs} pairs, "
        f"{args.tokens} tokens, answers of {output['answer_chars_median']:.0f} characters "
        "(median). Held: when the consumer got a character less when the engine wrote it, "
        "with the rail less without:",
        "",
        "| | |",
        "|---|---|",
        f"| each character held, median | {output['held_ms_median']:.0f} ms |",
        f"| each character held, p90 | {output['held_ms_p90']:.0f} ms |",
        f"| the first character held (median) | {output['first_char_held_ms_median']:.0f} ms |",
        f"| the last character held (median) | {output['last_char_held_ms_median']:.1f} ms |",
        f"| characters written beyond the one released (median) | "
        f"{output['chars_ahead_at_release_median']:.0f} |",
        f"| one window's check (topics rail, median of {output['window_checks']}) | "
        f"{output['check_ms_median']:.3f} ms |",
        f"| the runtime's stages without rails (median) | "
        f"{output['runtime_stages_ms_median']:.2f} ms |",
        "",
        f"Input rails on a 200-word prompt, {args.calls} calls each:",
        "",
        "| rail | median ms | p90 ms |",
        "|---|---|---|",
        *(f"| {k} | {v['median_ms']:.2f} | {v['p90_ms']:.2f} |" for k, v in inputs.items()),
        "",
        f"Machine busy (both cores, before / after): {machine_before:.0%} / {machine_after:.0%}",
    ]
    Path(args.out).with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--pairs", type=int, default=8)
    parser.add_argument("--calls", type=int, default=40)
    parser.add_argument("--tokens", type=int, default=160)
    parser.add_argument("--out", default=str(OUT / "guardrails_rails"))
    OUT.mkdir(exist_ok=True)
    asyncio.run(main(parser.parse_args()))
