"""vLLM's sampling extensions and OpenAI's logit_bias in the transformers engine, on the real
default model (SmolLM2-135M-Instruct, its GGUF converted once per session: the cache of
test_transformers_engine.py), and in its per-choice Sampler on chosen logits."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest
import pytest_asyncio
import torch
from transformers import AutoTokenizer

from nimble.engines.config import EngineConfig
from nimble.engines.transformers.choice import Sampler
from nimble.engines.transformers.engine import TransformersEngine
from nimble.errors import InvalidRequest
from nimble.models.resolve import resolve_model
from nimble.types import GenerationChunk, SamplingParams
from tests.models.test_transformers_engine import (
    chat,
    collect,
    completion,
    finishes,
    shared_cache,
    text_of,
)

pytestmark = [pytest.mark.models, pytest.mark.asyncio(loop_scope="module")]

HI = "Hi"  # greedy: "Hello! How can I assist you today?" (10 tokens)
FRANCE = "The capital of France is"


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def engine(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[TransformersEngine]:
    spec = resolve_model("smollm2-135m-instruct", engine="transformers")
    config = EngineConfig(max_running=2, cache_path=shared_cache(tmp_path_factory))
    engine = TransformersEngine(spec, config)
    await engine.start()
    yield engine
    await engine.stop()


@pytest.fixture(scope="module")
def tokenizer(engine: TransformersEngine, tmp_path_factory: pytest.TempPathFactory) -> Any:
    cache = shared_cache(tmp_path_factory) / "transformers"
    (folder,) = [p for p in cache.iterdir() if p.is_dir()]
    return AutoTokenizer.from_pretrained(folder)


def usage_of(chunks: list[GenerationChunk]) -> int:
    usage = chunks[-1].usage
    assert usage is not None
    return usage.completion_tokens


async def test_ignore_eos_and_min_tokens_hold_back_the_end(engine: TransformersEngine) -> None:
    natural = await collect(engine, chat(HI, max_tokens=16, temperature=0))
    assert finishes(natural) == {0: "stop"} and usage_of(natural) < 16
    forced = await collect(engine, chat(HI, max_tokens=16, temperature=0, ignore_eos=True))
    assert finishes(forced) == {0: "length"} and usage_of(forced) == 16
    assert text_of(forced).startswith(text_of(natural))
    least = usage_of(natural) + 2
    longer = await collect(engine, chat(HI, max_tokens=16, temperature=0, min_tokens=least))
    assert usage_of(longer) >= least
    assert text_of(longer).startswith(text_of(natural)) and text_of(longer) != text_of(natural)


async def test_stop_token_ids_cut_the_text_or_keep_the_token(
    engine: TransformersEngine, tokenizer: Any
) -> None:
    natural = text_of(await collect(engine, chat(HI, max_tokens=8, temperature=0)))
    assert "!" in natural
    bang = tokenizer.convert_tokens_to_ids("!")
    cut = await collect(engine, chat(HI, max_tokens=8, temperature=0, stop_token_ids=(bang,)))
    assert text_of(cut) == natural[: natural.index("!")] and finishes(cut) == {0: "stop"}
    kept = chat(
        HI, max_tokens=8, temperature=0, stop_token_ids=(bang,), include_stop_str_in_output=True
    )
    assert text_of(await collect(engine, kept)) == natural[: natural.index("!") + 1]
    stop = chat(HI, max_tokens=8, temperature=0, stop=("assist",), include_stop_str_in_output=True)
    assert text_of(await collect(engine, stop)) == natural[: natural.index("assist") + 6]


async def test_logit_bias_top_k_min_p_and_repetition_penalty(
    engine: TransformersEngine, tokenizer: Any
) -> None:
    greedy = text_of(await collect(engine, completion(FRANCE, max_tokens=3, temperature=0)))
    assert greedy.startswith(" Paris")
    the = tokenizer.convert_tokens_to_ids("The")
    biased = completion(FRANCE, max_tokens=3, temperature=0, logit_bias=((the, 100.0),))
    assert text_of(await collect(engine, biased)) == "TheTheThe"
    for fields in ({"top_k": 1}, {"min_p": 1.0}):  # only the likeliest token is left
        sampled = completion(FRANCE, max_tokens=3, temperature=1.0, seed=5, **fields)
        assert text_of(await collect(engine, sampled)) == greedy, fields
    plain = text_of(await collect(engine, chat(HI, max_tokens=16, temperature=0)))
    penalised = chat(HI, max_tokens=16, temperature=0, repetition_penalty=1.5)
    assert text_of(await collect(engine, penalised)) != plain
    outside = completion(FRANCE, max_tokens=3, logit_bias=((len(tokenizer) + 10**6, 1.0),))
    with pytest.raises(InvalidRequest) as refused:
        await collect(engine, outside)
    assert refused.value.param == "logit_bias"


async def test_continuous_usage_progress_on_every_text_chunk(engine: TransformersEngine) -> None:
    request = completion(
        FRANCE, max_tokens=5, temperature=0, ignore_eos=True, continuous_usage=True
    )
    chunks = await collect(engine, request)
    final = chunks[-1].usage
    assert final is not None
    progress = [c.progress for c in chunks if c.text or c.finish_reason]
    assert all(p is not None and p.prompt_tokens == final.prompt_tokens for p in progress)
    counts = [p.completion_tokens for p in progress if p is not None]
    assert counts == sorted(counts) and counts[-1] == 5


def greedy(tokenizer: Any, prompt_ids: tuple[int, ...] = (), **params: Any) -> Sampler:
    return Sampler(
        0,
        SamplingParams(temperature=0, **params),
        prompt_length=max(1, len(prompt_ids)),
        budget=100,
        tokenizer=tokenizer,
        eos_ids=frozenset({tokenizer.eos_token_id}),
        generator=torch.Generator(),
        prompt_ids=prompt_ids,
    )


async def test_repetition_penalty_reads_the_prompt_too(tokenizer: Any) -> None:
    """Hugging Face's and vLLM's rule: a seen token's positive score is divided."""
    yes, no = tokenizer(" yes no", add_special_tokens=False)["input_ids"]
    logits = torch.zeros(len(tokenizer))
    logits[yes], logits[no] = 2.0, 1.5
    assert greedy(tokenizer).step(logits)[0].text == " yes"
    in_prompt = greedy(tokenizer, (yes,), repetition_penalty=2.0)
    assert in_prompt.step(logits)[0].text == " no"  # 2.0 / 2 < 1.5
    fresh = greedy(tokenizer, (no,), repetition_penalty=2.0)
    assert fresh.step(logits)[0].text == " yes"


async def test_special_tokens_shown_only_when_not_skipped(tokenizer: Any) -> None:
    special = tokenizer.convert_tokens_to_ids("<|im_start|>")
    word = tokenizer(" hello", add_special_tokens=False)["input_ids"][0]

    def text(**params: Any) -> str:
        choice = greedy(tokenizer, **params)
        sent: list[GenerationChunk] = []
        for token in (special, word):
            logits = torch.zeros(len(tokenizer))
            logits[token] = 1.0
            sent.extend(choice.step(logits))
        return "".join(chunk.text for chunk in sent)

    assert text() == " hello"
    assert text(skip_special_tokens=False) == "<|im_start|> hello"


@pytest.mark.parametrize(
    "params",
    [{"temperature": 1e-40}, {"temperature": 5e-324}, {"repetition_penalty": 1e-300}],
    ids=["temperature-1e-40", "temperature-5e-324", "repetition-penalty-1e-300"],
)
async def test_values_that_overflow_float32_pick_the_likeliest_token(
    engine: TransformersEngine, params: dict[str, float]
) -> None:
    """Their scores are infinite in float32 and the softmax NaN: these were 500s (found by
    fuzzing). The limit of a temperature going to 0 is the greedy pick."""
    greedy = text_of(await collect(engine, completion(FRANCE, max_tokens=4, temperature=0)))
    chunks = await collect(engine, completion(FRANCE, max_tokens=4, seed=7, **params))
    assert finishes(chunks) == {0: "length"}
    if "temperature" in params:
        assert text_of(chunks) == greedy
