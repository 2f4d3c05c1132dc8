"""`POST /v1/messages` and `POST /v1/messages/count_tokens` requests (Anthropic's Messages
API), and their translation into nimble's chat turns; the answers are in `messages_out.py`.

What is supported: a `system` prompt (a string or text blocks), turns whose content is a
string or text, `tool_use` (assistant) and `tool_result` (user) blocks, custom tools and
`tool_choice`, the sampling fields. `thinking` blocks sent back are accepted and not shown
to the model again (as thinking models' templates drop earlier thoughts); `cache_control`
and `citations` are accepted and ignored. Images, documents and Anthropic's server tools
are refused with a 400 that names the field: nimble serves text models.
"""

from __future__ import annotations

import json
from typing import Annotated, Any, Literal

from pydantic import Field, field_validator, model_validator

from nimble.api.schemas.common import Strict
from nimble.errors import InvalidRequest
from nimble.structured.checks import check_json_schema
from nimble.types import (
    ChatMessage,
    JsonSchemaConstraint,
    SamplingParams,
    ToolCall,
    ToolFunction,
)

_BLOCK_FIELDS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    # type: (required fields, optional fields)
    "text": (("text",), ("citations",)),
    "tool_use": (("id", "name", "input"), ()),
    "tool_result": (("tool_use_id",), ("content", "is_error")),
    "thinking": (("thinking",), ("signature",)),
    "redacted_thinking": (("data",), ()),
}
_JOIN = "\n\n"  # between the text blocks of one turn (and of `system`)


# ----- request -----
class ContentBlock(Strict):
    """One block of a turn's content: `text`; `tool_use` (an assistant's call: id, name,
    input); `tool_result` (a user's answer to a call: tool_use_id, content as a string or
    text blocks, is_error); `thinking` or `redacted_thinking` (sent back, not shown to the
    model)."""

    type: str
    text: str | None = None
    citations: list[Any] | None = None
    id: str | None = Field(default=None, min_length=1)
    name: str | None = None
    input: dict[str, Any] | None = None
    tool_use_id: str | None = Field(default=None, min_length=1)
    content: list[ContentBlock] | None = Field(
        default=None, description="A string (one text block), or text blocks."
    )
    is_error: bool | None = None
    thinking: str | None = None
    signature: str | None = None
    data: str | None = None
    cache_control: dict[str, Any] | None = None  # accepted: nimble caches prefixes itself

    @model_validator(mode="before")
    @classmethod
    def _known_type(cls, value: Any) -> Any:
        kind = value.get("type") if isinstance(value, dict) else None
        if not isinstance(kind, str) or kind not in _BLOCK_FIELDS:
            raise ValueError(
                f"content blocks of type {kind!r} are not supported: nimble serves text "
                f"models (supported: {', '.join(_BLOCK_FIELDS)})"
            )
        return value

    @field_validator("content", mode="before")
    @classmethod
    def _string_is_one_block(cls, value: Any) -> Any:
        return _blocks(value)

    @model_validator(mode="after")
    def _fields_of_type(self) -> ContentBlock:
        needed, optional = _BLOCK_FIELDS[self.type]
        missing = [name for name in needed if getattr(self, name) is None]
        if missing:
            raise ValueError(f"a {self.type} block needs {', '.join(missing)}")
        allowed = {"type", "cache_control", *needed, *optional}
        stray = sorted(
            name for name in self.model_fields_set - allowed if getattr(self, name) is not None
        )
        if stray:
            raise ValueError(f"a {self.type} block has no {', '.join(stray)}")
        return self

    def result_text(self, where: str) -> str:
        """A tool_result's content as text (text blocks only)."""
        text = _text_of(self.content or [], f"{where}.content", "a tool_result")
        # the template has no place for the error flag: the model reads it in the text
        return f"Error: {text}" if self.is_error else text


def _blocks(value: Any) -> Any:
    """A string stands for one text block (one shape, so errors name the block's place)."""
    return [{"type": "text", "text": value}] if isinstance(value, str) else value


def _text_of(blocks: list[ContentBlock], where: str, holder: str) -> str:
    """The text of blocks that may only be text (the system prompt, a tool result)."""
    for index, block in enumerate(blocks):
        if block.type != "text":
            raise InvalidRequest(
                f"{where}.{index}: {holder} holds text blocks only (got {block.type})",
                param=f"{where}.{index}",
            )
    return _JOIN.join(block.text or "" for block in blocks)


class MessageParam(Strict):
    role: Literal["user", "assistant"]
    content: list[ContentBlock] = Field(description="A string (one text block), or blocks.")

    @field_validator("content", mode="before")
    @classmethod
    def _string_is_one_block(cls, value: Any) -> Any:
        return _blocks(value)


class ToolParam(Strict):
    """A custom tool. Anthropic's server tools (web search, code execution, ...) run on
    Anthropic's side and are refused."""

    type: Literal["custom"] | None = None
    name: str = Field(pattern=r"^[a-zA-Z0-9_-]{1,128}$")
    description: str | None = None
    input_schema: dict[str, Any]
    strict: bool | None = None
    cache_control: dict[str, Any] | None = None

    @model_validator(mode="before")
    @classmethod
    def _custom_only(cls, value: Any) -> Any:
        kind = value.get("type") if isinstance(value, dict) else None
        if kind not in (None, "custom"):
            raise ValueError(
                f"server tools ({kind}) are not supported: declare custom tools "
                "(name, description, input_schema)"
            )
        return value


class ToolChoiceAuto(Strict):
    type: Literal["auto"]
    disable_parallel_tool_use: bool | None = None


class ToolChoiceAny(Strict):
    type: Literal["any"]
    disable_parallel_tool_use: bool | None = None


class ToolChoiceTool(Strict):
    type: Literal["tool"]
    name: str
    disable_parallel_tool_use: bool | None = None


class ToolChoiceNone(Strict):
    type: Literal["none"]


ToolChoiceParam = Annotated[
    ToolChoiceAuto | ToolChoiceAny | ToolChoiceTool | ToolChoiceNone,
    Field(discriminator="type"),
]


class ThinkingParam(Strict):
    """Accepted: a model with a reasoning parser thinks as it does and its thinking comes
    back as `thinking` blocks; nimble does not hold it to `budget_tokens`."""

    type: Literal["enabled", "disabled", "adaptive"]
    budget_tokens: int | None = Field(default=None, ge=1)
    display: Literal["summarized", "omitted"] | None = None


class OutputFormat(Strict):
    type: Literal["json_schema"]
    json_schema: dict[str, Any] = Field(alias="schema")


class OutputConfig(Strict):
    """`format`: the answer is JSON valid against the schema (constrained decoding).
    `effort` is accepted; nimble has no such setting."""

    effort: Literal["low", "medium", "high", "xhigh", "max"] | None = None
    format: OutputFormat | None = None


class Metadata(Strict):
    user_id: str | None = Field(default=None, max_length=256)


class MessagesInput(Strict):
    """What both routes read: the conversation and its tools. Unknown fields are refused."""

    model: str = Field(min_length=1, description="Id of a served model (see /v1/models).")
    messages: list[MessageParam] = Field(min_length=1)
    system: list[ContentBlock] | None = Field(
        default=None, description="A string (one text block), or text blocks."
    )
    tools: list[ToolParam] | None = None
    tool_choice: ToolChoiceParam | None = None
    thinking: ThinkingParam | None = None
    output_config: OutputConfig | None = None
    cache_control: dict[str, Any] | None = None  # accepted: nimble caches prefixes itself

    @field_validator("system", mode="before")
    @classmethod
    def _string_is_one_block(cls, value: Any) -> Any:
        return _blocks(value)

    def chat_messages(self) -> tuple[ChatMessage, ...]:
        """The conversation as nimble's chat turns: a user turn's tool_result blocks become
        `tool` turns (before its text), an assistant turn's tool_use blocks its calls."""
        turns: list[ChatMessage] = []
        system = _text_of(self.system or [], "system", "the system prompt")
        if system:
            turns.append(ChatMessage("system", system))
        calls: set[str] = set()
        for index, message in enumerate(self.messages):
            where = f"messages.{index}"
            if message.role == "assistant":
                turns.append(_assistant_turn(message.content, where, calls))
            else:
                turns.extend(_user_turns(message.content, where, calls))
        if self.messages[-1].role == "assistant":
            raise InvalidRequest(
                f"messages.{len(self.messages) - 1}: the last turn is the assistant's; "
                "continuing it (prefill) is not supported, end with a user turn",
                param=f"messages.{len(self.messages) - 1}",
            )
        return tuple(turns)

    def tool_functions(self) -> tuple[ToolFunction, ...]:
        functions = []
        names: set[str] = set()
        for index, tool in enumerate(self.tools or ()):
            if tool.name in names:
                raise InvalidRequest(
                    f"tools.{index}.name: {tool.name!r} is declared twice",
                    param=f"tools.{index}.name",
                )
            names.add(tool.name)
            check_json_schema(tool.input_schema, f"tools.{index}.input_schema")
            functions.append(
                ToolFunction(
                    tool.name, tool.description or "", tool.input_schema, bool(tool.strict)
                )
            )
        return tuple(functions)

    def tool_choice_value(self, tools: tuple[ToolFunction, ...]) -> str:
        """`tool_choice` as nimble's: none, auto, required (Anthropic's `any`) or a name."""
        choice = self.tool_choice
        if choice is None:
            return "auto" if tools else "none"
        if choice.type in ("auto", "none"):
            return choice.type
        if not tools:
            raise InvalidRequest(
                f"tool_choice: type {choice.type!r} needs tools", param="tool_choice"
            )
        if isinstance(choice, ToolChoiceTool):
            if choice.name not in {tool.name for tool in tools}:
                raise InvalidRequest(
                    f"tool_choice.name: {choice.name!r} is not among the declared tools",
                    param="tool_choice.name",
                )
            return choice.name
        return "required"

    def constraint(self, tool_choice: str) -> JsonSchemaConstraint | None:
        """`output_config.format` as a constraint (not with a tool call forced)."""
        fmt = self.output_config.format if self.output_config is not None else None
        if fmt is None:
            return None
        check_json_schema(fmt.json_schema, "output_config.format.schema")
        if tool_choice not in ("none", "auto"):
            raise InvalidRequest(
                "tool_choice: a forced tool call cannot be combined with output_config.format",
                param="tool_choice",
            )
        return JsonSchemaConstraint(fmt.json_schema)

    def parallel_tool_calls(self) -> bool:
        choice = self.tool_choice
        if choice is None or isinstance(choice, ToolChoiceNone):
            return True
        return not choice.disable_parallel_tool_use


class MessagesRequest(MessagesInput):
    """Anthropic's Messages create request. Unknown fields are refused."""

    max_tokens: int = Field(ge=1, description="The most tokens to generate (required).")
    stop_sequences: list[str] | None = None
    temperature: float | None = Field(default=None, ge=0.0, le=1.0)
    top_p: float | None = Field(default=None, gt=0.0, le=1.0)
    top_k: int | None = Field(default=None, ge=0, description="0: no top-k cut.")
    metadata: Metadata | None = None
    service_tier: Literal["auto", "standard_only"] | None = None  # accepted; one tier here
    stream: bool = False

    @field_validator("stop_sequences")
    @classmethod
    def _stops_not_empty(cls, value: list[str] | None) -> list[str] | None:
        if value is not None and "" in value:
            raise ValueError(f"stop sequence {value.index('')} is empty")
        return value

    def sampling(self) -> SamplingParams:
        return SamplingParams(
            max_tokens=self.max_tokens,
            temperature=self.temperature,
            top_p=self.top_p,
            top_k=self.top_k,
            stop=tuple(self.stop_sequences or ()),
        )


class CountTokensRequest(MessagesInput):
    """Anthropic's count_tokens request: the conversation and tools, without max_tokens."""


def _assistant_turn(blocks: list[ContentBlock], where: str, calls: set[str]) -> ChatMessage:
    texts: list[str] = []
    tool_calls: list[ToolCall] = []
    for index, block in enumerate(blocks):
        if block.type == "text":
            texts.append(block.text or "")
        elif block.type == "tool_use":
            assert block.id is not None and block.name is not None
            calls.add(block.id)
            arguments = json.dumps(block.input, ensure_ascii=False)
            tool_calls.append(ToolCall(block.id, block.name, arguments))
        elif block.type == "tool_result":
            raise InvalidRequest(
                f"{where}.content.{index}: tool_result blocks belong to user turns",
                param=f"{where}.content.{index}",
            )
        # thinking and redacted_thinking: not shown to the model again
    return ChatMessage("assistant", _JOIN.join(texts), tool_calls=tuple(tool_calls))


def _user_turns(blocks: list[ContentBlock], where: str, calls: set[str]) -> list[ChatMessage]:
    results: list[ChatMessage] = []
    texts: list[str] = []
    for index, block in enumerate(blocks):
        at = f"{where}.content.{index}"
        if block.type == "text":
            texts.append(block.text or "")
        elif block.type == "tool_result":
            if block.tool_use_id not in calls:
                raise InvalidRequest(
                    f"{at}.tool_use_id: {block.tool_use_id!r} answers no tool_use block of "
                    "an earlier assistant turn",
                    param=f"{at}.tool_use_id",
                )
            results.append(
                ChatMessage("tool", block.result_text(at), tool_call_id=block.tool_use_id)
            )
        else:
            raise InvalidRequest(f"{at}: {block.type} blocks belong to assistant turns", param=at)
    turns = results
    if texts or not results:
        turns = [*results, ChatMessage("user", _JOIN.join(texts))]
    return turns
