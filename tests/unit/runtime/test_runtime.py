"""Runtime behaviour on the fake engine: admission, 429, abort frees the slot, drain."""

from __future__ import annotations

import asyncio
import dataclasses
import math
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from types import SimpleNamespace

import pytest

from nimble.engines import EngineConfig
from nimble.errors import (
    ContextLengthExceeded,
    InvalidRequest,
    ModelLoadError,
    ModelNotFound,
    Overloaded,
)
from nimble.models import ModelSpec, resolve_model
from nimble.runtime import Runtime, RuntimeConfig
from nimble.runtime.admission import Admission
from nimble.types import (
    EmbedRequest,
    EmbedResult,
    EngineInfo,
    GenerateRequest,
    RankRequest,
    SamplingParams,
    Task,
)
from tests.conftest import assert_openai_error, chat_body, fake_service


def _request(max_tokens: int = 50) -> GenerateRequest:
    return GenerateRequest("r", SamplingParams(max_tokens=max_tokens), prompt="hello")


async def _runtime(max_running: int = 1, max_waiting: int = 1, delay: float = 0.01) -> Runtime:
    runtime = Runtime(
        [resolve_model("fake")],
        RuntimeConfig(
            EngineConfig(fake_token_delay=delay), max_running=max_running, max_waiting=max_waiting
        ),
    )
    await runtime.start()
    return runtime


@asynccontextmanager
async def slot(gate: Admission) -> AsyncIterator[None]:
    """A running slot of `gate` for the body of the block (the runtime's is inflight.py's)."""
    await gate.acquire()
    try:
        yield
    finally:
        await gate.release(0.0)


async def test_admission_refuses_beyond_running_plus_waiting() -> None:
    gate = Admission(max_running=1, max_waiting=1)
    entered = asyncio.Event()
    release = asyncio.Event()

    async def hold() -> None:
        async with slot(gate):
            entered.set()
            await release.wait()

    first = asyncio.create_task(hold())
    await entered.wait()
    second = asyncio.create_task(hold())
    while gate.waiting == 0:
        await asyncio.sleep(0)
    with pytest.raises(Overloaded) as refused:
        async with slot(gate):
            pass
    assert refused.value.retry_after >= 1
    release.set()
    await asyncio.gather(first, second)
    assert gate.running == 0 and gate.waiting == 0


async def test_admission_never_waits_with_max_wait_zero() -> None:
    gate = Admission(max_running=1, max_waiting=8, max_wait=0.0)
    await gate.acquire()
    with pytest.raises(Overloaded, match="max_queue_wait") as refused:
        await gate.acquire()
    assert refused.value.retry_after >= 1 and gate.waiting == 0
    await gate.release(0.1)
    await gate.acquire()  # a free slot is taken at once, even with no wait allowed
    assert gate.running == 1


async def test_admission_refuses_at_once_a_wait_beyond_the_bound() -> None:
    """The expected wait is the queue ahead drained at the measured hold time: a request
    that would wait longer than max_wait is refused without queueing."""
    gate = Admission(max_running=1, max_waiting=64, max_wait=5.0)
    for _ in range(20):  # slots held 3 s each, as measured on release
        await gate.acquire()
        await gate.release(3.0)
    await gate.acquire()
    assert 2.9 < gate.expected_wait() < 3.1  # alone in the queue: one hold
    waiter = asyncio.create_task(gate.acquire())
    while gate.waiting == 0:
        await asyncio.sleep(0)
    assert gate.expected_wait() > 5.0  # behind one waiter: two holds
    with pytest.raises(Overloaded, match=r"would wait about 6\.0s") as refused:
        await gate.acquire()
    assert refused.value.retry_after == 6 and gate.waiting == 1
    await gate.release(3.0)
    await waiter
    await gate.release(3.0)
    assert gate.running == 0 and gate.waiting == 0


async def test_admission_gives_up_a_wait_that_runs_out_and_passes_the_slot_on() -> None:
    gate = Admission(max_running=1, max_waiting=8, max_wait=0.05)
    for _ in range(20):  # a short measured hold: the wait is expected to fit
        await gate.acquire()
        await gate.release(0.001)
    await gate.acquire()
    with pytest.raises(Overloaded, match=r"within 0\.05s"):
        await gate.acquire()  # the slot is held past the bound
    assert gate.waiting == 0 and gate.running == 1
    later = asyncio.create_task(gate.acquire())
    while gate.waiting == 0:
        await asyncio.sleep(0)
    await gate.release(0.001)
    await later  # the freed slot reaches the next waiter
    assert gate.running == 1 and gate.waiting == 0


async def test_closing_stream_aborts_engine_and_frees_slot() -> None:
    runtime = await _runtime()
    model = runtime.models["fake-model"]
    stream = runtime.generate("fake-model", _request())
    await anext(stream)  # type: ignore[arg-type]
    assert model.admission.running == 1
    await stream.aclose()
    assert model.admission.running == 0
    assert model.engine.aborted == 1  # type: ignore[attr-defined]
    assert runtime.inflight == 0


async def test_cancelled_waiter_leaves_queue() -> None:
    runtime = await _runtime()
    model = runtime.models["fake-model"]
    holder = runtime.generate("fake-model", _request())
    await anext(holder)  # type: ignore[arg-type]
    waiter = asyncio.create_task(anext(runtime.generate("fake-model", _request())))  # type: ignore[arg-type]
    while model.admission.waiting == 0:
        await asyncio.sleep(0)
    waiter.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiter
    assert model.admission.waiting == 0
    await holder.aclose()


async def test_429_over_http_with_retry_after() -> None:
    async with fake_service(max_running=1, max_waiting=0, token_delay=0.05) as (runtime, client):
        slow = asyncio.create_task(
            client.post("/v1/chat/completions", json=chat_body(max_tokens=40))
        )
        while runtime.models["fake-model"].admission.running == 0:
            await asyncio.sleep(0.001)
        refused = await client.post("/v1/chat/completions", json=chat_body())
        assert_openai_error(refused, 429, None)
        assert int(refused.headers["Retry-After"]) >= 1
        assert (await slow).status_code == 200


async def test_drain_waits_for_inflight() -> None:
    runtime = await _runtime(delay=0.01)
    stream = runtime.generate("fake-model", _request(max_tokens=5))
    await anext(stream)  # type: ignore[arg-type]
    runtime.begin_drain()
    assert not await runtime.wait_idle(0.01)
    async for _ in stream:
        pass
    assert await runtime.wait_idle(1)


async def test_refusals_before_first_chunk() -> None:
    runtime = await _runtime()
    with pytest.raises(ModelNotFound):
        await anext(runtime.generate("nope", _request()))  # type: ignore[arg-type]
    with pytest.raises(ContextLengthExceeded):
        await anext(runtime.generate("fake-model", _request(max_tokens=5000)))  # type: ignore[arg-type]
    assert runtime.inflight == 0


def test_unknown_engine_and_duplicate_names() -> None:
    spec = resolve_model("fake", engine="warp-drive")
    with pytest.raises(ModelLoadError, match="unknown engine 'warp-drive'"):
        Runtime([spec], RuntimeConfig(EngineConfig()))
    with pytest.raises(ModelLoadError, match="same name"):
        Runtime([resolve_model("fake"), resolve_model("fake")], RuntimeConfig(EngineConfig()))


class _EmbedOnly:
    """An engine with the core and one capability (embeddings), nothing else: no refusal
    stubs for generation, ranking or cache statistics."""

    def __init__(self, spec: ModelSpec, config: EngineConfig):
        self.spec = spec
        self.started = False

    async def start(self) -> None:
        self.started = True

    async def stop(self) -> None:
        self.started = False

    def info(self) -> EngineInfo:
        return EngineInfo("embed-only", "1", self.spec.tasks, 64, False)

    async def health(self) -> bool:
        return self.started

    async def embed(self, request: EmbedRequest) -> EmbedResult:
        vectors = tuple((float(len(str(text))), 1.0) for text in request.inputs)
        return EmbedResult(vectors, len(request.inputs))


def _spec(*tasks: Task) -> ModelSpec:
    return dataclasses.replace(resolve_model("fake"), id="enc", tasks=frozenset(tasks))


async def test_the_runtime_routes_by_what_the_engine_can_do() -> None:
    runtime = Runtime([_spec(Task.EMBEDDING)], RuntimeConfig(EngineConfig()), _EmbedOnly)
    await runtime.start()
    result = await runtime.embed("enc", EmbedRequest("e", ("ab", "abcd")))
    assert result.vectors == ((2.0, 1.0), (4.0, 1.0))
    ranked, method = await runtime.rank("enc", RankRequest("r", "abcd", ("ab", "abcd")))
    assert method == "cosine"
    assert ranked.scores == pytest.approx((9 / math.sqrt(17 * 5), 1.0))  # cosines to (4, 1)
    with pytest.raises(InvalidRequest, match="does not support completion requests") as refused:
        await anext(runtime.generate("enc", _request()))
    assert refused.value.param == "model"
    await runtime.refresh_gauges()  # no cache statistics: not asked, none reported
    assert runtime.gauges()[0].cache_usage is None
    await runtime.stop()


def test_a_task_the_engine_cannot_do_stops_the_start() -> None:
    with pytest.raises(ModelLoadError, match="asks for chat, completion, which the fake engine"):
        Runtime(
            [_spec(Task.EMBEDDING, Task.CHAT, Task.COMPLETION)],
            RuntimeConfig(EngineConfig()),
            _EmbedOnly,
        )


async def test_the_engine_may_answer_with_a_bound_below_what_fits() -> None:
    asked: list[int] = []
    runtime = await _runtime()
    engine = runtime.models["fake-model"].engine
    counted = engine.prompt_tokens  # type: ignore[attr-defined]

    async def spy(request: GenerateRequest, fits: int) -> int:
        asked.append(fits)
        return int(await counted(request, fits))

    engine.prompt_tokens = spy  # type: ignore[attr-defined]
    window = runtime.models["fake-model"].info.context_length
    async for _ in runtime.generate("fake-model", _request(max_tokens=50)):
        pass
    async for _ in runtime.generate(
        "fake-model", GenerateRequest("r", SamplingParams(), prompt="hi")
    ):
        pass
    # the window less the completion; with no max_tokens, anything under the window
    assert asked == [window - 50, window - 1]
    await runtime.stop()


async def test_the_engine_is_asked_for_its_cache_use_at_most_once_a_second(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A scrape asks the engine (llama.cpp's /slots: a task in its decode loop); a client
    that scrapes three times a second (aiperf) gets the last reading in between."""
    runtime = await _runtime()
    model = runtime.models["fake-model"]
    asked: list[float] = []

    async def cache_usage() -> float:
        asked.append(clock[0])
        return len(asked) / 10

    clock = [1000.0]
    monkeypatch.setattr(model.engine, "cache_usage", cache_usage)
    # the gauges' clock only (asyncio keeps its own)
    monkeypatch.setattr("nimble.runtime.gauges.time", SimpleNamespace(monotonic=lambda: clock[0]))
    for now in (1000.0, 1000.3, 1000.6, 1000.99):
        clock[0] = now
        await runtime.refresh_gauges()
    assert asked == [1000.0] and runtime.gauges()[0].cache_usage == 0.1
    clock[0] = 1001.0
    await runtime.refresh_gauges()
    assert asked == [1000.0, 1001.0] and runtime.gauges()[0].cache_usage == 0.2
    await runtime.stop()
