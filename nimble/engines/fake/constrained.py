"""What the fake engine writes under a decoding constraint: the simplest text that satisfies
it (the first choice, the smallest valid JSON instance, a call of the named function)."""

from __future__ import annotations

import json
from typing import Any

from nimble.errors import UnsupportedParameter
from nimble.types import (
    ChoiceConstraint,
    Constraint,
    GenerateRequest,
    JsonSchemaConstraint,
    ToolCallConstraint,
)


def constrained_text(request: GenerateRequest, constraint: Constraint) -> str | None:
    """The output for `constraint`, or None to write freely (a lazy tool grammar that
    the conversation does not trigger)."""
    if isinstance(constraint, JsonSchemaConstraint):
        return json.dumps(instance(constraint.schema, constraint.schema))
    if isinstance(constraint, ChoiceConstraint):
        return constraint.choices[0]
    if isinstance(constraint, ToolCallConstraint):
        schema = constraint.call_schema
        if constraint.lazy:
            wanted = _mentioned(request, schema)
            if wanted is None:
                return None
            schema = wanted
        call = json.dumps(instance(schema, constraint.call_schema))
        return f"{constraint.begin}{call}{constraint.end}"
    raise UnsupportedParameter(
        "the fake engine cannot write text for a regex or a grammar", param="guided_regex"
    )


def _mentioned(request: GenerateRequest, schema: dict[str, Any]) -> dict[str, Any] | None:
    """The call schema of a function the last user message names, if any."""
    messages = request.messages or ()
    last = messages[-1] if messages else None
    if last is None or last.role != "user":
        return None
    for option in schema.get("anyOf", [schema]):
        name = option.get("properties", {}).get("name", {}).get("const")
        if isinstance(name, str) and name in last.content:
            return dict(option)
    return None


def instance(schema: Any, root: dict[str, Any]) -> Any:
    """The smallest JSON value valid against `schema` (for the schemas nimble accepts)."""
    if not isinstance(schema, dict):
        return {}
    if "$ref" in schema:
        target: Any = root
        for part in str(schema["$ref"]).lstrip("#/").split("/"):
            target = target.get(part, {}) if part else target
        return instance(target, root)
    if "const" in schema:
        return schema["const"]
    if "enum" in schema:
        return schema["enum"][0]
    for key in ("anyOf", "oneOf", "allOf"):
        if key in schema:
            return instance(schema[key][0], root)
    kind = schema.get("type", "object" if "properties" in schema else None)
    if isinstance(kind, list):
        kind = next((k for k in kind if k != "null"), "null")
    if kind == "object":
        properties = schema.get("properties", {})
        return {
            name: instance(properties.get(name, {}), root) for name in schema.get("required", [])
        }
    if kind == "array":
        count = int(schema.get("minItems", 0))
        prefix = schema.get("prefixItems", [])
        return [
            instance(prefix[i] if i < len(prefix) else schema.get("items", {}), root)
            for i in range(max(count, len(prefix)))
        ]
    if kind == "string":
        return _string(schema)
    if kind in ("integer", "number"):
        value = float(schema.get("minimum", 0))
        if "exclusiveMinimum" in schema and "minimum" not in schema:
            value = float(schema["exclusiveMinimum"]) + 1
        return int(value) if kind == "integer" else value
    if kind == "boolean":
        return True
    if kind == "null":
        return None
    return {}


def _string(schema: dict[str, Any]) -> str:
    formats = {"date": "2024-01-01", "time": "12:00:00", "date-time": "2024-01-01T12:00:00Z"}
    formats["uuid"] = "00000000-0000-0000-0000-000000000000"
    text = formats.get(str(schema.get("format")), "x")
    return text + "x" * max(0, int(schema.get("minLength", 0)) - len(text))
