"""Checks for structured output (JSON Schema, regex, choice), before any engine runs.

Grammar-constrained decoding enforces only part of JSON Schema and of Python's regex syntax.
A request that asks for more is refused here with `UnsupportedParameter` naming the feature
and where it is, rather than answered with output that ignores it; a malformed value is an
`InvalidRequest`.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any
from urllib.parse import unquote

from jsonschema.exceptions import SchemaError  # type: ignore[import-untyped]
from jsonschema.validators import (  # type: ignore[import-untyped]
    Draft202012Validator,
    validator_for,
)

from nimble.errors import InvalidRequest, UnsupportedParameter
from nimble.structured.gbnf_regex import regex_grammar

# what llama.cpp's json-schema-to-grammar enforces
_TYPES = frozenset({"string", "number", "integer", "boolean", "object", "array", "null"})
_FORMATS = ("date", "time", "date-time", "uuid")
_ENFORCED = frozenset(
    {
        "type",
        "properties",
        "required",
        "additionalProperties",
        "items",
        "prefixItems",
        "minItems",
        "maxItems",
        "enum",
        "const",
        "anyOf",
        "oneOf",
        "allOf",
        "$ref",
        "$defs",
        "definitions",
        "minLength",
        "maxLength",
        "pattern",
        "format",
        "minimum",
        "maximum",
        "exclusiveMinimum",
        "exclusiveMaximum",
    }
)
# annotations: nothing to enforce
_ANNOTATIONS = frozenset(
    {
        "title",
        "description",
        "default",
        "examples",
        "$schema",
        "$id",
        "$comment",
        "nullable",
        "deprecated",
        "readOnly",
        "writeOnly",
    }
)
_NAMED_SCHEMAS = ("properties", "$defs", "definitions")  # keys are names, values schemas
_SCHEMA_LISTS = ("prefixItems", "anyOf", "oneOf", "allOf")
_MAX_DEPTH = 64


def check_json_schema(schema: object, param: str) -> None:
    """Refuse a JSON Schema that grammar-constrained decoding cannot enforce, or a malformed one.

    UnsupportedParameter names the keyword and its JSON-pointer location; InvalidRequest
    carries the meta-schema's complaint.
    """
    if not isinstance(schema, dict | bool):
        raise InvalidRequest(
            f"{param} must be a JSON Schema (an object or a boolean), got {type(schema).__name__}",
            param=param,
        )
    _Walk(schema, param).schema(schema, "#", 0)
    if isinstance(schema, dict) and not isinstance(schema.get("$schema", ""), str):
        raise InvalidRequest(
            f"invalid JSON Schema in {param}: $schema must be a string", param=param
        )
    validator = validator_for(schema, default=Draft202012Validator)
    try:
        validator.check_schema(schema)
    except SchemaError as exc:
        where = "".join(f"/{_escape(str(part))}" for part in exc.path)
        raise InvalidRequest(
            f"invalid JSON Schema in {param} at #{where}: {exc.message}", param=param
        ) from exc


def check_regex(pattern: str, param: str) -> None:
    """Refuse a regex Python cannot compile, or one the grammar converter cannot express."""
    if not isinstance(pattern, str):
        raise InvalidRequest(f"{param} must be a string", param=param)
    try:
        re.compile(pattern)
    except (re.error, OverflowError, RecursionError) as exc:
        raise InvalidRequest(
            f"{param} is not a valid regular expression: {exc}", param=param
        ) from exc
    try:
        regex_grammar(pattern)
    except ValueError as exc:
        raise UnsupportedParameter(
            f"{param}: {exc}; grammar-constrained decoding cannot enforce it", param=param
        ) from exc


def check_choices(choices: list[str], param: str) -> None:
    """At least one choice, each a non-empty string."""
    if not isinstance(choices, list) or not choices:
        raise InvalidRequest(f"{param} must be a non-empty list of strings", param=param)
    for i, choice in enumerate(choices):
        if not isinstance(choice, str) or not choice:
            raise InvalidRequest(f"{param}[{i}] must be a non-empty string", param=param)


def _escape(name: str) -> str:
    """One JSON-pointer reference token."""
    return name.replace("~", "~0").replace("/", "~1")


class _Walk:
    """One pass over a schema: every keyword of every subschema must be one we enforce.

    Malformed shapes (a `properties` that is not an object, ...) are skipped here: the
    meta-schema check that follows reports them.
    """

    def __init__(self, root: dict[str, Any] | bool, param: str):
        self.root = root
        self.param = param

    def refuse(self, what: str, where: str, detail: str = "") -> UnsupportedParameter:
        return UnsupportedParameter(
            f"unsupported JSON Schema {what} at {where}{detail}; "
            "grammar-constrained decoding cannot enforce it",
            param=self.param,
        )

    def schema(self, node: object, where: str, depth: int) -> None:
        if not isinstance(node, dict):
            return
        if depth > _MAX_DEPTH:
            raise InvalidRequest(
                f"{self.param}: the JSON Schema nests deeper than {_MAX_DEPTH} levels at {where}",
                param=self.param,
            )
        for key, value in node.items():
            if key in _ANNOTATIONS:
                continue
            if key not in _ENFORCED:
                raise self.refuse(f"keyword {key!r}", where)
            here = f"{where}/{_escape(key)}"
            if key in _NAMED_SCHEMAS and isinstance(value, Mapping):
                for name, sub in value.items():
                    self.schema(sub, f"{here}/{_escape(str(name))}", depth + 1)
            elif key in _SCHEMA_LISTS or (key == "items" and isinstance(value, list)):
                for i, sub in enumerate(value if isinstance(value, list) else ()):
                    self.schema(sub, f"{here}/{i}", depth + 1)
            elif key in ("items", "additionalProperties"):
                self.schema(value, here, depth + 1)
            elif key == "type":
                self.types(value, where)
            elif key == "format" and isinstance(value, str) and value not in _FORMATS:
                detail = f" (supported formats: {', '.join(_FORMATS)})"
                raise self.refuse(f"format {value!r}", where, detail)
            elif key == "$ref" and isinstance(value, str):
                self.ref(value, where)
            elif key == "pattern" and isinstance(value, str):
                self.pattern(value, where)

    def types(self, value: object, where: str) -> None:
        for name in value if isinstance(value, list) else [value]:
            if isinstance(name, str) and name not in _TYPES:
                raise self.refuse(f"type {name!r}", where)

    def ref(self, ref: str, where: str) -> None:
        if ref != "#" and not ref.startswith("#/"):
            detail = " (only local '#/...' references can be followed)"
            raise self.refuse(f"keyword '$ref' to {ref!r}", where, detail)
        target: object = self.root
        for token in ref[2:].split("/") if ref != "#" else ():
            name = unquote(token).replace("~1", "/").replace("~0", "~")
            if isinstance(target, dict) and name in target:
                target = target[name]
            elif isinstance(target, list) and name.isdigit() and int(name) < len(target):
                target = target[int(name)]
            else:
                raise InvalidRequest(
                    f"{self.param}: the JSON Schema $ref {ref!r} at {where} does not resolve",
                    param=self.param,
                )

    def pattern(self, pattern: str, where: str) -> None:
        try:
            re.compile(pattern)
        except (re.error, OverflowError, RecursionError):
            return  # the meta-schema check reports it (format "regex")
        try:
            regex_grammar(pattern)
        except ValueError as exc:
            raise self.refuse("keyword 'pattern'", where, f" ({exc})") from exc
