"""The llama.cpp engine's checks of a LoRA adapter against the real default model's GGUF
(SmolLM2-135M), before llama.cpp sees the file: each refusal is one line naming the file
and what does not fit. The adapters here are small GGUF files written by the `gguf`
package as llama.cpp's converter writes them."""

from __future__ import annotations

from pathlib import Path

import gguf
import numpy as np
import pytest

from nimble.engines.llamacpp.adapters import LoraTable, check_adapter, model_layout
from nimble.engines.llamacpp.gguf import GgufLayout
from nimble.errors import InvalidRequest
from nimble.models.adapters import AdapterSpec
from tests.support.smollm2_lora import base_gguf, write_adapter

pytestmark = pytest.mark.models

DOWN = "blk.3.ffn_down.weight"  # SmolLM2: 1536 columns, 576 rows


@pytest.fixture(scope="module")
def layout() -> GgufLayout:
    return model_layout(base_gguf())


def spec(path: Path, fmt: str = "gguf") -> AdapterSpec:
    return AdapterSpec("a", "smollm2-135m-instruct", path, fmt, "0" * 64)  # type: ignore[arg-type]


def lora(path: Path, pairs: dict[str, tuple[tuple[int, int], tuple[int, int]]], **kw: str) -> Path:
    """An adapter whose `name` gets lora_a of numpy shape a and lora_b of numpy shape b
    (GGUF's order is the reverse)."""
    tensors = {}
    for name, (a, b) in pairs.items():
        tensors[f"{name}.lora_a"] = np.zeros(a, np.float32)
        tensors[f"{name}.lora_b"] = np.zeros(b, np.float32)
    return write_adapter(path, tensors, alpha=4.0, arch=kw.get("arch", "llama"))


def refusal(path: Path, layout: GgufLayout, fmt: str = "gguf") -> str:
    with pytest.raises(InvalidRequest) as caught:
        check_adapter(spec(path, fmt), layout)
    assert caught.value.param == "lora_path"
    message = str(caught.value)
    assert "\n" not in message and message.startswith(f"{path}: ")
    return message[len(f"{path}: ") :]


def test_the_layout_reader_agrees_with_the_gguf_package(layout: GgufLayout) -> None:
    reader = gguf.GGUFReader(base_gguf())
    assert layout.tensors == {t.name: tuple(int(n) for n in t.shape) for t in reader.tensors}
    assert layout.metadata["general.architecture"] == "llama"


def test_a_fitting_adapter_passes(tmp_path: Path, layout: GgufLayout) -> None:
    path = lora(tmp_path / "ok.gguf", {DOWN: ((8, 1536), (576, 8))})
    check_adapter(spec(path), layout)


def test_refusals_name_the_file_and_the_mismatch(tmp_path: Path, layout: GgufLayout) -> None:
    wide = lora(tmp_path / "wide.gguf", {DOWN: ((8, 2048), (640, 8))})
    assert refusal(wide, layout) == (
        f"{DOWN}: lora_a [2048, 8] x lora_b [8, 640] does not fit the model's [1536, 576]"
    )
    rank = lora(tmp_path / "rank.gguf", {DOWN: ((8, 1536), (576, 4))})
    assert refusal(rank, layout) == (
        f"{DOWN}: lora_a [1536, 8] and lora_b [4, 576] disagree on the rank"
    )
    gemma = lora(tmp_path / "gemma.gguf", {DOWN: ((8, 1536), (576, 8))}, arch="gemma3")
    assert refusal(gemma, layout) == (
        "a LoRA adapter for architecture 'gemma3', the model is 'llama'"
    )
    missing = lora(tmp_path / "missing.gguf", {"blk.99.ffn_down.weight": ((8, 1536), (576, 8))})
    assert (
        refusal(missing, layout) == "adapts blk.99.ffn_down.weight, which the model does not have"
    )
    assert refusal(base_gguf(), layout) == (
        "not a LoRA adapter (general.type 'model', adapter.type None)"
    )
    folder = tmp_path / "peft"
    folder.mkdir()
    assert refusal(folder, layout, "peft") == (
        "a PEFT folder; llama.cpp takes GGUF LoRA adapters (convert it with llama.cpp's "
        "convert_lora_to_gguf.py)"
    )
    text = tmp_path / "text.gguf"
    text.write_text("not gguf")
    assert refusal(text, layout) == "not a GGUF file (starts with b'not ', expected b'GGUF')"


def test_every_request_names_every_adapter(tmp_path: Path) -> None:
    """A missing or empty `lora` field applies every adapter at 1.0 in this llama.cpp: each
    request lists them all, its own at 1.0."""
    one, two = spec(tmp_path / "one.gguf"), spec(tmp_path / "two.gguf")
    table = LoraTable((one,)).with_adapter(AdapterSpec("b", one.base, two.path, "gguf", "1"))
    assert table.field(None) == [{"id": 0, "scale": 0.0}, {"id": 1, "scale": 0.0}]
    assert table.field("b") == [{"id": 0, "scale": 0.0}, {"id": 1, "scale": 1.0}]
    assert LoraTable().field(None) is None
    replaced = table.with_adapter(AdapterSpec("a", one.base, two.path, "gguf", "2"))
    assert [a.sha256 for a in replaced.adapters] == ["2", "1"]  # same id as before
    assert table.without("a").field("b") == [{"id": 0, "scale": 1.0}]
    with pytest.raises(InvalidRequest):
        table.without("a").field("a")
