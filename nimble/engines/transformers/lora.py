"""peft's side of the transformers engine's LoRA adapters (`adapters.py` is the engine's).

- `read` (a worker thread): a PEFT folder's config and weights, plain LoRA only. A GGUF
  adapter (llama.cpp's), DoRA and the other LoRA variants, `modules_to_save` and trainable
  tokens are refused in one line naming the folder.
- `Lora` (the scheduler thread, between two forward passes): injects an adapter's layers
  and weights into the engine's own model under an internal key (peft's
  `inject_adapter_in_model` and `set_peft_model_state_dict`), and deletes them. One that
  does not fit (module names, dimensions, layer count) is taken out again and refused.
  A layer left with no adapter is unwrapped back to the plain module, so a model whose
  adapters are all gone is the model it was.
- Mixed batches: before each forward pass the scheduler names each row's adapter key
  (`__base__`: none) and one forward pre-hook per LoRA layer hands that list to peft's
  mixed-batch path (the `adapter_names` argument of its layers): a base row gets exactly
  the base layer's output, an adapter row that plus its adapter's delta.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from peft import LoraConfig, PeftType
from peft.functional import delete_adapter, inject_adapter_in_model, set_peft_model_state_dict
from peft.tuners.lora import LoraLayer
from peft.tuners.lora.layer import Embedding as LoraEmbedding
from peft.tuners.lora.layer import Linear as LoraLinear
from safetensors.torch import load_file

from nimble.errors import InvalidRequest
from nimble.models.adapters import PEFT_CONFIG, AdapterSpec

_WEIGHTS = ("adapter_model.safetensors", "adapter_model.bin")
_PREFIX = "base_model.model."  # what PeftModel.save_pretrained puts before module names
_SIZE_MISMATCH = re.compile(
    r"size mismatch for (\S+): copying a param with shape torch\.Size\(\[([^\]]*)\]\) from "
    r"checkpoint, the shape in current model is torch\.Size\(\[([^\]]*)\]\)"
)
_MIXABLE = (LoraLinear, LoraEmbedding)  # the LoRA layers peft mixes adapters in one batch for


@dataclass(frozen=True)
class LoraFile:
    """A PEFT LoRA folder, read: its config and weights (module names without the prefix)."""

    path: Path
    config: LoraConfig
    weights: dict[str, torch.Tensor]


def read(adapter: AdapterSpec, model_id: str) -> LoraFile:
    """Read `adapter` from disk (a worker thread); InvalidRequest in one line naming it."""
    where = adapter.path

    def refuse(why: str) -> InvalidRequest:
        return InvalidRequest(
            f"{where}: not a LoRA adapter for model `{model_id}`: {why}", param="lora_path"
        )

    if adapter.format != "peft":
        raise refuse(
            "a GGUF adapter is llama.cpp's format; the transformers engine loads PEFT adapter "
            f"folders ({PEFT_CONFIG} + adapter_model.safetensors)"
        )
    try:
        raw = json.loads((where / PEFT_CONFIG).read_text())
    except (OSError, ValueError) as exc:
        raise refuse(f"{PEFT_CONFIG} is not readable: {_first_line(exc)}") from exc
    if not isinstance(raw, dict) or raw.get("peft_type") != PeftType.LORA.value:
        kind = raw.get("peft_type") if isinstance(raw, dict) else None
        raise refuse(f"a {kind or 'non-PEFT'} adapter; only LoRA adapters are served")
    try:
        config = LoraConfig.from_pretrained(str(where))
    except (TypeError, ValueError) as exc:
        raise refuse(f"{PEFT_CONFIG}: {_first_line(exc)}") from exc
    if config.use_dora:
        raise refuse("DoRA adapters are not served (peft cannot mix them with others in a batch)")
    if config.modules_to_save or getattr(config, "trainable_token_indices", None):
        raise refuse("modules_to_save and trainable tokens are not served, only LoRA layers")
    config.inference_mode = True
    weights_file = next((where / n for n in _WEIGHTS if (where / n).is_file()), None)
    if weights_file is None:
        raise refuse(f"no {_WEIGHTS[0]} in the folder")
    try:
        if weights_file.suffix == ".safetensors":
            weights = load_file(str(weights_file))
        else:
            weights = torch.load(weights_file, map_location="cpu", weights_only=True)
    except Exception as exc:  # a truncated or foreign file: the loaders raise many kinds
        raise refuse(f"{weights_file.name} is not readable: {_first_line(exc)}") from exc
    weights = {k.removeprefix(_PREFIX): v for k, v in weights.items()}
    return LoraFile(where, config, weights)


class Lora:
    """The LoRA layers in one model. Scheduler thread only: `inject` and `delete` through
    `Scheduler.call`, `route` before each forward pass."""

    def __init__(self, model: Any, model_id: str):
        self._model = model
        self._model_id = model_id
        self._rows: list[str] = []
        self._hooked: set[int] = set()  # id() of the LoRA layers that have the pre-hook

    def route(self, rows: list[str]) -> None:
        """The adapter key of each row of the next forward pass (`__base__`: none)."""
        self._rows = rows

    def inject(self, key: str, file: LoraFile) -> None:
        """Add `file`'s layers and weights under `key`; InvalidRequest (and nothing left of
        it) when they do not fit the model."""
        try:
            self._inject(key, file)
        except Exception:
            self.delete(key)
            raise
        self._model.eval()  # the new layers' dropout modules are made in training mode
        module: torch.nn.Module
        for module in self._model.modules():
            if isinstance(module, LoraLayer) and id(module) not in self._hooked:
                module.register_forward_pre_hook(self._hook, with_kwargs=True)
                self._hooked.add(id(module))

    def delete(self, key: str) -> None:
        """Remove `key`'s weights; unwrap the layers left with no adapter."""
        for module in self._model.modules():
            if isinstance(module, LoraLayer):
                # no active adapter: peft then has none to pick (and warn about) on delete
                module.set_adapter([])
        delete_adapter(self._model, key, prefix="lora_", layer_cls=LoraLayer)
        self._model.__dict__.pop("peft_config", None)
        for name, module in list(self._model.named_modules()):
            if isinstance(module, LoraLayer) and not _adapters_in(module):
                parent, _, attribute = name.rpartition(".")
                self._hooked.discard(id(module))
                setattr(self._model.get_submodule(parent), attribute, module.get_base_layer())

    def _inject(self, key: str, file: LoraFile) -> None:
        def refuse(why: str) -> InvalidRequest:
            return InvalidRequest(
                f"{file.path}: not a LoRA adapter for model `{self._model_id}`: {why}",
                param="lora_path",
            )

        # peft keeps the adapter configs on the model (`peft_config`) and warns when a second
        # adapter finds one there; it reads it back only while loading the weights
        self._model.__dict__.pop("peft_config", None)
        try:
            try:
                inject_adapter_in_model(file.config, self._model, adapter_name=key)
            except ValueError as exc:  # target modules not in this model
                raise refuse(_first_line(exc)) from exc
            for name, module in self._model.named_modules():
                if not isinstance(module, LoraLayer) or key not in _adapters_in(module):
                    continue
                if not isinstance(module, _MIXABLE) or key in module.lora_variant:
                    raise refuse(f"{name}: a {type(module).__name__} LoRA layer is not served")
            own = {k for k in self._model.state_dict() if f".{key}." in k}
            try:
                result: Any = set_peft_model_state_dict(self._model, file.weights, adapter_name=key)
            except RuntimeError as exc:
                raise refuse(_size_mismatch(exc, key)) from exc
        finally:
            self._model.__dict__.pop("peft_config", None)
        missing = sorted(k for k in result.missing_keys if k in own)
        unexpected = sorted(result.unexpected_keys)
        if missing or unexpected:
            first = (missing or unexpected)[0].replace(f".{key}.", ".")
            what = "no weights for" if missing else "weights for a module this model lacks:"
            more = len(missing or unexpected) - 1
            raise refuse(f"{what} {first}" + (f" (and {more} more)" if more else ""))

    def _hook(
        self, module: Any, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> tuple[tuple[Any, ...], dict[str, Any]]:
        kwargs["adapter_names"] = self._rows
        return args, kwargs


def _adapters_in(module: Any) -> set[str]:
    return set(module.lora_A) | set(module.lora_embedding_A)


def _size_mismatch(exc: RuntimeError, key: str) -> str:
    """torch's many-line size mismatch error as one line, without peft's internal key."""
    found = _SIZE_MISMATCH.findall(str(exc))
    if not found:
        return _first_line(exc)
    name, theirs, mine = found[0]
    more = f" (and {len(found) - 1} more)" if len(found) > 1 else ""
    return (
        f"{name.replace(f'.{key}.', '.')} is [{theirs}] in the adapter and [{mine}] in the "
        f"model{more}: an adapter for a model of other dimensions"
    )


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
