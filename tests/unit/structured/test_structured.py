"""Structured-output checks: what grammar-constrained decoding cannot enforce is refused."""

from __future__ import annotations

from typing import Any

import pytest

from nimble.errors import InvalidRequest, UnsupportedParameter
from nimble.structured.checks import check_choices, check_json_schema, check_regex

PARAM = "response_format.json_schema.schema"

SUPPORTED: dict[str, Any] = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "$id": "https://example.com/order",
    "title": "Order",
    "description": "An order",
    "type": "object",
    "properties": {
        "id": {"type": "string", "format": "uuid"},
        "placed": {"type": "string", "format": "date-time"},
        "status": {"enum": ["open", "shipped", "closed"], "default": "open"},
        "kind": {"const": "order"},
        "customer": {
            "type": "object",
            "properties": {
                "name": {"type": "string", "minLength": 1, "maxLength": 80},
                "email": {"type": "string", "pattern": "^[a-z]+@[a-z]+\\.(com|org)$"},
                "age": {"type": ["integer", "null"], "minimum": 0, "exclusiveMaximum": 150},
            },
            "required": ["name"],
            "additionalProperties": False,
        },
        "items": {
            "type": "array",
            "minItems": 1,
            "maxItems": 10,
            "items": {"$ref": "#/$defs/item"},
        },
        "point": {
            "type": "array",
            "prefixItems": [{"type": "number"}, {"type": "number", "maximum": 90}],
            "items": False,
        },
        "note": {
            "anyOf": [{"type": "string"}, {"type": "null"}],
            "nullable": True,
            "deprecated": True,
            "examples": ["fragile"],
            "$comment": "free text",
        },
        "payment": {
            "oneOf": [{"$ref": "#/definitions/card"}, {"type": "boolean"}],
            "readOnly": True,
        },
        "extra": {"allOf": [{"type": "object"}, {"additionalProperties": {"type": "string"}}]},
        "any": True,
        # property names are names, not keywords
        "not": {"type": "string", "writeOnly": True},
        "uniqueItems": {"type": "boolean"},
        "if": {"type": "integer", "exclusiveMinimum": 0},
    },
    "required": ["id", "status", "items", "not", "if"],
    "$defs": {
        "item": {
            "type": "object",
            "properties": {"sku": {"type": "string"}, "qty": {"type": "integer"}},
            "required": ["sku", "qty"],
        },
        "contains": {"type": "string"},
    },
    "definitions": {"card": {"type": "object", "properties": {"last4": {"type": "string"}}}},
}


def refusal(schema: object) -> UnsupportedParameter:
    with pytest.raises(UnsupportedParameter) as info:
        check_json_schema(schema, PARAM)
    assert info.value.param == PARAM
    assert info.value.code == "unsupported_parameter"
    return info.value


def test_the_supported_keywords_pass() -> None:
    check_json_schema(SUPPORTED, PARAM)
    check_json_schema(True, PARAM)
    check_json_schema({}, PARAM)


@pytest.mark.parametrize(
    ("keyword", "value"),
    [
        ("not", {"type": "string"}),
        ("if", {"type": "string"}),
        ("then", {"type": "string"}),
        ("else", {"type": "string"}),
        ("patternProperties", {"^x": {"type": "string"}}),
        ("propertyNames", {"maxLength": 3}),
        ("dependentRequired", {"a": ["b"]}),
        ("dependentSchemas", {"a": {"required": ["b"]}}),
        ("uniqueItems", True),
        ("multipleOf", 5),
        ("contains", {"type": "string"}),
        ("minContains", 1),
        ("maxContains", 2),
        ("minProperties", 1),
        ("maxProperties", 2),
        ("unevaluatedProperties", False),
        ("unevaluatedItems", False),
    ],
)
def test_each_refused_keyword_is_named_with_its_location(keyword: str, value: object) -> None:
    schema = {
        "type": "object",
        "properties": {"tags": {"type": "array", "items": {"type": "string"}, keyword: value}},
    }
    error = refusal(schema)
    assert error.message == (
        f"unsupported JSON Schema keyword {keyword!r} at #/properties/tags; "
        "grammar-constrained decoding cannot enforce it"
    )


@pytest.mark.parametrize(
    ("schema", "location"),
    [
        ({"multipleOf": 2}, "#"),
        ({"items": {"uniqueItems": True}}, "#/items"),
        ({"prefixItems": [{}, {"not": {}}]}, "#/prefixItems/1"),
        ({"anyOf": [{"type": "string"}, {"minProperties": 1}]}, "#/anyOf/1"),
        ({"oneOf": [{"contains": {}}]}, "#/oneOf/0"),
        ({"allOf": [{}, {}, {"if": {}}]}, "#/allOf/2"),
        ({"$defs": {"a/b~c": {"propertyNames": {}}}}, "#/$defs/a~1b~0c"),
        (
            {"definitions": {"x": {"properties": {"y": {"not": {}}}}}},
            "#/definitions/x/properties/y",
        ),
        ({"additionalProperties": {"maxProperties": 1}}, "#/additionalProperties"),
        ({"properties": {"not": {"dependentRequired": {}}}}, "#/properties/not"),
    ],
)
def test_refusals_are_found_anywhere_in_the_schema(schema: dict[str, Any], location: str) -> None:
    assert f" at {location};" in refusal(schema).message


def test_unknown_types_formats_and_remote_refs_are_refused() -> None:
    error = refusal({"properties": {"when": {"type": ["string", "timestamp"]}}})
    assert "type 'timestamp' at #/properties/when" in error.message
    error = refusal({"properties": {"mail": {"type": "string", "format": "email"}}})
    assert "format 'email' at #/properties/mail" in error.message
    assert "date, time, date-time, uuid" in error.message
    error = refusal({"items": {"$ref": "https://example.com/item.json"}})
    assert "'$ref' to 'https://example.com/item.json' at #/items" in error.message
    error = refusal({"$ref": "item.json#/x"})
    assert "'$ref'" in error.message


def test_a_pattern_the_grammar_cannot_express_is_refused() -> None:
    error = refusal({"properties": {"code": {"type": "string", "pattern": "^(?=a)\\w+$"}}})
    assert "'pattern' at #/properties/code (lookahead" in error.message


@pytest.mark.parametrize(
    ("schema", "text"),
    [
        ({"type": 5}, "#/type"),
        ({"properties": {"a": {"minLength": -1}}}, "#/properties/a/minLength"),
        ({"required": "name"}, "#/required"),
        ({"pattern": "(unclosed"}, "#/pattern"),
        ({"properties": []}, "#/properties"),
        ({"$ref": "#/$defs/missing"}, "does not resolve"),
        ({"$schema": ["draft"]}, "$schema must be a string"),
    ],
)
def test_a_malformed_schema_is_an_invalid_request(schema: object, text: str) -> None:
    with pytest.raises(InvalidRequest) as info:
        check_json_schema(schema, PARAM)
    assert type(info.value) is InvalidRequest
    assert info.value.param == PARAM
    assert text in info.value.message


@pytest.mark.parametrize("schema", [None, "object", 3, ["type"]])
def test_a_schema_that_is_not_an_object_is_an_invalid_request(schema: object) -> None:
    with pytest.raises(InvalidRequest, match="must be a JSON Schema") as info:
        check_json_schema(schema, PARAM)
    assert type(info.value) is InvalidRequest


def test_an_older_draft_is_checked_against_its_own_meta_schema() -> None:
    draft7 = "http://json-schema.org/draft-07/schema#"
    check_json_schema({"$schema": draft7, "type": "integer", "exclusiveMinimum": 1}, PARAM)
    with pytest.raises(InvalidRequest, match="is not of type 'number'"):
        check_json_schema({"$schema": draft7, "exclusiveMinimum": True}, PARAM)


def test_refs_resolve_through_escaped_names_and_arrays() -> None:
    schema = {
        "$defs": {"a/b": {"anyOf": [{"type": "string"}, {"type": "integer"}]}},
        "properties": {"x": {"$ref": "#/$defs/a~1b/anyOf/1"}, "self": {"$ref": "#"}},
    }
    check_json_schema(schema, PARAM)
    with pytest.raises(InvalidRequest, match="does not resolve"):
        check_json_schema({"properties": {"x": {"$ref": "#/$defs/a~1b/anyOf/2"}}}, PARAM)


def test_a_deeply_nested_schema_is_refused_before_recursion_fails() -> None:
    schema: dict[str, Any] = {"type": "string"}
    for _ in range(500):
        schema = {"type": "array", "items": schema}
    with pytest.raises(InvalidRequest, match="nests deeper than"):
        check_json_schema(schema, PARAM)


# -- regex ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "pattern",
    [r"\d{3}-\d{4}", r"^(yes|no)$", r"[A-Z][a-z]{2,8}", r"(?P<x>a|b)+?c*", r"\Aa.b\Z", r""],
)
def test_regexes_the_grammar_can_express_pass(pattern: str) -> None:
    check_regex(pattern, "regex")


@pytest.mark.parametrize(
    ("pattern", "feature"),
    [
        (r"(a)\1", "backreferences"),
        (r"(?P<q>')x(?P=q)", "backreferences"),
        (r"a(?=b)", "lookahead"),
        (r"a(?!b)", "negative lookahead"),
        (r"(?<=a)b", "lookbehind"),
        (r"(?<!a)b", "negative lookbehind"),
        (r"(a)?(?(1)b|c)", "conditional groups"),
        (r"a*+", "possessive quantifiers"),
        (r"a{1,3}+", "possessive quantifiers"),
        (r"(?>ab)", "atomic groups"),
        (r"\bword", "word boundaries \\b"),
        (r"a\Bb", "non-boundaries \\B"),
        (r"a^b", "anchors"),
        (r"a$b", "anchors"),
        (r"(?m)a$\n^b", "anchors"),
        (r"(?i)abc", "case-insensitive"),
        (r"a(?i:b)", "case-insensitive"),
        (r"x{2000}", "repetition counts above 1999"),
    ],
)
def test_regex_features_the_grammar_cannot_express_are_refused_by_name(
    pattern: str, feature: str
) -> None:
    with pytest.raises(UnsupportedParameter) as info:
        check_regex(pattern, "regex")
    assert info.value.param == "regex"
    assert feature in info.value.message
    assert info.value.message.startswith("regex: ")
    assert info.value.message.endswith("grammar-constrained decoding cannot enforce it")


@pytest.mark.parametrize("pattern", ["(", "a{2,1}", "[z-a]", "*", "a{4294967296}", "(" * 5000])
def test_a_regex_python_cannot_compile_is_an_invalid_request(pattern: str) -> None:
    with pytest.raises(InvalidRequest, match="not a valid regular expression") as info:
        check_regex(pattern, "regex")
    assert type(info.value) is InvalidRequest
    assert info.value.param == "regex"


# -- choices -------------------------------------------------------------------------------------


def test_choices_need_at_least_one_non_empty_string() -> None:
    check_choices(["yes"], "choice")
    check_choices(["yes", "no", "yes"], "choice")
    cases: list[tuple[object, str]] = [
        ([], "choice must be a non-empty list"),
        ("yes", "choice must be a non-empty list"),
        (["yes", ""], r"choice\[1\] must be a non-empty string"),
        (["yes", 3], r"choice\[1\] must be a non-empty string"),
        ([None], r"choice\[0\] must be a non-empty string"),
    ]
    for choices, message in cases:
        with pytest.raises(InvalidRequest, match=message) as info:
            check_choices(choices, "choice")  # type: ignore[arg-type]
        assert type(info.value) is InvalidRequest
        assert info.value.param == "choice"
