"""api/route.py: what a `Route` endpoint may declare, what it gets, and what it refuses."""

from __future__ import annotations

from typing import Annotated, Any

import httpx
import pytest
from fastapi import APIRouter, Depends, FastAPI, Query, Request, Response
from pydantic import BaseModel

from nimble.api.errors import install_error_handlers
from nimble.api.route import Route, json_response
from tests.conftest import assert_openai_error


class Body(BaseModel):
    name: str
    count: int = 1


class Other(BaseModel):
    x: int


def _app() -> FastAPI:
    router = APIRouter(route_class=Route)

    @router.post("/items/{item_id}")
    async def create(request: Request, item_id: str, body: Body, dry: bool = False) -> Response:
        return json_response({"id": item_id, "body": body.model_dump(), "dry": dry})

    @router.get("/needs")
    async def needs(request: Request, limit: int) -> Response:
        return json_response({"limit": limit})

    @router.get("/plain")
    async def plain(request: Request) -> Response:
        return json_response({"path": request.url.path})

    app = FastAPI()
    install_error_handlers(app)
    app.include_router(router)
    return app


@pytest.fixture
async def client() -> Any:
    transport = httpx.ASGITransport(app=_app())
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
        yield client


async def test_the_endpoint_gets_what_it_declares(client: httpx.AsyncClient) -> None:
    created = await client.post("/items/a1?dry=yes", json={"name": "n"})
    assert created.json() == {"id": "a1", "body": {"name": "n", "count": 1}, "dry": True}
    assert (await client.post("/items/a2", json={"name": "m"})).json()["dry"] is False
    assert (await client.get("/needs?limit=3")).json() == {"limit": 3}
    assert (await client.get("/plain")).json() == {"path": "/plain"}


async def test_bad_parameters_are_400s_located_as_fastapi_locates_them(
    client: httpx.AsyncClient,
) -> None:
    bad_query = await client.post("/items/a1?dry=maybe", json={"name": "n"})
    assert "valid boolean" in assert_openai_error(bad_query, 400, "query.dry")["message"]
    missing = await client.get("/needs")
    assert "Field required" in assert_openai_error(missing, 400, "query.limit")["message"]
    assert_openai_error(
        await client.post("/items/a1", json={"name": "n", "count": "x"}), 400, "count"
    )
    assert_openai_error(await client.post("/items/a1", json={"count": 2}), 400, "name")


def _refused(endpoint: Any, match: str) -> None:
    router = APIRouter(route_class=Route)
    with pytest.raises(TypeError, match=match):
        router.add_api_route("/x", endpoint, methods=["POST"])


async def _depends() -> int:
    return 1


def test_what_a_route_refuses_at_start_up() -> None:
    async def uses_depends(request: Request, n: Annotated[int, Depends(_depends)]) -> Response:
        return Response()

    async def default_depends(request: Request, n: int = Depends(_depends)) -> Response:
        return Response()

    async def query_marker(request: Request, n: int = Query(3)) -> Response:
        return Response()

    async def returns_data(request: Request) -> dict[str, Any]:
        return {}

    async def two_bodies(request: Request, a: Body, b: Other) -> Response:
        return Response()

    _refused(uses_depends, "n must be the Request, the body or a parameter")
    _refused(default_depends, "n must be the Request, the body or a parameter")
    _refused(query_marker, "n must be the Request, the body or a parameter")
    _refused(returns_data, "must be annotated to return a Response")
    _refused(two_bodies, "one body model at most")
