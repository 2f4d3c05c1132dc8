"""`POST /v1/embeddings`."""

from __future__ import annotations

import base64
import struct

from fastapi import APIRouter, Request, Response

from nimble.api.call import Call
from nimble.api.route import ERROR_RESPONSES, Route, json_response
from nimble.api.schemas.embeddings import EmbeddingRequest, EmbeddingResponse
from nimble.api.streaming import until_disconnect
from nimble.types import EmbedRequest

router = APIRouter(route_class=Route)


@router.post(
    "/v1/embeddings",
    response_model=EmbeddingResponse,
    responses=ERROR_RESPONSES,
    summary="Create embeddings (OpenAI compatible)",
)
async def embeddings(request: Request, body: EmbeddingRequest) -> Response:
    call = Call.for_model(request, body.model)
    work = call.runtime.embed(
        body.model,
        EmbedRequest(call.request_id, body.inputs(), truncate=body.truncate),
        input_type=body.input_type,
        dimensions=body.dimensions,
    )
    result = await until_disconnect(request, work)
    return json_response(
        {
            "object": "list",
            "data": [
                {"object": "embedding", "index": i, "embedding": _encode(v, body.encoding_format)}
                for i, v in enumerate(result.vectors)
            ],
            "model": body.model,
            "usage": {"prompt_tokens": result.prompt_tokens, "total_tokens": result.prompt_tokens},
        }
    )


def _encode(vector: tuple[float, ...], encoding: str) -> list[float] | str:
    if encoding == "base64":
        # OpenAI's base64 format: little-endian float32 bytes
        return base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode()
    return list(vector)
