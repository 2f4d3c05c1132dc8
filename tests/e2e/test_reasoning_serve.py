"""The reasoning parser on a real model: SmolLM2 served twice in one `nimble serve`, under a
chat template whose generation prompt opens `<think>` (so its output starts inside the
thinking, as with Qwen3-Thinking and DeepSeek-R1), once as the catalog has it (no parser)
and once from a manifest that names `reasoning_parser: deepseek_r1`. Whatever the model
writes, at temperature 0 the thinking model's reasoning and answer are the other's raw
output, split at `</think>`."""

from __future__ import annotations

from collections.abc import Iterator
from importlib import resources
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from tests.e2e.conftest import CHAT_MODEL, NimbleProcess

THINKING = "smollm2-thinking"
TEMPLATE = Path(__file__).parents[1] / "support" / "chatml_think.jinja"
# a prompt that makes SmolLM2 write on: max_tokens cuts it inside its "thinking"
ASK = {
    "messages": [{"role": "user", "content": "Write a long story about a dragon and a knight."}],
    "max_tokens": 12,
    "temperature": 0,
}


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NimbleProcess]:
    folder = tmp_path_factory.mktemp("reasoning")
    catalog = resources.files("nimble.models") / "manifests" / f"{CHAT_MODEL}.yaml"
    manifest = yaml.safe_load(catalog.read_text())
    manifest["id"] = THINKING
    manifest["reasoning_parser"] = "deepseek_r1"
    manifest["profiles"] = [p for p in manifest["profiles"] if p["engine"] == "llamacpp"]
    (folder / "thinking.yaml").write_text(yaml.safe_dump(manifest))
    args = ["--model", CHAT_MODEL, "--model", str(folder / "thinking.yaml")]
    args += ["--engine", "llamacpp", "--chat-template", str(TEMPLATE)]
    args += ["--max-running", "1", "--context-length", "512"]
    process = NimbleProcess(args, folder / "nimble.log")
    try:
        yield process.wait_ready()
    finally:
        process.terminate()


def _chat(server: NimbleProcess, model: str) -> dict[str, Any]:
    answer = httpx.post(
        server.base_url + "/v1/chat/completions", json={"model": model, **ASK}, timeout=120
    )
    assert answer.status_code == 200, answer.text
    body: dict[str, Any] = answer.json()
    return body


def test_thinking_and_answer_are_the_raw_output_split_at_the_tag(server: NimbleProcess) -> None:
    plain = _chat(server, CHAT_MODEL)
    raw = plain["choices"][0]["message"]["content"]
    assert plain["choices"][0]["message"]["reasoning_content"] is None
    assert raw.strip()

    thinking = _chat(server, THINKING)
    choice = thinking["choices"][0]
    body = raw.lstrip().removeprefix("<think>") if raw.lstrip().startswith("<think>") else raw
    reasoning, closed, content = body.partition("</think>")
    assert (choice["message"]["reasoning_content"] or "", choice["message"]["content"]) == (
        reasoning,
        content,
    )
    assert choice["finish_reason"] == plain["choices"][0]["finish_reason"]
    usage = thinking["usage"]
    assert usage["completion_tokens"] == plain["usage"]["completion_tokens"]
    assert plain["usage"]["completion_tokens_details"] is None
    # 12 tokens into a story it never closes its thoughts: all of it is reasoning
    assert not closed
    assert choice["finish_reason"] == "length"
    assert (choice["message"]["content"], choice["message"]["reasoning_content"]) == ("", raw)
    assert usage["completion_tokens_details"] == {"reasoning_tokens": usage["completion_tokens"]}

    # streamed, the same split (the openai SDK reads `reasoning_content` as an extra)
    stream = server.client().chat.completions.create(model=THINKING, stream=True, **ASK)  # type: ignore[call-overload]
    streamed = {"reasoning_content": "", "content": ""}
    finish = None
    for chunk in stream:
        for part in chunk.choices:
            streamed["content"] += part.delta.content or ""
            streamed["reasoning_content"] += (part.delta.model_extra or {}).get(
                "reasoning_content", ""
            )
            finish = part.finish_reason or finish
    assert streamed == {"reasoning_content": raw, "content": ""}
    assert finish == "length"


def test_the_record_names_the_parser_of_each_model(server: NimbleProcess) -> None:
    record = httpx.get(server.base_url + "/v1/manifest", timeout=10).json()
    assert record["reasoning"] == {
        "parser_setting": None,
        "models": {CHAT_MODEL: {"parser": None}, THINKING: {"parser": "deepseek_r1"}},
    }
