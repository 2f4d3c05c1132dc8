"""A request's input as the texts that input rails read, and the request rebuilt from them
after a redaction.

Every text the model will read from the client is a piece: each message's content, of
every role (a system prompt, a tool's result and an earlier answer are as much the
client's words as the user's turn), the arguments of each tool call in an assistant turn,
and a completion's prompt (token ids are read as their text). The tool declarations
(names, descriptions, schemas) are not: they describe functions, they are not the
conversation.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from nimble.types import GenerateRequest

# where a piece came from: ("prompt",), ("message", i) or ("call", i, j)
Place = tuple[str | int, ...]


@dataclass(frozen=True)
class Piece:
    place: Place
    role: str  # the message's role; a completion's prompt reads as `user`
    text: str


def pieces(request: GenerateRequest, prompt_text: str | None = None) -> list[Piece]:
    """The texts of `request` that rails read (empty texts left out). `prompt_text`: the
    text of a prompt given as token ids."""
    found: list[Piece] = []
    if request.messages is not None:
        for i, message in enumerate(request.messages):
            found.append(Piece(("message", i), message.role, message.content))
            for j, call in enumerate(message.tool_calls):
                found.append(Piece(("call", i, j), "assistant", call.arguments))
    elif isinstance(request.prompt, str):
        found.append(Piece(("prompt",), "user", request.prompt))
    elif prompt_text is not None:
        found.append(Piece(("prompt",), "user", prompt_text))
    return [piece for piece in found if piece.text]


def rebuild(request: GenerateRequest, texts: dict[Place, str]) -> GenerateRequest:
    """`request` with the pieces at `texts`' places replaced (a redacted prompt of token
    ids becomes its redacted text)."""
    if not texts:
        return request
    if ("prompt",) in texts:
        return dataclasses.replace(request, prompt=texts[("prompt",)])
    assert request.messages is not None
    messages = list(request.messages)
    for i, message in enumerate(messages):
        content = texts.get(("message", i), message.content)
        calls = tuple(
            dataclasses.replace(call, arguments=texts.get(("call", i, j), call.arguments))
            for j, call in enumerate(message.tool_calls)
        )
        if content != message.content or calls != message.tool_calls:
            messages[i] = dataclasses.replace(message, content=content, tool_calls=calls)
    return dataclasses.replace(request, messages=tuple(messages))
