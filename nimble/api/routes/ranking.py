"""`POST /v1/ranking` (NIM) and `POST /v1/rerank` (Cohere/Jina): one runtime call each."""

from __future__ import annotations

import math
from typing import Any

from fastapi import APIRouter, Request, Response

from nimble.api.call import Call
from nimble.api.route import ERROR_RESPONSES, Route, json_response
from nimble.api.schemas.ranking import (
    RankingRequest,
    RankingResponse,
    RerankRequest,
    RerankResponse,
)
from nimble.api.streaming import until_disconnect
from nimble.types import RankRequest

router = APIRouter(route_class=Route)


@router.post(
    "/v1/ranking",
    response_model=RankingResponse,
    responses=ERROR_RESPONSES,
    summary="Rank passages for a query (NVIDIA NIM); logits, best first",
)
async def ranking(request: Request, body: RankingRequest) -> Response:
    call = Call.for_model(request, body.model)
    passages = tuple(p.text for p in body.passages)
    work = call.runtime.rank(
        body.model,
        RankRequest(call.request_id, body.query.text, passages, body.truncate),
        documents_param="passages",
    )
    result, _method = await until_disconnect(request, work)
    order = sorted(range(len(passages)), key=lambda i: -result.scores[i])
    return json_response({"rankings": [{"index": i, "logit": result.scores[i]} for i in order]})


@router.post(
    "/v1/rerank",
    response_model=RerankResponse,
    response_model_exclude_none=True,  # `document` is left out unless asked for
    responses=ERROR_RESPONSES,
    summary="Rerank documents for a query (Cohere/Jina); relevance scores, best first",
)
async def rerank(request: Request, body: RerankRequest) -> Response:
    call = Call.for_model(request, body.model)
    texts = body.texts()
    work = call.runtime.rank(
        body.model, RankRequest(call.request_id, body.query, texts, body.truncate)
    )
    result, method = await until_disconnect(request, work)
    # a cross-encoder's logit becomes a probability; a cosine is a score already
    scores = [_sigmoid(s) if method == "cross-encoder" else s for s in result.scores]
    order = sorted(range(len(texts)), key=lambda i: -scores[i])[: body.top_n]
    results = []
    for i in order:
        item: dict[str, Any] = {"index": i, "relevance_score": scores[i]}
        if body.return_documents:  # absent otherwise (not null)
            item["document"] = {"text": texts[i]}
        results.append(item)
    usage = {"total_tokens": result.prompt_tokens}
    return json_response(
        {"id": call.request_id, "model": body.model, "results": results, "usage": usage}
    )


def _sigmoid(x: float) -> float:
    return 1 / (1 + math.exp(-x)) if x >= 0 else math.exp(x) / (1 + math.exp(x))
