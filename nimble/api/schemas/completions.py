"""`POST /v1/completions` request and response shapes."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field, ValidationInfo, field_validator

from nimble.api.schemas.common import SamplingFields, UsageOut
from nimble.api.schemas.constraints import StructuredFields
from nimble.errors import UnsupportedParameter
from nimble.types import FinishReason, GenerateRequest


class CompletionRequest(SamplingFields, StructuredFields):
    """OpenAI (legacy) completion request. Unknown fields are refused."""

    prompt: str | list[str] = Field(description="A prompt, or a list of prompts.")
    max_tokens: int | None = Field(default=16, ge=1)
    logprobs: int | None = Field(default=None, ge=0, le=20)
    echo: bool = False
    suffix: str | None = None
    best_of: int | None = Field(default=None, ge=1)

    @field_validator("prompt")
    @classmethod
    def _check_prompt(cls, value: str | list[str]) -> str | list[str]:
        if isinstance(value, list) and not value:
            raise ValueError("must not be an empty list")
        return value

    @field_validator("best_of")
    @classmethod
    def _check_best_of(cls, value: int | None, info: ValidationInfo) -> int | None:
        if value is not None and value != info.data.get("n", 1):
            raise ValueError("only best_of equal to n is supported")
        return value

    def prompts(self) -> list[str]:
        return [self.prompt] if isinstance(self.prompt, str) else list(self.prompt)

    def generate_requests(self, request_id: str) -> list[GenerateRequest]:
        """One per prompt, `<request id>-<i>`, run one after the other (`runtime/fanin.py`)."""
        params = self.sampling(self.max_tokens, self.logprobs)
        constraint = self.constraint()
        return [
            GenerateRequest(f"{request_id}-{i}", params, prompt=prompt, constraint=constraint)
            for i, prompt in enumerate(self.prompts())
        ]

    def refuse_unsupported_completion(self) -> None:
        if self.echo:
            raise UnsupportedParameter("echo is not supported yet", param="echo")
        self.refuse_unsupported({"suffix": self.suffix})


class CompletionLogprobs(BaseModel):
    tokens: list[str]
    token_logprobs: list[float]
    top_logprobs: list[dict[str, float]] | None
    text_offset: list[int]


class CompletionChoice(BaseModel):
    index: int
    text: str
    logprobs: CompletionLogprobs | None = None
    finish_reason: FinishReason | None


class CompletionResponse(BaseModel):
    """A completion, or (with `stream`) one SSE event of it, with `object` text_completion."""

    id: str
    object: Literal["text_completion"] = "text_completion"
    created: int
    model: str
    system_fingerprint: str | None = None
    choices: list[CompletionChoice]
    usage: UsageOut | None = None
