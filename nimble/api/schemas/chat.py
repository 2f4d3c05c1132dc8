"""`POST /v1/chat/completions` request and response shapes."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator, model_validator

from nimble.api.schemas.common import (
    ChoiceLogprobs,
    SamplingFields,
    UsageOut,
)
from nimble.api.schemas.constraints import StructuredFields
from nimble.errors import InvalidRequest
from nimble.structured.checks import check_json_schema
from nimble.types import ChatMessage, FinishReason, GenerateRequest, ToolCall, ToolFunction

Role = Literal["system", "developer", "user", "assistant", "tool"]


class TextPart(BaseModel):
    model_config = ConfigDict(extra="forbid")
    type: Literal["text"]
    text: str


class FunctionCallIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str
    arguments: str = Field(description="The arguments as JSON text.")


class ToolCallIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    id: str = Field(min_length=1)
    type: Literal["function"] = "function"
    function: FunctionCallIn


class MessageIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    role: Role
    content: str | list[TextPart] | None = None
    name: str | None = None
    tool_calls: list[ToolCallIn] | None = None
    tool_call_id: str | None = None
    refusal: str | None = None
    # an assistant turn's thinking, as clients send a reply back: accepted and not shown to
    # the model again (thinking models' templates drop earlier turns' thoughts too)
    reasoning_content: str | None = None
    reasoning: str | None = None

    @model_validator(mode="after")
    def _content_required(self) -> MessageIn:
        if (self.reasoning_content or self.reasoning) and self.role != "assistant":
            raise ValueError("reasoning_content: only assistant messages carry it")
        if self.content is None and self.role != "assistant":
            raise ValueError(f"content: required for role {self.role!r}")
        if self.role == "tool" and not self.tool_call_id:
            raise ValueError("tool_call_id: required for role 'tool'")
        if self.tool_calls and self.role != "assistant":
            raise ValueError("tool_calls: only assistant messages carry them")
        return self

    def text(self) -> str:
        if self.content is None:
            return ""
        if isinstance(self.content, str):
            return self.content
        return "".join(part.text for part in self.content)

    def chat_message(self) -> ChatMessage:
        calls = tuple(
            ToolCall(call.id, call.function.name, call.function.arguments)
            for call in self.tool_calls or ()
        )
        return ChatMessage(self.role, self.text(), self.name, calls, self.tool_call_id)


class FunctionDef(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = Field(pattern=r"^[a-zA-Z0-9_-]{1,64}$")
    description: str | None = None
    parameters: dict[str, Any] | None = None
    strict: bool | None = None


class ToolDef(BaseModel):
    model_config = ConfigDict(extra="forbid")
    type: Literal["function"]
    function: FunctionDef


class NamedFunction(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str


class NamedToolChoice(BaseModel):
    model_config = ConfigDict(extra="forbid")
    type: Literal["function"]
    function: NamedFunction


ToolChoiceIn = Literal["none", "auto", "required"] | NamedToolChoice


def declared_tools(tools: list[ToolDef] | None) -> tuple[ToolFunction, ...]:
    """The declared functions, each schema checked for what constrained decoding enforces."""
    out = []
    names = set()
    for index, tool in enumerate(tools or ()):
        function = tool.function
        if function.name in names:
            raise InvalidRequest(
                f"tools[{index}].function.name: {function.name!r} is declared twice",
                param=f"tools[{index}].function.name",
            )
        names.add(function.name)
        parameters = function.parameters or {"type": "object", "properties": {}}
        check_json_schema(parameters, f"tools[{index}].function.parameters")
        out.append(
            ToolFunction(
                function.name, function.description or "", parameters, bool(function.strict)
            )
        )
    return tuple(out)


def tool_choice_name(choice: ToolChoiceIn | None, tools: tuple[ToolFunction, ...]) -> str:
    """`tool_choice` as nimble's ToolChoice: none, auto, required or a function name."""
    if choice is None:
        return "auto" if tools else "none"
    if isinstance(choice, NamedToolChoice):
        name = choice.function.name
        if name not in {tool.name for tool in tools}:
            raise InvalidRequest(
                f"tool_choice: function {name!r} is not among the declared tools",
                param="tool_choice",
            )
        return name
    if choice != "none" and not tools:
        raise InvalidRequest(f"tool_choice {choice!r} needs tools", param="tool_choice")
    return choice


class ChatCompletionRequest(SamplingFields, StructuredFields):
    """OpenAI chat completion request. Unknown fields are refused."""

    messages: list[MessageIn] = Field(min_length=1)
    max_tokens: int | None = Field(default=None, ge=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    logprobs: bool = False
    top_logprobs: int | None = Field(default=None, ge=0, le=20)
    tools: list[ToolDef] | None = None
    tool_choice: ToolChoiceIn | None = None
    parallel_tool_calls: bool | None = None
    # known OpenAI fields that are not implemented; refused with a clear 400
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
        self.refuse_unsupported(
            {
                "functions": self.functions,
                "function_call": self.function_call,
                "audio": self.audio,
                "prediction": self.prediction,
                "modalities": None if self.modalities in (None, ["text"]) else self.modalities,
            }
        )

    def generate_request(self, request_id: str) -> GenerateRequest:
        tools = declared_tools(self.tools)
        choice = tool_choice_name(self.tool_choice, tools)
        constraint = self.constraint()
        if constraint is not None and choice not in ("none", "auto"):
            raise InvalidRequest(
                f"tool_choice {choice!r} forces a tool call; it cannot be combined with "
                "response_format or guided decoding",
                param="tool_choice",
            )
        return GenerateRequest(
            request_id=request_id,
            params=self.sampling(self.max_new_tokens(), self.wanted_top_logprobs()),
            messages=self.chat_messages(),
            tools=tools,
            tool_choice=choice,
            parallel_tool_calls=self.parallel_tool_calls is not False,
            constraint=constraint,
        )

    def max_new_tokens(self) -> int | None:
        return self.max_completion_tokens or self.max_tokens

    def wanted_top_logprobs(self) -> int | None:
        return (self.top_logprobs or 0) if self.logprobs else None

    def chat_messages(self) -> tuple[ChatMessage, ...]:
        return tuple(m.chat_message() for m in self.messages)


class FunctionCallOut(BaseModel):
    name: str
    arguments: str


class ToolCallOut(BaseModel):
    id: str
    type: Literal["function"] = "function"
    function: FunctionCallOut


class AssistantMessage(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str | None
    tool_calls: list[ToolCallOut] | None = None
    reasoning_content: str | None = Field(
        default=None, description="The model's thinking (with a reasoning parser; null else)."
    )


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


class FunctionCallDelta(BaseModel):
    name: str | None = None
    arguments: str | None = None


class ToolCallDeltaOut(BaseModel):
    index: int
    id: str | None = None
    type: Literal["function"] | None = None
    function: FunctionCallDelta


class ChunkDelta(BaseModel):
    role: Literal["assistant"] | None = None
    content: str | None = None
    tool_calls: list[ToolCallDeltaOut] | None = None
    reasoning_content: str | None = None


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
