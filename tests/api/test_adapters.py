"""LoRA adapters on the fake engine (which starts each adapter's answer with `[name]`): served
under their own names with their base as `parent`, from `--lora` and a watched `--lora-dir`,
loaded and unloaded at run time behind the `admin` scope, in the metrics, the key scopes and
the deployment record; refused at start with one line naming the file."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from nimble.api import create_app
from nimble.config import Settings
from nimble.engines.fake.engine import FakeEngine
from nimble.errors import ConfigError, ModelLoadError
from nimble.models.adapters import scan
from nimble.runtime import Runtime
from nimble.runtime.adapter_watch import AdapterWatcher
from nimble.runtime.assemble import build_runtime
from nimble.types import GenerateRequest, SamplingParams
from tests.api.test_auth import bearer, write_keys
from tests.api.test_metrics import model_sample, scrape
from tests.conftest import FAKE_MODEL, assert_openai_error

OTHER = "other-model"


@asynccontextmanager
async def adapter_service(
    models: tuple[str, ...] = ("fake",), **settings: Any
) -> AsyncIterator[tuple[Runtime, httpx.AsyncClient]]:
    config = Settings(model=models, max_running=4, **settings)
    runtime, deployment = build_runtime(config)
    app = create_app(config, runtime=runtime, deployment=deployment, load_on_startup=False)
    await runtime.start()
    transport = httpx.ASGITransport(app=app)
    try:
        async with httpx.AsyncClient(transport=transport, base_url="http://nimble.test") as client:
            yield runtime, client
    finally:
        await runtime.stop()


def sdk(client: httpx.AsyncClient, key: str = "none") -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(
        api_key=key, base_url="http://nimble.test/v1", http_client=client, max_retries=0
    )


def adapter_file(folder: Path, name: str, content: str = "lora") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.gguf"
    path.write_text(content)
    return path


async def answer(client: httpx.AsyncClient, model: str, key: str = "none") -> str:
    reply = await sdk(client, key).chat.completions.create(
        model=model, messages=[{"role": "user", "content": "Who are you?"}], max_tokens=4
    )
    assert reply.model == model
    return reply.choices[0].message.content or ""


async def model_ids(client: httpx.AsyncClient) -> list[str]:
    return [m.id for m in (await sdk(client).models.list()).data]


async def test_static_adapters_are_models_with_their_base_as_parent(tmp_path: Path) -> None:
    pirate = adapter_file(tmp_path / "flags", "pirate")
    adapter_file(tmp_path / "dir", "robot")
    async with adapter_service(
        lora=(f"pirate={pirate}",), lora_dir=tmp_path / "dir", lora_poll_interval=0
    ) as (_, client):
        listed = (await client.get("/v1/models")).json()["data"]
        assert [(m["id"], m.get("parent")) for m in listed] == [
            (FAKE_MODEL, None),
            ("pirate", FAKE_MODEL),
            ("robot", FAKE_MODEL),
        ]
        card = await sdk(client).models.retrieve("robot")
        assert (card.id, card.model_extra) == ("robot", {"parent": FAKE_MODEL})
        base = await answer(client, FAKE_MODEL)
        assert not base.startswith("[")
        assert (await answer(client, "pirate")).startswith("[pirate] ")
        assert (await answer(client, "robot")).startswith("[robot] ")
        # the base model keeps answering as before, streamed and not
        assert await answer(client, FAKE_MODEL) == base
        stream = await sdk(client).completions.create(
            model="robot", prompt="Once upon", max_tokens=3, stream=True
        )
        assert "".join([c.choices[0].text async for c in stream if c.choices]).startswith("[robot]")


async def test_adapters_in_metrics_and_the_deployment_record(tmp_path: Path) -> None:
    pirate = adapter_file(tmp_path, "pirate", "weights of the pirate")
    async with adapter_service(lora=(f"pirate={pirate}",)) as (_, client):
        await answer(client, "pirate")
        samples = await scrape(client)
        assert samples[model_sample("generation_tokens_total", model_name="pirate")] == 4
        assert model_sample("generation_tokens_total") not in samples  # the base: none
        record = (await client.get("/v1/manifest")).json()["adapters"]
        digest = hashlib.sha256(b"weights of the pirate").hexdigest()
        assert record["served"] == [
            {
                "name": "pirate",
                "base": FAKE_MODEL,
                "source": str(pirate),
                "format": "gguf",
                "sha256": digest,
                "rank": None,
                "origin": "flag",
            }
        ]
        assert record["runtime_loading"] is False


async def test_run_time_loading_is_off_unless_asked(tmp_path: Path) -> None:
    pirate = adapter_file(tmp_path, "pirate")
    async with adapter_service() as (_, client):
        body = {"lora_name": "pirate", "lora_path": str(pirate)}
        assert_openai_error(await client.post("/v1/load_lora_adapter", json=body), 404, None)


async def test_load_and_unload_at_run_time(tmp_path: Path) -> None:
    pirate = adapter_file(tmp_path, "pirate")
    async with adapter_service(runtime_adapters=True) as (runtime, client):
        body = {"lora_name": "pirate", "lora_path": str(pirate)}
        loaded = await client.post("/v1/load_lora_adapter", json=body)
        assert loaded.status_code == 200, loaded.text
        assert loaded.text == "Success: LoRA adapter 'pirate' added successfully."
        assert await model_ids(client) == [FAKE_MODEL, "pirate"]
        assert (await answer(client, "pirate")).startswith("[pirate] ")

        again = await client.post("/v1/load_lora_adapter", json=body)
        assert "already loaded" in assert_openai_error(again, 400, "lora_name")["message"]
        clash = {"lora_name": FAKE_MODEL, "lora_path": str(pirate)}
        assert_openai_error(
            await client.post("/v1/load_lora_adapter", json=clash), 400, "lora_name"
        )
        missing = {"lora_name": "ghost", "lora_path": str(tmp_path / "nothing.gguf")}
        error = assert_openai_error(
            await client.post("/v1/load_lora_adapter", json=missing), 400, "lora_path"
        )
        assert "nothing.gguf" in error["message"]
        empty = {"lora_name": "empty", "lora_path": str(adapter_file(tmp_path, "empty", ""))}
        error = assert_openai_error(
            await client.post("/v1/load_lora_adapter", json=empty), 400, "lora_path"
        )
        assert "empty.gguf" in error["message"]
        assert await model_ids(client) == [FAKE_MODEL, "pirate"]

        unloaded = await client.post("/v1/unload_lora_adapter", json={"lora_name": "pirate"})
        assert unloaded.status_code == 200, unloaded.text
        assert await model_ids(client) == [FAKE_MODEL]
        with pytest.raises(openai.NotFoundError):
            await answer(client, "pirate")
        with pytest.raises(openai.NotFoundError):
            await sdk(client).models.retrieve("pirate")
        gone = await client.post("/v1/unload_lora_adapter", json={"lora_name": "pirate"})
        assert_openai_error(gone, 404, "lora_name")
        engine = runtime.models[FAKE_MODEL].engine
        assert isinstance(engine, FakeEngine) and engine.adapters == {}


async def test_unloading_lets_running_requests_finish_on_their_adapter(tmp_path: Path) -> None:
    pirate = adapter_file(tmp_path, "pirate")
    async with adapter_service(lora=(f"pirate={pirate}",), runtime_adapters=True) as (
        runtime,
        client,
    ):
        engine = runtime.models[FAKE_MODEL].engine
        assert isinstance(engine, FakeEngine)
        request = GenerateRequest(
            "r1", SamplingParams(max_tokens=30, ignore_eos=True), prompt="tell me"
        )
        pieces = []
        async with contextlib.aclosing(runtime.generate("pirate", request)) as chunks:
            async for chunk in chunks:
                if chunk.text:
                    pieces.append(chunk.text)
                if len(pieces) == 3:  # mid-stream: unload
                    unloaded = await client.post(
                        "/v1/unload_lora_adapter", json={"lora_name": "pirate"}
                    )
                    assert "(1 requests in flight finish on it first)" in unloaded.text
                    assert "pirate" not in await model_ids(client)
                    with pytest.raises(openai.NotFoundError):
                        await answer(client, "pirate")
                    assert "pirate" in engine.adapters  # still the running request's
        assert pieces[0] == "[pirate]" and len(pieces) == 30
        deadline = time.monotonic() + 30
        while "pirate" in engine.adapters and time.monotonic() < deadline:
            await asyncio.sleep(0.01)  # freed once its last request ended (a task: poll)
        assert "pirate" not in engine.adapters


async def test_the_admin_scope_guards_loading_and_keys_can_name_adapters(tmp_path: Path) -> None:
    pirate = adapter_file(tmp_path, "pirate")
    keys: dict[str, dict[str, Any]] = {
        "nb-any-0123456789abcdef0123456789abcdef": {"id": "any"},
        "nb-ops-0123456789abcdef0123456789abcdef": {"id": "ops", "endpoints": ["admin"]},
        "nb-pirate-only-0123456789abcdef012345678": {"id": "crew", "models": ["pirate"]},
    }
    key_file = write_keys(tmp_path / "keys.yaml", keys)
    async with adapter_service(
        lora=(f"pirate={pirate}",), runtime_adapters=True, api_keys_file=key_file
    ) as (_, client):
        robot = adapter_file(tmp_path, "robot")
        body = {"lora_name": "robot", "lora_path": str(robot)}
        refused = await client.post(
            "/v1/load_lora_adapter",
            json=body,
            headers=bearer("nb-any-0123456789abcdef0123456789abcdef"),
        )
        assert "`admin`" in assert_openai_error(refused, 403, None)["message"]
        ops = bearer("nb-ops-0123456789abcdef0123456789abcdef")
        assert (
            await client.post("/v1/load_lora_adapter", json=body, headers=ops)
        ).status_code == 200
        only_admin = await client.get("/v1/models", headers=ops)
        assert_openai_error(only_admin, 403, None)  # `admin` alone: nothing else

        crew = "nb-pirate-only-0123456789abcdef012345678"
        assert (await answer(client, "pirate", crew)).startswith("[pirate] ")
        with pytest.raises(openai.PermissionDeniedError):
            await answer(client, FAKE_MODEL, crew)
        with pytest.raises(openai.PermissionDeniedError):
            await answer(client, "robot", crew)
        listed = (await client.get("/v1/models", headers=bearer(crew))).json()["data"]
        assert [m["id"] for m in listed] == ["pirate"]


async def test_adapters_serve_generation_only(tmp_path: Path) -> None:
    pirate = adapter_file(tmp_path, "pirate")
    async with adapter_service(lora=(f"pirate={pirate}",)) as (_, client):
        refused = await client.post("/v1/embeddings", json={"model": "pirate", "input": "x"})
        assert "LoRA adapter" in assert_openai_error(refused, 400, "model")["message"]
        ranked = await client.post(
            "/v1/rerank", json={"model": "pirate", "query": "q", "documents": ["a"]}
        )
        assert_openai_error(ranked, 400, "model")


async def test_the_watched_folder_loads_reloads_and_unloads(tmp_path: Path) -> None:
    folder = tmp_path / "adapters"
    adapter_file(folder, "pirate", "v1")
    async with adapter_service(lora_dir=folder, lora_poll_interval=0.05) as (_, client):
        first = await answer(client, "pirate")
        adapter_file(folder, "robot")
        (folder / "skipped.gguf.part").write_text("half")
        await until(lambda: served(client, lambda ids: "robot" in ids))
        assert (await answer(client, "robot")).startswith("[robot] ")
        adapter_file(folder, "pirate", "v2: retrained")  # the fake engine's seed has the sha256
        await until(lambda: answered_otherwise(client, "pirate", first))
        (folder / "robot.gguf").unlink()
        await until(lambda: served(client, lambda ids: "robot" not in ids))
        with pytest.raises(openai.NotFoundError):
            await answer(client, "robot")
        assert await model_ids(client) == [FAKE_MODEL, "pirate"]


async def until(condition: Callable[[], Awaitable[bool]]) -> None:
    """Poll until `condition()` holds (30 s at most, for a loaded CI machine): the folder
    is looked at every 0.05 s."""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if await condition():
            return
        await asyncio.sleep(0.01)  # polling interval
    raise AssertionError("the watched folder's change was not picked up")


async def served(client: httpx.AsyncClient, check: Callable[[list[str]], bool]) -> bool:
    return check(await model_ids(client))


async def answered_otherwise(client: httpx.AsyncClient, model: str, before: str) -> bool:
    return await answer(client, model) != before


async def test_a_file_still_being_written_is_not_loaded(tmp_path: Path) -> None:
    async with adapter_service(lora_dir=tmp_path, lora_poll_interval=0) as (runtime, _):
        watcher = AdapterWatcher(runtime.adapters, tmp_path, interval=1)
        path = adapter_file(tmp_path, "pirate", "first half")
        await watcher.look()
        assert "pirate" not in runtime.adapters  # seen once: maybe still being copied
        path.write_text("first half, second half")
        await watcher.look()
        assert "pirate" not in runtime.adapters  # it changed between the two looks
        await watcher.look()
        assert "pirate" in runtime.adapters  # as it was at the look before: complete


def test_a_bad_adapter_stops_the_start_with_one_line(tmp_path: Path) -> None:
    empty = adapter_file(tmp_path, "broken", "")

    async def start() -> None:
        runtime, _ = build_runtime(Settings(model=("fake",), lora=(f"broken={empty}",)))
        try:
            await runtime.start()
        finally:
            await runtime.stop()

    with pytest.raises(ModelLoadError) as failed:
        asyncio.run(start())
    assert str(failed.value).startswith(f"{empty}: ") and "\n" not in str(failed.value)


def test_with_several_models_an_adapter_names_its_base(tmp_path: Path) -> None:
    pirate = adapter_file(tmp_path, "pirate")
    models = ("fake", f"fake:{OTHER}")
    with pytest.raises(ConfigError) as unclear:
        build_runtime(Settings(model=models, lora=(f"pirate={pirate}",)))
    message = str(unclear.value)
    assert str(pirate) in message and str(tmp_path / "pirate.yaml") in message
    (tmp_path / "pirate.yaml").write_text(f"base: {OTHER}\n")
    runtime, _ = build_runtime(Settings(model=models, lora=(f"pirate={pirate}",)))
    assert [a.name for a in runtime.models[OTHER].spec.adapters] == ["pirate"]
    assert runtime.models[FAKE_MODEL].spec.adapters == ()
    (tmp_path / "pirate.yaml").write_text("base: nobody\n")
    with pytest.raises(ConfigError, match="names base `nobody`"):
        build_runtime(Settings(model=models, lora=(f"pirate={pirate}",)))


def test_the_folder_scan_skips_hidden_and_partial_files(tmp_path: Path) -> None:
    adapter_file(tmp_path, "pirate")
    adapter_file(tmp_path / "..data", "hidden")
    (tmp_path / "robot.gguf.tmp").write_text("x")
    (tmp_path / "pirate.yaml").write_text("base: x\n")
    peft = tmp_path / "support-bot"
    peft.mkdir()
    (peft / "adapter_config.json").write_text('{"r": 8}')
    (peft / "adapter_model.safetensors").write_text("w")
    found = scan(tmp_path)
    assert {n: (a.format, a.path) for n, a in found.items()} == {
        "pirate": ("gguf", tmp_path / "pirate.gguf"),
        "support-bot": ("peft", peft),
    }
