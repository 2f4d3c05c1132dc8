"""`POST /v1/embeddings` request and response shapes."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field, field_validator

from nimble.api.schemas.common import Strict

Inputs = str | list[str] | list[int] | list[list[int]]


class EmbeddingRequest(Strict):
    model: str = Field(min_length=1)
    input: Inputs = Field(
        description="A string, a list of up to 2048 strings, an array of token ids, or a list "
        "of such arrays."
    )
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: int | None = Field(
        default=None,
        ge=1,
        description="Cut the vectors to this size and renormalise (models trained for it).",
    )
    input_type: Literal["query", "passage"] | None = Field(
        default=None,
        description="NIM: what the inputs are, so the model's own prefix or instruction is "
        "applied. Required by asymmetric models.",
    )
    truncate: Literal["NONE", "START", "END"] = Field(
        default="END",
        description="NIM: an input longer than the model's window is cut at the END, at the "
        "START, or refused (NONE).",
    )
    user: str | None = Field(default=None, max_length=256)

    @field_validator("input")
    @classmethod
    def _check_input(cls, value: Inputs) -> Inputs:
        if isinstance(value, str):
            items: list[object] = [value]
        elif value and all(isinstance(v, int) for v in value):
            items = [value]  # one token array
        else:
            items = list(value)
        if not items:
            raise ValueError("must not be an empty list")
        if len(items) > 2048:
            raise ValueError("at most 2048 inputs per request")
        for item in items:
            if not item:
                raise ValueError("inputs must be non-empty strings or token arrays")
            if isinstance(item, list) and any(t < 0 for t in item):
                raise ValueError("token ids must not be negative")
        return value

    def inputs(self) -> tuple[str | tuple[int, ...], ...]:
        value = self.input
        if isinstance(value, str):
            return (value,)
        out: list[str | tuple[int, ...]] = []
        ids: list[int] = []
        for item in value:
            if isinstance(item, int):
                ids.append(item)  # one token array
            else:
                out.append(item if isinstance(item, str) else tuple(item))
        return (tuple(ids),) if ids else tuple(out)


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
