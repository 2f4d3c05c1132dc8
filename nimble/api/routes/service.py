"""Models list, version and metadata."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request

from nimble import __version__
from nimble.api.deps import GrantDep, RuntimeDep
from nimble.api.endpoints import ENDPOINT_PATHS, HEALTH_PATHS
from nimble.api.schemas.service import (
    MetadataResponse,
    ModelList,
    VersionResponse,
)
from nimble.runtime.deployment import deployment_record

router = APIRouter()


@router.get(
    "/v1/models",
    response_model=ModelList,
    response_model_exclude_none=True,
    summary="List served models",
)
async def list_models(runtime: RuntimeDep, grant: GrantDep) -> Any:
    return {
        "object": "list",
        "data": [
            {
                "id": m.spec.id,
                "object": "model",
                "created": m.created,
                "owned_by": "nimble",
                "ranking": runtime.ranking_method(m.spec.id),
            }
            for m in runtime.models.values()
            if grant.allows_model(m.spec.id)
        ],
    }


@router.get("/v1/version", response_model=VersionResponse, summary="nimble version")
async def version() -> Any:
    return {"release": __version__, "api_version": "v1"}


@router.get(
    "/v1/metadata",
    response_model=MetadataResponse,
    summary="Served models, their engines and weight files (with sha256)",
)
async def metadata(runtime: RuntimeDep, request: Request) -> Any:
    models = []
    for m in runtime.models.values():
        entry: dict[str, Any] = {
            "id": m.spec.id,
            "tasks": sorted(t.value for t in m.spec.tasks),
            "engine": m.spec.engine,
            "engine_version": "",
            "context_length": 0,
            "source": m.spec.source,
            "profile": m.spec.profile_name,
            "profile_id": m.spec.profile_id,
            "files": [],
            "details": {"state": "loading"},
        }
        if m.loaded:
            info = m.info
            entry.update(
                engine_version=info.engine_version,
                context_length=info.context_length,
                files=[f.__dict__ for f in info.files],
                details={"state": "loaded", **info.extra},
            )
        models.append(entry)
    hardware = request.app.state.deployment.hardware
    return {
        "version": __version__,
        "state": runtime.state.value,
        "models": models,
        "hardware": hardware.summary() if hardware is not None else None,
    }


@router.get(
    "/v1/manifest",
    summary="The deployment record: version, models, files and sha256, engine, selected "
    "profile and why, hardware, effective configuration (secrets redacted), endpoints, "
    "logging, metrics, tracing, auth",
)
async def manifest(runtime: RuntimeDep, request: Request) -> dict[str, Any]:
    return deployment_record(request.app.state.deployment, runtime, ENDPOINT_PATHS, HEALTH_PATHS)
