"""A JSON body parsed and validated straight into its pydantic model, for the routes that
answer many small requests (embeddings): pydantic's JSON parser in one step, without FastAPI's
per-request dependency solving (measured: benchmarks/RESULTS.md). Errors are the
`RequestValidationError`s that FastAPI raises, so they get the same 400 in the OpenAI shape.
"""

from __future__ import annotations

from typing import Any, TypeVar

from fastapi import Request
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, ValidationError

M = TypeVar("M", bound=BaseModel)


async def json_body(request: Request, model: type[M]) -> M:
    raw = await request.body()
    if not raw.strip():
        missing = {"type": "missing", "loc": ("body",), "msg": "Field required", "input": None}
        raise RequestValidationError([missing])
    try:
        return model.model_validate_json(raw)
    except ValidationError as exc:  # locations as FastAPI gives them: under "body"
        raise RequestValidationError(
            [{**error, "loc": ("body", *error["loc"])} for error in exc.errors()]
        ) from None


def body_doc(model: type[BaseModel]) -> dict[str, Any]:
    """`openapi_extra` documenting `model` as the route's JSON request body."""
    schema = model.model_json_schema(ref_template="#/components/schemas/{model}")
    return {
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": schema}},
        }
    }
