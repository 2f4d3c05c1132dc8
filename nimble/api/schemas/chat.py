"""`POST /v1/chat/completions` request and response shapes."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator, model_validator

from nimble.api.schemas.common import (
    ChoiceLogprobs,
    FinishReason,
    SamplingFields,
    UsageOut,
)
from nimble.errors import UnsupportedParameter
from nimble.types import ChatMessage

Role = Literal["system", "developer", "user", "assistant", "tool"]


class TextPart(BaseModel):
    model_config = ConfigDict(extra="forbid")
    type: Literal["text"]
    text: str


class MessageIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    role: Role
    content: str | list[TextPart] | None = None
    name: str | None = None
    tool_calls: list[dict[str, Any]] | None = None
    tool_call_id: str | None = None
    refusal: str | None = None

    @model_validator(mode="after")
    def _content_required(self) -> MessageIn:
        if self.content is None and self.role != "assistant":
            raise ValueError(f"content: required for role {self.role!r}")
        return self

    def text(self) -> str:
        if self.content is None:
            return ""
        if isinstance(self.content, str):
            return self.content
        return "".join(part.text for part in self.content)


class ChatCompletionRequest(SamplingFields):
    """OpenAI chat completion request. Unknown fields are refused."""

    messages: list[MessageIn] = Field(min_length=1)
    max_tokens: int | None = Field(default=None, ge=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    logprobs: bool = False
    top_logprobs: int | None = Field(default=None, ge=0, le=20)
    # known OpenAI fields that later issues implement; refused with a clear 400 for now
    tools: list[dict[str, Any]] | None = None
    tool_choice: str | dict[str, Any] | None = None
    parallel_tool_calls: bool | None = None
    response_format: dict[str, Any] | None = None
    functions: list[dict[str, Any]] | None = None
    function_call: str | dict[str, Any] | None = None
    modalities: list[str] | None = None
    audio: dict[str, Any] | None = None
    prediction: dict[str, Any] | None = None
    reasoning_effort: str | None = None
    service_tier: str | None = None
    store: bool | None = None
    metadata: dict[str, str] | None = None

    @field_validator("top_logprobs")
    @classmethod
    def _check_top_logprobs(cls, value: int | None, info: ValidationInfo) -> int | None:
        if value is not None and not info.data.get("logprobs"):
            raise ValueError("requires logprobs to be true")
        return value

    def refuse_unsupported_chat(self) -> None:
        fmt = (self.response_format or {}).get("type", "text")
        if fmt != "text":
            raise UnsupportedParameter(
                f"response_format type {fmt!r} is not supported yet", param="response_format"
            )
        for message in self.messages:
            if message.tool_calls:
                raise UnsupportedParameter(
                    "assistant tool_calls are not supported yet", param="messages"
                )
        self.refuse_unsupported(
            {
                "tools": self.tools,
                "tool_choice": self.tool_choice,
                "functions": self.functions,
                "function_call": self.function_call,
                "audio": self.audio,
                "prediction": self.prediction,
                "modalities": None if self.modalities in (None, ["text"]) else self.modalities,
            }
        )

    def max_new_tokens(self) -> int | None:
        return self.max_completion_tokens or self.max_tokens

    def wanted_top_logprobs(self) -> int | None:
        return (self.top_logprobs or 0) if self.logprobs else None

    def chat_messages(self) -> tuple[ChatMessage, ...]:
        return tuple(ChatMessage(role=m.role, content=m.text(), name=m.name) for m in self.messages)


class AssistantMessage(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str | None


class ChatChoice(BaseModel):
    index: int
    message: AssistantMessage
    logprobs: ChoiceLogprobs | None = None
    finish_reason: FinishReason | None


class ChatCompletionResponse(BaseModel):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    system_fingerprint: str | None = None
    choices: list[ChatChoice]
    usage: UsageOut


class ChunkDelta(BaseModel):
    role: Literal["assistant"] | None = None
    content: str | None = None


class ChunkChoice(BaseModel):
    index: int
    delta: ChunkDelta
    logprobs: ChoiceLogprobs | None = None
    finish_reason: FinishReason | None = None


class ChatCompletionChunk(BaseModel):
    """One SSE event of a streamed chat completion (documented for OpenAPI)."""

    id: str
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    created: int
    model: str
    system_fingerprint: str | None = None
    choices: list[ChunkChoice]
    usage: UsageOut | None = None
