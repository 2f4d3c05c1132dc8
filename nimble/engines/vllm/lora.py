"""LoRA adapters in a supervised `vllm serve`: which flags turn them on, what nimble checks
before vLLM sees an adapter, and which name vLLM knows each version of an adapter by.

- vLLM serves LoRA when the model has adapters at start or adapters may come at run time
  (`runtime_adapters`): `--enable-lora --max-loras N --max-lora-rank R`, the start's
  adapters as one `--lora-modules` flag with a JSON value each (`{"name", "path",
  "base_model_name"}`: the `name=path` form breaks on a path with `=` and names no base),
  and `VLLM_ALLOW_RUNTIME_LORA_UPDATING=True` in its environment so that
  `/v1/load_lora_adapter` and `/v1/unload_lora_adapter` exist (only nimble reaches them:
  loopback and nimble's random key). vLLM takes only some ranks (`VLLM_RANKS`): nimble's
  `max_lora_rank` is rounded up to the next one for the flag, and adapters are checked
  against nimble's own value.
- vLLM knows each version of an adapter as `<name>@<sha256 of its weights, 8 hex>`
  (`.2`, `.3` ... when the same weights are loaded again): replacing an adapter loads the
  new version beside the old one, new requests go to the new one, and the old one is
  unloaded from vLLM when its last request has finished.
- Checked before vLLM (`check_adapter`, from the files alone): a PEFT LoRA folder (GGUF
  adapters are llama.cpp's; no DoRA, no modules_to_save: vLLM refuses both), its rank
  within `max_lora_rank`, and, where both are
  safetensors, that the layers it adapts exist in the base model with the same
  dimensions (read from the safetensors headers, no weights loaded).
"""

from __future__ import annotations

import json
import re
import struct
from dataclasses import dataclass
from pathlib import Path

from nimble.errors import EngineError, InvalidRequest, ModelLoadError, ModelNotFound
from nimble.models.adapters import PEFT_CONFIG, AdapterSpec
from nimble.models.spec import ModelSpec
from nimble.types import Task

VLLM_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)  # vLLM 0.11's --max-lora-rank choices
RUNTIME_UPDATES = {"VLLM_ALLOW_RUNTIME_LORA_UPDATING": "True"}
_WEIGHTS = "adapter_model.safetensors"
_HEADER_LIMIT = 100 << 20  # the largest safetensors header read
_LORA_TENSOR = re.compile(
    r"^(?:base_model\.model\.)?(?P<module>.+)\.lora_(?P<ab>[AB])(?:\.\w+)?\.weight$"
)


@dataclass
class Version:
    """One version of an adapter as vLLM knows it."""

    spec: AdapterSpec
    vllm_name: str
    static: bool  # on vLLM's command line (`--lora-modules`), not loaded over HTTP
    inflight: int = 0
    retired: bool = False  # replaced or unloaded: leaves vLLM when `inflight` reaches 0
    gone: bool = False  # not in vLLM any more (unloaded, or its process ended)
    broken: str | None = None  # vLLM refused it again after a restart: why


def vllm_rank(max_lora_rank: int) -> int:
    """The `--max-lora-rank` vLLM takes for nimble's `max_lora_rank`."""
    for rank in VLLM_RANKS:
        if rank >= max_lora_rank:
            return rank
    raise ModelLoadError(
        f"max_lora_rank {max_lora_rank}: vLLM takes adapters of rank {VLLM_RANKS[-1]} at most"
    )


class VllmAdapters:
    """The adapters of one model's vLLM process: current versions by name, and every
    version vLLM holds (a replaced one until its requests end)."""

    def __init__(self, spec: ModelSpec, *, max_loras: int, max_lora_rank: int, runtime: bool):
        generative = bool(spec.tasks & {Task.CHAT, Task.COMPLETION})
        self.enabled = generative and (bool(spec.adapters) or runtime)
        self.max_loras = max_loras
        self.max_lora_rank = max_lora_rank
        self._base = spec
        self._current: dict[str, Version] = {}
        self._held: dict[str, Version] = {}  # by vLLM name
        for adapter in spec.adapters:
            self._add(Version(adapter, self._fresh_name(adapter), static=True))

    # the process

    def check_static(self) -> None:
        """The start's adapters, checked before vLLM starts: one line naming the file."""
        for version in self._current.values():
            try:
                check_adapter(version.spec, self._base, self.max_lora_rank)
            except InvalidRequest as exc:
                raise ModelLoadError(str(exc)) from exc

    def args(self) -> list[str]:
        """vLLM's LoRA flags for a (re)start; forgets what the last process held and the
        versions replaced meanwhile (their requests ended with it)."""
        if not self.enabled:
            return []
        for name, version in list(self._held.items()):
            if version.retired:
                version.gone = True
                del self._held[name]
        args = ["--enable-lora", "--max-loras", str(self.max_loras)]
        args += ["--max-lora-rank", str(vllm_rank(self.max_lora_rank))]
        modules = [
            json.dumps(
                {"name": v.vllm_name, "path": str(v.spec.path), "base_model_name": self._base.id}
            )
            for v in self._held.values()
            if v.static
        ]
        return [*args, "--lora-modules", *modules] if modules else args

    def env(self) -> dict[str, str]:
        return dict(RUNTIME_UPDATES) if self.enabled else {}

    def to_reload(self) -> list[Version]:
        """The versions loaded over HTTP, which a restarted vLLM does not have yet."""
        return [v for v in self._held.values() if not v.static]

    # loading and unloading

    def prepare(self, adapter: AdapterSpec) -> Version:
        """A new version of `adapter`, checked, not yet in vLLM."""
        if not self.enabled:
            raise InvalidRequest(
                f"model `{self._base.id}`: vLLM was started without LoRA (set runtime_adapters)",
                param="lora_path",
            )
        check_adapter(adapter, self._base, self.max_lora_rank)
        return Version(adapter, self._fresh_name(adapter), static=False)

    def install(self, version: Version) -> Version | None:
        """`version` (loaded into vLLM) serves its name from now on; returns the version it
        replaced when that one can leave vLLM at once (no requests)."""
        old = self._current.get(version.spec.name)
        self._add(version)
        return self._retire(old) if old is not None else None

    def remove(self, name: str) -> Version | None:
        """`name` is served no more; returns its version when it can leave vLLM at once."""
        version = self._current.pop(name, None)
        return self._retire(version) if version is not None else None

    def forget(self, version: Version) -> None:
        """`version` left vLLM."""
        version.gone = True
        if self._held.get(version.vllm_name) is version:
            del self._held[version.vllm_name]

    # requests

    def acquire(self, name: str) -> Version:
        """The current version of adapter `name`, counted in flight (`release` after)."""
        version = self._current.get(name)
        if version is None:
            raise ModelNotFound(f"adapter `{name}` is not loaded in vLLM", param="model")
        if version.broken is not None:
            raise EngineError(
                f"adapter `{name}` could not be loaded again after vLLM restarted: {version.broken}"
            )
        version.inflight += 1
        return version

    def release(self, version: Version) -> bool:
        """One request on `version` ended; True: it is retired and now idle (unload it)."""
        version.inflight -= 1
        return version.retired and version.inflight == 0 and not version.gone

    # helpers

    def _add(self, version: Version) -> None:
        self._current[version.spec.name] = version
        self._held[version.vllm_name] = version

    def _retire(self, version: Version) -> Version | None:
        version.retired = True
        return version if version.inflight == 0 and not version.gone else None

    def _fresh_name(self, adapter: AdapterSpec) -> str:
        name = f"{adapter.name}@{adapter.sha256[:8]}"
        candidate, copy = name, 1
        while candidate in self._held:
            copy += 1
            candidate = f"{name}.{copy}"
        return candidate


# checks from the files alone


def check_adapter(adapter: AdapterSpec, base: ModelSpec, max_rank: int) -> None:
    """Refuse (InvalidRequest naming the file) an adapter vLLM would refuse or misapply:
    a GGUF file, a rank over `max_rank`, layers the base lacks or has in other sizes."""
    if adapter.format != "peft":
        raise InvalidRequest(
            f"{adapter.path}: a GGUF adapter; the vllm engine takes PEFT adapter folders "
            f"({PEFT_CONFIG} and {_WEIGHTS})",
            param="lora_path",
        )
    config_path = adapter.path / PEFT_CONFIG
    try:
        config = json.loads(config_path.read_text())
    except (OSError, ValueError) as exc:
        raise InvalidRequest(
            f"{config_path}: not a readable PEFT config: {exc}", param="lora_path"
        ) from exc
    if not isinstance(config, dict):
        raise InvalidRequest(f"{config_path}: not a PEFT config (a JSON object)", param="lora_path")
    kind = str(config.get("peft_type", "LORA"))
    if kind.upper() != "LORA":
        raise InvalidRequest(
            f"{config_path}: a {kind} adapter; vLLM serves LoRA adapters only", param="lora_path"
        )
    if config.get("use_dora"):
        raise InvalidRequest(
            f"{config_path}: a DoRA adapter (use_dora); vLLM serves plain LoRA", param="lora_path"
        )
    saved_raw = config.get("modules_to_save") or []
    saved = {saved_raw} if isinstance(saved_raw, str) else {str(m) for m in saved_raw}
    saved -= {"classifier", "score"}
    if saved:
        raise InvalidRequest(
            f"{config_path}: modules_to_save ({', '.join(sorted(saved))}): vLLM serves adapters "
            "of LoRA layers only",
            param="lora_path",
        )
    rank = config.get("r")
    if isinstance(rank, int) and rank > max_rank:
        raise InvalidRequest(
            f"{config_path}: LoRA rank {rank} is over max_lora_rank {max_rank} "
            "(--max-lora-rank, NIMBLE_MAX_LORA_RANK)",
            param="lora_path",
        )
    _check_shapes(adapter.path / _WEIGHTS, base)


def _check_shapes(weights: Path, base: ModelSpec) -> None:
    adapted = _adapted_layers(tensor_shapes(weights))
    if not adapted:
        return  # not safetensors, or nothing LoRA-shaped in it: vLLM decides
    layers = _base_layers(base.weights)
    if not layers:
        return  # the base's weights are not safetensors: vLLM decides
    found = 0
    for module, (size_in, size_out) in sorted(adapted.items()):
        sizes = layers.get(_key(module))
        if sizes is None:
            continue
        found += 1
        if not any(size_in in (None, i) and size_out in (None, o) for i, o in sizes):
            i, o = sizes[0]
            raise InvalidRequest(
                f"{weights}: {module} is {size_in} -> {size_out} in the adapter but "
                f"{i} -> {o} in model `{base.id}` (an adapter of another model?)",
                param="lora_path",
            )
    if not found:
        some = ", ".join(sorted(adapted)[:3])
        raise InvalidRequest(
            f"{weights}: model `{base.id}` has none of the layers this adapter adapts "
            f"({some} ...): an adapter of another architecture?",
            param="lora_path",
        )


def _adapted_layers(shapes: dict[str, list[int]]) -> dict[str, tuple[int | None, int | None]]:
    """Layer -> (input size from lora_A, output size from lora_B)."""
    layers: dict[str, tuple[int | None, int | None]] = {}
    for name, shape in shapes.items():
        match = _LORA_TENSOR.match(name)
        if match is None or len(shape) != 2:
            continue
        size_in, size_out = layers.get(match["module"], (None, None))
        if match["ab"] == "A":
            size_in = shape[1]  # [r, in]
        else:
            size_out = shape[0]  # [out, r]
        layers[match["module"]] = (size_in, size_out)
    return layers


def _base_layers(folder: Path) -> dict[str, list[tuple[int, int]]]:
    """The base's 2-D weights by their last four name parts (`layers.3.mlp.up_proj`:
    multimodal and renamed checkpoints prefix them differently) -> (in, out) sizes."""
    files = sorted(folder.glob("*.safetensors")) if folder.is_dir() else [folder]
    layers: dict[str, list[tuple[int, int]]] = {}
    for path in files:
        for name, shape in tensor_shapes(path).items():
            if name.endswith(".weight") and len(shape) == 2:
                layers.setdefault(_key(name[: -len(".weight")]), []).append((shape[1], shape[0]))
    return layers


def _key(module: str) -> str:
    return ".".join(module.split(".")[-4:])


def tensor_shapes(path: Path) -> dict[str, list[int]]:
    """Tensor name -> shape from a safetensors file's header ({}: not one)."""
    try:
        with path.open("rb") as file:
            (length,) = struct.unpack("<Q", file.read(8))
            if not 2 <= length <= _HEADER_LIMIT:
                return {}
            header = json.loads(file.read(length))
    except (OSError, ValueError, struct.error):
        return {}
    if not isinstance(header, dict):
        return {}
    return {
        name: [int(n) for n in entry["shape"]]
        for name, entry in header.items()
        if name != "__metadata__" and isinstance(entry, dict) and _ints(entry.get("shape"))
    }


def _ints(value: object) -> bool:
    return isinstance(value, list) and all(isinstance(n, int) for n in value)
