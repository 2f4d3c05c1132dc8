"""`POST /v1/ranking` (NIM), `POST /v1/rerank` (Cohere/Jina) and `POST /v2/rerank` (Cohere
v2): one runtime call each, the same scores."""

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
    RerankV2Request,
    RerankV2Response,
)
from nimble.api.streaming import until_disconnect
from nimble.errors import UnsupportedParameter
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
    results, tokens = await _reranked(request, call, body)
    usage = {"total_tokens": tokens}
    return json_response(
        {"id": call.request_id, "model": body.model, "results": results, "usage": usage}
    )


@router.post(
    "/v2/rerank",
    response_model=RerankV2Response,
    response_model_exclude_none=True,  # `document` is left out unless asked for
    responses=ERROR_RESPONSES,
    summary="Rerank documents for a query (Cohere v2); relevance scores, best first",
)
async def rerank_v2(request: Request, body: RerankV2Request) -> Response:
    call = Call.for_model(request, body.model)
    if body.priority:
        raise UnsupportedParameter("priority: nimble serves in arrival order", param="priority")
    results, tokens = await _reranked(request, call, body, body.max_tokens_per_doc)
    meta = {
        "api_version": {"version": "2"},
        "billed_units": {"search_units": math.ceil(len(body.documents) / 100)},
        "tokens": {"input_tokens": tokens, "output_tokens": 0},
    }
    return json_response(
        {
            "id": call.request_id,
            "model": body.model,
            "results": results,
            "meta": meta,
            "usage": {"total_tokens": tokens},
        }
    )


async def _reranked(
    request: Request, call: Call, body: RerankRequest, max_document_tokens: int | None = None
) -> tuple[list[dict[str, Any]], int]:
    """The results, best first (top_n of them), and the tokens read."""
    texts = body.texts()
    work = call.runtime.rank(
        body.model,
        RankRequest(call.request_id, body.query, texts, body.truncate),
        max_document_tokens=max_document_tokens,
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
    return results, result.prompt_tokens


def _sigmoid(x: float) -> float:
    return 1 / (1 + math.exp(-x)) if x >= 0 else math.exp(x) / (1 + math.exp(x))
