"""The policy gate's part of the key file: `purpose`, tool scopes (declare / call), bound
`rails`; their validation, the key's hashed ref and what the deployment record says of it."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest
import yaml

from nimble.config.settings import ALL_ENDPOINTS
from nimble.errors import ConfigError, PermissionDenied
from nimble.security.keys import (
    ApiKey,
    KeyEntry,
    KeyStore,
    hash_key,
    key_record,
    keys_record,
    parse_key_file,
)

SHA = "ab" * 32


def key_file(path: Path, *entries: dict[str, Any]) -> Path:
    path.write_text(yaml.safe_dump({"keys": list(entries)}))
    return path


def parse(tmp_path: Path, known: set[str] | None = None, **fields: Any) -> ApiKey:
    """The one key of a file holding `fields`; `known`: the rails configured."""
    path = key_file(tmp_path / "k.yaml", {"id": "agent", "sha256": SHA, **fields})
    (key,) = parse_key_file(path, ALL_ENDPOINTS, known)
    return key


def test_tools_true_false_and_the_mapping(tmp_path: Path) -> None:
    anything = parse(tmp_path)
    assert (anything.tools.declare, anything.tools.call, anything.tools.enabled) == (
        None,
        None,
        True,
    )
    assert parse(tmp_path, tools=True).tools == anything.tools
    off = parse(tmp_path, tools=False).tools
    assert (off.declare, off.call, off.enabled) == (frozenset(), frozenset(), False)
    scoped = parse(
        tmp_path, tools={"declare": ["lookup_claim", "send_email"], "call": ["lookup_claim"]}
    ).tools
    assert scoped.declare == {"lookup_claim", "send_email"}
    assert scoped.call == {"lookup_claim"}
    assert scoped.may_declare("send_email") and not scoped.may_call("send_email")
    assert not scoped.may_declare("delete_claim") and not scoped.may_call("delete_claim")
    # `call` left out (or `*`) is what `declare` allows, never more
    declared_only = parse(tmp_path, tools={"declare": ["a", "b"]}).tools
    assert declared_only.call == {"a", "b"} and not declared_only.may_call("c")
    # `declare: *` with a call list: any tool may be offered, only those called
    called_only = parse(tmp_path, tools={"call": ["a"]}).tools
    assert called_only.declare is None and called_only.call == {"a"}
    assert called_only.may_declare("zzz") and not called_only.may_call("zzz")
    # an empty declare list is a key without tools
    assert not parse(tmp_path, tools={"declare": []}).tools.enabled


def test_purpose_and_rails(tmp_path: Path) -> None:
    key = parse(tmp_path, purpose="  claims-triage agent (team B)  ", rails=["pii-in", "pii-in"])
    assert key.purpose == "claims-triage agent (team B)"
    assert key.rails == ("pii-in",)  # once each, in the file's order
    assert parse(tmp_path).purpose is None and parse(tmp_path).rails == ()
    # with the configured rails known, a key bound to them loads
    assert parse(tmp_path, {"pii-in", "judge"}, rails=["judge", "pii-in"]).rails == (
        "judge",
        "pii-in",
    )


@pytest.mark.parametrize(
    ("fields", "problem"),
    [
        (
            {"tools": {"declare": ["a"], "call": ["a", "b"]}},
            "tools: Value error, call names b, which declare does not list",
        ),
        ({"tools": "yes please"}, "tools: Value error, expected true, false, or {declare"),
        ({"tools": {"declare": ["a"], "allow": ["a"]}}, "tools.allow: Extra inputs"),
        ({"tools": {"declare": ["send email"]}}, "tools.declare.0: String should match"),
        ({"tools": {"call": "a"}}, "tools.call: Input should be a valid tuple"),
        ({"purpose": "two\nlines"}, "purpose: String should match"),
        ({"purpose": "x" * 201}, "purpose: String should have at most 200 characters"),
        ({"purpose": "   "}, "purpose: String should have at least 1 character"),
        ({"rails": ["no spaces please"]}, "rails.0: String should match"),
        ({"rails": "pii"}, "rails: Input should be a valid tuple"),
    ],
)
def test_bad_entries_are_refused_naming_the_field(
    tmp_path: Path, fields: dict[str, Any], problem: str
) -> None:
    path = key_file(tmp_path / "k.yaml", {"id": "agent", "sha256": SHA, **fields})
    with pytest.raises(ConfigError) as refused:
        parse_key_file(path, ALL_ENDPOINTS)
    assert f"{path}: keys.0.{problem}" in str(refused.value)


def test_a_key_bound_to_a_rail_not_configured_is_refused(tmp_path: Path) -> None:
    path = key_file(tmp_path / "k.yaml", {"id": "agent", "sha256": SHA, "rails": ["pii", "x"]})
    with pytest.raises(ConfigError) as unknown:
        parse_key_file(path, ALL_ENDPOINTS, {"pii", "judge"})
    assert str(unknown.value) == (
        f"API key file {path}: key `agent`: unknown rails x (configured: judge, pii)"
    )
    with pytest.raises(ConfigError, match=r"unknown rails pii, x \(configured: none"):
        parse_key_file(path, ALL_ENDPOINTS, set())
    assert parse_key_file(path, ALL_ENDPOINTS)[0].rails == ("pii", "x")  # None: not checked


def test_a_broken_scope_on_reload_keeps_the_keys_in_use(tmp_path: Path) -> None:
    scoped = {"id": "agent", "sha256": hash_key("nb-agent"), "tools": {"call": ["a"]}}
    path = key_file(tmp_path / "k.yaml", scoped)
    store = KeyStore(path, ALL_ENDPOINTS, known_rails={"pii"})
    key_file(path, {**scoped, "tools": {"declare": ["b"], "call": ["a"]}})
    os.utime(path, ns=(1, 1))
    assert store.reload() is False
    assert store.authenticate("nb-agent").tools.call == {"a"}
    key_file(path, {**scoped, "rails": ["judge"]})  # not configured: refused too
    assert store.reload() is False
    key_file(path, {**scoped, "rails": ["pii"], "purpose": "triage"})
    assert store.reload() is True
    key = store.authenticate("nb-agent")
    assert (key.rails, key.purpose) == (("pii",), "triage")


def test_declaring_a_tool_outside_the_scope_is_denied_naming_it() -> None:
    key = ApiKey.from_entry(
        KeyEntry.model_validate(
            {"id": "agent", "sha256": SHA, "tools": {"declare": ["lookup_claim", "send_email"]}}
        )
    )
    key.require_tools(["send_email", "lookup_claim"])
    key.require_tools([])
    with pytest.raises(PermissionDenied) as denied:
        key.require_tools(["lookup_claim", "delete_claim", "wipe"])
    error = denied.value
    assert (error.code, error.param) == ("tool_denied", "tools")
    assert error.message == "API key `agent` may not declare the tool `delete_claim`"


def test_the_ref_hides_the_id_and_the_hash() -> None:
    def key(key_id: str, sha256: str) -> ApiKey:
        return ApiKey.from_entry(KeyEntry(id=key_id, sha256=sha256))

    ref = key("analytics", SHA).ref
    assert ref == key("analytics", SHA).ref  # the same file gives the same ref everywhere
    assert ref.startswith("key-") and len(ref) == 16
    assert int(ref[4:], 16) >= 0
    assert "analytics" not in ref and ref[4:] not in SHA
    assert key("analytics", "cd" * 32).ref != ref  # a new secret: a new ref
    assert key("analytics2", SHA).ref != ref


def test_the_record_of_a_key_states_its_scopes_and_no_secret(tmp_path: Path) -> None:
    secret = "nb-the-secret-key-itself-0123456789abcdef"
    digest = hash_key(secret)
    path = key_file(
        tmp_path / "k.yaml",
        {
            "id": "claims-team-acme",
            "sha256": digest,
            "purpose": "claims-triage-agent",
            "models": ["fake-model"],
            "endpoints": ["chat", "embeddings"],
            "tools": {"declare": ["send_email", "lookup_claim"], "call": ["lookup_claim"]},
            "rails": ["pii-in"],
            "limits": {"requests_per_minute": 60},
        },
        {"id": "prometheus", "sha256": "cd" * 32, "endpoints": ["metrics"], "tools": False},
    )
    keys = parse_key_file(path, ALL_ENDPOINTS)
    record = keys_record(keys)
    assert record == [key_record(k) for k in keys]
    assert record[0] == {
        "ref": keys[0].ref,
        "purpose": "claims-triage-agent",
        "models": ["fake-model"],
        "endpoints": ["chat", "embeddings"],
        "tools": {"declare": ["lookup_claim", "send_email"], "call": ["lookup_claim"]},
        "rails": ["pii-in"],
        "limits": {
            "requests_per_minute": 60,
            "tokens_per_minute": None,
            "concurrent_requests": None,
        },
    }
    assert record[1]["models"] == ["*"] and record[1]["tools"] == {"declare": [], "call": []}
    text = json.dumps(record)
    for secret_part in (secret, digest, "claims-team-acme", "prometheus"):
        assert secret_part not in text
    assert keys_record(None) is None


def test_a_gateway_that_cannot_enforce_scopes_refuses_keys_with_them(tmp_path: Path) -> None:
    from nimble.config.gateway import GatewaySettings
    from nimble.gateway.app import create_gateway_app

    plain = {"id": "plain", "sha256": SHA}
    path = key_file(tmp_path / "k.yaml", plain, {"id": "agent", "sha256": "cd" * 32, "rails": []})
    upstream = {"upstream": ("http://127.0.0.1:9",), "api_keys_file": path}
    create_gateway_app(GatewaySettings(**upstream, upstream_api_key="nb-upstream"))
    for scoped in ({"tools": False}, {"tools": {"call": ["a"]}}, {"rails": ["pii"]}):
        key_file(path, plain, {"id": "agent", "sha256": "cd" * 32, **scoped})
        # without an upstream key the replicas check each client's own key: let in
        create_gateway_app(GatewaySettings(**upstream))
        with pytest.raises(ConfigError) as refused:
            create_gateway_app(GatewaySettings(**upstream, upstream_api_key="nb-upstream"))
        assert str(refused.value).startswith(
            f"API key file {path}: key `agent`: its tools scope and rails would not be "
            "enforced: the replicas see the gateway's --upstream-api-key, not this key"
        )
