"""`--model` values that are not in the catalog get a generated manifest and profile."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from nimble.errors import ConfigError, ModelLoadError
from nimble.models.cache import ModelCache
from nimble.models.hardware import HardwareInfo
from nimble.models.resolve import manifest_for, plan_model, resolve_model

CPU = HardwareInfo(cpu_cores=2, cpu_features=frozenset({"avx2"}), ram_gb=24, source="test")


def spec_of(ref: str, tmp_path: Path, **kw: str) -> object:
    return resolve_model(ref, cache=ModelCache(tmp_path / "cache"), hardware=CPU, **kw)


def causal_lm_folder(tmp_path: Path) -> Path:
    folder = tmp_path / "My-Model"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"architectures": ["LlamaForCausalLM"]}))
    (folder / "model.safetensors").write_bytes(b"\0" * 1024)
    return folder


def test_a_causal_lm_folder_runs_on_transformers_on_cpu(tmp_path: Path) -> None:
    folder = causal_lm_folder(tmp_path)
    spec = spec_of(str(folder), tmp_path)
    assert spec.engine == "transformers"  # type: ignore[attr-defined]
    assert spec.weights == folder  # type: ignore[attr-defined]
    assert spec.id == "My-Model" and spec.profile_name == "transformers-auto-cpu"  # type: ignore[attr-defined]
    # on a GPU machine the same folder would run on vLLM
    names = [p.name for p in manifest_for(str(folder)).profiles]
    assert names == ["transformers-auto-cpu", "vllm-auto-tp1"]


def test_a_sentence_transformers_folder_is_an_embedding_model(tmp_path: Path) -> None:
    folder = tmp_path / "emb"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"architectures": ["BertModel"]}))
    (folder / "modules.json").write_text("[]")
    manifest = manifest_for(str(folder))
    assert manifest.tasks == ("embedding",)
    selection = plan_model(str(folder), CPU, engine_check=_registry_check)
    assert selection.profile.name == "sentence_transformers-auto-cpu"


def test_a_sequence_classification_folder_is_a_reranker(tmp_path: Path) -> None:
    folder = tmp_path / "ce"
    folder.mkdir()
    # one output (what transformers writes for num_labels=1): a cross-encoder's score
    head = {"architectures": ["BertForSequenceClassification"], "id2label": {"0": "LABEL_0"}}
    (folder / "config.json").write_text(json.dumps(head))
    manifest = manifest_for(str(folder))
    assert manifest.tasks == ("rerank",)
    # more labels, or none written (transformers leaves out its default: two): a classifier
    three = {"0": "safe", "1": "unsafe", "2": "spam"}
    for config in ({**head, "id2label": three}, {"architectures": head["architectures"]}):
        (folder / "config.json").write_text(json.dumps(config))
        assert manifest_for(str(folder)).tasks == ("classify",), config
    assert [p.name for p in manifest.profiles] == ["sentence_transformers-auto-cpu"]
    with pytest.raises(ConfigError, match="engine sentence_transformers needs"):
        plan_model(str(folder), CPU, engine_check=lambda e: f"engine {e} needs torch")


def test_a_folder_of_an_architecture_no_engine_serves(tmp_path: Path) -> None:
    folder = tmp_path / "vision"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"architectures": ["ViTModel"]}))
    with pytest.raises(ModelLoadError, match="no engine for architecture ViTModel"):
        manifest_for(str(folder))


def test_a_gguf_file_gets_llamacpp_first_and_transformers_second(tmp_path: Path) -> None:
    gguf = resolve_model("smollm2-135m-instruct").weights
    local = tmp_path / "Local.Q4.gguf"
    os.symlink(gguf, local)
    spec = spec_of(str(local), tmp_path)
    assert (spec.engine, spec.profile_name) == ("llamacpp", "llamacpp-gguf-cpu")  # type: ignore[attr-defined]
    assert spec.id == "Local.Q4"  # type: ignore[attr-defined]
    forced = spec_of(str(local), tmp_path, engine="transformers")
    assert forced.engine == "transformers" and forced.weights == local.resolve()  # type: ignore[attr-defined]


def test_a_vllm_profile_gets_a_model_folder_of_links(tmp_path: Path) -> None:
    folder = causal_lm_folder(tmp_path)
    target = tmp_path / "m.yaml"
    shutil.copy(folder / "config.json", tmp_path / "config.json")
    target.write_text(
        "id: linked\ntasks: [chat]\nprofiles:\n"
        "  - engine: transformers\n    precision: bf16\n    files:\n"
        f"      - {{name: config.json, source: {tmp_path / 'config.json'}}}\n"
        f"      - {{name: model.safetensors, source: {folder / 'model.safetensors'}}}\n"
    )
    spec = spec_of(str(target), tmp_path)
    store = spec.weights  # type: ignore[attr-defined]
    assert store.parent == tmp_path / "cache" / "stores"
    assert (store / "config.json").resolve() == (tmp_path / "config.json").resolve()
    assert (store / "model.safetensors").is_symlink()


def _registry_check(engine: str) -> str | None:
    from nimble.engines import engine_unavailable

    return engine_unavailable(engine)
