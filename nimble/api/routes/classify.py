"""`POST /v1/classify` (vLLM's shape; `/classify` is vLLM's own path) and `POST
/v1/moderations` (OpenAI's)."""

from __future__ import annotations

import uuid

from fastapi import APIRouter, Request, Response

from nimble.api.call import Call, now
from nimble.api.route import ERROR_RESPONSES, Route, json_response
from nimble.api.schemas.classify import (
    ClassifyRequest,
    ClassifyResponse,
    ModerationRequest,
    ModerationResponse,
)
from nimble.api.streaming import until_disconnect
from nimble.types import ClassifyRequest as Classify

router = APIRouter(route_class=Route)


@router.post(
    "/v1/classify",
    response_model=ClassifyResponse,
    responses=ERROR_RESPONSES,
    summary="Classify texts with a sequence classifier (vLLM's shape)",
)
@router.post("/classify", response_model=ClassifyResponse, responses=ERROR_RESPONSES)
async def classify(request: Request, body: ClassifyRequest) -> Response:
    model = Call.of(request).runtime.classifier_model(body.model)
    call = Call.for_model(request, model)
    work = call.runtime.classify(
        model, Classify(call.request_id, body.inputs(), body.truncate_prompt_tokens)
    )
    result = await until_disconnect(request, work)
    data = [
        {"index": i, "label": c.label, "probs": list(c.probs), "num_classes": len(c.labels)}
        for i, c in enumerate(result.classifications)
    ]
    tokens = result.prompt_tokens
    usage = {"prompt_tokens": tokens, "total_tokens": tokens, "completion_tokens": 0}
    return json_response(
        {
            "id": f"classify-{uuid.uuid4().hex}",
            "object": "list",
            "created": now(),
            "model": model,
            "data": data,
            "usage": {**usage, "prompt_tokens_details": None},
        }
    )


@router.post(
    "/v1/moderations",
    response_model=ModerationResponse,
    responses=ERROR_RESPONSES,
    summary="Moderate texts with a classifier or a guard model (OpenAI compatible)",
)
async def moderations(request: Request, body: ModerationRequest) -> Response:
    model = Call.of(request).runtime.moderation_model(body.model)
    call = Call.for_model(request, model)
    verdicts = await until_disconnect(request, call.runtime.moderate(model, body.inputs()))
    results = [
        {
            "flagged": v.flagged,
            "categories": v.categories,
            "category_scores": v.category_scores,
            "category_applied_input_types": {key: ["text"] for key in v.categories},
        }
        for v in verdicts
    ]
    return json_response({"id": f"modr-{uuid.uuid4().hex}", "model": model, "results": results})
