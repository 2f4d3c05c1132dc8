"""The console in a real browser: Debian's Chromium driven by Playwright against a real
`nimble serve` with the default models (SmolLM2 chat, all-MiniLM-L6-v2 embeddings), the fake
model beside them (a second chat model to switch to) and API keys on.

Every page runs under its own content security policy (a violation fails the test), is
checked by axe-core (no critical or serious violation) and is saved as a screenshot under
test-artifacts/console/. Waits poll the page or the server, never sleep. `make test-tools`
installs chromium and axe-core."""

from __future__ import annotations

import json
import re
import shutil
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import jsonschema
import pytest
import yaml
from playwright.sync_api import Browser, Page, expect, sync_playwright

from nimble.security.keys import hash_key
from tests.e2e.conftest import CHAT_MODEL, EMBED_MODEL, NimbleProcess

pytestmark = [pytest.mark.e2e, pytest.mark.models]

ROOT = Path(__file__).parents[2]
AXE = ROOT / "tests" / "support" / "console" / "node_modules" / "axe-core" / "axe.min.js"
ARTIFACTS = ROOT / "test-artifacts" / "console"
FAKE = "fake-model"
KEY = "nb-console-test-key-0123456789abcdef0123456789"
# a key that may chat and list models only, two requests a minute
TINY = "nb-console-tiny-key-0123456789abcdef0123456789ab"
WAIT_MS = 60_000  # a generous bound for a loaded 2-core machine; waits end as soon as they can
expect.set_options(timeout=WAIT_MS)


def _chromium() -> str:
    path = shutil.which("chromium")
    if path is None or not AXE.is_file():
        pytest.fail("chromium or axe-core is missing: run `make test-tools`")
    return path


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NimbleProcess]:
    folder = tmp_path_factory.mktemp("console")
    keys = [
        {"id": "console", "sha256": hash_key(KEY)},
        {
            "id": "tiny",
            "sha256": hash_key(TINY),
            "endpoints": ["chat", "models"],
            "limits": {"requests_per_minute": 2},
        },
    ]
    key_file = folder / "keys.yaml"
    key_file.write_text(yaml.safe_dump({"keys": keys}))
    models = ["--model", CHAT_MODEL, "--model", EMBED_MODEL, "--model", "fake"]
    process = NimbleProcess(
        [*models, "--api-keys-file", str(key_file)],
        folder / "nimble.log",
    )
    try:
        yield process.wait_ready()
    finally:
        process.terminate()


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    executable = _chromium()
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=executable)
        yield chromium
        chromium.close()


@pytest.fixture
def page(browser: Browser) -> Iterator[Page]:
    """A fresh tab (its own sessionStorage); fails the test on an uncaught page error or a
    content security policy violation."""
    context = browser.new_context(viewport={"width": 1280, "height": 900}, accept_downloads=True)
    tab = context.new_page()
    problems: list[str] = []
    tab.on("pageerror", lambda error: problems.append(f"page error: {error}"))
    tab.on(
        "console",
        lambda msg: problems.append(msg.text) if "Content Security Policy" in msg.text else None,
    )
    tab.set_default_timeout(WAIT_MS)
    yield tab
    context.close()
    assert problems == []


def open_page(page: Page, server: NimbleProcess, name: str = "", key: str | None = KEY) -> None:
    page.goto(f"{server.base_url}/ui/{name}")
    expect(page.locator("body")).to_have_attribute("data-ready", "true")
    if key is not None:
        page.fill("#api-key", key)
        page.click("#key-form button[type=submit]")
        expect(page.locator("#key-note")).to_have_text("Key set, kept in this tab only.")


def axe_problems(page: Page) -> list[dict[str, Any]]:
    """axe-core's critical and serious violations of the page as it is now."""
    page.evaluate(
        AXE.read_text()
    )  # through the debugger: the page's policy allows no inline script
    violations = page.evaluate(
        """async () => (await axe.run(document, {resultTypes: ["violations"]})).violations
            .map(v => ({id: v.id, impact: v.impact, nodes: v.nodes.map(n => n.target.join())}))"""
    )
    return [v for v in violations if v["impact"] in ("critical", "serious")]


def shot(page: Page, name: str) -> None:
    page.screenshot(path=ARTIFACTS / f"{name}.png", full_page=True)


def metric(server: NimbleProcess, name: str, **labels: str) -> float:
    text = httpx.get(server.base_url + "/v1/metrics", headers=_auth(KEY), timeout=10).text
    wanted = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    for line in text.splitlines():
        if line.startswith(f"{name}{{{wanted}}} "):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def _auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def ask(page: Page, text: str) -> None:
    page.fill("#pg-prompt", text)
    page.click("#pg-send")


def last_answer(page: Page) -> Any:
    return page.locator(".msg.assistant").last


# --- the flows ---------------------------------------------------------------------------


@pytest.mark.parametrize(("name", "width"), [("", 1280), ("embeddings", 1280), ("docs", 1280)])
def test_pages_load_and_pass_axe(page: Page, server: NimbleProcess, name: str, width: int) -> None:
    page.set_viewport_size({"width": width, "height": 900})
    open_page(page, server, name)
    current = page.locator("nav a[aria-current=page]")
    expect(current).to_have_count(1)
    expect(current).to_have_attribute("data-page", name)
    if name == "":
        expect(page.locator("#pg-model option")).to_have_count(2)  # SmolLM2 and the fake
    elif name == "embeddings":
        expect(page.locator("#emb-model option")).not_to_have_count(0)
    else:
        expect(page.locator("#docs-ops details[data-path='/v1/chat/completions']")).to_have_count(1)
        page.fill("#docs-filter", "embeddings")
        op = page.locator("#docs-ops details[data-path='/v1/embeddings']")
        expect(op).to_be_visible()
        expect(page.locator("#docs-ops details[data-path='/v1/models']")).to_be_hidden()
        op.locator("summary").click()
        expect(op.locator(".schema code", has_text="input").first).to_be_visible()
    assert axe_problems(page) == []
    shot(page, name or "playground")


def test_narrow_window_dark(page: Page, server: NimbleProcess) -> None:
    """A phone-sized window in dark mode: nothing scrolls sideways, and the pages (their dark
    colours too) still pass axe."""
    page.set_viewport_size({"width": 390, "height": 844})
    page.emulate_media(color_scheme="dark")
    for name in ("", "status"):
        open_page(page, server, name)
        expect(page.locator("#pg-model option, #st-models tbody tr").first).to_be_attached()
        width = page.evaluate("() => document.documentElement.scrollWidth")
        assert width <= 390, (name, width)
        assert axe_problems(page) == []
        shot(page, f"narrow-{name or 'playground'}")


def test_key_entry_and_errors_shown_plainly(page: Page, server: NimbleProcess) -> None:
    # no key: the server's 401 is shown, and the key field says why
    open_page(page, server, key=None)
    expect(page.locator("#pg-error")).to_contain_text("401 Unauthorized")
    expect(page.locator("#key-note")).to_contain_text("needs an API key (401)")
    expect(page.locator("#api-key")).to_have_attribute("aria-invalid", "true")
    # a wrong key: 401 again, with the server's message
    page.fill("#api-key", "nb-wrong")
    page.click("#key-form button[type=submit]")
    ask(page, "Hello")
    expect(page.locator("#pg-error")).to_contain_text("401 Unauthorized")
    expect(page.locator("#key-note")).to_contain_text("refused this key")
    # the right key: the models appear; a bad sampling value is the server's 400, by field
    page.fill("#api-key", KEY)
    page.click("#key-form button[type=submit]")
    page.reload()  # the key stays in the tab's sessionStorage
    expect(page.locator("body")).to_have_attribute("data-ready", "true")
    expect(page.locator("#pg-model option")).to_have_count(2)
    assert page.evaluate("() => sessionStorage.getItem('nimble.console.key')") == KEY
    page.fill("#pg-temperature", "5")
    ask(page, "Hello")
    expect(page.locator("#pg-error")).to_contain_text("400 Bad request")
    expect(page.locator("#pg-error")).to_contain_text("(field: temperature)")
    shot(page, "error-400")
    # a key without the metrics scope: 403 on the status page's live numbers
    open_page(page, server, "status", key=TINY)
    expect(page.locator("#st-live-error")).to_contain_text("403 Forbidden")
    expect(page.locator("#st-live-error")).to_contain_text("metrics")
    # and over its two requests a minute: 429 with the wait
    page.goto(f"{server.base_url}/ui/")  # the key kept in the tab: /v1/models, its first request
    # without /v1/metadata the tasks are unknown: every model is offered
    expect(page.locator("#pg-model option")).to_have_count(3)
    page.select_option("#pg-model", FAKE)
    page.fill("#pg-max_tokens", "4")
    ask(page, "one")  # its second
    expect(last_answer(page)).to_have_attribute("data-state", "done")
    ask(page, "two")
    expect(page.locator("#pg-error")).to_contain_text("429 Too many requests")
    expect(page.locator("#pg-error")).to_contain_text(re.compile(r"Retry after \d+ s"))


def test_streamed_chat_answer(page: Page, server: NimbleProcess) -> None:
    open_page(page, server)
    page.fill("#pg-max_tokens", "24")
    page.fill("#pg-temperature", "0")
    page.fill("#pg-prompt", "Which city is the capital of France?")
    with page.expect_response(lambda r: r.url.endswith("/v1/chat/completions")) as answer:
        page.press("#pg-prompt", "Control+Enter")  # from the keyboard
    assert answer.value.headers["content-type"].startswith("text/event-stream")
    reply = last_answer(page)
    expect(reply).to_have_attribute("data-state", "done")
    expect(reply.locator(".content")).to_contain_text("Paris")
    stats = reply.locator(".stats").inner_text()
    assert re.search(r"\d+ prompt \+ \d+ completion tokens", stats), stats
    assert re.search(r"[\d.]+ tokens/s", stats) and "first token after" in stats, stats
    assert page.locator("#pg-transcript").get_attribute("role") == "log"  # read out as it comes
    shot(page, "playground-chat")


def test_stop_cancels_the_generation_on_the_server(page: Page, server: NimbleProcess) -> None:
    aborted = metric(
        server, "nimble_request_finish_total", finish_reason="abort", model_name=CHAT_MODEL
    )
    open_page(page, server)
    page.fill("#pg-max_tokens", "2000")
    page.check("#pg-ignore_eos")  # only max_tokens ends it: the stop comes first
    ask(page, "Tell a long story about a lighthouse keeper.")
    reply = last_answer(page)
    expect(reply.locator(".content")).to_have_text(re.compile(r"\S.{30,}", re.S))
    assert metric(server, "nimble_num_requests_running", model_name=CHAT_MODEL) == 1
    page.click("#pg-stop")
    expect(reply).to_have_attribute("data-state", "stopped")
    expect(reply.locator(".stats")).to_contain_text("stopped")
    expect(page.locator("#pg-stop")).to_be_disabled()
    deadline = time.monotonic() + WAIT_MS / 1000
    while metric(server, "nimble_num_requests_running", model_name=CHAT_MODEL) != 0:
        assert time.monotonic() < deadline, "the generation went on"
        time.sleep(0.05)  # polling interval, not a wait for the result
    finished = metric(
        server, "nimble_request_finish_total", finish_reason="abort", model_name=CHAT_MODEL
    )
    assert finished == aborted + 1


def test_model_switch(page: Page, server: NimbleProcess) -> None:
    open_page(page, server)
    page.fill("#pg-max_tokens", "12")
    page.fill("#pg-temperature", "0")
    page.select_option("#pg-model", FAKE)
    with page.expect_request(lambda r: r.url.endswith("/v1/chat/completions")) as sent:
        ask(page, "Say something")
    assert sent.value.post_data_json["model"] == FAKE
    reply = last_answer(page)
    expect(reply).to_have_attribute("data-state", "done")
    expect(reply).to_have_attribute("aria-label", f"Assistant · {FAKE}")
    # the fake model's own deterministic answer to the same conversation
    body = sent.value.post_data_json | {"stream": False}
    body.pop("stream_options")
    direct = httpx.post(
        server.base_url + "/v1/chat/completions", json=body, headers=_auth(KEY), timeout=30
    ).json()
    expect(reply.locator(".content")).to_have_text(direct["choices"][0]["message"]["content"])
    page.select_option("#pg-model", CHAT_MODEL)
    page.fill("#pg-max_tokens", "4")
    with page.expect_request(lambda r: r.url.endswith("/v1/chat/completions")) as again:
        ask(page, "And in one word?")
    assert again.value.post_data_json["model"] == CHAT_MODEL
    expect(last_answer(page)).to_have_attribute("aria-label", f"Assistant · {CHAT_MODEL}")
    expect(last_answer(page)).to_have_attribute("data-state", "done")


def test_json_schema_answer(page: Page, server: NimbleProcess) -> None:
    schema = {
        "type": "object",
        "properties": {
            "city": {"type": "string", "maxLength": 20},
            "country": {"type": "string", "maxLength": 20},
        },
        "required": ["city", "country"],
        "additionalProperties": False,
    }
    open_page(page, server)
    page.check("#pg-mode-json")
    page.fill("#pg-schema", json.dumps(schema))
    page.fill("#pg-max_tokens", "48")
    page.fill("#pg-temperature", "0")
    with page.expect_request(lambda r: r.url.endswith("/v1/chat/completions")) as sent:
        ask(page, "Which city is the capital of France? Answer in JSON.")
    assert sent.value.post_data_json["response_format"]["json_schema"]["schema"] == schema
    reply = last_answer(page)
    expect(reply).to_have_attribute("data-state", "done")
    expect(reply.locator(".badge.ok")).to_have_text("Valid JSON")
    shown = json.loads(reply.locator(".json-view").inner_text())
    jsonschema.validate(shown, schema)
    shot(page, "playground-json")


def test_tool_calls_shown_as_they_stream(page: Page, server: NimbleProcess) -> None:
    open_page(page, server)
    page.check("#pg-mode-tools")
    page.select_option("#pg-tool-choice", "required")
    page.fill("#pg-max_tokens", "40")
    page.fill("#pg-temperature", "0")
    ask(page, "What is the weather in Paris?")
    reply = last_answer(page)
    expect(reply.locator(".tool-name")).to_have_text("get_weather")
    expect(reply).to_have_attribute("data-state", "done")
    arguments = json.loads(reply.locator(".tool-args").inner_text())
    assert "city" in arguments
    expect(reply.locator(".stats")).to_contain_text("finish: tool_calls")
    shot(page, "playground-tools")


def test_similarity_heat_map_and_ranking(page: Page, server: NimbleProcess) -> None:
    open_page(page, server, "embeddings")
    page.select_option("#emb-model", EMBED_MODEL)
    page.click("#emb-run")
    cells = page.locator("#emb-heat tbody td")
    expect(cells).to_have_count(16)
    values = [
        [float(cells.nth(i * 4 + j).get_attribute("data-value") or "nan") for j in range(4)]
        for i in range(4)
    ]
    for i in range(4):
        assert values[i][i] == pytest.approx(1.0, abs=1e-3)
        for j in range(4):
            assert values[i][j] == pytest.approx(values[j][i], abs=1e-4)
    # the two sentences about a cat are closer than a cat and the stock market
    assert values[0][1] > values[0][2] + 0.2
    assert values[2][3] > values[1][3] + 0.2
    page.select_option("#rank-model", EMBED_MODEL)
    with page.expect_request(lambda r: r.url.endswith("/v1/ranking")) as sent:
        page.click("#rank-run")
    ranked = page.locator("#rank-list li")
    expect(ranked).to_have_count(3)
    expect(ranked.last).to_contain_text("Eiffel Tower")  # the passage about something else
    # the list is the API's answer, best first, with its scores
    direct = httpx.post(
        server.base_url + "/v1/ranking", json=sent.value.post_data_json, headers=_auth(KEY)
    ).json()["rankings"]
    assert [int(li.get_attribute("data-index") or -1) for li in ranked.all()] == [
        r["index"] for r in direct
    ]
    scores = [float(t) for t in page.locator("#rank-list .score").all_inner_texts()]
    assert scores == pytest.approx([r["logit"] for r in direct], abs=1e-3)
    assert scores == sorted(scores, reverse=True)
    assert axe_problems(page) == []
    shot(page, "embeddings-result")


def test_status_charts_update_under_load(page: Page, server: NimbleProcess) -> None:
    open_page(page, server, "status")
    expect(page.locator("#st-ready")).to_have_text("ready")
    rows = page.locator("#st-models tbody tr")
    expect(rows).to_have_count(3)
    smol = page.locator(f"#st-models tr[data-model='{CHAT_MODEL}']")
    expect(smol).to_contain_text("loaded")
    expect(smol).to_contain_text("llamacpp")
    expect(smol).to_contain_text("preferred over")  # why this profile was chosen
    expect(page.locator("#chart-running")).to_have_attribute("data-max", "0")
    stop = threading.Event()

    def load() -> None:  # streamed requests, one after another, until told to stop
        body = {"model": CHAT_MODEL, "messages": [{"role": "user", "content": "Count."}]}
        body |= {"max_tokens": 8, "ignore_eos": True, "stream": True}
        with httpx.Client(base_url=server.base_url, headers=_auth(KEY), timeout=60) as client:
            while not stop.is_set():
                with client.stream("POST", "/v1/chat/completions", json=body) as answer:
                    answer.read()

    workers = [threading.Thread(target=load) for _ in range(2)]
    for worker in workers:
        worker.start()
    try:
        expect(page.locator("#chart-running")).to_have_attribute("data-max", re.compile(r"^[1-9]"))
        expect(page.locator("#chart-tokens")).to_have_attribute("data-max", re.compile(r"^[1-9]"))
        expect(page.locator("#chart-ttft")).to_have_attribute(
            "data-max", re.compile(r"^\d*\.?\d*[1-9]")
        )
        expect(page.locator("#chart-cache")).not_to_have_attribute("data-points", "0")
        expect(page.locator("#chart-running path.line")).not_to_have_count(0)
        shot(page, "status-under-load")
    finally:
        stop.set()
        for worker in workers:
            worker.join()
    # a model picked: its own numbers
    page.select_option("#st-chart-model", EMBED_MODEL)
    expect(page.locator("#chart-running")).to_have_attribute("data-max", "0")
    assert axe_problems(page) == []


def test_deployment_record_view_and_download(page: Page, server: NimbleProcess) -> None:
    record = httpx.get(server.base_url + "/v1/manifest", headers=_auth(KEY), timeout=10).json()
    open_page(page, server, "status")
    view = page.locator("#st-record")
    expect(view.locator("#record-summary")).to_contain_text("nimble.deployment/v1")
    models = view.locator("details[data-key=models]")
    for model in record["models"]:
        expect(models).to_contain_text(model["id"])
        for entry in model["files"]:
            expect(models.locator("code", has_text=entry["sha256"]).first).to_be_visible()
    expect(view.locator("details[data-key=auth]")).to_contain_text("api_keys")
    # closed sections open from the keyboard
    summary = view.locator("details[data-key=configuration] > summary")
    summary.focus()
    page.keyboard.press("Enter")
    expect(view.locator("details[data-key=configuration]")).to_have_attribute("open", "")
    with page.expect_download() as download:
        page.click("#st-download")
    saved = Path(download.value.path())
    assert download.value.suggested_filename.startswith("nimble-deployment-")
    shown = json.loads(saved.read_text())
    assert {k: v for k, v in shown.items() if k != "generated_at"} == {
        k: v for k, v in record.items() if k != "generated_at"
    }
    shot(page, "status")
