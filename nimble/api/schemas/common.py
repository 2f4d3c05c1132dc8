"""Shapes shared by several routes: errors, usage, sampling fields, logprobs."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator

from nimble.errors import UnsupportedParameter
from nimble.types import SamplingParams, Usage


class ErrorBody(BaseModel):
    message: str
    type: str
    param: str | None = None
    code: str | None = None


class ErrorResponse(BaseModel):
    """The OpenAI error shape, used by every 4xx and 5xx answer."""

    error: ErrorBody


class UsageOut(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


def usage_out(usage: Usage) -> dict[str, int]:
    """A `UsageOut` as plain JSON (built per chunk on the streaming path, so no model)."""
    return {
        "prompt_tokens": usage.prompt_tokens,
        "completion_tokens": usage.completion_tokens,
        "total_tokens": usage.total_tokens,
    }


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    include_usage: bool = False


class Strict(BaseModel):
    """Unknown fields are refused, as OpenAI does ('Unrecognized request argument')."""

    model_config = ConfigDict(extra="forbid")


class SamplingFields(Strict):
    """Fields common to chat and completions, with OpenAI's ranges."""

    model: str = Field(min_length=1, description="Id of a served model (see /v1/models).")
    temperature: float | None = Field(default=None, ge=0.0, le=2.0)
    top_p: float | None = Field(default=None, gt=0.0, le=1.0)
    n: int = Field(default=1, ge=1, le=128)
    stop: str | list[str] | None = Field(default=None, description="Up to 4 sequences.")
    seed: int | None = Field(default=None, ge=-(2**63), le=2**64 - 1)
    presence_penalty: float = Field(default=0.0, ge=-2.0, le=2.0)
    frequency_penalty: float = Field(default=0.0, ge=-2.0, le=2.0)
    stream: bool = False
    stream_options: StreamOptions | None = None
    user: str | None = Field(default=None, max_length=256)
    # accepted for OpenAI compatibility, refused when they ask for something unsupported
    logit_bias: dict[str, float] | None = None

    @field_validator("stop")
    @classmethod
    def _check_stop(cls, value: str | list[str] | None) -> str | list[str] | None:
        if isinstance(value, list) and len(value) > 4:
            raise ValueError("at most 4 stop sequences")
        return value

    @field_validator("stream_options")
    @classmethod
    def _check_stream_options(
        cls, value: StreamOptions | None, info: ValidationInfo
    ) -> StreamOptions | None:
        if value is not None and not info.data.get("stream"):
            raise ValueError("only allowed when stream is true")
        return value

    def stop_tuple(self) -> tuple[str, ...]:
        if self.stop is None:
            return ()
        stops = [self.stop] if isinstance(self.stop, str) else self.stop
        return tuple(s for s in stops if s)

    def include_usage(self) -> bool:
        return self.stream_options is not None and self.stream_options.include_usage

    def refuse_unsupported(self, fields: dict[str, Any]) -> None:
        """Raise for a known OpenAI field that asks for something not implemented yet."""
        if self.logit_bias:
            raise UnsupportedParameter("logit_bias is not supported yet", param="logit_bias")
        for name, value in fields.items():
            if value not in (None, [], {}, False, "none", "auto", "text"):
                raise UnsupportedParameter(f"{name} is not supported yet", param=name)

    def sampling(self, max_tokens: int | None, top_logprobs: int | None) -> SamplingParams:
        return SamplingParams(
            max_tokens=max_tokens,
            temperature=self.temperature,
            top_p=self.top_p,
            stop=self.stop_tuple(),
            seed=self.seed,
            n=self.n,
            presence_penalty=self.presence_penalty,
            frequency_penalty=self.frequency_penalty,
            top_logprobs=top_logprobs,
        )


class TopLogprobOut(BaseModel):
    token: str
    logprob: float
    bytes: list[int] | None = None


class TokenLogprobOut(TopLogprobOut):
    top_logprobs: list[TopLogprobOut]


class ChoiceLogprobs(BaseModel):
    content: list[TokenLogprobOut] | None
