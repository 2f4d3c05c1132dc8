"""Models list, health probes, version and metadata."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from fastapi.responses import JSONResponse

from nimble import __version__
from nimble.api.deps import RuntimeDep
from nimble.api.schemas.service import (
    HealthResponse,
    MetadataResponse,
    ModelList,
    VersionResponse,
)
from nimble.runtime import ServiceState

router = APIRouter()


@router.get("/v1/models", response_model=ModelList, summary="List served models")
async def list_models(runtime: RuntimeDep) -> Any:
    return {
        "object": "list",
        "data": [
            {"id": m.spec.id, "object": "model", "created": m.created, "owned_by": "nimble"}
            for m in runtime.models.values()
        ],
    }


@router.get("/v1/health/live", response_model=HealthResponse, summary="Liveness probe")
async def live() -> Any:
    return {"object": "health.response", "status": "live", "message": "Service is live."}


@router.get(
    "/v1/health/ready",
    response_model=HealthResponse,
    responses={503: {"model": HealthResponse, "description": "Loading, draining or failed"}},
    summary="Readiness probe: 200 only after every model passed a real warm-up",
)
async def ready(runtime: RuntimeDep) -> Any:
    if runtime.state is ServiceState.READY:
        return {"object": "health.response", "status": "ready", "message": "Service is ready."}
    body = {
        "object": "health.response",
        "status": runtime.state.value,
        "message": f"Service is not ready: {runtime.state.value}.",
    }
    return JSONResponse(body, status_code=503)


@router.get("/v1/version", response_model=VersionResponse, summary="nimble version")
async def version() -> Any:
    return {"release": __version__, "api_version": "v1"}


@router.get(
    "/v1/metadata",
    response_model=MetadataResponse,
    summary="Served models, their engines and weight files (with sha256)",
)
async def metadata(runtime: RuntimeDep) -> Any:
    models = []
    for m in runtime.models.values():
        entry: dict[str, Any] = {
            "id": m.spec.id,
            "tasks": sorted(t.value for t in m.spec.tasks),
            "engine": m.spec.engine,
            "engine_version": "",
            "context_length": 0,
            "source": m.spec.source,
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
    return {"version": __version__, "state": runtime.state.value, "models": models}
