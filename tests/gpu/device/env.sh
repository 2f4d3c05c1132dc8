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
mkdir -p /tmp/bin
cat >/tmp/bin/vllm <<'EOF'
#!/bin/sh
PYTHONPATH=/tmp/vsite exec python3 /tmp/bin/vllm_main.py "$@"
EOF
cat >/tmp/bin/vllm_main.py <<'EOF'
import sys

from vllm.entrypoints.cli.main import main

if __name__ == "__main__":
    sys.argv[0] = "vllm"
    sys.exit(main())
EOF
cat >/tmp/bin/nimble <<'EOF'
#!/bin/sh
exec python3 /tmp/bin/nimble_main.py "$@"
EOF
cat >/tmp/bin/nimble_main.py <<'EOF'
import sys

from nimble.cli.main import main

if __name__ == "__main__":
    sys.argv[0] = "nimble"
    sys.exit(main())
EOF
chmod +x /tmp/bin/vllm /tmp/bin/nimble
export PATH=/tmp/bin:$PATH PYTHONPATH=/tmp/nsite:$ROOT
