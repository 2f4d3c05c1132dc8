"""A generation request on its way to the engine and back: the checks before it takes a slot
(parameters, token ids, the context window), the tools and the reasoning format it is run
with, the stages its stream goes through (reasoning split, tool calls read back and gated),
and what each chunk writes to the request's record. `Runtime._generate` puts them in order."""

from __future__ import annotations

import time
from collections.abc import AsyncGenerator, Awaitable, Callable

from nimble.engines import Tokenizer
from nimble.errors import ContextLengthExceeded, InvalidRequest, UnsupportedParameter
from nimble.observability.record import RequestRecord
from nimble.runtime import tokens
from nimble.runtime.reasoning import ReasoningFormat, reasoning_format, split_reasoning
from nimble.runtime.served import ServedModel
from nimble.runtime.tools import ToolFormat, parse_calls, prepare, tool_format, uses_tools
from nimble.runtime.tools.gate import gate_calls
from nimble.types import GenerateRequest, GenerationChunk, SamplingParams, ToolCallConstraint

Stream = AsyncGenerator[GenerationChunk, None]


def check_params(model: ServedModel, params: SamplingParams, max_n: int) -> None:
    if params.n > max_n:
        raise InvalidRequest(f"n: at most {max_n} choices per request (got {params.n})", param="n")
    if params.top_logprobs is not None and not model.info.supports_logprobs:
        raise UnsupportedParameter(
            f"logprobs: the {model.spec.engine} engine of model `{model.spec.id}` does not "
            "return logprobs",
            param="logprobs",
        )


async def check_context(model: ServedModel, request: GenerateRequest) -> None:
    """Refuse, before the engine runs, token ids outside the vocabulary, and a prompt
    (plus max_tokens) beyond the window."""
    if isinstance(request.prompt, tuple):
        _check_token_ids(model, request.prompt)
    window = model.info.context_length
    wanted = request.params.max_tokens or 0
    # a bound that fits is enough (no need to tokenize twice): at most the window less
    # the completion, and always less than the window
    prompt_tokens = await model.generator.prompt_tokens(request, window - max(wanted, 1))
    if prompt_tokens + wanted > window or prompt_tokens >= window:
        where = "messages" if request.messages is not None else "prompt"
        detail = (
            f"you requested {prompt_tokens + wanted} tokens ({prompt_tokens} in the "
            f"{where}, {wanted} in the completion: max_tokens)"
            if wanted
            else f"your {where} has {prompt_tokens} tokens"
        )
        raise ContextLengthExceeded(
            f"This model's maximum context length is {window} tokens. However, {detail}. "
            f"Please reduce the length of the {where} or the completion.",
            param="max_tokens" if wanted and prompt_tokens < window else where,
        )


def _check_token_ids(model: ServedModel, ids: tuple[int, ...]) -> None:
    """A prompt of token ids: not empty, each id in the model's vocabulary (where the engine
    knows its size; else the engine refuses an unknown id itself)."""
    if not ids:
        raise InvalidRequest("prompt: a list of token ids must not be empty", param="prompt")
    size = model.engine.vocab_size() if isinstance(model.engine, Tokenizer) else None
    tokens.check_ids(model, ids, size, "prompt")


def with_tools(
    model: ServedModel, request: GenerateRequest, tool_parser: str | None
) -> tuple[GenerateRequest, ToolFormat | None]:
    """The request with its tools written in for the model, and the format its calls are
    read back in (None: no tools offered). `tool_parser`: the operator's, over the model's."""
    if not uses_tools(request):
        return request, None
    fmt = tool_format(tool_parser or model.spec.options.get("tool_parser"))
    offered = bool(request.tools) and request.tool_choice != "none"
    return prepare(request, fmt, model.info.renders_tools), fmt if offered else None


def reasoning_of(
    model: ServedModel, request: GenerateRequest, reasoning_parser: str | None
) -> ReasoningFormat | None:
    """The model's reasoning format, for a chat request whose output may think: not for
    completions (raw text, as vLLM), nor under a grammar that binds from the first token
    (response_format, guided_*, a forced tool call), which leaves no room to."""
    constraint = request.constraint
    if request.messages is None or (
        constraint is not None
        and not (isinstance(constraint, ToolCallConstraint) and constraint.lazy)
    ):
        return None
    return reasoning_format(reasoning_parser or model.spec.options.get("reasoning_parser"))


def stages(
    model: ServedModel,
    request: GenerateRequest,
    record: RequestRecord,
    thinking: ReasoningFormat | None,
    calls_format: ToolFormat | None,
) -> list[Stream]:
    """The engine's stream, then each wrapper over the one before (the last is read): the
    reasoning split first (tool calls are read from the answer only), then the calls read
    back and, with a key that limits them, gated."""
    chain: list[Stream] = [model.generator.generate(request)]
    if thinking is not None:
        ends = (calls_format.begin,) if calls_format is not None else ()
        chain.append(split_reasoning(chain[-1], thinking, ends))
    if calls_format is not None:
        chain.append(parse_calls(chain[-1], calls_format))
        allowed = record.tools_callable  # the key's scope: the policy gate
        if allowed is not None:
            dropped = record.dropped_tool_calls
            chain.append(gate_calls(chain[-1], allowed, dropped, key=record.key_id))
    return chain


def closer(chain: list[Stream]) -> Callable[[], Awaitable[None]]:
    """Close `chain` (the engine's stream and its wrappers), last first."""

    async def close() -> None:
        for stage in reversed(chain):
            await stage.aclose()

    return close


def counter(model: ServedModel, request: GenerateRequest) -> Callable[[], Awaitable[int]]:
    """The exact count of the prompt's tokens, when the engine's own count is cut off (or
    comes only at the end)."""

    async def count() -> int:
        return await model.generator.prompt_tokens(request, -1)

    return count


def note(record: RequestRecord, chunk: GenerationChunk) -> None:
    """What a chunk tells the request's record: its usage, the first and last token's
    times, and each choice's finish."""
    now = time.monotonic()
    if chunk.usage is not None:
        # += : a request with several prompts makes several runtime calls
        record.prompt_tokens += chunk.usage.prompt_tokens
        record.completion_tokens += chunk.usage.completion_tokens
        record.cached_tokens += chunk.usage.cached_tokens or 0
        return
    if chunk.text or chunk.reasoning or chunk.logprobs:
        if record.first_token_at is None:
            record.first_token_at = now
        record.last_token_at = now
    if chunk.finish_reason is not None:
        record.finish_reasons.append(chunk.finish_reason)
