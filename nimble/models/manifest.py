"""Model manifests: a model, the profiles it can run as, and the files each profile needs.

A manifest is YAML validated by the pydantic models below; a broken one is refused with
every problem on its own line (`load_manifest`). A profile's id is the sha256 of its
content (engine, precision, parallelism, hardware needs, files, engine settings), so the
same profile has the same id on every machine, and any change to it gives a new id.
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from typing import Any, Literal, get_args

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from nimble.errors import ConfigError
from nimble.types import ClassifierTraits, EmbeddingTraits

EngineName = Literal["llamacpp", "vllm", "transformers", "sentence_transformers", "onnx"]
ENGINE_NAMES: frozenset[str] = frozenset(get_args(EngineName))
TaskName = Literal["chat", "completion", "embedding", "rerank", "classify"]
GPU_ENGINES: frozenset[str] = frozenset({"vllm"})
# engines that can use a GPU when there is one and run on CPU otherwise
ANY_DEVICE_ENGINES: frozenset[str] = frozenset({"transformers", "sentence_transformers"})
# engines that apply a PEFT LoRA folder over a model (a manifest's `lora`)
LORA_ENGINES: frozenset[str] = frozenset({"vllm", "transformers"})
SOURCE_SCHEMES = ("file://", "hf://", "pypi://", "https://", "http://")
_HF = re.compile(r"^hf://(?P<repo>[\w.-]+/[\w.-]+)(?:@(?P<rev>[\w.\-/]+?))?(?:/(?P<path>.+))?$")
_SHA256 = r"^[0-9a-f]{64}$"
_ID = r"^[a-z0-9][a-z0-9._-]*$"


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class FileRef(_Frozen):
    """One file of a profile: where it comes from and what its content must be."""

    name: str = Field(
        description="Path inside a model folder, e.g. `model.gguf` (`.`: the source is a "
        "whole local folder)."
    )
    source: str = Field(
        description="file:// URI or absolute path, hf://org/repo@revision/path, "
        "pypi://package/path (a file inside an installed package), or https://."
    )
    sha256: str | None = Field(
        default=None,
        pattern=_SHA256,
        description="Expected sha256 (lowercase hex). Unset: the hash is recorded on first "
        "download and the file is reported as unverified.",
    )
    size_bytes: int | None = Field(default=None, ge=0)

    @field_validator("name")
    @classmethod
    def _relative(cls, name: str) -> str:
        parts = Path(name).parts
        if name == ".":
            return name
        if not parts or Path(name).is_absolute() or ".." in parts:
            raise ValueError(f"{name!r} must be a relative path inside the model folder")
        return name

    @field_validator("source")
    @classmethod
    def _known_scheme(cls, source: str) -> str:
        if source.startswith("/") or source.startswith(SOURCE_SCHEMES[0]):
            return source
        if source.startswith("hf://"):
            match = _HF.match(source)
            if match is None or not match["path"]:
                raise ValueError(f"{source!r}: expected hf://org/repo@revision/path/in/repo")
            return source
        if source.startswith("pypi://"):
            if "/" not in source.removeprefix("pypi://").strip("/"):
                raise ValueError(f"{source!r}: expected pypi://package/path/in/package")
            return source
        if source.startswith(SOURCE_SCHEMES[3:]):
            return source
        raise ValueError(
            f"{source!r}: unknown source (use an absolute path, {', '.join(SOURCE_SCHEMES)})"
        )


def parse_hf(source: str) -> tuple[str, str, str]:
    """`hf://org/repo@revision/path` → (repo id, revision (default `main`), path)."""
    match = _HF.match(source)
    if match is None or not match["path"]:
        raise ValueError(f"{source!r}: expected hf://org/repo@revision/path")
    return match["repo"], match["rev"] or "main", match["path"]


class GpuNeeds(_Frozen):
    vendor: Literal["nvidia"] = "nvidia"
    count: int = Field(default=1, ge=1, description="GPUs the profile uses.")
    min_memory_gb: float = Field(gt=0, description="Memory each GPU must have (GB).")
    min_compute_capability: float | None = Field(
        default=None, description="e.g. 8.0 for Ampere, 8.9 for FP8 on Ada, 9.0 for Hopper."
    )
    names: tuple[str, ...] = Field(
        default=(), description="GPU names the profile is built for (substring match); empty: any."
    )


class HardwareNeeds(_Frozen):
    gpu: GpuNeeds | None = Field(default=None, description="Unset: a CPU profile.")
    cpu_features: tuple[str, ...] = Field(
        default=(), description="CPU flags as /proc/cpuinfo names them (avx2, avx512f...)."
    )
    min_ram_gb: float = Field(default=0, ge=0)

    @field_validator("cpu_features")
    @classmethod
    def _lower(cls, flags: tuple[str, ...]) -> tuple[str, ...]:
        return tuple(flag.lower() for flag in flags)


class EngineSettings(_Frozen):
    context_length: int | None = Field(
        default=None, ge=16, description="Context window the profile serves (tokens)."
    )
    max_batch_size: int | None = Field(
        default=None, ge=1, description="Sequences run at once (vLLM max_num_seqs, slots)."
    )
    max_batched_tokens: int | None = Field(default=None, ge=1)
    extra: dict[str, str | int | float | bool] = Field(
        default_factory=dict, description="Engine-specific settings passed as they are."
    )


class Profile(_Frozen):
    """One way to run a model: an engine, a precision, hardware needs and files."""

    name: str = Field(
        default="",
        description="Readable name; default `<engine>-<precision>-cpu` or "
        "`<engine>-<precision>-tp<N>`.",
    )
    engine: EngineName
    precision: str = Field(description="bf16, fp16, fp8, int8, q4_1, q4_k_m, awq-int4...")
    tensor_parallel_size: int = Field(default=1, ge=1)
    hardware: HardwareNeeds = Field(default_factory=HardwareNeeds)
    weights_gb: float | None = Field(
        default=None, gt=0, description="Memory the weights take once loaded (GB)."
    )
    files: tuple[FileRef, ...] = Field(min_length=1)
    settings: EngineSettings = Field(default_factory=EngineSettings)

    @model_validator(mode="after")
    def _consistent(self) -> Profile:
        gpu = self.hardware.gpu
        if self.engine in GPU_ENGINES and gpu is None:
            raise ValueError(f"engine {self.engine} needs a GPU: set hardware.gpu")
        if self.engine == "llamacpp" and not any(f.name.endswith(".gguf") for f in self.files):
            raise ValueError("a llamacpp profile needs a .gguf file")
        if gpu is not None and self.tensor_parallel_size > gpu.count:
            raise ValueError(
                f"tensor_parallel_size {self.tensor_parallel_size} needs as many GPUs "
                f"(hardware.gpu.count is {gpu.count})"
            )
        names = [f.name for f in self.files]
        if len(set(names)) != len(names):
            raise ValueError("two files with the same name")
        if not self.name:
            object.__setattr__(self, "name", self.default_name())
        return self

    def default_name(self) -> str:
        gpu = self.hardware.gpu
        where = "cpu" if gpu is None else f"tp{self.tensor_parallel_size}"
        return f"{self.engine}-{self.precision.lower()}-{where}"

    @property
    def id(self) -> str:
        content = self.model_dump(mode="json", exclude={"name"})
        return hashlib.sha256(json.dumps(content, sort_keys=True).encode()).hexdigest()

    @property
    def uses_gpu(self) -> bool:
        return self.hardware.gpu is not None

    @property
    def weights_bytes(self) -> int | None:
        if self.weights_gb is not None:
            return int(self.weights_gb * 1e9)
        sizes = [f.size_bytes for f in self.files]
        return sum(s for s in sizes if s is not None) if all(sizes) else None


class EmbeddingOptions(_Frozen):
    """How an embedding model wants its inputs, and which sizes its vectors may take."""

    query_prefix: str = Field(
        default="", description="Put before queries (input_type=query), e.g. `query: `."
    )
    passage_prefix: str = Field(
        default="", description="Put before passages (input_type=passage), e.g. `passage: `."
    )
    input_type_required: bool = Field(
        default=False,
        description="An asymmetric model: requests must say input_type (400 otherwise).",
    )
    dimensions: int | None = Field(default=None, ge=1, description="Size of its vectors.")
    matryoshka_dimensions: tuple[int, ...] = Field(
        default=(),
        description="Sizes the vectors may be cut to (trained matryoshka-style); empty: none.",
    )

    def traits(self) -> EmbeddingTraits:
        return EmbeddingTraits(**self.model_dump())


class ClassifierOptions(_Frozen):
    """How a sequence classifier's labels read, for /v1/classify and /v1/moderations."""

    labels: tuple[str, ...] = Field(
        default=(),
        description="Names of the classes in index order, where the model's config.json only "
        "says LABEL_0, LABEL_1... (must match its number of labels); empty: its id2label.",
    )
    safe_labels: tuple[str, ...] = Field(
        default=(),
        description="Labels that never flag an input in /v1/moderations (benign, safe); empty: "
        "the label of class 0 for a single-label model, none for a multi-label one.",
    )
    threshold: float = Field(
        default=0.5,
        gt=0,
        le=1,
        description="A label other than the safe ones flags an input at this probability or above.",
    )

    def traits(self) -> ClassifierTraits:
        return ClassifierTraits(self.labels, self.safe_labels, self.threshold)


class ModelManifest(_Frozen):
    """A model and all the profiles it can run as."""

    id: str = Field(pattern=_ID, description="The served model id.")
    family: str = ""
    description: str = ""
    license: str = ""
    tasks: tuple[TaskName, ...] = Field(min_length=1)
    context_length: int | None = Field(
        default=None, ge=16, description="Trained context window (tokens); unset: unknown."
    )
    kv_bytes_per_token: int | None = Field(
        default=None,
        ge=1,
        description="KV cache bytes per token at 16-bit (2 x layers x kv heads x head dim x 2); "
        "unset: memory for context is not estimated.",
    )
    engine_order: tuple[EngineName, ...] = Field(
        default=("vllm", "transformers", "sentence_transformers", "llamacpp", "onnx"),
        description="Preferred engines, first best (GPU profiles still come before CPU ones).",
    )
    install_hint: str = Field(default="", description="How to get files that ship in packages.")
    embedding: EmbeddingOptions | None = Field(
        default=None, description="Embedding models: prefixes per input type, vector sizes."
    )
    tool_parser: str | None = Field(
        default=None,
        description="How the model writes tool calls (hermes, llama3_json, mistral, pythonic); "
        "a profile's `settings.extra.tool_parser` and the `tool_parser` setting override it.",
    )
    reasoning_parser: str | None = Field(
        default=None,
        description="How the model marks its thinking (deepseek_r1, qwen3): chat answers carry "
        "it in `reasoning_content`; a profile's `settings.extra.reasoning_parser` and the "
        "`reasoning_parser` setting override it. Unset: none (thinking stays in the answer).",
    )
    classifier: ClassifierOptions | None = Field(
        default=None,
        description="Sequence classifiers (task classify): label names, the labels that are "
        "safe, and the threshold at which another label flags an input in /v1/moderations.",
    )
    guard_format: str | None = Field(
        default=None,
        description="A generative guard model's prompt and verdict format (llama-guard-3, "
        "llama-guard-3-1b, nemoguard-content-safety): /v1/moderations asks it with that prompt "
        "and reads its verdict.",
    )
    lora: str | None = Field(
        default=None,
        description="A folder among each profile's files (`lora/adapter_config.json`...) that "
        "holds a PEFT LoRA adapter over the others: the model is served under its id as that "
        "adapter over its base, which is served as `<id>-base` (vLLM and transformers "
        "profiles only).",
    )
    remote_code: bool = Field(
        default=False,
        description="The model needs Python code from its own repository (transformers' "
        "`trust_remote_code`). nimble does not run such code: the profiles are listed, and "
        "none is runnable.",
    )
    profiles: tuple[Profile, ...] = Field(min_length=1)

    @model_validator(mode="after")
    def _lora_in_every_profile(self) -> ModelManifest:
        if self.lora is None:
            return self
        for profile in self.profiles:
            if profile.engine not in LORA_ENGINES:
                raise ValueError(
                    f"profile {profile.name}: the {profile.engine} engine takes no PEFT adapter "
                    f"(`lora` needs {' or '.join(sorted(LORA_ENGINES))})"
                )
            if f"{self.lora}/adapter_config.json" not in {f.name for f in profile.files}:
                raise ValueError(
                    f"profile {profile.name}: no {self.lora}/adapter_config.json among its files"
                )
        return self

    @model_validator(mode="after")
    def _unique_profiles(self) -> ModelManifest:
        for what, values in (
            ("name", [p.name for p in self.profiles]),
            ("id", [p.id for p in self.profiles]),
        ):
            seen: set[str] = set()
            for value in values:
                if value in seen:
                    raise ValueError(f"two profiles with the same {what} {value!r}")
                seen.add(value)
        return self

    def profile(self, key: str) -> Profile:
        """A profile by name, id, or unique id prefix (8 characters or more)."""
        for profile in self.profiles:
            if key in (profile.name, profile.id):
                return profile
        matches = [p for p in self.profiles if len(key) >= 8 and p.id.startswith(key)]
        if len(matches) == 1:
            return matches[0]
        known = ", ".join(p.name for p in self.profiles)
        raise ConfigError(f"model {self.id} has no profile {key!r} (profiles: {known})")


def parse_manifest(data: Any, origin: str) -> ModelManifest:
    """Validate one manifest; ConfigError lists every problem with its place in the file."""
    try:
        return ModelManifest.model_validate(data)
    except ValidationError as exc:
        lines = [
            f"  {'.'.join(str(p) for p in err['loc']) or '(top)'}: {err['msg']}"
            for err in exc.errors()
        ]
        raise ConfigError(f"{origin}: invalid model manifest:\n" + "\n".join(lines)) from None


def load_manifest(path: Path) -> ModelManifest:
    try:
        data = yaml.safe_load(path.read_text())
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read model manifest: {exc.strerror}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from None
    return parse_manifest(data, str(path))
