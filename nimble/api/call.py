"""The preamble every route shares, in one line: `Call.for_model(request, body.model)` (an
inference route: the caller's key must allow the model) or `Call.of(request)`; the call
carries the runtime, the request id and what the caller's key allows."""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass

from fastapi import Request

from nimble.api.errors import request_id_of
from nimble.runtime import Runtime
from nimble.security.keys import ApiKey


@dataclass(frozen=True)
class Grant:
    """What the caller's API key allows (everything when API keys are off)."""

    key: ApiKey | None

    @property
    def owner(self) -> str | None:
        """The key's id (None when keys are off): who stored a response may read it."""
        return self.key.id if self.key is not None else None

    def allows_model(self, model: str) -> bool:
        return self.key is None or self.key.allows_model(model)

    def require_model(self, model: str) -> None:
        if self.key is not None:
            self.key.require_model(model)

    def require_tools(self, names: Iterable[str]) -> None:
        """403 when the key may not declare one of the tools named (`tool_denied`) or any
        tool (`tools_denied`)."""
        if self.key is not None:
            self.key.require_tools(names)


@dataclass(frozen=True)
class Call:
    """One request as a route sees it, once it was let in."""

    runtime: Runtime
    request_id: str  # from the request-context middleware ("-" on the management app)
    grant: Grant  # from the auth middleware (everything when API keys are off)

    @classmethod
    def of(cls, request: Request) -> Call:
        runtime: Runtime = request.app.state.runtime
        grant = Grant(getattr(request.state, "api_key", None))
        return cls(runtime, request_id_of(request), grant)

    @classmethod
    def for_model(cls, request: Request, model: str) -> Call:
        """The first line of every inference route: PermissionDenied (403) when the
        caller's key may not use `model`."""
        call = cls.of(request)
        call.grant.require_model(model)
        return call


def now() -> int:
    """An answer's `created` time, in seconds."""
    return int(time.time())
