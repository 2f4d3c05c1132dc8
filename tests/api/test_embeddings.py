"""Embeddings on the fake engine: shapes, base64, usage."""

from __future__ import annotations

import base64

import numpy as np
import openai

from tests.conftest import FAKE_MODEL


async def test_embeddings_float_and_base64_agree(oai: openai.AsyncOpenAI) -> None:
    floats = await oai.embeddings.create(
        model=FAKE_MODEL, input=["one", "two words"], encoding_format="float"
    )
    assert [d.index for d in floats.data] == [0, 1]
    assert floats.usage.prompt_tokens == 3 + 4
    raw = await oai.with_raw_response.embeddings.create(
        model=FAKE_MODEL, input=["one", "two words"], encoding_format="base64"
    )
    encoded = raw.http_response.json()["data"][1]["embedding"]
    decoded = np.frombuffer(base64.b64decode(encoded), dtype="<f4")
    assert np.allclose(decoded, floats.data[1].embedding, atol=1e-6)


async def test_embeddings_single_string(oai: openai.AsyncOpenAI) -> None:
    r = await oai.embeddings.create(model=FAKE_MODEL, input="hello")
    assert len(r.data) == 1
    assert abs(np.linalg.norm(r.data[0].embedding) - 1) < 1e-5
