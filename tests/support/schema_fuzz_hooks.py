"""Schemathesis hooks for tests/e2e/test_schema_fuzz.py (loaded by the `st` CLI through
SCHEMATHESIS_HOOKS): every generated body names a model the server serves, so that the
fuzzing reaches past the model lookup into the routes, the runtime and the engines; and
asks for few tokens, prompts and inputs, so that each request is quick on two cores."""

from __future__ import annotations

from typing import Any

import schemathesis

CHAT_MODEL = "smollm2-135m-instruct"
EMBED_MODEL = "all-minilm-l6-v2"
_ENCODER_PATHS = frozenset(
    {"/v1/embeddings", "/v1/ranking", "/v1/rerank", "/v2/rerank", "/classify", "/v1/classify"}
)
_GENERATING = {
    "/v1/chat/completions": "max_tokens",
    "/v1/completions": "max_tokens",
    "/v1/responses": "max_output_tokens",
    "/v1/messages": "max_tokens",
}
_TOKEN_CAPS = ("max_tokens", "max_completion_tokens", "max_output_tokens")
_LISTS = ("prompt", "input", "documents", "passages", "texts", "messages")
MAX_TOKENS = 8
MAX_ITEMS = 8  # items of a list of prompts, inputs or documents
MAX_CHOICES = 2  # the engine's slots bound n


def _int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


@schemathesis.hook
def map_body(context: Any, body: Any) -> Any:
    if not isinstance(body, dict):
        return body
    path = context.operation.path
    if "model" in body or path != "/v1/moderations":  # moderations: no model is the default
        body["model"] = EMBED_MODEL if path in _ENCODER_PATHS else CHAT_MODEL
    for key in _TOKEN_CAPS:
        if key in body and body[key] is None:
            del body[key]  # null is no limit: a generation up to the window, minutes here
        elif _int(body.get(key)) and body[key] > MAX_TOKENS:
            body[key] = MAX_TOKENS
    if path in _GENERATING and not any(key in body for key in _TOKEN_CAPS):
        body[_GENERATING[path]] = MAX_TOKENS
    for key in ("n", "best_of"):
        if _int(body.get(key)) and body[key] > MAX_CHOICES:
            body[key] = MAX_CHOICES
    for key in _LISTS:
        if isinstance(body.get(key), list):
            body[key] = body[key][:MAX_ITEMS]
    return body
