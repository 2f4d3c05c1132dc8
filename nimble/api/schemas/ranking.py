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
