"""`POST /v1/embeddings`."""

from __future__ import annotations

import base64

import numpy as np
import orjson
from fastapi import APIRouter, Request, Response

from nimble.api.body import RequestOnlyRoute, body_doc, json_body
from nimble.api.deps import ERROR_RESPONSES, grant_of, runtime_of
from nimble.api.errors import request_id_of
from nimble.api.schemas.embeddings import EmbeddingRequest, EmbeddingResponse
from nimble.api.streaming import until_disconnect
from nimble.types import EmbedRequest

# the one route that takes the request alone: at hundreds of one-sentence requests a
# second, FastAPI's request handling (dependencies, body) took a seventh of the event loop
router = APIRouter(route_class=RequestOnlyRoute)


@router.post(
    "/v1/embeddings",
    response_model=EmbeddingResponse,
    responses=ERROR_RESPONSES,
    summary="Create embeddings (OpenAI compatible)",
    openapi_extra=body_doc(EmbeddingRequest),
)
async def embeddings(request: Request) -> Response:
    body = await json_body(request, EmbeddingRequest)
    grant_of(request).require_model(body.model)
    work = runtime_of(request).embed(
        body.model,
        EmbedRequest(request_id_of(request), body.inputs(), truncate=body.truncate),
        input_type=body.input_type,
        dimensions=body.dimensions,
    )
    result = await until_disconnect(request, work)
    payload = {
        "object": "list",
        "data": [
            {"object": "embedding", "index": i, "embedding": _encode(v, body.encoding_format)}
            for i, v in enumerate(result.vectors)
        ],
        "model": body.model,
        "usage": {"prompt_tokens": result.prompt_tokens, "total_tokens": result.prompt_tokens},
    }
    # a Response skips FastAPI's re-validation and encoding of every float (the schema
    # above still documents it), and orjson writes floats ~10x faster than json
    return Response(orjson.dumps(payload), media_type="application/json")


def _encode(vector: tuple[float, ...], encoding: str) -> list[float] | str:
    if encoding == "base64":
        # OpenAI's base64 format: little-endian float32 bytes
        return base64.b64encode(np.asarray(vector, dtype="<f4").tobytes()).decode()
    return list(vector)
