"""Translation between nimble's types and the OpenAI-style JSON that engine servers speak,
shared by the llama.cpp and vLLM engines.

Pure functions and one small stateful mapper, no engine import: what goes in (`message_dicts`,
`request_body`, `constraint_fields`), what comes out (`ChunkMapper`), and how llama.cpp's
errors read (`error_from`; vLLM's own error bodies are read in `engines/vllm/wire.py`).
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from typing import Any, Literal

from nimble.errors import (
    ContextLengthExceeded,
    EngineError,
    InvalidRequest,
    NimbleError,
    Unavailable,
    UnsupportedParameter,
)
from nimble.structured import gbnf, gbnf_regex
from nimble.structured.json_schema import llguidance_schema, tool_json
from nimble.types import (
    ChatMessage,
    ChoiceConstraint,
    Constraint,
    GenerateRequest,
    GenerationChunk,
    GrammarConstraint,
    JsonSchemaConstraint,
    RegexConstraint,
    TokenLogprob,
    ToolCallConstraint,
    TopLogprob,
    Usage,
)

# llama.cpp seeds are uint32 and 0xFFFFFFFF means "pick a random seed": fold into the rest
_SEED_MODULUS = 0xFFFFFFFF
# what OpenAI reports for a token too unlikely to have a finite logprob
_UNLIKELY = -9999.0
_TRIGGER_WORD = 1  # llama.cpp's COMMON_GRAMMAR_TRIGGER_TYPE_WORD
_FIELD = re.compile(r"Field '(\w+)'")
# llama.cpp error `type` -> nimble error; anything else is a server-side fault
_ERRORS: dict[str, type[NimbleError]] = {
    "invalid_request_error": InvalidRequest,
    "exceed_context_size_error": ContextLengthExceeded,
    "not_supported_error": UnsupportedParameter,
    "unavailable_error": Unavailable,
}

Json = dict[str, Any]


def message_dicts(messages: tuple[ChatMessage, ...]) -> list[Json]:
    """Chat messages as llama.cpp wants them; it applies the model's own chat template."""
    out = []
    for message in messages:
        item: Json = {"role": message.role, "content": message.content}
        if message.name is not None:
            item["name"] = message.name
        if message.tool_calls:
            item["tool_calls"] = [
                {
                    "id": call.id,
                    "type": "function",
                    "function": {"name": call.name, "arguments": call.arguments},
                }
                for call in message.tool_calls
            ]
        if message.tool_call_id is not None:
            item["tool_call_id"] = message.tool_call_id
        out.append(item)
    return out


def template_body(request: GenerateRequest) -> Json:
    """The body of llama.cpp's /apply-template: the conversation, and the tools if any."""
    body: Json = {"messages": message_dicts(request.messages or ())}
    if request.tools:
        body["tools"] = [tool_json(tool) for tool in request.tools]
    return body


def request_body(request: GenerateRequest, prompt: str | None = None) -> Json:
    """The JSON body for llama.cpp: always streamed, always with usage at the end. With
    `prompt` (a conversation already rendered by the template) it is a completion body."""
    params = request.params
    body: Json = {
        "stream": True,
        "stream_options": {"include_usage": True},
        "n": params.n,
        "presence_penalty": params.presence_penalty,
        "frequency_penalty": params.frequency_penalty,
    }
    chat = request.messages is not None and prompt is None
    if chat:
        body["messages"] = message_dicts(request.messages or ())
    elif prompt is not None:
        body["prompt"] = prompt
    else:  # a text, or token ids as a JSON array (both servers take them as they are)
        given = request.prompt or ""
        body["prompt"] = given if isinstance(given, str) else list(given)
    optional = {"max_tokens": params.max_tokens, "temperature": params.temperature}
    optional["top_p"] = params.top_p
    body.update({key: value for key, value in optional.items() if value is not None})
    if params.stop:
        body["stop"] = list(params.stop)
    if params.seed is not None:
        body["seed"] = params.seed % _SEED_MODULUS
    if params.top_logprobs is not None:
        # llama.cpp sends no logprobs at all for 0 alternatives: ask for 1, drop it later
        top = max(params.top_logprobs, 1)
        body.update({"logprobs": True, "top_logprobs": top} if chat else {"logprobs": top})
    return body


def constraint_fields(constraint: Constraint, to_grammar: Callable[[str], str]) -> Json:
    """llama.cpp's sampling fields for a constraint: `json_schema` (llama.cpp converts
    it), or a GBNF `grammar`, lazy for tool calls the model may or may not make."""
    match constraint:
        case JsonSchemaConstraint(schema=schema):
            return {"json_schema": llguidance_schema(schema)}
        case RegexConstraint(pattern=pattern):
            return {"grammar": gbnf_regex.regex_grammar(pattern)}
        case ChoiceConstraint(choices=choices):
            return {"grammar": gbnf.choice_grammar(choices)}
        case GrammarConstraint(grammar=grammar):
            return {"grammar": grammar}
        case ToolCallConstraint() as calls:
            call = to_grammar(json.dumps(llguidance_schema(calls.call_schema)))
            grammar = gbnf.tool_calls_grammar(
                call, calls.begin, calls.end, calls.separator, calls.max_calls
            )
            fields: Json = {"grammar": grammar}
            if calls.lazy and calls.begin:
                trigger = calls.begin.strip() or calls.begin
                fields["grammar_lazy"] = True
                fields["grammar_triggers"] = [{"type": _TRIGGER_WORD, "value": trigger}]
            return fields
    raise AssertionError(f"unknown constraint {constraint!r}")


def error_from(payload: Json, param: str) -> NimbleError:
    """Map an error object from llama.cpp (bare or under "error") to nimble's taxonomy."""
    inner = payload.get("error")
    error: Json = inner if isinstance(inner, dict) else payload
    message = str(error.get("message") or "llama.cpp reported an error without a message")
    kind = str(error.get("type", ""))
    error_class = _ERRORS.get(kind)
    if error_class is None:
        return EngineError(f"llama.cpp: {message}")
    if error_class is ContextLengthExceeded:
        return ContextLengthExceeded(message, param=param)
    field = _FIELD.search(message)
    return error_class(message, param=field.group(1) if field else None)


def is_error(payload: Json) -> bool:
    return "error" in payload or ("code" in payload and "message" in payload)


class ChunkMapper:
    """Turns llama.cpp's stream into GenerationChunks and totals usage over all choices.

    llama.cpp sends one usage object per choice (each with the same prompt count), so the
    completion tokens are summed and the prompt counted once, as OpenAI does for `n > 1`.

    With `params.continuous_usage` each chunk gets its choice's usage so far (`progress`):
    from llama.cpp's per-token `timings` (`timings_per_token`), or, with
    `usage_per_chunk` (vLLM's `continuous_usage_stats`), from the `usage` every chunk then
    carries; only the last, choice-less chunk's usage is the total.
    """

    def __init__(self, request: GenerateRequest, *, usage_per_chunk: bool = False):
        self._top = request.params.top_logprobs
        # vLLM's echoed prompt: the first token's logprob is null (there is none)
        self._echo = request.echo
        self._param = "messages" if request.messages is not None else "prompt"
        self._continuous = request.params.continuous_usage
        self._usage_per_chunk = usage_per_chunk
        self._prompt_tokens = 0
        self._completion_tokens = 0
        self._cached_tokens: int | None = None

    def map(self, payload: Json) -> list[GenerationChunk]:
        if is_error(payload):
            raise error_from(payload, self._param)
        usage = payload.get("usage")
        choices = payload.get("choices") or ()
        progress = None
        if self._usage_per_chunk and choices:
            progress = _usage(usage)  # so far, for this chunk's choice: not a total
        elif isinstance(usage, dict):
            self._prompt_tokens = max(self._prompt_tokens, int(usage.get("prompt_tokens", 0)))
            self._completion_tokens += int(usage.get("completion_tokens", 0))
            details = usage.get("prompt_tokens_details")
            if isinstance(details, dict) and isinstance(details.get("cached_tokens"), int):
                cached = int(details["cached_tokens"])  # per choice, of the same prompt
                self._cached_tokens = max(self._cached_tokens or 0, cached)
        if not self._continuous:
            progress = None
        elif progress is None:
            progress = _timed(payload.get("timings"))
        chunks = (self._choice(choice, progress, payload) for choice in choices)
        return [chunk for chunk in chunks if chunk is not None]

    def usage(self) -> Usage:
        return Usage(
            self._prompt_tokens, self._completion_tokens, cached_tokens=self._cached_tokens
        )

    def _choice(
        self, choice: Json, progress: Usage | None, payload: Json
    ) -> GenerationChunk | None:
        delta = choice.get("delta")
        text = (delta.get("content") if isinstance(delta, dict) else choice.get("text")) or ""
        finish = _finish_reason(choice.get("finish_reason"))
        logprobs = self._logprobs(choice.get("logprobs"))
        if not text and finish is None and not logprobs:
            return None  # role announcements, timing-only chunks
        index = int(choice.get("index", 0))
        return GenerationChunk(
            index=index,
            text=text,
            finish_reason=finish,
            logprobs=logprobs,
            progress=progress,
            stop_sequence=_stop_string(choice, payload) if finish == "stop" else None,
        )

    def _logprobs(self, raw: object) -> tuple[TokenLogprob, ...]:
        if self._top is None or not isinstance(raw, dict):
            return ()
        return tuple(self._token(entry) for entry in raw.get("content") or ())

    def _token(self, entry: Json) -> TokenLogprob:
        top = tuple(
            TopLogprob(alt["token"], _logprob(alt), _bytes(alt))
            for alt in (entry.get("top_logprobs") or ())[: self._top]
        )
        first = self._echo and entry.get("logprob") is None
        return TokenLogprob(entry["token"], None if first else _logprob(entry), _bytes(entry), top)


def _stop_string(choice: Json, payload: Json) -> str | None:
    """The stop string that ended a choice: vLLM's `stop_reason` (a string; a stop token is
    an int), or llama.cpp's `stopping_word` (in `__verbose`, sent when the body asks for
    `verbose`)."""
    reason = choice.get("stop_reason")
    if isinstance(reason, str) and reason:
        return reason
    verbose = payload.get("__verbose")
    if isinstance(verbose, dict) and verbose.get("stop_type") == "word":
        word = verbose.get("stopping_word")
        return word if isinstance(word, str) and word else None
    return None


def _usage(raw: object) -> Usage | None:
    if not isinstance(raw, dict):
        return None
    return Usage(int(raw.get("prompt_tokens", 0)), int(raw.get("completion_tokens", 0)))


def _timed(raw: object) -> Usage | None:
    """llama.cpp's per-token timings: prompt tokens read (`prompt_n`) and found in its
    cache (`cache_n`), tokens predicted so far (`predicted_n`)."""
    if not isinstance(raw, dict) or "predicted_n" not in raw:
        return None
    prompt = int(raw.get("prompt_n", 0)) + int(raw.get("cache_n", 0))
    return Usage(prompt, int(raw["predicted_n"]))


def _finish_reason(raw: object) -> Literal["stop", "length"] | None:
    if raw is None:
        return None
    return "length" if raw == "length" else "stop"


def _logprob(entry: Json) -> float:
    value = entry.get("logprob")
    return _UNLIKELY if value is None else float(value)


def _bytes(entry: Json) -> tuple[int, ...] | None:
    raw = entry.get("bytes")
    return tuple(raw) if isinstance(raw, list) else None
