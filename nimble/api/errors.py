"""The one place where nimble errors become HTTP answers in the OpenAI error shape."""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from nimble.errors import (
    ContentFiltered,
    EngineError,
    InvalidRequest,
    ModelLoadError,
    NimbleError,
    NotFound,
    Overloaded,
    PermissionDenied,
    Unauthenticated,
    Unavailable,
)

log = logging.getLogger("nimble.api")


class ClientGone(Exception):
    """The client disconnected before the answer was ready; its work was cancelled."""


# (status, OpenAI error type) per error class; the first match along the MRO wins
_STATUS: dict[type[NimbleError], tuple[int, str]] = {
    # a guardrail refused the input: as OpenAI's (and Azure's) content filter answers it
    ContentFiltered: (400, "invalid_request_error"),
    InvalidRequest: (400, "invalid_request_error"),
    Unauthenticated: (401, "authentication_error"),
    PermissionDenied: (403, "permission_error"),
    NotFound: (404, "not_found_error"),
    Overloaded: (429, "rate_limit_error"),
    Unavailable: (503, "service_unavailable_error"),
    ModelLoadError: (503, "service_unavailable_error"),
    EngineError: (500, "server_error"),
}
_HTTP_TYPES = {
    404: "not_found_error",
    405: "invalid_request_error",
    413: "invalid_request_error",
}


def error_payload(
    message: str, type_: str, param: str | None = None, code: str | None = None
) -> dict[str, Any]:
    return {"error": {"message": message, "type": type_, "param": param, "code": code}}


def status_for(exc: NimbleError) -> tuple[int, str]:
    for cls in type(exc).__mro__:
        if cls in _STATUS:
            return _STATUS[cls]
    return 500, "server_error"


def request_id_of(request: Request) -> str:
    return str(getattr(request.state, "request_id", "-"))


def nimble_error_response(exc: NimbleError, request_id: str) -> JSONResponse:
    status, type_ = status_for(exc)
    message = exc.message
    if status >= 500 and not isinstance(exc, Unavailable | ModelLoadError):
        log.error("engine error (request %s): %s", request_id, exc.message)
        message = _internal_message(request_id)
    headers = {}
    if isinstance(exc, Overloaded):
        headers["Retry-After"] = str(exc.retry_after)
    if isinstance(exc, Unavailable):
        headers["Retry-After"] = "5"
    if isinstance(exc, Unauthenticated):
        headers["WWW-Authenticate"] = "Bearer"
    return JSONResponse(
        error_payload(message, type_, exc.param, exc.code), status_code=status, headers=headers
    )


def sse_error_event(exc: BaseException, request_id: str) -> dict[str, Any]:
    """The one final SSE event sent when a stream fails after it started."""
    if isinstance(exc, NimbleError):
        status, type_ = status_for(exc)
        if status < 500:
            return error_payload(exc.message, type_, exc.param, exc.code)
    log.exception("stream failed (request %s)", request_id, exc_info=exc)
    return internal_error_payload(request_id)


def _param_of(loc: tuple[Any, ...]) -> str | None:
    parts = [str(p) for p in loc if p != "body"]
    # drop pydantic's union-branch markers such as 'str' or 'list[str]'
    parts = [p for p in parts if not any(c in p for c in "[]") and p not in {"str", "int"}]
    return ".".join(parts) or None


# the whole body is not an object: a JSON array or string, or a body not sent as JSON
_NOT_AN_OBJECT = frozenset({"model_attributes_type", "model_type"})


def validation_message(errors: list[dict[str, Any]]) -> tuple[str, str | None]:
    first = errors[0]
    if first.get("type") == "json_invalid":
        if "recursion limit" in str(first.get("msg")):  # pydantic reads ~250 levels
            return "We could not parse the JSON body of your request: it nests too deeply.", None
        return "We could not parse the JSON body of your request: it is not valid JSON.", None
    if first.get("type") == "extra_forbidden":
        param = _param_of(tuple(first["loc"]))
        return f"Unrecognized request argument supplied: {param}", param
    if first.get("type") == "missing" and tuple(first["loc"]) == ("body",):
        return "The request needs a JSON body.", None
    if first.get("type") in _NOT_AN_OBJECT and tuple(first["loc"]) == ("body",):
        return (
            "The request body must be a JSON object, sent with Content-Type: application/json.",
            None,
        )
    param = _param_of(tuple(first["loc"]))
    msg = str(first.get("msg", "invalid value")).removeprefix("Value error, ")
    if param and not msg.startswith(param):
        msg = f"{param}: {msg}"
    return f"Invalid request: {msg}", param


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(NimbleError)
    async def _nimble(request: Request, exc: NimbleError) -> JSONResponse:
        return nimble_error_response(exc, request_id_of(request))

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        message, param = validation_message(list(exc.errors()))
        return JSONResponse(
            error_payload(message, "invalid_request_error", param, "invalid_value"),
            status_code=400,
        )

    @app.exception_handler(ClientGone)
    async def _gone(request: Request, exc: ClientGone) -> Response:
        # nobody reads this answer; 499 (client closed request) marks it in the access log
        return Response(status_code=499)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        if exc.status_code == 404:
            message = f"Unknown path: {request.method} {request.url.path}"
        elif exc.status_code == 405:
            message = f"Method {request.method} is not allowed on {request.url.path}"
        else:
            message = str(exc.detail)
        type_ = _HTTP_TYPES.get(exc.status_code, "invalid_request_error")
        return JSONResponse(
            error_payload(message, type_, None, str(exc.status_code)),
            status_code=exc.status_code,
            headers=dict(exc.headers or {}),
        )

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        # the request-context middleware answers these first; this covers apps without it
        request_id = request_id_of(request)
        log.exception("unhandled error (request %s)", request_id, exc_info=exc)
        return JSONResponse(internal_error_payload(request_id), status_code=500)


def internal_error_payload(request_id: str) -> dict[str, Any]:
    """The 500 answer: a generic message with the request id, never a traceback."""
    return error_payload(_internal_message(request_id), "server_error", None, "internal_error")


def _internal_message(request_id: str) -> str:
    return f"The server had an error processing your request (request id {request_id})."
