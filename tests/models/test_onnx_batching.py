"""The ONNX embedding engine on the real MiniLM weights: requests batched across callers
give the vectors they get alone, truncation END/START/NONE, token-id inputs."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import numpy as np
import pytest
from tokenizers import Tokenizer

from nimble.engines.config import EngineConfig
from nimble.engines.onnx.engine import OnnxEmbeddingEngine
from nimble.errors import InvalidRequest, Unavailable
from nimble.models import resolve_model
from nimble.types import EmbedRequest

pytestmark = pytest.mark.models

SENTENCES = [
    f"Sentence number {i} talks about {topic}."
    for i, topic in enumerate(
        ["cats", "the weather", "tax law", "GPUs", "bread", "rivers", "chess", "music"] * 4
    )
]


async def started(**config: object) -> OnnxEmbeddingEngine:
    engine = OnnxEmbeddingEngine(resolve_model("all-minilm-l6-v2"), EngineConfig(**config))  # type: ignore[arg-type]
    await engine.start()
    return engine


@pytest.fixture
async def engine() -> AsyncIterator[OnnxEmbeddingEngine]:
    engine = await started(embed_batch_size=32, embed_max_wait=0.01)
    yield engine
    await engine.stop()


async def test_concurrent_requests_share_batches_and_match_solo_vectors(
    engine: OnnxEmbeddingEngine,
) -> None:
    solo = []
    for i, text in enumerate(SENTENCES):
        solo.append((await engine.embed(EmbedRequest(f"solo{i}", (text,)))).vectors[0])
    before = engine.batch_stats
    assert before is not None and before.largest == 1
    results = await asyncio.gather(
        *(engine.embed(EmbedRequest(f"c{i}", (t,))) for i, t in enumerate(SENTENCES))
    )
    stats = engine.batch_stats
    assert stats is not None and stats.largest >= 8  # many callers, one batch
    for result, alone in zip(results, solo, strict=True):
        assert np.allclose(result.vectors[0], alone, atol=1e-5)


@pytest.mark.parametrize("threads", [1, 2])
async def test_batches_run_side_by_side_one_per_thread(threads: int) -> None:
    engine = await started(embed_batch_size=32, embed_max_wait=0.01, threads=threads)
    try:
        alone = (await engine.embed(EmbedRequest("alone", tuple(SENTENCES)))).vectors
        results = await asyncio.gather(
            *(engine.embed(EmbedRequest(f"c{i}", (t,))) for i, t in enumerate(SENTENCES))
        )
        stats = engine.batch_stats
        assert stats is not None and stats.most_at_once == threads
        for result, vector in zip(results, alone, strict=True):  # same rows, same order
            assert np.allclose(result.vectors[0], vector, atol=1e-5)
    finally:
        await engine.stop()


async def test_batch_size_one_runs_each_request_alone() -> None:
    engine = await started(embed_batch_size=1, embed_max_wait=0.01)
    try:
        assert engine.batch_stats is not None
        warmup = engine.batch_stats.batches
        assert warmup == 1  # start() embedded once: its warm-up
        await asyncio.gather(
            *(engine.embed(EmbedRequest(f"c{i}", (t,))) for i, t in enumerate(SENTENCES[:8]))
        )
        stats = engine.batch_stats
        assert stats is not None and stats.largest == 1 and stats.batches - warmup == 8
        # a request with more inputs than the batch size still runs, whole
        many = await engine.embed(EmbedRequest("many", tuple(SENTENCES[:5])))
        assert len(many.vectors) == 5
    finally:
        await engine.stop()


async def test_truncation_modes(engine: OnnxEmbeddingEngine) -> None:
    head = "Cats sleep most of the day in warm places. "
    tail = "Tax law changes every year in many countries. "
    long = head + "filler words go here " * 150 + tail  # well over the 256-token window
    end = (await engine.embed(EmbedRequest("e", (long,)))).vectors[0]
    start = (await engine.embed(EmbedRequest("s", (long,), truncate="START"))).vectors[0]
    cats = (await engine.embed(EmbedRequest("c", (head,)))).vectors[0]
    tax = (await engine.embed(EmbedRequest("t", (tail,)))).vectors[0]
    # END keeps the beginning (about cats), START keeps the end (about tax law)
    assert np.dot(end, cats) > np.dot(end, tax)
    assert np.dot(start, tax) > np.dot(start, cats)
    with pytest.raises(InvalidRequest, match=r"input 0 has \d+ tokens, more than the 256") as info:
        await engine.embed(EmbedRequest("n", (long,), truncate="NONE"))
    assert info.value.param == "input"


async def test_token_ids_embed_like_their_text(engine: OnnxEmbeddingEngine) -> None:
    tokenizer_path = engine.spec.tokenizer
    assert tokenizer_path is not None
    tokenizer = Tokenizer.from_file(str(tokenizer_path))
    tokenizer.no_padding()  # the file pads every encoding to a fixed length
    ids = tokenizer.encode("A sentence about rivers.", add_special_tokens=False).ids
    as_text = await engine.embed(EmbedRequest("t", ("A sentence about rivers.",)))
    as_ids = await engine.embed(EmbedRequest("i", (tuple(ids),)))
    assert np.allclose(as_text.vectors[0], as_ids.vectors[0], atol=1e-6)
    assert as_ids.prompt_tokens == as_text.prompt_tokens == len(ids) + 2  # [CLS] ... [SEP]
    with pytest.raises(InvalidRequest, match="below the vocabulary size 30522"):
        await engine.embed(EmbedRequest("bad", ((10**6,),)))


async def test_stopping_answers_queued_requests_unavailable() -> None:
    engine = await started(embed_batch_size=4, embed_max_wait=0.05)
    tasks = [
        asyncio.create_task(engine.embed(EmbedRequest(str(i), (t,))))
        for i, t in enumerate(SENTENCES)
    ]
    await asyncio.sleep(0)  # let them queue
    await engine.stop()
    outcomes = await asyncio.gather(*tasks, return_exceptions=True)
    assert any(isinstance(o, Unavailable) for o in outcomes)
    assert not any(isinstance(o, asyncio.CancelledError) for o in outcomes)
