"""Models (the list, and one by id), version, metadata and the deployment record."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request, Response

from nimble.api.call import Call
from nimble.api.endpoints import ENDPOINT_PATHS, HEALTH_PATHS
from nimble.api.route import ERROR_RESPONSES, Route, json_response
from nimble.api.schemas.service import (
    MetadataResponse,
    ModelCard,
    ModelList,
    VersionResponse,
)
from nimble.errors import ModelNotFound
from nimble.runtime.adapters import LoadedAdapter
from nimble.runtime.deployment import deployment_record
from nimble.runtime.served import ServedModel
from nimble.security.keys import KeyStore, keys_record
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
    runtime = call.runtime
    cards = [_card(call, m) for m in runtime.models.values() if call.grant.allows_model(m.spec.id)]
    cards += [_adapter_card(a) for a in runtime.adapters if call.grant.allows_model(a.spec.name)]
    return json_response({"object": "list", "data": cards})


@router.get(
    "/v1/models/{model_id:path}",
    response_model=ModelCard,
    response_model_exclude_none=True,
    responses={404: ERROR_RESPONSES[404]},
    summary="One served model (the list's entry); ids may hold slashes (`org/name`)",
)
async def retrieve_model(request: Request, model_id: str) -> Response:
    call = Call.of(request)
    model = call.runtime.models.get(model_id)
    adapter = call.runtime.adapters.get(model_id)
    # a model the caller's key may not use is as absent as in the list
    if model is not None and call.grant.allows_model(model_id):
        return json_response(_card(call, model))
    if adapter is not None and call.grant.allows_model(model_id):
        return json_response(_adapter_card(adapter))
    raise ModelNotFound(f"The model `{model_id}` does not exist.", param="model")


def _adapter_card(adapter: LoadedAdapter) -> dict[str, Any]:
    return {
        "id": adapter.spec.name,
        "object": "model",
        "created": adapter.created,
        "owned_by": "nimble",
        "parent": adapter.spec.base,
    }


def _card(call: Call, model: ServedModel) -> dict[str, Any]:
    card: dict[str, Any] = {
        "id": model.spec.id,
        "object": "model",
        "created": model.created,
        "owned_by": "nimble",
    }
    ranking = call.runtime.ranking_method(model.spec.id)
    if ranking is not None:  # absent for a model that does not rank (not null)
        card["ranking"] = ranking
    return card


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
    "logging, metrics, tracing, auth (each API key by its hashed ref: purpose and scopes)",
)
async def manifest(request: Request) -> Response:
    deployment = request.app.state.deployment
    runtime = Call.of(request).runtime
    record = deployment_record(deployment, runtime, ENDPOINT_PATHS, HEALTH_PATHS)
    store: KeyStore | None = request.app.state.keys
    record["auth"]["keys"] = keys_record(store.keys if store is not None else None)
    return json_response(record)
