"""What the metrics and the readiness probe read of the served models: each engine's KV cache
use (asked at most once a `GAUGE_REFRESH_S`), the admission gauges, and which engines cannot
serve right now."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterable

from nimble.observability.metrics import ModelGauges
from nimble.runtime.served import ServedModel

GAUGE_REFRESH_S = 1.0  # an engine's KV cache use is asked at most this often


async def refresh_cache_usage(models: Iterable[ServedModel]) -> None:
    """Ask each loaded engine for its cache use, at most once per `GAUGE_REFRESH_S`: asking
    is a request to the engine (llama.cpp's /slots, vLLM's /metrics), and a benchmark client
    such as aiperf scrapes three times a second."""
    now = time.monotonic()
    for model in models:
        if model.loaded and model.cache is not None and now >= model.cache_read_at:
            model.cache_read_at = now + GAUGE_REFRESH_S
            model.cache_usage = await model.cache.cache_usage()


def readings(models: Iterable[ServedModel]) -> list[ModelGauges]:
    return [
        ModelGauges(
            model=model.spec.id,
            running=model.admission.running,
            waiting=model.admission.waiting,
            max_running=model.admission.max_running,
            cache_usage=model.cache_usage,
        )
        for model in models
    ]


async def unhealthy(models: dict[str, ServedModel], timeout: float) -> list[str]:
    """The names of the models whose engine does not answer its health check in time."""

    async def healthy(model: ServedModel) -> bool:
        try:
            return await asyncio.wait_for(model.engine.health(), timeout)
        except Exception:  # a probe that fails or hangs is an unhealthy engine
            return False

    results = await asyncio.gather(*(healthy(m) for m in models.values()))
    return [model_id for model_id, ok in zip(models, results, strict=True) if not ok]
