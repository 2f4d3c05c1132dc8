"""Health probes: liveness and readiness (never behind an API key)."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response

from nimble.api.call import Call
from nimble.api.route import Route, json_response
from nimble.api.schemas.service import HealthResponse
from nimble.runtime import ServiceState

router = APIRouter(route_class=Route)


@router.get("/v1/health/live", response_model=HealthResponse, summary="Liveness probe")
async def live(request: Request) -> Response:
    return _health(200, "live", "Service is live.")


@router.get(
    "/v1/health/ready",
    response_model=HealthResponse,
    responses={503: {"model": HealthResponse, "description": "Loading, draining or failed"}},
    summary="Readiness probe: 200 only after every model passed a real warm-up, and while "
    "every engine answers healthy",
)
async def ready(request: Request) -> Response:
    runtime = Call.of(request).runtime
    if runtime.state is not ServiceState.READY:
        state = runtime.state.value
        return _health(503, state, f"Service is not ready: {state}.")
    down = await runtime.unhealthy_models()
    if down:
        names = ", ".join(down)
        return _health(503, "engine_down", f"Service is not ready: the engine of {names} is down.")
    return _health(200, "ready", "Service is ready.")


def _health(status_code: int, status: str, message: str) -> Response:
    body = {"object": "health.response", "status": status, "message": message}
    return json_response(body, status_code)
