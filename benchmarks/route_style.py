"""The per-request cost of a route's style, in-process: the same endpoints written with
FastAPI's dependency injection (`depends`: body parsed by FastAPI, dependencies solved,
the returned dict validated and serialised by `response_model`) and taking the request
alone (`request`: an APIRoute whose endpoint is called as it is, body parsed by pydantic's
JSON parser, the dict written by orjson; `request+model`: the same, but the answer still
validated and dumped by the response model, as FastAPI did).

Each variant is put in the real app (`create_app`: every middleware, the fake engine) in
place of the shipped route at the same path, and driven straight through ASGI (no sockets,
no client library: what is measured is the app). Rounds interleave the variants in a
shuffled order; the table gives the process CPU time per request (the event loop is the
only busy thread) and each variant's ratio to `depends` within the same round.

`--variants shipped` drives the app's own routes unchanged: run it once on the old code and
once on the new (PYTHONPATH) to compare them.

    python benchmarks/route_style.py --rounds 7
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import inspect
import json
import platform
import random
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import orjson
from fastapi import APIRouter, Depends, FastAPI, Request, Response
from fastapi.routing import APIRoute
from pydantic import BaseModel

from nimble.api import create_app
from nimble.api.schemas.chat import ChatCompletionRequest, ChatCompletionResponse
from nimble.api.schemas.service import ModelList
from nimble.api.streaming import prime, sse_response, until_disconnect
from nimble.config import Settings
from nimble.engines import EngineConfig
from nimble.models import resolve_model
from nimble.runtime import Runtime, RuntimeConfig
from nimble.runtime.aggregate import collect
from nimble.types import GenerationChunk

MODEL = "fake-model"
CHAT = {"model": MODEL, "messages": [{"role": "user", "content": "Say something"}]}
ENDPOINTS: dict[str, tuple[str, str, bytes | None]] = {
    "chat": ("POST", "/v1/chat/completions", orjson.dumps({**CHAT, "max_tokens": 4})),
    "chat-stream": (
        "POST",
        "/v1/chat/completions",
        orjson.dumps({**CHAT, "max_tokens": 4, "stream": True}),
    ),
    "models": ("GET", "/v1/models", None),
}


# ----- the endpoints' work, shared by every variant -----
async def chat_answer(request: Request, runtime: Runtime, request_id: str, body: Any) -> Any:
    stream = runtime.generate(body.model, body.generate_request(request_id))
    head = {"id": f"chatcmpl-{request_id}", "created": int(time.time()), "model": body.model}
    if body.stream:
        return sse_response(_events(await prime(request, stream), head), request_id)
    result = await until_disconnect(request, collect(stream, body.n))
    usage = result.usage
    return {
        "id": head["id"],
        "object": "chat.completion",
        "created": head["created"],
        "model": body.model,
        "system_fingerprint": None,
        "choices": [
            {
                "index": c.index,
                "message": {"role": "assistant", "content": c.text, "tool_calls": None},
                "logprobs": None,
                "finish_reason": c.finish_reason,
            }
            for c in result.choices
        ],
        "usage": {
            "prompt_tokens": usage.prompt_tokens,
            "completion_tokens": usage.completion_tokens,
            "total_tokens": usage.total_tokens,
        },
    }


async def _events(stream: Any, head: dict[str, Any]) -> Any:
    async for chunk in stream:
        chunk_: GenerationChunk = chunk
        if chunk_.usage is None:
            choice = {"index": chunk_.index, "delta": {"content": chunk_.text}, "logprobs": None}
            yield {**head, "object": "chat.completion.chunk", "choices": [choice]}


def models_answer(runtime: Runtime, allows: Callable[[str], bool]) -> dict[str, Any]:
    data = []
    for m in runtime.models.values():
        if allows(m.spec.id):
            card: dict[str, Any] = {
                "id": m.spec.id,
                "object": "model",
                "created": m.created,
                "owned_by": "nimble",
            }
            ranking = runtime.ranking_method(m.spec.id)
            if ranking is not None:
                card["ranking"] = ranking
            data.append(card)
    return {"object": "list", "data": data}


def _allows(request: Request, model: str) -> bool:
    key = getattr(request.state, "api_key", None)
    return key is None or bool(key.allows_model(model))


# ----- style 1: FastAPI's dependency injection (nimble's deps.py, restated here) -----
async def _runtime(request: Request) -> Runtime:
    runtime: Runtime = request.app.state.runtime
    return runtime


async def _request_id(request: Request) -> str:
    return str(request.state.request_id)


async def _grant(request: Request) -> Any:
    return getattr(request.state, "api_key", None)


RuntimeDep = Annotated[Runtime, Depends(_runtime)]
RequestIdDep = Annotated[str, Depends(_request_id)]
GrantDep = Annotated[Any, Depends(_grant)]


def depends_router() -> APIRouter:
    router = APIRouter()

    @router.post("/v1/chat/completions", response_model=ChatCompletionResponse)
    async def chat(
        body: ChatCompletionRequest,
        request: Request,
        runtime: RuntimeDep,
        request_id: RequestIdDep,
        grant: GrantDep,
    ) -> Any:
        if grant is not None:
            grant.require_model(body.model)
        return await chat_answer(request, runtime, request_id, body)

    @router.get("/v1/models", response_model=ModelList, response_model_exclude_none=True)
    async def models(request: Request, runtime: RuntimeDep, grant: GrantDep) -> Any:
        return models_answer(runtime, lambda model: _allows(request, model))

    return router


# ----- style 2: the endpoint takes the request alone and returns a Response -----
class RequestRoute(APIRoute):
    def get_route_handler(self) -> Any:
        return self.endpoint


async def parse(request: Request, model: type[BaseModel]) -> Any:
    return model.model_validate_json(await request.body())


def request_router(validate: bool) -> APIRouter:
    router = APIRouter(route_class=RequestRoute)

    def answer(payload: Any, model: type[BaseModel], **dump: bool) -> Response:
        if isinstance(payload, Response):
            return payload
        if validate:
            content = model.model_validate(payload).model_dump_json(by_alias=True, **dump)
            return Response(content, media_type="application/json")
        return Response(orjson.dumps(payload), media_type="application/json")

    @router.post("/v1/chat/completions", response_model=ChatCompletionResponse)
    async def chat(request: Request) -> Response:
        body = await parse(request, ChatCompletionRequest)
        key = getattr(request.state, "api_key", None)
        if key is not None:
            key.require_model(body.model)
        runtime: Runtime = request.app.state.runtime
        request_id = str(request.state.request_id)
        return answer(await chat_answer(request, runtime, request_id, body), ChatCompletionResponse)

    @router.get("/v1/models", response_model=ModelList)
    async def models(request: Request) -> Response:
        runtime: Runtime = request.app.state.runtime
        payload = models_answer(runtime, lambda model: _allows(request, model))
        return answer(payload, ModelList, exclude_none=True)

    return router


VARIANTS: dict[str, Callable[[], APIRouter] | None] = {
    "depends": depends_router,
    "request": lambda: request_router(validate=False),
    "request+model": lambda: request_router(validate=True),
    "shipped": None,
}


# ----- the app and an ASGI driver -----
async def build(variant: str) -> tuple[FastAPI, Runtime]:
    settings = Settings(model=("fake",), max_running=64, max_waiting=256)
    runtime = Runtime(
        [resolve_model("fake")],
        RuntimeConfig(EngineConfig(), max_running=64, max_waiting=256),
    )
    if next(iter(inspect.signature(create_app).parameters)) == "settings":
        app = create_app(settings, runtime=runtime, load_on_startup=False)
    else:  # the code before issue 15: create_app(runtime, settings)
        app = create_app(runtime, settings, load_on_startup=False)  # type: ignore[arg-type]
    make = VARIANTS[variant]
    if make is not None:
        replacements = {
            (route.path, frozenset(route.methods)): route
            for route in make().routes
            if isinstance(route, APIRoute)
        }
        routes = app.router.routes
        for i, route in enumerate(routes):
            if isinstance(route, APIRoute):
                routes[i] = replacements.get((route.path, frozenset(route.methods)), route)
    await runtime.start()
    return app, runtime


async def call(app: FastAPI, method: str, path: str, body: bytes | None) -> tuple[int, bytes]:
    headers = [(b"host", b"bench")]
    if body is not None:
        headers += [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(body))]
    scope = {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": "2.4"},
        "http_version": "1.1",
        "method": method,
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "root_path": "",
        "headers": headers,
        "client": ("127.0.0.1", 40000),
        "server": ("bench", 80),
        "state": {},
    }
    done = asyncio.Event()
    sent = False
    status = 0
    chunks: list[bytes] = []

    async def receive() -> dict[str, Any]:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body or b"", "more_body": False}
        await done.wait()  # the client stays until the answer is complete
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        nonlocal status
        if message["type"] == "http.response.start":
            status = message["status"]
        elif message["type"] == "http.response.body":
            chunks.append(message.get("body", b""))
            if not message.get("more_body", False):
                done.set()

    await app(scope, receive, send)  # type: ignore[arg-type]
    done.set()
    return status, b"".join(chunks)


async def drive(
    app: FastAPI, endpoint: str, requests: int, concurrency: int
) -> tuple[float, float]:
    """(CPU µs per request, wall µs per request)."""
    method, path, body = ENDPOINTS[endpoint]
    remaining = requests

    async def client() -> None:
        nonlocal remaining
        while remaining > 0:
            remaining -= 1
            status, content = await call(app, method, path, body)
            if status != 200:
                raise SystemExit(f"{endpoint}: {status} {content[:300]!r}")

    gc.collect()
    cpu, wall = time.process_time(), time.perf_counter()
    await asyncio.gather(*(client() for _ in range(concurrency)))
    cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    return cpu / requests * 1e6, wall / requests * 1e6


async def main(args: argparse.Namespace) -> None:
    apps = {variant: await build(variant) for variant in args.variants}
    samples: list[dict[str, Any]] = []
    for app, _ in apps.values():  # warm-up: first-call costs, caches
        for endpoint in args.endpoints:
            await drive(app, endpoint, 200, args.concurrency[-1])
    for round_ in range(1, args.rounds + 1):
        order = list(apps)
        random.shuffle(order)
        for endpoint in args.endpoints:
            for concurrency in args.concurrency:
                for variant in order:
                    cpu, wall = await drive(apps[variant][0], endpoint, args.requests, concurrency)
                    sample = {
                        "round": round_,
                        "endpoint": endpoint,
                        "concurrency": concurrency,
                        "variant": variant,
                        "cpu_us": round(cpu, 1),
                        "wall_us": round(wall, 1),
                    }
                    samples.append(sample)
                    print(json.dumps(sample), flush=True)
    for _, runtime in apps.values():
        await runtime.stop()
    report(samples, args)


def report(samples: list[dict[str, Any]], args: argparse.Namespace) -> None:
    lines = [
        f"route_style.py: {args.rounds} rounds x {args.requests} requests per cell, "
        f"python {platform.python_version()}, {platform.machine()}, "
        f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}",
        "",
        "| endpoint | clients | variant | CPU µs/request, median | rounds (min-max) "
        "| ÷ depends, same round: median (min-max) |",
        "|---|---|---|---|---|---|",
    ]
    base = "depends" if "depends" in args.variants else args.variants[0]
    for endpoint in args.endpoints:
        for concurrency in args.concurrency:
            cell = [
                s for s in samples if (s["endpoint"], s["concurrency"]) == (endpoint, concurrency)
            ]
            by_round = {(s["round"], s["variant"]): s["cpu_us"] for s in cell}
            for variant in args.variants:
                cpu = [s["cpu_us"] for s in cell if s["variant"] == variant]
                ratios = [
                    by_round[(r, variant)] / by_round[(r, base)] for r in range(1, args.rounds + 1)
                ]
                lines.append(
                    f"| {endpoint} | {concurrency} | {variant} | {statistics.median(cpu):.0f} "
                    f"| {min(cpu):.0f}-{max(cpu):.0f} | {statistics.median(ratios):.3f} "
                    f"({min(ratios):.3f}-{max(ratios):.3f}) |"
                )
    table = "\n".join(lines)
    print("\n" + table)
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.with_suffix(".md").write_text(table + "\n")
        args.out.with_suffix(".json").write_text(json.dumps(samples, indent=1) + "\n")


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--requests", type=int, default=1000, help="per cell")
    parser.add_argument(
        "--concurrency", type=lambda s: [int(c) for c in s.split(",")], default=[1, 16]
    )
    parser.add_argument("--endpoints", type=lambda s: s.split(","), default=list(ENDPOINTS))
    parser.add_argument(
        "--variants", type=lambda s: s.split(","), default=["depends", "request", "request+model"]
    )
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "out" / "route_style")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    random.seed(args.seed)
    return args


if __name__ == "__main__":
    options = parse_args(sys.argv[1:])
    try:
        import uvloop  # as `nimble serve` runs (uvicorn picks uvloop when it is there)

        uvloop.run(main(options))
    except ImportError:
        asyncio.run(main(options))
