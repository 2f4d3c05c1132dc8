"""What the gateway reads of a request before it routes it: the model, the prompt's text (the
prefix-aware policy matches it) and, for streams that did not ask for usage, a body that
asks for it. The body is otherwise passed on byte for byte: the replica validates it and
answers bad input with its own 400."""

from __future__ import annotations

import contextlib
import json
from dataclasses import dataclass
from typing import Any

import orjson

from nimble import jsontext

# the path's task, named as the replicas name it (Task; metrics: what generates no tokens)
_TASKS = {
    "/v1/chat/completions": "chat",
    "/v1/completions": "completion",
    "/v1/responses": "responses",
    "/v1/messages": "chat",
    "/v1/embeddings": "embedding",
    "/v1/ranking": "rerank",
    "/v1/rerank": "rerank",
    "/v2/rerank": "rerank",
    "/v1/classify": "classify",
    "/classify": "classify",
    "/v1/moderations": "moderation",
}
# streams whose usage comes only when asked (`stream_options.include_usage`)
_USAGE_ON_ASK = ("/v1/chat/completions", "/v1/completions")


@dataclass(frozen=True)
class Target:
    model: str | None  # None: any replica (the replica answers what is wrong)
    prompt: str = ""  # the text the prefix-aware policy matches
    body: bytes = b""
    task: str | None = None
    drop_usage_event: bool = False  # the gateway added include_usage: drop that event
    previous_response: str | None = None  # /v1/responses: the replica that holds it


def read_target(path: str, body: bytes, path_model: str | None = None) -> Target:
    """The routing facts of a request on `path` with `body` (`path_model`: a model named
    in the path, as in GET /v1/models/{id})."""
    task = _TASKS.get(path)
    if path.startswith("/v1/responses/"):
        return Target(None, task="responses", previous_response=path.rsplit("/", 1)[-1])
    payload = _loads(body) if body else None
    if not isinstance(payload, dict):
        return Target(path_model, body=body, task=task)
    model = payload.get("model")
    model = model if isinstance(model, str) else path_model
    drop = False
    stream_options = payload.get("stream_options")
    asked = isinstance(stream_options, dict) and stream_options.get("include_usage") is True
    if path in _USAGE_ON_ASK and payload.get("stream") is True and not asked:
        with contextlib.suppress(ValueError):  # too deep for `json`: the replica refuses it
            body, drop = _ask_usage(body, payload), True
    previous = payload.get("previous_response_id")
    return Target(
        model,
        prompt_text(payload),
        body,
        task,
        drop,
        previous if isinstance(previous, str) else None,
    )


def _loads(body: bytes) -> Any:
    """orjson (the gateway reads every body: ~5x faster), or the standard library for what
    orjson refuses and the replica should judge itself: lone surrogates, integers past 64
    bits. None for what is not JSON at all."""
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError:
        pass
    try:
        return jsontext.loads(body)
    except ValueError:
        return None


def _ask_usage(body: bytes, payload: dict[str, Any]) -> bytes:
    """`body` (a JSON object) with `stream_options.include_usage` set. Where the request has
    no `stream_options`, the member is written in front of the others and the rest is left
    byte for byte; otherwise the body is rewritten by the standard library, which keeps every
    number as sent (orjson would turn integers past 64 bits into floats)."""
    start = len(body) - len(body.lstrip())
    if "stream_options" not in payload and body[start : start + 1] == b"{":
        member = b'"stream_options":{"include_usage":true},'
        return body[: start + 1] + member + body[start + 1 :]
    exact = jsontext.loads(body)
    options = exact.get("stream_options")
    exact["stream_options"] = {
        **(options if isinstance(options, dict) else {}),
        "include_usage": True,
    }
    return json.dumps(exact).encode()


def prompt_text(payload: dict[str, Any]) -> str:
    """The request's prompt as one text, in the order the model reads it (system, tools,
    then the turns): requests that share a system prompt share a prefix here too. ""
    for a payload nested past Python's recursion limit (no replica reads one)."""
    try:
        return _prompt_text(payload)
    except RecursionError:
        return ""


def _prompt_text(payload: dict[str, Any]) -> str:
    parts: list[str] = []
    for name in ("instructions", "system"):
        parts.append(_text(payload.get(name)))
    if payload.get("tools"):
        parts.append(json.dumps(payload["tools"], sort_keys=True))
    for name in ("messages", "input", "prompt", "query"):
        parts.append(_text(payload.get(name)))
    return "\x1e".join(p for p in parts if p)


def _text(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    if isinstance(value, list):
        return "\x1e".join(_text(item) for item in value)
    if isinstance(value, dict):
        role = value.get("role")
        content = value.get("content", value.get("text"))
        inner = _text(content) if content is not None else json.dumps(value, sort_keys=True)
        return f"{role}:{inner}" if isinstance(role, str) else inner
    return str(value)


def usage_of(value: Any) -> tuple[int | None, int | None] | None:
    """(prompt, completion) tokens of an answer or stream event, each None where the event
    does not say: OpenAI's `usage`, the Responses API's (`input_tokens`/`output_tokens`, also
    inside `response`), Anthropic's (`message.usage`, then `usage.output_tokens` alone)."""
    if not isinstance(value, dict):
        return None
    usage = value.get("usage")
    for holder in ("response", "message"):
        if usage is None and isinstance(value.get(holder), dict):
            usage = value[holder].get("usage")
    if not isinstance(usage, dict):
        return None
    prompt = usage.get("prompt_tokens", usage.get("input_tokens"))
    completion = usage.get("completion_tokens", usage.get("output_tokens"))
    if completion is None and "total_tokens" in usage:
        completion = 0  # embeddings: nothing generated
    counts = tuple(n if isinstance(n, int) else None for n in (prompt, completion))
    return None if counts == (None, None) else (counts[0], counts[1])
