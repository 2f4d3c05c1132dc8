"""Ranking through a real `nimble serve`: a cross-encoder folder and the default embedding
model side by side; NIM's /v1/ranking and Cohere's /v1/rerank on each."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from tests.support.tiny_reranker import PAIRS, build_reranker

pytestmark = [pytest.mark.e2e, pytest.mark.models]


def test_rerankers_and_the_cosine_fallback_over_http(nimble_process: type, tmp_path: Path) -> None:
    folder = build_reranker(tmp_path / "tiny-reranker")
    server = nimble_process(
        [
            "--model",
            str(folder),
            "--served-model-name",
            "reranker",
            "--model",
            "all-minilm-l6-v2",
            "--served-model-name",
            "embed",
        ],
        env={"NIMBLE_CACHE_PATH": str(tmp_path / "cache")},
    ).wait_ready()
    http = httpx.Client(base_url=server.base_url, timeout=30)
    models = {m["id"]: m.get("ranking") for m in http.get("/v1/models").json()["data"]}
    assert models == {"reranker": "cross-encoder", "embed": "cosine"}
    query, good, bad = PAIRS[1]
    nim = http.post(
        "/v1/ranking",
        json={
            "model": "reranker",
            "query": {"text": query},
            "passages": [{"text": bad}, {"text": good}],
        },
    ).json()
    assert [r["index"] for r in nim["rankings"]] == [1, 0]
    cohere = http.post(
        "/v1/rerank",
        json={
            "model": "embed",
            "query": "Where does the cat sleep?",
            "return_documents": True,
            "documents": ["Interest rates rose again.", "The cat naps on the warm sofa."],
        },
    ).json()
    assert cohere["results"][0]["document"]["text"] == "The cat naps on the warm sofa."
    assert 0 < cohere["results"][0]["relevance_score"] <= 1
    record = http.get("/v1/manifest").json()
    assert {m["id"]: m["profile"]["name"] for m in record["models"]} == {
        "reranker": "sentence_transformers-auto-cpu",
        "embed": "onnx-int8-cpu",
    }
    http.close()
    assert server.terminate() == 0
