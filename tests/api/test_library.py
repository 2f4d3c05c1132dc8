"""docs/library.md, run as written: each Python snippet of the page is executed here, and
the app or runtime it builds is served (a real uvicorn on 127.0.0.1) and driven with the
openai SDK and httpx, on the fake model."""

from __future__ import annotations

import asyncio
import re
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import openai
import uvicorn
from fastapi import FastAPI

from nimble import create_app
from nimble.config import Settings
from nimble.runtime import Runtime, ServiceState
from nimble.security.keys import hash_key
from tests.conftest import FAKE_MODEL, assert_openai_error, chat_body, fake_service

DOC = Path(__file__).parents[2] / "docs" / "library.md"
SERVE, HOLD, IN_PROCESS, MOUNT, MOUNT_LOADED = range(5)


def snippet(index: int) -> dict[str, Any]:
    """Run the doc's Python snippet number `index` (not as __main__) and return its names."""
    blocks = re.findall(r"```python\n(.*?)```", DOC.read_text(), flags=re.DOTALL)
    assert len(blocks) == 5, "docs/library.md changed: update this test with it"
    names: dict[str, Any] = {"__name__": "docs_library"}
    exec(compile(blocks[index], f"{DOC}[{index}]", "exec"), names)
    return names


@asynccontextmanager
async def served(app: FastAPI) -> AsyncIterator[str]:
    """`app` behind a real uvicorn (lifespan on) on a free port; yields its base URL and
    stops the server on the way out."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, log_config=None, lifespan="on"))
    task = asyncio.create_task(server.serve(sockets=[sock]))
    try:
        async with asyncio.timeout(30):
            while not server.started:  # poll: startup runs on this loop
                assert not task.done(), task
                await asyncio.sleep(0.01)
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        await task
        sock.close()


async def until_ready(client: httpx.AsyncClient, path: str) -> None:
    async with asyncio.timeout(30):
        while (await client.get(path)).status_code != 200:
            await asyncio.sleep(0.01)


def runtime_of(app: FastAPI) -> Runtime:
    runtime = app.state.runtime
    assert isinstance(runtime, Runtime)
    return runtime


async def chat(base_url: str) -> str:
    async with openai.AsyncOpenAI(api_key="unused", base_url=base_url, max_retries=0) as sdk:
        answer = await sdk.chat.completions.create(
            model=FAKE_MODEL,
            messages=[{"role": "user", "content": "Say something"}],
            max_tokens=16,
            seed=7,
        )
    content = answer.choices[0].message.content
    assert content
    return content


async def test_serve_from_python() -> None:
    app = snippet(SERVE)["app"]
    runtime = runtime_of(app)
    assert runtime.state is ServiceState.STARTING  # built, not loaded before the server
    async with served(app) as url, httpx.AsyncClient(base_url=url) as client:
        assert (await client.get("/v1/health/live")).status_code == 200
        await until_ready(client, "/v1/health/ready")
        await chat(url + "/v1")
        record = (await client.get("/v1/manifest")).json()
        assert [m["id"] for m in record["models"]] == [FAKE_MODEL]
        assert record["hardware"]["cpu_cores"] >= 1  # the facts build_runtime gathered
    assert runtime.state is ServiceState.STOPPED  # the lifespan stopped it


async def test_hold_the_runtime_and_hand_it_over() -> None:
    names = snippet(HOLD)
    app, runtime, deployment = names["app"], names["runtime"], names["deployment"]
    assert runtime_of(app) is runtime and app.state.deployment is deployment
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as client,
    ):
        await until_ready(client, "/v1/health/ready")
        record = (await client.get("/v1/manifest")).json()
        assert record["hardware"] == deployment.hardware.as_record()
    assert runtime.state is ServiceState.STOPPED


async def test_runtime_in_process_answers_as_the_api_does() -> None:
    text, vector = await snippet(IN_PROCESS)["main"]()
    assert text and len(vector) == 16
    async with fake_service() as (_, client):
        answer = await client.post(
            "/v1/chat/completions",
            json={
                "model": FAKE_MODEL,
                "messages": [{"role": "user", "content": "Say something"}],
                "max_tokens": 16,
                "seed": 7,
            },
        )
        embedded = await client.post(
            "/v1/embeddings", json={"model": FAKE_MODEL, "input": "cats sleep"}
        )
    assert answer.json()["choices"][0]["message"]["content"] == text
    assert embedded.json()["data"][0]["embedding"] == vector


async def test_mounted_app_loads_and_stops_with_the_parent() -> None:
    names = snippet(MOUNT)
    parent, llm = names["app"], names["llm"]
    runtime = runtime_of(llm)
    assert runtime.state is ServiceState.STARTING
    async with served(parent) as url, httpx.AsyncClient(base_url=url) as client:
        assert (await client.get("/")).json() == {"openai_base_url": "/llm/v1"}
        assert (await client.get("/llm/v1/health/live")).status_code == 200
        await until_ready(client, "/llm/v1/health/ready")  # the parent ran nimble's lifespan
        await chat(url + "/llm/v1")
        models = (await client.get("/llm/v1/models")).json()
        assert [m["id"] for m in models["data"]] == [FAKE_MODEL]
        assert (await client.get("/v1/models")).status_code == 404  # only under the prefix
        # inside nimble the paths are its own: the request counted as chat, not `other`
        metrics = (await client.get("/llm/v1/metrics")).text
        assert 'endpoint="chat",method="POST",status="200"' in metrics
    assert runtime.state is ServiceState.STOPPED


async def test_mounted_app_loaded_before_the_parent_starts() -> None:
    names = snippet(MOUNT_LOADED)
    parent, llm = names["app"], names["llm"]
    async with served(parent) as url, httpx.AsyncClient(base_url=url) as client:
        # no polling: the parent's startup waited for the models
        assert (await client.get("/llm/v1/health/ready")).status_code == 200
        await chat(url + "/llm/v1")
    assert runtime_of(llm).state is ServiceState.STOPPED


async def test_a_mounted_app_keeps_its_key_scopes_and_open_probes(tmp_path: Path) -> None:
    keys = tmp_path / "keys.yaml"
    keys.write_text(
        f"keys:\n  - id: embed-only\n    sha256: {hash_key('k-embed')}\n"
        "    endpoints: [embeddings]\n"
    )
    llm = create_app(Settings(model=("fake",), api_keys_file=keys), load_on_startup=False)
    parent = FastAPI()
    parent.mount("/llm", llm)
    await runtime_of(llm).start()
    key = {"Authorization": "Bearer k-embed"}
    transport = httpx.ASGITransport(app=parent)
    async with httpx.AsyncClient(transport=transport, base_url="http://t/llm") as client:
        for probe in ("/v1/health/live", "/v1/health/ready"):
            assert (await client.get(probe)).status_code == 200  # no key needed
        embed = {"model": FAKE_MODEL, "input": "x"}
        assert (await client.post("/v1/embeddings", json=embed)).status_code == 401
        assert (await client.post("/v1/embeddings", json=embed, headers=key)).status_code == 200
        refused = await client.post("/v1/chat/completions", json=chat_body(), headers=key)
        assert_openai_error(refused, 403, None)  # outside the key's scope, mounted or not
    await runtime_of(llm).stop()
