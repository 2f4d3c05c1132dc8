#!/usr/bin/env bash
# Build llama-cpp-python (with its OpenAI server) from source into its own venv, for the
# side-by-side benchmark in benchmarks/run_llm.py. Slow on a small CPU box (compiles llama.cpp),
# so it runs at the lowest priority with limited parallelism; the log is .build/build.log.
#
#   bash benchmarks/setup_llama_cpp_python.sh            # foreground
#   nohup bash benchmarks/setup_llama_cpp_python.sh &    # background
#
# No -march=native: some CPUs advertise AMX but a native build crashes on them, so the ISA is
# pinned (AVX2/FMA/F16C) and AMX is switched off explicitly.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
BUILD="$HERE/.build"
VENV="$BUILD/lcpp-venv"
LOG="$BUILD/build.log"
JOBS="${JOBS:-2}"
mkdir -p "$BUILD"

{
  echo "== $(date -Is) building llama-cpp-python into $VENV (jobs=$JOBS)"
  start=$(date +%s)
  python3.11 -m venv "$VENV"
  "$VENV/bin/python" -m pip install --quiet --upgrade pip
  CMAKE_ARGS="-DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON \
-DGGML_AVX512=OFF -DGGML_AMX_TILE=OFF -DGGML_AMX_INT8=OFF -DGGML_AMX_BF16=OFF \
-DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF" \
  CFLAGS="-O3 -mno-amx-tile -mno-amx-int8 -mno-amx-bf16" \
  CXXFLAGS="-O3 -mno-amx-tile -mno-amx-int8 -mno-amx-bf16" \
  CMAKE_BUILD_PARALLEL_LEVEL="$JOBS" MAKEFLAGS="-j$JOBS" \
    nice -n 19 "$VENV/bin/pip" install --no-cache-dir --verbose 'llama-cpp-python[server]'
  echo "== $(date -Is) done in $(( $(date +%s) - start )) s"
  "$VENV/bin/python" -c 'import llama_cpp; print("llama_cpp", llama_cpp.__version__)'
} >>"$LOG" 2>&1
