"""The serving layer's CPU per streamed token, with llama.cpp's compute taken out.

On a real model most of the server's CPU is llama.cpp's (its threads compute, or spin at
their barriers), and it varies from run to run by more than the whole serving layer costs.
Here `nimble serve` runs for real (uvicorn, middleware, routes, runtime, the llama.cpp
engine adapter and its thread-to-loop bridge, SSE) but xllamacpp's `Server` is replaced by
a stand-in that behaves as xllamacpp does towards nimble: `handle_chat_completions(dict,
callback)` serializes the body with orjson, blocks its calling thread (one of nimble's
engine threads) and calls the callback there, holding the GIL, with each chunk parsed by
orjson from the same JSON text llama.cpp's server writes (role chunk, one chunk per token,
the finish chunk, the usage chunk with timings). One "decode" thread hands every running
request its next token each `--step-ms` (continuous batching: all slots step together).

What is measured, per output token, from /proc: the nimble process's CPU time without the
decode thread (the serving layer, all of it), its main thread's (the event loop: HTTP,
middleware, routes, SSE) apart, and the context switches of those threads. The load is
loadgen.py's (streamed chat, closed loop, distinct prompts), run in its own process. Runs
alternate over the targets; all are listed.

Targets: `nimble` (this tree), `nimble-base` (another tree, `--base-pythonpath`), and `bare`:
the floor, the same stand-in and the same thread-to-loop bridge (`Stream`) behind a bare
ASGI app on uvicorn that sends each chunk on as it came (no framework, middleware, runtime,
mapping): what is left above it is what nimble's layers cost.

    python benchmarks/stream_overhead.py --targets bare,nimble --repeat 3
    python benchmarks/stream_overhead.py --targets nimble-base,nimble --repeat 3 \\
        --base-pythonpath /tmp/nimble-base          # an older tree (git archive) to compare

Writes out/stream_overhead.md and .json (`--out` for another stem).
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import os
import queue
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
OUT = HERE / "out"
MODEL_PATH = "/models/SmolLM2-135M-Instruct.Q4_1.gguf"  # as llama.cpp names it in chunks
TICK_S = 1.0 / os.sysconf("SC_CLK_TCK")
WORDS = ("Once", " upon", " a", " time", ",", " there", " was", " a", " small", " robot")


# --- the stand-in (runs inside the `nimble serve` process) ---


class _Task:
    def __init__(self, max_tokens: int, chat: bool):
        self.results: queue.SimpleQueue[str | None] = queue.SimpleQueue()
        self.left = max_tokens
        self.chat = chat
        self.sent = 0
        self.cancelled = False
        self.id = f"chatcmpl-{os.urandom(12).hex()}"


class StandInServer:
    """What nimble's llama.cpp engine sees of `xllamacpp.Server` when it streams."""

    def __init__(self, step_s: float):
        self._step_s = step_s
        self._tasks: list[_Task] = []
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stopped = False
        self.thread = threading.Thread(target=self._decode, name="decode", daemon=True)
        self.thread.start()

    def stop(self) -> None:
        self._stopped = True
        self._wake.set()

    def handle_chat_completions(self, body: dict[str, Any], callback: Callable[..., bool]) -> None:
        self._handle(body, callback, chat=True)

    def handle_completions(self, body: dict[str, Any], callback: Callable[..., bool]) -> None:
        self._handle(body, callback, chat=False)

    def _handle(self, body: dict[str, Any], callback: Callable[..., bool], chat: bool) -> None:
        import orjson

        orjson.dumps(body)  # xllamacpp serializes a dict body for llama.cpp
        task = _Task(int(body.get("max_tokens") or 16), chat)
        with self._lock:
            self._tasks.append(task)
        self._wake.set()
        while (text := task.results.get()) is not None:
            if callback(orjson.loads(text)):  # xllamacpp parses each chunk with orjson
                task.cancelled = True

    def _decode(self) -> None:
        next_step = time.monotonic()
        while not self._stopped:
            with self._lock:
                tasks = list(self._tasks)
            if not tasks:
                self._wake.clear()
                self._wake.wait()
                next_step = time.monotonic()
                continue
            for task in tasks:
                for text in self._chunks(task):
                    task.results.put(text)
                if task.left == 0 or task.cancelled:
                    task.results.put(None)
                    with self._lock:
                        self._tasks.remove(task)
            next_step += self._step_s
            time.sleep(max(0.0, next_step - time.monotonic()))

    @staticmethod
    def _chunks(task: _Task) -> list[str]:
        head = {
            "created": int(time.time()),
            "id": task.id,
            "model": MODEL_PATH,
            "system_fingerprint": "b0-unknown",
            "object": "chat.completion.chunk" if task.chat else "text_completion",
        }

        def choice(delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
            if task.chat:
                return {"finish_reason": finish, "index": 0, "delta": delta}
            return {"text": delta.get("content") or "", "index": 0, "logprobs": None,
                    "finish_reason": finish}  # fmt: skip

        out = []
        if task.sent == 0 and task.chat:
            out.append({"choices": [choice({"role": "assistant", "content": None})], **head})
        if task.cancelled:
            task.left = 0
            return []
        out.append({"choices": [choice({"content": WORDS[task.sent % len(WORDS)]})], **head})
        task.sent += 1
        task.left -= 1
        if task.left == 0:
            out.append({"choices": [choice({}, "length")], **head})
            usage = {"completion_tokens": task.sent, "prompt_tokens": 40,
                     "total_tokens": task.sent + 40,
                     "prompt_tokens_details": {"cached_tokens": 0}}  # fmt: skip
            timings = {"cache_n": 0, "prompt_n": 40, "prompt_ms": 20.0,
                       "prompt_per_token_ms": 0.5, "prompt_per_second": 2000.0,
                       "predicted_n": task.sent, "predicted_ms": 30.0 * task.sent,
                       "predicted_per_token_ms": 30.0, "predicted_per_second": 33.3}  # fmt: skip
            out.append({"choices": [], **head, "usage": usage, "timings": timings})
        return [json.dumps(c, separators=(",", ":")) for c in out]


def serve_with_stand_in(step_s: float, argv: list[str]) -> None:
    """`nimble serve ARGV` with the llama.cpp engine's xllamacpp.Server replaced."""
    from concurrent.futures import ThreadPoolExecutor

    from nimble.cli.main import main as nimble_main
    from nimble.engines.llamacpp import engine as llamacpp

    async def start(self: Any) -> None:
        if self._server is not None:
            return
        self._server = StandInServer(step_s)
        print(f"stand-in decode thread {self._server.thread.native_id}", flush=True)
        self._pool = ThreadPoolExecutor(8, thread_name_prefix="llamacpp")
        self._context_length = 8192
        self._template_cost = (31, 5)
        self._vocab = 49152

    async def stop(self: Any) -> None:
        if self._server is not None:
            self._server.stop()
        self._server = None

    async def health(self: Any) -> bool:
        return self._server is not None

    async def cache_usage(self: Any) -> float | None:
        return None

    engine_class: Any = llamacpp.LlamaCppEngine
    engine_class.start, engine_class.stop = start, stop
    engine_class.health, engine_class.cache_usage = health, cache_usage
    sys.argv = ["nimble", "serve", *argv]
    nimble_main()


def serve_bare(step_s: float, port: int) -> None:
    """The floor: the same stand-in behind nimble's thread-to-loop bridge (`Stream`), on
    uvicorn as nimble runs it, with a bare ASGI app in front: each llama.cpp chunk is sent on
    as it came (`data: <json>`), no framework, middleware, runtime or mapping."""
    from concurrent.futures import ThreadPoolExecutor

    import orjson
    import uvicorn

    from nimble.engines.llamacpp.stream import END, Stream

    server = StandInServer(step_s)
    print(f"stand-in decode thread {server.thread.native_id}", flush=True)
    pool = ThreadPoolExecutor(8)
    models = orjson.dumps({"object": "list", "data": [{"id": "smollm2-135m-instruct"}]})

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        if scope["path"] != "/v1/chat/completions":
            body = models if scope["path"] == "/v1/models" else b"{}"
            headers = [(b"content-type", b"application/json")]
            await send({"type": "http.response.start", "status": 200, "headers": headers})
            await send({"type": "http.response.body", "body": body})
            return
        raw = b""
        while True:
            message = await receive()
            raw += message.get("body", b"")
            if not message.get("more_body"):
                break
        request = orjson.loads(raw)
        stream = Stream(asyncio.get_running_loop())
        pool.submit(stream.run, server.handle_chat_completions, request)
        headers = [(b"content-type", b"text/event-stream")]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        try:
            while (item := await stream.get()) is not END:
                data = b"data: " + orjson.dumps(item) + b"\n\n"
                await send({"type": "http.response.body", "body": data, "more_body": True})
        finally:
            stream.cancel.set()
        await send({"type": "http.response.body", "body": b"data: [DONE]\n\n"})

    config = uvicorn.Config(app, port=port, http="httptools", access_log=False, log_level="error")
    uvicorn.Server(config).run()


# --- the harness ---


@dataclass(frozen=True)
class Run:
    round: int
    target: str
    requests: int
    errors: int
    completion_tokens: int
    tokens_per_s: float
    ttft_p50_ms: float
    itl_p50_ms: float
    other_cpu_pct: float
    serving_cpu_s: float  # the process, less the stand-in's decode thread
    loop_cpu_s: float  # the main thread (event loop)
    loop_stime_s: float  # of which in the kernel
    switches: int  # context switches of the serving threads (voluntary and not)
    loop_switches: int  # of the main thread

    def per_token_ms(self, seconds: float) -> float:
        return 1000 * seconds / self.completion_tokens if self.completion_tokens else 0.0


def thread_ticks(pid: int) -> dict[int, tuple[int, int, int]]:
    """(utime, stime, context switches) of every thread of a process."""
    found = {}
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{tid}/stat") as stat:
                fields = stat.read().rsplit(")", 1)[1].split()
            with open(f"/proc/{pid}/task/{tid}/status") as status:
                switches = sum(int(line.split()[1]) for line in status if "ctxt_switches" in line)
        except OSError:
            continue
        found[int(tid)] = (int(fields[11]), int(fields[12]), switches)
    return found


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_line(path: Path, prefix: str, proc: subprocess.Popen[bytes], timeout: float) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited: {path.read_text()[-2000:]}")
        for line in path.read_text(errors="replace").splitlines():
            if line.startswith(prefix):
                return line
        time.sleep(0.1)
    raise RuntimeError(f"no {prefix!r} line in {path}")


async def drive(url: str, pid: int, decode_tid: int, args: argparse.Namespace) -> dict[str, Any]:
    import httpx
    from loadgen import chat_body, first_model, prompts, run_level, stream_one

    async with httpx.AsyncClient(base_url=url, timeout=120, trust_env=False) as client:
        for _ in range(300):
            try:
                if (await client.get("/v1/health/ready")).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            await asyncio.sleep(0.1)
        model = await first_model(client)
        for _ in range(4):
            await stream_one(client, chat_body(model, "warm up", 8))
        before = thread_ticks(pid)
        stats = await run_level(
            client, model, args.concurrency, prompts(args.requests), args.max_tokens, [pid]
        )
        after = thread_ticks(pid)
    zero = (0, 0, 0)
    spent = {
        t: tuple(now - then for now, then in zip(v, before.get(t, zero), strict=True))
        for t, v in after.items()
    }
    serving = sum(u + s for t, (u, s, _) in spent.items() if t != decode_tid)
    switches = sum(c for t, (_, _, c) in spent.items() if t != decode_tid)
    loop_u, loop_s, loop_c = spent.get(pid, zero)
    return {
        "stats": asdict(stats),
        "serving_cpu_s": serving * TICK_S,
        "loop_cpu_s": (loop_u + loop_s) * TICK_S,
        "loop_stime_s": loop_s * TICK_S,
        "switches": switches,
        "loop_switches": loop_c,
    }


def run_one(number: int, target: str, args: argparse.Namespace) -> Run:
    port = free_port()
    env = dict(os.environ)
    if target == "nimble-base":
        env["PYTHONPATH"] = args.base_pythonpath
    argv = [
        sys.executable, str(Path(__file__).resolve()), "serve", "--step-ms", str(args.step_ms),
        "--", "--model", "smollm2-135m-instruct", "--port", str(port),
        "--max-running", str(args.concurrency), "--max-batch-size", str(args.concurrency),
        "--context-length", "8192", *args.nimble_arg,
    ]  # fmt: skip
    if target == "bare":
        argv[2:] = ["bare", "--step-ms", str(args.step_ms), "--port", str(port)]
    OUT.mkdir(exist_ok=True)
    log = OUT / f"stream_overhead-{target}.log"
    with log.open("wb") as sink:
        proc = subprocess.Popen(argv, stdout=sink, stderr=subprocess.STDOUT, env=env)
    try:
        line = wait_line(log, "stand-in decode thread", proc, 120)
        decode_tid = int(line.split()[-1])
        sys.path.insert(0, str(HERE))
        result = asyncio.run(drive(f"http://127.0.0.1:{port}", proc.pid, decode_tid, args))
    finally:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    s = result["stats"]
    run = Run(
        number, target, s["requests"], s["errors"], s["completion_tokens"], s["tokens_per_s"],
        s["ttft_p50_ms"], s["itl_p50_ms"], s["other_cpu_pct"], result["serving_cpu_s"],
        result["loop_cpu_s"], result["loop_stime_s"], result["switches"],
        result["loop_switches"],
    )  # fmt: skip
    print(
        f"[{number} {target}] {run.completion_tokens} tokens, {run.tokens_per_s:.0f} tok/s, "
        f"serving {run.per_token_ms(run.serving_cpu_s):.3f} ms/token (event loop "
        f"{run.per_token_ms(run.loop_cpu_s):.3f}), {run.switches / run.completion_tokens:.2f} "
        f"switches/token (loop {run.loop_switches / run.completion_tokens:.2f}), "
        f"other CPU {run.other_cpu_pct:.0f}%",
        flush=True,
    )
    return run


def report(runs: Sequence[Run], args: argparse.Namespace) -> str:
    head = ["round", "target", "ok", "tokens", "tok/s", "TTFT p50 ms", "ITL p50 ms",
            "serving CPU ms/token", "event loop ms/token", "of which kernel",
            "context switches/token", "event loop switches/token", "other CPU %"]  # fmt: skip
    lines = [
        "# Serving-layer CPU per streamed token (llama.cpp's compute replaced by a stand-in)",
        "",
        f"{time.strftime('%Y-%m-%d %H:%M %Z')}. Streamed chat, concurrency {args.concurrency}, "
        f"{args.requests} requests of {args.max_tokens} tokens, one decode step every "
        f"{args.step_ms} ms for all running requests. Serving CPU: the nimble process less the "
        "stand-in's decode thread (from /proc); event loop: its main thread.",
        "",
        "| " + " | ".join(head) + " |",
        "|" + "---|" * len(head),
    ]
    for r in runs:
        cells = [
            str(r.round), r.target, f"{r.requests - r.errors}/{r.requests}",
            str(r.completion_tokens), f"{r.tokens_per_s:.0f}", f"{r.ttft_p50_ms:.1f}",
            f"{r.itl_p50_ms:.1f}", f"{r.per_token_ms(r.serving_cpu_s):.3f}",
            f"{r.per_token_ms(r.loop_cpu_s):.3f}", f"{r.per_token_ms(r.loop_stime_s):.3f}",
            f"{r.switches / r.completion_tokens:.2f}",
            f"{r.loop_switches / r.completion_tokens:.2f}", f"{r.other_cpu_pct:.0f}",
        ]  # fmt: skip
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "| target | serving CPU ms/token, median | event loop ms/token, median |"]
    lines += ["|---|---|---|"]
    for target, group in itertools.groupby(
        sorted(runs, key=lambda r: r.target), lambda r: r.target
    ):
        mine = list(group)
        serving = statistics.median(r.per_token_ms(r.serving_cpu_s) for r in mine)
        loop = statistics.median(r.per_token_ms(r.loop_cpu_s) for r in mine)
        lines.append(f"| {target} | {serving:.3f} | {loop:.3f} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "bare":
        parser = argparse.ArgumentParser()
        parser.add_argument("--step-ms", type=float, default=30.0)
        parser.add_argument("--port", type=int, required=True)
        ns = parser.parse_args(sys.argv[2:])
        serve_bare(ns.step_ms / 1000, ns.port)
        return
    if len(sys.argv) > 1 and sys.argv[1] == "serve":
        parser = argparse.ArgumentParser()
        parser.add_argument("--step-ms", type=float, default=30.0)
        parser.add_argument("rest", nargs=argparse.REMAINDER)
        ns = parser.parse_args(sys.argv[2:])
        rest = ns.rest[1:] if ns.rest[:1] == ["--"] else ns.rest
        serve_with_stand_in(ns.step_ms / 1000, rest)
        return
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--targets", default="nimble")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--requests", type=int, default=40)
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--step-ms", type=float, default=30.0)
    parser.add_argument("--base-pythonpath", default="", help="source tree of nimble-base")
    parser.add_argument(
        "--nimble-arg", action="append", default=[], help="e.g. --log-level=warning"
    )
    parser.add_argument("--out", default="stream_overhead")
    args = parser.parse_args()
    targets = [t.strip() for t in args.targets.split(",") if t.strip()]
    if "nimble-base" in targets and not args.base_pythonpath:
        parser.error("nimble-base needs --base-pythonpath")
    runs = [run_one(n, t, args) for n in range(1, args.repeat + 1) for t in targets]
    text = report(runs, args)
    print(text)
    (OUT / f"{args.out}.md").write_text(text)
    (OUT / f"{args.out}.json").write_text(json.dumps([asdict(r) for r in runs], indent=2))


if __name__ == "__main__":
    main()
