"""The transformers engine on the real default model (SmolLM2-135M-Instruct GGUF, CPU).

One engine is shared by most tests (four rows; the GGUF is converted once into a cache under
the session's temporary folder). Greedy outputs are checked against transformers' own
`generate` on the same converted weights, alone and inside a batch.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import json
import logging
import shutil
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from nimble.engines import CacheReporter, Embedder, Generator, Ranker
from nimble.engines.config import EngineConfig
from nimble.engines.transformers.choice import Sampler
from nimble.engines.transformers.engine import TransformersEngine
from nimble.errors import InvalidRequest, ModelLoadError, Unavailable, UnsupportedParameter
from nimble.models.resolve import resolve_model
from nimble.models.spec import ModelSpec
from nimble.types import (
    ChatMessage,
    GenerateRequest,
    GenerationChunk,
    SamplingParams,
    Task,
    TokenizeRequest,
)

pytestmark = [pytest.mark.models, pytest.mark.asyncio(loop_scope="module")]

ROWS = 4
PATIENCE = 300.0  # hang guard only: a busy CPU can make a second's work take minutes
COUNTING = "1, 2, 3, 4, 5,"  # greedy SmolLM2 keeps counting without an end of text
LOGGER = "nimble.engines.transformers"


def shared_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One conversion per test session (the e2e test of this engine uses it too)."""
    return tmp_path_factory.getbasetemp() / "transformers-engine-cache"


@pytest.fixture(scope="module")
def spec() -> ModelSpec:
    return resolve_model("smollm2-135m-instruct", engine="transformers")


@pytest.fixture(scope="module")
def cache_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return shared_cache(tmp_path_factory)


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def engine(spec: ModelSpec, cache_path: Path) -> AsyncIterator[TransformersEngine]:
    engine = TransformersEngine(spec, EngineConfig(max_running=ROWS, cache_path=cache_path))
    await engine.start()
    yield engine
    await engine.stop()


@pytest.fixture(scope="module")
def converted(engine: TransformersEngine, cache_path: Path) -> Path:
    (folder,) = [p for p in (cache_path / "transformers").iterdir() if p.is_dir()]
    return folder


@pytest.fixture(scope="module")
def reference(converted: Path) -> tuple[Any, Any]:
    """transformers' own model and tokenizer on the converted folder."""
    model: Any = AutoModelForCausalLM.from_pretrained(converted, dtype=torch.float32)
    return model.eval(), AutoTokenizer.from_pretrained(converted)


def chat(text: str, **params: Any) -> GenerateRequest:
    return GenerateRequest("test", SamplingParams(**params), messages=(ChatMessage("user", text),))


def completion(prompt: str, **params: Any) -> GenerateRequest:
    return GenerateRequest("test", SamplingParams(**params), prompt=prompt)


async def collect(engine: Generator, request: GenerateRequest) -> list[GenerationChunk]:
    async def drain() -> list[GenerationChunk]:
        return [chunk async for chunk in engine.generate(request)]

    return await asyncio.wait_for(drain(), PATIENCE)


def text_of(chunks: list[GenerationChunk], index: int = 0) -> str:
    return "".join(c.text for c in chunks if c.index == index and c.usage is None)


def finishes(chunks: list[GenerationChunk]) -> dict[int, str]:
    return {c.index: c.finish_reason for c in chunks if c.finish_reason is not None}


def greedy_reference(reference: tuple[Any, Any], text: str, max_tokens: int) -> str:
    """What transformers' own `generate` answers, greedy, with the request alone."""
    model, tokenizer = reference
    rendered = tokenizer.apply_chat_template(
        [{"role": "user", "content": text}], tokenize=False, add_generation_prompt=True
    )
    ids = tokenizer(rendered, add_special_tokens=False, return_tensors="pt")
    with torch.inference_mode():
        out = model.generate(
            **ids, do_sample=False, max_new_tokens=max_tokens, pad_token_id=tokenizer.eos_token_id
        )
    return str(tokenizer.decode(out[0, ids["input_ids"].shape[1] :], skip_special_tokens=True))


async def until(condition: Callable[[], bool], what: str) -> None:
    """Poll (never sleep a fixed time) until `condition()` is true."""
    deadline = time.monotonic() + PATIENCE
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.01)


async def test_info_health_and_files(
    engine: TransformersEngine, spec: ModelSpec, converted: Path
) -> None:
    # the runtime routes by these: embedding and rerank requests never reach this engine, and
    # it has no fixed KV cache to report
    assert isinstance(engine, Generator)
    assert not isinstance(engine, Embedder | Ranker | CacheReporter)
    info = engine.info()
    assert (info.engine, info.context_length) == ("transformers", 8192)
    assert info.supports_logprobs
    assert info.tasks == {Task.CHAT, Task.COMPLETION}
    assert info.engine_version and info.extra["torch"] == torch.__version__
    assert (info.extra["device"], info.extra["dtype"]) == ("cpu", "float32")
    (file,) = info.files
    assert (file.path, file.size_bytes) == (str(spec.weights), spec.weights.stat().st_size)
    assert file.sha256 == hashlib.sha256(spec.weights.read_bytes()).hexdigest()
    assert converted.name == file.sha256[:16]
    assert await engine.health()


async def test_chat_matches_transformers_generate(
    engine: TransformersEngine, reference: tuple[Any, Any]
) -> None:
    question = "What is the capital of France?"
    chunks = await collect(engine, chat(question, max_tokens=24, temperature=0))
    text = text_of(chunks)
    assert "Paris" in text
    assert text == greedy_reference(reference, question, 24)
    assert len([c for c in chunks if c.text]) >= 2  # streamed in pieces
    assert finishes(chunks) == {0: "stop"}
    usage = chunks[-1].usage
    assert usage is not None and chunks[-1].text == ""
    assert usage.prompt_tokens == await engine.prompt_tokens(chat(question), fits=0)
    assert usage.prompt_tokens <= (engine._bound(chat(question)) or 0)
    assert 1 <= usage.completion_tokens <= 24


async def test_seed_reproducible_at_temperature_one(engine: TransformersEngine) -> None:
    async def sample(seed: int) -> str:
        request = chat("Invent a name for a cat.", max_tokens=8, temperature=1.0, seed=seed)
        return text_of(await collect(engine, request))

    first = await sample(1234)
    assert await sample(1234) == first
    for seed in (1, 2, 3):
        if await sample(seed) != first:
            break
    else:
        pytest.fail("three other seeds gave the same text")


async def test_stop_string_cuts_the_text(engine: TransformersEngine) -> None:
    free = await collect(engine, completion(COUNTING, max_tokens=10, temperature=0))
    assert "8" in text_of(free)
    stopped = await collect(engine, completion(COUNTING, max_tokens=10, temperature=0, stop=["8"]))
    assert "8" not in text_of(stopped)
    assert text_of(free).startswith(text_of(stopped))
    assert finishes(stopped) == {0: "stop"}


async def test_max_tokens_gives_length_and_exact_count(engine: TransformersEngine) -> None:
    chunks = await collect(engine, completion(COUNTING, max_tokens=5, temperature=0))
    assert finishes(chunks) == {0: "length"}
    usage = chunks[-1].usage
    assert usage is not None and usage.completion_tokens == 5


async def test_n_choices(engine: TransformersEngine) -> None:
    chunks = await collect(engine, chat("Say a word.", max_tokens=6, n=2, temperature=1, seed=7))
    assert set(finishes(chunks)) == {0, 1}
    assert text_of(chunks, 0) and text_of(chunks, 1)
    usage = chunks[-1].usage
    assert usage is not None and 2 <= usage.completion_tokens <= 12


async def test_logprobs_with_alternatives(engine: TransformersEngine) -> None:
    chunks = await collect(
        engine, completion(COUNTING, max_tokens=4, temperature=0, top_logprobs=3)
    )
    tokens = [entry for chunk in chunks for entry in chunk.logprobs]
    assert len(tokens) == 4
    assert "".join(t.token for t in tokens) == text_of(chunks)
    for token in tokens:
        assert token.logprob <= 0.0 and len(token.top) == 3
        assert token.top[0].token == token.token  # greedy picks the most likely
        alternatives = [t.logprob for t in token.top]
        assert alternatives == sorted(alternatives, reverse=True)
        assert token.bytes == tuple(token.token.encode())


async def test_echo_scores_the_prompt_in_the_prefill(
    engine: TransformersEngine, reference: tuple[Any, Any]
) -> None:
    """`echo` with logprobs on token ids: each prompt token's logprob (the first has none)
    is transformers' own log-softmax of the logits before it; max_tokens 0 generates
    nothing; with a budget the generation follows the echoed prompt."""
    model, tokenizer = reference
    text = "The capital of France is"
    ids = tuple(tokenizer(text + " Paris")["input_ids"])
    scoring = SamplingParams(max_tokens=0, top_logprobs=2, n=2)
    chunks = await collect(engine, GenerateRequest("echo", scoring, prompt=ids, echo=True))
    with torch.inference_mode():
        direct = torch.log_softmax(model(torch.tensor([ids])).logits[0].float(), dim=-1)
    for index in (0, 1):
        (echo,) = [c for c in chunks if c.index == index and c.text]
        assert echo.text == text + " Paris"
        first, *rest = echo.logprobs
        assert (first.token, first.logprob, first.top) == ("The", None, ())
        assert "".join(t.token for t in echo.logprobs) == echo.text
        for at, token in enumerate(rest, start=1):
            assert token.logprob == pytest.approx(direct[at - 1, ids[at]].item(), abs=1e-4)
            best = direct[at - 1].topk(2)
            assert [t.logprob for t in token.top] == pytest.approx(best.values.tolist(), abs=1e-4)
    assert finishes(chunks) == {0: "length", 1: "length"}
    assert chunks[-1].usage is not None
    assert (chunks[-1].usage.prompt_tokens, chunks[-1].usage.completion_tokens) == (len(ids), 0)
    plain = await collect(engine, completion(text, max_tokens=3, temperature=0))
    echoed = GenerateRequest("echo", SamplingParams(max_tokens=3, temperature=0), prompt=text)
    assert text_of(await collect(engine, dataclasses.replace(echoed, echo=True))) == (
        text + text_of(plain)
    )


async def test_concurrent_requests_share_a_batch_and_match_alone(
    engine: TransformersEngine, reference: tuple[Any, Any]
) -> None:
    questions = [
        "Write a long story about a dragon.",  # starts first: the others join its batch
        "Name three colors.",
        "What is 2+2? Explain your answer step by step, please, in detail.",
        "Hi",
    ]
    alone = [greedy_reference(reference, q, 12) for q in questions]
    engine.stats.max_batch = 0
    first = asyncio.ensure_future(collect(engine, chat(questions[0], max_tokens=24, temperature=0)))
    await until(lambda: engine.stats.running == 1, "the first request to run")
    rest = [collect(engine, chat(q, max_tokens=12, temperature=0)) for q in questions[1:]]
    together = await asyncio.gather(first, *rest)
    assert engine.stats.max_batch == ROWS
    assert text_of(together[0]).startswith(alone[0])
    assert [text_of(c) for c in together[1:]] == alone[1:]


async def test_closing_the_stream_frees_its_row(engine: TransformersEngine) -> None:
    stream = engine.generate(completion(COUNTING, max_tokens=4000, temperature=0))
    assert [await anext(stream) for _ in range(3)]
    await stream.aclose()
    await until(lambda: engine.stats.running == 0, "the aborted row to leave the batch")
    engine.stats.max_batch = 0
    results = await asyncio.gather(
        *(collect(engine, completion(f"{i}, {i + 1},", max_tokens=3)) for i in range(ROWS))
    )
    assert all(finishes(chunks) == {0: "length"} for chunks in results)
    assert engine.stats.max_batch == ROWS


def greedy_choice(tokenizer: Any, **params: Any) -> Sampler:
    return Sampler(
        0,
        SamplingParams(temperature=0, **params),
        prompt_length=1,
        budget=100,
        tokenizer=tokenizer,
        eos_ids=frozenset({tokenizer.eos_token_id}),
        generator=torch.Generator(),
    )


def one_hot(tokenizer: Any, token: int) -> torch.Tensor:
    logits = torch.zeros(len(tokenizer))
    logits[token] = 1.0
    return logits


async def test_text_is_never_split_inside_a_character_or_a_stop(
    reference: tuple[Any, Any],
) -> None:
    """Greedy over one-hot logits feeds a chosen token sequence through the text logic."""
    _, tokenizer = reference
    text = "Un café ☕ près du 世界 🙂 and the end"
    tokens = tokenizer(text, add_special_tokens=False)["input_ids"]
    assert len(tokens) < len(text.encode())  # some tokens hold parts of characters
    choice = greedy_choice(tokenizer, stop=("the end",))
    sent: list[GenerationChunk] = []
    for token in tokens:
        sent.extend(choice.step(one_hot(tokenizer, token)))
        if choice.finish:
            break
    assert all("\ufffd" not in chunk.text for chunk in sent)
    assert "".join(chunk.text for chunk in sent) == "Un café ☕ près du 世界 🙂 and "
    assert [c.finish_reason for c in sent if c.finish_reason] == ["stop"]
    assert len(sent) > 4  # streamed as it went, not all at the end


async def test_penalties_count_generated_tokens(reference: tuple[Any, Any]) -> None:
    _, tokenizer = reference
    first, second = tokenizer(" yes no", add_special_tokens=False)["input_ids"]
    logits = torch.zeros(len(tokenizer))
    logits[first], logits[second] = 1.0, 0.6

    def picks(**penalty: float) -> list[int]:
        choice = greedy_choice(tokenizer, **penalty)
        for _ in range(4):
            choice.step(logits)
        return choice.tokens

    assert picks() == [first] * 4
    # scores 1.0 and 0.6, less 0.5 per use (frequency) or once used (presence)
    assert picks(frequency_penalty=0.5) == [first, second, first, second]
    assert picks(presence_penalty=0.5) == [first, second, first, first]


async def test_tokenize_is_what_generation_reads(
    engine: TransformersEngine, reference: tuple[Any, Any]
) -> None:
    request = chat("What is 2+2?", max_tokens=1)
    tokens = await engine.tokenize(TokenizeRequest(chat=request, add_special_tokens=False))
    (usage,) = [c.usage for c in await collect(engine, request) if c.usage is not None]
    assert len(tokens.ids) == usage.prompt_tokens == await engine.prompt_tokens(request, 0)
    _, tokenizer = reference
    rendered = tokenizer.apply_chat_template(
        [{"role": "user", "content": "What is 2+2?"}], tokenize=False, add_generation_prompt=True
    )
    expected = tokenizer(rendered, add_special_tokens=False)["input_ids"]
    assert list(tokens.ids) == expected
    assert list(tokens.pieces) == tokenizer.convert_ids_to_tokens(expected)
    assert engine.vocab_size() == len(tokenizer)
    # a prefilled answer, left open to be continued
    prefilled = dataclasses.replace(
        request, messages=(*(request.messages or ()), ChatMessage("assistant", "It is"))
    )
    open_turn = TokenizeRequest(
        chat=prefilled,
        add_special_tokens=False,
        add_generation_prompt=False,
        continue_final_message=True,
    )
    text = await engine.detokenize((await engine.tokenize(open_turn)).ids)
    assert text.endswith("<|im_start|>user\nWhat is 2+2?<|im_end|>\n<|im_start|>assistant\nIt is")


async def test_refusals(engine: TransformersEngine) -> None:
    with pytest.raises(UnsupportedParameter) as too_many:
        await collect(engine, chat("Hi", n=ROWS + 1))
    assert too_many.value.param == "n"


async def test_second_start_reuses_the_conversion(
    spec: ModelSpec, cache_path: Path, converted: Path, caplog: pytest.LogCaptureFixture
) -> None:
    stamp = (converted / "model.safetensors").stat().st_mtime_ns
    second = TransformersEngine(spec, EngineConfig(max_running=1, cache_path=cache_path))
    with caplog.at_level(logging.INFO, logger=LOGGER):
        await second.start()
    messages = [r.getMessage() for r in caplog.records if r.name == LOGGER]
    assert any(m.startswith("using the converted copy") for m in messages), messages
    assert not any(m.startswith("converting") for m in messages)
    assert (converted / "model.safetensors").stat().st_mtime_ns == stamp
    assert json.loads((converted / "nimble-source.json").read_text())["sha256"].startswith(
        converted.name
    )
    chunks = await collect(second, completion(COUNTING, max_tokens=2, temperature=0))
    assert finishes(chunks) == {0: "length"}
    await second.stop()
    await second.stop()  # idempotent
    assert not await second.health()
    with pytest.raises(Unavailable):
        await collect(second, completion("Hi"))


async def test_folder_without_chat_template_serves_completions_only(
    converted: Path, tmp_path: Path
) -> None:
    folder = tmp_path / "no-template"
    shutil.copytree(converted, folder)
    (folder / "chat_template.jinja").unlink(missing_ok=True)
    config_file = folder / "tokenizer_config.json"
    config = json.loads(config_file.read_text())
    config.pop("chat_template", None)
    config_file.write_text(json.dumps(config))
    spec = ModelSpec(
        id="plain",
        engine="transformers",
        tasks=frozenset({Task.CHAT, Task.COMPLETION}),
        weights=folder,
        source=f"file://{folder}",
    )
    engine = TransformersEngine(spec, EngineConfig(max_running=1))
    await engine.start()
    try:
        (file,) = engine.info().files
        assert file.path == str(folder / "model.safetensors")
        with pytest.raises(InvalidRequest, match="no chat template") as refused:
            await collect(engine, chat("Hi", max_tokens=2))
        assert refused.value.param == "messages"
        assert engine._bound(chat("Hi")) is None
        chunks = await collect(engine, completion(COUNTING, max_tokens=2, temperature=0))
        assert text_of(chunks).strip()
    finally:
        await engine.stop()


async def test_missing_file_is_a_load_error_naming_it(tmp_path: Path) -> None:
    missing = tmp_path / "absent.gguf"
    spec = ModelSpec("absent", "transformers", frozenset({Task.CHAT}), missing, "file://x")
    with pytest.raises(ModelLoadError, match=str(missing)):
        await TransformersEngine(spec, EngineConfig(cache_path=tmp_path)).start()


async def test_corrupt_gguf_is_a_load_error_and_leaves_no_partial_copy(tmp_path: Path) -> None:
    broken = tmp_path / "broken.gguf"
    broken.write_bytes(b"GGUF" + bytes(range(256)) * 4)
    spec = ModelSpec("broken", "transformers", frozenset({Task.CHAT}), broken, "file://x")
    cache = tmp_path / "cache"
    with pytest.raises(ModelLoadError, match=str(broken)):
        await TransformersEngine(spec, EngineConfig(cache_path=cache)).start()
    assert [p.suffix for p in (cache / "transformers").iterdir()] == [".lock"]
