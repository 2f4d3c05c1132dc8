"""`POST /v1/embeddings` request and response shapes."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field, field_validator

from nimble.api.schemas.common import Strict


class EmbeddingRequest(Strict):
    model: str = Field(min_length=1)
    input: str | list[str] = Field(description="A string or a list of up to 2048 strings.")
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: int | None = Field(default=None, ge=1)
    user: str | None = Field(default=None, max_length=256)

    @field_validator("input")
    @classmethod
    def _check_input(cls, value: str | list[str]) -> str | list[str]:
        items = [value] if isinstance(value, str) else value
        if not items:
            raise ValueError("must not be an empty list")
        if len(items) > 2048:
            raise ValueError("at most 2048 inputs per request")
        if any(not item for item in items):
            raise ValueError("inputs must be non-empty strings")
        return value

    def inputs(self) -> tuple[str, ...]:
        return (self.input,) if isinstance(self.input, str) else tuple(self.input)


class EmbeddingItem(BaseModel):
    object: Literal["embedding"] = "embedding"
    index: int
    embedding: list[float] | str


class EmbeddingUsage(BaseModel):
    prompt_tokens: int
    total_tokens: int


class EmbeddingResponse(BaseModel):
    object: Literal["list"] = "list"
    data: list[EmbeddingItem]
    model: str
    usage: EmbeddingUsage
