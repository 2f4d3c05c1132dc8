"""Health probes: liveness and readiness, and vLLM's `/health` (never behind an API key)."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response

from nimble.api.call import Call
from nimble.api.route import Route, json_response
from nimble.api.schemas.service import HealthResponse
from nimble.runtime import Runtime, ServiceState

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
    return _health(*await _readiness(Call.of(request).runtime))


@router.get(
    "/health",
    response_class=Response,
    responses={
        200: {"description": "Ready: empty body", "content": None},
        503: {"description": "Loading, draining, failed or an engine down: empty body"},
    },
    summary="vLLM's health check, for routers and probes written for vLLM: 200 with an empty "
    "body when ready, 503 otherwise (the readiness of /v1/health/ready)",
)
async def health(request: Request) -> Response:
    status, _state, _message = await _readiness(Call.of(request).runtime)
    return Response(status_code=status)


async def _readiness(runtime: Runtime) -> tuple[int, str, str]:
    if runtime.state is not ServiceState.READY:
        state = runtime.state.value
        return 503, state, f"Service is not ready: {state}."
    down = await runtime.unhealthy_models()
    if down:
        names = ", ".join(down)
        return 503, "engine_down", f"Service is not ready: the engine of {names} is down."
    return 200, "ready", "Service is ready."


def _health(status_code: int, status: str, message: str) -> Response:
    body = {"object": "health.response", "status": status, "message": message}
    return json_response(body, status_code)
