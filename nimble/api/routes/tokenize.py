"""`POST /tokenize` and `POST /detokenize` (vLLM's paths and shapes): the served model's own
tokenizer, and for `messages` its chat template as a chat completion applies it."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response

from nimble.api.call import Call
from nimble.api.route import ERROR_RESPONSES, Route, json_response
from nimble.api.schemas.tokenize import (
    DetokenizeBody,
    DetokenizeResponse,
    TokenizeBody,
    TokenizeResponse,
)

router = APIRouter(route_class=Route)


@router.post(
    "/tokenize",
    response_model=TokenizeResponse,
    responses=ERROR_RESPONSES,
    summary="Token ids of a prompt, or of messages through the model's chat template (vLLM)",
)
async def tokenize(request: Request, body: TokenizeBody) -> Response:
    call = Call.for_model(request, body.model)
    if body.tools:  # declared as a chat completion declares them: the key's scope holds
        call.grant.require_tools(tool.function.name for tool in body.tools)
    work = body.tokenize_request(call.request_id)
    tokens, window = await call.runtime.tokenize(body.model, work)
    return json_response(
        {
            "count": len(tokens.ids),
            "max_model_len": window,
            "tokens": list(tokens.ids),
            "token_strs": list(tokens.pieces) if body.return_token_strs else None,
        }
    )


@router.post(
    "/detokenize",
    response_model=DetokenizeResponse,
    responses=ERROR_RESPONSES,
    summary="The text of token ids (vLLM)",
)
async def detokenize(request: Request, body: DetokenizeBody) -> Response:
    call = Call.for_model(request, body.model)
    text = await call.runtime.detokenize(body.model, body.ids())
    return json_response({"prompt": text})
