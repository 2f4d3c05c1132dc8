"""`POST /v1/messages` and `POST /v1/messages/count_tokens` (Anthropic's Messages API), a
translation layer over the chat path: the conversation becomes nimble's chat turns, the
runtime's chunks become content blocks (`api/messages_events.py`). Errors on these paths
are in Anthropic's shape (`api/messages_errors.py`)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request, Response

from nimble.api.call import Call
from nimble.api.messages_events import MessageBuilder, collect_message, stream_events
from nimble.api.route import ERROR_RESPONSES, Route, json_response
from nimble.api.schemas.messages import CountTokensRequest, MessagesInput, MessagesRequest
from nimble.api.schemas.messages_out import CountTokensResponse, MessageResponse
from nimble.api.streaming import prime, sse_response, until_disconnect
from nimble.types import GenerateRequest, SamplingParams

router = APIRouter(route_class=Route)

_SSE_DOC: dict[int | str, dict[str, Any]] = {
    200: {
        "description": "JSON, or with `stream: true` server-sent events, each an `event: "
        "<type>` and a `data: {type, ...}` line: message_start, ping, then per content block "
        "content_block_start, content_block_delta... (text_delta, input_json_delta, "
        "thinking_delta) and content_block_stop; then message_delta (stop_reason, usage) and "
        "message_stop, or one `error` event. No `[DONE]` line.",
        "content": {"text/event-stream": {"schema": {"type": "string"}}},
    }
}


@router.post(
    "/v1/messages",
    response_model=MessageResponse,
    responses={**ERROR_RESPONSES, **_SSE_DOC},
    summary="Create a message (Anthropic Messages API)",
)
async def create_message(request: Request, body: MessagesRequest) -> Response:
    call = Call.for_model(request, body.model)
    generate = _generate_request(call, body, body.sampling())
    builder = MessageBuilder(body.model)
    if body.stream:
        primed = await prime(request, call.runtime.generate(body.model, generate))
        try:
            # message_start carries the prompt's tokens, before the engine has counted them;
            # counted once the input rails have run (a redacted prompt is what the engine got)
            input_tokens = await call.runtime.prompt_tokens(body.model, generate)
        except BaseException:
            await primed.aclose()  # the slot it holds
            raise
        events = stream_events(primed, builder, input_tokens, call.request_id)
        return sse_response(events, call.request_id, done=False, named=True)
    stream = call.runtime.generate(body.model, generate)
    return json_response(await until_disconnect(request, collect_message(stream, builder)))


@router.post(
    "/v1/messages/count_tokens",
    response_model=CountTokensResponse,
    responses=ERROR_RESPONSES,
    summary="Count the tokens of a message's prompt (Anthropic Messages API)",
)
async def count_tokens(request: Request, body: CountTokensRequest) -> Response:
    call = Call.for_model(request, body.model)
    generate = _generate_request(call, body, SamplingParams())
    input_tokens = await call.runtime.prompt_tokens(body.model, generate)
    return json_response({"input_tokens": input_tokens})


def _generate_request(call: Call, body: MessagesInput, params: SamplingParams) -> GenerateRequest:
    if body.tools:
        call.grant.require_tools(tool.name for tool in body.tools)
    tools = body.tool_functions()
    choice = body.tool_choice_value(tools)
    return GenerateRequest(
        request_id=call.request_id,
        params=params,
        messages=body.chat_messages(),
        tools=tools,
        tool_choice=choice,
        parallel_tool_calls=body.parallel_tool_calls(),
        constraint=body.constraint(choice),
    )
