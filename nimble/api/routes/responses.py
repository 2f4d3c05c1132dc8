"""`POST /v1/responses` and `GET /v1/responses/{response_id}` (the OpenAI Responses API)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request, Response

from nimble.api.call import Call
from nimble.api.responses_events import ResponseBuilder, collect_response, stream_events
from nimble.api.route import ERROR_RESPONSES, Route, model_response
from nimble.api.schemas.responses import CreateResponseRequest
from nimble.api.schemas.responses_out import ResponseObject
from nimble.api.streaming import prime, sse_response, until_disconnect
from nimble.errors import UnsupportedParameter
from nimble.runtime.response_store import StoredResponse
from nimble.types import ChatMessage, GenerateRequest

router = APIRouter(route_class=Route)

_SSE_DOC: dict[int | str, dict[str, Any]] = {
    200: {
        "description": "JSON, or with `stream: true` server-sent events, each an `event: "
        "<type>` and a `data: {type, sequence_number, ...}` line: response.created, "
        "response.in_progress, then per output item response.output_item.added, its content "
        "(response.content_part.added, response.output_text.delta..., .done, "
        "response.content_part.done; or the same with response.reasoning_text.delta..., .done "
        "for a reasoning item; or response.function_call_arguments.delta..., .done) and "
        "response.output_item.done; last response.completed or response.incomplete (or one "
        "`error` event). No `[DONE]` line.",
        "content": {"text/event-stream": {"schema": {"type": "string"}}},
    }
}


@router.post(
    "/v1/responses",
    response_model=ResponseObject,
    responses={**ERROR_RESPONSES, **_SSE_DOC},
    summary="Create a model response (OpenAI Responses API)",
)
async def create_response(request: Request, body: CreateResponseRequest) -> Response:
    call = Call.for_model(request, body.model)
    if body.tools:
        call.grant.require_tools(body.tool_names())
    body.refuse_unsupported()
    owner = call.grant.owner
    prior: tuple[ChatMessage, ...] = ()
    if body.previous_response_id is not None:
        stored = call.runtime.responses.get(
            body.previous_response_id, owner, param="previous_response_id"
        )
        prior = stored.conversation
    conversation = (*prior, *body.input_messages(prior))
    generate = GenerateRequest(
        request_id=call.request_id,
        params=body.sampling(),
        messages=(*body.instruction_messages(), *conversation),
        tools=body.tool_functions(),
        tool_choice=body.tool_choice_value(),
        parallel_tool_calls=body.parallel_tool_calls is not False,
        constraint=body.constraint(),
    )
    builder = ResponseBuilder(body)
    stream = call.runtime.generate(body.model, generate)

    def save(done: ResponseBuilder) -> None:
        if body.store is not False and done.final is not None:
            turns = (*conversation, done.assistant_turn())
            call.runtime.responses.put(done.id, StoredResponse(done.final, turns, owner))

    if body.stream:
        primed = await prime(request, stream)
        events = stream_events(primed, builder, call.request_id, save)
        return sse_response(events, call.request_id, done=False, named=True)
    response = await until_disconnect(request, collect_response(stream, builder))
    save(builder)
    # the builder's items are in the order of its stream events; the answer is in the
    # model's field order, as FastAPI's response_model step gave it
    return model_response(ResponseObject, response)


@router.get(
    "/v1/responses/{response_id}",
    response_model=ResponseObject,
    responses=ERROR_RESPONSES,
    summary="Retrieve a stored response",
)
async def get_response(request: Request, response_id: str, stream: bool = False) -> Response:
    if stream:
        raise UnsupportedParameter(
            "stream: replaying a stored response is not supported", param="stream"
        )
    call = Call.of(request)
    stored = call.runtime.responses.get(response_id, call.grant.owner, param="response_id")
    return model_response(ResponseObject, stored.response)
