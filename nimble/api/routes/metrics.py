"""`GET /v1/metrics` (and `/metrics`): Prometheus text exposition."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request, Response
from prometheus_client import CONTENT_TYPE_LATEST

from nimble.api.call import Call
from nimble.api.route import Route
from nimble.observability.metrics import Metrics

router = APIRouter(route_class=Route)

_DOC: dict[int | str, dict[str, Any]] = {
    200: {"content": {CONTENT_TYPE_LATEST: {"schema": {"type": "string"}}}}
}


@router.get(
    "/v1/metrics",
    response_class=Response,
    responses=_DOC,
    summary="Prometheus metrics (names in docs/operations.md)",
)
@router.get("/metrics", response_class=Response, responses=_DOC, summary="Alias of /v1/metrics")
async def metrics(request: Request) -> Response:
    registry: Metrics = request.app.state.metrics
    await Call.of(request).runtime.refresh_gauges()
    return Response(registry.exposition(), media_type=CONTENT_TYPE_LATEST)
