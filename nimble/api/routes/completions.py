"""`POST /v1/completions` (a prompt, or a list of prompts run one after the other)."""

from __future__ import annotations

from collections.abc import AsyncGenerator, AsyncIterator
from typing import Any

from fastapi import APIRouter, Request

from nimble.api.deps import ERROR_RESPONSES, GrantDep, RequestIdDep, RuntimeDep, now, sse_doc
from nimble.api.logprobs import completion_logprobs
from nimble.api.schemas.common import usage_out
from nimble.api.schemas.completions import CompletionRequest, CompletionResponse
from nimble.api.streaming import prime, sse_response, until_disconnect
from nimble.runtime import Runtime
from nimble.runtime.aggregate import collect
from nimble.types import GenerateRequest, GenerationChunk, Usage

router = APIRouter()


@router.post(
    "/v1/completions",
    response_model=CompletionResponse,
    responses={**ERROR_RESPONSES, **sse_doc("CompletionResponse")},
    summary="Create a text completion (OpenAI compatible)",
)
async def completions(
    body: CompletionRequest,
    request: Request,
    runtime: RuntimeDep,
    request_id: RequestIdDep,
    grant: GrantDep,
) -> Any:
    grant.require_model(body.model)
    body.refuse_unsupported_completion()
    params = body.sampling(body.max_tokens, body.logprobs)
    constraint = body.constraint()
    requests = [
        GenerateRequest(f"{request_id}-{i}", params, prompt=prompt, constraint=constraint)
        for i, prompt in enumerate(body.prompts())
    ]
    head = {
        "id": f"cmpl-{request_id}",
        "object": "text_completion",
        "created": now(),
        "model": body.model,
    }
    if body.stream:
        primed = await prime(request, _all(runtime, body.model, requests, body.n))
        return sse_response(_chunks(primed, head, body), request_id)
    result = await until_disconnect(
        request, collect(_all(runtime, body.model, requests, body.n), body.n * len(requests))
    )
    return {
        **head,
        "choices": [
            {
                "index": choice.index,
                "text": choice.text,
                "logprobs": completion_logprobs(choice.logprobs)
                if body.logprobs is not None
                else None,
                "finish_reason": choice.finish_reason,
            }
            for choice in result.choices
        ],
        "usage": usage_out(result.usage),
    }


async def _all(
    runtime: Runtime, model: str, requests: list[GenerateRequest], n: int
) -> AsyncGenerator[GenerationChunk, None]:
    """The prompts' streams one after the other, choice indexes offset, usage summed."""
    prompt_tokens = completion_tokens = 0
    for number, generate in enumerate(requests):
        stream = runtime.generate(model, generate)
        try:
            async for chunk in stream:
                if chunk.usage is not None:
                    prompt_tokens += chunk.usage.prompt_tokens
                    completion_tokens += chunk.usage.completion_tokens
                    continue
                yield GenerationChunk(
                    index=chunk.index + number * n,
                    text=chunk.text,
                    finish_reason=chunk.finish_reason,
                    logprobs=chunk.logprobs,
                )
        finally:
            await stream.aclose()
    yield GenerationChunk(usage=Usage(prompt_tokens, completion_tokens))


async def _chunks(
    stream: AsyncIterator[GenerationChunk], head: dict[str, Any], body: CompletionRequest
) -> AsyncGenerator[dict[str, Any], None]:
    include_usage = body.include_usage()
    if include_usage:
        head = {**head, "usage": None}
    offsets: dict[int, int] = {}
    async for chunk in stream:
        if chunk.usage is not None:
            if include_usage:
                yield {**head, "choices": [], "usage": usage_out(chunk.usage)}
            continue
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
