"""The vLLM engine for real, on a lent GPU machine with vLLM installed (skipped elsewhere).

The model is NIMBLE_GPU_TEST_MODEL (a local Hugging Face folder) when set, else a tiny
random-weight Llama built here (tests/support/tiny_llama.py): no hub access is assumed.
What the stand-in cannot prove is checked against vLLM itself: its flags are accepted, its
stream, logprobs, /tokenize, /metrics and error wording read as nimble expects, an aborted
stream frees the request, a killed server (engine core and workers included) is
swept and restarted, and LoRA adapters (on the command line, loaded at run time, replaced,
refused) change what the model writes.

Each vLLM start costs about a minute even in eager mode (measured on an H200, issue 18), so
the first three tests share one: serving, then structured outputs, then the kill and the
restart, which ends it and checks that nothing of its process group is left. The LoRA test
needs other flags and starts its own."""

from __future__ import annotations

import asyncio
import dataclasses
import os
import shutil
import signal
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
import pytest_asyncio

from nimble.engines.config import EngineConfig
from nimble.engines.vllm.engine import VllmEngine
from nimble.errors import ContextLengthExceeded
from nimble.models.spec import ModelSpec
from nimble.types import ChatMessage, GenerateRequest, SamplingParams, Task

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(
        shutil.which("vllm") is None or shutil.which("nvidia-smi") is None,
        reason="needs vLLM's `vllm` on PATH (pip install 'nimble[gpu]') and an NVIDIA GPU",
    ),
    pytest.mark.asyncio(loop_scope="module"),  # the shared engine lives on the module's loop
]

CONTEXT = 512


@pytest.fixture(scope="module")
def model_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    configured = os.environ.get("NIMBLE_GPU_TEST_MODEL")
    if configured:
        return Path(configured)
    from tests.support.tiny_llama import build_tiny_llama  # torch: only here

    return build_tiny_llama(tmp_path_factory.mktemp("model") / "tiny-llama", context=CONTEXT)


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def shared(model_folder: Path) -> AsyncIterator[VllmEngine]:
    """One started engine for the tests that use the same flags, in file order; the kill
    test, last of them, ends it (stopping twice is safe)."""
    engine = engine_for(model_folder)
    await engine.start()  # with its warm-up generation
    try:
        yield engine
    finally:
        await engine.stop()


def engine_for(folder: Path, **config: Any) -> VllmEngine:
    spec = ModelSpec(
        id="gpu-test",
        engine="vllm",
        tasks=frozenset({Task.CHAT, Task.COMPLETION}),
        weights=folder,
        source=str(folder),
        options={
            "precision": "bf16",
            "context_length": str(CONTEXT),
            "gpu_memory_utilization": "0.3",
            "enforce_eager": "true",  # no CUDA graph capture: a faster start
        },
    )
    settings: dict[str, Any] = {
        "max_running": 8,
        "engine_log": True,
        "engine_start_timeout": 600.0,
        **config,
    }
    return VllmEngine(spec, EngineConfig(**settings))


def chat(text: str, **params: Any) -> GenerateRequest:
    return GenerateRequest("gpu", SamplingParams(**params), messages=(ChatMessage("user", text),))


async def until(check: Callable[[], Awaitable[bool]], timeout: float) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not await check():
        assert asyncio.get_running_loop().time() < deadline, "condition never held"
        await asyncio.sleep(0.2)  # polling interval


def group_members(pgid: int) -> list[int]:
    members = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (FileNotFoundError, ProcessLookupError):
            continue
        if fields[0] != "Z" and int(fields[2]) == pgid:
            members.append(int(stat.parent.name))
    return members


async def running_requests(engine: VllmEngine) -> float:
    async with httpx.AsyncClient(trust_env=False) as client:
        text = (await client.get(f"http://127.0.0.1:{engine._client.port}/metrics")).text
    lines = [line for line in text.splitlines() if line.startswith("vllm:num_requests_running")]
    return sum(float(line.rsplit(" ", 1)[1]) for line in lines)


async def test_real_vllm_serves_through_the_engine(shared: VllmEngine) -> None:
    engine = shared
    info = engine.info()
    assert info.engine_version and info.context_length == CONTEXT
    assert any(Path(f.path).name == "config.json" for f in info.files)

    request = chat("hello cat", max_tokens=8, temperature=0, top_logprobs=2)
    chunks = [c async for c in engine.generate(request)]
    usage = chunks[-1].usage
    assert usage is not None and 0 < usage.completion_tokens <= 8
    assert usage.prompt_tokens == await engine.prompt_tokens(request, fits=0)
    assert [c.finish_reason for c in chunks if c.finish_reason] in (["length"], ["stop"])
    tokens = [lp for c in chunks for lp in c.logprobs]
    assert len(tokens) == usage.completion_tokens and all(len(t.top) == 2 for t in tokens)

    # vLLM takes the sampling extensions in the names nimble sends (docs/sampling.md)
    fixed = chat(
        "hello cat",
        max_tokens=8,
        temperature=0,
        ignore_eos=True,
        min_tokens=8,
        top_k=0,
        min_p=0.0,
        repetition_penalty=1.1,
        logit_bias=((7, 1.0),),
        skip_special_tokens=False,
        continuous_usage=True,
    )
    chunks = [c async for c in engine.generate(fixed)]
    usage = chunks[-1].usage
    assert usage is not None and usage.completion_tokens == 8
    counts = [c.progress.completion_tokens for c in chunks if c.progress is not None]
    assert counts and counts == sorted(counts) and counts[-1] <= 8

    completion = GenerateRequest(
        "gpu-c", SamplingParams(max_tokens=4, n=2, seed=1, top_logprobs=1), prompt="one two"
    )
    chunks = [c async for c in engine.generate(completion)]
    assert {c.index for c in chunks if c.finish_reason} == {0, 1}
    assert any(c.logprobs and c.logprobs[0].top for c in chunks)  # the legacy shape

    with pytest.raises(ContextLengthExceeded):
        async for _ in engine.generate(chat("cat " * (CONTEXT + 10), max_tokens=4)):
            pass

    usage_share = await engine.cache_usage()
    assert usage_share is not None and 0.0 <= usage_share <= 1.0

    stream = engine.generate(chat("say yes", max_tokens=400, temperature=1.0))
    await anext(stream)
    await anext(stream)
    await stream.aclose()  # vLLM aborts the request when the connection closes
    await until(lambda: _is_zero(running_requests(engine)), timeout=30)


async def test_real_vllm_follows_structured_outputs(shared: VllmEngine) -> None:
    """vLLM's `structured_outputs` as nimble sends them (a random-weight model writes only
    what the grammar allows): a JSON schema, a regex, a choice, and a forced tool call that
    nimble wraps in the hermes markers and reads back."""
    import json
    import re

    import jsonschema

    from nimble.runtime.tools import FORMATS
    from nimble.runtime.tools.parse import CallParser
    from nimble.types import (
        ChoiceConstraint,
        JsonSchemaConstraint,
        RegexConstraint,
        ToolCallConstraint,
        ToolFunction,
    )

    schema = {
        "type": "object",
        "properties": {"n": {"enum": [1, 2, 3]}, "tag": {"enum": ["a", "b"]}},  # bounded
        "required": ["n", "tag"],
        "additionalProperties": False,
    }
    engine = shared

    async def text(constraint: Any, **extra: Any) -> str:
        request = dataclasses.replace(
            chat("go", max_tokens=60, temperature=1.0), constraint=constraint, **extra
        )
        return "".join([c.text async for c in engine.generate(request)])

    jsonschema.validate(json.loads(await text(JsonSchemaConstraint(schema))), schema)
    assert re.fullmatch(r"[0-9]{3}-[a-z]{2}", await text(RegexConstraint(r"[0-9]{3}-[a-z]{2}")))
    assert await text(ChoiceConstraint(("yes", "no"))) in {"yes", "no"}
    weather = ToolFunction("get_weather", parameters=schema)
    hermes = FORMATS["hermes"]
    forced = ToolCallConstraint(
        hermes.call_schema((weather,), parallel=False),
        hermes.grammar_begin,
        hermes.grammar_end,
        hermes.grammar_separator,
        max_calls=1,
    )
    written = await text(forced, tools=(weather,))
    parser = CallParser(hermes)
    deltas = [*parser.feed(written).calls, *parser.finish().calls]
    assert deltas[0].name == "get_weather"
    arguments = "".join(d.arguments for d in deltas)
    jsonschema.validate(json.loads(arguments), schema)


async def _is_zero(value: Awaitable[float]) -> bool:
    return await value == 0


async def test_a_killed_vllm_is_swept_and_restarted(shared: VllmEngine) -> None:
    engine = shared
    first = engine._process.pid
    assert first is not None and len(group_members(first)) >= 1
    os.kill(first, signal.SIGKILL)  # the API server only: its engine core is orphaned

    async def down() -> bool:
        return not await engine.health()

    await until(down, timeout=30)
    await until(lambda: _swept(first), timeout=30)
    await until(engine.health, timeout=600)
    chunks = [c async for c in engine.generate(chat("hello", max_tokens=2))]
    assert chunks[-1].usage is not None

    second = engine._process.pid
    await engine.stop()  # the shared engine's end: nothing of its group is left
    assert second is not None and second != first and group_members(second) == []


async def _swept(pgid: int) -> bool:
    return group_members(pgid) == []


def _lora_layers(folder: Path) -> dict[str, tuple[int, int]]:
    """q, v and down projections of the first two layers, sized from the model's
    config.json: (in, out) as the base's weights have them."""
    import json

    config = json.loads((folder / "config.json").read_text())
    hidden, heads = int(config["hidden_size"]), int(config["num_attention_heads"])
    head_dim = int(config.get("head_dim") or hidden // heads)
    kv = int(config.get("num_key_value_heads") or heads) * head_dim
    sizes = {
        "self_attn.q_proj": (hidden, heads * head_dim),
        "self_attn.v_proj": (hidden, kv),
        "mlp.down_proj": (int(config["intermediate_size"]), hidden),
    }
    return {f"model.layers.{i}.{name}": size for i in (0, 1) for name, size in sizes.items()}


async def test_real_vllm_serves_lora_adapters(model_folder: Path, tmp_path: Path) -> None:
    """LoRA adapters for real (issue 19), written as PEFT folders with weights large enough
    to be unmistakable: one on vLLM's command line and one loaded at run time each change
    the greedy text, and the same request gives the same text again; an adapter replaced by
    the other's weights answers exactly as that one; base and adapter requests at once are
    not mixed up; an unloaded adapter is refused, and so is a broken file (by vLLM itself,
    read as nimble expects)."""
    from nimble.errors import InvalidRequest, ModelNotFound
    from nimble.models.adapters import AdapterSpec, identify, resolve
    from tests.support.peft_adapters import write_peft

    layers = _lora_layers(model_folder)

    def adapter(name: str, seed: int) -> AdapterSpec:
        folder = write_peft(tmp_path / name, rank=8, layers=layers, seed=seed, scale=0.2)
        found = identify(folder, name)
        assert found is not None
        return resolve(found, ["gpu-test"], "flag")

    static = adapter("static", seed=1)
    plain = engine_for(model_folder, runtime_adapters=True, max_loras=2)
    engine = VllmEngine(dataclasses.replace(plain.spec, adapters=(static,)), plain._config)
    await engine.start()
    try:

        async def greedy(name: str | None = None) -> str:
            request = chat("hello cat", max_tokens=12, temperature=0, ignore_eos=True)
            request = dataclasses.replace(request, adapter=name)
            return "".join([c.text async for c in engine.generate(request)])

        base = await greedy()
        with_static = await greedy("static")
        assert with_static != base
        assert await greedy("static") == with_static

        runtime = adapter("runtime", seed=2)
        await engine.load_adapter(runtime)
        with_runtime = await greedy("runtime")
        assert with_runtime not in (base, with_static)

        await engine.load_adapter(dataclasses.replace(runtime, name="static"))  # replaced
        assert await greedy("static") == with_runtime

        names = [None, "static", "runtime"] * 4
        texts = await asyncio.gather(*(greedy(name) for name in names))
        # none on another's weights (inequalities: a batch may move a random model's
        # near-ties, never from the base to an adapter's text or back)
        for name, text in zip(names, texts, strict=True):
            assert text != (with_runtime if name is None else base), (name, text)

        await engine.unload_adapter("runtime")
        with pytest.raises(ModelNotFound):
            await greedy("runtime")

        broken = write_peft(tmp_path / "broken", rank=8, layers=layers)
        (broken / "adapter_model.safetensors").write_bytes(b"\x08" + bytes(7) + b"{not json")
        found = identify(broken, "broken")
        assert found is not None
        with pytest.raises(InvalidRequest, match="vLLM refused the adapter") as refused:
            await engine.load_adapter(resolve(found, ["gpu-test"], "flag"))
        assert str(refused.value).startswith(str(broken))
        assert await greedy("static") == with_runtime  # a refusal leaves vLLM serving
    finally:
        await engine.stop()
