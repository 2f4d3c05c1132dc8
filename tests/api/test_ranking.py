"""/v1/ranking (NIM) and /v1/rerank (Cohere/Jina) on the fake engine: shapes, order,
top_n, documents, the cosine fallback of an embedding model, labels, errors, key scopes."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from nimble.api import create_app
from nimble.config import Settings
from nimble.models import resolve_model
from nimble.runtime import Runtime
from nimble.runtime.assemble import runtime_config
from nimble.types import Task
from tests.conftest import assert_openai_error

QUERY = "how do cats sleep"
DOCS = ["dogs bark at night", "cats sleep all day long", "how cats sleep in winter", "tax law"]


def specs() -> list:  # type: ignore[type-arg]
    """Task sets that `--model fake:...` cannot express: these tests build the runtime
    around them, configured from the settings like any other."""
    reranker = resolve_model("fake:reranker")
    reranker = dataclasses.replace(reranker, tasks=frozenset({Task.RERANK}))
    chat_only = dataclasses.replace(resolve_model("fake:chat"), tasks=frozenset({Task.CHAT}))
    return [reranker, resolve_model("fake:embedder"), chat_only]


@pytest.fixture
async def client() -> AsyncIterator[httpx.AsyncClient]:
    settings = Settings(model=("fake",))
    runtime = Runtime(specs(), runtime_config(settings))
    app = create_app(settings, runtime=runtime, load_on_startup=False)
    await runtime.start()
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as http:
        yield http
    await runtime.stop()


async def test_nim_ranking_sorted_by_logit(client: httpx.AsyncClient) -> None:
    response = await client.post(
        "/v1/ranking",
        json={
            "model": "reranker",
            "query": {"text": QUERY},
            "passages": [{"text": d} for d in DOCS],
        },
    )
    assert response.status_code == 200, response.text
    rankings = response.json()["rankings"]
    assert [r["index"] for r in rankings] == [2, 1, 3, 0]  # ties: the shorter first
    logits = [r["logit"] for r in rankings]
    assert logits == sorted(logits, reverse=True)
    assert logits[0] == pytest.approx(3 - 0.05)  # "how", "cats", "sleep" shared; 5 words


async def test_cohere_rerank_scores_top_n_and_documents(client: httpx.AsyncClient) -> None:
    response = await client.post(
        "/v1/rerank",
        json={
            "model": "reranker",
            "query": QUERY,
            "documents": [DOCS[0], {"text": DOCS[1]}, DOCS[2], DOCS[3]],
            "top_n": 2,
            "return_documents": True,
        },
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["model"] == "reranker" and body["id"] == response.headers["x-request-id"]
    assert [r["index"] for r in body["results"]] == [2, 1]
    assert body["results"][0]["document"] == {"text": DOCS[2]}
    # a cross-encoder's logit, as a probability
    assert body["results"][0]["relevance_score"] == pytest.approx(1 / (1 + math.exp(-2.95)))
    assert body["usage"]["total_tokens"] > 0
    plain = await client.post(
        "/v1/rerank", json={"model": "reranker", "query": QUERY, "documents": DOCS}
    )
    assert len(plain.json()["results"]) == 4 and "document" not in plain.json()["results"][0]


async def test_an_embedding_model_ranks_by_cosine_and_says_so(
    client: httpx.AsyncClient,
) -> None:
    response = await client.post(
        "/v1/rerank", json={"model": "embedder", "query": "cats", "documents": ["cats", "dogs"]}
    )
    assert response.status_code == 200, response.text
    results = response.json()["results"]
    # the fake embedder hashes text: the identical document has cosine 1
    assert results[0] == {"index": 0, "relevance_score": pytest.approx(1.0)}
    models = {m["id"]: m for m in (await client.get("/v1/models")).json()["data"]}
    assert models["reranker"]["ranking"] == "cross-encoder"
    assert models["embedder"]["ranking"] == "cosine"
    assert "ranking" not in models["chat"]
    record = (await client.get("/v1/manifest")).json()
    assert {m["id"]: m["ranking"] for m in record["models"]} == {
        "reranker": "cross-encoder",
        "embedder": "cosine",
        "chat": None,
    }


@pytest.mark.parametrize(
    ("path", "body", "status", "param"),
    [
        (
            "/v1/ranking",
            {"model": "reranker", "query": {"text": "q"}, "passages": []},
            400,
            "passages",
        ),
        (
            "/v1/ranking",
            {"model": "reranker", "query": {"text": ""}, "passages": [{"text": "a"}]},
            400,
            "query.text",
        ),
        (
            "/v1/ranking",
            {"model": "reranker", "query": "q", "passages": [{"text": "a"}]},
            400,
            "query",
        ),
        (
            "/v1/ranking",
            {
                "model": "reranker",
                "query": {"text": "q"},
                "passages": [{"text": "a"}],
                "truncate": "START",
            },
            400,
            "truncate",
        ),
        (
            "/v1/rerank",
            {"model": "reranker", "query": "q", "documents": ["a"], "top_n": 0},
            400,
            "top_n",
        ),
        ("/v1/rerank", {"model": "reranker", "query": "q", "documents": [""]}, 400, "documents"),
        (
            "/v1/rerank",
            {"model": "reranker", "query": "q", "documents": ["a"] * 1001},
            400,
            "documents",
        ),
        ("/v1/rerank", {"model": "nope", "query": "q", "documents": ["a"]}, 404, "model"),
        ("/v1/rerank", {"model": "chat", "query": "q", "documents": ["a"]}, 400, "model"),
    ],
)
async def test_bad_requests(
    client: httpx.AsyncClient,
    path: str,
    body: dict,
    status: int,
    param: str,  # type: ignore[type-arg]
) -> None:
    assert_openai_error(await client.post(path, json=body), status, param)


async def test_api_key_scopes_cover_ranking(tmp_path: Path) -> None:
    from nimble.security.keys import hash_key

    keys = tmp_path / "keys.yaml"
    keys.write_text(
        "keys:\n"
        f"  - id: embed-only\n    sha256: {hash_key('k-embed')}\n    endpoints: [embeddings]\n"
        f"  - id: ranker\n    sha256: {hash_key('k-rank')}\n    endpoints: [ranking, rerank]\n"
    )
    settings = Settings(model=("fake",), api_keys_file=keys)
    runtime = Runtime(specs(), runtime_config(settings))
    app = create_app(settings, runtime=runtime, load_on_startup=False)
    await runtime.start()
    body = {"model": "reranker", "query": "q", "documents": ["a"]}
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://t"
    ) as http:
        denied = await http.post(
            "/v1/rerank", json=body, headers={"Authorization": "Bearer k-embed"}
        )
        assert_openai_error(denied, 403, None)
        allowed = await http.post(
            "/v1/rerank", json=body, headers={"Authorization": "Bearer k-rank"}
        )
        assert allowed.status_code == 200
    await runtime.stop()


async def test_document_limit_and_truncate_none_name_their_param() -> None:
    reranker = dataclasses.replace(specs()[0], context_length=8)
    settings = Settings(model=("fake",), max_rank_documents=2)
    runtime = Runtime([reranker], runtime_config(settings))
    app = create_app(settings, runtime=runtime, load_on_startup=False)
    await runtime.start()
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://t"
    ) as http:
        three = [{"text": "a"}] * 3
        nim = {"model": "reranker", "query": {"text": "q"}, "passages": three}
        response = await http.post("/v1/ranking", json=nim)
        assert_openai_error(response, 400, "passages")
        assert "at most 2" in response.json()["error"]["message"]
        cohere = {"model": "reranker", "query": "q", "documents": ["a", "b", "c"]}
        assert_openai_error(await http.post("/v1/rerank", json=cohere), 400, "documents")
        # query (1 word) + passage (5 words) + 3 special tokens: 9 > 8
        long = {"text": "one two three four five"}
        nim = {"model": "reranker", "query": {"text": "q"}, "passages": [long], "truncate": "NONE"}
        response = await http.post("/v1/ranking", json=nim)
        assert_openai_error(response, 400, "passages")
        assert "9 tokens together, more than the model's 8" in response.json()["error"]["message"]
        nim["truncate"] = "END"
        assert (await http.post("/v1/ranking", json=nim)).status_code == 200
        chat = {"model": "nope", "query": {"text": "q"}, "passages": [long]}
        assert_openai_error(await http.post("/v1/ranking", json=chat), 404, "model")
    await runtime.stop()


async def test_cohere_v2_rerank_same_scores_and_v2_shape(client: httpx.AsyncClient) -> None:
    body = {"model": "reranker", "query": QUERY, "documents": DOCS, "top_n": 3}
    v1 = (await client.post("/v1/rerank", json=body)).json()
    response = await client.post("/v2/rerank", json=body)
    assert response.status_code == 200, response.text
    v2 = response.json()
    assert v2["results"] == v1["results"]  # the same runtime call: the same scores, order
    assert [r["index"] for r in v2["results"]] == [2, 1, 3]
    assert v2["id"] == response.headers["x-request-id"] and v2["model"] == "reranker"
    tokens = v1["usage"]["total_tokens"]
    assert v2["meta"] == {
        "api_version": {"version": "2"},
        "billed_units": {"search_units": 1},
        "tokens": {"input_tokens": tokens, "output_tokens": 0},
    }
    assert v2["usage"] == {"total_tokens": tokens}
    many = {"model": "embedder", "query": "q", "documents": ["d"] * 101}
    assert (await client.post("/v2/rerank", json=many)).json()["meta"]["billed_units"] == {
        "search_units": 2
    }


async def test_max_tokens_per_doc_cuts_documents_before_scoring(
    client: httpx.AsyncClient,
) -> None:
    # the fake vocabulary: known words survive a cut (tokenize, first N ids, detokenize)
    docs = ["alpha bravo charlie", "delta echo alpha"]
    body = {"model": "reranker", "query": "alpha", "documents": docs, "return_documents": True}
    whole = (await client.post("/v2/rerank", json=body)).json()["results"]
    cut = (await client.post("/v2/rerank", json={**body, "max_tokens_per_doc": 2})).json()
    # cut to two tokens, "delta echo" no longer holds the query's word
    assert [r["index"] for r in whole] == [0, 1] and len({r["relevance_score"] for r in whole}) == 1
    assert [r["index"] for r in cut["results"]] == [0, 1]
    assert cut["results"][0]["relevance_score"] > cut["results"][1]["relevance_score"]
    # the answer's documents are the client's, uncut
    assert [r["document"]["text"] for r in cut["results"]] == docs


@pytest.mark.parametrize(
    ("body", "status", "param"),
    [
        ({"max_tokens_per_doc": 0}, 400, "max_tokens_per_doc"),
        ({"priority": 1}, 400, "priority"),
        ({"documents": [{"content": [{"type": "image_url"}]}]}, 400, "documents.0"),
        ({"model": "chat"}, 400, "model"),
        ({"model": "nope"}, 404, "model"),
    ],
)
async def test_v2_refusals(
    client: httpx.AsyncClient,
    body: dict,  # type: ignore[type-arg]
    status: int,
    param: str,
) -> None:
    request = {"model": "reranker", "query": "q", "documents": ["a"], **body}
    assert_openai_error(await client.post("/v2/rerank", json=request), status, param)
