"""The compose file of the RAG pattern: valid against the Compose specification's JSON
schema (the copy vendored by check-jsonschema), and holding what the docs promise."""

from __future__ import annotations

import copy
import importlib.resources
import json
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from tests.shipping.images import made_images

COMPOSE = Path(__file__).parents[2] / "deploy" / "compose" / "compose.yaml"


def spec_validator() -> jsonschema.protocols.Validator:
    vendored = importlib.resources.files("check_jsonschema.builtin_schemas.vendor")
    schema = json.loads((vendored / "compose-spec.json").read_text())
    cls = jsonschema.validators.validator_for(schema)
    return cls(schema, format_checker=cls.FORMAT_CHECKER)


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load(COMPOSE.read_text())
    return loaded


def test_valid_against_the_compose_specification(compose: dict[str, Any]) -> None:
    errors = sorted(spec_validator().iter_errors(compose), key=str)
    assert not errors, "\n".join(e.message for e in errors)


@pytest.mark.parametrize(
    "break_it",
    [
        lambda c: c["services"]["llm"].update(portz=["8000:8000"]),  # a typo
        lambda c: c["services"]["llm"].update(healthcheck={"test": "x", "interval": 10}),
        lambda c: c["services"]["embed"].update(restart=["always"]),
    ],
)
def test_the_schema_check_catches_mistakes(compose: dict[str, Any], break_it: Any) -> None:
    broken = copy.deepcopy(compose)
    break_it(broken)
    assert list(spec_validator().iter_errors(broken))


def test_three_services_of_the_rag_pattern(compose: dict[str, Any]) -> None:
    services = compose["services"]
    assert set(services) == {"llm", "embed", "vectordb"}
    for name in ("llm", "embed"):
        service = services[name]
        assert service["read_only"] is True and service["user"] == "10001:10001"
        assert service["cap_drop"] == ["ALL"]
        env = service["environment"]
        # keys come from a mounted secret, never from a value in the file
        assert env["NIMBLE_API_KEYS_FILE"] == "/run/secrets/api-keys"
        assert "NIMBLE_ALLOW_UNAUTHENTICATED" not in env
        assert service["secrets"] == ["api-keys"]
        port = env["NIMBLE_MANAGEMENT_PORT"]
        assert f"127.0.0.1:{port}/v1/health/ready" in " ".join(service["healthcheck"]["test"])
    assert "--model" in services["llm"]["command"]
    assert compose["secrets"]["api-keys"]["file"] == "./secrets/api-keys.yaml"
    # every image is pinned to a version
    for service in services.values():
        assert not service["image"].endswith(":latest") and ":" in service["image"]


def test_the_nimble_services_default_to_the_image_make_builds(compose: dict[str, Any]) -> None:
    """`make image` tags localhost/nimble:<version>: Compose runs it unless NIMBLE_IMAGE
    names another (a pushed one), and the deployment record names what runs."""
    default = f"${{NIMBLE_IMAGE:-{made_images()['cpu']}}}"
    for name in ("llm", "embed"):
        service = compose["services"][name]
        assert service["image"] == default, name
        assert service["environment"]["NIMBLE_IMAGE"] == default, name
