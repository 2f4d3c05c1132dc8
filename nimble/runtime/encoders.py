"""What the runtime does around an encoder: the model's query and passage prefixes, cutting
vectors to fewer (Matryoshka) dimensions, and ranking by cosine when no cross-encoder is
served.

numpy is imported where a vector is computed, not with the module: a server of language
models alone never loads it (nor the OpenBLAS it maps).
"""

from __future__ import annotations

import dataclasses

from nimble.errors import InvalidRequest, UnsupportedParameter
from nimble.runtime.served import ServedModel
from nimble.types import EmbeddingTraits, EmbedRequest, EmbedResult, RankRequest, RankResult, Task


def ranking_method(model: ServedModel) -> str | None:
    """`cross-encoder`, `cosine` (an embedding model), or None (this model cannot rank)."""
    if Task.RERANK in model.spec.tasks:
        return "cross-encoder"
    if Task.EMBEDDING in model.spec.tasks:
        return "cosine"
    return None


def cut(result: EmbedResult, size: int | None) -> EmbedResult:
    """The vectors cut to `size` dimensions and renormalised (None: as they are)."""
    if size is None:
        return result
    import numpy as np

    parts = [np.asarray(v[:size], dtype=np.float64) for v in result.vectors]
    vectors = tuple(tuple((v / max(float(np.linalg.norm(v)), 1e-12)).tolist()) for v in parts)
    return EmbedResult(vectors, result.prompt_tokens)


async def cosine_rank(model: ServedModel, request: RankRequest) -> RankResult:
    """Rank by the cosine of query and document embeddings (the model's own prefixes for
    queries and passages applied): what nimble does when no cross-encoder is served."""
    traits = model.spec.embedding or EmbeddingTraits()
    texts = (
        traits.query_prefix + request.query,
        *(traits.passage_prefix + doc for doc in request.documents),
    )
    result = await model.embedder.embed(EmbedRequest(request.request_id, texts, request.truncate))
    import numpy as np

    vectors = np.asarray(result.vectors, dtype=np.float64)
    vectors /= np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)
    scores = vectors[1:] @ vectors[0]
    return RankResult(tuple(float(x) for x in scores), result.prompt_tokens)


def with_prefix(model: ServedModel, request: EmbedRequest, input_type: str | None) -> EmbedRequest:
    """The inputs with the model's prefix for `input_type` (400 where the model needs one)."""
    model_id = model.spec.id
    traits = model.spec.embedding or EmbeddingTraits()
    if input_type is None:
        if traits.input_type_required:
            raise InvalidRequest(
                f"input_type: model `{model_id}` embeds queries and passages differently; "
                "say `query` or `passage`",
                param="input_type",
            )
        return request
    prefix = traits.query_prefix if input_type == "query" else traits.passage_prefix
    if not prefix:
        return request
    if any(not isinstance(i, str) for i in request.inputs):
        raise InvalidRequest(
            f"input: model `{model_id}` puts a prefix before each {input_type}; send text, "
            "not token arrays, with input_type",
            param="input",
        )
    inputs = tuple(prefix + str(i) for i in request.inputs)
    return dataclasses.replace(request, inputs=inputs)


def dimensions(model: ServedModel, wanted: int | None) -> int | None:
    """The size to cut vectors to (None: keep them whole); 400 if the model was not trained
    for it."""
    if wanted is None:
        return None
    traits = model.spec.embedding or EmbeddingTraits()
    native = traits.dimensions or int(model.info.extra.get("dimensions", "0") or 0) or None
    if wanted == native:
        return None
    if wanted in traits.matryoshka_dimensions:
        return wanted
    sizes = ", ".join(map(str, traits.matryoshka_dimensions)) or f"only its native {native}"
    raise UnsupportedParameter(
        f"dimensions: model `{model.spec.id}` gives {native}-dimension vectors and was not "
        f"trained to be cut to {wanted} (allowed: {sizes})",
        param="dimensions",
    )
