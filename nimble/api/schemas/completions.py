"""`POST /v1/completions` request and response shapes."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, Field, ValidationInfo, field_validator

from nimble.api.schemas.common import SamplingFields, UsageOut
from nimble.api.schemas.constraints import StructuredFields
from nimble.errors import InvalidRequest
from nimble.types import FinishReason, GenerateRequest

Prompt = str | list[str] | list[int] | list[list[int]]
_PROMPT_SHAPES = "a string, a list of strings, a list of token ids, or a list of lists of token ids"


class CompletionRequest(SamplingFields, StructuredFields):
    """OpenAI (legacy) completion request. Unknown fields are refused."""

    prompt: Prompt = Field(
        description="A prompt, or a list of prompts: each a text or the model's token ids "
        "(taken as they are: no BOS is added)."
    )
    max_tokens: int | None = Field(
        default=16, ge=0, description="0 with `echo`: score the prompt, generate nothing."
    )
    logprobs: int | None = Field(default=None, ge=0, le=20)
    echo: bool = Field(
        default=False,
        description="Each choice starts with its prompt; with `logprobs`, the prompt's "
        "tokens are in `logprobs` too (the first token's logprob is null).",
    )
    suffix: str | None = None
    best_of: int | None = Field(default=None, ge=1)

    @field_validator("prompt", mode="before")
    @classmethod
    def _check_prompt(cls, value: Any) -> Any:
        if isinstance(value, str):
            return value
        if not isinstance(value, list) or not value:
            raise ValueError(f"must be {_PROMPT_SHAPES} (not empty)")
        if all(isinstance(item, str) for item in value):
            return value
        rows = value if all(isinstance(item, list) for item in value) else [value]
        for row in rows:
            if not row:
                raise ValueError("a list of token ids must not be empty")
            for token in row:
                # JSON true and 1.0 are not token ids (bool is an int in Python)
                if type(token) is not int:
                    raise ValueError(f"must be {_PROMPT_SHAPES}; got {token!r} in a list")
                if token < 0:
                    raise ValueError(f"token ids are not negative; got {token}")
        return value

    @field_validator("best_of")
    @classmethod
    def _check_best_of(cls, value: int | None, info: ValidationInfo) -> int | None:
        if value is not None and value != info.data.get("n", 1):
            raise ValueError("only best_of equal to n is supported")
        return value

    def prompts(self) -> list[str | tuple[int, ...]]:
        """Each prompt: a text, or token ids."""
        if isinstance(self.prompt, str):
            return [self.prompt]
        ids: list[int] = []
        prompts: list[str | tuple[int, ...]] = []
        for item in self.prompt:
            if isinstance(item, int):
                ids.append(item)  # the prompt is one list of token ids
            else:
                prompts.append(item if isinstance(item, str) else tuple(item))
        return [tuple(ids)] if ids else prompts

    def generate_requests(self, request_id: str) -> list[GenerateRequest]:
        """One per prompt, `<request id>-<i>`, run one after the other (`runtime/fanin.py`)."""
        params = self.sampling(self.max_tokens, self.logprobs)
        constraint = self.constraint()
        return [
            GenerateRequest(
                f"{request_id}-{i}", params, prompt=prompt, echo=self.echo, constraint=constraint
            )
            for i, prompt in enumerate(self.prompts())
        ]

    def refuse_unsupported_completion(self) -> None:
        if self.max_tokens == 0 and not self.echo:
            raise InvalidRequest(
                "max_tokens: 0 is allowed only with echo (scoring the prompt); otherwise "
                "at least 1",
                param="max_tokens",
            )
        self.refuse_unsupported({"suffix": self.suffix})


class CompletionLogprobs(BaseModel):
    """With `echo`, the prompt's tokens come first: the first has no logprob (null) and no
    alternatives (null)."""

    tokens: list[str]
    token_logprobs: list[float | None]
    top_logprobs: list[dict[str, float] | None] | None
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
