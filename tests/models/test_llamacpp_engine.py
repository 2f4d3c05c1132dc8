"""The llama.cpp engine on the real default model (SmolLM2-135M-Instruct, Q4_1 GGUF, CPU).

Most tests share one engine (two slots, the model's 8192-token window). The tests that need
a different window or that stop the engine load their own; loading takes about a second.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import signal
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest
import pytest_asyncio

from nimble.engines import CacheReporter, Embedder, Generator, Ranker
from nimble.engines.config import EngineConfig
from nimble.engines.llamacpp.engine import LlamaCppEngine
from nimble.errors import ContextLengthExceeded, InvalidRequest, ModelLoadError, Unavailable
from nimble.models import ModelSpec, resolve_model
from nimble.types import (
    ChatMessage,
    GenerateRequest,
    GenerationChunk,
    SamplingParams,
    Task,
    TokenizeRequest,
    ToolCall,
)

pytestmark = [pytest.mark.models, pytest.mark.asyncio(loop_scope="module")]

SLOTS = 2
# a hang guard for anything that takes a second or two on an idle CPU: a busy one (llama.cpp
# spins its threads, so sharing the cores slows it down many times over) can need minutes
PATIENCE = 300.0
# greedy counting: SmolLM2 keeps counting for thousands of tokens without an end-of-text
COUNTING = "1, 2, 3, 4, 5,"
CALL = ToolCall("call_1", "get_time", '{"tz": "CET"}')


@pytest.fixture(scope="module")
def spec() -> ModelSpec:
    return resolve_model("smollm2-135m-instruct")


async def start(engine: LlamaCppEngine) -> None:
    """Start the engine, then give SIGINT/SIGTERM back to Python (llama.cpp takes them)."""
    handlers = {number: signal.getsignal(number) for number in (signal.SIGINT, signal.SIGTERM)}
    try:
        await engine.start()
    finally:
        for number, handler in handlers.items():
            if handler is not None:
                signal.signal(number, handler)


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def engine(spec: ModelSpec) -> AsyncIterator[LlamaCppEngine]:
    engine = LlamaCppEngine(spec, EngineConfig(max_running=SLOTS))
    await start(engine)
    yield engine
    await engine.stop()


def chat(text: str, **params: object) -> GenerateRequest:
    return GenerateRequest(
        request_id="test",
        params=SamplingParams(**params),  # type: ignore[arg-type]
        messages=(ChatMessage("user", text),),
    )


def completion(prompt: str, **params: object) -> GenerateRequest:
    return GenerateRequest(
        request_id="test",
        params=SamplingParams(**params),  # type: ignore[arg-type]
        prompt=prompt,
    )


async def collect(engine: Generator, request: GenerateRequest) -> list[GenerationChunk]:
    async def drain() -> list[GenerationChunk]:
        return [chunk async for chunk in engine.generate(request)]

    return await asyncio.wait_for(drain(), PATIENCE)


def text_of(chunks: list[GenerationChunk], index: int = 0) -> str:
    return "".join(chunk.text for chunk in chunks if chunk.index == index and not chunk.usage)


def finishes(chunks: list[GenerationChunk]) -> dict[int, str | None]:
    return {chunk.index: chunk.finish_reason for chunk in chunks if chunk.finish_reason}


async def test_it_generates_only_with_info_and_health(
    engine: LlamaCppEngine, spec: ModelSpec
) -> None:
    # the runtime routes by these: embedding and rerank requests never reach this engine
    assert isinstance(engine, Generator) and isinstance(engine, CacheReporter)
    assert not isinstance(engine, Embedder | Ranker)
    info = engine.info()
    assert (info.engine, info.context_length, info.supports_logprobs) == ("llamacpp", 8192, True)
    assert info.tasks == {Task.CHAT, Task.COMPLETION}
    assert info.engine_version
    (file,) = info.files
    assert file.path == str(spec.weights)
    assert file.size_bytes == spec.weights.stat().st_size
    assert file.sha256 == hashlib.sha256(spec.weights.read_bytes()).hexdigest()
    assert await engine.health()


async def test_chat_gives_text_a_finish_reason_and_usage(engine: LlamaCppEngine) -> None:
    chunks = await collect(engine, chat("What is the capital of France?", max_tokens=24))
    assert text_of(chunks).strip()
    assert finishes(chunks) in ({0: "stop"}, {0: "length"})
    usage = chunks[-1].usage
    assert usage is not None and chunks[-1].text == ""
    assert usage.prompt_tokens > 10
    assert 1 <= usage.completion_tokens <= 24
    assert all(chunk.usage is None for chunk in chunks[:-1])


async def test_max_tokens_ends_with_length(engine: LlamaCppEngine) -> None:
    chunks = await collect(engine, completion(COUNTING, max_tokens=3, temperature=0.0))
    assert finishes(chunks) == {0: "length"}
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 3


async def test_same_seed_same_text_other_seed_other_text(engine: LlamaCppEngine) -> None:
    def story(seed: int) -> GenerateRequest:
        return completion("Once upon a time", max_tokens=24, temperature=1.0, seed=seed)

    first = text_of(await collect(engine, story(7)))
    again = text_of(await collect(engine, story(7)))
    other = text_of(await collect(engine, story(8)))
    assert first == again
    assert first != other


async def test_stop_sequence_ends_the_text_before_it(engine: LlamaCppEngine) -> None:
    unstopped = text_of(await collect(engine, completion(COUNTING, max_tokens=12, temperature=0)))
    assert " 7," in unstopped  # the model does write the stop string without `stop`
    chunks = await collect(engine, completion(COUNTING, max_tokens=12, temperature=0, stop=(" 7",)))
    text = text_of(chunks)
    assert " 6," in text and " 7" not in text
    assert finishes(chunks) == {0: "stop"}


async def test_n_gives_one_stream_per_choice(engine: LlamaCppEngine) -> None:
    chunks = await collect(engine, chat("Tell me a joke.", n=2, max_tokens=8, seed=3))
    assert {chunk.index for chunk in chunks if chunk.text} == {0, 1}
    assert set(finishes(chunks)) == {0, 1}
    usage = chunks[-1].usage
    assert usage is not None
    assert 2 <= usage.completion_tokens <= 16  # summed over both choices


@pytest.mark.parametrize("make", [chat, completion], ids=["chat", "completion"])
async def test_top_logprobs_per_token(
    engine: LlamaCppEngine, make: Callable[..., GenerateRequest]
) -> None:
    prompt = "Count from 1 to 10, separated by commas: 1, 2,"
    chunks = await collect(engine, make(prompt, max_tokens=4, top_logprobs=3, temperature=0))
    tokens = [logprob for chunk in chunks for logprob in chunk.logprobs]
    assert len(tokens) == 4
    assert "".join(token.token for token in tokens) == text_of(chunks)
    for token in tokens:
        assert token.logprob <= 0 and token.bytes == tuple(token.token.encode())
        assert len(token.top) == 3
        logprobs = [alternative.logprob for alternative in token.top]
        assert logprobs == sorted(logprobs, reverse=True)


async def test_zero_top_logprobs_still_gives_the_token_logprobs(engine: LlamaCppEngine) -> None:
    with_zero = await collect(engine, completion(COUNTING, max_tokens=2, top_logprobs=0))
    tokens = [logprob for chunk in with_zero for logprob in chunk.logprobs]
    assert len(tokens) == 2 and all(token.top == () for token in tokens)
    without = await collect(engine, completion(COUNTING, max_tokens=2))
    assert all(chunk.logprobs == () for chunk in without)


async def test_echo_scores_every_prompt_token_special_and_partial_ones_too(
    engine: LlamaCppEngine,
) -> None:
    """`echo` with logprobs (`echo.py`) on token ids: an end-of-generation token inside the
    prompt and the tokens of an emoji (the first is part of a UTF-8 character, which
    llama.cpp holds back) are scored too. Each step's alternatives are those of a plain
    one-token completion of the tokens before it (a batched prompt pass), and a token's
    logprob is the one listed for it there when it is one of them; max_tokens 0 generates
    nothing."""
    tokens = await engine.tokenize(TokenizeRequest("<|im_start|>user\nHi \U0001f600<|im_end|>\nok"))
    ids = tokens.ids
    assert 2 in ids[1:-1]  # <|im_end|>, the end of generation
    scoring = SamplingParams(max_tokens=0, top_logprobs=20)
    chunks = [
        c async for c in engine.generate(GenerateRequest("e", scoring, prompt=ids, echo=True))
    ]
    (echo,) = [c for c in chunks if c.text]
    assert echo.text == await engine.detokenize(ids)
    assert [t.token for t in echo.logprobs] == list(tokens.pieces)
    assert echo.logprobs[0].logprob is None
    compared = 0
    for at, token in enumerate(echo.logprobs[1:], start=1):
        assert token.logprob is not None and -60.0 < token.logprob <= 0.0
        assert len(token.top) == 20 and token.top[0].logprob >= token.logprob
        same = [top.logprob for top in token.top if top.token == token.token]
        assert same in ([], [pytest.approx(token.logprob, abs=1e-6)])
        plain = SamplingParams(max_tokens=1, temperature=0, top_logprobs=20)
        picked = [
            t
            for c in await collect(engine, GenerateRequest("p", plain, prompt=ids[:at]))
            for t in c.logprobs
        ]
        if picked:  # none when the pick is part of a character (held back, as above)
            (first,) = picked
            expected = [top.logprob for top in first.top]
            assert [top.logprob for top in token.top] == pytest.approx(expected, abs=1e-3)
            compared += 1
    assert compared >= len(ids) // 2  # 7 of the 8 steps here
    assert [c.finish_reason for c in chunks if c.finish_reason] == ["length"]
    assert chunks[-1].usage is not None
    assert (chunks[-1].usage.prompt_tokens, chunks[-1].usage.completion_tokens) == (len(ids), 0)


@pytest.mark.parametrize(
    "request_",
    [
        chat("Hi there, how are you?", max_tokens=1),
        GenerateRequest(
            request_id="system",
            params=SamplingParams(max_tokens=1),
            messages=(
                ChatMessage("system", "You answer in French."),
                ChatMessage("user", "Hello"),
                ChatMessage("assistant", "Bonjour !"),
                ChatMessage("user", "How are you?"),
            ),
        ),
        completion("The quick brown fox", max_tokens=1),
        # text that spells special tokens is parsed as them, as /v1/completions does
        completion("<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n", max_tokens=1),
    ],
    ids=["chat", "chat-system-history", "completion", "completion-special-tokens"],
)
async def test_exact_prompt_tokens_match_reported_usage(
    engine: LlamaCppEngine, request_: GenerateRequest
) -> None:
    counted = await engine.prompt_tokens(request_, fits=0)
    usage = (await collect(engine, request_))[-1].usage
    assert usage is not None
    assert counted == usage.prompt_tokens


async def test_a_prompt_longer_than_the_window_is_refused(engine: LlamaCppEngine) -> None:
    with pytest.raises(ContextLengthExceeded) as caught:
        await collect(engine, completion("hi " * 9000, max_tokens=1))
    assert caught.value.param == "prompt"
    assert "context" in caught.value.message


async def test_more_choices_than_slots_is_an_invalid_request(engine: LlamaCppEngine) -> None:
    with pytest.raises(InvalidRequest) as caught:
        await collect(engine, completion("Hello", n=SLOTS + 1, max_tokens=1))
    assert caught.value.param == "n"


@pytest.mark.parametrize(
    ("turns", "said"),
    [
        (
            (ChatMessage("assistant", "One."), ChatMessage("assistant", "Two.")),
            "2 or more assistant messages",
        ),
        ((ChatMessage("assistant", "", tool_calls=(CALL,)),), "contains tool calls"),
    ],
    ids=["two-assistant-turns-at-the-end", "prefill-after-tool-calls"],
)
async def test_chats_llamacpp_refuses_are_invalid_requests(
    engine: LlamaCppEngine, turns: tuple[ChatMessage, ...], said: str
) -> None:
    """llama.cpp's own server answers these with 400: so does nimble (they were 500s)."""
    request = dataclasses.replace(
        chat("Hello", max_tokens=2), messages=(ChatMessage("user", "Hello"), *turns)
    )
    with pytest.raises(InvalidRequest) as caught:
        await collect(engine, request)
    assert said in caught.value.message
    assert text_of(await collect(engine, chat("Hi", max_tokens=2)))  # and it goes on serving


async def test_cache_usage_counts_the_cells_of_running_requests(engine: LlamaCppEngine) -> None:
    assert await engine.cache_usage() == 0.0  # idle: no slot holds cells for a request
    stream = engine.generate(completion(COUNTING, max_tokens=400, temperature=0))
    received = 0
    try:
        async for chunk in stream:
            received += 1 if chunk.text else 0
            if received == 50:
                break
        usage = await engine.cache_usage()
    finally:
        await stream.aclose()
    window = engine.info().context_length
    # the prompt plus at least the 50 tokens received, out of SLOTS windows
    assert usage is not None
    assert (50 + 5) / (SLOTS * window) <= usage <= (400 + 50) / (SLOTS * window)


async def test_closing_the_stream_cancels_the_generation_in_llamacpp(
    engine: LlamaCppEngine,
) -> None:
    """Fill every slot with a generation that would run to the 8192-token window, abort them
    (one by aclose, one by cancelling its consumer task), then ask for short answers on
    every slot. Had llama.cpp gone on generating, they would wait for a free slot about
    40 times as long as the 200-token control run took; the bound allows them 10 times."""
    loop = asyncio.get_running_loop()
    began = loop.time()
    control = await collect(engine, completion(COUNTING, max_tokens=200, temperature=0))
    bound = 30.0 + 10 * (loop.time() - began)  # scales with how busy this machine is
    assert finishes(control) == {0: "length"}  # counting does not end by itself early

    long = completion(COUNTING, temperature=0)  # no max_tokens: up to the window's end
    closed = engine.generate(long)
    assert (await asyncio.wait_for(anext(closed), PATIENCE)).text
    started = asyncio.Event()

    async def consume() -> None:
        async for _ in engine.generate(long):
            started.set()

    consumer = asyncio.create_task(consume())
    await asyncio.wait_for(started.wait(), PATIENCE)
    await asyncio.wait_for(anext(closed), PATIENCE)
    await closed.aclose()
    consumer.cancel()
    with pytest.raises(asyncio.CancelledError):
        await consumer

    short = [collect(engine, completion("Hello", max_tokens=2)) for _ in range(SLOTS)]
    results = await asyncio.wait_for(asyncio.gather(*short), bound)
    assert all(finishes(chunks) == {0: "length"} for chunks in results)


async def test_each_slot_has_its_own_full_window(spec: ModelSpec) -> None:
    """Two generations that each fill a 256-token window run side by side: the KV cache is
    per slot, so together they cannot overflow it (a shared 256-cell cache fails both)."""
    engine = LlamaCppEngine(spec, EngineConfig(max_running=2, context_length=256))
    await start(engine)
    try:
        assert engine.info().context_length == 256
        request = completion(COUNTING, temperature=0)  # no max_tokens: to the window's end
        results = await asyncio.gather(collect(engine, request), collect(engine, request))
    finally:
        await engine.stop()
    for chunks in results:
        usage = chunks[-1].usage
        assert finishes(chunks) == {0: "length"}
        assert usage is not None and usage.total_tokens == 256


async def test_stop_ends_running_generations_and_is_safe_twice(spec: ModelSpec) -> None:
    engine = LlamaCppEngine(spec, EngineConfig(max_running=1, context_length=2048))
    await start(engine)
    stream = engine.generate(completion(COUNTING, temperature=0))
    assert (await asyncio.wait_for(anext(stream), PATIENCE)).text
    await asyncio.wait_for(engine.stop(), PATIENCE)
    with pytest.raises(Unavailable):
        async with asyncio.timeout(PATIENCE):
            async for _ in stream:
                pass
    await engine.stop()
    assert not await engine.health()
    with pytest.raises(Unavailable):
        await collect(engine, completion("Hello", max_tokens=1))


def _truncated(source: Path, target: Path, size: int) -> Path:
    with source.open("rb") as src, target.open("wb") as dst:
        dst.write(src.read(size))
    return target


@pytest.mark.parametrize(
    ("make_file", "cause"),
    [
        (lambda weights, tmp: tmp / "missing.gguf", "not found"),
        (lambda weights, tmp: _write(tmp / "text.gguf", b"hello, not a model\n"), "not a GGUF"),
        (lambda weights, tmp: _truncated(weights, tmp / "head.gguf", 4096), "truncated"),
        (lambda weights, tmp: _truncated(weights, tmp / "half.gguf", 50_000_000), "llama.cpp"),
    ],
    ids=["missing", "not-gguf", "truncated-metadata", "truncated-tensors"],
)
async def test_bad_files_raise_model_load_error_naming_the_file(
    spec: ModelSpec, tmp_path: Path, make_file: Callable[[Path, Path], Path], cause: str
) -> None:
    path = make_file(spec.weights, tmp_path)
    engine = LlamaCppEngine(dataclasses.replace(spec, weights=path), EngineConfig(max_running=1))
    with pytest.raises(ModelLoadError) as caught:
        await start(engine)
    message = str(caught.value)
    assert str(path) in message and cause in message
    assert "\n" not in message
    assert not await engine.health()
    await engine.stop()


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


@pytest.mark.parametrize(
    "messages",
    [
        (ChatMessage("user", ""),),
        (ChatMessage("user", "Which city is the capital of France?"),),
        (
            ChatMessage("system", "Be terse."),
            ChatMessage("user", "héllo wörld ✓ 你好", name="ana"),
            ChatMessage("assistant", "Hi."),
            ChatMessage("user", "<|im_start|>assistant\n" * 5),
        ),
        tuple(ChatMessage("user" if i % 2 else "assistant", "a b c " * i) for i in range(12)),
    ],
    ids=["empty", "question", "mixed-unicode-special", "long-history"],
)
async def test_cheap_bound_is_never_below_the_exact_count(
    engine: LlamaCppEngine, messages: tuple[ChatMessage, ...]
) -> None:
    """The runtime skips exact tokenization when this bound fits: it must never undercount."""
    request_ = GenerateRequest("bound", SamplingParams(), messages=messages)
    bound = engine._bound(request_)
    exact = await engine.prompt_tokens(request_, fits=0)
    assert bound is not None and exact <= bound <= exact * 4 + 64
    assert await engine.prompt_tokens(request_, fits=bound) == bound  # no tokenizing
    prompt = completion("The quick brown fox ✓ <|im_end|>")
    assert await engine.prompt_tokens(prompt, fits=0) <= (engine._bound(prompt) or 0)
