"""`POST /v1/classify` (vLLM's shape) and `POST /v1/moderations` (OpenAI's) request and
response shapes."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field, field_validator

from nimble.api.schemas.common import Strict

MAX_CLASSIFY_INPUTS = 2048  # as /v1/embeddings
MAX_MODERATION_INPUTS = 256  # a guard model generates once per input


def _checked(items: list[str], most: int) -> None:
    if not items:
        raise ValueError("must not be an empty list")
    if len(items) > most:
        raise ValueError(f"at most {most} inputs per request (got {len(items)})")
    if any(not item for item in items):
        raise ValueError("inputs must be non-empty strings")


class ClassifyRequest(Strict):
    model: str | None = Field(
        default=None,
        min_length=1,
        description="A served sequence classifier; omitted: the one served (400 if several).",
    )
    input: str | list[str] = Field(
        description=f"A text, or a list of up to {MAX_CLASSIFY_INPUTS} texts."
    )
    truncate_prompt_tokens: int | None = Field(
        default=None,
        ge=-1,
        description="vLLM's: cut each input to this many tokens (-1: the model's window). "
        "Unset: an input longer than the window is refused (400).",
    )
    user: str | None = Field(default=None, max_length=256)

    @field_validator("input")
    @classmethod
    def _check_input(cls, value: str | list[str]) -> str | list[str]:
        _checked([value] if isinstance(value, str) else value, MAX_CLASSIFY_INPUTS)
        return value

    @field_validator("truncate_prompt_tokens")
    @classmethod
    def _not_zero(cls, value: int | None) -> int | None:
        if value == 0:
            raise ValueError("must be -1 (the model's window) or a number of tokens")
        return value

    def inputs(self) -> tuple[str, ...]:
        return (self.input,) if isinstance(self.input, str) else tuple(self.input)


class ClassificationData(BaseModel):
    index: int
    label: str = Field(description="The most probable label.")
    probs: list[float] = Field(description="Each label's probability, in the model's order.")
    num_classes: int


class ClassificationUsage(BaseModel):
    prompt_tokens: int
    total_tokens: int
    completion_tokens: int = 0
    prompt_tokens_details: None = None


class ClassifyResponse(BaseModel):
    id: str
    object: Literal["list"] = "list"
    created: int
    model: str
    data: list[ClassificationData]
    usage: ClassificationUsage


class TextPart(Strict):
    type: Literal["text"]
    text: str


class ImagePart(BaseModel):
    type: Literal["image_url"]


class ModerationRequest(Strict):
    model: str | None = Field(
        default=None,
        min_length=1,
        description="A served classifier or guard model; omitted: the one served that can "
        "moderate (400 naming them if several).",
    )
    input: str | list[str] | list[TextPart | ImagePart] = Field(
        description=f"A text, a list of up to {MAX_MODERATION_INPUTS} texts, or a list of "
        '`{"type": "text", "text": ...}` parts (images are not supported).'
    )

    @field_validator("input")
    @classmethod
    def _check_input(
        cls, value: str | list[str] | list[TextPart | ImagePart]
    ) -> str | list[str] | list[TextPart | ImagePart]:
        items: list[str] = []
        for part in [value] if isinstance(value, str) else value:
            if isinstance(part, ImagePart):
                raise ValueError("image inputs are not supported: send text parts")
            items.append(part if isinstance(part, str) else part.text)
        _checked(items, MAX_MODERATION_INPUTS)
        return value

    def inputs(self) -> tuple[str, ...]:
        value = self.input
        if isinstance(value, str):
            return (value,)
        return tuple(part.text if isinstance(part, TextPart) else str(part) for part in value)


class ModerationResult(BaseModel):
    flagged: bool
    categories: dict[str, bool] = Field(description="The model's own categories.")
    category_scores: dict[str, float]
    category_applied_input_types: dict[str, list[Literal["text"]]]


class ModerationResponse(BaseModel):
    id: str
    model: str
    results: list[ModerationResult]
