"""The deployment record: one JSON document that says what this service is and runs.

Built on request from the objects that run the service (settings, the resolved models and
their selection, the engines once loaded, the detected hardware), never written by hand.
Secrets never enter it: `SecretStr` settings dump as stars, and credentials inside URLs
are removed.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from nimble.config import Settings
from nimble.models.hardware import HardwareInfo
from nimble.models.resolve import ResolvedModel
from nimble.runtime.adapters import GENERATIVE
from nimble.runtime.reasoning import reasoning_format
from nimble.runtime.runtime import Runtime
from nimble.runtime.served import ServedModel
from nimble.runtime.tools import tool_format
from nimble.types import Task
from nimble.version import __version__

RECORD_SCHEMA = "nimble.deployment/v1"


@dataclass(frozen=True)
class Deployment:
    """What `nimble serve` decided before the engines started."""

    settings: Settings
    hardware: HardwareInfo | None
    models: dict[str, ResolvedModel]  # by served model id (fake models have none)


def deployment_record(
    deployment: Deployment,
    runtime: Runtime,
    endpoints: dict[str, tuple[str, ...]],
    health_paths: tuple[str, ...],
) -> dict[str, Any]:
    settings = deployment.settings
    exposed = {
        name: list(paths)
        for name, paths in endpoints.items()
        if name in settings.endpoints
        and (name != "admin" or settings.runtime_adapters)
        and (name != "ui" or settings.console_on)
    }
    return {
        "schema": RECORD_SCHEMA,
        "generated_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "nimble": {"version": __version__, "image": settings.image},
        "update_channel": settings.update_channel,
        "state": runtime.state.value,
        "models": [
            {
                **_model(m, deployment.models.get(m.spec.id)),
                "ranking": runtime.ranking_method(m.spec.id),
            }
            for m in runtime.models.values()
        ],
        "adapters": _adapters(settings, runtime),
        "hardware": deployment.hardware.as_record() if deployment.hardware else None,
        "endpoints": exposed,
        "health": {
            "live": health_paths[0],
            "ready": health_paths[1],
            "management_port": settings.management_port,
        },
        "logging": {
            "level": settings.log_level,
            "format": "json" if settings.jsonl_logging else "text",
            "prompts_logged": settings.log_prompts,
            "audit_log": str(settings.audit_log) if settings.audit_log else None,
        },
        "metrics": {
            "paths": exposed.get("metrics", []),
            "require_key": settings.metrics_require_key,
            "format": "prometheus",
        },
        "tracing": {
            "enabled": settings.otlp_endpoint is not None,
            "exporter": "otlp/http" if settings.otlp_endpoint else None,
            "endpoint": redact_url(settings.otlp_endpoint),
            "service_name": settings.otel_service_name,
        },
        "tool_calling": _tool_calling(settings, runtime),
        "reasoning": _reasoning(settings, runtime),
        "guardrails": _guardrails(runtime),
        "auth": {
            "mode": "api_keys" if settings.api_keys_file else "none",
            "keys_file": str(settings.api_keys_file) if settings.api_keys_file else None,
            "allow_unauthenticated": settings.allow_unauthenticated,
            "tls": settings.ssl_mode,
            "cors_allow_origins": list(settings.cors_allow_origins),
        },
        "configuration": effective_configuration(settings),
    }


def _adapters(settings: Settings, runtime: Runtime) -> dict[str, Any]:
    """The LoRA adapters served: those loaded, else (models not loaded yet, `nimble
    inspect`) those the models will load at start."""
    loaded = {a.spec.name: a.spec for a in runtime.adapters}
    for served in runtime.models.values():
        if not served.loaded:
            loaded.update((a.name, a) for a in served.spec.adapters)
    return {
        "directory": str(settings.lora_dir) if settings.lora_dir else None,
        "poll_interval": settings.lora_poll_interval if settings.lora_dir else None,
        "runtime_loading": settings.runtime_adapters,
        "served": [
            {
                "name": a.name,
                "base": a.base,
                "source": str(a.path),
                "format": a.format,
                "sha256": a.sha256,
                "rank": a.rank,
                "origin": a.origin,
            }
            for a in loaded.values()
        ],
    }


def _tool_calling(settings: Settings, runtime: Runtime) -> dict[str, Any]:
    """Who parses tool calls for which model, and what constrained decoding is offered."""
    models = {}
    for served in runtime.models.values():
        if Task.CHAT not in served.spec.tasks:
            continue
        fmt = tool_format(settings.tool_parser or served.spec.options.get("tool_parser"))
        shows = served.info.renders_tools if served.loaded else None
        models[served.spec.id] = {"parser": fmt.name, "template_renders_tools": shows}
    return {
        "supported": True,
        "enabled": bool({"chat", "messages"} & set(settings.endpoints)),
        "parser_setting": settings.tool_parser,
        "models": models,
        "structured_output": list(STRUCTURED_OUTPUT),
        "responses_store": settings.responses_max_stored,
    }


def _reasoning(settings: Settings, runtime: Runtime) -> dict[str, Any]:
    """Which chat models have their thinking moved to `reasoning_content`, by which parser."""
    models = {}
    for served in runtime.models.values():
        if Task.CHAT in served.spec.tasks:
            name = settings.reasoning_parser or served.spec.options.get("reasoning_parser")
            fmt = reasoning_format(name)
            models[served.spec.id] = {"parser": fmt.name if fmt else None}
    return {"parser_setting": settings.reasoning_parser, "models": models}


def _guardrails(runtime: Runtime) -> dict[str, Any] | None:
    """The rails in force (None: no guardrails file): per generative model, the rails on
    its input and its output; each rail's type, stages and settings (no secrets)."""
    if runtime.guardrails is None:
        return None
    served = [m.spec.id for m in runtime.models.values() if m.spec.tasks & GENERATIVE]
    served += [a.name for m in runtime.models.values() for a in m.spec.adapters]
    return runtime.guardrails.describe(served)


STRUCTURED_OUTPUT = (
    "response_format.json_object",
    "response_format.json_schema",
    "guided_json",
    "guided_regex",
    "guided_choice",
    "guided_grammar",
)


def effective_configuration(settings: Settings) -> dict[str, Any]:
    """Every setting as it applies, secrets redacted."""
    values = settings.model_dump(mode="json")
    for name in ("otlp_endpoint", "hf_endpoint"):
        values[name] = redact_url(values.get(name))
    return dict(values)


def redact_url(url: str | None) -> str | None:
    """Drop `user:password@` from a URL (collector and mirror URLs may carry them)."""
    if not url:
        return url
    parts = urlsplit(url)
    if parts.username is None and parts.password is None:
        return url
    host = parts.hostname or ""
    netloc = f"***@{host}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit(parts._replace(netloc=netloc))


def _model(served: ServedModel, resolved: ResolvedModel | None) -> dict[str, Any]:
    spec = served.spec
    entry: dict[str, Any] = {
        "id": spec.id,
        "tasks": sorted(t.value for t in spec.tasks),
        "source": spec.source,
        "state": "loaded" if served.loaded else "loading",
        "engine": {"name": spec.engine, "version": None},
        "context_length": None,
        "profile": None,
        "files": [],
    }
    if resolved is not None:
        selection = resolved.selection
        profile = selection.profile
        entry["profile"] = {
            "id": profile.id,
            "name": profile.name,
            "engine": profile.engine,
            "precision": profile.precision,
            "tensor_parallel_size": profile.tensor_parallel_size,
            "status": selection.selected.status,
            "reason": selection.reason,
        }
        entry["files"] = [
            {
                "name": f.name,
                "source": f.source,
                "path": str(f.path),
                "sha256": f.sha256,
                "verified": f.verified,
            }
            for f in resolved.files
        ]
    if served.loaded:
        info = served.info
        entry["engine"] = {**info.extra, "name": info.engine, "version": info.engine_version}
        entry["context_length"] = info.context_length
        measured = {f.path: f for f in info.files}
        for f in entry["files"]:
            loaded = measured.get(f["path"])
            if loaded is not None:
                f["size_bytes"] = loaded.size_bytes
                if f["sha256"] is None:
                    f["sha256"] = loaded.sha256
        if not entry["files"]:
            entry["files"] = [
                {
                    "name": f.path,
                    "source": spec.source,
                    "path": f.path,
                    "sha256": f.sha256,
                    "size_bytes": f.size_bytes,
                    "verified": False,
                }
                for f in info.files
            ]
    return entry
