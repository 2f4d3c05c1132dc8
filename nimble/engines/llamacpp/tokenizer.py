"""The model's tokenizer through llama.cpp's listener (`/apply-template`, `/tokenize`,
`/detokenize`): text or a conversation to the ids llama.cpp's completion sees, ids back to
text, and a prompt's token count, exact or (`prompt_bound`) an upper bound without tokenizing.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from nimble.engines.openai_wire import Json, template_body
from nimble.types import ChatMessage, GenerateRequest, SamplingParams, TokenizeRequest, Tokens

Post = Callable[[str, Json], Awaitable[Json]]  # the engine's POST to its listener


class ServerTokenizer:
    """Tokens as the llama.cpp server of the engine counts them."""

    def __init__(self, post: Post):
        self._post = post

    async def tokenize(self, request: TokenizeRequest) -> Tokens:
        """The ids llama.cpp's completion sees: a conversation through the template (the
        model's BOS added as llama.cpp adds it; a last assistant message stays open, as
        llama.cpp's chat completions continue it), a prompt with its specials if asked."""
        text, special = request.prompt or "", request.add_special_tokens
        if request.chat is not None:
            body = template_body(request.chat)
            body["add_generation_prompt"] = request.add_generation_prompt
            text, special = str((await self._post("/apply-template", body))["prompt"]), True
        body = {**_tokenize_body(text, special), "with_pieces": True}
        tokens = (await self._post("/tokenize", body))["tokens"]
        return Tokens(
            tuple(int(t["id"]) for t in tokens), tuple(text_of(t["piece"]) for t in tokens)
        )

    async def detokenize(self, ids: tuple[int, ...]) -> str:
        return str((await self._post("/detokenize", {"tokens": list(ids)}))["content"])

    async def exact(self, request: GenerateRequest) -> int:
        # /tokenize's path: the count is the same as a client's /tokenize gets
        if isinstance(request.prompt, tuple):
            return len(request.prompt)
        chat = request if request.messages is not None else None
        return len((await self.tokenize(TokenizeRequest(request.prompt, chat))).ids)

    async def count(self, text: str, special: bool) -> int:
        return len((await self._post("/tokenize", _tokenize_body(text, special)))["tokens"])

    async def plain_token(self) -> int:
        """A token of whole text: "a"."""
        return (await self.tokenize(TokenizeRequest("a", add_special_tokens=False))).ids[0]

    async def texts(self, ids: tuple[int, ...]) -> tuple[str, ...]:
        """The text of each token id (special tokens as written in the vocabulary)."""
        body = {"content": list(ids), "with_pieces": True}
        return tuple(text_of(t["piece"]) for t in (await self._post("/tokenize", body))["tokens"])

    async def template_cost(self) -> tuple[int, int]:
        """Tokens the chat template adds: for one empty message (with any default system
        prompt), and for each further message."""

        def empty(roles: tuple[str, ...]) -> GenerateRequest:
            messages = tuple(ChatMessage(role, "") for role in roles)  # type: ignore[arg-type]
            return GenerateRequest("calibrate", SamplingParams(), messages=messages)

        one = await self.exact(empty(("user",)))
        three = await self.exact(empty(("user", "assistant", "user")))
        return one, max(0, three - one) // 2 + 2


def _tokenize_body(text: str, special: bool) -> Json:
    """`/tokenize` with the flags llama.cpp's completion path tokenizes with (BOS if the
    model adds one and `special`; special tokens written in the text parsed as such)."""
    return {"content": text, "add_special": special, "parse_special": True}


def prompt_bound(request: GenerateRequest, template_cost: tuple[int, int] | None) -> int | None:
    """An upper bound of the prompt's tokens (None: unknown). Every token covers at least
    one byte of text, so bytes bound tokens; the template's own tokens (`template_cost`) were
    measured at warm-up."""
    if isinstance(request.prompt, tuple):
        return len(request.prompt)
    if request.messages is None:
        return len((request.prompt or "").encode()) + 2  # BOS/EOS
    if template_cost is None or request.tools:
        return None  # the template writes the tools: count exactly
    first, each = template_cost
    text = sum(len(m.content.encode()) + len((m.name or "").encode()) for m in request.messages)
    return first + each * (len(request.messages) - 1) + text


def text_of(piece: str | list[int]) -> str:
    """A token's text; a token that is part of a UTF-8 character (llama.cpp gives its
    bytes) with those bytes escaped (`\\xe6`)."""
    return piece if isinstance(piece, str) else bytes(piece).decode("utf-8", "backslashreplace")
