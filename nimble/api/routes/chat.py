"""`POST /v1/chat/completions`."""

from __future__ import annotations

from collections.abc import AsyncGenerator, AsyncIterator
from typing import Any

from fastapi import APIRouter, Request, Response

from nimble.api.call import Call, now
from nimble.api.logprobs import chat_logprobs
from nimble.api.route import ERROR_RESPONSES, Route, json_response, sse_doc
from nimble.api.schemas.chat import ChatCompletionRequest, ChatCompletionResponse
from nimble.api.schemas.common import usage_out
from nimble.api.streaming import prime, sse_response, until_disconnect
from nimble.runtime.aggregate import Choice, collect
from nimble.types import GenerationChunk, ToolCallDelta

router = APIRouter(route_class=Route)


@router.post(
    "/v1/chat/completions",
    response_model=ChatCompletionResponse,
    responses={**ERROR_RESPONSES, **sse_doc("ChatCompletionChunk")},
    summary="Create a chat completion (OpenAI compatible)",
)
async def chat_completions(request: Request, body: ChatCompletionRequest) -> Response:
    call = Call.for_model(request, body.model)
    if body.tools or body.functions:
        call.grant.require_tools(tool.function.name for tool in body.tools or ())
    body.refuse_unsupported_chat()
    stream = call.runtime.generate(body.model, body.generate_request(call.request_id))
    head = {"id": f"chatcmpl-{call.request_id}", "created": now(), "model": body.model}
    if body.stream:
        primed = await prime(request, stream)
        chunks = _chunks(primed, head, body.include_usage(), body.continuous_usage())
        return sse_response(chunks, call.request_id)
    result = await until_disconnect(request, collect(stream, body.n))
    choices = [
        {
            "index": choice.index,
            "message": _message(choice),
            "logprobs": chat_logprobs(choice.logprobs) if body.logprobs else None,
            "finish_reason": choice.finish_reason,
        }
        for choice in result.choices
    ]
    return json_response(
        {
            "id": head["id"],
            "object": "chat.completion",
            "created": head["created"],
            "model": body.model,
            "system_fingerprint": None,
            "choices": choices,
            "usage": usage_out(result.usage),
        }
    )


def _message(choice: Choice) -> dict[str, Any]:
    # the name DeepSeek's API and vLLM (before `reasoning`) use; null as vLLM writes it
    return {**_answer(choice), "reasoning_content": choice.reasoning or None}


def _answer(choice: Choice) -> dict[str, Any]:
    calls = choice.tool_calls
    if not calls:
        return {"role": "assistant", "content": choice.text, "tool_calls": None}
    return {
        "role": "assistant",
        "content": choice.text or None,
        "tool_calls": [
            {
                "id": call.id,
                "type": "function",
                "function": {"name": call.name, "arguments": call.arguments},
            }
            for call in calls
        ],
    }


async def _chunks(
    stream: AsyncIterator[GenerationChunk],
    head: dict[str, Any],
    include_usage: bool,
    continuous_usage: bool = False,
) -> AsyncGenerator[dict[str, Any], None]:
    head = {**head, "object": "chat.completion.chunk"}
    if include_usage:
        head["usage"] = None
    started: set[int] = set()
    so_far: dict[int, dict[str, int]] = {}  # continuous usage: each choice's latest
    async for chunk in stream:
        if chunk.usage is not None:
            if include_usage:
                yield {**head, "choices": [], "usage": usage_out(chunk.usage)}
            continue
        if continuous_usage:
            if chunk.progress is not None:
                so_far[chunk.index] = usage_out(chunk.progress)
            head["usage"] = so_far.get(chunk.index)
        if chunk.index not in started:
            started.add(chunk.index)
            yield {**head, "choices": [_choice(chunk.index, {"role": "assistant", "content": ""})]}
        if chunk.reasoning:
            choice = _choice(chunk.index, {"reasoning_content": chunk.reasoning})
            if chunk.logprobs and not chunk.text:
                choice["logprobs"] = chat_logprobs(chunk.logprobs)
            yield {**head, "choices": [choice]}
        if chunk.text:
            choice = _choice(chunk.index, {"content": chunk.text})
            if chunk.logprobs:
                choice["logprobs"] = chat_logprobs(chunk.logprobs)
            yield {**head, "choices": [choice]}
        # one delta per chunk, as OpenAI and vLLM stream them: a client that reads one
        # entry per call index per chunk (the SDK's stream helper, instructor, LlamaIndex)
        # would lose the arguments that shared a chunk with the call's name
        for delta in chunk.tool_calls:
            yield {**head, "choices": [_choice(chunk.index, {"tool_calls": [_call_delta(delta)]})]}
        if chunk.finish_reason is not None:
            yield {**head, "choices": [_choice(chunk.index, {}, chunk.finish_reason)]}


def _call_delta(delta: ToolCallDelta) -> dict[str, Any]:
    if delta.id is None:
        return {"index": delta.index, "function": {"arguments": delta.arguments}}
    return {
        "index": delta.index,
        "id": delta.id,
        "type": "function",
        "function": {"name": delta.name, "arguments": delta.arguments},
    }


def _choice(index: int, delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
    return {"index": index, "delta": delta, "logprobs": None, "finish_reason": finish}
