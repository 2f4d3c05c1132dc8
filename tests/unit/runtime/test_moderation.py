"""Which model moderates, and how a verdict becomes a moderation (`runtime/moderation.py`),
on the fake engine and the scripted guard; and a manifest whose model is a LoRA adapter over
a base (NemoGuard's distribution), resolved from local files."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from nimble.config import Settings
from nimble.errors import ConfigError, InvalidRequest, ModelNotFound
from nimble.models import ModelSpec, resolve_model
from nimble.models.adapters import AdapterSpec
from nimble.runtime import Runtime
from nimble.runtime.assemble import runtime_config
from nimble.runtime.moderation import by_classifier
from nimble.types import (
    Classification,
    ClassifierTraits,
    ClassifyResult,
    GenerateRequest,
    Task,
)
from tests.support.peft_adapters import write_peft
from tests.support.scripted_guard import ENGINE, with_scripted_guard


def spec(name: str, **options: str) -> ModelSpec:
    return ModelSpec(
        id=name,
        engine="fake",
        tasks=frozenset({Task.CHAT, Task.COMPLETION}),
        weights=Path("/dev/null"),
        source="fake://",
        options=options,
    )


def runtime(*specs: ModelSpec) -> Runtime:
    return Runtime(list(specs), runtime_config(Settings(model=("fake",))), with_scripted_guard)


def test_the_one_model_that_can_moderate_is_the_default() -> None:
    chat = spec("chat")
    guard = dataclasses.replace(spec("guard", guard_format="llama-guard-3"), engine=ENGINE)
    assert runtime(chat, guard).moderation_model(None) == "guard"
    with pytest.raises(InvalidRequest, match="no model served here can moderate") as none:
        runtime(chat).moderation_model(None)
    assert none.value.param == "model"
    other = dataclasses.replace(guard, id="guard2")
    with pytest.raises(InvalidRequest, match=r"several models can moderate \(guard, guard2\)"):
        runtime(guard, other).moderation_model(None)
    with pytest.raises(
        InvalidRequest, match=r"`chat` cannot moderate: .* \(models that can: guard"
    ):
        runtime(chat, guard).moderation_model("chat")
    with pytest.raises(ModelNotFound):
        runtime(chat, guard).moderation_model("nope")


def test_an_unknown_guard_format_stops_the_start() -> None:
    with pytest.raises(ConfigError, match="unknown format 'llama-guard-9'"):
        runtime(spec("guard", guard_format="llama-guard-9"))


async def test_a_guard_served_as_an_adapter_moderates_under_the_adapters_name(
    tmp_path: Path,
) -> None:
    peft = write_peft(tmp_path / "lora")
    adapter = AdapterSpec("guard", "guard-base", peft, "peft", "0" * 64, "manifest", 8)
    base = dataclasses.replace(
        spec("guard-base", guard_format="llama-guard-3", served_as_adapter="guard"),
        adapters=(adapter,),
    )
    served = runtime(base, spec("chat"))
    await served.start()
    try:
        assert served.moderation_model(None) == "guard"
        with pytest.raises(InvalidRequest, match="`guard-base` cannot moderate"):
            served.moderation_model("guard-base")  # the base is no guard: the adapter is
        asked: list[str] = []

        async def answer(model_id: str, request: GenerateRequest) -> str:
            asked.append(model_id)
            return "\n\nunsafe\nS10"

        served._answer = answer  # type: ignore[method-assign]
        (verdict,) = await served.moderate("guard", ["some hateful text"])
        assert asked == ["guard"] and verdict.flagged
        assert [k for k, v in verdict.categories.items() if v] == ["S10"]
        del served._answer
        # through the fake engine, the adapter answers words: no verdict, so flagged
        (closed,) = await served.moderate(None, ["hello"])
        assert closed.flagged and not any(closed.categories.values())
    finally:
        await served.stop()


def test_a_classifiers_safe_labels_and_threshold() -> None:
    labels = ("ok", "spam", "abuse")
    found = ClassifyResult(
        (Classification(labels, (0.2, 0.5, 0.3)), Classification(labels, (0.05, 0.45, 0.5))), 4
    )
    first, second = by_classifier(None, found)
    assert first.categories == {"spam": True, "abuse": False}  # class 0 is the safe one
    assert first.category_scores == {"spam": 0.5, "abuse": 0.3} and first.flagged
    assert second.categories == {"spam": False, "abuse": True}
    traits = ClassifierTraits(safe_labels=("ok", "spam"), threshold=0.6)
    assert [m.flagged for m in by_classifier(traits, found)] == [False, False]
    # a multi-label classifier has no safe label unless its manifest names one
    multi = dataclasses.replace(found, multi_label=True)
    assert set(by_classifier(traits, multi)[0].categories) == {"abuse"}
    assert set(by_classifier(None, multi)[0].categories) == {"ok", "spam", "abuse"}


def test_a_manifests_lora_serves_the_adapter_under_its_id(tmp_path: Path) -> None:
    base = tmp_path / "base"
    base.mkdir()
    for name in ("config.json", "tokenizer.json", "model.safetensors"):
        (base / name).write_text("{}")
    peft = write_peft(tmp_path / "adapter", rank=8)
    files = [{"name": n, "source": str(base / n)} for n in ("config.json", "tokenizer.json")]
    files += [{"name": "model.safetensors", "source": str(base / "model.safetensors")}]
    files += [
        {"name": f"lora/{n}", "source": str(peft / n)}
        for n in ("adapter_config.json", "adapter_model.safetensors")
    ]
    manifest = tmp_path / "guard.yaml"
    manifest.write_text(
        "id: guard\ntasks: [chat, completion]\nguard_format: nemoguard-content-safety\n"
        "lora: lora\nprofiles:\n- engine: transformers\n  precision: bf16\n  files:\n"
        + "".join(f"  - name: {f['name']}\n    source: {f['source']}\n" for f in files)
    )
    from nimble.models.cache import ModelCache

    resolved = resolve_model(str(manifest), cache=ModelCache(tmp_path / "cache"))
    assert resolved.id == "guard-base"
    assert resolved.options["served_as_adapter"] == "guard"
    assert resolved.options["guard_format"] == "nemoguard-content-safety"
    (adapter,) = resolved.adapters
    assert (adapter.name, adapter.base, adapter.format, adapter.origin, adapter.rank) == (
        "guard",
        "guard-base",
        "peft",
        "manifest",
        8,
    )
    assert (adapter.path / "adapter_config.json").is_file()
    other = manifest.read_text().replace("engine: transformers", "engine: sentence_transformers")
    (tmp_path / "bad.yaml").write_text(other)
    with pytest.raises(ConfigError, match="the sentence_transformers engine takes no PEFT"):
        resolve_model(str(tmp_path / "bad.yaml"), cache=ModelCache(tmp_path / "cache"))


def test_the_catalogs_classifiers_and_guards_are_servable_as_written() -> None:
    from nimble.guardrails.guard_formats import guard_format
    from nimble.models.catalog import builtin_catalog

    catalog = builtin_catalog()
    guards = {m.id: m.guard_format for m in catalog.values() if m.guard_format}
    assert guards == {
        "llama-guard-3-1b": "llama-guard-3-1b",
        "llama-3.1-nemoguard-8b-content-safety": "nemoguard-content-safety",
    }
    for name in guards.values():
        guard_format(name)  # a format nimble knows
    for manifest in catalog.values():
        if manifest.guard_format:  # asked through generation
            assert {"chat", "completion"} <= set(manifest.tasks), manifest.id
        if "classify" not in manifest.tasks:
            continue
        # the engines that classify (the vLLM engine does not)
        assert {p.engine for p in manifest.profiles} <= {"onnx", "sentence_transformers"}
        traits = manifest.classifier
        assert traits is not None and len(traits.labels) >= 2, manifest.id
        assert set(traits.safe_labels) < set(traits.labels), manifest.id
