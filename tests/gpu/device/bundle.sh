#!/usr/bin/env bash
# Packs vLLM and nimble's dependencies for a GPU machine that has Python 3.12 with torch
# 2.11.0+cu130 (and the packages named in device-has.txt) but no package index, in pieces
# small enough for a transfer limit (the `device` tool here: 64 MiB a call with the tree):
#
#   bash tests/gpu/device/bundle.sh [OUT_DIR]      # default .gpu (git-ignored)
#
# writes OUT_DIR/a (nimble's site, the zstandard wheel, vLLM part 1), OUT_DIR/b (part 2),
# OUT_DIR/d (part 3) and OUT_DIR/c (env.sh, check.sh, diag.sh). On the machine, one call
# per folder in that order, each copying its files to /tmp/stash; the last one sources
# env.sh (unpacks /tmp/nsite and /tmp/vsite, puts `vllm` and `nimble` on PATH) and runs
# check.sh (tests/gpu/run.sh with NIMBLE_GPU_PYTHON). README.md says what it found.
#
# vLLM 0.26.0 is the newest release that pins torch 2.11.0 (cu130 wheels). Two sites, since
# vLLM 0.26.0 needs fastapi < 0.137 and nimble >= 0.165: vLLM's processes get /tmp/vsite,
# nimble's /tmp/nsite. Pruned from vLLM's wheel (not used by a dense bf16 model on Hopper,
# and over the limit): FlashAttention 2 (FA3 serves sm90), the MoE, FlashMLA and QuTLASS
# kernels, DeepGEMM, the sm100 FMHA and the Rust frontend. flashinfer is not carried either:
# env.sh sets VLLM_USE_FLASHINFER_SAMPLER=0 (vLLM imports flashinfer for its sampler on
# CUDA unless told not to).
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
OUT=${1:-$HERE/../../../.gpu}
WORK=${BUNDLE_WORK:-/tmp/nimble-bundle}
PY=${PYTHON:-python3}
PART=45000000  # bytes a piece
mkdir -p "$WORK" "$OUT"/{a,b,c,d}
cd "$WORK"
PLAT=(--only-binary=:all: --python-version 3.12 --implementation cp)
for n in 5 17 24 26 27 28 31 34 35; do PLAT+=(--platform "manylinux_2_${n}_x86_64"); done
PLAT+=(--platform manylinux2014_x86_64 --platform manylinux1_x86_64)
pipx() { PIP_CONSTRAINT="" "$PY" -m pip "$@"; }
pipx install -q --target "$WORK/uv" uv
UV=$WORK/uv/bin/uv

echo "== resolve (the machine's own packages excluded)"
"$UV" pip compile -q --python-version 3.12 --python-platform x86_64-manylinux_2_28 \
  --excludes "$HERE/device-has.txt" --exclude-newer 2026-07-26 --no-header --no-annotate \
  - <<<'vllm==0.26.0
apache-tvm-ffi==0.1.10' -o vllm.lock
grep -v '^vllm==' vllm.lock >vllm-deps.lock
grep -v '^nvidia-cudnn' "$HERE/device-has.txt" >nimble-excl.txt
"$UV" pip compile -q --python-version 3.12 --python-platform x86_64-manylinux_2_28 \
  --excludes nimble-excl.txt --no-header --no-annotate -o nimble.lock - <<'REQ'
fastapi>=0.165
uvicorn>=0.30
pydantic>=2.7
pydantic-settings>=2.4
opentelemetry-api>=1.25
opentelemetry-sdk>=1.25
opentelemetry-exporter-otlp-proto-http>=1.25
orjson>=3.9
httptools>=0.6
jsonschema>=4
openai>=1.40,<3
pytest-asyncio>=0.24
REQ

echo "== download and install into two sites"
rm -rf vwhl nwhl vsite nsite zw
pipx download -q --no-deps "${PLAT[@]}" -d vwhl -r vllm-deps.lock vllm==0.26.0
pipx download -q --no-deps "${PLAT[@]}" -d nwhl -r nimble.lock
pipx download -q --no-deps "${PLAT[@]}" -d zw zstandard
pipx install -q --no-index --no-deps --no-compile "${PLAT[@]}" --target vsite vwhl/*.whl
pipx install -q --no-index --no-deps --no-compile "${PLAT[@]}" --target nsite nwhl/*.whl

echo "== prune"
rm -rf vsite/bin nsite/bin vsite/xgrammar/lib/*.a vsite/pycountry/locales \
  vsite/mistral_common/data/tekken_*.json \
  vsite/vllm/vllm_flash_attn/_vllm_fa2_C.abi3.so vsite/vllm/_moe_C_stable_libtorch.abi3.so \
  vsite/vllm/vllm-rs vsite/vllm/_flashmla_C.abi3.so vsite/vllm/_flashmla_extension_C.abi3.so \
  vsite/vllm/_qutlass_C.abi3.so vsite/vllm/third_party/deep_gemm vsite/vllm/third_party/fmha_sm100
find vsite nsite -name __pycache__ -prune -exec rm -rf {} +
du -sh vsite nsite

echo "== pack (zstd -19: a few minutes on two cores)"
tar cf - nsite | zstd -19 -T0 -q -f -o nsite.tar.zst
tar cf - vsite | zstd -19 -T0 -q -f -o vsite.tar.zst
rm -f vs.?
split -b "$PART" -a 1 vsite.tar.zst vs.
[ ! -e vs.d ] || { echo "vLLM's archive needs more than three pieces"; exit 1; }
rm -f "$OUT"/{a,b,c,d}/*
cp nsite.tar.zst zw/*.whl "$OUT/a/" && cp vs.a "$OUT/a/vsite.a"
cp vs.b "$OUT/b/vsite.b" && cp vs.c "$OUT/d/vsite.c"
cp "$HERE/env.sh" "$HERE/check.sh" "$HERE/diag.sh" "$OUT/c/"
du -sh "$OUT"/*
