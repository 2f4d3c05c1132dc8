"""`POST /tokenize` and `POST /detokenize`, in vLLM's shapes."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field, field_validator

from nimble.api.schemas.chat import MessageIn, ToolDef, declared_tools
from nimble.api.schemas.common import Strict
from nimble.errors import InvalidRequest, UnsupportedParameter
from nimble.types import GenerateRequest, SamplingParams, TokenizeRequest


class TokenizeBody(Strict):
    """vLLM's `TokenizeCompletionRequest` (`prompt`) or `TokenizeChatRequest` (`messages`,
    rendered by the model's chat template exactly as a chat completion renders them: the
    count equals that completion's `usage.prompt_tokens`). One of the two."""

    model: str = Field(min_length=1, description="Id of a served model (see /v1/models).")
    prompt: str | None = None
    messages: list[MessageIn] | None = Field(default=None, min_length=1)
    add_special_tokens: bool | None = Field(
        default=None,
        description="The tokenizer's special tokens (BOS...) on top of what a chat template "
        "writes. Default: true with `prompt`, false with `messages` (vLLM's defaults).",
    )
    add_generation_prompt: bool = Field(
        default=True, description="`messages`: open the assistant's turn after them."
    )
    continue_final_message: bool = Field(
        default=False,
        description="`messages`: leave the last (assistant) message open, to be continued; "
        "needs `add_generation_prompt: false`.",
    )
    return_token_strs: bool | None = Field(
        default=False, description="Also answer each token's text (`token_strs`)."
    )
    tools: list[ToolDef] | None = Field(
        default=None, description="`messages`: tools, shown as a chat completion shows them."
    )
    # vLLM's that nimble does not take: a 400 naming them when set
    chat_template: str | None = None
    chat_template_kwargs: dict[str, Any] | None = None
    mm_processor_kwargs: dict[str, Any] | None = None
    media_io_kwargs: dict[str, Any] | None = None

    def tokenize_request(self, request_id: str) -> TokenizeRequest:
        for name in ("chat_template", "chat_template_kwargs", "mm_processor_kwargs"):
            if getattr(self, name):
                raise UnsupportedParameter(f"{name} is not supported", param=name)
        if self.media_io_kwargs:
            raise UnsupportedParameter("media_io_kwargs is not supported", param="media_io_kwargs")
        if self.messages is None:
            if self.prompt is None:
                raise InvalidRequest("one of `prompt` or `messages` is required", param="prompt")
            if self.tools:
                raise InvalidRequest("tools: only with `messages`", param="tools")
            special = True if self.add_special_tokens is None else self.add_special_tokens
            return TokenizeRequest(prompt=self.prompt, add_special_tokens=special)
        if self.prompt is not None:
            raise InvalidRequest("give `prompt` or `messages`, not both", param="prompt")
        if self.continue_final_message:
            if self.add_generation_prompt:
                raise InvalidRequest(
                    "continue_final_message and add_generation_prompt cannot both be true",
                    param="continue_final_message",
                )
            if self.messages[-1].role != "assistant":
                raise InvalidRequest(
                    "continue_final_message: the last message must be the assistant's",
                    param="continue_final_message",
                )
        tools = declared_tools(self.tools)
        chat = GenerateRequest(
            request_id,
            SamplingParams(),
            messages=tuple(m.chat_message() for m in self.messages),
            tools=tools,
            tool_choice="auto" if tools else "none",
        )
        return TokenizeRequest(
            chat=chat,
            add_special_tokens=bool(self.add_special_tokens),
            add_generation_prompt=self.add_generation_prompt,
            continue_final_message=self.continue_final_message,
        )


class TokenizeResponse(BaseModel):
    count: int
    max_model_len: int = Field(description="The model's context window, in tokens.")
    tokens: list[int]
    token_strs: list[str] | None = Field(
        default=None, description="With `return_token_strs`: each token's text."
    )


class DetokenizeBody(Strict):
    model: str = Field(min_length=1, description="Id of a served model (see /v1/models).")
    tokens: list[int] = Field(
        description="Token ids of the model's vocabulary (an id outside it: 400)."
    )

    @field_validator("tokens")
    @classmethod
    def _ids(cls, tokens: list[int]) -> list[int]:
        wrong = next((t for t in tokens if not 0 <= t < 2**63), None)
        if wrong is not None:
            raise ValueError(f"{wrong} is not a token id (ids are 0 or more)")
        return tokens

    def ids(self) -> tuple[int, ...]:
        return tuple(self.tokens)


class DetokenizeResponse(BaseModel):
    prompt: str
