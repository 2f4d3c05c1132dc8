#!/usr/bin/env bash
# Build the CPU image with no Docker daemon and no registry, then smoke-test it.
#
#   deploy/build-image.sh            # build, run, check readiness and one chat completion
#
# Needs (Debian): apt-get install mmdebstrap buildah podman   (CI installs them: .ci/run)
# Steps: 1. a Debian bookworm minbase root filesystem with mmdebstrap (cached in
# deploy/.build/), imported as the local base image; 2. `buildah bud --isolation chroot`
# with the host's CA bundle passed in as a build secret (pip inside reaches PyPI);
# 3. `podman --runtime runc run --network host` with explicit ulimits (crun fails on this
# kernel; podman's default limits are refused), poll readiness, one chat completion,
# `podman stop` (SIGTERM drain, exit 0). Writes deploy/.build/image-report.md.
set -euo pipefail
cd "$(dirname "$0")/.."

TAG=${TAG:-localhost/nimble:0.1.0}
BASE=localhost/debian-bookworm-minbase:latest
BUILD=deploy/.build
PORT=${PORT:-18000}
CA=/etc/ssl/certs/ca-certificates.crt
PODMAN=(podman --runtime runc --cgroup-manager cgroupfs --events-backend file)
mkdir -p "$BUILD"
step() { printf '\n==> %s\n' "$*"; }

step "1/4 base root filesystem (Debian bookworm minbase)"
if ! podman image exists "$BASE"; then
  if [ ! -f "$BUILD/rootfs.tar" ]; then
    mmdebstrap --variant=minbase --include=ca-certificates bookworm "$BUILD/rootfs.tar"
  fi
  podman import --change 'CMD ["/bin/bash"]' "$BUILD/rootfs.tar" "$BASE"
fi

step "2/4 build $TAG (buildah, chroot isolation)"
started=$(date +%s)
# docker format: the OCI image format has no HEALTHCHECK (buildah would drop it)
buildah bud --isolation chroot --layers --format docker \
  --secret id=cabundle,src="$CA" \
  --build-arg BASE_IMAGE="$BASE" \
  -f deploy/Containerfile -t "$TAG" .
build_s=$(( $(date +%s) - started ))
size=$(podman image inspect "$TAG" --format '{{.Size}}')
# what the image promises: a health check, a non-root user, a stop signal, OCI labels
config=$(podman image inspect "$TAG")
python3 - "$config" <<'CHECK'
import json, sys
image = json.loads(sys.argv[1])[0]
config = image["Config"]
assert "/v1/health/ready" in " ".join(image["Healthcheck"]["Test"]), image.get("Healthcheck")
assert config["User"] == "10001:10001", config["User"]
assert config["StopSignal"] == "SIGTERM", config.get("StopSignal")
labels = config["Labels"]
assert labels["org.opencontainers.image.version"] and labels["org.opencontainers.image.source"]
assert "/cache" in config["Volumes"], config.get("Volumes")
print("image config: health check, user 10001, SIGTERM, labels, /cache volume")
CHECK

step "3/4 run it and wait for readiness"
name=nimble-smoke-$$
cleanup() { "${PODMAN[@]}" rm -f "$name" >/dev/null 2>&1 || true; }
trap cleanup EXIT
t0=$(python3 -c "import time; print(time.time())")
"${PODMAN[@]}" run -d --name "$name" --network host \
  --ulimit nofile=4096:4096 --ulimit nproc=4096:4096 \
  --read-only --tmpfs /tmp \
  -e NIMBLE_PORT="$PORT" -e NIMBLE_HOST=127.0.0.1 \
  "$TAG" >/dev/null
deadline=$(( $(date +%s) + 300 ))
until curl -fsS "http://127.0.0.1:$PORT/v1/health/ready" >/dev/null 2>&1; do
  if [ "$("${PODMAN[@]}" inspect -f '{{.State.Running}}' "$name")" != "true" ]; then
    "${PODMAN[@]}" logs "$name" | tail -20; echo "container exited" >&2; exit 1
  fi
  [ "$(date +%s)" -lt "$deadline" ] || { "${PODMAN[@]}" logs "$name" | tail -20; exit 1; }
  sleep 0.2
done
cold_s=$(python3 -c "import time; print(round(time.time() - $t0, 1))")
echo "ready after ${cold_s}s"
"${PODMAN[@]}" healthcheck run "$name" && echo "the image's HEALTHCHECK passes inside the container"

step "4/4 one chat completion through the container, then a graceful stop"
answer=$(curl -fsS "http://127.0.0.1:$PORT/v1/chat/completions" -H 'Content-Type: application/json' \
  -d '{"model":"smollm2-135m-instruct","messages":[{"role":"user","content":"Which city is the capital of France?"}],"max_tokens":16,"temperature":0}')
content=$(python3 -c 'import json,sys; print(json.load(sys.stdin)["choices"][0]["message"]["content"])' <<<"$answer")
[ -n "$content" ] || { echo "empty answer: $answer" >&2; exit 1; }
echo "answer: $content"
# the Helm chart's `helm test` pod script, run in the image against this container
"${PYTHON:-.venv/bin/python}" deploy/check_chart.py --helm-test-script "http://127.0.0.1:$PORT/v1" \
  > "$BUILD/helm-test.py"
"${PODMAN[@]}" run --rm --network host --ulimit nofile=4096:4096 --ulimit nproc=4096:4096 \
  --read-only -v "$PWD/$BUILD/helm-test.py:/helm-test.py:ro" --entrypoint python3 \
  "$TAG" /helm-test.py
"${PODMAN[@]}" stop -t 40 "$name" >/dev/null
code=$("${PODMAN[@]}" inspect -f '{{.State.ExitCode}}' "$name")
[ "$code" = 0 ] || { echo "exit code $code after SIGTERM" >&2; exit 1; }

cat > "$BUILD/image-report.md" <<REPORT
# nimble CPU image, $(date -u +%Y-%m-%dT%H:%MZ) on $(uname -m), $(nproc) cores

| | |
|---|---|
| image | \`$TAG\` |
| size | $(( size / 1000000 )) MB |
| build time | ${build_s} s |
| cold start to ready | ${cold_s} s |
| answer to "Which city is the capital of France?" | ${content} |
| exit code after SIGTERM | ${code} |
REPORT
cat "$BUILD/image-report.md"
