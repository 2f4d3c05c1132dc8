"""`POST /v1/responses` and `GET /v1/responses/{response_id}` (the OpenAI Responses API)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request

from nimble.api.deps import ERROR_RESPONSES, Grant, GrantDep, RequestIdDep, RuntimeDep
from nimble.api.responses_events import ResponseBuilder, collect_response, stream_events
from nimble.api.schemas.responses import CreateResponseRequest
from nimble.api.schemas.responses_out import ResponseObject
from nimble.api.streaming import prime, sse_response, until_disconnect
from nimble.errors import UnsupportedParameter
from nimble.runtime.response_store import StoredResponse
from nimble.types import ChatMessage, GenerateRequest

router = APIRouter()

_SSE_DOC: dict[int | str, dict[str, Any]] = {
    200: {
        "description": "JSON, or with `stream: true` server-sent events, each an `event: "
        "<type>` and a `data: {type, sequence_number, ...}` line: response.created, "
        "response.in_progress, then per output item response.output_item.added, its content "
        "(response.content_part.added, response.output_text.delta..., .done, "
        "response.content_part.done; or response.function_call_arguments.delta..., .done) and "
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
async def create_response(
    body: CreateResponseRequest,
    request: Request,
    runtime: RuntimeDep,
    request_id: RequestIdDep,
    grant: GrantDep,
) -> Any:
    grant.require_model(body.model)
    if body.tools:
        grant.require_tools()
    body.refuse_unsupported()
    prior: tuple[ChatMessage, ...] = ()
    if body.previous_response_id is not None:
        stored = runtime.responses.get(
            body.previous_response_id, _owner(grant), param="previous_response_id"
        )
        prior = stored.conversation
    conversation = (*prior, *body.input_messages(prior))
    generate = GenerateRequest(
        request_id=request_id,
        params=body.sampling(),
        messages=(*body.instruction_messages(), *conversation),
        tools=body.tool_functions(),
        tool_choice=body.tool_choice_value(),
        parallel_tool_calls=body.parallel_tool_calls is not False,
        constraint=body.constraint(),
    )
    builder = ResponseBuilder(body)
    stream = runtime.generate(body.model, generate)

    def save(done: ResponseBuilder) -> None:
        if body.store is not False and done.final is not None:
            turns = (*conversation, done.assistant_turn())
            runtime.responses.put(done.id, StoredResponse(done.final, turns, _owner(grant)))

    if body.stream:
        primed = await prime(request, stream)
        events = stream_events(primed, builder, request_id, save)
        return sse_response(events, request_id, done=False, named=True)
    response = await until_disconnect(request, collect_response(stream, builder))
    save(builder)
    return response


@router.get(
    "/v1/responses/{response_id}",
    response_model=ResponseObject,
    responses=ERROR_RESPONSES,
    summary="Retrieve a stored response",
)
async def get_response(
    response_id: str, runtime: RuntimeDep, grant: GrantDep, stream: bool = False
) -> Any:
    if stream:
        raise UnsupportedParameter(
            "stream: replaying a stored response is not supported", param="stream"
        )
    return runtime.responses.get(response_id, _owner(grant), param="response_id").response


def _owner(grant: Grant) -> str | None:
    return grant.key.id if grant.key is not None else None
