"""The vLLM engine for real, on a lent GPU machine (skipped elsewhere): a small model from
NIMBLE_GPU_TEST_MODEL (a local Hugging Face folder; no hub access is assumed)."""

from __future__ import annotations

import importlib.util
import os
import shutil
from pathlib import Path

import pytest

from nimble.engines.base import EngineConfig
from nimble.engines.vllm_server import VllmEngine
from nimble.models.spec import ModelSpec
from nimble.types import ChatMessage, GenerateRequest, SamplingParams, Task

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(
        shutil.which("vllm") is None
        or importlib.util.find_spec("torch") is None
        or not os.environ.get("NIMBLE_GPU_TEST_MODEL"),
        reason="needs vllm, a CUDA GPU and NIMBLE_GPU_TEST_MODEL (a local model folder)",
    ),
]


async def test_real_vllm_serves_a_chat() -> None:
    folder = Path(os.environ["NIMBLE_GPU_TEST_MODEL"])
    spec = ModelSpec(
        id="gpu-test",
        engine="vllm",
        tasks=frozenset({Task.CHAT, Task.COMPLETION}),
        weights=folder,
        source=str(folder),
        options={"precision": "bf16", "context_length": "4096"},
    )
    engine = VllmEngine(spec, EngineConfig(max_running=8, engine_log=True))
    await engine.start()
    try:
        await engine.warmup()
        request = GenerateRequest(
            "gpu",
            SamplingParams(max_tokens=16, temperature=0),
            messages=(ChatMessage("user", "Say hello."),),
        )
        chunks = [c async for c in engine.generate(request)]
        assert "".join(c.text for c in chunks).strip()
        assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens > 0
        assert engine.info().context_length == 4096
        assert await engine.cache_usage() is not None
    finally:
        await engine.stop()
