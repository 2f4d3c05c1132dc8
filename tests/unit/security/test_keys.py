"""Key file parsing, reload on change, and the per-key limiter (with a fake clock)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import yaml

from nimble.config import load_settings
from nimble.config.settings import ALL_ENDPOINTS
from nimble.errors import ConfigError, PermissionDenied, RateLimited, Unauthenticated
from nimble.security.keys import (
    ApiKey,
    KeyEntry,
    KeyStore,
    Limits,
    hash_key,
    new_key,
    parse_key_file,
)
from nimble.security.limits import KeyLimiter


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def key_file(path: Path, *entries: dict[str, object]) -> Path:
    path.write_text(yaml.safe_dump({"keys": list(entries)}))
    return path


def test_keys_are_stored_hashed_and_matched(tmp_path: Path) -> None:
    secret = new_key()
    assert secret.startswith("nb-") and len(secret) > 40
    path = key_file(tmp_path / "k.yaml", {"id": "a", "sha256": hash_key(secret)})
    assert secret not in path.read_text()
    store = KeyStore(path, ALL_ENDPOINTS)
    assert store.authenticate(secret).id == "a"
    with pytest.raises(Unauthenticated):
        store.authenticate(secret + "x")
    with pytest.raises(Unauthenticated) as missing:
        store.authenticate(None)
    assert missing.value.code == "missing_api_key"


@pytest.mark.parametrize(
    ("entry", "problem"),
    [
        ({"id": "a", "sha256": "not-hex"}, "sha256"),
        (
            {"id": "a", "sha256": "0" * 64, "endpoints": ["chat", "root"]},
            "unknown endpoints root",
        ),
        ({"id": "a", "sha256": "0" * 64, "scopes": ["x"]}, "scopes"),
        ({"id": "a b", "sha256": "0" * 64}, "id"),
        (
            {"id": "a", "sha256": "0" * 64, "limits": {"requests_per_minute": 0}},
            "requests_per_minute",
        ),
    ],
)
def test_bad_key_files_are_refused(tmp_path: Path, entry: dict[str, object], problem: str) -> None:
    path = key_file(tmp_path / "k.yaml", entry)
    with pytest.raises(ConfigError) as refused:
        parse_key_file(path, ALL_ENDPOINTS)
    assert problem in str(refused.value)
    assert str(path) in str(refused.value)


def test_duplicate_ids_and_missing_file(tmp_path: Path) -> None:
    path = key_file(
        tmp_path / "k.yaml", {"id": "a", "sha256": "0" * 64}, {"id": "a", "sha256": "1" * 64}
    )
    with pytest.raises(ConfigError, match="unique"):
        parse_key_file(path, ALL_ENDPOINTS)
    with pytest.raises(ConfigError, match="No such file"):
        parse_key_file(tmp_path / "absent.yaml", ALL_ENDPOINTS)


def test_store_rereads_a_changed_file(tmp_path: Path) -> None:
    clock = Clock()
    path = key_file(tmp_path / "k.yaml", {"id": "old", "sha256": hash_key("nb-old")})
    store = KeyStore(path, ALL_ENDPOINTS, check_interval=2.0, clock=clock)
    key_file(path, {"id": "new", "sha256": hash_key("nb-new")})
    os.utime(path, ns=(1, 1))  # a different mtime even on coarse file systems
    clock.now += 1.0  # within the check interval: not looked at yet
    assert store.authenticate("nb-old").id == "old"
    clock.now += 1.5
    assert store.authenticate("nb-new").id == "new"
    with pytest.raises(Unauthenticated):
        store.authenticate("nb-old")
    # a broken rewrite keeps the keys in use
    path.write_text("keys: [")
    os.utime(path, ns=(2, 2))
    clock.now += 5
    assert store.authenticate("nb-new").id == "new"


def test_scopes() -> None:
    key = ApiKey.from_entry(
        KeyEntry(id="k", sha256="0" * 64, models=("m1",), endpoints=("chat",), tools=False)
    )
    key.require_model("m1")
    key.require_endpoint("chat")
    for check in (lambda: key.require_model("m2"), lambda: key.require_endpoint("embeddings")):
        with pytest.raises(PermissionDenied):
            check()
    with pytest.raises(PermissionDenied) as no_tools:
        key.require_tools(["f"])
    assert no_tools.value.code == "tools_denied"
    anything = ApiKey.from_entry(KeyEntry(id="any", sha256="0" * 64))
    assert anything.allows_model("whatever") and anything.allows_endpoint("metrics")
    anything.require_tools(["f", "g"])
    assert anything.tools.declare is None and anything.tools.call is None


def limited(**limits: int) -> ApiKey:
    return ApiKey.from_entry(KeyEntry(id="k", sha256="0" * 64, limits=Limits(**limits)))


def test_requests_per_minute_refill() -> None:
    clock = Clock()
    limiter = KeyLimiter(clock)
    key = limited(requests_per_minute=60)  # one per second, bursts of 60
    for _ in range(60):
        limiter.admit(key)
        limiter.done(key, 0)
    with pytest.raises(RateLimited) as refused:
        limiter.admit(key)
    assert refused.value.retry_after == 1
    clock.now += 1.0
    limiter.admit(key)  # one more after a second
    with pytest.raises(RateLimited):
        limiter.admit(key)


def test_tokens_per_minute_debt() -> None:
    clock = Clock()
    limiter = KeyLimiter(clock)
    key = limited(tokens_per_minute=600)  # 10 tokens per second
    limiter.admit(key)
    limiter.done(key, 900)  # overdraws by 300 tokens: 30 s of refill
    with pytest.raises(RateLimited) as refused:
        limiter.admit(key)
    assert 30 <= refused.value.retry_after <= 31
    clock.now += 29
    with pytest.raises(RateLimited):
        limiter.admit(key)
    clock.now += 2
    limiter.admit(key)


def test_concurrency_and_changed_limits() -> None:
    limiter = KeyLimiter(Clock())
    key = limited(concurrent_requests=2)
    limiter.admit(key)
    limiter.admit(key)
    with pytest.raises(RateLimited):
        limiter.admit(key)
    limiter.done(key, 0)
    limiter.admit(key)
    # a reload that raises the limit applies at once
    limiter.admit(limited(concurrent_requests=3))


def test_non_loopback_needs_keys(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"refusing to listen on 0\.0\.0\.0 without API keys"):
        load_settings(host="0.0.0.0")
    assert load_settings(host="0.0.0.0", allow_unauthenticated=True).host == "0.0.0.0"
    keys = key_file(tmp_path / "k.yaml")
    assert load_settings(host="0.0.0.0", api_keys_file=keys).api_keys_file == keys
    for loopback in ("127.0.0.1", "localhost", "::1"):
        assert load_settings(host=loopback).host == loopback
