"""Routes that answer many small requests (embeddings) without FastAPI's per-request
machinery: the endpoint takes the request alone and returns a Response (`RequestOnlyRoute`:
no dependency solving, no response validation), and parses its JSON body straight into its
pydantic model with pydantic's own JSON parser (`json_body`). Measured: benchmarks/RESULTS.md.
Errors are the `RequestValidationError`s that FastAPI raises, so they get the same 400 in the
OpenAI shape; the OpenAPI document still comes from the route's declaration (`body_doc`).
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from typing import Any, TypeVar, cast

from fastapi import Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.routing import APIRoute
from pydantic import BaseModel, ValidationError

M = TypeVar("M", bound=BaseModel)
Handler = Callable[[Request], Coroutine[Any, Any, Response]]


class RequestOnlyRoute(APIRoute):
    """An APIRoute whose endpoint is `async def endpoint(request) -> Response`, called as it
    is: FastAPI's request handler (dependencies, body, response model) is not in the way.
    Exception handlers, middleware and the route's OpenAPI entry are as for any route."""

    def get_route_handler(self) -> Handler:
        return cast(Handler, self.endpoint)


async def json_body(request: Request, model: type[M]) -> M:
    raw = await request.body()
    if not raw:  # as FastAPI: a body of blanks is there, and is not valid JSON
        missing = {"type": "missing", "loc": ("body",), "msg": "Field required", "input": None}
        raise RequestValidationError([missing])
    if not _is_json(request.headers.get("content-type")):  # refused as FastAPI refuses it
        refused = {
            "type": "model_attributes_type",
            "loc": ("body",),
            "msg": "Input should be a valid dictionary or object to extract fields from",
            "input": raw,
        }
        raise RequestValidationError([refused])
    try:
        return model.model_validate_json(raw)
    except ValidationError as exc:  # locations as FastAPI gives them: under "body"
        raise RequestValidationError(
            [{**error, "loc": ("body", *error["loc"])} for error in exc.errors()]
        ) from None


def _is_json(content_type: str | None) -> bool:
    media = (content_type or "").split(";", 1)[0].strip().lower()
    return media == "application/json" or (
        media.startswith("application/") and media.endswith("+json")
    )


def body_doc(model: type[BaseModel]) -> dict[str, Any]:
    """`openapi_extra` documenting `model` as the route's JSON request body."""
    schema = model.model_json_schema(ref_template="#/components/schemas/{model}")
    return {
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": schema}},
        }
    }
