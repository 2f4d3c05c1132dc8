"""JSON Schema helpers for constrained decoding: closed objects, the OpenAI `tools` shape
that chat templates and engines read, and llguidance's options."""

from __future__ import annotations

from typing import Any

from nimble.types import ToolFunction

_SUBSCHEMA_LISTS = ("anyOf", "oneOf", "allOf", "prefixItems")
_SUBSCHEMA_MAPS = ("properties", "$defs", "definitions")


def close_objects(schema: Any) -> Any:
    """The schema with `additionalProperties: false` on every object schema that does not
    say otherwise. Every instance of the result is an instance of the original, so the
    output still validates; but a small model can no longer pad an object with keys the
    schema never named (what OpenAI's strict mode does)."""
    if not isinstance(schema, dict):
        return schema
    out = dict(schema)
    for key in _SUBSCHEMA_MAPS:
        if isinstance(out.get(key), dict):
            out[key] = {name: close_objects(sub) for name, sub in out[key].items()}
    for key in _SUBSCHEMA_LISTS:
        if isinstance(out.get(key), list):
            out[key] = [close_objects(sub) for sub in out[key]]
    for key in ("items", "additionalProperties"):
        if isinstance(out.get(key), dict):
            out[key] = close_objects(out[key])
    kind = out.get("type")
    is_object = kind == "object" or (isinstance(kind, list) and "object" in kind)
    if (is_object or "properties" in out) and "additionalProperties" not in out:
        out["additionalProperties"] = False
    return out


def tool_json(tool: ToolFunction) -> dict[str, Any]:
    """A declared function in OpenAI's `tools` shape (what chat templates and vLLM read)."""
    function: dict[str, Any] = {"name": tool.name}
    if tool.description:
        function["description"] = tool.description
    function["parameters"] = tool.parameters or {"type": "object", "properties": {}}
    return {"type": "function", "function": function}


def llguidance_schema(schema: dict[str, Any]) -> dict[str, Any]:
    """A JSON schema with llguidance's options, for the engines whose grammars llguidance
    compiles (llama.cpp's JSON-schema conversion in the xllamacpp build, the transformers
    engine): compact JSON (a small model otherwise may write whitespace until max_tokens)
    and `oneOf` read as `anyOf` (llguidance refuses a oneOf whose branches it cannot prove
    disjoint, and llama.cpp then generates unconstrained text without saying so). The
    schema's own `x-guidance` wins."""
    options = {"whitespace_flexible": False, "coerce_one_of": True}
    return {**schema, "x-guidance": {**options, **schema.get("x-guidance", {})}}
