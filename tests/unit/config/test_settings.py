"""Settings: precedence CLI > env > YAML > defaults, validation, the generated docs table."""

from __future__ import annotations

from pathlib import Path

import pytest

from nimble.config import load_settings
from nimble.config.doc import settings_table
from nimble.config.gateway import GatewaySettings
from nimble.config.settings import DEFAULT_MODELS
from nimble.errors import ConfigError


def test_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    settings = load_settings()
    assert settings.model == DEFAULT_MODELS
    assert (settings.host, settings.port) == ("127.0.0.1", 8000)


def test_precedence(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = tmp_path / "nimble.yaml"
    config.write_text(
        "port: 7000\nmax_running: 2\nhost: 0.0.0.0\nallow_unauthenticated: true\nmodel: [fake]\n"
    )
    monkeypatch.setenv("NIMBLE_CONFIG", str(config))
    monkeypatch.setenv("NIMBLE_MAX_RUNNING", "3")
    settings = load_settings(port=9000)
    assert settings.port == 9000  # CLI
    assert settings.max_running == 3  # env over YAML
    assert settings.host == "0.0.0.0"  # YAML over default
    assert settings.model == ("fake",)


def test_env_list_is_comma_separated(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NIMBLE_MODEL", "a.gguf, b")
    assert load_settings().model == ("a.gguf", "b")


@pytest.mark.parametrize(
    ("values", "needle"),
    [({"port": -1}, "port"), ({"max_running": 0}, "max_running"), ({"log_level": "loud"}, "log")],
)
def test_invalid_values(values: dict[str, object], needle: str) -> None:
    with pytest.raises(ConfigError, match=needle):
        load_settings(**values)


def test_missing_yaml(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load_settings(config=tmp_path / "none.yaml")


def test_settings_frozen() -> None:
    settings = load_settings()
    with pytest.raises(ValueError, match="frozen"):
        settings.port = 1  # type: ignore[misc]


def test_docs_table_is_current() -> None:
    doc = Path(__file__).parents[3] / "docs" / "configuration.md"
    assert settings_table() in doc.read_text(), "regenerate: nimble settings-doc"
    gateway = settings_table(GatewaySettings, own_only=True)
    assert gateway in doc.read_text(), "regenerate: nimble settings-doc --gateway"


def test_chat_template_file_is_read_or_refused(tmp_path: Path) -> None:
    from nimble.errors import ConfigError
    from nimble.runtime.assemble import read_template

    template = tmp_path / "t.jinja"
    template.write_text("{{ messages }}")
    assert read_template(template) == "{{ messages }}"
    assert read_template(None) is None
    with pytest.raises(ConfigError, match=r"chat_template: cannot read .*nope"):
        read_template(tmp_path / "nope")


def test_gateway_settings_need_replicas_and_read_the_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from nimble.config.gateway import load_gateway_settings

    with pytest.raises(ConfigError, match="no replicas"):
        load_gateway_settings()
    with pytest.raises(ConfigError, match="upstream 'ftp://x'"):
        load_gateway_settings(upstream=("ftp://x",))
    with pytest.raises(ConfigError, match="NAME:PORT"):
        load_gateway_settings(upstream_dns=("replicas.ns.svc",))
    monkeypatch.setenv("NIMBLE_UPSTREAM", "http://a:8000,http://b:8000")
    monkeypatch.setenv("NIMBLE_ROUTING_POLICY", "least-loaded")
    settings = load_gateway_settings()
    assert settings.upstream == ("http://a:8000", "http://b:8000")
    assert settings.routing_policy == "least-loaded"
    with pytest.raises(ConfigError, match="without API keys"):
        load_gateway_settings(host="0.0.0.0")  # the same guard as serve
