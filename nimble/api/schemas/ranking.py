"""`POST /v1/ranking` (NVIDIA NIM's shape) and `POST /v1/rerank` (Cohere/Jina's shape)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field, field_validator

from nimble.api.schemas.common import Strict


class Text(Strict):
    text: str = Field(min_length=1)


class RankingRequest(Strict):
    model: str = Field(min_length=1)
    query: Text
    # at most --max-rank-documents (the runtime checks)
    passages: list[Text] = Field(min_length=1)
    truncate: Literal["NONE", "END"] = Field(
        default="END",
        description="A query and passage pair longer than the model's window is cut at the "
        "END, or refused (NONE).",
    )


class Ranking(BaseModel):
    index: int
    logit: float


class RankingResponse(BaseModel):
    rankings: list[Ranking] = Field(description="Best first.")


class RerankRequest(Strict):
    model: str = Field(min_length=1)
    query: str = Field(min_length=1)
    documents: list[str | Text] = Field(min_length=1)
    top_n: int | None = Field(default=None, ge=1, description="Keep the best N (default: all).")
    return_documents: bool = False
    truncate: Literal["NONE", "END"] = "END"

    @field_validator("documents")
    @classmethod
    def _not_empty(cls, documents: list[str | Text]) -> list[str | Text]:
        if any(isinstance(d, str) and not d for d in documents):
            raise ValueError("documents must be non-empty strings or {text} objects")
        return documents

    def texts(self) -> tuple[str, ...]:
        return tuple(d if isinstance(d, str) else d.text for d in self.documents)


class RerankDocument(BaseModel):
    text: str


class RerankResult(BaseModel):
    index: int
    relevance_score: float
    document: RerankDocument | None = None


class RerankUsage(BaseModel):
    total_tokens: int


class RerankResponse(BaseModel):
    id: str
    model: str
    results: list[RerankResult] = Field(description="Best first.")
    usage: RerankUsage


class RerankV2Request(RerankRequest):
    """Cohere's v2 rerank (what `cohere.ClientV2.rerank` and aiperf's cohere_rankings send).
    `return_documents` (Cohere v1, vLLM) and `truncate` are nimble's, as on /v1/rerank."""

    max_tokens_per_doc: int | None = Field(
        default=None,
        ge=1,
        description="Cut each document to its first N tokens (the model's tokenizer) before "
        "scoring. Default: no cut beyond the model's window (`truncate`).",
    )
    priority: int | None = Field(
        default=None,
        description="Cohere's scheduling priority: nimble serves in arrival order, so only 0.",
    )


class ApiVersion(BaseModel):
    version: str


class BilledUnits(BaseModel):
    search_units: int = Field(description="One per query and 100 documents, as Cohere bills.")


class MetaTokens(BaseModel):
    input_tokens: int
    output_tokens: int


class RerankMeta(BaseModel):
    api_version: ApiVersion
    billed_units: BilledUnits
    tokens: MetaTokens


class RerankV2Response(BaseModel):
    id: str
    model: str
    results: list[RerankResult] = Field(description="Best first.")
    meta: RerankMeta
    usage: RerankUsage
