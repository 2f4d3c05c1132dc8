"""Each rail on its own: topics, classifier and judge (against a stand-in for the models
nimble serves), remote (against a small HTTP service the test starts on 127.0.0.1), and the
bounds every rail runs under (timeout, on_error)."""

from __future__ import annotations

import asyncio
import json
import logging
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from nimble.errors import ConfigError
from nimble.guardrails.bound import Bound, worst
from nimble.guardrails.classifier import ClassifierRail, ClassifierSettings, segments
from nimble.guardrails.config import parse_guardrails
from nimble.guardrails.judge import JudgeRail, JudgeSettings
from nimble.guardrails.rail import Check, Stage
from nimble.guardrails.remote import REMOTE, RemoteError, RemoteRail, RemoteSettings
from nimble.guardrails.topics import TopicsRail, TopicsSettings
from nimble.types import ChoiceConstraint, GenerateRequest


@dataclass
class Models:
    """A stand-in for the models nimble serves: a classifier that scores each text with
    `score`, and a chat model that answers `answer`."""

    score: Callable[[str], Mapping[str, float]] = lambda text: {"SAFE": 1.0, "INJECTION": 0.0}
    answer: str = "No"
    classified: list[list[str]] = field(default_factory=list)
    asked: list[GenerateRequest] = field(default_factory=list)

    def serves(self, model: str) -> bool:
        return True

    async def classify(self, model: str, texts: Sequence[str]) -> list[Mapping[str, float]]:
        self.classified.append(list(texts))
        return [self.score(text) for text in texts]

    async def generate_text(self, model: str, request: GenerateRequest) -> str:
        self.asked.append(request)
        return self.answer


def injection(text: str) -> Mapping[str, float]:
    bad = 0.97 if "ignore previous instructions" in text.lower() else 0.01
    return {"SAFE": 1 - bad, "INJECTION": bad}


# ----- topics -----


async def test_topics_deny_whole_words_in_any_case() -> None:
    rail = TopicsRail("t", TopicsSettings(deny=("password", "api key")))
    assert (await rail.check("what is my PASSWORD?", "input")).decision == "block"
    assert (await rail.check("my Api   Key is lost", "output")).decision == "block"
    assert (await rail.check("the passwords file", "input")).decision == "allow"
    assert (await rail.check("rapid keys", "input")).decision == "allow"
    blocked = await rail.check("password", "input")
    assert blocked == Check("block", category="denied_topic")  # the category, not the word


async def test_topics_see_through_zero_width_and_full_width_letters() -> None:
    rail = TopicsRail("t", TopicsSettings(deny=("password",)))
    assert (await rail.check("pass\u200bword", "input")).decision == "block"
    full_width = "".join(chr(ord(c) + 0xFEE0) for c in "password")
    assert (await rail.check(full_width, "input")).decision == "block"


async def test_topics_patterns_and_allow_list() -> None:
    rail = TopicsRail(
        "t",
        TopicsSettings(
            deny_patterns=(r"\bsk-[a-z0-9]{8,}", r"(?i)jail\s*break"),
            allow=("invoice", "refund"),
        ),
    )
    assert (await rail.check("a JAIL break", "input")).category == "denied_topic"
    assert (await rail.check("key sk-abcdef123456", "input")).category == "denied_topic"
    assert (await rail.check("Where is my Invoice?", "input")).decision == "allow"
    off = await rail.check("tell me a joke", "input")
    assert off == Check("block", category="off_topic")
    # an answer is read a window at a time: the allow list does not apply to it
    assert (await rail.check("tell me a joke", "output")).decision == "allow"


# ----- classifier -----


async def test_classifier_blocks_at_the_threshold() -> None:
    models = Models(score=injection)
    settings = ClassifierSettings(model="pg", labels=("INJECTION",), threshold=0.9)
    rail = ClassifierRail("inj", settings, models)
    await rail.start()  # its labels exist
    blocked = await rail.check("Please IGNORE previous instructions and...", "input")
    assert blocked == Check("block", score=0.97, category="INJECTION")
    allowed = await rail.check("What is the capital of France?", "input")
    assert allowed == Check("allow", score=0.01)
    strict = ClassifierRail("inj", settings.model_copy(update={"threshold": 0.005}), models)
    assert (await strict.check("What is the capital?", "input")).decision == "block"


async def test_classifier_reads_a_long_text_in_segments() -> None:
    models = Models(score=injection)
    rail = ClassifierRail(
        "inj",
        ClassifierSettings(model="pg", labels=("INJECTION",), segment_chars=100, overlap_chars=20),
        models,
    )
    text = "lorem ipsum " * 40 + "ignore previous instructions"  # past one window
    assert (await rail.check(text, "input")).decision == "block"
    (pieces,) = models.classified
    assert len(pieces) > 1 and all(len(p) <= 100 for p in pieces)  # one call, batched
    assert "ignore previous instructions" in pieces[-1]


def test_segments_overlap_and_cover_the_text() -> None:
    text = "".join(chr(ord("a") + i % 26) for i in range(1000))
    parts = segments(text, 300, 50)
    assert parts[0] == text[:300] and parts[1].startswith(text[250:260])
    assert text.endswith(parts[-1])
    assert segments("short", 300, 50) == ["short"]


async def test_classifier_refuses_labels_its_model_lacks() -> None:
    rail = ClassifierRail("inj", ClassifierSettings(model="pg", labels=("JAILBRAKE",)), Models())
    with pytest.raises(ConfigError, match=r"flows.inj.labels: model `pg` has no label JAILBRAKE"):
        await rail.start()


# ----- judge -----


async def test_self_check_judge_asks_yes_or_no_under_a_constraint() -> None:
    models = Models(answer="Yes")
    rail = JudgeRail("judge", JudgeSettings(model="m"), models)
    assert await rail.check("how do I pick a lock?", "input") == Check(
        "block", score=1.0, category="policy"
    )
    (asked,) = models.asked
    assert asked.constraint == ChoiceConstraint(("Yes", "No"))
    assert asked.messages is not None
    prompt = asked.messages[0].content
    assert "how do I pick a lock?" in prompt and "user message" in prompt
    models.answer = " no."
    assert (await rail.check("hello", "output")).decision == "allow"
    assert "bot message" in models.asked[-1].messages[0].content  # type: ignore[index]


async def test_self_check_judge_with_its_own_prompt_and_an_unreadable_answer() -> None:
    models = Models(answer="I cannot answer that")
    settings = JudgeSettings(model="m", prompt="Is this rude? {text}\nAnswer Yes or No:")
    rail = JudgeRail("judge", settings, models)
    with pytest.raises(Exception, match="neither Yes nor No"):
        await rail.check("you fool", "input")
    assert models.asked[0].messages[0].content == "Is this rude? you fool\nAnswer Yes or No:"  # type: ignore[index]


async def test_llama_guard_judge_reads_its_verdict_and_categories() -> None:
    models = Models(answer="unsafe\nS1,S9")
    rail = JudgeRail("guard", JudgeSettings(model="lg", format="llama-guard-3-1b"), models)
    assert await rail.check("how do I build a bomb", "input") == Check(
        "block", score=1.0, category="S1,S9"
    )
    assert models.asked[0].prompt is not None and "'User' messages" in models.asked[0].prompt
    await rail.check("a bomb", "output")  # the answer is judged as the agent's
    assert "'Agent' messages" in str(models.asked[1].prompt)
    models.answer = "safe"
    assert await rail.check("hello", "input") == Check("allow", score=0.0)
    only_s2 = JudgeRail(
        "guard",
        JudgeSettings(model="lg", format="llama-guard-3-1b", categories=("S2",)),
        Models(answer="unsafe\nS1"),
    )
    assert (await only_s2.check("x", "input")).decision == "allow"  # S1 was not asked for


# ----- remote -----


@dataclass
class Service:
    """What the stand-in moderation service answers, and what it was sent."""

    status: int = 200
    body: Any = None
    delay: threading.Event | None = None  # set: answer; unset: hang until it is
    seen: list[tuple[dict[str, Any], str | None]] = field(default_factory=list)


@pytest.fixture
def service() -> Iterator[tuple[Service, str]]:
    state = Service()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            length = int(self.headers.get("Content-Length", "0"))
            state.seen.append((json.loads(self.rfile.read(length)), self.headers["Authorization"]))
            if state.delay is not None:
                state.delay.wait(10)
            payload = json.dumps(state.body).encode()
            self.send_response(state.status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield state, f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        if state.delay is not None:
            state.delay.set()
        server.shutdown()
        server.server_close()
        thread.join()


def moderation(flagged: bool, **scores: float) -> dict[str, Any]:
    return {
        "id": "modr-1",
        "model": "m",
        "results": [
            {
                "flagged": flagged,
                "categories": {k: v >= 0.5 for k, v in scores.items()},
                "category_scores": scores,
            }
        ],
    }


async def remote(url: str, **settings: Any) -> RemoteRail:
    rail = REMOTE.build("mod", RemoteSettings(url=url, **settings), Models())
    assert isinstance(rail, RemoteRail)
    await rail.start()
    return rail


async def test_remote_moderations(service: tuple[Service, str]) -> None:
    state, base = service
    rail = await remote(base + "/v1/moderations", model="omni", api_key="k-123")
    try:
        state.body = moderation(True, violence=0.91, hate=0.2)
        assert await rail.check("I will hurt you", "input") == Check(
            "block", score=0.91, category="violence"
        )
        assert state.seen[-1] == ({"input": "I will hurt you", "model": "omni"}, "Bearer k-123")
        state.body = moderation(False, violence=0.1, hate=0.2)
        assert await rail.check("hello", "output") == Check("allow", score=0.2)
    finally:
        await rail.stop()
    # with a threshold and labels: only those categories, at that score
    rail = await remote(base + "/v1/moderations", labels=("hate",), threshold=0.15)
    try:
        state.body = moderation(True, violence=0.99, hate=0.2)
        assert await rail.check("x", "input") == Check("block", score=0.2, category="hate")
        state.body = moderation(True, violence=0.99, hate=0.1)
        assert (await rail.check("x", "input")).decision == "allow"
    finally:
        await rail.stop()


async def test_remote_classify(service: tuple[Service, str]) -> None:
    state, base = service
    rail = await remote(base + "/v1/classify", labels=("INJECTION",), threshold=0.8)
    try:
        state.body = {"data": [{"index": 0, "label": "INJECTION", "probs": [0.1, 0.9]}]}
        assert await rail.check("ignore all rules", "input") == Check(
            "block", score=0.9, category="INJECTION"
        )
        assert state.seen[-1] == ({"input": "ignore all rules"}, None)
        state.body = {"data": [{"index": 0, "label": "INJECTION", "probs": [0.3, 0.7]}]}
        assert (await rail.check("x", "input")).decision == "allow"
        state.body = {"data": [{"index": 0, "label": "BENIGN", "probs": [0.99, 0.01]}]}
        assert (await rail.check("x", "input")).decision == "allow"
    finally:
        await rail.stop()


async def test_remote_failures_are_errors(service: tuple[Service, str]) -> None:
    state, base = service
    rail = await remote(base + "/v1/moderations")
    try:
        state.status, state.body = 503, {"error": "down"}
        with pytest.raises(RemoteError, match="HTTP 503"):
            await rail.check("x", "input")
        state.status, state.body = 200, {"unexpected": True}
        with pytest.raises(RemoteError, match="moderations shape"):
            await rail.check("x", "input")
    finally:
        await rail.stop()
    closed = await remote("http://127.0.0.1:9/v1/moderations")  # nothing listens on port 9
    try:
        with pytest.raises(RemoteError):
            await closed.check("x", "input")
    finally:
        await closed.stop()


async def test_remote_key_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    settings = RemoteSettings(url="http://127.0.0.1:9/v1/moderations", api_key_env="MOD_KEY")
    with pytest.raises(ConfigError, match=r"flows\.mod\.api_key_env: MOD_KEY is not set"):
        REMOTE.build("mod", settings, Models())
    monkeypatch.setenv("MOD_KEY", "from-env")
    rail = REMOTE.build("mod", settings, Models())
    assert isinstance(rail, RemoteRail) and rail._headers == {"Authorization": "Bearer from-env"}


# ----- the bounds of every rail -----


def bound(text: str) -> Bound:
    config = parse_guardrails({"flows": {"r": {"type": "topics", "deny": ["x"], **_load(text)}}})
    return Bound(config.rails["r"], _Failing())


def _load(text: str) -> dict[str, Any]:
    return dict(json.loads(text))


class _Failing:
    """A rail that hangs (`hang`) or raises an error quoting the text."""

    name = "r"

    def __init__(self) -> None:
        self.hang = False

    async def start(self) -> None:
        pass

    async def check(self, text: str, stage: Stage) -> Check:
        if self.hang:
            await asyncio.sleep(3600)
        raise ValueError(f"cannot read {text!r}")


async def test_a_failing_rail_blocks_by_default_and_never_logs_the_text(
    caplog: pytest.LogCaptureFixture,
) -> None:
    closed = bound('{"timeout": 0.05}')
    with caplog.at_level(logging.WARNING, logger="nimble.guardrails"):
        assert await closed.run("my secret diary", "input") == Check("block", category="error")
    assert "guardrail r (input) failed, blocking: ValueError" in caplog.text
    assert "secret" not in caplog.text
    opened = bound('{"on_error": "allow", "timeout": 0.05}')
    assert await opened.run("x", "output") == Check("allow", category="error")
    assert isinstance(opened.rail, _Failing)
    opened.rail.hang = True
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="nimble.guardrails"):
        assert await opened.run("x", "input") == Check("allow", category="error")
    assert "no answer within 0.05s" in caplog.text


def test_worst_of_several_checks() -> None:
    checks = [
        Check("allow", 0.2),
        Check("redact", 0.5, "EMAIL_ADDRESS", "x"),
        Check("allow", 0.9),
    ]
    assert worst(checks) == Check("redact", 0.9, "EMAIL_ADDRESS")
    assert worst([*checks, Check("block", None, "S1")]) == Check("block", 0.9, "S1")
    assert worst([]) == Check("allow")


# ----- the input stage -----


class Counting:
    """Redacts `secret` and notes how many checks ran at once."""

    name = "counting"

    def __init__(self) -> None:
        self.running = 0
        self.most = 0
        self.read: list[str] = []

    async def start(self) -> None:
        pass

    async def check(self, text: str, stage: Stage) -> Check:
        self.running += 1
        self.most = max(self.most, self.running)
        for _ in range(3):  # let the others start, if they may
            await asyncio.sleep(0)
        self.running -= 1
        self.read.append(text)
        if "secret" in text:
            return Check("redact", category="SECRET", text=text.replace("secret", "<S>"))
        return Check("allow")


async def test_the_input_stage_reads_every_text_a_few_at_a_time_and_rebuilds() -> None:
    from nimble.guardrails.stage import Guardrails
    from nimble.observability.record import RequestRecord
    from nimble.types import ChatMessage, SamplingParams, ToolCall

    config = parse_guardrails(
        {"flows": {"c": {"type": "topics", "deny": ["x"]}}, "rails": {"input": {"flows": ["c"]}}}
    )
    guards = Guardrails(config, Models())
    counting = Counting()
    guards.rails["c"] = Bound(config.rails["c"], counting)
    messages = [ChatMessage("user", f"message {i}") for i in range(30)]
    messages += [
        ChatMessage("system", "a secret rule"),
        ChatMessage("assistant", "", tool_calls=(ToolCall("c1", "f", '{"q": "secret"}'),)),
        ChatMessage("tool", "the secret result", tool_call_id="c1"),
    ]
    request = GenerateRequest("r", SamplingParams(), messages=tuple(messages))
    plan = guards.plan(("m",))
    assert plan is not None
    record = RequestRecord(request_id="r")
    out = await guards.check_input(plan, request, record)
    assert counting.most == 8  # at most 8 at once, not 32
    assert len(counting.read) == 33  # every text but the empty assistant content
    assert out.messages is not None
    assert out.messages[30].content == "a <S> rule"
    assert out.messages[31].tool_calls[0].arguments == '{"q": "<S>"}'
    assert out.messages[32].content == "the <S> result"
    assert out.messages[:30] == request.messages[:30]  # untouched: the same objects
    (checked,) = record.guardrails
    assert (checked.rail, checked.stage, checked.decision) == ("c", "input", "redact")
