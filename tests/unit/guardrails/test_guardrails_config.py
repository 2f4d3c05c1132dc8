"""The guardrails file: what it reads (rails by name, the lists per stage, per model, the
streaming window) and the one-line refusals of a bad file, naming the file and the field."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from nimble.errors import ConfigError
from nimble.guardrails.classifier import ClassifierSettings
from nimble.guardrails.config import load_guardrails
from nimble.guardrails.remote import RemoteSettings

FULL = """
flows:
  injection:
    type: classifier
    model: prompt-guard
    labels: [INJECTION, JAILBREAK]
    threshold: 0.9
  safety:
    type: judge
    model: llama-guard
    format: llama-guard-3-1b
    categories: [S1, S9]
    timeout: 20
  self-check:
    type: judge
    model: smollm2-135m-instruct
  on-topic:
    type: topics
    allow: [invoice, payment, refund]
  no-secrets:
    type: topics
    deny: [password, api key]
    deny_patterns: ['\\bsk-[A-Za-z0-9]{20,}']
  moderation:
    type: remote
    url: http://moderation.internal:8000/v1/moderations
    api_key_env: MODERATION_KEY
    on_error: allow
    timeout: 2
rails:
  input:
    flows: [no-secrets, injection, on-topic]
  output:
    flows: [no-secrets, safety]
    streaming:
      chunk_size: 300
      context_size: 60
models:
  smollm2-135m-instruct:
    output:
      flows: [no-secrets]
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "guardrails.yaml"
    path.write_text(text)
    return path


def test_a_full_file(tmp_path: Path) -> None:
    config = load_guardrails(write(tmp_path, FULL))
    assert list(config.rails) == [
        "injection",
        "safety",
        "self-check",
        "on-topic",
        "no-secrets",
        "moderation",
    ]
    injection = config.rails["injection"]
    assert injection.type == "classifier"
    assert isinstance(injection.settings, ClassifierSettings)
    assert injection.settings.labels == ("INJECTION", "JAILBREAK")
    assert injection.settings.threshold == 0.9
    assert injection.stages == ("input", "output")
    assert injection.on_error == "block" and injection.timeout == 30.0  # the defaults
    # an allow list reads the user's turns of the input only
    assert config.rails["on-topic"].stages == ("input",)
    assert config.rails["on-topic"].roles == frozenset({"user"})
    assert config.rails["no-secrets"].roles is None
    remote = config.rails["moderation"]
    assert isinstance(remote.settings, RemoteSettings)
    assert remote.settings.api == "moderations"  # read from the URL
    assert (remote.on_error, remote.timeout) == ("allow", 2.0)
    assert config.flows("any-model", "input") == ("no-secrets", "injection", "on-topic")
    assert config.flows("any-model", "output") == ("no-secrets", "safety")
    # a model's own list replaces the default of that stage only
    assert config.flows("smollm2-135m-instruct", "output") == ("no-secrets",)
    assert config.flows("smollm2-135m-instruct", "input") == config.flows("x", "input")
    assert (config.window.chunk_size, config.window.context_size) == (300, 60)
    assert config.served_by() == {"prompt-guard", "llama-guard", "smollm2-135m-instruct"}


def test_the_default_window(tmp_path: Path) -> None:
    config = load_guardrails(write(tmp_path, "flows: {}\n"))
    assert (config.window.chunk_size, config.window.context_size) == (200, 50)
    assert config.flows("m", "input") == () and config.flows("m", "output") == ()


def test_an_empty_file_is_no_rails(tmp_path: Path) -> None:
    assert load_guardrails(write(tmp_path, "")).rails == {}


def test_the_record_holds_no_secret(tmp_path: Path) -> None:
    text = FULL.replace(
        "    api_key_env: MODERATION_KEY\n",
        "    api_key: sk-very-secret-value\n",
    ).replace("moderation.internal", "user:pw@moderation.internal")
    record = load_guardrails(write(tmp_path, text)).rails["moderation"].record()
    dumped = repr(record)
    assert "very-secret" not in dumped and "pw@" not in dumped
    assert record["settings"]["authenticated"] is True
    assert record["settings"]["url"] == "http://moderation.internal:8000/v1/moderations"
    assert record["type"] == "remote" and record["on_error"] == "allow"


@pytest.mark.parametrize(
    ("text", "field"),
    [
        ("flows: {a: {type: nope}}", "flows.a.type: unknown rail type 'nope'"),
        ("flows: {a: {deny: [x]}}", "flows.a.type: Field required"),
        ("flows: {a: {type: topics, deny: [x], colour: red}}", "flows.a.colour: unknown field"),
        ("flows: {a: {type: topics}}", "flows.a: give deny, deny_patterns, allow"),
        ("flows: {a: {type: topics, deny: ['']}}", "flows.a.deny"),
        ("flows: {a: {type: topics, deny_patterns: ['(']}}", "flows.a.deny_patterns"),
        (
            "flows: {a: {type: classifier, model: m, labels: [X], threshold: 2}}",
            "flows.a.threshold",
        ),
        ("flows: {a: {type: classifier, model: m}}", "flows.a.labels"),
        ("flows: {a: {type: judge, model: m, format: gpt}}", "flows.a.format"),
        ("flows: {a: {type: judge, model: m, prompt: 'judge this'}}", "flows.a.prompt"),
        (
            "flows: {a: {type: judge, model: m, format: llama-guard-3, categories: [S99]}}",
            "flows.a.categories",
        ),
        ("flows: {a: {type: remote, url: 'http://h/check'}}", "flows.a.api: set it"),
        ("flows: {a: {type: remote, url: 'ftp://h/v1/classify'}}", "flows.a.url"),
        ("flows: {a: {type: remote, url: 'http://h/v1/classify'}}", "flows.a.labels"),
        ("flows: {a: {type: topics, deny: [x], on_error: maybe}}", "flows.a.on_error"),
        ("flows: {a: {type: topics, deny: [x], timeout: 0}}", "flows.a.timeout"),
        ("flows: {a: {type: topics, deny: [x], roles: [robot]}}", "flows.a.roles"),
        (
            "flows: {a: {type: topics, allow: [x], stages: [output]}}",
            "flows.a.stages: a topics rail of these settings runs on input only",
        ),
        ("flows: {'a b': {type: topics, deny: [x]}}", "flows.a b"),
        ("rails: {input: {flows: [ghost]}}", "rails.input.flows.0: no rail named 'ghost'"),
        (
            "flows: {a: {type: topics, allow: [x]}}\nrails: {output: {flows: [a]}}",
            "rails.output.flows.0: rail 'a' runs on input only",
        ),
        (
            "flows: {a: {type: topics, deny: [x]}}\nrails: {input: {flows: [a, a]}}",
            "rails.input.flows: a rail is listed twice",
        ),
        (
            "rails: {output: {streaming: {chunk_size: 50, context_size: 50}}}",
            "rails.output.streaming.context_size: must be less than chunk_size",
        ),
        ("rails: {output: {streaming: {chunk_size: 0}}}", "rails.output.streaming.chunk_size"),
        ("models: {m: {input: {flows: [ghost]}}}", "models.m.input.flows.0: no rail named"),
        ("raisl: {}", "raisl: unknown field"),
        ("- a list", "the file must be a mapping"),
        ("flows: [unclosed", "not valid YAML (line 1)"),
    ],
)
def test_a_bad_file_names_the_file_and_the_field(tmp_path: Path, text: str, field: str) -> None:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as caught:
        load_guardrails(path)
    message = str(caught.value)
    assert message.startswith(f"guardrails {path}: "), message
    assert field in message, message
    assert "\n" not in message


def test_a_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"guardrails .*none.yaml: cannot read it"):
        load_guardrails(tmp_path / "none.yaml")


def test_serve_stops_on_a_bad_file_with_one_line(tmp_path: Path) -> None:
    path = write(tmp_path, "flows: {a: {type: topics, deny: [x], colour: red}}")
    result = subprocess.run(
        [sys.executable, "-m", "nimble.cli.main", "serve", "--model", "fake", "--port", "0"],
        capture_output=True,
        text=True,
        env={"NIMBLE_GUARDRAILS": str(path), "PATH": "/usr/bin:/bin"},
        timeout=120,
    )
    assert result.returncode != 0
    problem = [line for line in result.stderr.splitlines() if "guardrails" in line]
    assert len(problem) == 1, result.stderr
    assert f"guardrails {path}: flows.a.colour: unknown field" in problem[0]


def test_serve_refuses_rails_on_a_model_it_does_not_serve(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "flows: {c: {type: classifier, model: prompt-guard, labels: [INJECTION]}}\n"
        "rails: {input: {flows: [c]}}\n",
    )
    from nimble.config import Settings
    from nimble.runtime.assemble import build_runtime

    with pytest.raises(ConfigError, match=r"flows.c.model: `prompt-guard` is not served here"):
        build_runtime(Settings(model=("fake",), guardrails=path))
    path.write_text("models: {gpt-9: {input: {flows: []}}}\n")
    with pytest.raises(ConfigError, match=r"models.gpt-9: not a served model"):
        build_runtime(Settings(model=("fake",), guardrails=path))


def test_a_rail_refused_when_it_is_built_names_the_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from nimble.config import Settings
    from nimble.runtime.assemble import build_runtime

    monkeypatch.delenv("NOPE_KEY", raising=False)
    path = write(
        tmp_path,
        "flows: {m: {type: remote, url: 'http://127.0.0.1:9/v1/moderations', "
        "api_key_env: NOPE_KEY}}\n",
    )
    with pytest.raises(ConfigError) as caught:
        build_runtime(Settings(model=("fake",), guardrails=path))
    assert str(caught.value) == f"guardrails {path}: flows.m.api_key_env: NOPE_KEY is not set"


def test_inspect_states_the_rails_in_force(tmp_path: Path) -> None:
    import json

    path = write(
        tmp_path,
        "flows:\n  no-secrets: {type: topics, deny: [password]}\n"
        "  moderation: {type: remote, url: 'http://u:pw@h/v1/moderations', api_key: sk-123}\n"
        "rails:\n  input: {flows: [no-secrets, moderation]}\n",
    )
    result = subprocess.run(
        [sys.executable, "-m", "nimble.cli.main", "inspect", "--model", "fake"],
        capture_output=True,
        text=True,
        env={"NIMBLE_GUARDRAILS": str(path), "PATH": "/usr/bin:/bin"},
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert "sk-123" not in result.stdout and "pw@" not in result.stdout
    rails = json.loads(result.stdout)["guardrails"]
    assert rails["models"] == {"fake-model": {"input": ["no-secrets", "moderation"], "output": []}}
    assert rails["rails"]["moderation"]["settings"]["url"] == "http://h/v1/moderations"
