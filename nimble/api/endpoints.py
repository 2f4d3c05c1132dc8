"""Which endpoint (name) each path belongs to: the allowlist and API key scopes use these
names. Every route of the app must be listed here; a test holds that true."""

from __future__ import annotations

from nimble.config.settings import ALL_ENDPOINTS

ENDPOINT_PATHS: dict[str, tuple[str, ...]] = {
    # the Responses API generates chat turns: same scope and switch as chat completions
    "chat": ("/v1/chat/completions", "/v1/responses", "/v1/responses/{response_id}"),
    # Anthropic's Messages API: its own switch and scope (it generates chat turns too)
    "messages": ("/v1/messages", "/v1/messages/count_tokens"),
    "completions": ("/v1/completions",),
    "embeddings": ("/v1/embeddings",),
    "ranking": ("/v1/ranking",),
    "rerank": ("/v1/rerank", "/v2/rerank"),
    # sequence classification (vLLM's shape; `/classify` is vLLM's own path) and OpenAI's
    # moderations (a classifier or a guard model)
    "classify": ("/v1/classify", "/classify"),
    "moderations": ("/v1/moderations",),
    # vLLM's paths: one name for both
    "tokenize": ("/tokenize", "/detokenize"),
    # a model id may hold slashes (org/name): `:path` takes the rest of the path
    "models": ("/v1/models", "/v1/models/{model_id:path}"),
    "metadata": ("/v1/metadata",),
    "manifest": ("/v1/manifest",),
    "version": ("/v1/version",),
    "metrics": ("/v1/metrics", "/metrics"),
    "openapi": ("/openapi.json",),
    # vLLM's health check (200 or 503, empty body), never behind a key either
    "health": ("/health",),
    # adapters loaded and unloaded at run time (vLLM's paths): only keys that name it
    "admin": ("/v1/load_lora_adapter", "/v1/unload_lora_adapter"),
    # the console's pages and files (routes/console.py): no key needed while it is on
    "ui": ("/ui", "/ui/", "/ui/{path:path}"),
}
# always on, never behind a key: orchestrators probe them without credentials
HEALTH_PATHS = ("/v1/health/live", "/v1/health/ready")

_BY_PATH = {path: name for name, paths in ENDPOINT_PATHS.items() for path in paths}
# paths with one `{parameter}` as their last segment: (the part before it, endpoint name,
# whether the parameter may hold slashes: `{name:path}`)
_TEMPLATES = tuple(
    (path.partition("{")[0], name, path.endswith(":path}"))
    for name, paths in ENDPOINT_PATHS.items()
    for path in paths
    if path.endswith("}")
)
assert set(ENDPOINT_PATHS) == set(ALL_ENDPOINTS), "endpoint names drifted from the settings"


def endpoint_of(path: str) -> str | None:
    """The endpoint name of a path (or of a route's path template), or None (health
    probes, unknown paths)."""
    name = _BY_PATH.get(path)
    if name is not None:
        return name
    for prefix, candidate, slashes in _TEMPLATES:
        rest = path.removeprefix(prefix)
        if rest != path and rest and (slashes or "/" not in rest):
            return candidate
    return None
