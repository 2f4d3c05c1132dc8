"""FastAPI dependencies: the runtime and the request id."""

from __future__ import annotations

import time
from typing import Annotated, Any

from fastapi import Depends, Request

from nimble.api.schemas.common import ErrorResponse
from nimble.runtime import Runtime


def _runtime(request: Request) -> Runtime:
    runtime: Runtime = request.app.state.runtime
    return runtime


def _request_id(request: Request) -> str:
    return str(request.state.request_id)


RuntimeDep = Annotated[Runtime, Depends(_runtime)]
RequestIdDep = Annotated[str, Depends(_request_id)]

ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    status: {"model": ErrorResponse, "description": description}
    for status, description in (
        (400, "Invalid request (the `param` field names the offending field)"),
        (404, "Unknown model"),
        (413, "Request body too large"),
        (429, "Overloaded: retry after `Retry-After` seconds"),
        (500, "Server error (generic message with the request id)"),
        (503, "Not ready, or draining"),
    )
}


def sse_doc(schema_name: str) -> dict[int | str, dict[str, Any]]:
    return {
        200: {
            "description": "JSON, or with `stream: true` server-sent events: `data: <"
            + schema_name
            + ">` lines, ending with `data: [DONE]`",
            "content": {"text/event-stream": {"schema": {"type": "string"}}},
        }
    }


def now() -> int:
    return int(time.time())
