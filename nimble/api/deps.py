"""FastAPI dependencies: the runtime, the request id and the caller's grant (also as plain
functions of the request, for routes that skip dependency solving: `api/body.py`)."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Annotated, Any

from fastapi import Depends, Request

from nimble.api.schemas.common import ErrorResponse
from nimble.runtime import Runtime
from nimble.security.keys import ApiKey


# dependencies are `async def`: FastAPI runs plain `def` ones on a worker thread, a thread
# hop per dependency per request
async def _runtime(request: Request) -> Runtime:
    return runtime_of(request)


async def _request_id(request: Request) -> str:
    return str(request.state.request_id)


def runtime_of(request: Request) -> Runtime:
    runtime: Runtime = request.app.state.runtime
    return runtime


@dataclass(frozen=True)
class Grant:
    """What the caller's API key allows (everything when API keys are off)."""

    key: ApiKey | None

    def allows_model(self, model: str) -> bool:
        return self.key is None or self.key.allows_model(model)

    def require_model(self, model: str) -> None:
        if self.key is not None:
            self.key.require_model(model)

    def require_tools(self) -> None:
        if self.key is not None:
            self.key.require_tools()


async def _grant(request: Request) -> Grant:
    return grant_of(request)


def grant_of(request: Request) -> Grant:
    return Grant(getattr(request.state, "api_key", None))


RuntimeDep = Annotated[Runtime, Depends(_runtime)]
GrantDep = Annotated[Grant, Depends(_grant)]
RequestIdDep = Annotated[str, Depends(_request_id)]

ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    status: {"model": ErrorResponse, "description": description}
    for status, description in (
        (400, "Invalid request (the `param` field names the offending field)"),
        (401, "Missing or unknown API key"),
        (403, "The API key may not use this model, endpoint or tool calling"),
        (404, "Unknown model"),
        (413, "Request body too large"),
        (429, "Overloaded, or over the API key's limits: retry after `Retry-After` seconds"),
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
