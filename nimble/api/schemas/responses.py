"""`POST /v1/responses` request shapes (the OpenAI Responses API; the response object is in
`responses_out.py`).

What is supported: text input (a string, or message items with text parts), function
tools and their calls and results, `previous_response_id`, `store`, `text.format`.
Everything else that OpenAI knows is refused with a 400 that names the field.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Literal

from pydantic import (
    ConfigDict,
    Field,
    ValidationInfo,
    field_validator,
    model_validator,
)

from nimble.api.schemas.common import Strict
from nimble.errors import InvalidRequest, UnsupportedParameter
from nimble.structured.checks import check_json_schema
from nimble.structured.json_schema import close_objects
from nimble.types import (
    ChatMessage,
    JsonSchemaConstraint,
    SamplingParams,
    ToolCall,
    ToolFunction,
)

_ITEM_TYPES = ("message", "function_call", "function_call_output", "reasoning")
_PART_TYPES = ("input_text", "output_text", "refusal")


# ----- request -----
class ContentPart(Strict):
    """A text part of a message (or of a function call's output)."""

    type: str
    text: str | None = None
    refusal: str | None = None
    annotations: list[Any] | None = None
    logprobs: list[Any] | None = None

    @model_validator(mode="before")
    @classmethod
    def _text_only(cls, value: Any) -> Any:
        kind = value.get("type") if isinstance(value, dict) else None
        if kind not in _PART_TYPES:
            raise ValueError(
                f"content type {kind!r} is not supported (supported: {', '.join(_PART_TYPES)})"
            )
        field = "refusal" if kind == "refusal" else "text"
        if not isinstance(value.get(field), str):
            raise ValueError(f"a {kind} part needs `{field}`")
        return value

    def plain(self) -> str:
        return (self.refusal if self.type == "refusal" else self.text) or ""


def _text(content: list[ContentPart] | None) -> str:
    return "".join(part.plain() for part in content or ())


def _parts(value: Any) -> Any:
    """A string stands for one text part (one shape, so errors name the part's place)."""
    return [{"type": "input_text", "text": value}] if isinstance(value, str) else value


class InputItem(Strict):
    """One input item: a message, a function call the model made, or its result; or
    reasoning, the model's thinking in an earlier output sent back, which is accepted and
    not shown to the model again (as thinking models' templates drop earlier thoughts)."""

    type: Literal["message", "function_call", "function_call_output", "reasoning"] = "message"
    id: str | None = None
    status: Literal["in_progress", "completed", "incomplete"] | None = None
    # messages
    role: Literal["user", "system", "developer", "assistant"] | None = None
    content: list[ContentPart] | None = None
    phase: Literal["commentary", "final_answer"] | None = None
    # function calls and their results
    call_id: str | None = Field(default=None, min_length=1)
    name: str | None = None
    arguments: str | None = None
    output: list[ContentPart] | None = None

    @model_validator(mode="before")
    @classmethod
    def _known_type(cls, value: Any) -> Any:
        kind = value.get("type", "message") if isinstance(value, dict) else None
        if kind not in _ITEM_TYPES:
            raise ValueError(
                f"input item type {kind!r} is not supported (supported: {', '.join(_ITEM_TYPES)})"
            )
        if kind == "reasoning":  # its summary, content and encrypted content go unread
            return {"type": "reasoning", "id": value.get("id")}
        return value

    @field_validator("content", "output", mode="before")
    @classmethod
    def _string_is_one_part(cls, value: Any) -> Any:
        return _parts(value)

    @model_validator(mode="after")
    def _fields_of_type(self) -> InputItem:
        needed = {
            "message": ("role", "content"),
            "function_call": ("call_id", "name", "arguments"),
            "function_call_output": ("call_id", "output"),
            "reasoning": (),
        }[self.type]
        missing = [name for name in needed if getattr(self, name) is None]
        if missing:
            raise ValueError(f"a {self.type} item needs {', '.join(missing)}")
        allowed = (
            set(needed)
            | {"type", "id", "status"}
            | ({"phase"} if self.type == "message" else set())
        )
        stray = sorted(
            name for name in self.model_fields_set - allowed if getattr(self, name) is not None
        )
        if stray:
            raise ValueError(f"a {self.type} item has no {', '.join(stray)}")
        return self


class FunctionTool(Strict):
    type: Literal["function"]
    name: str = Field(pattern=r"^[a-zA-Z0-9_-]{1,64}$")
    description: str | None = None
    parameters: dict[str, Any] | None = None
    strict: bool | None = None

    def function(self) -> ToolFunction:
        return ToolFunction(
            name=self.name,
            description=self.description or "",
            parameters=self.parameters or {"type": "object", "properties": {}},
            strict=self.strict is not False,  # the Responses API's default is strict
        )

    def echo(self) -> dict[str, Any]:
        return {
            "type": "function",
            "name": self.name,
            "description": self.description,
            "parameters": self.parameters,
            "strict": self.strict is not False,
        }


class ToolChoiceFunction(Strict):
    type: Literal["function"]
    name: str


class TextFormat(Strict):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)
    type: Literal["text", "json_schema", "json_object"]
    name: str | None = Field(default=None, pattern=r"^[a-zA-Z0-9_-]{1,64}$")
    json_schema: dict[str, Any] | None = Field(default=None, alias="schema")
    description: str | None = None
    strict: bool | None = None

    @model_validator(mode="after")
    def _schema_needed(self) -> TextFormat:
        if self.type == "json_schema" and (self.name is None or self.json_schema is None):
            raise ValueError("a json_schema format needs name and schema")
        return self


class TextConfig(Strict):
    format: TextFormat | None = None
    verbosity: Literal["low", "medium", "high"] | None = None


class ResponseStreamOptions(Strict):
    include_obfuscation: bool | None = None  # accepted; nimble never pads its events


class CreateResponseRequest(Strict):
    """OpenAI Responses create request. Unknown fields are refused."""

    model: str = Field(min_length=1, description="Id of a served model (see /v1/models).")
    input: list[InputItem] = Field(
        description="A string (one user message), or a list of message, function_call "
        "and function_call_output items."
    )
    instructions: str | None = None
    previous_response_id: str | None = Field(default=None, min_length=1)
    max_output_tokens: int | None = Field(default=None, ge=1)
    temperature: float | None = Field(default=None, ge=0.0, le=2.0)
    top_p: float | None = Field(default=None, gt=0.0, le=1.0)
    tools: list[FunctionTool] | None = None
    tool_choice: Literal["none", "auto", "required"] | ToolChoiceFunction | None = None
    parallel_tool_calls: bool | None = None
    text: TextConfig | None = None
    stream: bool | None = False
    stream_options: ResponseStreamOptions | None = None
    store: bool | None = True
    metadata: dict[str, str] | None = None
    user: str | None = Field(default=None, max_length=256)
    safety_identifier: str | None = Field(default=None, max_length=128)
    prompt_cache_key: str | None = None  # accepted: a cache hint only
    # known OpenAI fields that nimble does not implement: refused unless at their defaults
    background: bool | None = None
    conversation: str | dict[str, Any] | None = None
    include: list[str] | None = None
    max_tool_calls: int | None = None
    prompt: dict[str, Any] | None = None
    reasoning: dict[str, Any] | None = None
    service_tier: str | None = None
    top_logprobs: int | None = None
    truncation: Literal["auto", "disabled"] | None = None
    prompt_cache_retention: str | None = None

    @field_validator("input", mode="before")
    @classmethod
    def _string_is_one_message(cls, value: Any) -> Any:
        if isinstance(value, str):
            return [{"role": "user", "content": value}]
        if isinstance(value, list) and not value:
            raise ValueError("at least one item")
        return value

    @field_validator("tools", mode="before")
    @classmethod
    def _function_tools_only(cls, value: Any) -> Any:
        for index, tool in enumerate(value if isinstance(value, list) else ()):
            kind = tool.get("type") if isinstance(tool, dict) else None
            if kind != "function":
                raise ValueError(
                    f"tool {index} has type {kind!r}; only function tools are supported"
                )
        return value

    @field_validator("tool_choice", mode="before")
    @classmethod
    def _function_choice_only(cls, value: Any) -> Any:
        if isinstance(value, dict) and value.get("type") != "function":
            raise ValueError(
                f"type {value.get('type')!r} is not supported (none, auto, required, or "
                '{"type": "function", "name": ...})'
            )
        return value

    @field_validator("metadata")
    @classmethod
    def _check_metadata(cls, value: dict[str, str] | None) -> dict[str, str] | None:
        if value is None:
            return None
        if len(value) > 16:
            raise ValueError("at most 16 keys")
        for key, item in value.items():
            if len(key) > 64 or len(item) > 512:
                raise ValueError("keys at most 64 characters, values at most 512")
        return value

    @field_validator("stream_options")
    @classmethod
    def _only_streaming(cls, value: ResponseStreamOptions | None, info: ValidationInfo) -> Any:
        if value is not None and not info.data.get("stream"):
            raise ValueError("only allowed when stream is true")
        return value

    # ----- checks the schema cannot express -----
    def refuse_unsupported(self) -> None:
        refused: dict[str, Any] = {
            "background": self.background,
            "conversation": self.conversation,
            # what to include of items nimble never makes is moot; logprobs it would need
            "include": [name for name in self.include or () if "logprobs" in name],
            "max_tool_calls": self.max_tool_calls,
            "prompt": self.prompt,
            "reasoning": {k: v for k, v in (self.reasoning or {}).items() if v is not None},
            "top_logprobs": self.top_logprobs,
            "truncation": None if self.truncation == "disabled" else self.truncation,
            "service_tier": None if self.service_tier in ("auto", "default") else self.service_tier,
        }
        for name, value in refused.items():
            if value not in (None, [], {}, False, 0):
                raise UnsupportedParameter(f"{name} is not supported", param=name)
        choice = self.tool_choice
        if choice not in (None, "none", "auto") and not self.tools:
            raise InvalidRequest("tool_choice: needs tools", param="tool_choice")
        if isinstance(choice, ToolChoiceFunction) and choice.name not in self.tool_names():
            raise InvalidRequest(
                f"tool_choice: no function named {choice.name!r} in tools", param="tool_choice"
            )
        names = self.tool_names()
        if len(set(names)) != len(names):
            raise InvalidRequest("tools: two functions have the same name", param="tools")

    # ----- translation into the runtime's terms -----
    def tool_names(self) -> list[str]:
        return [tool.name for tool in self.tools or ()]

    def tool_functions(self) -> tuple[ToolFunction, ...]:
        functions = tuple(tool.function() for tool in self.tools or ())
        for index, function in enumerate(functions):
            check_json_schema(function.parameters, f"tools[{index}].parameters")
        return functions

    def tool_choice_value(self) -> str:
        if isinstance(self.tool_choice, ToolChoiceFunction):
            return self.tool_choice.name
        return self.tool_choice or "auto"

    def tool_choice_echo(self) -> str | dict[str, str]:
        if isinstance(self.tool_choice, ToolChoiceFunction):
            return {"type": "function", "name": self.tool_choice.name}
        return self.tool_choice or "auto"

    def sampling(self) -> SamplingParams:
        return SamplingParams(
            max_tokens=self.max_output_tokens, temperature=self.temperature, top_p=self.top_p
        )

    def constraint(self) -> JsonSchemaConstraint | None:
        fmt = self.text.format if self.text is not None else None
        if fmt is None or fmt.type == "text":
            return None
        if fmt.type == "json_object":
            return JsonSchemaConstraint({"type": "object"})
        schema = fmt.json_schema or {}
        check_json_schema(schema, "text.format.schema")
        return JsonSchemaConstraint(close_objects(schema) if fmt.strict else schema)

    def text_echo(self) -> dict[str, Any]:
        fmt = self.text.format if self.text is not None else None
        echo: dict[str, Any] = {
            "format": {"type": "text"}
            if fmt is None
            else fmt.model_dump(by_alias=True, exclude_none=True)
        }
        if self.text is not None and self.text.verbosity is not None:
            echo["verbosity"] = self.text.verbosity
        return echo

    def instruction_messages(self) -> tuple[ChatMessage, ...]:
        return (ChatMessage("system", self.instructions),) if self.instructions else ()

    def input_messages(self, prior: tuple[ChatMessage, ...]) -> tuple[ChatMessage, ...]:
        """The input as chat turns, after `prior` (the stored conversation): a function call
        joins the assistant turn right before it, and each output must answer a call."""
        turns: list[ChatMessage] = []
        for index, item in enumerate(self.input):
            if item.type == "reasoning":
                continue
            if item.type == "message":
                assert item.role is not None
                turns.append(ChatMessage(item.role, _text(item.content)))
            elif item.type == "function_call":
                call = ToolCall(
                    id=item.call_id or "", name=item.name or "", arguments=item.arguments or ""
                )
                if turns and turns[-1].role == "assistant":
                    last = turns.pop()
                    call_turn = dataclasses.replace(last, tool_calls=(*last.tool_calls, call))
                else:
                    call_turn = ChatMessage("assistant", "", tool_calls=(call,))
                turns.append(call_turn)
            else:
                turns.append(_result(item, index, (*prior, *turns)))
        if not turns and not prior:
            raise InvalidRequest(
                "input: reasoning items alone leave nothing to answer", param="input"
            )
        return tuple(turns)


def _result(item: InputItem, index: int, before: tuple[ChatMessage, ...]) -> ChatMessage:
    """The tool turn of a function_call_output, which must answer a call made before it."""
    call_id = item.call_id or ""
    name = next((c.name for turn in before for c in turn.tool_calls if c.id == call_id), None)
    if name is None:
        raise InvalidRequest(
            f"input.{index}.call_id: no function_call with call_id {call_id!r} before this "
            "function_call_output",
            param=f"input.{index}.call_id",
        )
    return ChatMessage("tool", _text(item.output), name=name, tool_call_id=call_id)
