"""A Hugging Face tokenizer folder from the tokenizer inside a GGUF file (no hub, no torch).

aiperf counts prompt and output tokens with a Hugging Face tokenizer (`--tokenizer`: a hub
name or a local folder). No hub is reachable here, and transformers' own GGUF reader needs
torch; but a GGUF file carries its tokenizer (vocabulary, merges, special tokens, chat
template), so this writes the folder from it with `gguf` and `tokenizers`. Only the
byte-level BPE tokenizers llama.cpp calls `gpt2` (SmolLM2, Qwen2, Llama 3, ...) are written.
SmolLM2's pre-tokenizer (llama.cpp's `smollm`) splits every digit, then GPT-2's regex; the
same split here gives llama.cpp's own ids (checked against its /tokenize by run_aiperf.py).

Runs in aiperf's virtual environment (benchmarks/setup_aiperf.sh calls it):

    benchmarks/.venv-aiperf/bin/python benchmarks/gguf_tokenizer.py MODEL.gguf OUT_DIR
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from gguf import GGUFReader
from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

CONTROL, USER_DEFINED = 3, 4  # llama.cpp token types that are special tokens
DIGIT_SPLITTING = {"smollm", "llama3", "llama-bpe", "qwen2", "deepseek-llm"}


def fields(path: Path) -> dict[str, Any]:
    reader = GGUFReader(str(path))
    return {k: f.contents() for k, f in reader.fields.items() if k.startswith("tokenizer.")}


def build(meta: dict[str, Any]) -> PreTrainedTokenizerFast:
    kind = meta.get("tokenizer.ggml.model")
    if kind != "gpt2":
        raise SystemExit(f"only byte-level BPE (`gpt2`) tokenizers are written, not {kind!r}")
    tokens: list[str] = meta["tokenizer.ggml.tokens"]
    types: list[int] = meta.get("tokenizer.ggml.token_type") or [1] * len(tokens)
    merges = [tuple(m.split(" ", 1)) for m in meta["tokenizer.ggml.merges"]]
    vocab = {token: i for i, token in enumerate(tokens)}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges, fuse_unk=False, byte_fallback=False))
    byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    if meta.get("tokenizer.ggml.pre") in DIGIT_SPLITTING:
        digits = pre_tokenizers.Digits(individual_digits=True)
        tok.pre_tokenizer = pre_tokenizers.Sequence([digits, byte_level])
    else:
        tok.pre_tokenizer = byte_level
    tok.decoder = decoders.ByteLevel()
    special = [tokens[i] for i, t in enumerate(types) if t in (CONTROL, USER_DEFINED)]
    tok.add_special_tokens([AddedToken(s, special=True, normalized=False) for s in special])

    def name(key: str) -> str | None:
        index = meta.get(f"tokenizer.ggml.{key}_token_id")
        return tokens[int(index)] if index is not None else None

    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=name("bos"),
        eos_token=name("eos"),
        unk_token=name("unknown"),
        pad_token=name("padding"),
    )
    template = meta.get("tokenizer.chat_template")
    if template:
        fast.chat_template = template
    return fast


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("gguf", type=Path)
    parser.add_argument("out", type=Path)
    args = parser.parse_args()
    meta = fields(args.gguf)
    tokenizer = build(meta)
    tokenizer.save_pretrained(str(args.out))
    (args.out / "source.json").write_text(
        json.dumps({"gguf": str(args.gguf.resolve()), "pre": meta.get("tokenizer.ggml.pre")}) + "\n"
    )
    print(f"wrote {args.out} ({len(tokenizer)} tokens) from {args.gguf.name}")


if __name__ == "__main__":
    main()
