"""Shapes shared by several routes: errors, usage, sampling fields, logprobs."""

from __future__ import annotations

from typing import Any, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator

from nimble.errors import InvalidRequest, UnsupportedParameter
from nimble.types import SamplingParams, Usage


class ErrorBody(BaseModel):
    message: str
    type: str
    param: str | None = None
    code: str | None = None


class ErrorResponse(BaseModel):
    """The OpenAI error shape, used by every 4xx and 5xx answer."""

    error: ErrorBody


class CompletionTokensDetails(BaseModel):
    reasoning_tokens: int = Field(description="Of the completion tokens, those thought.")


class PromptTokensDetails(BaseModel):
    cached_tokens: int = Field(
        description="Of the prompt tokens, those the engine read from its prefix cache."
    )


class UsageOut(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int
    # where the engine reports its prefix cache hits (llama.cpp, vLLM)
    prompt_tokens_details: PromptTokensDetails | None = None
    # with a reasoning parser only (chat)
    completion_tokens_details: CompletionTokensDetails | None = None


def usage_out(usage: Usage) -> dict[str, Any]:
    """A `UsageOut` as plain JSON (built per chunk on the streaming path, so no model)."""
    thought = usage.reasoning_tokens
    return {
        "prompt_tokens": usage.prompt_tokens,
        "completion_tokens": usage.completion_tokens,
        "total_tokens": usage.total_tokens,
        "prompt_tokens_details": (
            None if usage.cached_tokens is None else {"cached_tokens": usage.cached_tokens}
        ),
        # null without a reasoning parser (as vLLM writes an absent detail)
        "completion_tokens_details": None if thought is None else {"reasoning_tokens": thought},
    }


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    include_usage: bool = False
    # vLLM's: every chunk carries the usage so far (with include_usage, unless it is false)
    continuous_usage_stats: bool = False


class Strict(BaseModel):
    """Unknown fields are refused, as OpenAI does ('Unrecognized request argument')."""

    model_config = ConfigDict(extra="forbid")


class NvExtSampling(Strict):
    """The sampling fields of NIM's `nvext` object (its structured-output fields are in
    `constraints.NvExt`); the same meaning as at the top level."""

    ignore_eos: bool | None = None
    top_k: int | None = Field(default=None, ge=-1)
    repetition_penalty: float | None = Field(default=None, gt=0.0)


class SamplingFields(Strict):
    """Fields common to chat and completions, with OpenAI's ranges, and vLLM's sampling
    extensions (docs/sampling.md)."""

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
    # token id (as a string) -> bias, -100..100, added to the token's logit
    logit_bias: dict[str, float] | None = None
    # vLLM's extensions
    top_k: int | None = Field(default=None, ge=-1, description="-1 or 0: off.")
    min_p: float | None = Field(default=None, ge=0.0, le=1.0)
    repetition_penalty: float | None = Field(default=None, gt=0.0)
    min_tokens: int = Field(default=0, ge=0)
    stop_token_ids: list[int] | None = None
    ignore_eos: bool = False
    include_stop_str_in_output: bool = False
    skip_special_tokens: bool = True

    @field_validator("stop")
    @classmethod
    def _check_stop(cls, value: str | list[str] | None) -> str | list[str] | None:
        if isinstance(value, list) and len(value) > 4:
            raise ValueError("at most 4 stop sequences")
        return value

    @field_validator("logit_bias")
    @classmethod
    def _check_logit_bias(cls, value: dict[str, float] | None) -> dict[str, float] | None:
        for key, bias in (value or {}).items():
            if not key.isdigit():
                raise ValueError(f"keys are token ids (as strings); got {key!r}")
            if not -100.0 <= bias <= 100.0:
                raise ValueError(f"biases are from -100 to 100; got {bias} for token {key}")
        return value

    @field_validator("stop_token_ids")
    @classmethod
    def _check_stop_token_ids(cls, value: list[int] | None) -> list[int] | None:
        if value is not None and any(token < 0 for token in value):
            raise ValueError("token ids are not negative")
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
        """A usage chunk at the end (asked for, or implied by continuous_usage_stats)."""
        options = self.stream_options
        return options is not None and (options.include_usage or self.continuous_usage())

    def continuous_usage(self) -> bool:
        """vLLM's continuous_usage_stats: unless include_usage is false (vLLM's default
        for include_usage is true, so the flag alone asks for it)."""
        options = self.stream_options
        if options is None or not options.continuous_usage_stats:
            return False
        return options.include_usage or "include_usage" not in options.model_fields_set

    def refuse_unsupported(self, fields: dict[str, Any]) -> None:
        """Raise for a known OpenAI field that asks for something not implemented yet."""
        for name, value in fields.items():
            if value not in (None, [], {}, False, "none", "auto", "text"):
                raise UnsupportedParameter(f"{name} is not supported yet", param=name)

    def sampling(self, max_tokens: int | None, top_logprobs: int | None) -> SamplingParams:
        if max_tokens is not None and self.min_tokens > max_tokens:
            raise InvalidRequest(
                f"min_tokens ({self.min_tokens}) must not exceed max_tokens ({max_tokens})",
                param="min_tokens",
            )
        top_k, repetition_penalty, ignore_eos = self._with_nvext()
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
            top_k=None if top_k is None else max(top_k, 0),
            min_p=self.min_p,
            repetition_penalty=repetition_penalty,
            min_tokens=self.min_tokens,
            stop_token_ids=tuple(self.stop_token_ids or ()),
            ignore_eos=ignore_eos,
            include_stop_str_in_output=self.include_stop_str_in_output,
            skip_special_tokens=self.skip_special_tokens,
            logit_bias=tuple((int(key), bias) for key, bias in (self.logit_bias or {}).items()),
            continuous_usage=self.stream and self.continuous_usage(),
        )

    def _with_nvext(self) -> tuple[int | None, float | None, bool]:
        """top_k, repetition_penalty and ignore_eos, from the top level or `nvext` (the
        request's `nvext` when it has one); the two may not disagree."""
        nvext = getattr(self, "nvext", None)
        top_k, penalty, ignore_eos = self.top_k, self.repetition_penalty, self.ignore_eos
        if not isinstance(nvext, NvExtSampling):
            return top_k, penalty, ignore_eos
        return (
            _one_of("top_k", top_k, nvext.top_k),
            _one_of("repetition_penalty", penalty, nvext.repetition_penalty),
            bool(_one_of("ignore_eos", ignore_eos or None, nvext.ignore_eos)),
        )


T = TypeVar("T")


def _one_of(name: str, top: T | None, nvext: T | None) -> T | None:
    """A field given at the top level, in nvext, or in both with the same value."""
    if top is not None and nvext is not None and top != nvext:
        raise InvalidRequest(
            f"nvext.{name} ({nvext}) contradicts {name} ({top}); give it once",
            param=f"nvext.{name}",
        )
    return top if top is not None else nvext


class TopLogprobOut(BaseModel):
    token: str
    logprob: float
    bytes: list[int] | None = None


class TokenLogprobOut(TopLogprobOut):
    top_logprobs: list[TopLogprobOut]


class ChoiceLogprobs(BaseModel):
    content: list[TokenLogprobOut] | None
