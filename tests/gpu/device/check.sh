#!/usr/bin/env bash
# on the lent GPU machine, after env.sh: check that vLLM imports and sees the GPU, then the GPU
# check (tests/gpu/run.sh) with what is here; the logs go back through $OUT
set -u
BACK=${OUT:?}
echo "== $(date -u +%H:%M:%S) validate"
t0=$SECONDS
PYTHONPATH=/tmp/vsite timeout 180 python3 - <<'EOF' || { echo "VALIDATION FAILED"; exit 5; }
import time
t = time.monotonic()
import torch, vllm
print("vllm", vllm.__version__, "torch", torch.__version__, "cuda", torch.version.cuda)
import vllm.entrypoints.openai.api_server  # noqa
from vllm.platforms import current_platform as p
print(type(p).__name__, p.get_device_name(), p.get_device_capability())
import vllm._C_stable_libtorch  # noqa
import vllm.vllm_flash_attn.flash_attn_interface as f
print("fa3", f.FA3_AVAILABLE, f.FA3_UNAVAILABLE_REASON)
print(f"imports {time.monotonic() - t:.1f} s")
EOF
echo "validated in $((SECONDS - t0)) s"
timeout 60 nimble list-profiles 2>&1 | head -40
mkdir -p /tmp/gpuout
# BUDGET: 480 s unless told (one device call may run 600 s at most; run.sh's own default of
# 720 s needs two calls: --skip-bench, then --skip-tests)
OUT=/tmp/gpuout PYTEST_ADDOPTS="-W default" NIMBLE_GPU_PYTHON=python3 \
  NIMBLE_GPU_BUDGET_S=${BUDGET:-480} bash tests/gpu/run.sh "$@"
rc=$?
echo "== run.sh exit $rc"
cp /tmp/gpuout/report.md "$BACK/" 2>/dev/null
tar czf "$BACK/gpucheck.tar.gz" -C /tmp/gpuout . 2>/dev/null
exit $rc
