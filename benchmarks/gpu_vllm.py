"""nimble against `vllm serve` alone, on one GPU and one model (tests/gpu/run.sh runs it).

One `vllm serve` process serves the model: the one `nimble serve --engine vllm` starts and
supervises. It is measured twice at each concurrency level, directly and through nimble,
in alternating order, round after round, with benchmarks/loadgen.py (streamed chat
completions, temperature 0, distinct prompts everywhere so vLLM's prefix cache favours
neither side). Same process, same flags, same compiled graphs and KV cache: the difference
is nimble's own cost, not the noise of two engine starts. To reach the engine directly its
command is wrapped (a small script that records the engine's argv and pid and drops
VLLM_API_KEY, so that the load generator needs no key); nimble still sends its key, which
vLLM then ignores.

Then, at one stream, time to first token is measured in pairs (each prompt to both, one at
a time, order alternating): the median of the per-pair differences, with a bootstrap 95%
interval. Last, when time is left, a separate `vllm serve` with the same argv is started
after nimble has stopped and swept once: the cross-check that the engine behind nimble is
`vllm serve` as a user would run it.

Targets (issue 18): tokens/s through nimble at least 0.97x vLLM's at each level, and TTFT
at one stream within 5 ms of vLLM's.

    python benchmarks/gpu_vllm.py --model DIR                # a Hugging Face model folder
    python benchmarks/gpu_vllm.py --build-model DIR          # random weights, Qwen2.5-0.5B's shape

Writes gpu-bench.md and gpu-bench.json (and the servers' logs) into --out ($OUT when set,
else benchmarks/out). --engine-command and --hardware-file let a CPU check run the whole
path against the vLLM stand-in (tests/support/vllm_standin.py).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import json
import math
import os
import platform
import shlex
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import httpx

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from loadgen import (  # noqa: E402
    chat_body,
    prompts,
    requests_for,
    run_level,
    stream_one,
)
from run_llm import free_port, tail  # noqa: E402
from ttft_paired import bootstrap  # noqa: E402

NAME = "bench"  # the served model name, on both sides
TOK_S_TARGET = 0.97  # nimble's tokens/s over vLLM's, at each level
TTFT_TARGET_MS = 5.0  # nimble's TTFT minus vLLM's, at one stream
SIDES = ("vllm", "nimble")
POLL_S = 0.25

# Qwen2.5-0.5B-Instruct's shape (config.json of the real model), with random weights
QWEN_05B: dict[str, Any] = {
    "vocab_size": 151936,
    "hidden_size": 896,
    "intermediate_size": 4864,
    "num_hidden_layers": 24,
    "num_attention_heads": 14,
    "num_key_value_heads": 2,
    "max_position_embeddings": 32768,
    "rope_theta": 1000000.0,
    "rms_norm_eps": 1e-6,
    "tie_word_embeddings": True,
}
TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }} {{ m['content'] }}<|im_end|> "
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant {% endif %}"
)


def build_model(folder: Path, shape: dict[str, Any] | None = None, context: int = 4096) -> Path:
    """A Qwen2 causal LM with random weights (bf16 safetensors) and a character-level
    tokenizer that decodes every id, saved as a Hugging Face folder that vLLM and nimble
    load as any model.
    The end-of-text row of the (tied) embedding is zero: its logit is 0 while the largest of
    the others is far above, so greedy decoding never stops early and every request
    produces max_tokens tokens on both sides."""
    import torch  # heavy: only here

    # before the meta-device context below: imported first inside one, it fails (torch 2.8)
    import torch._dynamo
    import transformers
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    shape = {**QWEN_05B, **(shape or {})}
    folder.mkdir(parents=True, exist_ok=True)
    specials = ["<unk>", "<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    # WordPiece over single characters: every prompt tokenizes, to its own ids (distinct
    # prompts stay distinct for vLLM's prefix cache), about one token per character
    chars = [chr(c) for c in range(33, 127)]
    pieces = [*chars, *(f"##{c}" for c in chars)]
    vocab_size = int(shape["vocab_size"])
    filler = [f"w{i}" for i in range(vocab_size - len(specials) - len(pieces))]
    vocab = {token: i for i, token in enumerate([*specials, *pieces, *filler])}
    tokenizer = Tokenizer(models.WordPiece(vocab, unk_token="<unk>", max_input_chars_per_word=200))
    tokenizer.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tokenizer.decoder = decoders.WordPiece(prefix="##", cleanup=False)  # words, spaces between
    fast = transformers.PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        bos_token=None,
        eos_token="<|endoftext|>",
        unk_token="<unk>",
        pad_token="<|endoftext|>",
        additional_special_tokens=specials[2:],
        model_max_length=context,
        clean_up_tokenization_spaces=False,
    )
    fast.chat_template = TEMPLATE
    fast.save_pretrained(str(folder))
    eos = vocab["<|endoftext|>"]
    config = transformers.Qwen2Config(
        **{**shape, "max_position_embeddings": min(context, shape["max_position_embeddings"])},
        bos_token_id=eos,
        eos_token_id=eos,
    )  # the dtype: the model's, bf16, written by save_pretrained
    # the weights are drawn here, in bf16, on the GPU when there is one (transformers' own
    # random init takes about 90 s for 0.5B parameters on two CPU cores, this a few seconds)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    default = torch.get_default_dtype()
    torch.set_default_dtype(torch.bfloat16)
    try:
        with torch.device("meta"):
            model = transformers.Qwen2ForCausalLM(config)
    finally:
        torch.set_default_dtype(default)
    model = model.to_empty(device=device)
    model.tie_weights()  # to_empty made the tied input and output embeddings two tensors
    generator = torch.Generator(device=device).manual_seed(0)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith("norm.weight"):
                param.fill_(1.0)
            elif name.endswith(".bias"):
                param.zero_()
            else:
                param.copy_(0.02 * torch.randn(param.shape, generator=generator, device=device))
        model.get_input_embeddings().weight[eos].zero_()
        model.get_output_embeddings().weight[eos].zero_()  # the same tensor when tied
    model.save_pretrained(str(folder))
    return folder


# --- the servers ---


@dataclass
class Server:
    name: str
    proc: subprocess.Popen[bytes]
    url: str
    log: Path


def start(name: str, argv: Sequence[str], log: Path, env: dict[str, str], pids: Path) -> Server:
    with log.open("ab") as sink:  # the child keeps its own copy of the file
        proc = subprocess.Popen(
            list(argv),
            stdout=sink,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env={**os.environ, **env},
            start_new_session=True,  # its own process group: tests/gpu/run.sh's trap ends it
        )
    with pids.open("a") as file:
        file.write(f"{proc.pid}\n")
    return Server(name, proc, "", log)


async def wait_ready(server: Server, url: str, timeout_s: float) -> float:
    """Poll url until it answers 200; fail fast if the process exits. Seconds it took."""
    started = time.monotonic()
    async with httpx.AsyncClient(timeout=5.0, trust_env=False) as client:
        while time.monotonic() - started < timeout_s:
            if server.proc.poll() is not None:
                raise RuntimeError(
                    f"{server.name} exited with {server.proc.returncode}:\n{tail(server.log)}"
                )
            try:
                if (await client.get(url)).status_code == 200:
                    return time.monotonic() - started
            except httpx.HTTPError:
                pass  # not listening yet
            await asyncio.sleep(POLL_S)
    raise RuntimeError(f"{server.name} not ready after {timeout_s:.0f} s:\n{tail(server.log)}")


def stop(server: Server, grace_s: float = 60.0) -> None:
    """SIGTERM to the process group (nimble then stops its engine), SIGKILL after grace_s."""
    if server.proc.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(server.proc.pid, signal.SIGTERM)
    try:
        server.proc.wait(timeout=grace_s)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(server.proc.pid, signal.SIGKILL)
        server.proc.wait()


def end_groups(pids: Path, grace_s: float = 15.0) -> None:
    """End every process group recorded in pids that is still there (an engine whose nimble
    was killed before it could stop it): SIGTERM, then SIGKILL after grace_s."""
    if not pids.exists():
        return
    groups = {int(line) for line in pids.read_text().split()}

    def alive() -> set[int]:
        found = set()
        for pgid in groups:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(pgid, 0)
                found.add(pgid)
        return found

    for pgid in alive():
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pgid, signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    while alive() and time.monotonic() < deadline:
        time.sleep(POLL_S)  # their own SIGTERM handling
    for pgid in alive():
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pgid, signal.SIGKILL)


def engine_wrapper(work: Path, engine_command: str, pids: Path) -> Path:
    """The engine command nimble runs: records the argv nimble gives the engine and the
    engine's pid, drops VLLM_API_KEY (so the engine can be called directly), then execs it."""
    words = shlex.split(engine_command)
    found = shutil.which(words[0])
    if found is None:
        raise RuntimeError(f"engine command not found: {words[0]}")
    script = work / "engine.sh"
    script.write_text(
        "#!/bin/sh\n"
        f"echo $$ >> {shlex.quote(str(pids))}\n"
        f'printf "%s\\n" "$@" > {shlex.quote(str(work / "engine-args"))}\n'
        "unset VLLM_API_KEY\n"
        f'exec {shlex.join([found, *words[1:]])} "$@"\n'
    )
    script.chmod(0o755)
    return script


def with_port(argv: Sequence[str], port: int) -> list[str]:
    out = list(argv)
    out[out.index("--port") + 1] = str(port)
    return out


# --- measuring ---


@dataclass(frozen=True)
class Plan:
    levels: tuple[int, ...]
    max_tokens: int
    per_slot: int
    rounds: int
    ttft_pairs: int
    ttft_max_tokens: int
    deadline: float  # time.monotonic() after which no new round starts
    last_call: float = math.inf  # ... and no new TTFT pair (stopping the servers follows)


@dataclass
class Measured:
    # rounds[i][side] -> one LevelStats per level
    rounds: list[dict[str, list[dict[str, Any]]]] = field(default_factory=list)
    ttft_pairs_ms: dict[str, list[float]] = field(default_factory=lambda: {s: [] for s in SIDES})
    standalone: list[dict[str, Any]] = field(default_factory=list)
    standalone_note: str = ""
    notes: list[str] = field(default_factory=list)
    error: str = ""


class Offsets:
    """Distinct prompts for every run: no two runs share a prompt (vLLM's prefix cache)."""

    def __init__(self) -> None:
        self.next = 0

    def take(self, count: int) -> list[str]:
        texts = prompts(count, self.next)
        self.next += count
        return texts


async def level_run(
    client: httpx.AsyncClient, level: int, texts: Sequence[str], max_tokens: int
) -> dict[str, Any]:
    cpu, wall = time.process_time(), time.perf_counter()
    stats = await run_level(client, NAME, level, texts, max_tokens)
    cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    # the load generator's own CPU (one process): near 100%, it would be the bottleneck
    return {**asdict(stats), "client_cpu_pct": round(100 * cpu / wall, 1) if wall else math.nan}


async def warm(client: httpx.AsyncClient, max_tokens: int) -> None:
    for text in ("Say hello.", "Say goodbye."):
        result = await stream_one(client, chat_body(NAME, text, max_tokens))
        if not result.ok:
            raise RuntimeError(f"warm-up request failed: {result.error}")


async def paired_rounds(
    clients: dict[str, httpx.AsyncClient], plan: Plan, measured: Measured, log: Any
) -> None:
    offsets = Offsets()
    last_round_s = 0.0
    for r in range(plan.rounds):
        if r and time.monotonic() + 1.2 * last_round_s > plan.deadline:
            measured.notes.append(f"{r} round(s) of {plan.rounds}: the time budget ran out")
            break
        started = time.monotonic()
        this: dict[str, list[dict[str, Any]]] = {side: [] for side in SIDES}
        for i, level in enumerate(plan.levels):
            count = requests_for(level, plan.per_slot, 8)
            order = SIDES if (r + i) % 2 == 0 else SIDES[::-1]
            for side in order:
                stats = await level_run(clients[side], level, offsets.take(count), plan.max_tokens)
                this[side].append(stats)
                log(
                    f"  round {r + 1} c={level} {side:6}: {stats['tokens_per_s']:9.1f} tok/s, "
                    f"TTFT p50 {stats['ttft_p50_ms']:7.1f} ms, errors {stats['errors']}, "
                    f"client CPU {stats['client_cpu_pct']:.0f}%"
                )
        measured.rounds.append(this)
        last_round_s = time.monotonic() - started


async def paired_ttft(
    clients: dict[str, httpx.AsyncClient], plan: Plan, measured: Measured
) -> None:
    """One request at a time, a pair per prompt number, order alternating. Each side gets
    its own prompt (never one the other side has just put into vLLM's prefix cache)."""
    texts = Offsets()
    texts.next = 100_000  # apart from the rounds' prompts
    for i in range(plan.ttft_pairs):
        if i >= 2 and time.monotonic() > plan.last_call:
            measured.notes.append(f"TTFT pairs: {i} of {plan.ttft_pairs} (time budget)")
            break
        order = SIDES if i % 2 == 0 else SIDES[::-1]
        for side, text in zip(order, texts.take(2), strict=True):
            result = await stream_one(clients[side], chat_body(NAME, text, plan.ttft_max_tokens))
            if not result.ok or result.ttft is None:
                raise RuntimeError(f"{side}: {result.error}")
            measured.ttft_pairs_ms[side].append(result.ttft * 1000)


def clients_for(urls: dict[str, str], levels: Sequence[int]) -> dict[str, httpx.AsyncClient]:
    timeout = httpx.Timeout(600.0, connect=10.0)
    limits = httpx.Limits(max_connections=max(levels) + 2)
    return {
        side: httpx.AsyncClient(base_url=url, timeout=timeout, limits=limits, trust_env=False)
        for side, url in urls.items()
    }


# --- the report ---


def mean(values: Sequence[float]) -> float:
    good = [v for v in values if not math.isnan(v)]
    return statistics.fmean(good) if good else math.nan


def level_table(measured: Measured, levels: Sequence[int]) -> list[dict[str, Any]]:
    """Per level: each side's mean over the rounds, the ratio of the means and each
    round's own ratio (the pairs: their spread shows the noise)."""
    rows = []
    for i, level in enumerate(levels):
        side = {
            s: [r[s][i] for r in measured.rounds if len(r[s]) > i] for s in SIDES
        }  # the rounds that reached this level
        if not side["vllm"] or not side["nimble"]:
            continue
        tok = {s: mean([x["tokens_per_s"] for x in side[s]]) for s in SIDES}
        ratios = [
            n["tokens_per_s"] / v["tokens_per_s"]
            for v, n in zip(side["vllm"], side["nimble"], strict=False)
            if v["tokens_per_s"] > 0
        ]
        ratio = tok["nimble"] / tok["vllm"] if tok["vllm"] > 0 else math.nan
        rows.append(
            {
                "streams": level,
                "rounds": len(side["vllm"]),
                "vllm_tok_s": tok["vllm"],
                "nimble_tok_s": tok["nimble"],
                "ratio": ratio,
                "round_ratios": ratios,
                "passed": ratio >= TOK_S_TARGET,
                "ttft_p50_ms": {s: mean([x["ttft_p50_ms"] for x in side[s]]) for s in SIDES},
                "itl_p50_ms": {s: mean([x["itl_p50_ms"] for x in side[s]]) for s in SIDES},
                "errors": {s: sum(x["errors"] for x in side[s]) for s in SIDES},
                "requests": {s: sum(x["requests"] for x in side[s]) for s in SIDES},
                "client_cpu_pct": max(x["client_cpu_pct"] for s in SIDES for x in side[s]),
            }
        )
    return rows


def ttft_summary(measured: Measured) -> dict[str, Any] | None:
    pairs = measured.ttft_pairs_ms
    n = min(len(pairs["vllm"]), len(pairs["nimble"]))
    if n < 2:
        return None
    diffs = [a - b for a, b in zip(pairs["nimble"][:n], pairs["vllm"][:n], strict=True)]
    low, high = bootstrap(diffs)
    delta = statistics.median(diffs)
    return {
        "pairs": n,
        "vllm_p50_ms": statistics.median(pairs["vllm"][:n]),
        "nimble_p50_ms": statistics.median(pairs["nimble"][:n]),
        "delta_ms": delta,
        "ci95_ms": [low, high],
        "passed": delta <= TTFT_TARGET_MS,
    }


def verdict(
    rows: Sequence[dict[str, Any]], ttft: dict[str, Any] | None, levels: Sequence[int]
) -> dict[str, bool | None]:
    """Each target: True (met), False (missed) or None (not measured)."""
    measured = {row["streams"]: row for row in rows}
    targets: dict[str, bool | None] = {}
    for level in levels:
        row = measured.get(level)
        ok = row is not None and row["passed"] and row["errors"]["nimble"] == 0
        targets[f"tokens/s at {level} stream(s) >= {TOK_S_TARGET}x"] = None if row is None else ok
    targets[f"TTFT at 1 stream within {TTFT_TARGET_MS:g} ms"] = (
        None if ttft is None else bool(ttft["passed"])
    )
    return targets


def fmt(value: float, digits: int = 1) -> str:
    return "-" if value is None or math.isnan(value) else f"{value:.{digits}f}"


def render(result: dict[str, Any]) -> str:
    meta, rows, ttft = result["meta"], result["levels"], result["ttft"]
    lines = [
        f"# nimble vs `vllm serve`, one GPU ({meta['when']})",
        "",
        f"- GPU: {meta['gpu']}",
        f"- vLLM {meta['vllm_version']}, nimble {meta['nimble_version']} "
        f"(revision {meta['revision']}), Python {meta['python']}",
        f"- model: {meta['model']}",
        f"- engine argv (both sides): `{meta['engine_argv']}`",
        f"- nimble: `{meta['nimble_argv']}`",
        f"- load: benchmarks/loadgen.py, streamed chat completions, max_tokens "
        f"{meta['max_tokens']}, temperature 0, {meta['per_slot']} requests per stream "
        "(at least 8) per level and side, distinct prompts",
        f"- {meta['rounds_done']} round(s); each level measured on the same `vllm serve` "
        "process directly and through nimble, in alternating order; nimble (its engine "
        f"started and warmed up) was ready in {fmt(meta.get('nimble_ready_s', math.nan))} s",
        "",
        *([f"**The measurement failed**: {result['error']}", ""] if result["error"] else []),
        f"| streams | vLLM tok/s | nimble tok/s | nimble ÷ vLLM | per round | "
        f"≥ {TOK_S_TARGET} | TTFT p50 ms vLLM / nimble | ITL p50 ms vLLM / nimble | "
        "failed requests vLLM / nimble | client CPU % |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        lines.append(
            f"| {row['streams']} | {fmt(row['vllm_tok_s'])} | {fmt(row['nimble_tok_s'])} | "
            f"{fmt(row['ratio'], 3)} | {', '.join(fmt(x, 3) for x in row['round_ratios'])} | "
            f"{'PASS' if row['passed'] else 'FAIL'} | "
            f"{fmt(row['ttft_p50_ms']['vllm'])} / {fmt(row['ttft_p50_ms']['nimble'])} | "
            f"{fmt(row['itl_p50_ms']['vllm'], 2)} / {fmt(row['itl_p50_ms']['nimble'], 2)} | "
            f"{row['errors']['vllm']} / {row['errors']['nimble']} of {row['requests']['vllm']} | "
            f"{fmt(row['client_cpu_pct'], 0)} |"
        )
    lines.append("")
    if ttft is not None:
        low, high = ttft["ci95_ms"]
        lines.append(
            f"TTFT at one stream, {ttft['pairs']} pairs (max_tokens {meta['ttft_max_tokens']}, "
            f"one request at a time, order alternating): vLLM p50 {fmt(ttft['vllm_p50_ms'])} ms, "
            f"nimble p50 {fmt(ttft['nimble_p50_ms'])} ms; nimble - vLLM, median of the pairs "
            f"{ttft['delta_ms']:+.2f} ms (95% interval {low:+.2f} .. {high:+.2f}): "
            f"{'PASS' if ttft['passed'] else 'FAIL'} (target ≤ {TTFT_TARGET_MS:g} ms)"
        )
    else:
        lines.append("TTFT at one stream: not measured")
    lines.append("")
    if result["standalone"]:
        lines += [
            "A separate `vllm serve` process with the same argv, started after nimble stopped "
            f"(one sweep; ready in {fmt(result['standalone_ready_s'])} s):",
            "",
            "| streams | tok/s | TTFT p50 ms | ITL p50 ms | errors | nimble ÷ this |",
            "|---|---|---|---|---|---|",
        ]
        by_level = {row["streams"]: row for row in rows}
        for s in result["standalone"]:
            nimble = by_level.get(s["concurrency"], {}).get("nimble_tok_s", math.nan)
            ratio = nimble / s["tokens_per_s"] if s["tokens_per_s"] else math.nan
            lines.append(
                f"| {s['concurrency']} | {fmt(s['tokens_per_s'])} | {fmt(s['ttft_p50_ms'])} | "
                f"{fmt(s['itl_p50_ms'], 2)} | {s['errors']}/{s['requests']} | {fmt(ratio, 3)} |"
            )
        lines.append("")
    elif result["standalone_note"]:
        lines += [f"Separate `vllm serve` process: {result['standalone_note']}", ""]
    lines.append("Targets:")
    lines.append("")
    for target, ok in result["targets"].items():
        word = "not measured" if ok is None else ("PASS" if ok else "FAIL")
        lines.append(f"- {target}: {word}")
    for note in result["notes"]:
        lines.append(f"- note: {note}")
    client = max((row["client_cpu_pct"] for row in rows), default=math.nan)
    if client >= 90:
        lines.append(
            f"- note: the load generator used {client:.0f}% of a core at some level: it may "
            "have capped both sides alike, hiding a difference"
        )
    return "\n".join(lines) + "\n"


def result_of(measured: Measured, plan: Plan, meta: dict[str, Any]) -> dict[str, Any]:
    rows = level_table(measured, plan.levels)
    ttft = ttft_summary(measured)
    return {
        "meta": {**meta, "rounds_done": len(measured.rounds)},
        "levels": rows,
        "ttft": ttft,
        "standalone": measured.standalone,
        "standalone_ready_s": meta.get("standalone_ready_s", math.nan),
        "standalone_note": measured.standalone_note,
        "targets": verdict(rows, ttft, plan.levels),
        "notes": measured.notes,
        "error": measured.error,
        "raw": {"rounds": measured.rounds, "ttft_pairs_ms": measured.ttft_pairs_ms},
    }


def write(out: Path, result: dict[str, Any]) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    (out / "gpu-bench.json").write_text(json.dumps(result, indent=1, default=str))
    report = out / "gpu-bench.md"
    report.write_text(render(result))
    return report


# --- the run ---


def gpu_name() -> str:
    if shutil.which("nvidia-smi") is None:
        return "none (nvidia-smi not found)"
    try:
        done = subprocess.run(
            [
                "nvidia-smi",
                "--query-gpu=name,memory.total,driver_version",
                "--format=csv,noheader",
            ],
            capture_output=True,
            text=True,
            timeout=30,
            check=True,
        )
    except (OSError, subprocess.SubprocessError) as exc:
        return f"unknown ({exc})"
    return done.stdout.strip().replace("\n", "; ")


def revision() -> str:
    try:
        done = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=HERE,
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        )
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return done.stdout.strip()


def model_note(folder: Path) -> str:
    try:
        config = json.loads((folder / "config.json").read_text())
    except (OSError, ValueError):
        return str(folder)
    shape = ", ".join(
        f"{key} {config[key]}"
        for key in ("num_hidden_layers", "hidden_size", "vocab_size", "torch_dtype")
        if key in config
    )
    arch = ",".join(config.get("architectures") or ["?"])
    return f"{folder} ({arch}: {shape})" if shape else f"{folder} ({arch})"


async def run(args: argparse.Namespace, log: Any = print) -> dict[str, Any]:
    budget_end = time.monotonic() + args.budget_s
    plan = Plan(
        levels=tuple(int(c) for c in args.levels.split(",")),
        max_tokens=args.max_tokens,
        per_slot=args.per_slot,
        rounds=args.rounds,
        ttft_pairs=args.ttft_pairs,
        ttft_max_tokens=args.ttft_max_tokens,
        # the TTFT pairs, the stops and the report after the rounds
        deadline=budget_end - args.reserve_s,
        last_call=budget_end - min(args.reserve_s, 15.0),
    )
    out, work = Path(args.out), Path(args.work)
    out.mkdir(parents=True, exist_ok=True)
    work.mkdir(parents=True, exist_ok=True)
    pids = Path(args.pids)
    wrapper = engine_wrapper(work, args.engine_command, pids)
    env = {"NIMBLE_CACHE_PATH": str(work / "cache")}
    if args.hardware_file:
        env["NIMBLE_HARDWARE_FILE"] = str(args.hardware_file)
    nimble_bin = shutil.which("nimble", path=str(Path(sys.executable).parent)) or "nimble"
    port = free_port()
    argv = [
        nimble_bin, "serve", "--model", str(args.model), "--served-model-name", NAME,
        "--engine", "vllm", "--engine-command", str(wrapper), "--host", "127.0.0.1",
        "--port", str(port), "--max-running", str(max(plan.levels)),
        # vLLM's --max-num-seqs: no level needs more, and vLLM captures CUDA graphs for batch
        # sizes up to twice it (capped at 512): 19 sizes at 64 against 51 at its default 1024
        "--max-batch-size", str(max(plan.levels)),
        "--engine-start-timeout", str(int(args.start_timeout_s)), "--log-level", "info",
        "--engine-log",  # vLLM's own output in nimble.log: what a failed or slow start did
        *shlex.split(args.nimble_args),
    ]  # fmt: skip
    meta: dict[str, Any] = {
        "when": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "gpu": gpu_name(),
        "python": platform.python_version(),
        "nimble_version": _version("nimble"),
        "vllm_version": "?",
        "revision": revision(),
        "model": model_note(Path(args.model)),
        "nimble_argv": shlex.join(argv),
        "engine_argv": "?",
        "max_tokens": plan.max_tokens,
        "per_slot": plan.per_slot,
        "ttft_max_tokens": plan.ttft_max_tokens,
        "levels": list(plan.levels),
    }
    measured = Measured()
    log(f"starting nimble: {shlex.join(argv)}")
    nimble = start("nimble", argv, out / "nimble.log", env, pids)
    engine_argv: list[str] = []
    try:
        timeout = min(args.start_timeout_s, budget_end - time.monotonic() - args.reserve_s)
        ready_s = await wait_ready(nimble, f"http://127.0.0.1:{port}/v1/health/ready", timeout)
        log(f"nimble ready in {ready_s:.1f} s (vLLM started, warmed up)")
        meta["nimble_ready_s"] = round(ready_s, 1)
        engine_argv = (work / "engine-args").read_text().splitlines()
        engine_words = [*shlex.split(args.engine_command), *engine_argv]
        meta["engine_argv"] = shlex.join(engine_words)
        engine_url = f"http://127.0.0.1:{engine_argv[engine_argv.index('--port') + 1]}"
        urls = {"vllm": engine_url, "nimble": f"http://127.0.0.1:{port}"}
        clients = clients_for(urls, plan.levels)
        try:
            meta["vllm_version"] = (await clients["vllm"].get("/version")).json()["version"]
            for client in clients.values():
                await warm(client, plan.max_tokens)
            log(f"paired rounds at {', '.join(map(str, plan.levels))} stream(s)")
            await paired_rounds(clients, plan, measured, log)
            log(f"TTFT at one stream, {plan.ttft_pairs} pairs")
            await paired_ttft(clients, plan, measured)
        finally:
            for client in clients.values():
                await client.aclose()
    except (RuntimeError, httpx.HTTPError, OSError, ValueError, KeyError) as exc:
        measured.error = f"{type(exc).__name__}: {exc}"
        log(f"failed: {measured.error}")
    finally:
        stop(nimble)
        log(f"nimble stopped (exit code {nimble.proc.returncode})")
    if measured.error:
        measured.standalone_note = "not run (the measurement failed)"
    elif not args.standalone:
        measured.standalone_note = "not asked for (--no-standalone)"
    elif budget_end - time.monotonic() < args.standalone_min_s:
        measured.standalone_note = (
            f"skipped: {budget_end - time.monotonic():.0f} s left of the budget, "
            f"{args.standalone_min_s:.0f} s needed"
        )
    else:
        await standalone(args, plan, engine_argv, work, out, measured, meta, budget_end, log)
    result = result_of(measured, plan, meta)
    report = write(out, result)
    log(f"report: {report}")
    return result


async def standalone(
    args: argparse.Namespace,
    plan: Plan,
    engine_argv: list[str],
    work: Path,
    out: Path,
    measured: Measured,
    meta: dict[str, Any],
    budget_end: float,
    log: Any,
) -> None:
    port = free_port()
    argv = [*shlex.split(args.engine_command), *with_port(engine_argv, port)]
    argv[0] = shutil.which(argv[0]) or argv[0]
    log(f"starting a separate vllm serve: {shlex.join(argv)}")
    server = start("vllm serve", argv, out / "vllm-standalone.log", {}, Path(args.pids))
    try:
        timeout = max(10.0, budget_end - time.monotonic() - 20)
        ready_s = await wait_ready(server, f"http://127.0.0.1:{port}/health", timeout)
        meta["standalone_ready_s"] = round(ready_s, 1)
        log(f"vllm serve ready in {ready_s:.1f} s")
        (client,) = clients_for({"vllm": f"http://127.0.0.1:{port}"}, plan.levels).values()
        try:
            await warm(client, plan.max_tokens)
            offsets = Offsets()
            offsets.next = 200_000
            for level in plan.levels:
                if time.monotonic() > budget_end - 10:
                    measured.notes.append("separate vllm serve: the time budget ran out")
                    break
                count = requests_for(level, plan.per_slot, 8)
                stats = await level_run(client, level, offsets.take(count), plan.max_tokens)
                measured.standalone.append(stats)
                log(f"  separate c={level}: {stats['tokens_per_s']:9.1f} tok/s")
        finally:
            await client.aclose()
    except RuntimeError as exc:
        measured.standalone_note = f"failed: {str(exc).splitlines()[0]}"
        log(f"separate vllm serve {measured.standalone_note}")
    finally:
        stop(server)


def _version(package: str) -> str:
    import importlib.metadata

    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return "?"


def parser() -> argparse.ArgumentParser:
    default_out = os.environ.get("OUT") or str(HERE / "out")
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--model", type=Path, help="a Hugging Face model folder")
    p.add_argument("--build-model", type=Path, help="build a random-weight model here first")
    p.add_argument("--levels", default="1,16,64")
    p.add_argument("--max-tokens", type=int, default=128)
    p.add_argument("--per-slot", type=int, default=4, help="requests per stream per level")
    p.add_argument("--rounds", type=int, default=5, help="at most; fewer when time runs out")
    p.add_argument("--ttft-pairs", type=int, default=40)
    p.add_argument("--ttft-max-tokens", type=int, default=16)
    p.add_argument("--budget-s", type=float, default=240.0, help="the whole run, starts included")
    p.add_argument("--reserve-s", type=float, default=30.0, help="kept for TTFT pairs and stops")
    # vLLM 0.26 on a fresh H200 was not up within 152 s (compile, CUDA graphs; 2026-12-04)
    p.add_argument("--start-timeout-s", type=float, default=300.0)
    p.add_argument("--standalone", action=argparse.BooleanOptionalAction, default=True)
    p.add_argument("--standalone-min-s", type=float, default=75.0)
    p.add_argument("--engine-command", default="vllm serve")
    p.add_argument("--hardware-file", type=Path, help="NIMBLE_HARDWARE_FILE (a CPU check)")
    p.add_argument("--nimble-args", default="", help="more `nimble serve` flags")
    p.add_argument("--out", default=default_out)
    p.add_argument("--work", default="", help="scratch folder (default: a new temporary one)")
    p.add_argument("--pids", default="", help="file of the servers' pids (default: <work>/pids)")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    if args.build_model:
        started = time.monotonic()
        print(f"building a random-weight model (Qwen2.5-0.5B's shape) in {args.build_model}")
        args.model = build_model(args.build_model)
        print(f"built in {time.monotonic() - started:.1f} s")
    if args.model is None:
        parser().error("--model or --build-model is required")
    args.work = args.work or tempfile.mkdtemp(prefix="nimble-gpu-bench-")

    def terminated(signum: int, frame: object) -> None:
        raise SystemExit(128 + signum)  # unwinds through the finally blocks: servers stop

    signal.signal(signal.SIGTERM, terminated)
    args.pids = args.pids or str(Path(args.work) / "pids")
    try:
        result = asyncio.run(run(args, log=lambda line: print(line, flush=True)))
    finally:
        end_groups(Path(args.pids))
    print(render(result))
    return 1 if result["error"] else 0


if __name__ == "__main__":
    sys.exit(main())
