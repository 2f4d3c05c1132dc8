"""`POST /v1/completions` (a prompt, or a list of prompts run one after the other)."""

from __future__ import annotations

from collections.abc import AsyncGenerator, AsyncIterator
from typing import Any

from fastapi import APIRouter, Request, Response

from nimble.api.call import Call, now
from nimble.api.logprobs import completion_logprobs
from nimble.api.route import ERROR_RESPONSES, Route, json_response, sse_doc
from nimble.api.schemas.common import usage_out
from nimble.api.schemas.completions import CompletionRequest, CompletionResponse
from nimble.api.streaming import prime, sse_response, until_disconnect
from nimble.runtime.aggregate import collect
from nimble.runtime.fanin import generate_each
from nimble.types import GenerationChunk

router = APIRouter(route_class=Route)


@router.post(
    "/v1/completions",
    response_model=CompletionResponse,
    responses={**ERROR_RESPONSES, **sse_doc("CompletionResponse")},
    summary="Create a text completion (OpenAI compatible)",
)
async def completions(request: Request, body: CompletionRequest) -> Response:
    call = Call.for_model(request, body.model)
    body.refuse_unsupported_completion()
    requests = body.generate_requests(call.request_id)
    stream = generate_each(call.runtime, body.model, requests)
    head = {
        "id": f"cmpl-{call.request_id}",
        "object": "text_completion",
        "created": now(),
        "model": body.model,
    }
    if body.stream:
        return sse_response(_chunks(await prime(request, stream), head, body), call.request_id)
    result = await until_disconnect(request, collect(stream, body.n * len(requests)))
    choices = [
        {
            "index": choice.index,
            "text": choice.text,
            "logprobs": completion_logprobs(choice.logprobs) if body.logprobs is not None else None,
            "finish_reason": choice.finish_reason,
        }
        for choice in result.choices
    ]
    answer = {**head, "system_fingerprint": None, "choices": choices}
    return json_response({**answer, "usage": usage_out(result.usage)})


async def _chunks(
    stream: AsyncIterator[GenerationChunk], head: dict[str, Any], body: CompletionRequest
) -> AsyncGenerator[dict[str, Any], None]:
    include_usage, continuous_usage = body.include_usage(), body.continuous_usage()
    if include_usage:
        head = {**head, "usage": None}
    offsets: dict[int, int] = {}
    so_far: dict[int, dict[str, int]] = {}  # continuous usage: each choice's latest
    async for chunk in stream:
        if chunk.usage is not None:
            if include_usage:
                yield {**head, "choices": [], "usage": usage_out(chunk.usage)}
            continue
        if continuous_usage:
            if chunk.progress is not None:
                so_far[chunk.index] = usage_out(chunk.progress)
            head = {**head, "usage": so_far.get(chunk.index)}
        if not chunk.text and chunk.finish_reason is None:
            continue
        logprobs = None
        if body.logprobs is not None and chunk.logprobs:
            logprobs = completion_logprobs(chunk.logprobs, offsets.get(chunk.index, 0))
        offsets[chunk.index] = offsets.get(chunk.index, 0) + len(chunk.text)
        choice = {
            "index": chunk.index,
            "text": chunk.text,
            "logprobs": logprobs,
            "finish_reason": chunk.finish_reason,
        }
        yield {**head, "choices": [choice]}
