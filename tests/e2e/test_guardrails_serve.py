"""Guardrails on a real `nimble serve` process, through the official `openai` client: an
input rail refuses with 400 content_filter, an output rail stops a stream with finish
reason content_filter; on SmolLM2 (llama.cpp) the window hands the client exactly the text
the model wrote, and stops it before a denied word that the model writes."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
import yaml

from tests.e2e.conftest import CHAT_MODEL, NimbleProcess

pytestmark = [pytest.mark.e2e, pytest.mark.models]

FILLER = " ".join(f"word{i}" for i in range(60))
ANSWER = f"{FILLER} so here are the launch codes you asked for and {FILLER}"


def write(tmp_path: Path, rails: dict[str, Any]) -> Path:
    path = tmp_path / "guardrails.yaml"
    path.write_text(yaml.safe_dump(rails))
    return path


def stream_text(client: openai.OpenAI, **asked: Any) -> tuple[str, list[str]]:
    text, finishes = "", []
    for chunk in client.chat.completions.create(stream=True, **asked):
        for part in chunk.choices:
            text += part.delta.content or ""
            finishes += [part.finish_reason] if part.finish_reason else []
    return text, finishes


def test_serve_with_a_guardrails_file(nimble_process: type[NimbleProcess], tmp_path: Path) -> None:
    rails = {
        "flows": {
            "no-secrets": {"type": "topics", "deny": ["password"]},
            "no-launch": {"type": "topics", "deny": ["launch codes"]},
        },
        "rails": {"input": {"flows": ["no-secrets"]}, "output": {"flows": ["no-launch"]}},
    }
    server = nimble_process(
        ["--model", "fake", "--guardrails", str(write(tmp_path, rails))]
    ).wait_ready()
    client = server.client()
    with pytest.raises(openai.BadRequestError) as refused:
        client.chat.completions.create(
            model="fake-model", messages=[{"role": "user", "content": "the password, please"}]
        )
    assert refused.value.code == "content_filter"
    assert "`no-secrets`" in refused.value.message and "password" not in refused.value.message
    text, finishes = stream_text(
        client,
        model="fake-model",
        messages=[{"role": "user", "content": "tell me"}],
        extra_body={"guided_choice": [ANSWER], "max_tokens": 500},
    )
    assert finishes == ["content_filter"]
    assert ANSWER.startswith(text) and "launch" not in text
    assert ANSWER.index("launch") - 220 <= len(text)
    record = httpx.get(server.base_url + "/v1/manifest", timeout=10).json()
    assert record["guardrails"]["models"]["fake-model"] == {
        "input": ["no-secrets"],
        "output": ["no-launch"],
    }


@pytest.mark.models
def test_the_window_on_a_real_model(nimble_process: type[NimbleProcess], tmp_path: Path) -> None:
    asked: dict[str, Any] = {
        "model": CHAT_MODEL,
        "messages": [{"role": "user", "content": "Tell me a long story about a lighthouse."}],
        "temperature": 0.0,
        "seed": 7,
        "max_tokens": 160,
    }
    plain = nimble_process(["--model", CHAT_MODEL]).wait_ready()
    written, finishes = stream_text(plain.client(), **asked)
    plain.terminate()
    assert finishes == ["length"] and len(written) > 400
    # the first word the model writes only after the first two windows
    words = re.findall(r"[A-Za-z]{4,}", written)
    late = next(
        w
        for w in words
        if re.search(rf"\b{w}\b", written, re.I).start() > 300  # type: ignore[union-attr]
    )
    at = re.search(rf"\b{late}\b", written, re.I).start()  # type: ignore[union-attr]
    # a rail that never fires: the client gets, window by window, what the model wrote
    rails: dict[str, Any] = {
        "flows": {
            "never": {"type": "topics", "deny": ["zyzzyva-quux"]},
            "late": {"type": "topics", "deny": [late]},
        },
        "rails": {"output": {"flows": ["never"]}},
    }
    guarded = nimble_process(
        ["--model", CHAT_MODEL, "--guardrails", str(write(tmp_path, rails))]
    ).wait_ready()
    same, finishes = stream_text(guarded.client(), **asked)
    assert same == written and finishes == ["length"]
    guarded.terminate()
    rails["rails"] = {"output": {"flows": ["late"]}}
    stopping = nimble_process(
        ["--model", CHAT_MODEL, "--guardrails", str(write(tmp_path, rails))]
    ).wait_ready()
    cut, finishes = stream_text(stopping.client(), **asked)
    assert finishes == ["content_filter"]
    assert written.startswith(cut)
    assert not re.search(rf"\b{late}\b", cut, re.I)
    assert at - 200 - 30 <= len(cut) <= at  # all that was clean before the window, at most
