"""The console (/ui): on by default on loopback only, its files served from the package with
a strict content security policy and no key, 404 like an unknown path when off; the page's
modules all ship (every import resolves to a served file). The pages themselves run in a
real browser in tests/e2e/test_console_browser.py."""

from __future__ import annotations

import fnmatch
import re
import tomllib
from pathlib import Path

import httpx
import pytest

from nimble.api.routes.console import console_files
from nimble.config import load_settings
from nimble.errors import ConfigError
from tests.api.test_auth import ADMIN, bearer, keyed_service
from tests.conftest import assert_openai_error, fake_service

ROOT = Path(__file__).parents[2]
CONSOLE = ROOT / "nimble" / "api" / "console"


async def test_pages_and_files_are_served_with_their_policy() -> None:
    async with fake_service() as (_, client):
        index = await client.get("/ui/")
        assert index.status_code == 200
        assert index.headers["content-type"] == "text/html; charset=utf-8"
        assert '<script type="module" src="assets/app.js">' in index.text
        policy = index.headers["content-security-policy"]
        assert "script-src 'self'" in policy and "connect-src 'self'" in policy
        assert "frame-ancestors 'none'" in policy and "unsafe" not in policy
        assert index.headers["x-content-type-options"] == "nosniff"
        for page in ("status", "embeddings", "docs"):
            assert (await client.get(f"/ui/{page}")).content == index.content
        script = await client.get("/ui/assets/app.js")
        assert script.headers["content-type"] == "text/javascript; charset=utf-8"
        assert script.content == (CONSOLE / "assets" / "app.js").read_bytes()
        # revalidated with the ETag: no body the second time
        again = await client.get(
            "/ui/assets/app.js", headers={"If-None-Match": script.headers["etag"]}
        )
        assert (again.status_code, again.content) == (304, b"")
        # /ui goes to /ui/ by a relative redirect (it holds under a path prefix too)
        root = await client.get("/ui")
        assert (root.status_code, root.headers["location"]) == (308, "ui/")


async def test_unknown_console_paths_are_404_like_any_path() -> None:
    async with fake_service() as (_, client):
        unknown = assert_openai_error(await client.get("/v1/nothing"), 404, None)
        for path in ("/ui/nothing", "/ui/assets/nothing.js", "/ui/status/", "/ui/assets/"):
            error = assert_openai_error(await client.get(path), 404, None)
            assert (error["type"], error["code"]) == (unknown["type"], unknown["code"]), path


@pytest.mark.parametrize(
    ("settings", "on"),
    [
        ({}, True),  # 127.0.0.1 by default
        ({"host": "localhost"}, True),
        ({"console": False}, False),
        ({"host": "0.0.0.0", "allow_unauthenticated": True}, False),
        ({"host": "0.0.0.0", "allow_unauthenticated": True, "console": True}, True),
        ({"endpoints": ("chat", "models")}, False),
    ],
)
async def test_on_by_default_on_loopback_only(settings: dict[str, object], on: bool) -> None:
    assert load_settings(**settings).console_on is on
    async with fake_service(**settings) as (_, client):
        answer = await client.get("/ui/")
        if on:
            assert answer.status_code == 200
        else:
            assert_openai_error(answer, 404, None)
        manifest = await client.get("/v1/manifest")
        if manifest.status_code == 200:  # the record lists /ui only while it is served
            assert ("ui" in manifest.json()["endpoints"]) is on


def test_console_needs_its_endpoint_name(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ConfigError, match="console: on, but `ui` is not in --endpoints"):
        load_settings(console=True, endpoints=("chat",))
    monkeypatch.setenv("NIMBLE_CONSOLE", "false")
    assert load_settings().console_on is False
    monkeypatch.setenv("NIMBLE_CONSOLE", "true")
    monkeypatch.setenv("NIMBLE_HOST", "10.0.0.5")
    monkeypatch.setenv("NIMBLE_ALLOW_UNAUTHENTICATED", "true")
    assert load_settings().console_on is True


async def test_files_need_no_key_and_the_api_still_does(tmp_path: Path) -> None:
    async with keyed_service(tmp_path, {}) as (_, client):
        assert (await client.get("/ui/")).status_code == 200
        assert (await client.get("/ui/assets/api.js")).status_code == 200
        assert (await client.get("/ui/nothing")).status_code == 404  # no key asked: nothing secret
        assert_openai_error(await client.get("/v1/models"), 401, None)
        assert (await client.get("/v1/models", headers=bearer(ADMIN))).status_code == 200


async def test_off_with_keys_it_is_an_unknown_path(tmp_path: Path) -> None:
    async with keyed_service(tmp_path, {}, console=False) as (_, client):
        for path in ("/ui/", "/ui/assets/app.js"):
            assert_openai_error(await client.get(path), 401, None)  # as any unknown path
            assert_openai_error(await client.get(path, headers=bearer(ADMIN)), 404, None)


def test_every_module_the_page_imports_is_served() -> None:
    served = console_files()
    assert {"index.html", "assets/app.js", "assets/style.css"} <= set(served)
    imports = re.compile(r"""(?:from|import)\s*\(?\s*["']\./([\w.-]+)["']""")
    for name, asset in served.items():
        if name.endswith(".js"):
            for target in imports.findall(asset.body.decode()):
                assert f"assets/{target}" in served, f"{name} imports a missing {target}"
    # no file the page loads comes from elsewhere (air-gapped: no CDN)
    for name, asset in served.items():
        assert not re.search(rb"https?://(?!www\.w3\.org/2000/svg)", asset.body), name


def test_every_console_file_is_package_data() -> None:
    """A wheel carries exactly what pyproject's package-data globs name: each file must match."""
    data = tomllib.loads((ROOT / "pyproject.toml").read_text())
    globs = data["tool"]["setuptools"]["package-data"]["nimble.api"]
    files = [p.relative_to(CONSOLE.parent).as_posix() for p in CONSOLE.rglob("*") if p.is_file()]
    assert files
    for path in files:
        assert any(fnmatch.fnmatch(path, g) for g in globs), path
    assert len(console_files()) == len(files)


async def test_files_need_no_key_under_a_path_prefix_too(tmp_path: Path) -> None:
    """Behind a proxy that mounts nimble at /llm (uvicorn's --root-path): the key check and
    the routes see the path inside the app."""
    async with keyed_service(tmp_path, {}) as (app, _):
        transport = httpx.ASGITransport(app=app, root_path="/llm")
        async with httpx.AsyncClient(transport=transport, base_url="http://nimble.test") as client:
            assert (await client.get("/llm/ui/assets/app.js")).status_code == 200
            assert (await client.get("/llm/ui")).headers["location"] == "ui/"
            assert_openai_error(await client.get("/llm/v1/models"), 401, None)
