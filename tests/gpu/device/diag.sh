#!/usr/bin/env bash
# on the GPU machine after env.sh: `vllm serve` directly on a tiny model, its whole output kept
set -u
BACK=${OUT:?}
python3 -c 'import sys; sys.path.insert(0, "."); from pathlib import Path; from tests.support.tiny_llama import build_tiny_llama; build_tiny_llama(Path("/tmp/tiny"), context=512)' >/dev/null 2>&1 || echo "tiny model build failed"
command -v gcc cc; ls /tmp/tiny
attempt() {
  local name=$1; shift
  local log=$BACK/vllm-$name.log t0=$SECONDS
  echo "== attempt $name: $*"
  env "$@" vllm serve /tmp/tiny --enforce-eager --max-model-len 512 --gpu-memory-utilization 0.3 --port 18000 >"$log" 2>&1 &
  local pid=$!
  while kill -0 $pid 2>/dev/null && [ $((SECONDS - t0)) -lt 110 ]; do
    if curl -sf http://127.0.0.1:18000/health >/dev/null 2>&1; then
      echo "UP in $((SECONDS - t0)) s"
      curl -s http://127.0.0.1:18000/v1/completions -H 'content-type: application/json' -d '{"model":"/tmp/tiny","prompt":"hello","max_tokens":8}' | head -c 400; echo
      kill -INT $pid; wait $pid; return 0
    fi
    sleep 1
  done
  echo "DOWN after $((SECONDS - t0)) s (alive: $(kill -0 $pid 2>/dev/null && echo yes || echo no))"
  kill -9 $pid 2>/dev/null; pkill -9 -f vllm_main 2>/dev/null
  grep -nE "Error|Traceback|error:|Killed|Signal|signal|core dumped|Aborted|Exception" "$log" | grep -v "^\s*$" | head -30 | cut -c1-400
  return 1
}
attempt A VLLM_LOGGING_LEVEL=INFO || attempt B VLLM_ENABLE_V1_MULTIPROCESSING=0
