"""The composition root: `Settings` → hardware → one profile per model (and why) → files in
the cache → engine and runtime configuration → the `Runtime`, and the `Deployment` facts
that the deployment record reports.

This is the one place that turns settings into the objects that serve: `nimble serve`,
`nimble inspect`, `nimble.create_app(settings)` and the tests all build through it. No
command-line library here (no typer, no rich): the CLI parses and calls.
"""

from __future__ import annotations

import dataclasses
import logging
import shlex
from collections.abc import Callable
from pathlib import Path

from nimble.config import Settings
from nimble.engines import EngineConfig, engine_unavailable
from nimble.errors import ConfigError
from nimble.guardrails.config import load_guardrails
from nimble.models.adapters import AdapterOrigin, FoundAdapter, parse_flag, resolve, scan
from nimble.models.cache import ModelCache
from nimble.models.hardware import HardwareInfo, detect_hardware, load_hardware
from nimble.models.manifest import ModelManifest
from nimble.models.placement import place, placed_spec
from nimble.models.resolve import ResolvedModel, load_model, manifest_for, plan_model, resolve_model
from nimble.models.select import DEFAULT_SLOTS, Concurrency, EngineCheck, Selection
from nimble.models.sources import LogProgress
from nimble.models.spec import ModelSpec
from nimble.runtime.adapters import GENERATIVE
from nimble.runtime.config import RuntimeConfig
from nimble.runtime.deployment import Deployment
from nimble.runtime.runtime import Runtime

log = logging.getLogger("nimble.serve")

FAKE = "fake"  # `--model fake[:id]`: the deterministic engine, no manifest, no files

FatalCallback = Callable[[str], None]


def build_runtime(
    settings: Settings, on_fatal: FatalCallback | None = None
) -> tuple[Runtime, Deployment]:
    """Hardware → one profile per model (and why) → files in the cache → the runtime (not
    started: `await runtime.start()` loads the engines). `on_fatal` is told, from any thread,
    when an engine can no longer serve. Raises ConfigError or ModelLoadError."""
    config = runtime_config(settings, on_fatal)  # first: a bad setting fails before downloads
    hardware = machine(settings)
    cache = model_cache(settings)
    specs: list[ModelSpec] = []
    resolved: dict[str, ResolvedModel] = {}
    plans = plan(settings, hardware, engine_check(config.engine.engine_command))
    selections = [p for p in plans if isinstance(p, Selection)]
    # before any download: models that cannot share the GPUs stop the start here
    places = place(selections, hardware, concurrency(settings))
    for selection in plans:
        if isinstance(selection, ModelSpec):  # fake models have no manifest
            specs.append(selection)
            continue
        log.info(
            "model %s: profile %s (%s)",
            selection.manifest.id,
            selection.profile.name,
            selection.reason,
        )
        model = load_model(selection, cache, progress=LogProgress)
        where = places.get(model.manifest.id)  # a manifest's `lora`: its base's spec
        if where is not None:
            if where.note:
                log.info("model %s: %s", model.spec.id, where.note)
            model = dataclasses.replace(model, spec=placed_spec(model.spec, where))
        specs.append(model.spec)
        resolved[model.spec.id] = model
    runtime = Runtime(with_adapters(specs, settings), config)
    return runtime, Deployment(settings, hardware, resolved)


def runtime_config(settings: Settings, on_fatal: FatalCallback | None = None) -> RuntimeConfig:
    """The runtime's and the engines' configuration: the one place that reads them from
    `Settings` (also for a `Runtime` built around specs the settings cannot name)."""
    engine = EngineConfig(
        threads=settings.threads,
        context_length=settings.context_length,
        max_running=settings.max_batch_size or settings.max_running or DEFAULT_SLOTS,
        max_batch_size=settings.max_batch_size,
        engine_log=settings.engine_log,
        chat_template=read_template(settings.chat_template),
        fake_token_delay=settings.fake_token_delay,
        prompt_cache_mib=settings.prompt_cache_mib,
        embed_batch_size=settings.embed_batch_size,
        embed_max_wait=settings.embed_max_wait_ms / 1000,
        cache_path=settings.cache_path.expanduser(),
        engine_command=engine_command(settings),
        engine_restart=settings.engine_restart,
        engine_start_timeout=settings.engine_start_timeout,
        on_fatal=on_fatal,
        max_loras=settings.max_loras,
        max_lora_rank=settings.max_lora_rank,
        runtime_adapters=settings.runtime_adapters
        or (settings.lora_dir is not None and settings.lora_poll_interval > 0),
    )
    return RuntimeConfig(
        engine=engine,
        max_running=settings.max_running,
        max_waiting=settings.max_waiting,
        max_queue_wait=settings.max_queue_wait,
        max_n=settings.max_n,
        max_rank_documents=settings.max_rank_documents,
        log_prompts=settings.log_prompts,
        tool_parser=settings.tool_parser,
        reasoning_parser=settings.reasoning_parser,
        responses_max_stored=settings.responses_max_stored,
        lora_dir=settings.lora_dir.expanduser() if settings.lora_dir else None,
        lora_poll_interval=settings.lora_poll_interval,
        guardrails=load_guardrails(settings.guardrails) if settings.guardrails else None,
    )


def with_adapters(specs: list[ModelSpec], settings: Settings) -> list[ModelSpec]:
    """Each model with the LoRA adapters of `--lora` and `--lora-dir` that adapt it."""
    generative = [s.id for s in specs if s.tasks & GENERATIVE]
    found: list[tuple[FoundAdapter, AdapterOrigin]] = [
        (parse_flag(v), "flag") for v in settings.lora
    ]
    if settings.lora_dir is not None:
        directory = settings.lora_dir.expanduser()
        if not directory.is_dir():
            raise ConfigError(f"lora_dir: {directory} is not a folder")
        flagged = {adapter.name for adapter, _ in found}
        found += [(a, "dir") for name, a in scan(directory).items() if name not in flagged]
    adapters = [resolve(adapter, generative, origin) for adapter, origin in found]
    clash = sorted({a.name for a in adapters} & {s.id for s in specs})
    if clash:
        raise ConfigError(f"adapter names {', '.join(clash)} are served model names already")
    for adapter in adapters:
        log.info("adapter %s over %s: %s", adapter.name, adapter.base, adapter.path)
    return [
        dataclasses.replace(
            spec, adapters=spec.adapters + tuple(a for a in adapters if a.base == spec.id)
        )
        if any(a.base == spec.id for a in adapters)
        else spec
        for spec in specs
    ]


def concurrency(settings: Settings) -> Concurrency:
    """The settings that decide how many sequences each engine runs at once."""
    return Concurrency(settings.max_batch_size, settings.max_running)


def machine(settings: Settings) -> HardwareInfo:
    """The hardware: described in `hardware_file`, else detected."""
    return load_hardware(settings.hardware_file) if settings.hardware_file else detect_hardware()


def model_cache(settings: Settings) -> ModelCache:
    return ModelCache(
        settings.cache_path.expanduser(),
        offline=settings.offline,
        hf_endpoint=settings.hf_endpoint,
        hf_token=settings.hf_token.get_secret_value() if settings.hf_token else None,
    )


def engine_command(settings: Settings) -> tuple[str, ...] | None:
    """`engine_command` split as a shell would (None: each engine's own default)."""
    return tuple(shlex.split(settings.engine_command)) if settings.engine_command else None


def engine_check(command: tuple[str, ...] | None) -> EngineCheck:
    """Why an engine cannot run here (None: it can), given `engine_command(settings)`."""
    return lambda engine: engine_unavailable(engine, command)


def plan(
    settings: Settings, hardware: HardwareInfo, check: EngineCheck
) -> list[Selection | ModelSpec]:
    """One selection per `--model` (a fake model is a spec already). NIMBLE_MODEL_PROFILE
    applies to the models that have such a profile; it is an error if none has."""
    names = list(settings.served_model_name)
    requested = settings.model_profile
    plans: list[Selection | ModelSpec] = []
    matched = requested is None
    for i, ref in enumerate(settings.model):
        name = names[i] if i < len(names) else None
        if ref == FAKE or ref.startswith(FAKE + ":"):
            plans.append(resolve_model(ref, name=name, engine=settings.engine))
            continue
        profile = None
        if requested is not None and has_profile(manifest_for(ref, name=name), requested):
            profile, matched = requested, True
        plans.append(
            plan_model(
                ref,
                hardware,
                engine_check=check,
                name=name,
                engine=settings.engine,
                profile=profile,
                context=settings.context_length,
                concurrency=concurrency(settings),
            )
        )
    if not matched:
        raise ConfigError(
            f"NIMBLE_MODEL_PROFILE {requested!r}: no such profile for "
            f"{', '.join(settings.model)} (see `nimble list-profiles`)"
        )
    return plans


def has_profile(manifest: ModelManifest, key: str) -> bool:
    try:
        manifest.profile(key)
    except ConfigError:
        return False
    return True


def read_template(path: Path | None) -> str | None:
    """The text of `chat_template` (None: the model's own template)."""
    if path is None:
        return None
    try:
        return path.expanduser().read_text()
    except OSError as exc:
        raise ConfigError(f"chat_template: cannot read {path}: {exc.strerror}") from exc
