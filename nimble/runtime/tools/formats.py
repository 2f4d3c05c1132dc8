"""How a model family writes tool calls: the markup, the prompt that teaches it, the
grammar that forces it. One `ToolFormat` per family, in a registry by name.

- hermes (Qwen2.5/3, Hermes, SmolLM2 and other ChatML models): each call is
  `<tool_call>\\n{"name": ..., "arguments": {...}}\\n</tool_call>`.
- llama3_json (Llama 3.1-3.3): `{"name": ..., "parameters": {...}}`, calls joined by `; `,
  optionally after `<|python_tag|>`.
- mistral: `[TOOL_CALLS][{"name": ..., "arguments": {...}}, ...]`.
- pythonic (Llama 3.2/4, some others): `[get_weather(city="Paris"), ...]`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from nimble import jsontext
from nimble.structured.json_schema import close_objects, tool_json
from nimble.types import ChatMessage, ToolCall, ToolFunction


@dataclass(frozen=True)
class ToolFormat:
    name: str
    # markers: `begin` opens the calls (empty: calls are the whole output), `end` closes one
    begin: str
    end: str = ""
    args_key: str = "arguments"
    array: bool = False  # all calls inside one JSON array
    json_calls: bool = True  # False: pythonic calls, read with Python's parser
    # constrained output: the text around each call, and between calls
    grammar_begin: str = ""
    grammar_end: str = ""
    grammar_separator: str = ""
    strip: tuple[str, ...] = ()  # markers that may appear and carry nothing

    def instructions(self, tools: tuple[ToolFunction, ...]) -> str:
        """A system prompt that teaches this markup, for templates that cannot show tools."""
        listing = "\n".join(json.dumps(tool_json(tool), ensure_ascii=False) for tool in tools)
        example = self.render_calls(
            (ToolCall("example", "function_name", '{"argument": "value"}'),)
        )
        return (
            "You can call functions to help with the user's request. They are described "
            f"here as JSON schemas:\n<tools>\n{listing}\n</tools>\n\n"
            "To call a function, reply with the call only, written exactly like this:\n"
            f"{example}\nYou may make several calls in one reply. When you have what you "
            "need, answer the user in plain text."
        )

    def render_calls(self, calls: tuple[ToolCall, ...]) -> str:
        """An assistant turn's calls, as the model would have written them."""
        if not self.json_calls:
            return "[" + ", ".join(_pythonic(call) for call in calls) + "]"
        objects = [_call_json(call, self.args_key) for call in calls]
        if self.array:
            return self.begin + "[" + ", ".join(objects) + "]"
        if self.end:
            return "\n".join(f"{self.begin}\n{text}\n{self.end}" for text in objects)
        return self.begin + "; ".join(objects)

    def render_result(self, message: ChatMessage) -> str:
        return f"<tool_response>\n{message.content}\n</tool_response>"

    def call_schema(self, tools: tuple[ToolFunction, ...], parallel: bool) -> dict[str, Any]:
        """The JSON schema of what one constrained call (or, for arrays, all calls) is."""
        one = [
            {
                "type": "object",
                "properties": {
                    "name": {"const": tool.name},
                    self.args_key: close_objects(tool.parameters or {"type": "object"}),
                },
                "required": ["name", self.args_key],
                "additionalProperties": False,
            }
            for tool in tools
        ]
        schema: dict[str, Any] = one[0] if len(one) == 1 else {"anyOf": one}
        if self.array:
            schema = {"type": "array", "items": schema, "minItems": 1}
            if not parallel:
                schema["maxItems"] = 1
        return schema


def _call_json(call: ToolCall, args_key: str) -> str:
    try:
        arguments = jsontext.loads(call.arguments or "{}")
    except ValueError:
        arguments = call.arguments
    return json.dumps({"name": call.name, args_key: arguments}, ensure_ascii=False)


def _pythonic(call: ToolCall) -> str:
    try:
        arguments = jsontext.loads(call.arguments or "{}")
    except ValueError:
        arguments = {}
    if not isinstance(arguments, dict):
        arguments = {}
    parts = ", ".join(f"{key}={_python_literal(value)}" for key, value in arguments.items())
    return f"{call.name}({parts})"


def _python_literal(value: Any) -> str:
    if value is None:
        return "None"
    if isinstance(value, bool):
        return "True" if value else "False"
    if isinstance(value, list):
        return "[" + ", ".join(_python_literal(v) for v in value) + "]"
    if isinstance(value, dict):
        items = ", ".join(f"{json.dumps(k)}: {_python_literal(v)}" for k, v in value.items())
        return "{" + items + "}"
    return json.dumps(value, ensure_ascii=False)


FORMATS: dict[str, ToolFormat] = {
    "hermes": ToolFormat(
        name="hermes",
        begin="<tool_call>",
        end="</tool_call>",
        grammar_begin="<tool_call>\n",
        grammar_end="\n</tool_call>",
        grammar_separator="\n",
    ),
    "llama3_json": ToolFormat(
        name="llama3_json",
        begin="",
        args_key="parameters",
        grammar_separator="; ",
        strip=("<|python_tag|>",),
    ),
    "mistral": ToolFormat(
        name="mistral",
        begin="[TOOL_CALLS]",
        array=True,
        grammar_begin="[TOOL_CALLS]",
    ),
    "pythonic": ToolFormat(name="pythonic", begin="", json_calls=False),
}
DEFAULT_FORMAT = "hermes"
