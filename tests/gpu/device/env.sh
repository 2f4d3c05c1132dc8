# shellcheck shell=bash
# sourced on the lent GPU machine (repo root as cwd): nimble from the source tree with its
# dependencies in /tmp/nsite; vLLM 0.26.0 (pruned wheel) with its own in /tmp/vsite
ROOT=$PWD
export VLLM_USE_FLASHINFER_SAMPLER=0 PYTHONNOUSERSITE=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 VLLM_NO_USAGE_STATS=1 DO_NOT_TRACK=1 PYTHONUNBUFFERED=1
S=${S:-/tmp/stash}
unz() {  # zstd -dc, or Python's zstandard from the carried wheel
  if command -v zstd >/dev/null; then cat "$@" | zstd -dc; else
    [ -d /tmp/zstdpy ] || python3 -c "import zipfile,glob; zipfile.ZipFile(glob.glob('$S/zstandard-*.whl')[0]).extractall('/tmp/zstdpy')"
    cat "$@" | PYTHONPATH=/tmp/zstdpy python3 -c "import sys,zstandard;zstandard.ZstdDecompressor().copy_stream(sys.stdin.buffer,sys.stdout.buffer)"
  fi
}
if [ ! -d /tmp/nsite ] && [ -f "$S/nsite.tar.zst" ]; then (cd /tmp && unz "$S/nsite.tar.zst" | tar xf -); fi
if [ ! -d /tmp/vsite ] && [ -f "$S/vsite.c" ]; then (cd /tmp && unz "$S/vsite.a" "$S/vsite.b" "$S/vsite.c" | tar xf -); fi
# a command on PATH: NAME runs MODULE's main() (spawn-safe: a script file, not -c), with
# PYTHONPATH set to SITE when given (vLLM's own site)
entry() {
  local name=$1 module=$2 site=${3:-}
  printf 'import sys\n\nfrom %s import main\n\nif __name__ == "__main__":\n    sys.argv[0] = "%s"\n    sys.exit(main())\n' \
    "$module" "$name" >"/tmp/bin/${name}_main.py"
  printf '#!/bin/sh\n%sexec python3 /tmp/bin/%s_main.py "$@"\n' \
    "${site:+PYTHONPATH=$site }" "$name" >"/tmp/bin/$name"
  chmod +x "/tmp/bin/$name"
}
mkdir -p /tmp/bin
entry vllm vllm.entrypoints.cli.main /tmp/vsite
entry nimble nimble.cli.main
export PATH=/tmp/bin:$PATH PYTHONPATH=/tmp/nsite:$ROOT
