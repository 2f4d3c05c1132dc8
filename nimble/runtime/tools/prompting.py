"""Prepare a chat request with tools for an engine: how the tools reach the prompt, and
which grammar binds the output.

A chat template that renders tools itself (Qwen2.5, Llama 3.1, Mistral...) gets the tools
and the conversation's calls and results as they are. For one that cannot (SmolLM2's), the
format's own instructions become (part of) the system message, earlier calls are written
back in the format's markup and tool results as `<tool_response>` user turns.
"""

from __future__ import annotations

import dataclasses

from nimble.errors import InvalidRequest, UnsupportedParameter
from nimble.runtime.tools.formats import ToolFormat
from nimble.types import ChatMessage, GenerateRequest, ToolCallConstraint, ToolFunction


def prepare(request: GenerateRequest, fmt: ToolFormat, renders_tools: bool) -> GenerateRequest:
    messages = request.messages or ()
    choice = request.tool_choice
    offered = request.tools if choice != "none" else ()
    if not renders_tools:
        messages = _written_out(messages, fmt, offered)
        return dataclasses.replace(
            request, messages=messages, tools=(), constraint=constraint(request, fmt)
        )
    return dataclasses.replace(request, tools=offered, constraint=constraint(request, fmt))


def constraint(request: GenerateRequest, fmt: ToolFormat) -> ToolCallConstraint | None:
    choice = request.tool_choice
    if choice == "none":
        return None
    if not request.tools:
        if choice == "auto":
            return None
        raise InvalidRequest(f"tool_choice {choice!r} needs tools", param="tool_choice")
    tools = request.tools
    if choice not in ("auto", "required"):
        tools = tuple(tool for tool in tools if tool.name == choice)
        if not tools:
            raise InvalidRequest(
                f"tool_choice: function {choice!r} is not among the declared tools",
                param="tool_choice",
            )
    forced = choice != "auto"
    if not fmt.json_calls:
        if forced:
            raise UnsupportedParameter(
                f"tool_choice {choice!r} needs constrained decoding, which the {fmt.name} "
                "tool-call format does not have; use tool_choice auto or another tool_parser",
                param="tool_choice",
            )
        return None
    if not forced and not fmt.begin:
        return None  # nothing marks where calls start: auto output stays free
    # a named choice is one call of that function (as OpenAI and vLLM answer), so the
    # grammar ends after it: a small model would otherwise write the same call again
    # until max_tokens
    parallel = request.parallel_tool_calls and choice in ("auto", "required")
    return ToolCallConstraint(
        call_schema=fmt.call_schema(tools, parallel),
        begin=fmt.grammar_begin,
        end=fmt.grammar_end,
        separator=fmt.grammar_separator,
        max_calls=1 if (fmt.array or not parallel) else None,
        lazy=not forced,
    )


def _written_out(
    messages: tuple[ChatMessage, ...], fmt: ToolFormat, offered: tuple[ToolFunction, ...]
) -> tuple[ChatMessage, ...]:
    out: list[ChatMessage] = []
    for message in messages:
        if message.role == "assistant" and message.tool_calls:
            calls = fmt.render_calls(message.tool_calls)
            text = f"{message.content}\n{calls}" if message.content else calls
            out.append(ChatMessage("assistant", text))
        elif message.role == "tool":
            result = fmt.render_result(message)
            if out and out[-1].role == "user" and out[-1].content.startswith("<tool_response>"):
                out[-1] = ChatMessage("user", f"{out[-1].content}\n{result}")
            else:
                out.append(ChatMessage("user", result))
        else:
            out.append(ChatMessage(message.role, message.content, message.name))
    if offered:
        instructions = fmt.instructions(offered)
        if out and out[0].role in ("system", "developer"):
            out[0] = ChatMessage(out[0].role, f"{out[0].content}\n\n{instructions}")
        else:
            out.insert(0, ChatMessage("system", instructions))
    return tuple(out)
