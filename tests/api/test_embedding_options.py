"""NIM's embedding options on the fake engine: input_type prefixes (and asymmetric models
that require it), matryoshka `dimensions`, `truncate`, token-array input."""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator

import httpx
import numpy as np
import pytest

from nimble.api import create_app
from nimble.config import Settings
from nimble.models import resolve_model
from nimble.runtime import Runtime
from nimble.runtime.assemble import runtime_config
from nimble.types import EmbeddingTraits
from tests.conftest import assert_openai_error

TRAITS = EmbeddingTraits(
    query_prefix="query: ",
    passage_prefix="passage: ",
    input_type_required=True,
    dimensions=16,
    matryoshka_dimensions=(8, 4),
)


@pytest.fixture
async def client() -> AsyncIterator[httpx.AsyncClient]:
    asymmetric = dataclasses.replace(resolve_model("fake:e5-like"), embedding=TRAITS)
    symmetric = resolve_model("fake:plain")
    settings = Settings(model=("fake",))  # the traits are no setting: the specs by hand
    runtime = Runtime([asymmetric, symmetric], runtime_config(settings))
    app = create_app(settings, runtime=runtime, load_on_startup=False)
    await runtime.start()
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as http:
        yield http
    await runtime.stop()


async def vectors(client: httpx.AsyncClient, **body: object) -> list[list[float]]:
    response = await client.post("/v1/embeddings", json=body)
    assert response.status_code == 200, response.text
    return [item["embedding"] for item in response.json()["data"]]


async def test_input_type_applies_the_models_prefix(client: httpx.AsyncClient) -> None:
    query = await vectors(client, model="e5-like", input="cats", input_type="query")
    passage = await vectors(client, model="e5-like", input="cats", input_type="passage")
    # the fake engine hashes its input text: equal vectors mean equal texts
    by_hand = await vectors(client, model="plain", input=["query: cats", "passage: cats"])
    assert query[0] == by_hand[0] and passage[0] == by_hand[1]
    # a symmetric model takes input_type and changes nothing
    plain = await vectors(client, model="plain", input="cats", input_type="query")
    assert plain == await vectors(client, model="plain", input="cats")


async def test_an_asymmetric_model_requires_input_type(client: httpx.AsyncClient) -> None:
    response = await client.post("/v1/embeddings", json={"model": "e5-like", "input": "cats"})
    error = assert_openai_error(response, 400, "input_type")
    assert "say `query` or `passage`" in error["message"]
    tokens = await client.post(
        "/v1/embeddings", json={"model": "e5-like", "input": [5, 6], "input_type": "query"}
    )
    assert_openai_error(tokens, 400, "input")


async def test_dimensions_cut_and_renormalise(client: httpx.AsyncClient) -> None:
    full = (await vectors(client, model="e5-like", input="dogs", input_type="passage"))[0]
    assert len(full) == 16
    for size in (8, 4):
        cut = (
            await vectors(
                client, model="e5-like", input="dogs", input_type="passage", dimensions=size
            )
        )[0]
        assert len(cut) == size
        assert np.isclose(np.linalg.norm(cut), 1.0)
        expected = np.asarray(full[:size]) / np.linalg.norm(full[:size])
        assert np.allclose(cut, expected)
    same = await vectors(client, model="e5-like", input="dogs", input_type="passage", dimensions=16)
    assert same[0] == full
    refused = await client.post(
        "/v1/embeddings",
        json={"model": "e5-like", "input": "dogs", "input_type": "passage", "dimensions": 5},
    )
    error = assert_openai_error(refused, 400, "dimensions")
    assert "allowed: 8, 4" in error["message"]
    plain = await client.post(
        "/v1/embeddings", json={"model": "plain", "input": "dogs", "dimensions": 8}
    )
    assert_openai_error(plain, 400, "dimensions")


async def test_token_arrays_and_truncate(client: httpx.AsyncClient) -> None:
    one = await vectors(client, model="plain", input=[101, 2023, 102])
    many = await vectors(client, model="plain", input=[[101, 2023, 102], [7, 8]])
    assert one[0] == many[0] and len(many) == 2
    long = " ".join(["word"] * 3000)  # the fake model's window is 2048 tokens
    assert len(await vectors(client, model="plain", input=long)) == 1  # cut at the END
    refused = await client.post(
        "/v1/embeddings", json={"model": "plain", "input": long, "truncate": "NONE"}
    )
    error = assert_openai_error(refused, 400, "input")
    assert "3002 tokens, more than the model's 2048" in error["message"]
