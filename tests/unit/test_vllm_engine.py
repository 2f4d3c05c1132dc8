"""The vLLM adapter against a stand-in process that speaks vLLM's command line and HTTP
protocol (tests/support/vllm_standin.py): startup, flags, requests, errors, aborts,
metrics, a crashing engine restarted or fatal, and a clean stop."""

from __future__ import annotations

import asyncio
import json
import os
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from nimble.engines.base import EngineConfig
from nimble.engines.vllm_server import VllmEngine
from nimble.errors import ContextLengthExceeded, EngineError, ModelLoadError, Unavailable
from nimble.models.spec import ModelSpec
from nimble.types import (
    ChatMessage,
    EmbedRequest,
    GenerateRequest,
    GenerationChunk,
    SamplingParams,
    Task,
)

STANDIN = Path(__file__).parents[1] / "support" / "vllm_standin.py"
COMMAND = (sys.executable, str(STANDIN), "serve")


@pytest.fixture
def log(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = tmp_path / "standin.jsonl"
    monkeypatch.setenv("STANDIN_LOG", str(path))
    return path


def entries(log: Path) -> list[dict[str, Any]]:
    if not log.exists():
        return []
    return [json.loads(line) for line in log.read_text().splitlines()]


def spec(tmp_path: Path, **options: str) -> ModelSpec:
    folder = tmp_path / "model"
    folder.mkdir(exist_ok=True)
    (folder / "config.json").write_text('{"architectures": ["LlamaForCausalLM"]}')
    (folder / "model.safetensors").write_bytes(b"\x01" * 4096)
    return ModelSpec(
        id="llama-test",
        engine="vllm",
        tasks=frozenset({Task.CHAT, Task.COMPLETION, Task.EMBEDDING}),
        weights=folder,
        source="hf://org/llama@main",
        options={"precision": "bf16", **options},
    )


async def until(check: Callable[[], Awaitable[bool]], timeout: float = 20.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not await check():
        assert asyncio.get_running_loop().time() < deadline, "condition never held"
        await asyncio.sleep(0.05)  # polling interval


async def collect(engine: VllmEngine, request: GenerateRequest) -> list[GenerationChunk]:
    return [chunk async for chunk in engine.generate(request)]


def chat(text: str, **params: Any) -> GenerateRequest:
    return GenerateRequest("r1", SamplingParams(**params), messages=(ChatMessage("user", text),))


@pytest.fixture
async def running(tmp_path: Path, log: Path) -> AsyncIterator[VllmEngine]:
    engine = VllmEngine(
        spec(tmp_path, tensor_parallel_size="2", context_length="64", enforce_eager="true"),
        EngineConfig(engine_command=COMMAND, max_running=4),
    )
    await engine.start()
    try:
        yield engine
    finally:
        await engine.stop()


async def test_start_maps_the_profile_to_vllm_flags_and_hides_the_key(
    running: VllmEngine, log: Path
) -> None:
    (started,) = [e for e in entries(log) if "argv" in e]
    argv = started["argv"]
    assert argv[:2] == ["serve", str(running.spec.weights)]
    pairs = {
        flag: argv[i + 1] if i + 1 < len(argv) and not argv[i + 1].startswith("--") else ""
        for i, flag in enumerate(argv)
        if flag.startswith("--")
    }
    assert pairs["--host"] == "127.0.0.1"
    assert pairs["--served-model-name"] == "llama-test"
    assert pairs["--dtype"] == "bfloat16"
    assert pairs["--tensor-parallel-size"] == "2"
    assert pairs["--max-model-len"] == "64"
    assert pairs["--max-num-seqs"] == "4"
    assert pairs["--enforce-eager"] == "" and "--precision" not in argv
    assert started["api_key_in_env"] and not any("--api-key" in a for a in argv)
    info = running.info()
    assert (info.engine, info.engine_version, info.context_length) == ("vllm", "0.11.0+standin", 64)
    names = {Path(f.path).name: f for f in info.files}
    assert set(names) == {"config.json", "model.safetensors"}
    assert len(names["model.safetensors"].sha256) == 64
    assert await running.health()


async def test_chat_completion_streams_with_usage_and_logprobs(running: VllmEngine) -> None:
    chunks = await collect(running, chat("hello there", max_tokens=3, top_logprobs=2))
    text = "".join(c.text for c in chunks)
    assert text == "<|user|> hello there "
    finals = [c for c in chunks if c.finish_reason]
    assert [c.finish_reason for c in finals] == ["length"]
    assert chunks[-1].usage is not None
    assert (chunks[-1].usage.prompt_tokens, chunks[-1].usage.completion_tokens) == (4, 3)
    with_logprobs = [c for c in chunks if c.logprobs]
    assert len(with_logprobs) == 3 and len(with_logprobs[0].logprobs[0].top) == 2


async def test_completion_with_stop_and_n(running: VllmEngine, log: Path) -> None:
    request = GenerateRequest(
        "r2",
        SamplingParams(max_tokens=6, n=2, stop=("c",), seed=7, temperature=0.5, top_p=0.9),
        prompt="a b c d",
    )
    chunks = await collect(running, request)
    by_choice = {i: "".join(c.text for c in chunks if c.index == i) for i in (0, 1)}
    assert by_choice == {0: "a b ", 1: "a b "}
    assert [c.finish_reason for c in chunks if c.finish_reason] == ["stop", "stop"]
    sent = [e["body"] for e in entries(log) if e.get("path") == "/v1/completions"][-1]
    assert sent["seed"] == 7 and sent["temperature"] == 0.5 and sent["top_p"] == 0.9
    assert sent["stop"] == ["c"] and sent["n"] == 2 and sent["stream"] is True


async def test_tokens_embeddings_and_cache_usage(running: VllmEngine) -> None:
    assert await running.count_prompt_tokens(chat("one two three")) == 5
    result = await running.embed(EmbedRequest("e", ("a", "b c")))
    assert len(result.vectors) == 2 and len(result.vectors[0]) == 8
    assert result.prompt_tokens == 3
    assert await running.cache_usage() == 0.0


async def test_vllm_errors_map_to_nimble_errors(running: VllmEngine) -> None:
    with pytest.raises(ContextLengthExceeded, match="maximum context length is 64 tokens"):
        await collect(running, chat("word " * 80, max_tokens=4))


async def test_closing_the_stream_aborts_the_request_in_vllm(
    tmp_path: Path, log: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("STANDIN_TOKEN_DELAY", "0.05")
    engine = VllmEngine(spec(tmp_path), EngineConfig(engine_command=COMMAND))
    await engine.start()
    try:
        stream = engine.generate(chat("go", max_tokens=500))
        for _ in range(3):
            await anext(stream)
        assert await engine.cache_usage() == 0.25  # one request running
        await stream.aclose()

        async def disconnected() -> bool:
            return any(e.get("event") == "disconnect" for e in entries(log))

        await until(disconnected)
        await until(lambda: _equals(engine.cache_usage(), 0.0))
    finally:
        await engine.stop()


async def _equals(value: Awaitable[float | None], expected: float) -> bool:
    return await value == expected


async def test_startup_polls_health_until_the_model_is_loaded(
    tmp_path: Path, log: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("STANDIN_STARTUP_DELAY", "1.5")
    engine = VllmEngine(spec(tmp_path), EngineConfig(engine_command=COMMAND))
    try:
        await engine.start()
        assert await engine.health()
    finally:
        await engine.stop()


async def test_an_engine_that_exits_while_starting(
    tmp_path: Path, log: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("STANDIN_EXIT_AT_START", "3")
    engine = VllmEngine(spec(tmp_path), EngineConfig(engine_command=COMMAND))
    with pytest.raises(ModelLoadError) as info:
        await engine.start()
    message = str(info.value)
    assert str(engine.spec.weights) in message and "exited with code 3" in message
    assert "CUDA out of memory (simulated)" in message
    await engine.stop()


async def test_an_engine_that_never_gets_healthy_is_killed(
    tmp_path: Path, log: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("STANDIN_STARTUP_DELAY", "60")
    engine = VllmEngine(
        spec(tmp_path), EngineConfig(engine_command=COMMAND, engine_start_timeout=1.0)
    )
    with pytest.raises(ModelLoadError, match="not healthy after 1 s"):
        await engine.start()
    pids = [e for e in entries(log) if "argv" in e]
    assert len(pids) == 1
    await engine.stop()


async def test_vllm_not_installed(tmp_path: Path) -> None:
    engine = VllmEngine(
        spec(tmp_path), EngineConfig(engine_command=("no-such-vllm-executable", "serve"))
    )
    with pytest.raises(ModelLoadError, match=r"pip install 'nimble\[gpu\]'"):
        await engine.start()


async def test_a_crashed_engine_is_restarted(
    tmp_path: Path, log: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("STANDIN_CRASH_AFTER_TOKENS", "3")
    engine = VllmEngine(spec(tmp_path), EngineConfig(engine_command=COMMAND))
    await engine.start()
    try:
        first_port = engine.info().extra["port"]
        with pytest.raises(EngineError, match="connection lost"):
            await collect(engine, chat("crash me", max_tokens=10))
        await until(lambda: _not(engine.health()))
        with pytest.raises(Unavailable, match="restarting"):
            await engine.count_prompt_tokens(chat("x"))
        await until(engine.health)
        assert engine.info().extra["port"] != first_port
        chunks = await collect(engine, chat("again", max_tokens=2))
        assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 2
        assert len([e for e in entries(log) if "argv" in e]) == 2
    finally:
        await engine.stop()


async def _not(value: Awaitable[bool]) -> bool:
    return not await value


async def test_a_crashed_engine_is_fatal_with_the_fail_policy(
    tmp_path: Path, log: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("STANDIN_CRASH_AFTER_TOKENS", "1")
    fatal: list[str] = []
    engine = VllmEngine(
        spec(tmp_path),
        EngineConfig(engine_command=COMMAND, engine_restart="fail", on_fatal=fatal.append),
    )
    await engine.start()
    try:
        with pytest.raises(EngineError):
            await collect(engine, chat("crash", max_tokens=5))

        async def told() -> bool:
            return bool(fatal)

        await until(told)
        assert "exited with code 1" in fatal[0]
        assert not await engine.health()
        assert len([e for e in entries(log) if "argv" in e]) == 1  # never restarted
    finally:
        await engine.stop()


async def test_stop_ends_the_process_group(tmp_path: Path, log: Path) -> None:
    engine = VllmEngine(spec(tmp_path), EngineConfig(engine_command=COMMAND))
    await engine.start()
    proc = engine._proc
    assert proc is not None
    await engine.stop()
    assert proc.returncode is not None
    with pytest.raises(ProcessLookupError):
        os.kill(proc.pid, 0)
    await engine.stop()  # twice is fine
