"""nimble's admission limit (max_running) and the engine's own batch (max_batch_size, vLLM's
max_num_seqs, llama.cpp's slots) are two settings: by default admission lets in as many
requests as the engine runs at once, so a GPU engine that runs hundreds is not served four."""

from __future__ import annotations

from pathlib import Path

from nimble.config import Settings
from nimble.engines.config import EngineConfig
from nimble.models.spec import ModelSpec
from nimble.runtime import Runtime
from nimble.runtime.assemble import runtime_config
from nimble.runtime.config import RuntimeConfig
from nimble.types import Task


def spec(name: str, tasks: set[Task] | None = None, **options: str) -> ModelSpec:
    return ModelSpec(
        id=name,
        engine="fake",
        tasks=frozenset(tasks or {Task.CHAT}),
        weights=Path("/dev/null"),
        source="fake://",
        options=options,
    )


def admitted(config: RuntimeConfig, *specs: ModelSpec) -> dict[str, int]:
    runtime = Runtime(list(specs), config)
    return {name: model.admission.max_running for name, model in runtime.models.items()}


def test_admission_follows_the_engines_batch_unless_set() -> None:
    gpu = spec("gpu", max_num_seqs="1024")  # vLLM's, as planned for an H100
    slots = spec("slots")  # llama.cpp: its slots are max_running's (4)
    embed = spec("embed", {Task.EMBEDDING})
    defaults = runtime_config(Settings(model=("fake",)))
    assert defaults.max_running is None and defaults.engine.max_running == 4
    assert admitted(defaults, gpu, slots, embed) == {"gpu": 1024, "slots": 4, "embed": 32}
    # the operator's max_running is the admission limit, whatever the engine runs
    capped = runtime_config(Settings(model=("fake",), max_running=8))
    assert admitted(capped, gpu, slots) == {"gpu": 8, "slots": 8}
    # the operator's batch size is the engine's, and admission follows it
    batched = runtime_config(Settings(model=("fake",), max_batch_size=16))
    assert batched.engine.batch_size(gpu) == 16 and batched.engine.max_running == 16
    assert admitted(batched, gpu, slots) == {"gpu": 16, "slots": 16}


def test_library_defaults_are_unchanged_for_engines_without_a_batch() -> None:
    config = RuntimeConfig(EngineConfig())
    assert admitted(config, spec("plain")) == {"plain": 4}
    assert EngineConfig().batch_size(spec("plain")) is None  # the engine's own default
