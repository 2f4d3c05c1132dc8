"""Structured output fields: OpenAI's `response_format` and NIM's `guided_*` (top level or
inside `nvext`), turned into one decoding constraint."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from nimble import jsontext
from nimble.api.schemas.common import NvExtSampling, Strict
from nimble.errors import InvalidRequest
from nimble.structured.checks import check_choices, check_json_schema, check_regex
from nimble.structured.json_schema import close_objects
from nimble.types import (
    ChoiceConstraint,
    Constraint,
    GrammarConstraint,
    JsonSchemaConstraint,
    RegexConstraint,
)


class JsonSchemaFormat(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)
    name: str = Field(min_length=1, max_length=64, pattern=r"^[a-zA-Z0-9_-]+$")
    description: str | None = None
    schema_: dict[str, Any] | None = Field(default=None, alias="schema")
    strict: bool | None = None


class ResponseFormat(BaseModel):
    model_config = ConfigDict(extra="forbid")
    type: Literal["text", "json_object", "json_schema"]
    json_schema: JsonSchemaFormat | None = None


class GuidedFields(Strict):
    guided_json: dict[str, Any] | str | None = None
    guided_regex: str | None = None
    guided_choice: list[str] | None = None
    guided_grammar: str | None = None


class NvExt(GuidedFields, NvExtSampling):
    """NIM's extension object: its structured-output fields, and its sampling fields
    (`ignore_eos`, `top_k`, `repetition_penalty`; read in `SamplingFields`). Other keys
    are refused."""


class StructuredFields(GuidedFields):
    response_format: ResponseFormat | None = None
    nvext: NvExt | None = None

    def constraint(self) -> Constraint | None:
        """The one constraint these fields ask for (400 if they ask for several)."""
        found: list[tuple[str, Constraint]] = []
        fmt = self.response_format
        if fmt is not None and fmt.type == "json_object":
            found.append(("response_format", JsonSchemaConstraint({"type": "object"})))
        elif fmt is not None and fmt.type == "json_schema":
            spec = fmt.json_schema
            if spec is None:
                raise InvalidRequest(
                    "response_format.json_schema: required for type json_schema",
                    param="response_format.json_schema",
                )
            schema = spec.schema_ if spec.schema_ is not None else {"type": "object"}
            param = "response_format.json_schema.schema"
            check_json_schema(schema, param)
            if spec.strict:  # OpenAI's strict mode: no keys the schema does not name
                schema = close_objects(schema)
            found.append(("response_format", JsonSchemaConstraint(schema)))
        for prefix, fields in (("", self), ("nvext.", self.nvext)):
            if fields is not None:
                found.extend(_guided(fields, prefix))
        if len(found) > 1:
            names = ", ".join(name for name, _ in found)
            raise InvalidRequest(
                f"only one structured-output constraint per request (got {names})",
                param=found[1][0],
            )
        return found[0][1] if found else None


def _guided(fields: GuidedFields, prefix: str) -> list[tuple[str, Constraint]]:
    found: list[tuple[str, Constraint]] = []
    if fields.guided_json is not None:
        param = f"{prefix}guided_json"
        schema = _schema(fields.guided_json, param)
        check_json_schema(schema, param)
        found.append((param, JsonSchemaConstraint(schema)))
    if fields.guided_regex is not None:
        param = f"{prefix}guided_regex"
        check_regex(fields.guided_regex, param)
        found.append((param, RegexConstraint(fields.guided_regex)))
    if fields.guided_choice is not None:
        param = f"{prefix}guided_choice"
        check_choices(fields.guided_choice, param)
        found.append((param, ChoiceConstraint(tuple(fields.guided_choice))))
    if fields.guided_grammar is not None:
        param = f"{prefix}guided_grammar"
        if not fields.guided_grammar.strip():
            raise InvalidRequest(f"{param}: must not be empty", param=param)
        found.append((param, GrammarConstraint(fields.guided_grammar)))
    return found


def _schema(value: dict[str, Any] | str, param: str) -> dict[str, Any]:
    if isinstance(value, dict):
        return value
    try:
        parsed = jsontext.loads(value)
    except ValueError as exc:
        raise InvalidRequest(f"{param}: not valid JSON: {exc}", param=param) from exc
    if not isinstance(parsed, dict):
        raise InvalidRequest(f"{param}: must be a JSON Schema object", param=param)
    return parsed
