"""`nimble serve --help` documents every setting; options reach the settings object."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from nimble.cli.main import app
from nimble.cli.options import given
from nimble.config import Settings, load_settings


def test_serve_help_documents_every_setting() -> None:
    result = CliRunner().invoke(app, ["serve", "--help"], env={"COLUMNS": "300"})
    assert result.exit_code == 0
    for name, field in Settings.model_fields.items():
        assert "--" + name.replace("_", "-") in result.output
        assert f"NIMBLE_{name.upper()}" in result.output
        assert field.description and field.description.split()[0] in result.output


def test_given_values_become_settings() -> None:
    values = given({"model": ["fake", "fake:b"], "port": 9001, "jsonl_logging": None})
    settings = load_settings(**values)
    assert settings.model == ("fake", "fake:b")
    assert settings.port == 9001


def test_bad_flag_value_exits_nonzero(monkeypatch: pytest.MonkeyPatch) -> None:
    result = CliRunner().invoke(app, ["serve", "--max-running", "0"])
    assert result.exit_code == 2
    assert "max_running" in result.output
