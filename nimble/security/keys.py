"""API keys: a YAML file of sha256-hashed keys, each with scopes and limits.

```yaml
keys:
  - id: analytics              # shown in logs, the audit log and metrics-free places
    sha256: 3f0c...            # sha256 hex of the key (`nimble keys create` prints both)
    models: [smollm2-135m-instruct]   # default: any served model
    endpoints: [chat, completions]    # default: every endpoint but `admin`
    tools: false                      # may it send tools? default: true
    limits: {requests_per_minute: 60, tokens_per_minute: 20000, concurrent_requests: 2}
  - id: claims-agent
    sha256: 9e1d...
    purpose: claims-triage-agent      # free text: in the audit log and the deployment record
    tools: {declare: [lookup_claim, send_email], call: [lookup_claim]}
    rails: [pii-in, injection]        # guardrails its requests cannot skip
```
`tools` is true (any tool, the default), false (none), or the tool names a request may
declare and those (of these) the model may call; `*` is any name. A call outside `call` is
dropped from the answer (`nimble/runtime/tools/gate.py`).

Keys are long random strings, so one sha256 is enough (a slow password hash buys nothing
against 256 bits of entropy); presented keys are compared in constant time against every
stored hash. The file is re-read when it changes; a broken file keeps the previous keys.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
import secrets
import time
from collections.abc import Callable, Collection, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    ValidationError,
    field_validator,
    model_validator,
)

from nimble.errors import ConfigError, PermissionDenied, Unauthenticated

log = logging.getLogger("nimble.security")

KEY_PREFIX = "nb-"
ANY = "*"
# loading and unloading adapters at run time: only for keys that name it (`*` does not)
ADMIN = "admin"


class Limits(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    requests_per_minute: int | None = Field(default=None, ge=1)
    tokens_per_minute: int | None = Field(default=None, ge=1)
    concurrent_requests: int | None = Field(default=None, ge=1)


ToolName = Annotated[str, StringConstraints(pattern=r"^(\*|[A-Za-z0-9_.:-]{1,128})$")]
RailName = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9._-]{1,64}$")]  # as --guardrails


class ToolsEntry(BaseModel):
    """`tools:` as a mapping: the names a request may declare, and those the model may call."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    declare: tuple[ToolName, ...] = (ANY,)
    call: tuple[ToolName, ...] = (ANY,)

    @model_validator(mode="after")
    def _call_within_declare(self) -> ToolsEntry:
        if ANY in self.declare or ANY in self.call:
            return self
        outside = [name for name in self.call if name not in self.declare]
        if outside:
            raise ValueError(
                f"call names {', '.join(outside)}, which declare does not list (a tool a "
                "request may not declare is never called)"
            )
        return self


class KeyEntry(BaseModel):
    """One key as written in the file."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    id: Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9._:@-]{1,64}$")]
    sha256: Annotated[str, StringConstraints(pattern=r"^[0-9a-f]{64}$", to_lower=True)]
    # one line of printable text: it is written into audit lines and the deployment record
    purpose: (
        Annotated[
            str,
            StringConstraints(
                strip_whitespace=True, min_length=1, max_length=200, pattern=r"^[^\x00-\x1f\x7f]*$"
            ),
        ]
        | None
    ) = None
    models: tuple[str, ...] = (ANY,)
    endpoints: tuple[str, ...] = (ANY,)
    tools: ToolsEntry = ToolsEntry()
    rails: tuple[RailName, ...] = ()
    limits: Limits = Limits()

    @field_validator("tools", mode="before")
    @classmethod
    def _tools_flag(cls, value: Any) -> Any:
        """`tools: true | false` as before: any tool, or none."""
        if isinstance(value, bool):
            return ToolsEntry() if value else ToolsEntry(declare=(), call=())
        if not isinstance(value, dict | ToolsEntry):
            raise ValueError("expected true, false, or {declare: [names], call: [names]}")
        return value


class KeyFile(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    keys: tuple[KeyEntry, ...] = ()


@dataclass(frozen=True)
class ToolScope:
    """The tools of one key: `declare` those its requests may offer the model, `call` those
    the model may call (always within `declare`). None: any name."""

    declare: frozenset[str] | None
    call: frozenset[str] | None

    @classmethod
    def from_entry(cls, entry: ToolsEntry) -> ToolScope:
        declare = None if ANY in entry.declare else frozenset(entry.declare)
        if ANY in entry.call:
            return cls(declare, declare)
        call = frozenset(entry.call)
        return cls(declare, call if declare is None else call & declare)

    @property
    def enabled(self) -> bool:
        """Whether a request may carry tools at all."""
        return self.declare is None or bool(self.declare)

    def may_declare(self, name: str) -> bool:
        return self.declare is None or name in self.declare

    def may_call(self, name: str) -> bool:
        return self.call is None or name in self.call


@dataclass(frozen=True)
class ApiKey:
    """An authenticated caller and what it may do."""

    id: str
    digest: bytes
    models: frozenset[str] | None  # None: any model
    endpoints: frozenset[str] | None  # None: any endpoint
    tools: ToolScope
    limits: Limits
    purpose: str | None = None
    rails: tuple[str, ...] = ()  # guardrails its requests always go through

    @classmethod
    def from_entry(cls, entry: KeyEntry) -> ApiKey:
        return cls(
            id=entry.id,
            digest=bytes.fromhex(entry.sha256),
            models=None if ANY in entry.models else frozenset(entry.models),
            endpoints=None if ANY in entry.endpoints else frozenset(entry.endpoints),
            tools=ToolScope.from_entry(entry.tools),
            limits=entry.limits,
            purpose=entry.purpose,
            rails=tuple(dict.fromkeys(entry.rails)),
        )

    @property
    def ref(self) -> str:
        """What names this key where its id should not appear (the deployment record,
        metrics): a short hash of the id keyed with the stored sha256, so that a reader
        cannot confirm a guessed id (a plain hash of a short name can be), and that it stays
        the same on every replica that reads the same file. A new secret gets a new ref."""
        mac = hmac.new(self.digest, b"nimble key ref\0" + self.id.encode(), hashlib.sha256)
        return "key-" + mac.hexdigest()[:12]

    def allows_endpoint(self, endpoint: str) -> bool:
        if self.endpoints is None:
            return endpoint != ADMIN
        return endpoint in self.endpoints

    def allows_model(self, model: str) -> bool:
        return self.models is None or model in self.models

    def require_endpoint(self, endpoint: str) -> None:
        if not self.allows_endpoint(endpoint):
            named = " (a key must name `admin` in its endpoints)" if endpoint == ADMIN else ""
            raise PermissionDenied(
                f"API key `{self.id}` may not use the {endpoint} endpoint{named}",
                code="endpoint_denied",
            )

    def require_model(self, model: str) -> None:
        if not self.allows_model(model):
            raise PermissionDenied(
                f"API key `{self.id}` may not use model `{model}`",
                param="model",
                code="model_denied",
            )

    def require_tools(self, names: Iterable[str]) -> None:
        """PermissionDenied (403) when the request's declared tools (`names`) are not all
        within the key's `declare` list: `tools_denied` for a key without tools,
        `tool_denied` naming the first tool outside the list otherwise."""
        if not self.tools.enabled:
            raise PermissionDenied(
                f"API key `{self.id}` may not use tool calling", param="tools", code="tools_denied"
            )
        for name in names:
            if not self.tools.may_declare(name):
                raise PermissionDenied(
                    f"API key `{self.id}` may not declare the tool `{name}`",
                    param="tools",
                    code="tool_denied",
                )


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def new_key() -> str:
    """A fresh random key (256 bits)."""
    return KEY_PREFIX + secrets.token_urlsafe(32)


def parse_key_file(
    path: Path,
    known_endpoints: tuple[str, ...],
    known_rails: Collection[str] | None = None,
    *,
    no_policy: str | None = None,
) -> tuple[ApiKey, ...]:
    """The keys of the file; ConfigError naming the problem. `known_rails`: the guardrails
    configured (a key bound to another is refused: it would skip it); None: not checked.
    `no_policy`: why tool scopes and rails cannot be enforced here (a key with either is
    refused, rather than let through unchecked); None: they are."""
    try:
        raw = yaml.safe_load(path.read_text()) or {}
        parsed = KeyFile.model_validate(raw)
    except OSError as exc:
        raise ConfigError(f"API key file {path}: {exc.strerror or exc}") from exc
    except yaml.YAMLError as exc:
        raise ConfigError(f"API key file {path}: not valid YAML ({exc})") from exc
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc'])}: {err['msg']}" for err in exc.errors()
        )
        raise ConfigError(f"API key file {path}: {problems}") from exc
    ids = [entry.id for entry in parsed.keys]
    if len(set(ids)) != len(ids):
        raise ConfigError(f"API key file {path}: key ids must be unique")
    for entry in parsed.keys:
        unknown = set(entry.endpoints) - set(known_endpoints) - {ANY}
        if unknown:
            raise ConfigError(
                f"API key file {path}: key `{entry.id}`: unknown endpoints "
                f"{', '.join(sorted(unknown))} (known: {', '.join(known_endpoints)})"
            )
        scope = ToolScope.from_entry(entry.tools)
        if no_policy is not None and (scope != ToolScope(None, None) or entry.rails):
            raise ConfigError(
                f"API key file {path}: key `{entry.id}`: its tools scope and rails would not "
                f"be enforced: {no_policy}"
            )
        missing = [
            rail for rail in entry.rails if known_rails is not None and rail not in known_rails
        ]
        if missing:
            configured = ", ".join(sorted(known_rails or ())) or "none: see --guardrails"
            raise ConfigError(
                f"API key file {path}: key `{entry.id}`: unknown rails {', '.join(missing)} "
                f"(configured: {configured})"
            )
    return tuple(ApiKey.from_entry(entry) for entry in parsed.keys)


class KeyStore:
    """The keys of one file, re-read when the file changes (checked at most every
    `check_interval` seconds, on use) or when `reload()` is called (SIGHUP)."""

    def __init__(
        self,
        path: Path,
        known_endpoints: tuple[str, ...],
        *,
        known_rails: Collection[str] | None = None,
        no_policy: str | None = None,
        check_interval: float = 2.0,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.path = path
        self._known = known_endpoints
        self._rails = known_rails
        self._no_policy = no_policy
        self._interval = check_interval
        self._clock = clock
        # a broken file at start: refuse
        self._keys = parse_key_file(path, known_endpoints, known_rails, no_policy=no_policy)
        self._stamp = self._file_stamp()
        self._checked = clock()

    @property
    def keys(self) -> tuple[ApiKey, ...]:
        return self._keys

    def _file_stamp(self) -> tuple[int, int, int] | None:
        try:
            st = os.stat(self.path)  # follows symlinks: Kubernetes swaps secret mounts so
        except OSError:
            return None
        return (st.st_ino, st.st_mtime_ns, st.st_size)

    def reload(self) -> bool:
        """Re-read the file; on error keep the keys in use. True if new keys were taken."""
        self._stamp = self._file_stamp()
        try:
            keys = parse_key_file(self.path, self._known, self._rails, no_policy=self._no_policy)
        except ConfigError as exc:
            log.error("keeping the previous API keys: %s", exc)
            return False
        self._keys = keys
        log.info("API keys loaded from %s: %d keys", self.path, len(keys))
        return True

    def maybe_reload(self) -> None:
        now = self._clock()
        if now - self._checked < self._interval:
            return
        self._checked = now
        if self._file_stamp() != self._stamp:
            self.reload()

    def authenticate(self, presented: str | None) -> ApiKey:
        """The key matching `presented`, compared in constant time against every key."""
        self.maybe_reload()
        if not presented:
            raise Unauthenticated(
                "Missing API key: send it as `Authorization: Bearer <key>` or `x-api-key: <key>`.",
                code="missing_api_key",
            )
        digest = hashlib.sha256(presented.encode()).digest()
        found: ApiKey | None = None
        for key in self._keys:
            if hmac.compare_digest(digest, key.digest):
                found = key
        if found is None:
            raise Unauthenticated("Incorrect API key provided.")
        return found


def key_record(key: ApiKey) -> dict[str, Any]:
    """One key as the deployment record states it: its `ref`, never its id or its hash; the
    scopes as the loaded key enforces them (`*`: any; `call` already within `declare`)."""

    def names(values: frozenset[str] | None) -> list[str]:
        return [ANY] if values is None else sorted(values)

    return {
        "ref": key.ref,
        "purpose": key.purpose,
        "models": names(key.models),
        "endpoints": names(key.endpoints),
        "tools": {"declare": names(key.tools.declare), "call": names(key.tools.call)},
        "rails": list(key.rails),
        "limits": key.limits.model_dump(),
    }


def keys_record(keys: Iterable[ApiKey] | None) -> list[dict[str, Any]] | None:
    """The deployment record's `auth.keys`: every key loaded, in file order (None: no keys)."""
    return None if keys is None else [key_record(key) for key in keys]
