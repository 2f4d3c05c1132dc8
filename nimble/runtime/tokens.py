"""The policy around an engine's tokenizer: `/tokenize` of a conversation sees the prompt a
chat completion would (tools written in as for generation), `/detokenize` refuses ids
outside the vocabulary, and documents are cut to a number of tokens (Cohere's
`max_tokens_per_doc`)."""

from __future__ import annotations

import asyncio
import dataclasses

from nimble.engines import Tokenizer
from nimble.errors import InvalidRequest
from nimble.runtime.served import ServedModel
from nimble.runtime.tools import prepare, tool_format, uses_tools
from nimble.types import RankRequest, Task, TokenizeRequest, Tokens


async def tokenize(model: ServedModel, request: TokenizeRequest, tool_parser: str | None) -> Tokens:
    """`tool_parser`: the service-wide override of the model's tool-call format."""
    tokenizer = model.tokenizer
    chat = request.chat
    if chat is not None:
        if Task.CHAT not in model.spec.tasks:
            raise InvalidRequest(
                f"model `{model.spec.id}` does not serve chat, so it has no chat template to "
                "apply to messages; send a prompt",
                param="messages",
            )
        if uses_tools(chat):  # the prompt of a chat completion with these tools
            fmt = tool_format(tool_parser or model.spec.options.get("tool_parser"))
            chat = prepare(chat, fmt, model.info.renders_tools)
            request = dataclasses.replace(request, chat=chat)
    return await tokenizer.tokenize(request)


async def detokenize(model: ServedModel, ids: tuple[int, ...]) -> str:
    tokenizer = model.tokenizer
    check_ids(model, ids, tokenizer.vocab_size(), "tokens")
    return await tokenizer.detokenize(ids)


def check_ids(model: ServedModel, ids: tuple[int, ...], size: int | None, param: str) -> None:
    """Each id in the model's vocabulary of `size` ids (None: not known, only negative ids
    are refused); a 400 naming `param` for the first one outside."""
    outside = next((i for i in ids if i < 0 or (size is not None and i >= size)), None)
    if outside is not None:
        ids_are = f" (its vocabulary has {size} ids: 0 to {size - 1})" if size else ""
        raise InvalidRequest(
            f"{param}: {outside} is not a token id of model `{model.spec.id}`{ids_are}",
            param=param,
        )


async def cut_documents(model: ServedModel, request: RankRequest, limit: int) -> RankRequest:
    """Each document longer than `limit` tokens (the model's own, without special tokens)
    cut to its first `limit`: the text of those tokens."""
    try:
        tokenizer = model.tokenizer
    except InvalidRequest as exc:
        raise InvalidRequest(
            f"max_tokens_per_doc: model `{model.spec.id}` cannot cut documents to a number of "
            "tokens (its engine does not expose its tokenizer); leave it out",
            param="max_tokens_per_doc",
        ) from exc
    documents = await asyncio.gather(*(_cut(tokenizer, d, limit) for d in request.documents))
    return dataclasses.replace(request, documents=tuple(documents))


async def _cut(tokenizer: Tokenizer, text: str, limit: int) -> str:
    ids = (await tokenizer.tokenize(TokenizeRequest(prompt=text, add_special_tokens=False))).ids
    return text if len(ids) <= limit else await tokenizer.detokenize(ids[:limit])
