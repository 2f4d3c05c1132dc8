"""`POST /v1/load_lora_adapter` and `POST /v1/unload_lora_adapter` (vLLM's paths, bodies and
plain-text answers): LoRA adapters loaded and unloaded at run time. Off unless
`runtime_adapters` is set (404 like an unknown path); with API keys, only for keys whose
endpoints name `admin` (403 for any other)."""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter, Request, Response
from pydantic import Field

from nimble.api.call import Call
from nimble.api.route import ERROR_RESPONSES, Route
from nimble.api.schemas.common import Strict
from nimble.errors import ConfigError, InvalidRequest
from nimble.models.adapters import check_name, identify, resolve

router = APIRouter(route_class=Route)


class LoadAdapterBody(Strict):
    lora_name: str = Field(min_length=1, description="The name it is served (requested) under.")
    lora_path: str = Field(
        min_length=1, description="A GGUF adapter file or a PEFT folder on the server's disk."
    )
    base_model_name: str | None = Field(
        default=None,
        description="The served model it adapts. Default: its manifest's `base`, else the "
        "only generative model.",
    )


class UnloadAdapterBody(Strict):
    lora_name: str = Field(min_length=1)
    lora_int_id: int | None = None  # vLLM's; names are enough here


@router.post(
    "/v1/load_lora_adapter",
    responses=ERROR_RESPONSES,
    summary="Load a LoRA adapter, served under its own name (vLLM)",
)
async def load_lora_adapter(request: Request, body: LoadAdapterBody) -> Response:
    call = Call.of(request)
    runtime = call.runtime
    try:
        name = check_name(body.lora_name, "lora_name")
        found = identify(Path(body.lora_path), name)
        if found is None:
            raise InvalidRequest(
                f"lora_path: {body.lora_path} is neither a GGUF adapter file nor a PEFT "
                "adapter folder on this server",
                param="lora_path",
            )
        adapter = resolve(found, runtime.adapters.bases(), "api", body.base_model_name)
    except ConfigError as exc:
        raise InvalidRequest(str(exc), param="lora_path") from exc
    await runtime.adapters.load(adapter)
    return Response(f"Success: LoRA adapter '{name}' added successfully.", media_type="text/plain")


@router.post(
    "/v1/unload_lora_adapter",
    responses=ERROR_RESPONSES,
    summary="Unload a LoRA adapter: new requests for it get 404, those running finish (vLLM)",
)
async def unload_lora_adapter(request: Request, body: UnloadAdapterBody) -> Response:
    runtime = Call.of(request).runtime
    running = await runtime.adapters.unload(body.lora_name)
    note = f" ({running} requests in flight finish on it first)" if running else ""
    return Response(
        f"Success: LoRA adapter '{body.lora_name}' removed successfully.{note}",
        media_type="text/plain",
    )
