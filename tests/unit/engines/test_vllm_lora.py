"""The vLLM engine as a LoRA adapter host, against the stand-in that speaks vLLM 0.11's LoRA
protocol (tests/support/vllm_standin.py): the flags that reach `vllm serve`, adapters loaded
and unloaded through vLLM's own endpoints, a replaced adapter that leaves a running stream
on its old version, adapters loaded again after a restart, and what is refused (by nimble
from the files, or by vLLM) in one line naming the file."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import signal
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from nimble.engines.config import EngineConfig
from nimble.engines.vllm import engine as vllm_server
from nimble.engines.vllm.engine import VllmEngine
from nimble.engines.vllm.lora import check_adapter, vllm_rank
from nimble.engines.vllm.supervisor import RestartPolicy
from nimble.errors import EngineError, InvalidRequest, ModelLoadError, ModelNotFound
from nimble.models.adapters import AdapterSpec, identify, resolve
from nimble.models.files import sha256_of
from nimble.models.spec import ModelSpec
from nimble.types import ChatMessage, GenerateRequest, GenerationChunk, SamplingParams, Task
from tests.support.peft_adapters import write_peft, write_safetensors

STANDIN = Path(__file__).parents[2] / "support" / "vllm_standin.py"
COMMAND = (sys.executable, str(STANDIN), "serve")
BASE = "llama-test"


@pytest.fixture
def log(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = tmp_path / "standin.jsonl"
    monkeypatch.setenv("STANDIN_LOG", str(path))
    return path


def entries(log: Path, key: str) -> list[dict[str, Any]]:
    if not log.exists():
        return []
    rows = [json.loads(line) for line in log.read_text().splitlines()]
    return [row for row in rows if key in row]


def bodies(log: Path, path: str) -> list[dict[str, Any]]:
    return [row for row in entries(log, "path") if row["path"] == path]


def unloads(log: Path) -> list[tuple[str, int | None]]:
    """vLLM names unloaded, with the adapter's requests running at that moment."""
    rows = bodies(log, "/v1/unload_lora_adapter")
    return [(row["body"]["lora_name"], row["running"]) for row in rows]


def base_spec(tmp_path: Path, *adapters: AdapterSpec, **changes: Any) -> ModelSpec:
    """A Llama folder whose weights file is a real safetensors header (two layers' q_proj,
    64 -> 64), so nimble can compare an adapter's layers with it."""
    folder = tmp_path / "model"
    folder.mkdir(exist_ok=True)
    (folder / "config.json").write_text('{"architectures": ["LlamaForCausalLM"]}')
    shapes = {f"model.layers.{i}.self_attn.q_proj.weight": ([64, 64], None) for i in (0, 1)}
    write_safetensors(folder / "model.safetensors", shapes)
    spec = ModelSpec(
        id=BASE,
        engine="vllm",
        tasks=frozenset({Task.CHAT, Task.COMPLETION}),
        weights=folder,
        source="hf://org/llama@main",
        options={"precision": "bf16"},
        adapters=adapters,
    )
    return dataclasses.replace(spec, **changes)


def adapter(folder: Path, name: str) -> AdapterSpec:
    found = identify(folder, name)
    assert found is not None
    return resolve(found, [BASE], "api")


def chat(text: str, adapter_name: str | None = None, **params: Any) -> GenerateRequest:
    messages = (ChatMessage("user", text),)
    return GenerateRequest("r", SamplingParams(**params), messages=messages, adapter=adapter_name)


async def text_of(engine: VllmEngine, request: GenerateRequest) -> str:
    return "".join([c.text async for c in engine.generate(request)])


def mark(spec: AdapterSpec) -> str:
    """How vLLM (the stand-in) knows this version, and what its answers start with."""
    vllm_name = f"{spec.name}@{spec.sha256[:8]}"
    return f"[{vllm_name}|{sha256_of(spec.path / 'adapter_model.safetensors')[:8]}] "


async def until(check: Callable[[], Awaitable[bool]], timeout: float = 20.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not await check():
        assert asyncio.get_running_loop().time() < deadline, "condition never held"
        await asyncio.sleep(0.05)  # polling interval


@pytest.fixture
async def started() -> AsyncIterator[Callable[[VllmEngine], Awaitable[VllmEngine]]]:
    engines: list[VllmEngine] = []

    async def start(engine: VllmEngine) -> VllmEngine:
        engines.append(engine)
        await engine.start()
        return engine

    yield start
    for engine in engines:
        await engine.stop()


def config(**values: Any) -> EngineConfig:
    return EngineConfig(engine_command=COMMAND, **values)


# the command line


async def test_the_models_adapters_go_on_vllms_command_line(
    tmp_path: Path, log: Path, started: Callable[[VllmEngine], Awaitable[VllmEngine]]
) -> None:
    pirate = adapter(write_peft(tmp_path / "pirate", seed=1), "pirate")
    poet = adapter(write_peft(tmp_path / "poet", seed=2), "poet")
    engine = await started(
        VllmEngine(base_spec(tmp_path, pirate, poet), config(max_loras=2, max_lora_rank=20))
    )
    ((launch,),) = [entries(log, "argv")]
    argv = launch["argv"]
    assert "--enable-lora" in argv
    assert argv[argv.index("--max-loras") + 1] == "2"
    assert argv[argv.index("--max-lora-rank") + 1] == "32"  # 20 is not one vLLM takes
    assert argv.count("--lora-modules") == 1  # vLLM keeps only the last of repeated flags
    start = argv.index("--lora-modules") + 1
    assert [json.loads(value) for value in argv[start : start + 2]] == [
        {"name": f"pirate@{pirate.sha256[:8]}", "path": str(pirate.path), "base_model_name": BASE},
        {"name": f"poet@{poet.sha256[:8]}", "path": str(poet.path), "base_model_name": BASE},
    ]
    assert launch["runtime_lora"] == "True"

    assert (await text_of(engine, chat("ahoy", "pirate", max_tokens=2))) == (
        mark(pirate) + "<|user|> "
    )
    assert bodies(log, "/v1/chat/completions")[-1]["body"]["model"] == f"pirate@{pirate.sha256[:8]}"
    assert (await text_of(engine, chat("ahoy", "poet", max_tokens=1))) == mark(poet)
    assert (await text_of(engine, chat("ahoy", max_tokens=2))) == "<|user|> ahoy "  # the base
    assert bodies(log, "/v1/chat/completions")[-1]["body"]["model"] == BASE
    async with httpx.AsyncClient(trust_env=False) as client:
        listed = await client.get(
            f"http://127.0.0.1:{engine._client.port}/v1/models", headers=engine._client.auth()
        )
    parents = {m["id"]: m.get("parent") for m in listed.json()["data"]}
    assert parents == {
        BASE: None,
        f"pirate@{pirate.sha256[:8]}": BASE,
        f"poet@{poet.sha256[:8]}": BASE,
    }


def test_lora_is_on_only_when_adapters_are_possible(tmp_path: Path) -> None:
    plain = VllmEngine(base_spec(tmp_path), config())._launch()
    assert "--enable-lora" not in plain.argv
    assert "VLLM_ALLOW_RUNTIME_LORA_UPDATING" not in plain.env
    runtime = VllmEngine(base_spec(tmp_path), config(runtime_adapters=True))._launch()
    assert "--enable-lora" in runtime.argv and "--lora-modules" not in runtime.argv
    assert runtime.argv[runtime.argv.index("--max-lora-rank") + 1] == "16"
    assert runtime.env["VLLM_ALLOW_RUNTIME_LORA_UPDATING"] == "True"
    embedder = base_spec(tmp_path, tasks=frozenset({Task.EMBEDDING}))
    assert "--enable-lora" not in VllmEngine(embedder, config(runtime_adapters=True))._launch().argv


def test_max_lora_rank_goes_to_the_next_rank_vllm_takes() -> None:
    assert [vllm_rank(r) for r in (1, 2, 8, 9, 16, 64, 300, 512)] == [
        1, 8, 8, 16, 16, 64, 320, 512
    ]  # fmt: skip
    with pytest.raises(ModelLoadError, match="rank 512 at most"):
        vllm_rank(513)


# run time


async def test_adapters_load_and_unload_through_vllms_endpoints(
    tmp_path: Path, log: Path, started: Callable[[VllmEngine], Awaitable[VllmEngine]]
) -> None:
    engine = await started(VllmEngine(base_spec(tmp_path), config(runtime_adapters=True)))
    pirate = adapter(write_peft(tmp_path / "pirate"), "pirate")
    await engine.load_adapter(pirate)
    (loaded,) = bodies(log, "/v1/load_lora_adapter")
    vllm_name = f"pirate@{pirate.sha256[:8]}"
    assert loaded["body"] == {"lora_name": vllm_name, "lora_path": str(pirate.path)}
    assert (await text_of(engine, chat("hi", "pirate", max_tokens=1))) == mark(pirate)
    await engine.unload_adapter("pirate")
    assert unloads(log) == [(vllm_name, 0)]
    with pytest.raises(ModelNotFound, match="pirate"):
        await text_of(engine, chat("hi", "pirate", max_tokens=1))
    await engine.load_adapter(pirate)  # again, after an unload: vLLM has the name free
    assert (await text_of(engine, chat("hi", "pirate", max_tokens=1))) == mark(pirate)


async def test_a_replaced_adapter_keeps_its_running_stream(
    tmp_path: Path,
    log: Path,
    monkeypatch: pytest.MonkeyPatch,
    started: Callable[[VllmEngine], Awaitable[VllmEngine]],
) -> None:
    monkeypatch.setenv("STANDIN_TOKEN_DELAY", "0.02")
    engine = await started(VllmEngine(base_spec(tmp_path), config(runtime_adapters=True)))
    folder = write_peft(tmp_path / "pirate", seed=1)
    old = adapter(folder, "pirate")
    await engine.load_adapter(old)
    stream = engine.generate(chat("ahoy", "pirate", max_tokens=40))
    head: list[GenerationChunk] = []
    while not "".join(c.text for c in head):
        head.append(await anext(stream))

    write_peft(folder, seed=2)  # the same folder, new weights: replaced in place
    new = adapter(folder, "pirate")
    assert new.sha256 != old.sha256
    await engine.load_adapter(new)
    assert (await text_of(engine, chat("ahoy", "pirate", max_tokens=1))) == mark(new)
    assert unloads(log) == []  # the old version still has its stream

    rest = [chunk async for chunk in stream]
    text = "".join(c.text for c in [*head, *rest])
    old_mark = f"[pirate@{old.sha256[:8]}|{old.sha256[:8]}] "
    assert text == (old_mark + "<|user|> ahoy <|assistant|> ") * 10  # all 40, on the old one
    assert [c.finish_reason for c in rest if c.finish_reason] == ["length"]

    async def old_unloaded() -> bool:
        return unloads(log) == [(f"pirate@{old.sha256[:8]}", 0)]  # after its last request

    await until(old_unloaded)
    assert (await text_of(engine, chat("ahoy", "pirate", max_tokens=1))).startswith(
        f"[pirate@{new.sha256[:8]}|{new.sha256[:8]}]"
    )


# refusals


async def test_what_vllm_cannot_serve_is_refused_in_one_line_naming_the_file(
    tmp_path: Path, log: Path, started: Callable[[VllmEngine], Awaitable[VllmEngine]]
) -> None:
    engine = await started(
        VllmEngine(base_spec(tmp_path), config(runtime_adapters=True, max_lora_rank=16))
    )
    gguf = tmp_path / "pirate.gguf"
    gguf.write_bytes(b"GGUF" + bytes(60))
    refusals: list[tuple[AdapterSpec, str]] = [
        (adapter(gguf, "g"), "a GGUF adapter; the vllm engine takes PEFT adapter folders"),
        (
            adapter(write_peft(tmp_path / "big", rank=32), "big"),
            "adapter_config.json: LoRA rank 32 is over max_lora_rank 16",
        ),
        (
            adapter(
                write_peft(tmp_path / "wide", layers={"model.layers.0.self_attn.q_proj": (96, 64)}),
                "wide",
            ),
            "model.layers.0.self_attn.q_proj is 96 -> 64 in the adapter but 64 -> 64 in model",
        ),
        (
            adapter(
                write_peft(tmp_path / "gpt2", layers={"transformer.h.0.attn.c_attn": (64, 192)}),
                "gpt2",
            ),
            "has none of the layers this adapter adapts (transformer.h.0.attn.c_attn ...)",
        ),
    ]
    for name, extra, says in (
        ("dora", {"use_dora": True}, "a DoRA adapter (use_dora)"),
        ("heads", {"modules_to_save": ["lm_head"]}, "modules_to_save (lm_head)"),
    ):
        refusals.append((adapter(write_peft(tmp_path / name, extra=extra), name), says))
    # nimble cannot compare what is not safetensors: vLLM's own refusal, naming the file
    opaque = write_peft(tmp_path / "opaque", targets=("c_attn",))
    (opaque / "adapter_model.safetensors").write_bytes(b"not safetensors")
    refusals.append((adapter(opaque, "opaque"), "vLLM refused the adapter: While loading "))
    for spec, expected in refusals:
        with pytest.raises(InvalidRequest) as refused:
            await engine.load_adapter(spec)
        message = str(refused.value)
        assert message.startswith(str(spec.path)) and expected in message, message
        assert "\n" not in message and refused.value.param == "lora_path"
    assert [row["body"]["lora_name"] for row in bodies(log, "/v1/load_lora_adapter")] == [
        f"opaque@{refusals[-1][0].sha256[:8]}"  # the others never reached vLLM
    ]
    with pytest.raises(ModelNotFound):
        await text_of(engine, chat("hi", "opaque", max_tokens=1))


async def test_a_static_adapter_that_does_not_fit_stops_the_start_before_vllm(
    tmp_path: Path, log: Path
) -> None:
    big = adapter(write_peft(tmp_path / "big", rank=64), "big")
    engine = VllmEngine(base_spec(tmp_path, big), config())
    with pytest.raises(ModelLoadError) as refused:
        await engine.start()
    await engine.stop()
    assert str(refused.value) == (
        f"{big.path / 'adapter_config.json'}: LoRA rank 64 is over max_lora_rank 16 "
        "(--max-lora-rank, NIMBLE_MAX_LORA_RANK)"
    )
    assert entries(log, "argv") == []  # vLLM never started


def test_checks_leave_to_vllm_what_the_files_cannot_tell(tmp_path: Path) -> None:
    """A base whose weights are not safetensors, and layers the base has under another
    prefix (a multimodal checkpoint), are not refused by nimble."""
    spec = base_spec(tmp_path)
    prefixed = write_peft(
        tmp_path / "prefixed", layers={"model.language_model.layers.1.self_attn.q_proj": (64, 64)}
    )
    check_adapter(adapter(prefixed, "prefixed"), spec, 16)
    (spec.weights / "model.safetensors").write_bytes(b"\x01" * 64)
    wide = write_peft(tmp_path / "wide", layers={"model.layers.0.self_attn.q_proj": (96, 64)})
    check_adapter(adapter(wide, "wide"), spec, 16)


# restarts


async def test_a_restarted_vllm_gets_the_adapters_loaded_at_run_time_again(
    tmp_path: Path,
    log: Path,
    monkeypatch: pytest.MonkeyPatch,
    started: Callable[[VllmEngine], Awaitable[VllmEngine]],
) -> None:
    monkeypatch.setattr(vllm_server, "RESTARTS", RestartPolicy(first_delay=0.05, max_delay=0.1))
    poet = adapter(write_peft(tmp_path / "poet", seed=3), "poet")
    engine = await started(VllmEngine(base_spec(tmp_path, poet), config(runtime_adapters=True)))
    pirate = adapter(write_peft(tmp_path / "pirate", seed=1), "pirate")
    doomed = adapter(write_peft(tmp_path / "doomed", seed=4), "doomed")
    await engine.load_adapter(pirate)
    await engine.load_adapter(doomed)
    for path in doomed.path.iterdir():  # gone from the disk before the restart
        path.unlink()
    pid = engine._process.pid
    assert pid is not None
    os.kill(pid, signal.SIGKILL)

    async def restarted() -> bool:
        return engine._process.pid != pid and await engine.health()

    await until(restarted)
    first, second = (row["argv"] for row in entries(log, "argv"))
    for argv in (first, second):  # the start's adapters on the command line, each time
        modules = argv[argv.index("--lora-modules") + 1 :]
        assert [json.loads(module)["name"] for module in modules] == [f"poet@{poet.sha256[:8]}"]
    loads = [row["body"]["lora_name"] for row in bodies(log, "/v1/load_lora_adapter")]
    pirate_name, doomed_name = f"pirate@{pirate.sha256[:8]}", f"doomed@{doomed.sha256[:8]}"
    assert loads == [pirate_name, doomed_name, pirate_name, doomed_name]
    assert (await text_of(engine, chat("hi", "pirate", max_tokens=1))) == mark(pirate)
    assert (await text_of(engine, chat("hi", "poet", max_tokens=1))) == mark(poet)
    with pytest.raises(EngineError, match="could not be loaded again after vLLM restarted"):
        await text_of(engine, chat("hi", "doomed", max_tokens=1))
