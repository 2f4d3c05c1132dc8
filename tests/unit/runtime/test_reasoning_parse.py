"""The reasoning parser: thinking out of the answer as the text streams, and its place in
the runtime (before tool-call parsing, chat only, not under a grammar)."""

from __future__ import annotations

import dataclasses
import random
from collections.abc import AsyncGenerator

import pytest

from nimble.engines import EngineConfig
from nimble.engines.fake.engine import FakeEngine
from nimble.errors import ConfigError
from nimble.models import resolve_model
from nimble.runtime import Runtime, RuntimeConfig
from nimble.runtime.reasoning import ThinkSplitter, reasoning_format, split_reasoning
from nimble.types import (
    ChatMessage,
    GenerateRequest,
    GenerationChunk,
    JsonSchemaConstraint,
    SamplingParams,
    TokenLogprob,
    ToolFunction,
    Usage,
)

R1 = reasoning_format("deepseek_r1")
assert R1 is not None


def split(pieces: list[str], also_ends: tuple[str, ...] = ()) -> tuple[str, str]:
    """Feed the pieces one by one; the reasoning and the answer."""
    assert R1 is not None
    splitter = ThinkSplitter(R1, also_ends)
    reasoning = content = ""
    for piece in pieces:
        out = splitter.feed(piece)
        reasoning += out.reasoning
        content += out.content
    out = splitter.finish()
    return reasoning + out.reasoning, content + out.content


def chars(text: str) -> list[str]:
    return list(text)


@pytest.mark.parametrize(
    ("output", "reasoning", "content"),
    [
        ("<think>\nLet me see.\n</think>\n\nIt is 4.", "\nLet me see.\n", "\n\nIt is 4."),
        # the template wrote <think>: the output starts inside the thinking
        ("Let me see.</think>It is 4.", "Let me see.", "It is 4."),
        # never closed: all of it is thinking
        ("<think>Let me see, 2 and 2", "Let me see, 2 and 2", ""),
        ("Let me see, 2 and 2 </thi", "Let me see, 2 and 2 </thi", ""),
        # empty thinking
        ("<think></think>It is 4.", "", "It is 4."),
        ("</think>It is 4.", "", "It is 4."),
        ("<think>\n\n</think>\n\nIt is 4.", "\n\n", "\n\nIt is 4."),
        # whitespace before the opening tag goes with it
        ("\n <think>x</think>y", "x", "y"),
        # what only looks like a tag is text
        ("<thinking>x</think>y", "<thinking>x", "y"),
        ("<think>a <think> b</think>c</think>d", "a <think> b", "c</think>d"),
        ("", "", ""),
    ],
)
def test_thinking_and_answer_whole_and_split_in_every_place(
    output: str, reasoning: str, content: str
) -> None:
    assert split([output]) == (reasoning, content)
    assert split(chars(output)) == (reasoning, content)  # tags split across chunks
    for at in range(len(output) + 1):
        assert split([output[:at], output[at:]]) == (reasoning, content)


def test_random_chunking_never_leaks_a_tag_and_reassembles() -> None:
    rng = random.Random(7)
    words = ["<think>", "</think>", "<", "/", "think", ">", "a", " ", "\n", "<th", "ink>"]
    for _ in range(300):
        output = "".join(rng.choice(words) for _ in range(rng.randint(0, 12)))
        cuts = sorted(rng.sample(range(len(output) + 1), k=min(3, len(output) + 1)))
        pieces = [output[a:b] for a, b in zip([0, *cuts], [*cuts, len(output)], strict=True)]
        body = output.lstrip()
        body = body.removeprefix("<think>") if body.startswith("<think>") else output
        reasoning, _, content = body.partition("</think>")
        assert split(pieces) == (reasoning, content), pieces


def test_nothing_is_released_while_it_may_still_be_a_tag() -> None:
    assert R1 is not None
    splitter = ThinkSplitter(R1)
    assert splitter.feed("  <thi").reasoning == ""  # may become the opening tag
    assert splitter.feed("nk>I think</th").reasoning == "I think"
    out = splitter.feed("ink>Answer")
    assert (out.reasoning, out.content) == ("", "Answer")
    assert not splitter.thinking


def test_a_tool_call_marker_ends_the_thinking_and_stays_in_the_answer() -> None:
    output = 'I will call f<tool_call>\n{"name": "f"}</tool_call>'
    expected = ("I will call f", '<tool_call>\n{"name": "f"}</tool_call>')
    assert split([output], ("<tool_call>",)) == expected
    assert split(chars(output), ("<tool_call>",)) == expected
    # without tools offered, the marker is only text in the thoughts
    assert split([output]) == (output, "")


def test_parser_names() -> None:
    assert reasoning_format(None) is None
    assert reasoning_format("none") is None
    for name in ("deepseek_r1", "qwen3"):  # vLLM's names
        fmt = reasoning_format(name)
        assert fmt is not None and (fmt.name, fmt.start, fmt.end) == (name, "<think>", "</think>")
    with pytest.raises(ConfigError, match=r"unknown reasoning_parser 'r2'; known: none, "):
        reasoning_format("r2")


async def _chunks(items: list[GenerationChunk]) -> AsyncGenerator[GenerationChunk, None]:
    for item in items:
        yield item


def _lp(token: str) -> tuple[TokenLogprob, ...]:
    return (TokenLogprob(token, -0.5),)


async def test_the_stream_holds_one_kind_per_chunk_counts_thinking_and_keeps_logprobs() -> None:
    assert R1 is not None
    engine = [
        GenerationChunk(index=0, text="Hm", logprobs=_lp("Hm")),
        GenerationChunk(index=1, text="<think>", logprobs=_lp("<think>")),
        GenerationChunk(index=0, text=".</", logprobs=_lp(".</")),  # held back: may be the tag
        GenerationChunk(index=1, text="Long", logprobs=_lp("Long")),
        GenerationChunk(index=0, text="think>Yes", logprobs=_lp("think>Yes")),
        GenerationChunk(index=0, text=" sir", finish_reason="stop", logprobs=_lp(" sir")),
        GenerationChunk(index=1, text=" thought", finish_reason="length"),
        GenerationChunk(usage=Usage(10, 7)),
    ]
    out = [chunk async for chunk in split_reasoning(_chunks(engine), R1)]
    assert all(not (c.text and c.reasoning) for c in out)
    finishes = [c for c in out if c.finish_reason]
    assert all(not c.text and not c.reasoning for c in finishes)
    assert [(c.index, c.finish_reason) for c in finishes] == [(0, "stop"), (1, "length")]

    def joined(index: int, field: str) -> str:
        return "".join(getattr(c, field) for c in out if c.index == index and c.usage is None)

    assert (joined(0, "reasoning"), joined(0, "text")) == ("Hm.", "Yes sir")
    assert (joined(1, "reasoning"), joined(1, "text")) == ("Long thought", "")
    tokens = [lp.token for c in out if c.index == 0 for lp in c.logprobs]
    assert tokens == ["Hm", ".</", "think>Yes", " sir"]  # none lost while held back
    # choice 0 thought in 3 chunks (the one that closes the tag included), choice 1 in 3
    assert out[-1].usage == Usage(10, 7, reasoning_tokens=6)


class _Scripted(FakeEngine):
    """Writes `OUTPUT` in pieces of 3 characters, whatever it is asked."""

    OUTPUT = ""

    async def generate(self, request: GenerateRequest) -> AsyncGenerator[GenerationChunk, None]:
        text = self.OUTPUT
        for at in range(0, len(text), 3):
            yield GenerationChunk(text=text[at : at + 3])
        yield GenerationChunk(finish_reason="stop")
        yield GenerationChunk(usage=Usage(5, (len(text) + 2) // 3))


async def _run(
    output: str, request: GenerateRequest, parser: str | None = "qwen3"
) -> list[GenerationChunk]:
    _Scripted.OUTPUT = output
    runtime = Runtime(
        [resolve_model("fake")],
        RuntimeConfig(EngineConfig(), reasoning_parser=parser),
        engine_factory=_Scripted,
    )
    await runtime.start()
    try:
        return [chunk async for chunk in runtime.generate("fake-model", request)]
    finally:
        await runtime.stop()


def _chat(**fields: object) -> GenerateRequest:
    messages = (ChatMessage("user", "What is the weather in Paris?"),)
    return GenerateRequest("r", SamplingParams(max_tokens=64), messages=messages, **fields)  # type: ignore[arg-type]


async def test_a_call_opened_before_the_thoughts_close_is_still_made() -> None:
    output = (
        'Let me check the weather.\n<tool_call>\n{"name": "get_weather", "arguments": '
        '{"city": "Paris"}}\n</tool_call>'
    )
    weather = ToolFunction("get_weather", parameters={"type": "object"})
    out = await _run(output, _chat(tools=(weather,)))
    assert "".join(c.reasoning for c in out) == "Let me check the weather.\n"
    calls = [d for c in out for d in c.tool_calls]
    assert [d.name for d in calls if d.name] == ["get_weather"]
    assert "".join(d.arguments for d in calls) == '{"city": "Paris"}'
    assert out[-2].finish_reason == "tool_calls"
    # the chunks of 3 characters up to the one that completes the marker were thinking
    thought = -(-(output.index("<tool_call>") + len("<tool_call>")) // 3)
    assert out[-1].usage is not None and out[-1].usage.reasoning_tokens == thought


async def test_thinking_then_a_call_as_qwen3_writes_it() -> None:
    output = (
        '<think>\nThe user wants weather.\n</think>\n\n<tool_call>\n{"name": "get_weather", '
        '"arguments": {"city": "Paris"}}\n</tool_call>'
    )
    weather = ToolFunction("get_weather", parameters={"type": "object"})
    out = await _run(output, _chat(tools=(weather,)))
    assert "".join(c.reasoning for c in out) == "\nThe user wants weather.\n"
    assert "".join(c.text for c in out).strip() == ""
    assert [d.name for c in out for d in c.tool_calls if d.name] == ["get_weather"]
    assert out[-2].finish_reason == "tool_calls"


async def test_no_parsing_for_completions_under_a_grammar_or_when_off() -> None:
    output = "<think>x</think>y"
    completion = GenerateRequest("r", SamplingParams(max_tokens=9), prompt="p")
    as_json = _chat(constraint=JsonSchemaConstraint({"type": "object"}))
    for request, parser in ((completion, "qwen3"), (as_json, "qwen3"), (_chat(), "none")):
        out = await _run(output, request, parser)
        assert "".join(c.text for c in out) == output
        assert not any(c.reasoning for c in out)
        assert out[-1].usage is not None and out[-1].usage.reasoning_tokens is None
    out = await _run(output, _chat())
    assert ("".join(c.reasoning for c in out), "".join(c.text for c in out)) == ("x", "y")


def test_an_unknown_parser_stops_the_start_and_the_setting_overrides_the_profile() -> None:
    spec = resolve_model("fake")
    with pytest.raises(ConfigError, match="reasoning_parser 'r2'"):
        Runtime([spec], RuntimeConfig(EngineConfig(), reasoning_parser="r2"))
    profiled = dataclasses.replace(spec, options={"reasoning_parser": "nope"})
    with pytest.raises(ConfigError, match="reasoning_parser 'nope'"):
        Runtime([profiled], RuntimeConfig(EngineConfig()))
    Runtime([profiled], RuntimeConfig(EngineConfig(), reasoning_parser="none"))


def test_vllm_is_not_told_to_parse_the_thinking_itself() -> None:
    from nimble.engines.vllm.wire import serve_args

    spec = dataclasses.replace(resolve_model("fake"), options={"reasoning_parser": "qwen3"})
    args = serve_args(spec, None, 4)
    assert not any("reasoning" in arg for arg in args), args
