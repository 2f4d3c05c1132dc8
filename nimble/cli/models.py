"""Models from the command line: `nimble list-profiles | download | create-model-store |
inspect`, and their output (the plan itself is made by `nimble.runtime.assemble`)."""

from __future__ import annotations

import json
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
from nimble.errors import ConfigError, ModelLoadError
from nimble.models.catalog import builtin_catalog
from nimble.models.hardware import HardwareInfo
from nimble.models.manifest import ModelManifest, Profile
from nimble.models.resolve import load_model, manifest_for, plan_model
from nimble.models.select import Candidate, Concurrency, EngineCheck, Selection, assess
from nimble.models.sources import LogProgress
from nimble.models.store import write_store


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
    # the composition root is imported where it is used: `nimble --help` stays fast
    from nimble.runtime.assemble import FAKE, concurrency, engine_check, engine_command, machine

    settings = _settings(values)
    refs = models or list(settings.model)
    try:
        hardware = machine(settings)
        check = engine_check(engine_command(settings))
        batch = concurrency(settings)
        report = [
            _profiles_of(ref, hardware, check, settings, batch) for ref in refs if ref != FAKE
        ]
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
    ref: str, hardware: HardwareInfo, check: EngineCheck, settings: Settings, batch: Concurrency
) -> dict[str, Any]:
    manifest = manifest_for(ref)
    error = None
    context = settings.context_length
    try:
        selected = plan_model(
            ref, hardware, engine_check=check, context=context, concurrency=batch
        ).selected.profile.id
    except ConfigError as exc:
        selected, error = None, str(exc)
    candidates = [
        assess(manifest, p, hardware, engine_check=check, context=context, concurrency=batch)
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
    from nimble.runtime.assemble import engine_check, engine_command, machine, model_cache

    if profile and all_profiles:
        raise _fail(ConfigError("give --profile or --all, not both"), 2)
    settings = _settings(values)
    refs = models or list(settings.model)
    try:
        cache = model_cache(settings)
        hardware = machine(settings)
        check = engine_check(engine_command(settings))
        chosen: list[tuple[ModelManifest, Profile]] = []
        for ref in refs:
            manifest = manifest_for(ref)
            if all_profiles:
                chosen += [(manifest, p) for p in manifest.profiles]
            elif profile:
                chosen.append((manifest, manifest.profile(profile)))
            else:
                selection = plan_model(ref, hardware, engine_check=check)
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
    from nimble.runtime.assemble import machine, model_cache

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
    from nimble.runtime.assemble import has_profile

    if model is not None:
        manifest = manifest_for(model)
        return manifest, manifest.profile(key)
    found = [(m, m.profile(key)) for m in builtin_catalog().values() if has_profile(m, key)]
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
            help="Ask a running server (its /v1/manifest) instead.",
        ),
    ] = None,
    api_key: Annotated[
        str | None,
        typer.Option(
            "--api-key",
            envvar="NIMBLE_API_KEY",
            help="API key for --url (sent as a bearer token).",
            show_default=False,
        ),
    ] = None,
    **values: Any,
) -> None:
    """Print the deployment record (JSON): what a running server runs (--url), or what
    `nimble serve` with the same settings would run on this machine."""
    if url is not None:
        typer.echo(json.dumps(_remote_record(url, api_key), indent=2))
        return
    from nimble.api.endpoints import ENDPOINT_PATHS, HEALTH_PATHS
    from nimble.config.settings import ALL_ENDPOINTS
    from nimble.runtime.assemble import build_runtime
    from nimble.runtime.deployment import deployment_record
    from nimble.security.keys import keys_record, parse_key_file

    settings = _settings(values)
    try:
        runtime, deployment = build_runtime(settings)
        keys_file, rails = settings.api_keys_file, runtime.config.guardrails
        known = frozenset(rails.rails if rails is not None else ())
        keys = parse_key_file(keys_file, ALL_ENDPOINTS, known) if keys_file is not None else None
    except (ConfigError, ModelLoadError) as exc:
        raise _fail(exc, 2 if isinstance(exc, ConfigError) else 1) from None
    record = deployment_record(deployment, runtime, ENDPOINT_PATHS, HEALTH_PATHS)
    record["auth"]["keys"] = keys_record(keys)  # as `nimble serve` would load them
    typer.echo(json.dumps(record, indent=2))


def _remote_record(url: str, key: str | None) -> Any:
    import httpx

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
