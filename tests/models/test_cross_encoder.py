"""The sentence_transformers engine as a cross-encoder, on a tiny reranker this test builds,
trains for a few steps and saves itself (no reranker ships with weights), and as an
embedding model on the real MiniLM safetensors folder of the catalog."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch
import transformers
from sentence_transformers import CrossEncoder, SentenceTransformer

from nimble.engines.config import EngineConfig
from nimble.engines.onnx.engine import OnnxEmbeddingEngine
from nimble.engines.sentence_transformers.engine import SentenceTransformersEngine
from nimble.errors import InvalidRequest, ModelLoadError
from nimble.models import resolve_model
from nimble.types import EmbedRequest, RankRequest, Task, TokenizeRequest
from tests.support.tiny_reranker import PAIRS, build_reranker

pytestmark = pytest.mark.models


@pytest.fixture(scope="module")
def reranker(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_reranker(tmp_path_factory.mktemp("tiny-reranker"))


async def test_a_cross_encoder_folder_is_served_as_a_reranker(reranker: Path) -> None:
    spec = resolve_model(str(reranker))
    assert spec.engine == "sentence_transformers" and spec.tasks == {Task.RERANK}
    engine = SentenceTransformersEngine(spec, EngineConfig())
    await engine.start()  # with one real scoring pass
    try:
        for query, good, bad in PAIRS:
            result = await engine.rank(RankRequest("r", query, (bad, good)))
            assert result.scores[1] > result.scores[0], query
        # the same logits as the model called directly, through transformers and through
        # sentence-transformers' CrossEncoder (whose default activation is a sigmoid)
        model = transformers.AutoModelForSequenceClassification.from_pretrained(str(reranker))
        tokenizer = transformers.AutoTokenizer.from_pretrained(str(reranker))
        query, good, bad = PAIRS[0]
        with torch.inference_mode():
            direct = model(
                **tokenizer([query, query], [good, bad], padding=True, return_tensors="pt")
            ).logits[:, 0]
        ours = await engine.rank(RankRequest("r", query, (good, bad)))
        assert np.allclose(ours.scores, direct.numpy(), atol=1e-5)
        cross = CrossEncoder(str(reranker), device="cpu", local_files_only=True)
        probabilities = cross.predict([(query, good), (query, bad)], show_progress_bar=False)
        assert np.allclose(1 / (1 + np.exp(-np.asarray(ours.scores))), probabilities, atol=1e-5)
        # tokens: [CLS] query [SEP] passage [SEP] for each pair
        pairs = tokenizer([query, query], [good, bad])["input_ids"]
        assert ours.prompt_tokens == sum(len(ids) for ids in pairs)
        assert ours.prompt_tokens > 0
        info = engine.info()
        assert info.engine == "sentence_transformers" and info.context_length == 128
        assert info.extra["kind"] == "cross-encoder"
        assert info.engine_version.startswith("sentence-transformers ")
        assert any(f.path.endswith("model.safetensors") and len(f.sha256) == 64 for f in info.files)
        long = "word " * 300
        cut = await engine.rank(RankRequest("r", query, (long, good)))
        assert len(cut.scores) == 2  # cut to the window at the END
        assert cut.prompt_tokens == 128 + len(pairs[0])
        with pytest.raises(InvalidRequest, match=r"more than the 128") as refused:
            await engine.rank(RankRequest("r", query, (good, long), truncate="NONE"))
        assert refused.value.param == "passages"
        # its tokenizer: a document's tokens, and back (cut documents, /tokenize)
        tokens = await engine.tokenize(TokenizeRequest(prompt=good, add_special_tokens=False))
        assert list(tokens.ids) == tokenizer(good, add_special_tokens=False)["input_ids"]
        assert list(tokens.pieces) == tokenizer.convert_ids_to_tokens(list(tokens.ids))
        assert await engine.detokenize(tokens.ids) == tokenizer.decode(list(tokens.ids))
        assert engine.vocab_size() == len(tokenizer)
    finally:
        await engine.stop()
    both = dataclasses.replace(spec, tasks=frozenset({Task.RERANK, Task.EMBEDDING}))
    with pytest.raises(ModelLoadError, match="not both"):
        await SentenceTransformersEngine(both, EngineConfig()).start()


async def test_the_minilm_folder_embeds_like_the_onnx_engine() -> None:
    spec = resolve_model("all-minilm-l6-v2", engine="sentence_transformers")
    assert (spec.weights / "1_Pooling" / "config.json").is_file()  # a folder of links
    engine = SentenceTransformersEngine(spec, EngineConfig())
    onnx = OnnxEmbeddingEngine(resolve_model("all-minilm-l6-v2"), EngineConfig())
    await engine.start()
    await onnx.start()
    try:
        texts = ("A cat sleeps on the sofa.", "Stock markets fell sharply today.")
        ours = await engine.embed(EmbedRequest("e", texts))
        int8 = await onnx.embed(EmbedRequest("e", texts))
        for full, quantized in zip(ours.vectors, int8.vectors, strict=True):
            assert np.isclose(np.linalg.norm(full), 1.0)
            assert float(np.dot(full, quantized)) > 0.98  # fp32 vs the int8 export
        direct = SentenceTransformer(str(spec.weights), device="cpu", local_files_only=True)
        assert np.allclose(ours.vectors, direct.encode(list(texts)), atol=1e-5)
        assert engine.info().context_length == 256  # the folder's max_seq_length
        long = "word " * 300
        ends = await engine.embed(EmbedRequest("e", (long + "cats",), truncate="START"))
        assert ends.prompt_tokens == 256
        with pytest.raises(InvalidRequest, match=r"302 tokens, more than the 256"):
            await engine.embed(EmbedRequest("e", (long,), truncate="NONE"))
    finally:
        await engine.stop()
        await onnx.stop()
