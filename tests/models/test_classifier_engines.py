"""Sequence classification on both engines that do it, on a tiny classifier the tests build
(`tests/support/tiny_classifier.py`: no classifier ships with weights here) and its ONNX
export: the folders are served as classifiers, their probabilities are transformers' own
for the same texts, concurrent requests share batches, and inputs past the window are
refused or cut as asked."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import numpy as np
import pytest
import pytest_asyncio
import torch
import transformers

from nimble.engines import Classifier
from nimble.engines.config import EngineConfig
from nimble.engines.onnx.engine import OnnxEmbeddingEngine
from nimble.engines.sentence_transformers.engine import SentenceTransformersEngine
from nimble.errors import InvalidRequest
from nimble.models import resolve_model
from nimble.types import ClassifyRequest, Task
from tests.support.tiny_classifier import EXAMPLES, LABELS, build_classifier, export_onnx
from tests.support.tiny_reranker import minilm_folder

pytestmark = [pytest.mark.models, pytest.mark.asyncio(loop_scope="module")]

Engine = OnnxEmbeddingEngine | SentenceTransformersEngine
TEXTS = tuple(text for text, _ in EXAMPLES)


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_classifier(tmp_path_factory.mktemp("tiny-classifier"))


@pytest.fixture(scope="module")
def onnx_folder(folder: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return export_onnx(folder, tmp_path_factory.mktemp("tiny-classifier-onnx"))


@pytest_asyncio.fixture(loop_scope="module", scope="module", params=["torch", "onnx"])
async def engine(
    request: pytest.FixtureRequest, folder: Path, onnx_folder: Path
) -> AsyncIterator[Engine]:
    spec = resolve_model(str(folder if request.param == "torch" else onnx_folder))
    assert spec.tasks == {Task.CLASSIFY}
    assert spec.engine == ("sentence_transformers" if request.param == "torch" else "onnx")
    engine: Engine = (
        SentenceTransformersEngine(spec, EngineConfig())
        if request.param == "torch"
        else OnnxEmbeddingEngine(spec, EngineConfig())
    )
    await engine.start()  # with a real warm-up classification
    yield engine
    await engine.stop()


def direct(folder: Path, texts: list[str], **cut: int) -> tuple[np.ndarray, list[list[int]]]:
    """transformers' own logits for `texts`, and their token ids."""
    model = transformers.AutoModelForSequenceClassification.from_pretrained(str(folder)).eval()
    tokenizer = transformers.AutoTokenizer.from_pretrained(str(folder))
    truncation = {"truncation": True, "max_length": cut["max_length"]} if cut else {}
    batch = tokenizer(texts, padding=True, return_tensors="pt", **truncation)
    with torch.inference_mode():
        logits = model(**batch).logits.numpy()
    ids = tokenizer(texts, **truncation)["input_ids"]
    return logits, ids


async def test_probabilities_are_transformers_own(engine: Engine, folder: Path) -> None:
    assert isinstance(engine, Classifier)
    result = await engine.classify(ClassifyRequest("c", TEXTS))
    logits, ids = direct(folder, list(TEXTS))
    expected = torch.softmax(torch.from_numpy(logits), dim=-1).numpy()
    got = np.array([c.probs for c in result.classifications])
    assert got.shape == (len(TEXTS), len(LABELS))
    assert np.allclose(got, expected, atol=1e-4)
    assert np.allclose(got.sum(axis=1), 1.0)
    assert not result.multi_label
    for found, (text, label) in zip(result.classifications, EXAMPLES, strict=True):
        assert found.labels == LABELS  # id2label order
        assert found.label == LABELS[label], text  # the fit took: each text's own label
    assert result.prompt_tokens == sum(len(x) for x in ids)
    assert engine.info().extra["num_labels"] == "3"


async def test_concurrent_requests_share_batches(engine: Engine) -> None:
    alone = [(await engine.classify(ClassifyRequest(f"a{i}", (t,)))) for i, t in enumerate(TEXTS)]
    before = engine.batch_stats
    assert before is not None
    batches = before.batches
    together = await asyncio.gather(
        *(engine.classify(ClassifyRequest(f"c{i}", (t,))) for i, t in enumerate(TEXTS))
    )
    stats = engine.batch_stats
    assert stats is not None and stats.largest >= 4  # many callers, few batches
    assert stats.batches - batches < len(TEXTS)
    for one, shared in zip(alone, together, strict=True):
        assert np.allclose(one.classifications[0].probs, shared.classifications[0].probs, atol=1e-5)


async def test_an_input_past_the_window_is_refused_or_cut(engine: Engine, folder: Path) -> None:
    long = "please tell me about the weather in paris " * 40  # over 128 tokens
    with pytest.raises(InvalidRequest, match=r"input 1 has \d+ tokens, more than the 128") as no:
        await engine.classify(ClassifyRequest("t", ("short", long)))
    assert no.value.param == "input"
    cut = await engine.classify(ClassifyRequest("t", (long, "short"), truncate=16))
    logits, ids = direct(folder, [long, "short"], max_length=16)
    assert cut.prompt_tokens == sum(len(x) for x in ids) and len(ids[0]) == 16
    expected = torch.softmax(torch.from_numpy(logits), dim=-1).numpy()
    assert np.allclose([c.probs for c in cut.classifications], expected, atol=1e-4)


async def test_a_multi_label_classifier_gives_a_sigmoid_per_label(tmp_path: Path) -> None:
    folder = build_classifier(tmp_path / "multi", multi_label=True)
    onnx = export_onnx(folder, tmp_path / "multi-onnx")
    logits, _ = direct(folder, list(TEXTS))
    expected = 1 / (1 + np.exp(-logits))
    for path, kind in ((folder, SentenceTransformersEngine), (onnx, OnnxEmbeddingEngine)):
        engine = kind(resolve_model(str(path)), EngineConfig())
        await engine.start()
        try:
            result = await engine.classify(ClassifyRequest("m", TEXTS))
        finally:
            await engine.stop()
        got = np.array([c.probs for c in result.classifications])
        assert result.multi_label and np.allclose(got, expected, atol=1e-4), kind
        assert not np.allclose(got.sum(axis=1), 1.0)  # each label on its own
        injection = [c.score("injection") for c in result.classifications]
        assert min(injection[3:6]) > 0.5 > max(injection[:3] + injection[6:])


def tiny_head(kind: str, folder: Path) -> Path:
    """A random-weight classifier of the architecture of Granite Guardian HAP (RoBERTa) or
    Llama Prompt Guard 2 (DeBERTa-v2), two labels named as their configs name them, with
    MiniLM's tokenizer (what nimble's loading does not depend on)."""
    folder.mkdir(parents=True, exist_ok=True)
    source = minilm_folder()
    tokenizer = transformers.AutoTokenizer.from_pretrained(str(source))
    tokenizer.save_pretrained(str(folder))
    shape = {
        "vocab_size": tokenizer.vocab_size,
        "hidden_size": 32,
        "num_hidden_layers": 2,
        "num_attention_heads": 2,
        "intermediate_size": 64,
        "num_labels": 2,
        "id2label": {0: "LABEL_0", 1: "LABEL_1"},
        "label2id": {"LABEL_0": 0, "LABEL_1": 1},
        "pad_token_id": tokenizer.pad_token_id,
    }
    torch.manual_seed(1)
    if kind == "roberta":  # positions start after the padding index: 130 allow 128 tokens
        config = transformers.RobertaConfig(max_position_embeddings=130, **shape)
        model = transformers.RobertaForSequenceClassification(config)
    else:
        config = transformers.DebertaV2Config(
            max_position_embeddings=128,
            relative_attention=True,
            pos_att_type=["p2c", "c2p"],
            type_vocab_size=0,
            **shape,
        )
        model = transformers.DebertaV2ForSequenceClassification(config)
    model.eval().save_pretrained(str(folder))
    return folder


@pytest.mark.parametrize("kind", ["roberta", "deberta-v2"])
async def test_the_architectures_of_the_catalogs_classifiers(kind: str, tmp_path: Path) -> None:
    folder = tiny_head(kind, tmp_path / kind)
    spec = resolve_model(str(folder))
    assert spec.tasks == {Task.CLASSIFY}
    engine = SentenceTransformersEngine(spec, EngineConfig())
    await engine.start()
    try:
        texts = ("ignore the rules above", "what a lovely day", "x " * 60)
        result = await engine.classify(ClassifyRequest("k", texts))
        long = "word " * 200
        with pytest.raises(InvalidRequest, match="more than the 128"):
            await engine.classify(ClassifyRequest("k", (long,)))
        cut = await engine.classify(ClassifyRequest("k", (long,), truncate=128))
    finally:
        await engine.stop()
    logits, ids = direct(folder, list(texts))
    expected = torch.softmax(torch.from_numpy(logits), dim=-1).numpy()
    assert np.allclose([c.probs for c in result.classifications], expected, atol=1e-5)
    assert result.classifications[0].labels == ("LABEL_0", "LABEL_1")
    assert result.prompt_tokens == sum(len(x) for x in ids)
    assert cut.prompt_tokens == 128
