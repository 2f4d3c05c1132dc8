"""The guardrails file (`--guardrails FILE`): named rails, and which of them run on the input
and on the output of each model. It reads like NeMo Guardrails' `config.yml`:

```yaml
flows:                      # every rail, by name: a `type` and its settings
  injection: {type: classifier, model: prompt-guard, labels: [INJECTION], threshold: 0.9}
  no-secrets: {type: topics, deny: [password, api key]}
rails:                      # for every model
  input:
    flows: [injection, no-secrets]
  output:
    flows: [no-secrets]
    streaming: {chunk_size: 200, context_size: 50}
models:                     # a model's own lists replace the defaults, stage by stage
  smollm2-135m-instruct:
    output: {flows: []}
```

A key bound to rails (its `rails` in the API key file) runs them too, on every stage they
may run on (`stages`). The file is read once at start; a bad one stops the start with one
line that names the file and the field.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, StringConstraints, ValidationError

from nimble.errors import ConfigError
from nimble.guardrails.rail import STAGES, RailType, Stage

Role = Literal["system", "developer", "user", "assistant", "tool"]
ROLES: tuple[Role, ...] = ("system", "developer", "user", "assistant", "tool")
RailName = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9._-]{1,64}$")]

# fields every rail has; the rest of its mapping goes to its type's settings
COMMON = frozenset({"type", "stages", "roles", "on_error", "timeout"})


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Common(_Strict):
    type: str
    stages: tuple[Stage, ...] | None = None  # None: every stage its type may run on
    # input texts it reads, by the role of their message (a completion's prompt is `user`,
    # tool-call arguments are `assistant`); None: all
    roles: tuple[Role, ...] | None = None
    on_error: Literal["block", "allow"] = "block"  # when the check fails or times out
    timeout: float = Field(default=30.0, gt=0)


class Streaming(_Strict):
    """The output window: text is held back until `chunk_size` characters are waiting,
    checked, and released but for the last `context_size`, which the next window checks
    again (a word or an entity cut at a window's edge is seen whole)."""

    chunk_size: int = Field(default=200, ge=1)
    context_size: int = Field(default=50, ge=0)


class Flows(_Strict):
    flows: tuple[RailName, ...] = ()


class OutputFlows(Flows):
    streaming: Streaming = Streaming()


class Rails(_Strict):
    input: Flows = Flows()
    output: OutputFlows = OutputFlows()


class ModelRails(_Strict):
    input: Flows | None = None
    output: Flows | None = None


class GuardrailsFile(_Strict):
    flows: dict[RailName, dict[str, Any]] = {}
    rails: Rails = Rails()
    models: dict[str, ModelRails] = {}


@dataclass(frozen=True)
class RailSpec:
    """One rail as configured: its common fields, and its type's validated settings."""

    name: str
    type: str
    kind: RailType[Any]
    settings: BaseModel
    stages: tuple[Stage, ...]
    roles: frozenset[str] | None
    on_error: Literal["block", "allow"]
    timeout: float

    def record(self) -> dict[str, Any]:
        """What the deployment record says of it (no secrets)."""
        return {
            "type": self.type,
            "stages": list(self.stages),
            "roles": sorted(self.roles) if self.roles is not None else None,
            "on_error": self.on_error,
            "timeout_s": self.timeout,
            "settings": self.kind.describe(self.settings),
        }


@dataclass(frozen=True)
class Window:
    chunk_size: int = 200
    context_size: int = 50


@dataclass(frozen=True)
class GuardrailsConfig:
    path: Path | None
    rails: Mapping[str, RailSpec]
    defaults: Mapping[Stage, tuple[str, ...]]
    models: Mapping[str, Mapping[Stage, tuple[str, ...]]] = field(default_factory=dict)
    window: Window = Window()

    def flows(self, model: str, stage: Stage) -> tuple[str, ...]:
        """The rails that run on `stage` for `model` (before any bound to the caller's key)."""
        own = self.models.get(model, {})
        return own.get(stage, self.defaults[stage])

    def served_by(self) -> set[str]:
        """The models the rails ask nimble to serve (classifiers, judges)."""
        return {m for spec in self.rails.values() for m in spec.kind.models(spec.settings)}


def load_guardrails(
    path: Path, types: Mapping[str, RailType[Any]] | None = None
) -> GuardrailsConfig:
    """Read and check the guardrails file; ConfigError in one line naming file and field."""
    try:
        raw = yaml.safe_load(path.expanduser().read_text())
    except OSError as exc:
        raise ConfigError(f"guardrails {path}: cannot read it: {exc.strerror or exc}") from exc
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" (line {mark.line + 1})" if mark is not None else ""
        raise ConfigError(f"guardrails {path}: not valid YAML{where}") from exc
    return parse_guardrails(raw if raw is not None else {}, path, types)


def parse_guardrails(
    raw: object, path: Path | None = None, types: Mapping[str, RailType[Any]] | None = None
) -> GuardrailsConfig:
    if types is None:
        from nimble.guardrails.registry import RAIL_TYPES

        types = RAIL_TYPES
    where = f"guardrails {path}" if path is not None else "guardrails"
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: the file must be a mapping (flows, rails, models)")
    try:
        parsed = GuardrailsFile.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(_problem(f"{where}: ", exc)) from exc
    rails = {name: _rail(name, body, types, where) for name, body in parsed.flows.items()}
    defaults: dict[Stage, tuple[str, ...]] = {
        "input": parsed.rails.input.flows,
        "output": parsed.rails.output.flows,
    }
    _check_flows(defaults, rails, f"{where}: rails")
    models: dict[str, dict[Stage, tuple[str, ...]]] = {}
    for model, own in parsed.models.items():
        lists: dict[Stage, tuple[str, ...]] = {}
        if own.input is not None:
            lists["input"] = own.input.flows
        if own.output is not None:
            lists["output"] = own.output.flows
        _check_flows(lists, rails, f"{where}: models.{model}")
        models[model] = lists
    stream = parsed.rails.output.streaming
    if stream.context_size >= stream.chunk_size:
        raise ConfigError(
            f"{where}: rails.output.streaming.context_size: must be less than chunk_size "
            f"({stream.context_size} >= {stream.chunk_size})"
        )
    return GuardrailsConfig(
        path, rails, defaults, models, Window(stream.chunk_size, stream.context_size)
    )


def _rail(
    name: str, body: dict[str, Any], types: Mapping[str, RailType[Any]], where: str
) -> RailSpec:
    prefix = f"{where}: flows.{name}"
    head = prefix + "."
    common_part = {k: v for k, v in body.items() if k in COMMON}
    try:
        common = Common.model_validate(common_part)
    except ValidationError as exc:
        raise ConfigError(_problem(head, exc)) from exc
    kind = types.get(common.type)
    if kind is None:
        known = ", ".join(sorted(types))
        raise ConfigError(f"{prefix}.type: unknown rail type {common.type!r} (known: {known})")
    try:
        settings = kind.settings.model_validate({k: v for k, v in body.items() if k not in COMMON})
    except ValidationError as exc:
        raise ConfigError(_problem(head, exc)) from exc
    allowed = kind.stages(settings)
    stages = common.stages if common.stages is not None else allowed
    outside = [s for s in stages if s not in allowed]
    if outside or not stages:
        raise ConfigError(
            f"{prefix}.stages: a {common.type} rail of these settings runs on "
            f"{', '.join(allowed)} only"
        )
    return RailSpec(
        name=name,
        type=common.type,
        kind=kind,
        settings=settings,
        stages=tuple(s for s in STAGES if s in stages),
        roles=_roles(common.roles if common.roles is not None else kind.roles(settings)),
        on_error=common.on_error,
        timeout=common.timeout,
    )


def _roles(roles: tuple[str, ...] | None) -> frozenset[str] | None:
    return frozenset(roles) if roles is not None else None


def _check_flows(
    lists: Mapping[Stage, tuple[str, ...]], rails: Mapping[str, RailSpec], prefix: str
) -> None:
    for stage, names in lists.items():
        for i, name in enumerate(names):
            spec = rails.get(name)
            if spec is None:
                raise ConfigError(
                    f"{prefix}.{stage}.flows.{i}: no rail named {name!r} under `flows`"
                )
            if stage not in spec.stages:
                raise ConfigError(
                    f"{prefix}.{stage}.flows.{i}: rail {name!r} runs on "
                    f"{', '.join(spec.stages)} only"
                )
        if len(set(names)) != len(names):
            raise ConfigError(f"{prefix}.{stage}.flows: a rail is listed twice")


def _problem(head: str, exc: ValidationError) -> str:
    """The first validation error as one line: `head` (`guardrails FILE: ` or `guardrails
    FILE: flows.NAME.`), the field, the message. A check across fields names its field at
    the start of its message (`labels: ...`)."""
    err = exc.errors()[0]
    message = str(err["ctx"]["error"]) if err["type"] == "value_error" else str(err["msg"])
    if err["type"] == "extra_forbidden":
        message = "unknown field"
    loc = ".".join(str(p) for p in err["loc"])
    if loc:
        return f"{head}{loc}: {message}"
    if re.match(r"^\w+: ", message):
        return f"{head}{message}"
    return f"{head.rstrip(': .')}: {message}"
