#!/usr/bin/env bash
# Build the CPU image with no Docker daemon and no registry, then smoke-test it
# (--cuda: the CUDA/vLLM image, built and checked without a GPU).
set -euo pipefail
cd "$(dirname "$0")/.."

usage() {
  cat <<'USAGE'
Usage: deploy/build-image.sh [--cuda] [--help]

Builds deploy/Containerfile (the CPU image, default models inside) with no Docker daemon and
no image registry, runs it, and checks it; CI runs this (`make image`). As root.
The image is tagged localhost/nimble:<version>, the name the Helm chart and the Compose file
default to; `make push REGISTRY=...` puts it into a registry (docs/deploy.md).

--cuda (`make image-cuda`): builds deploy/Containerfile.cuda instead, tagged
localhost/nimble:<version>-cuda, from its CUDA base image (docker.io/nvidia/cuda: the
registry must be reachable), checks the image config, and that vLLM, torch, NVML's
bindings and nimble import inside it (no GPU needed); it does not serve a model.

Prerequisites (Debian 12; this script installs nothing):
  apt-get install mmdebstrap buildah podman runc
and the network to the Debian mirror (base root filesystem, apt inside the build) and to
PyPI (pip inside the build, through the host's CA bundle /etc/ssl/certs/ca-certificates.crt).

Steps:
  1. base root filesystem: mmdebstrap --variant=minbase bookworm, cached as
     deploy/.build/rootfs.tar, imported as localhost/debian-bookworm-minbase
  2. buildah bud --isolation chroot --format docker (docker format: OCI drops HEALTHCHECK),
     the CA bundle passed as the build secret `cabundle`; checks the image config
  3. podman --runtime runc run --network host --ulimit nofile=4096:4096
     --ulimit nproc=4096:4096 --read-only (crun fails on this kernel; podman's default
     limits are refused): the secure default is checked (no keys: refuses to start), then
     readiness is polled (timeout 300 s) and the cold start from `podman run` is measured
  4. one chat completion from the host, the Helm chart's test script inside the image,
     `podman stop` (SIGTERM drain) must end with exit code 0
  Results (size, build time, cold start): deploy/.build/image-report.md

Environment:
  TAG=localhost/nimble:<version>   image name (with --cuda: localhost/nimble:<version>-cuda)
  PORT=<free port>                 port the smoke-test container listens on (host network)
  NO_CACHE=1                       rebuild everything: base root filesystem and all layers
  PYTHON=.venv/bin/python          Python with the chart tooling (deploy/check_chart.py)
USAGE
}
CUDA=0
case "${1:-}" in
  -h | --help) usage; exit 0 ;;
  --cuda) CUDA=1 ;;
  "") ;;
  *) usage >&2; exit 2 ;;
esac

for tool in mmdebstrap buildah podman runc curl python3; do
  command -v "$tool" >/dev/null || { echo "missing: $tool (see --help)" >&2; exit 1; }
done

VERSION=$(python3 -c "import tomllib; print(tomllib.load(open('pyproject.toml', 'rb'))['project']['version'])")
REVISION=$(git rev-parse --short HEAD 2>/dev/null || echo unknown)
BASE=localhost/debian-bookworm-minbase:latest
BUILD=deploy/.build
PORT=${PORT:-$(python3 -c "import socket; s = socket.socket(); s.bind(('127.0.0.1', 0)); print(s.getsockname()[1])")}
CA=/etc/ssl/certs/ca-certificates.crt
# runc: crun fails on this kernel; cgroupfs and a file event log: no systemd needed
PODMAN=(podman --runtime runc --cgroup-manager cgroupfs --events-backend file)
# podman's default ulimits are refused here
LIMITS=(--ulimit nofile=4096:4096 --ulimit nproc=4096:4096)
mkdir -p "$BUILD"
now() { date +%s.%N; }
since() { python3 -c "import sys; print(round(float(sys.argv[2]) - float(sys.argv[1]), 1))" "$1" "$(now)"; }
step() { printf '\n==> %s\n' "$*"; }
t_all=$(now)

if [ "$CUDA" = 1 ]; then
  TAG=${TAG:-localhost/nimble:$VERSION-cuda}
  step "1/2 build $TAG from deploy/Containerfile.cuda (buildah, chroot isolation)"
  t=$(now)
  cache=(--layers)
  [ "${NO_CACHE:-}" = 1 ] && cache=(--no-cache)
  buildah bud --isolation chroot "${cache[@]}" --format docker \
    --secret id=cabundle,src="$CA" \
    --build-arg VERSION="$VERSION" --build-arg REVISION="$REVISION" --build-arg IMAGE="$TAG" \
    -f deploy/Containerfile.cuda -t "$TAG" .
  build_s=$(since "$t")
  size=$(podman image inspect "$TAG" --format '{{.Size}}')
  step "2/2 check $TAG: its config, and what must import inside it (no GPU needed)"
  python3 - "$(podman image inspect "$TAG")" "$VERSION" "$TAG" <<'CHECK'
import json, sys
config = json.loads(sys.argv[1])[0]["Config"]
env = dict(item.split("=", 1) for item in config["Env"])
assert config["User"] == "10001:10001", config["User"]
assert config["Labels"]["org.opencontainers.image.version"] == sys.argv[2], config["Labels"]
assert env["NIMBLE_ENGINE"] == "vllm" and "," not in env["NIMBLE_MODEL"], env
assert env["NIMBLE_IMAGE"] == sys.argv[3], env["NIMBLE_IMAGE"]
print(f"image config: user 10001, engine vllm, one model ({env['NIMBLE_MODEL']}), NIMBLE_IMAGE {sys.argv[3]}")
CHECK
  "${PODMAN[@]}" run --rm --network none "${LIMITS[@]}" --no-healthcheck --read-only \
    --entrypoint python3.11 "$TAG" -c \
    'import vllm, torch, pynvml, nimble; print("vllm", vllm.__version__, "torch", torch.__version__, "nimble", nimble.__version__)'
  cat > "$BUILD/image-cuda-report.md" <<REPORT
# nimble CUDA image, $(date -u +%Y-%m-%dT%H:%MZ) on $(hostname)

| | |
|---|---|
| image | \`$TAG\` (revision $REVISION) |
| size (uncompressed) | $(( size / 1000000 )) MB |
| image build | ${build_s} s |
| whole script | $(since "$t_all") s |
REPORT
  cat "$BUILD/image-cuda-report.md"
  exit 0
fi

TAG=${TAG:-localhost/nimble:$VERSION}

step "1/4 base root filesystem (Debian bookworm minbase)"
t=$(now)
if [ "${NO_CACHE:-}" = 1 ]; then
  rm -f "$BUILD/rootfs.tar"
  podman rmi -f "$TAG" "$BASE" >/dev/null 2>&1 || true
fi
if ! podman image exists "$BASE"; then
  if [ ! -f "$BUILD/rootfs.tar" ]; then
    mmdebstrap --variant=minbase --format=tar --include=ca-certificates bookworm "$BUILD/rootfs.tar.part"
    mv "$BUILD/rootfs.tar.part" "$BUILD/rootfs.tar"
  fi
  podman import --change 'CMD ["/bin/bash"]' "$BUILD/rootfs.tar" "$BASE"
else
  echo "cached: $BASE"
fi
rootfs_s=$(since "$t")

step "2/4 build $TAG (buildah, chroot isolation)"
t=$(now)
cache=(--layers)
[ "${NO_CACHE:-}" = 1 ] && cache=(--no-cache)
# docker format: the OCI image format has no HEALTHCHECK (buildah would drop it)
buildah bud --isolation chroot "${cache[@]}" --format docker \
  --secret id=cabundle,src="$CA" \
  --build-arg BASE_IMAGE="$BASE" --build-arg VERSION="$VERSION" --build-arg REVISION="$REVISION" \
  --build-arg IMAGE="$TAG" -f deploy/Containerfile -t "$TAG" .
build_s=$(since "$t")
size=$(podman image inspect "$TAG" --format '{{.Size}}')
# what the image promises: a health check, a non-root user, a stop signal, OCI labels
python3 - "$(podman image inspect "$TAG")" "$VERSION" "$TAG" <<'CHECK'
import json, sys
image = json.loads(sys.argv[1])[0]
config = image["Config"]
# the deployment record names the image by the tag it was built under
assert f"NIMBLE_IMAGE={sys.argv[3]}" in config["Env"], config["Env"]
assert "/v1/health/ready" in " ".join(image["Healthcheck"]["Test"]), image.get("Healthcheck")
assert config["User"] == "10001:10001", config["User"]
assert config["StopSignal"] == "SIGTERM", config.get("StopSignal")
labels = config["Labels"]
assert labels["org.opencontainers.image.version"] == sys.argv[2], labels
assert labels["org.opencontainers.image.source"].startswith("https://"), labels
assert "/cache" in config["Volumes"], config.get("Volumes")
assert "8000/tcp" in config["ExposedPorts"], config.get("ExposedPorts")
print("image config: health check, user 10001, SIGTERM, labels, /cache volume, port 8000, NIMBLE_IMAGE")
CHECK

step "3/4 run it (runc, host network, read-only root) and wait for readiness"
name=nimble-smoke-$$
cleanup() {
  # one name per call: podman 4.3's `rm -f present absent` removes nothing and says rc 0
  for gone in "$name" "$name-nokeys"; do
    "${PODMAN[@]}" rm -f "$gone" >/dev/null 2>&1 || true
  done
}
trap cleanup EXIT
# the secure default: on 0.0.0.0 without API keys the image refuses to start
if out=$(timeout 120 "${PODMAN[@]}" run --name "$name-nokeys" --network host "${LIMITS[@]}" \
  --no-healthcheck --read-only -e NIMBLE_PORT="$PORT" "$TAG" 2>&1); then
  echo "the image started without API keys on 0.0.0.0: $out" >&2; exit 1
fi
grep -q "refusing to listen on 0.0.0.0 without API keys" <<<"$out" \
  || { echo "unexpected refusal: $out" >&2; exit 1; }
echo "without API keys it refuses to listen on 0.0.0.0 (as it should)"
"${PODMAN[@]}" rm -f "$name-nokeys" >/dev/null
# no systemd here: podman logs "unable to get systemd connection to add healthchecks" (it
# cannot set up the HEALTHCHECK's timer; harmless, podman 4.3 does so even with
# --health-interval disable); `podman healthcheck run` below runs the image's check by hand.
# The smoke test listens on loopback only (host network): no keys needed there
t=$(now)
"${PODMAN[@]}" run -d --name "$name" --network host "${LIMITS[@]}" --read-only \
  -e NIMBLE_PORT="$PORT" -e NIMBLE_HOST=127.0.0.1 "$TAG" >/dev/null
deadline=$(( $(date +%s) + 300 ))
until curl -fsS "http://127.0.0.1:$PORT/v1/health/ready" >/dev/null 2>&1; do
  if [ "$("${PODMAN[@]}" inspect -f '{{.State.Running}}' "$name")" != "true" ]; then
    "${PODMAN[@]}" logs "$name" | tail -20; echo "container exited" >&2; exit 1
  fi
  if [ "$(date +%s)" -ge "$deadline" ]; then
    "${PODMAN[@]}" logs "$name" | tail -20; echo "not ready after 300 s" >&2; exit 1
  fi
  sleep 0.2
done
cold_s=$(since "$t")
echo "ready after ${cold_s}s on port $PORT"
"${PODMAN[@]}" healthcheck run "$name" && echo "the image's HEALTHCHECK passes inside the container"

step "4/4 one chat completion through the container, then a graceful stop"
answer=$(curl -fsS "http://127.0.0.1:$PORT/v1/chat/completions" -H 'Content-Type: application/json' \
  -d '{"model":"smollm2-135m-instruct","messages":[{"role":"user","content":"Which city is the capital of France?"}],"max_tokens":16,"temperature":0}') \
  || { "${PODMAN[@]}" logs "$name" | tail -20; exit 1; }
content=$(python3 -c 'import json,sys; print(json.load(sys.stdin)["choices"][0]["message"]["content"])' <<<"$answer")
[ -n "$content" ] || { echo "empty answer: $answer" >&2; exit 1; }
echo "answer: $content"
# the Helm chart's `helm test` pod script, run in the image against this container
"${PYTHON:-.venv/bin/python}" deploy/check_chart.py --helm-test-script "http://127.0.0.1:$PORT/v1" \
  > "$BUILD/helm-test.py"
"${PODMAN[@]}" run --rm --network host "${LIMITS[@]}" --no-healthcheck \
  --read-only -v "$PWD/$BUILD/helm-test.py:/helm-test.py:ro" --entrypoint python3 \
  "$TAG" /helm-test.py
# the PII rail's libraries and spaCy's model ship in the image and need no network at all
pii=$("${PODMAN[@]}" run --rm --network none "${LIMITS[@]}" --no-healthcheck --read-only \
  --entrypoint python3 "$TAG" -c 'from nimble.guardrails.pii import PiiRedactor as R
r = R(); r.load(); print(r.redact("Write to jane.doe@example.com or call +1 415 555 0100"))')
[ "$pii" = "Write to <EMAIL_ADDRESS> or call <PHONE_NUMBER>" ] \
  || { echo "the PII rail does not redact in the image: $pii" >&2; exit 1; }
echo "PII rail, offline in the image: $pii"
"${PODMAN[@]}" stop -t 40 "$name" >/dev/null
code=$("${PODMAN[@]}" inspect -f '{{.State.ExitCode}}' "$name")
[ "$code" = 0 ] || { "${PODMAN[@]}" logs "$name" | tail -20; echo "exit code $code after SIGTERM" >&2; exit 1; }
echo "stopped: exit code 0 after SIGTERM"

cat > "$BUILD/image-report.md" <<REPORT
# nimble CPU image, $(date -u +%Y-%m-%dT%H:%MZ) on $(hostname), $(uname -m), $(nproc) cores

| | |
|---|---|
| image | \`$TAG\` (revision $REVISION) |
| size (uncompressed, \`podman image inspect\`) | $(( size / 1000000 )) MB |
| base root filesystem | ${rootfs_s} s$([ "${NO_CACHE:-}" = 1 ] || echo " (reused when cached)") |
| image build | ${build_s} s$([ "${NO_CACHE:-}" = 1 ] && echo " (no layer cache)" || echo " (layer cache on)") |
| cold start, \`podman run\` to ready | ${cold_s} s |
| answer to "Which city is the capital of France?" | ${content} |
| PII rail, no network | ${pii} |
| exit code after SIGTERM | ${code} |
| whole script | $(since "$t_all") s |
REPORT
cat "$BUILD/image-report.md"
