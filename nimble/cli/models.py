"""Models from the command line: the hardware, the plan for each `--model`, download
progress, and `nimble list-profiles | download | create-model-store | inspect`."""

from __future__ import annotations

import json
import logging
import shlex
import time
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)

from nimble.cli.options import given, with_settings_options
from nimble.config import Settings, load_settings
from nimble.engines import engine_unavailable
from nimble.errors import ConfigError, ModelLoadError
from nimble.models import ModelSpec
from nimble.models.cache import ModelCache
from nimble.models.catalog import builtin_catalog
from nimble.models.hardware import HardwareInfo, detect_hardware, load_hardware
from nimble.models.manifest import ModelManifest, Profile
from nimble.models.resolve import load_model, manifest_for, plan_model, resolve_model
from nimble.models.select import Candidate, EngineCheck, Selection, assess
from nimble.models.store import write_store

log = logging.getLogger("nimble.models")
FAKE = "fake"


def machine(settings: Settings) -> HardwareInfo:
    return load_hardware(settings.hardware_file) if settings.hardware_file else detect_hardware()


def model_cache(settings: Settings) -> ModelCache:
    return ModelCache(
        settings.cache_path.expanduser(),
        offline=settings.offline,
        hf_endpoint=settings.hf_endpoint,
        hf_token=settings.hf_token.get_secret_value() if settings.hf_token else None,
    )


def engine_check(settings: Settings) -> EngineCheck:
    command = tuple(shlex.split(settings.engine_command)) if settings.engine_command else None
    return lambda engine: engine_unavailable(engine, command)


def plan(
    settings: Settings, hardware: HardwareInfo, command: tuple[str, ...] | None = None
) -> list[Selection | ModelSpec]:
    """One selection per `--model` (a fake model is a spec already). NIMBLE_MODEL_PROFILE
    applies to the models that have such a profile; it is an error if none has."""
    check = engine_check(settings)
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
        if requested is not None and _has_profile(manifest_for(ref, name=name), requested):
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
            )
        )
    if not matched:
        raise ConfigError(
            f"NIMBLE_MODEL_PROFILE {requested!r}: no such profile for "
            f"{', '.join(settings.model)} (see `nimble list-profiles`)"
        )
    return plans


def _has_profile(manifest: ModelManifest, key: str) -> bool:
    try:
        manifest.profile(key)
    except ConfigError:
        return False
    return True


class LogProgress:
    """Download progress as log lines (for `nimble serve`, whose output may be JSON logs)."""

    def __init__(self) -> None:
        self.name, self.done, self._last = "", 0, 0.0
        self.total: int | None = None

    def start(self, name: str, total: int | None, done: int) -> None:
        self.name, self.total, self.done = name, total, done
        log.info(
            "downloading %s (%s)%s", name, _size(total), f", resuming at {_size(done)}" * bool(done)
        )

    def advance(self, n: int) -> None:
        self.done += n
        if time.monotonic() - self._last >= 5:
            self._last = time.monotonic()
            share = f" ({100 * self.done / self.total:.0f}%)" if self.total else ""
            log.info("downloading %s: %s%s", self.name, _size(self.done), share)

    def finish(self) -> None:
        log.info("downloaded %s (%s)", self.name, _size(self.done))


class BarProgress:
    """One rich progress bar per file (for `nimble download`)."""

    def __init__(self, bars: Progress):
        self.bars = bars
        self.task: TaskID | None = None

    def start(self, name: str, total: int | None, done: int) -> None:
        self.task = self.bars.add_task(name, total=total, completed=done)

    def advance(self, n: int) -> None:
        if self.task is not None:
            self.bars.advance(self.task, n)

    def finish(self) -> None:
        if self.task is not None:
            self.bars.update(self.task, visible=True)


def _size(n: int | None) -> str:
    if n is None:
        return "size unknown"
    return f"{n / 1e9:.2f} GB" if n >= 1e8 else f"{n / 1e6:.1f} MB"


def _settings(values: dict[str, Any]) -> Settings:
    try:
        return load_settings(**given(values))
    except ConfigError as exc:
        typer.echo(f"nimble: {exc}", err=True)
        raise typer.Exit(2) from None


def _fail(exc: Exception, code: int) -> typer.Exit:
    typer.echo(f"nimble: {exc}", err=True)
    return typer.Exit(code)


ModelsArg = Annotated[
    list[str] | None,
    typer.Argument(
        help="Catalog ids, manifest files or local model paths (default: --model).",
        show_default=False,
    ),
]
JsonOpt = Annotated[bool, typer.Option("--json", help="One JSON document, for machines.")]


def list_profiles(models: ModelsArg = None, as_json: JsonOpt = False, **values: Any) -> None:
    """Detected hardware, then each model's profiles: runnable here (the selected one marked),
    runnable with less context (and how much fits), and not runnable (and why)."""
    settings = _settings(values)
    refs = models or list(settings.model)
    try:
        hardware = machine(settings)
        check = engine_check(settings)
        report = [_profiles_of(ref, hardware, check, settings) for ref in refs if ref != FAKE]
    except (ConfigError, ModelLoadError) as exc:
        raise _fail(exc, 2) from None
    if as_json:
        typer.echo(json.dumps({"hardware": hardware.as_record(), "models": report}, indent=2))
        return
    typer.echo(f"Hardware: {hardware.summary()} ({hardware.source})")
    for note in hardware.notes:
        typer.echo(f"  note: {note}")
    groups = (
        ("runnable", "Runnable here"),
        ("reduced", "Runnable with less context"),
        ("not_runnable", "Not runnable"),
    )
    for model in report:
        typer.echo(f"\n{model['id']}  ({', '.join(model['tasks'])})")
        for status, title in groups:
            rows = [p for p in model["profiles"] if p["status"] == status]
            if not rows:
                continue
            typer.echo(f"  {title}:")
            for p in rows:
                mark = "*" if p["selected"] else " "
                context = f"  context {p['context']}" if p["context"] else ""
                typer.echo(f"   {mark} {p['name']:<28} {p['id'][:12]}{context}  {p['reason']}")
        if model.get("error"):
            typer.echo(f"  none selected: {model['error']}")


def _profiles_of(
    ref: str, hardware: HardwareInfo, check: EngineCheck, settings: Settings
) -> dict[str, Any]:
    manifest = manifest_for(ref)
    error = None
    try:
        selected = plan_model(
            ref, hardware, engine_check=check, profile=None, context=settings.context_length
        ).selected.profile.id
    except ConfigError as exc:
        selected, error = None, str(exc)
    candidates = [
        assess(manifest, p, hardware, engine_check=check, context=settings.context_length)
        for p in manifest.profiles
    ]
    return {
        "id": manifest.id,
        "tasks": list(manifest.tasks),
        "selected": selected,
        "error": error,
        "profiles": [_profile_row(c, selected) for c in candidates],
    }


def _profile_row(c: Candidate, selected: str | None) -> dict[str, Any]:
    return {
        "name": c.profile.name,
        "id": c.profile.id,
        "engine": c.profile.engine,
        "precision": c.profile.precision,
        "tensor_parallel_size": c.profile.tensor_parallel_size,
        "status": c.status,
        "context": c.context,
        "reason": c.reason,
        "selected": c.profile.id == selected,
    }


def download(
    models: ModelsArg = None,
    profile: Annotated[
        str | None, typer.Option("--profile", help="This profile (name or id) only.")
    ] = None,
    all_profiles: Annotated[
        bool, typer.Option("--all", help="Every profile of the model(s).")
    ] = False,
    **values: Any,
) -> None:
    """Fill the cache (NIMBLE_CACHE_PATH) with a model's files: the profile chosen for this
    machine, --profile P, or --all. Resumes partial files; checks every sha256."""
    if profile and all_profiles:
        raise _fail(ConfigError("give --profile or --all, not both"), 2)
    settings = _settings(values)
    refs = models or list(settings.model)
    try:
        cache = model_cache(settings)
        hardware = machine(settings)
        chosen: list[tuple[ModelManifest, Profile]] = []
        for ref in refs:
            manifest = manifest_for(ref)
            if all_profiles:
                chosen += [(manifest, p) for p in manifest.profiles]
            elif profile:
                chosen.append((manifest, manifest.profile(profile)))
            else:
                selection = plan_model(ref, hardware, engine_check=engine_check(settings))
                chosen.append((manifest, selection.profile))
    except (ConfigError, ModelLoadError) as exc:
        raise _fail(exc, 2) from None
    bars = Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        TimeRemainingColumn(),
        transient=False,
    )
    failed = 0
    with bars:
        for manifest, wanted in chosen:
            bars.console.print(
                f"{manifest.id} {wanted.name} ({wanted.id[:12]}): {len(wanted.files)} file(s)"
            )
            for file in wanted.files:
                try:
                    path = cache.fetch(file, BarProgress(bars))
                except ModelLoadError as exc:
                    failed += 1
                    bars.console.print(f"  [red]failed[/red] {file.name}: {exc}", markup=True)
                    continue
                digest = file.sha256 or cache.recorded_sha256(file) or ""
                bars.console.print(f"  ok {file.name} -> {path} sha256 {digest[:16]}")
    if failed:
        raise typer.Exit(1)


def create_model_store(
    folder: Annotated[Path, typer.Argument(help="Folder to write (created).")],
    profile: Annotated[str, typer.Option("--profile", help="Profile name or id.")],
    model: Annotated[
        str | None,
        typer.Option("--model", help="Model of the profile (needed when a name is ambiguous)."),
    ] = None,
    **values: Any,
) -> None:
    """Write a plain model folder of one profile's files (hard links or copies) that an
    engine or a benchmark tool can open directly."""
    settings = _settings(values)
    try:
        manifest, chosen = _find_profile(profile, model)
        cache = model_cache(settings)
        selection = Selection(
            manifest,
            machine(settings),
            (),
            Candidate(chosen, "runnable", None, "requested"),
            "requested by create-model-store",
        )
        resolved = load_model(selection, cache, progress=LogProgress)
        written = write_store(folder, {f.name: f.path for f in resolved.files})
    except (ConfigError, ModelLoadError) as exc:
        raise _fail(exc, 2 if isinstance(exc, ConfigError) else 1) from None
    typer.echo(f"{manifest.id} {chosen.name} ({chosen.id[:12]}) -> {folder}")
    for line in written:
        typer.echo(f"  {line}")


def _find_profile(key: str, model: str | None) -> tuple[ModelManifest, Profile]:
    if model is not None:
        manifest = manifest_for(model)
        return manifest, manifest.profile(key)
    found = [(m, m.profile(key)) for m in builtin_catalog().values() if _has_profile(m, key)]
    if len(found) == 1:
        return found[0]
    if not found:
        raise ConfigError(f"no catalog model has a profile {key!r} (see `nimble list-profiles`)")
    models = ", ".join(m.id for m, _ in found)
    raise ConfigError(f"profile {key!r} exists for several models ({models}): add --model")


def inspect(
    url: Annotated[
        str | None,
        typer.Option(
            "--url",
            help="Ask a running server (its /v1/manifest; the API key from NIMBLE_API_KEY).",
        ),
    ] = None,
    **values: Any,
) -> None:
    """Print the deployment record (JSON): what a running server runs (--url), or what
    `nimble serve` with the same settings would run on this machine."""
    if url is not None:
        typer.echo(json.dumps(_remote_record(url), indent=2))
        return
    from nimble.api.endpoints import ENDPOINT_PATHS, HEALTH_PATHS
    from nimble.cli.serve import build_runtime
    from nimble.runtime.deployment import deployment_record

    settings = _settings(values)
    try:
        runtime, deployment = build_runtime(settings)
    except (ConfigError, ModelLoadError) as exc:
        raise _fail(exc, 2 if isinstance(exc, ConfigError) else 1) from None
    record = deployment_record(deployment, runtime, ENDPOINT_PATHS, HEALTH_PATHS)
    typer.echo(json.dumps(record, indent=2))


def _remote_record(url: str) -> Any:
    import os

    import httpx

    key = os.environ.get("NIMBLE_API_KEY")
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    try:
        response = httpx.get(url.rstrip("/") + "/v1/manifest", headers=headers, timeout=30)
    except httpx.HTTPError as exc:
        raise _fail(ConfigError(f"{url}: {exc}"), 1) from None
    if response.status_code != 200:
        raise _fail(ConfigError(f"{url}/v1/manifest answered {response.status_code}"), 1)
    return response.json()


def register(app: typer.Typer) -> None:
    for name, func in (
        ("list-profiles", list_profiles),
        ("download", download),
        ("create-model-store", create_model_store),
        ("inspect", inspect),
    ):
        app.command(name)(with_settings_options(func, keep=True))
