"""Guardrails through the API, on the fake engine: an input rail refuses before the engine
sees anything (400 content_filter naming the rail, never the text), on chat, completions,
responses and Anthropic's messages, over every text the model would read; output rails
stop a stream with finish reason content_filter (and the Responses and Messages APIs'
equivalents), streamed or not, text and tool calls; rails bound to a key."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import anthropic
import openai
import pytest

from nimble.errors import PermissionDenied
from nimble.guardrails.config import parse_guardrails
from nimble.guardrails.stage import Guardrails
from tests.api.test_auth import write_keys
from tests.conftest import FAKE_MODEL
from tests.support.guarded import ANSWER, FORBIDDEN, PLAIN, RAILS, choice, guarded_service

SECRET_ASK = "what is the admin password of the mail server"


def content_filter_error(body: dict[str, Any]) -> dict[str, Any]:
    error = dict(body["error"])
    assert error["code"] == "content_filter"
    assert error["type"] == "invalid_request_error"
    assert "`no-secrets`" in error["message"]
    assert "password" not in error["message"]  # the rail, never what it matched
    return error


# ----- input -----

ROUTES: dict[str, tuple[str, dict[str, Any]]] = {
    "chat": (
        "/v1/chat/completions",
        {"model": FAKE_MODEL, "messages": [{"role": "user", "content": SECRET_ASK}]},
    ),
    "completions": ("/v1/completions", {"model": FAKE_MODEL, "prompt": SECRET_ASK}),
    "responses": ("/v1/responses", {"model": FAKE_MODEL, "input": SECRET_ASK}),
    "messages": (
        "/v1/messages",
        {
            "model": FAKE_MODEL,
            "max_tokens": 20,
            "messages": [{"role": "user", "content": SECRET_ASK}],
        },
    ),
}


@pytest.mark.parametrize("route", list(ROUTES))
@pytest.mark.parametrize("stream", [False, True])
async def test_a_blocked_input_is_a_400_and_never_reaches_the_engine(
    tmp_path: Path, route: str, stream: bool
) -> None:
    path, body = ROUTES[route]
    async with guarded_service(tmp_path) as service:
        warmed = len(service.engine.requests)
        answer = await service.http.post(path, json={**body, "stream": stream})
        assert answer.status_code == 400, answer.text
        payload = answer.json()
        if route == "messages":  # Anthropic's shape, nimble's code kept
            assert payload["type"] == "error"
        error = content_filter_error(payload)
        assert error["param"] == ("prompt" if route == "completions" else "messages")
        assert len(service.engine.requests) == warmed  # the engine was never asked
        assert "password" not in service.engine_saw()
        # the same request to the model without rails goes through
        answer = await service.http.post(path, json={**body, "model": PLAIN})
        assert answer.status_code == 200, answer.text


async def test_the_sdks_see_the_content_filter_error(tmp_path: Path) -> None:
    async with guarded_service(tmp_path) as service:
        with pytest.raises(openai.BadRequestError) as caught:
            await service.openai().chat.completions.create(
                model=FAKE_MODEL, messages=[{"role": "user", "content": SECRET_ASK}]
            )
        assert caught.value.code == "content_filter"
        with pytest.raises(anthropic.BadRequestError) as refused:
            await service.anthropic().messages.create(
                model=FAKE_MODEL,
                max_tokens=10,
                messages=[{"role": "user", "content": SECRET_ASK}],
            )
        assert "`no-secrets`" in refused.value.message


TOOL = {
    "type": "function",
    "function": {
        "name": "lookup",
        "parameters": {"type": "object", "properties": {"q": {"type": "string"}}},
    },
}


@pytest.mark.parametrize(
    "messages",
    [
        [
            {"role": "system", "content": "The password is hunter2."},
            {"role": "user", "content": "hi"},
        ],
        [
            {"role": "user", "content": "look it up"},
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [
                    {
                        "id": "c1",
                        "type": "function",
                        "function": {"name": "lookup", "arguments": '{"q": "root password"}'},
                    }
                ],
            },
            {"role": "tool", "tool_call_id": "c1", "content": "ok"},
        ],
        [
            {"role": "user", "content": "look it up"},
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [
                    {
                        "id": "c1",
                        "type": "function",
                        "function": {"name": "lookup", "arguments": '{"q": "x"}'},
                    }
                ],
            },
            {"role": "tool", "tool_call_id": "c1", "content": "Found: password=letmein"},
        ],
    ],
    ids=["system", "tool-call-arguments", "tool-result"],
)
async def test_every_text_the_model_reads_is_checked(
    tmp_path: Path, messages: list[dict[str, Any]]
) -> None:
    async with guarded_service(tmp_path) as service:
        warmed = len(service.engine.requests)
        answer = await service.http.post(
            "/v1/chat/completions",
            json={"model": FAKE_MODEL, "messages": messages, "tools": [TOOL]},
        )
        assert answer.status_code == 400, answer.text
        content_filter_error(answer.json())
        assert len(service.engine.requests) == warmed


async def test_a_prompt_of_token_ids_is_read_as_its_text(tmp_path: Path) -> None:
    async with guarded_service(tmp_path) as service:
        ids = (
            await service.http.post(
                "/tokenize", json={"model": FAKE_MODEL, "prompt": "alpha bravo"}
            )
        ).json()["tokens"]
        ok = await service.http.post("/v1/completions", json={"model": FAKE_MODEL, "prompt": ids})
        assert ok.status_code == 200, ok.text
    rails = {
        **RAILS,
        "flows": {**RAILS["flows"], "no-secrets": {"type": "topics", "deny": ["bravo"]}},
    }
    async with guarded_service(tmp_path, rails) as service:
        answer = await service.http.post(
            "/v1/completions", json={"model": FAKE_MODEL, "prompt": ids}
        )
        assert answer.status_code == 400, answer.text
        assert answer.json()["error"]["code"] == "content_filter"


# ----- output -----


def sent_before(text: str, received: str) -> None:
    """What reached the client: a clean start of the answer, short of the window that held
    the forbidden phrase, and no less than what was clean before that window."""
    at = ANSWER.index(FORBIDDEN)
    assert FORBIDDEN.split()[0] not in received
    assert ANSWER.startswith(received)
    assert at - 200 - 20 <= len(received) <= at, (len(received), at)


async def test_chat_stream_stops_with_content_filter(tmp_path: Path) -> None:
    async with guarded_service(tmp_path) as service:
        stream = await service.openai().chat.completions.create(
            model=FAKE_MODEL,
            messages=[{"role": "user", "content": "tell me"}],
            stream=True,
            stream_options={"include_usage": True},
            extra_body=choice(),
        )
        text, finishes, usage = "", [], None
        async for chunk in stream:
            if chunk.usage is not None:
                usage = chunk.usage
            for part in chunk.choices:
                text += part.delta.content or ""
                if part.finish_reason:
                    finishes.append(part.finish_reason)
        sent_before(ANSWER, text)
        assert finishes == ["content_filter"]
        assert usage is not None and 0 < usage.completion_tokens < len(ANSWER.split())
        assert service.engine.aborted >= 1  # the engine's generation was cut short
        assert service.engine.running == 0  # and its slot is free
        plain = await service.openai().chat.completions.create(
            model=PLAIN, messages=[{"role": "user", "content": "tell me"}], extra_body=choice()
        )
        assert plain.choices[0].message.content == ANSWER  # without rails: the whole answer


async def test_chat_without_streaming_goes_through_the_same_window(tmp_path: Path) -> None:
    async with guarded_service(tmp_path) as service:
        answer = await service.openai().chat.completions.create(
            model=FAKE_MODEL, messages=[{"role": "user", "content": "tell me"}], extra_body=choice()
        )
        (only,) = answer.choices
        assert only.finish_reason == "content_filter"
        sent_before(ANSWER, only.message.content or "")


async def test_an_answer_without_the_phrase_passes_whole(tmp_path: Path) -> None:
    clean = ANSWER.replace(FORBIDDEN, "cake recipes")
    async with guarded_service(tmp_path) as service:
        answer = await service.openai().chat.completions.create(
            model=FAKE_MODEL,
            messages=[{"role": "user", "content": "tell me"}],
            extra_body=choice(clean),
        )
        assert answer.choices[0].message.content == clean
        assert answer.choices[0].finish_reason == "stop"


@pytest.mark.parametrize("stream", [False, True])
async def test_completions_stop_with_content_filter(tmp_path: Path, stream: bool) -> None:
    async with guarded_service(tmp_path) as service:
        client = service.openai()
        if stream:
            text, finishes = "", []
            async for chunk in await client.completions.create(
                model=FAKE_MODEL, prompt="tell me", stream=True, extra_body=choice()
            ):
                text += chunk.choices[0].text
                finishes += (
                    [chunk.choices[0].finish_reason] if chunk.choices[0].finish_reason else []
                )
        else:
            done = await client.completions.create(
                model=FAKE_MODEL, prompt="tell me", extra_body=choice()
            )
            text, finishes = done.choices[0].text, [done.choices[0].finish_reason]
        sent_before(ANSWER, text)
        assert finishes == ["content_filter"]


def schema_for(text: str) -> dict[str, Any]:
    return {
        "type": "json_schema",
        "name": "answer",
        "schema": {
            "type": "object",
            "properties": {"a": {"type": "string", "enum": [text]}},
            "required": ["a"],
        },
    }


@pytest.mark.parametrize("stream", [False, True])
async def test_a_response_is_incomplete_for_content_filter(tmp_path: Path, stream: bool) -> None:
    async with guarded_service(tmp_path) as service:
        client = service.openai()
        fmt = {"format": schema_for(ANSWER)}
        if stream:
            final = None
            async for event in await client.responses.create(
                model=FAKE_MODEL,
                input="tell me",
                text=fmt,
                stream=True,  # type: ignore[arg-type]
            ):
                if event.type == "response.incomplete":
                    final = event.response
            assert final is not None
        else:
            final = await client.responses.create(model=FAKE_MODEL, input="tell me", text=fmt)  # type: ignore[arg-type]
        assert final.status == "incomplete"
        assert final.incomplete_details is not None
        assert final.incomplete_details.reason == "content_filter"
        assert FORBIDDEN not in final.output_text


@pytest.mark.parametrize("stream", [False, True])
async def test_a_message_stops_with_refusal(tmp_path: Path, stream: bool) -> None:
    # the fake engine writes words: this rail forbids any letter
    rails = {
        "flows": {"letters": {"type": "topics", "deny_patterns": ["[a-z]"]}},
        "rails": {"output": {"flows": ["letters"]}},
    }
    async with guarded_service(tmp_path, rails) as service:
        client = service.anthropic()
        ask = [{"role": "user", "content": "say something"}]
        if stream:
            async with client.messages.stream(
                model=FAKE_MODEL, max_tokens=30, messages=ask
            ) as events:  # type: ignore[arg-type]
                message = await events.get_final_message()
        else:
            message = await client.messages.create(model=FAKE_MODEL, max_tokens=30, messages=ask)  # type: ignore[arg-type]
        assert message.stop_reason == "refusal"
        assert "".join(b.text for b in message.content if b.type == "text") == ""


async def test_tool_call_arguments_are_checked_as_they_stream(tmp_path: Path) -> None:
    tool = {
        "type": "function",
        "function": {
            "name": "launch",
            "parameters": {
                "type": "object",
                "properties": {"order": {"type": "string", "enum": [f"send the {FORBIDDEN}"]}},
                "required": ["order"],
            },
        },
    }
    async with guarded_service(tmp_path) as service:
        stream = await service.openai().chat.completions.create(
            model=FAKE_MODEL,
            messages=[{"role": "user", "content": "go"}],
            tools=[tool],  # type: ignore[list-item]
            tool_choice="required",
            stream=True,
        )
        arguments, finishes = "", []
        async for chunk in stream:
            for part in chunk.choices:
                for call in part.delta.tool_calls or ():
                    arguments += (call.function.arguments if call.function else None) or ""
                finishes += [part.finish_reason] if part.finish_reason else []
        assert "launch codes" not in arguments
        assert finishes == ["content_filter"]
        answer = await service.openai().chat.completions.create(
            model=PLAIN,
            messages=[{"role": "user", "content": "go"}],
            tools=[tool],
            tool_choice="required",  # type: ignore[list-item]
        )
        assert answer.choices[0].finish_reason == "tool_calls"  # without rails: the call


# ----- rails bound to a key -----

BOUND = "nb-bound-key-0123456789abcdef0123456789abcd"
FREE = "nb-free-key-0123456789abcdef0123456789abcdef"


async def test_a_key_bound_to_a_rail_cannot_skip_it(tmp_path: Path) -> None:
    keys = write_keys(
        tmp_path / "keys.yaml",
        {BOUND: {"id": "bound", "rails": ["key-only"]}, FREE: {"id": "free"}},
    )
    async with guarded_service(tmp_path, api_keys_file=keys) as service:
        ask = [{"role": "user", "content": "share the confidential report"}]
        for model in (FAKE_MODEL, PLAIN):  # even on the model without rails
            with pytest.raises(openai.BadRequestError) as caught:
                await service.openai(BOUND).chat.completions.create(model=model, messages=ask)  # type: ignore[arg-type]
            assert "`key-only`" in caught.value.message
            answer = await service.openai(FREE).chat.completions.create(model=model, messages=ask)  # type: ignore[arg-type]
            assert answer.choices[0].finish_reason in ("stop", "length")
        # bound on the output too: its answers are read
        clean = ANSWER.replace(FORBIDDEN, "confidential notes")
        answer = await service.openai(BOUND).chat.completions.create(
            model=PLAIN, messages=[{"role": "user", "content": "go"}], extra_body=choice(clean)
        )
        assert answer.choices[0].finish_reason == "content_filter"
        answer = await service.openai(FREE).chat.completions.create(
            model=PLAIN, messages=[{"role": "user", "content": "go"}], extra_body=choice(clean)
        )
        assert answer.choices[0].message.content == clean


def test_a_key_bound_to_an_undefined_rail_is_refused() -> None:
    guards = Guardrails(parse_guardrails(RAILS), models=None)  # type: ignore[arg-type]
    with pytest.raises(PermissionDenied, match="bound to guardrail ghost"):
        guards.plan((FAKE_MODEL,), ("ghost",))
    plan = guards.plan((FAKE_MODEL,), ("key-only", "no-secrets"))
    assert plan is not None
    assert [b.name for b in plan.input] == ["no-secrets", "key-only"]  # the model's first
    assert [b.name for b in plan.output] == ["no-launch", "key-only", "no-secrets"]
    assert guards.plan((PLAIN,)) is None
    # an adapter's own list first, else its base model's
    assert guards.plan(("an-adapter", PLAIN)) is None
