"""How every route is written: a router `APIRouter(route_class=Route)`, and an endpoint
that declares what it takes as in FastAPI (the `Request`, a pydantic model for the JSON
body, path and query parameters) and returns a Response (`json_response`, or
`streaming.sse_response`).

`Route` calls the endpoint without FastAPI's per-request machinery: no dependency solving
and no response-model step (the route writes its JSON itself, with orjson). The body is
parsed in one step by pydantic's JSON parser (`json_body`). Measured in-process
(`benchmarks/route_style.py`, RESULTS.md 2026-12-02): a quarter to a third less CPU per
chat completion than with FastAPI's dependency injection, half per `/v1/models`. The
OpenAPI entry is FastAPI's own, from the same signature and `response_model=`; errors are
the `RequestValidationError`s that FastAPI raises, so they get the same 400 in the OpenAI
shape (`api/errors.py`).
"""

from __future__ import annotations

import inspect
import json
import re
import typing
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass
from typing import Any, TypeVar, cast

import orjson
from fastapi import Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.params import Depends
from fastapi.routing import APIRoute
from pydantic import BaseModel, TypeAdapter, ValidationError
from pydantic.fields import FieldInfo

from nimble.api.schemas.common import ErrorResponse

M = TypeVar("M", bound=BaseModel)
Handler = Callable[[Request], Coroutine[Any, Any, Response]]


class Route(APIRoute):
    """An APIRoute whose endpoint gets what its signature declares, and nothing else runs:
    `request: Request`; at most one pydantic model, the JSON body; path and query parameters
    of plain types (validated by pydantic; a plain default for an optional query parameter).
    `Depends`, `Query(...)` and other markers are refused at start-up, as is an endpoint
    that does not return a Response. Exception handlers, middleware and the OpenAPI entry are as
    for any route."""

    def get_route_handler(self) -> Handler:
        return handler(self.endpoint, frozenset(self.param_convertors))


def handler(endpoint: Callable[..., Awaitable[Response]], path_names: frozenset[str]) -> Handler:
    """The request handler calling `endpoint` (checked here, once)."""
    name = getattr(endpoint, "__qualname__", repr(endpoint))
    hints = typing.get_type_hints(endpoint, include_extras=True)
    returns = hints.pop("return", None)
    if not (isinstance(returns, type) and issubclass(returns, Response)):
        raise TypeError(f"{name} must be annotated to return a Response")
    request_name: str | None = None
    body: tuple[str, type[BaseModel]] | None = None
    params: list[_Param] = []
    for pname, parameter in inspect.signature(endpoint).parameters.items():
        hint = hints.get(pname)
        if hint is Request:
            request_name = pname
        elif isinstance(hint, type) and issubclass(hint, BaseModel):
            if body is not None:
                raise TypeError(f"{name}: one body model at most")
            body = (pname, hint)
        elif (
            hint is None
            or typing.get_origin(hint) is typing.Annotated
            or isinstance(parameter.default, FieldInfo | Depends)
        ):
            raise TypeError(f"{name}: {pname} must be the Request, the body or a parameter")
        else:
            where = "path" if pname in path_names else "query"
            params.append(_Param(pname, where, TypeAdapter(hint), parameter.default))
    if (request_name, body, params) == ("request", None, []):
        return cast(Handler, endpoint)  # `async def endpoint(request) -> Response`

    async def handle(request: Request) -> Response:
        kwargs: dict[str, Any] = {param.name: param.read(request) for param in params}
        if request_name is not None:
            kwargs[request_name] = request
        if body is not None:
            kwargs[body[0]] = await json_body(request, body[1])
        return await endpoint(**kwargs)

    return handle


@dataclass(frozen=True)
class _Param:
    name: str
    where: str  # "path" or "query", as FastAPI locates its errors
    adapter: TypeAdapter[Any]
    default: Any

    def read(self, request: Request) -> Any:
        given = request.path_params if self.where == "path" else request.query_params
        if self.name not in given:
            if self.default is inspect.Parameter.empty:
                missing = {
                    "type": "missing",
                    "loc": (self.where, self.name),
                    "msg": "Field required",
                }
                raise RequestValidationError([{**missing, "input": None}])
            return self.default
        try:
            return self.adapter.validate_python(given[self.name])
        except ValidationError as exc:
            raise _located(exc, self.where, self.name) from None


async def json_body(request: Request, model: type[M]) -> M:
    """The request's JSON body as `model`; refusals as FastAPI words them."""
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
        surrogate = _lone_surrogate(raw) if exc.errors()[0]["type"] == "json_invalid" else None
        if surrogate is not None:
            raise RequestValidationError([surrogate]) from None
        raise _located(exc, "body") from None


_SURROGATE = re.compile("[\ud800-\udfff]")


def _lone_surrogate(raw: bytes) -> dict[str, Any] | None:
    """The error for a JSON body that is valid JSON but holds a lone UTF-16 surrogate
    escape (`"\\ud800"`: JSON's grammar allows it, Python's `json` reads it): no Unicode
    character, so it cannot reach a tokenizer. Refused with the field that holds it rather
    than replaced, so that nothing the client sent is silently changed."""
    try:
        data = json.loads(raw)
        found = _surrogate_at(data, ())
    except (ValueError, RecursionError):  # not JSON, or nested past the recursion limit
        return None
    if found is None:
        return None
    where, char = found
    msg = (
        f"contains a lone UTF-16 surrogate (\\u{ord(char):04x}), which is not a Unicode "
        "character; send text as UTF-8 (a character outside the BMP as a surrogate pair)"
    )
    return {"type": "string_unicode", "loc": ("body", *where), "msg": msg, "input": None}


def _surrogate_at(
    value: Any, where: tuple[str | int, ...]
) -> tuple[tuple[str | int, ...], str] | None:
    if isinstance(value, str):
        match = _SURROGATE.search(value)
        return (where, match.group()) if match else None
    items: Any = ()
    if isinstance(value, dict):
        for key in value:
            match = _SURROGATE.search(key)
            if match:  # named by the object that holds the key: the key cannot be written
                return where, match.group()
        items = value.items()
    elif isinstance(value, list):
        items = enumerate(value)
    for key, item in items:
        found = _surrogate_at(item, (*where, key))
        if found is not None:
            return found
    return None


def _located(exc: ValidationError, *where: str) -> RequestValidationError:
    return RequestValidationError([{**e, "loc": (*where, *e["loc"])} for e in exc.errors()])


def _is_json(content_type: str | None) -> bool:
    media = (content_type or "").split(";", 1)[0].strip().lower()
    return media == "application/json" or (
        media.startswith("application/") and media.endswith("+json")
    )


def json_response(content: Any, status_code: int = 200) -> Response:
    """`content` (plain JSON data) as the answer, written by orjson (the same bytes as
    pydantic's JSON for the same data, ~10x faster than json). A route that documents a
    `response_model=` writes every field of it, in its order, defaults included; a test
    holds every answer equal to its model's dump (tests/api/test_route_json.py)."""
    return Response(orjson.dumps(content), status_code=status_code, media_type="application/json")


def model_response(model: type[BaseModel], content: Any) -> Response:
    """`content` validated by `model` and dumped by it: what FastAPI answers for a
    `response_model=` (for a route whose data does not follow its model's field order)."""
    dumped = model.model_validate(content).model_dump_json(by_alias=True)
    return Response(dumped, media_type="application/json")


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
