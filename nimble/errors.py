"""One error taxonomy for the whole package. No HTTP here: `api/errors.py` maps these once."""

from __future__ import annotations


class NimbleError(Exception):
    """Base of every error nimble raises on purpose.

    `code` is a stable machine-readable string (the OpenAI `error.code`), `param` names the
    offending request field when there is one.
    """

    code: str = "internal_error"

    def __init__(self, message: str, *, param: str | None = None, code: str | None = None):
        super().__init__(message)
        self.message = message
        self.param = param
        if code is not None:
            self.code = code


class InvalidRequest(NimbleError):
    """The request is well-formed JSON but asks for something invalid."""

    code = "invalid_request"


class UnsupportedParameter(InvalidRequest):
    """A valid parameter that this model or engine cannot honour."""

    code = "unsupported_parameter"


class ContextLengthExceeded(InvalidRequest):
    code = "context_length_exceeded"


class ContentFiltered(InvalidRequest):
    """A guardrail refused the request's input (the message names the rail, never the text
    it matched)."""

    code = "content_filter"

    def __init__(self, rail: str, *, param: str | None = None):
        super().__init__(
            f"The request was refused by the content filter: guardrail `{rail}` blocked its input.",
            param=param,
        )
        self.rail = rail


class NotFound(NimbleError):
    """Something the request names does not exist (404)."""

    code = "not_found"


class ModelNotFound(NotFound):
    code = "model_not_found"


class Overloaded(NimbleError):
    """Admission control refused the request: too many running and waiting."""

    code = "overloaded"

    def __init__(self, message: str, *, retry_after: int):
        super().__init__(message)
        self.retry_after = retry_after  # whole seconds: what a Retry-After header carries


class RateLimited(Overloaded):
    """An API key went over one of its limits (requests or tokens per minute, concurrency)."""

    code = "rate_limit_exceeded"


class Unauthenticated(NimbleError):
    """No API key, or one that is not known."""

    code = "invalid_api_key"


class PermissionDenied(NimbleError):
    """A valid API key asked for something outside its scopes (model, endpoint, tools)."""

    code = "permission_denied"


class Unavailable(NimbleError):
    """The service cannot take work now (loading, draining, engine down)."""

    code = "service_unavailable"


class EngineError(NimbleError):
    """The engine failed while serving a request (a server-side fault)."""

    code = "engine_error"


class UnreadableVerdict(EngineError):
    """A guard model answered something that is not a verdict in its format."""

    code = "unreadable_verdict"


class ModelLoadError(NimbleError):
    """A model could not be loaded: missing or corrupt file, unknown engine, missing extra."""

    code = "model_load_error"


class ConfigError(NimbleError):
    code = "config_error"
