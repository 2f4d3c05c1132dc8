"""Real PEFT LoRA adapters that tests build and save (no adapter ships with a package).

`build_lora` gives a model folder's attention output and MLP projections a LoRA of rank 4
whose weights are drawn from a seed (peft's `init_lora_weights=False`: both matrices
random, where training would start B at zero), so the adapter's effect is unmistakable
and two seeds are two different adapters. `smollm2_folder` is the default chat model as
the transformers engine converts it (once per cache).
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from peft import LoraConfig, PeftModel, get_peft_model
from transformers import AutoModelForCausalLM

from nimble.engines.config import EngineConfig
from nimble.engines.transformers.loading import load
from nimble.models.files import sha256_of
from nimble.models.resolve import resolve_model

TARGETS = ("v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
# peft 0.21 asks transformers 5 a deprecated question when it wraps a model
_PEFT_ASKS = "`is_gradient_checkpointing` is deprecated"


@contextmanager
def one_thread() -> Iterator[None]:
    """torch on one thread meanwhile: a server of the same test may be busy on the other
    cores (two thread pools fighting for 2 cores run many times slower than one)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def smollm2_folder(cache: Path) -> Path:
    """SmolLM2-135M-Instruct as a transformers folder in `cache` (converted if not yet)."""
    spec = resolve_model("smollm2-135m-instruct", engine="transformers")
    folder = cache / "transformers" / sha256_of(spec.weights)[:16]
    if not (folder / "config.json").is_file():
        load(spec, EngineConfig(cache_path=cache))
    return folder


def build_lora(base: Path, out: Path, seed: int, targets: tuple[str, ...] = TARGETS) -> Path:
    """A LoRA adapter for the model in folder `base`, saved as a PEFT folder in `out`."""
    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    torch.manual_seed(seed)
    config = LoraConfig(r=4, lora_alpha=6, target_modules=list(targets), init_lora_weights=False)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=_PEFT_ASKS, category=FutureWarning)
        get_peft_model(model, config).save_pretrained(str(out))
    return out


def peft_reference(base: Path, adapters: dict[str, Path]) -> Any:
    """peft's own model over `base` with `adapters` loaded by name (no nimble code)."""
    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    (first, path), *rest = adapters.items()
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=_PEFT_ASKS, category=FutureWarning)
        peft_model = PeftModel.from_pretrained(model, str(path), adapter_name=first)
        for name, path in rest:
            peft_model.load_adapter(str(path), adapter_name=name)
    return peft_model.eval()


def peft_greedy(model: Any, tokenizer: Any, adapter: str | None, question: str, tokens: int) -> str:
    """What peft's model answers a one-question chat, greedy, with `adapter` (None: none)."""
    rendered = tokenizer.apply_chat_template(
        [{"role": "user", "content": question}], tokenize=False, add_generation_prompt=True
    )
    ids = tokenizer(rendered, add_special_tokens=False, return_tensors="pt")
    kwargs = {"do_sample": False, "max_new_tokens": tokens, "pad_token_id": tokenizer.eos_token_id}
    with torch.inference_mode():
        if adapter is None:
            with model.disable_adapter():
                out = model.generate(**ids, **kwargs)
        else:
            model.set_adapter(adapter)
            out = model.generate(**ids, **kwargs)
    return str(tokenizer.decode(out[0, ids["input_ids"].shape[1] :], skip_special_tokens=True))
