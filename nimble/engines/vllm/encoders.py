"""Requests to the encoder models vLLM serves: a cross-encoder's scores from its score API
(`/v1/score`, for rerank) and an embedding model's vectors (`/v1/embeddings`)."""

from __future__ import annotations

from nimble.engines.openai_wire import Json
from nimble.engines.vllm.client import VllmClient
from nimble.errors import UnsupportedParameter
from nimble.types import EmbedRequest, EmbedResult, RankRequest, RankResult


async def score(client: VllmClient, model: str, request: RankRequest) -> RankResult:
    """A cross-encoder served by vLLM (a `…ForSequenceClassification` model with one
    label): its score API, asked for raw logits. The switch was `activation` (vLLM
    0.10-0.11) and is `use_activation` now (0.26); each version ignores the other's name
    as an unknown field, so both are sent."""
    body: Json = {
        "model": model,
        "text_1": request.query,
        "text_2": list(request.documents),
        "activation": False,
        "use_activation": False,
    }
    if request.truncate == "END":
        body["truncate_prompt_tokens"] = -1  # cut at the model's window
    answer = await client.post("/v1/score", body, "passages")
    rows = sorted(answer["data"], key=lambda row: int(row["index"]))
    return RankResult(
        tuple(float(row["score"]) for row in rows), int(answer["usage"]["prompt_tokens"])
    )


async def embeddings(client: VllmClient, model: str, request: EmbedRequest) -> EmbedResult:
    body: Json = {"model": model, "input": [_input(item) for item in request.inputs]}
    if request.truncate == "START":
        raise UnsupportedParameter(
            "the vllm engine truncates at the end only (truncate START)", param="truncate"
        )
    if request.truncate == "END":
        body["truncate_prompt_tokens"] = -1  # cut at the model's window
    answer = await client.post("/v1/embeddings", body, "input")
    rows = sorted(answer["data"], key=lambda row: int(row["index"]))
    vectors = tuple(tuple(float(v) for v in row["embedding"]) for row in rows)
    return EmbedResult(vectors, int(answer["usage"]["prompt_tokens"]))


def _input(item: str | tuple[int, ...]) -> str | list[int]:
    return item if isinstance(item, str) else list(item)
