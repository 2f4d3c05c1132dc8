"""Health probes: liveness and readiness (never behind an API key)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from fastapi.responses import JSONResponse

from nimble.api.deps import RuntimeDep
from nimble.api.schemas.service import HealthResponse
from nimble.runtime import ServiceState

router = APIRouter()


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
