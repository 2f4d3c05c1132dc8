"""Models list, version, metadata and the deployment record."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request, Response

from nimble.api.call import Call
from nimble.api.endpoints import ENDPOINT_PATHS, HEALTH_PATHS
from nimble.api.route import Route, json_response
from nimble.api.schemas.service import (
    MetadataResponse,
    ModelList,
    VersionResponse,
)
from nimble.runtime.deployment import deployment_record
from nimble.version import __version__

router = APIRouter(route_class=Route)


@router.get(
    "/v1/models",
    response_model=ModelList,
    response_model_exclude_none=True,
    summary="List served models",
)
async def list_models(request: Request) -> Response:
    call = Call.of(request)
    cards = []
    for m in call.runtime.models.values():
        if call.grant.allows_model(m.spec.id):
            card = {"id": m.spec.id, "object": "model", "created": m.created, "owned_by": "nimble"}
            ranking = call.runtime.ranking_method(m.spec.id)
            if ranking is not None:  # absent for a model that does not rank (not null)
                card["ranking"] = ranking
            cards.append(card)
    return json_response({"object": "list", "data": cards})


@router.get("/v1/version", response_model=VersionResponse, summary="nimble version")
async def version(request: Request) -> Response:
    return json_response({"release": __version__, "api_version": "v1"})


@router.get(
    "/v1/metadata",
    response_model=MetadataResponse,
    summary="Served models, their engines and weight files (with sha256)",
)
async def metadata(request: Request) -> Response:
    runtime = Call.of(request).runtime
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
                files=[
                    {"path": f.path, "sha256": f.sha256, "size_bytes": f.size_bytes}
                    for f in info.files
                ],
                details={"state": "loaded", **info.extra},
            )
        models.append(entry)
    hardware = request.app.state.deployment.hardware
    return json_response(
        {
            "version": __version__,
            "state": runtime.state.value,
            "models": models,
            "hardware": hardware.summary() if hardware is not None else None,
        }
    )


@router.get(
    "/v1/manifest",
    response_model=dict[str, Any],
    summary="The deployment record: version, models, files and sha256, engine, selected "
    "profile and why, hardware, effective configuration (secrets redacted), endpoints, "
    "logging, metrics, tracing, auth",
)
async def manifest(request: Request) -> Response:
    deployment = request.app.state.deployment
    runtime = Call.of(request).runtime
    return json_response(deployment_record(deployment, runtime, ENDPOINT_PATHS, HEALTH_PATHS))
