"""Run lm-evaluation-harness against a live nimble, in its own process (tests/clients/
test_lm_eval.py starts it, offline, in the folder of the task files):

    python lm_eval_runner.py BASE_URL MODEL GGUF OUT.json

A Hugging Face tokenizer is built from the vocabulary in the GGUF file (local-completions
tokenizes the prompts itself and sends token ids; transformers' own GGUF conversion reads the
whole file and takes seconds); then the loglikelihood task `nimble_capitals` through
`local-completions` and the generate-until task `nimble_capitals_gen` through
`local-chat-completions`. OUT.json holds each run's results, sample counts and samples.
"""

from __future__ import annotations

import json
import mmap
import struct
import sys
import tempfile
from pathlib import Path
from typing import Any

import lm_eval
from lm_eval.tasks import TaskManager
from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

HERE = Path.cwd()  # the folder of the task YAML files and their data
# GGUF metadata value types: scalars (struct formats), 8 a string, 9 an array
_SCALARS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?"}
_SCALARS |= {10: "<Q", 11: "<q", 12: "<d"}
_CONTROL = 3  # tokenizer.ggml.token_type of a special token


def main(base_url: str, model: str, gguf: Path, out: Path) -> None:
    tokenizer = Path(tempfile.mkdtemp()) / "tokenizer"
    hf_tokenizer(gguf_metadata(gguf)).save_pretrained(tokenizer)
    tasks = TaskManager(include_path=str(HERE), include_defaults=False)
    scored = lm_eval.simple_evaluate(
        model="local-completions",
        model_args={
            "model": model,
            "base_url": f"{base_url}/v1/completions",
            "tokenizer": str(tokenizer),
            "tokenizer_backend": "huggingface",
            "tokenized_requests": True,
            "max_retries": 1,
        },
        tasks=["nimble_capitals"],
        batch_size=4,  # several token-id prompts in one request
        task_manager=tasks,
        bootstrap_iters=0,
    )
    generated = lm_eval.simple_evaluate(
        model="local-chat-completions",
        model_args={
            "model": model,
            "base_url": f"{base_url}/v1/chat/completions",
            "max_retries": 1,
        },
        tasks=["nimble_capitals_gen"],
        apply_chat_template=True,
        task_manager=tasks,
        bootstrap_iters=0,
    )
    runs = [run for run in (scored, generated) if run is not None]
    out.write_text(json.dumps([_kept(run) for run in runs], default=str))


def gguf_metadata(path: Path) -> dict[str, Any]:
    """The key/value metadata of a GGUF file (v2/v3)."""
    with path.open("rb") as file:
        data = mmap.mmap(file.fileno(), 0, access=mmap.ACCESS_READ)
    at = 4 + 4 + 8  # magic, version, tensor count

    def take(fmt: str) -> Any:
        nonlocal at
        (value,) = struct.unpack_from(fmt, data, at)
        at += struct.calcsize(fmt)
        return value

    def text() -> str:
        nonlocal at
        size = take("<Q")
        at += size
        return data[at - size : at].decode("utf-8", "replace")

    def value(kind: int) -> Any:
        if kind in _SCALARS:
            return take(_SCALARS[kind])
        if kind == 8:
            return text()
        inner, count = take("<I"), take("<Q")
        return [value(inner) for _ in range(count)]

    assert data[:4] == b"GGUF"
    pairs = take("<Q")
    return {text(): value(take("<I")) for _ in range(pairs)}


def hf_tokenizer(meta: dict[str, Any]) -> PreTrainedTokenizerFast:
    """A byte-level BPE tokenizer (`tokenizer.ggml.model` gpt2) from the GGUF vocabulary,
    splitting digits one by one as SmolLM2's does; control tokens are special."""
    assert meta["tokenizer.ggml.model"] == "gpt2"
    tokens: list[str] = meta["tokenizer.ggml.tokens"]
    merges = [tuple(merge.split(" ", 1)) for merge in meta["tokenizer.ggml.merges"]]
    bpe = Tokenizer(models.BPE({t: i for i, t in enumerate(tokens)}, merges))
    bpe.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(r"\d"), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
        ]
    )
    bpe.decoder = decoders.ByteLevel()
    kinds = meta["tokenizer.ggml.token_type"]
    special = [t for t, kind in zip(tokens, kinds, strict=True) if kind == _CONTROL]
    return PreTrainedTokenizerFast(
        tokenizer_object=bpe,
        bos_token=tokens[meta["tokenizer.ggml.bos_token_id"]],
        eos_token=tokens[meta["tokenizer.ggml.eos_token_id"]],
        additional_special_tokens=special,
    )


def _kept(run: dict[str, Any]) -> dict[str, Any]:
    samples = {
        task: [
            {key: sample[key] for key in ("doc_id", "arguments", "resps", "filtered_resps")}
            for sample in found
        ]
        for task, found in run["samples"].items()
    }
    return {"results": run["results"], "n-samples": run["n-samples"], "samples": samples}


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], Path(sys.argv[3]), Path(sys.argv[4]))
