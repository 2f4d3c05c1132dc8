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
    summary="Readiness probe: 200 only after every model passed a real warm-up, and while "
    "every engine answers healthy",
)
async def ready(runtime: RuntimeDep) -> Any:
    if runtime.state is not ServiceState.READY:
        return _not_ready(runtime.state.value, f"Service is not ready: {runtime.state.value}.")
    down = await runtime.unhealthy_models()
    if down:
        names = ", ".join(down)
        return _not_ready("engine_down", f"Service is not ready: the engine of {names} is down.")
    return {"object": "health.response", "status": "ready", "message": "Service is ready."}


def _not_ready(status: str, message: str) -> JSONResponse:
    body = {"object": "health.response", "status": status, "message": message}
    return JSONResponse(body, status_code=503)
