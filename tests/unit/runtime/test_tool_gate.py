"""The policy gate's stream stage: calls outside the key's `call` list leave the stream, the
calls kept are numbered densely per choice, and a choice left without calls stops."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from nimble.runtime.aggregate import collect
from nimble.runtime.tools.gate import NAME_LIMIT, gate_calls
from nimble.types import GenerationChunk, ToolCallDelta, Usage

ALLOWED = frozenset({"lookup_claim"})


async def stream(*chunks: GenerationChunk) -> AsyncIterator[GenerationChunk]:
    for chunk in chunks:
        yield chunk


def opened(index: int, name: str, choice: int = 0) -> GenerationChunk:
    return GenerationChunk(
        index=choice, tool_calls=(ToolCallDelta(index, f"call_{name}", name, ""),)
    )


def args(index: int, text: str, choice: int = 0) -> GenerationChunk:
    return GenerationChunk(index=choice, tool_calls=(ToolCallDelta(index, arguments=text),))


async def gated(*chunks: GenerationChunk) -> tuple[list[GenerationChunk], list[str]]:
    dropped: list[str] = []
    out = [c async for c in gate_calls(stream(*chunks), ALLOWED, dropped, key="agent")]
    return out, dropped


async def test_a_call_outside_the_scope_leaves_and_the_rest_is_numbered_densely() -> None:
    out, dropped = await gated(
        GenerationChunk(text="Let me look."),
        opened(0, "send_email"),
        args(0, '{"to": "x@example.com"'),
        args(0, "}"),
        opened(1, "lookup_claim"),
        args(1, '{"id": 7}'),
        GenerationChunk(
            tool_calls=(
                ToolCallDelta(2, "call_wipe", "wipe_db", ""),
                ToolCallDelta(3, "call_again", "lookup_claim", '{"id": 8}'),
            )
        ),
        args(2, "{}"),
        GenerationChunk(finish_reason="tool_calls"),
        GenerationChunk(usage=Usage(10, 20)),
    )
    assert dropped == ["send_email", "wipe_db"]
    calls = [d for c in out for d in c.tool_calls]
    assert calls == [
        ToolCallDelta(0, "call_lookup_claim", "lookup_claim", ""),
        ToolCallDelta(0, arguments='{"id": 7}'),
        ToolCallDelta(1, "call_again", "lookup_claim", '{"id": 8}'),
    ]
    # nothing of a dropped call reaches the client, not even an empty chunk
    assert all(c.text or c.tool_calls or c.finish_reason or c.usage for c in out)
    assert "x@example.com" not in repr(out)
    assert [c.finish_reason for c in out if c.finish_reason] == ["tool_calls"]
    assert out[0] == GenerationChunk(text="Let me look.") and out[-1].usage == Usage(10, 20)
    completion = await collect(stream(*out), 1)
    (choice,) = completion.choices
    assert [(c.id, c.name, c.arguments) for c in choice.tool_calls] == [
        ("call_lookup_claim", "lookup_claim", '{"id": 7}'),
        ("call_again", "lookup_claim", '{"id": 8}'),
    ]


async def test_a_choice_whose_every_call_was_dropped_stops_and_others_keep_theirs() -> None:
    out, dropped = await gated(
        opened(0, "send_email", choice=0),
        opened(0, "lookup_claim", choice=1),
        args(0, "{}", choice=0),
        args(0, '{"id": 1}', choice=1),
        GenerationChunk(index=0, finish_reason="tool_calls"),
        GenerationChunk(index=1, finish_reason="tool_calls"),
        GenerationChunk(usage=Usage(4, 4)),
    )
    assert dropped == ["send_email"]
    completion = await collect(stream(*out), 2)
    first, second = completion.choices
    assert (first.finish_reason, first.tool_calls, first.text) == ("stop", (), "")
    assert second.finish_reason == "tool_calls"
    assert [(c.name, c.arguments) for c in second.tool_calls] == [("lookup_claim", '{"id": 1}')]


@pytest.mark.parametrize("finish", ["length", "stop"])
async def test_other_finish_reasons_are_left_alone(finish: str) -> None:
    out, dropped = await gated(
        GenerationChunk(text="a"),
        opened(0, "send_email"),
        GenerationChunk(finish_reason=finish),  # type: ignore[arg-type]
    )
    assert dropped == ["send_email"]
    assert out == [GenerationChunk(text="a"), GenerationChunk(finish_reason=finish)]  # type: ignore[arg-type]


async def test_nothing_outside_the_scope_passes_unchanged() -> None:
    chunks = (
        GenerationChunk(text="x", progress=Usage(1, 1)),
        opened(0, "lookup_claim"),
        args(0, "{}"),
        GenerationChunk(finish_reason="tool_calls", progress=Usage(1, 3)),
        GenerationChunk(usage=Usage(1, 3)),
    )
    out, dropped = await gated(*chunks)
    assert out == list(chunks) and dropped == []


async def test_a_long_name_is_cut_in_the_record_and_a_stray_delta_is_closed() -> None:
    name = "n" * 500
    out, dropped = await gated(
        opened(0, name),
        args(5, '{"never": "opened"}'),  # arguments of a call never opened: not passed on
        GenerationChunk(finish_reason="tool_calls"),
    )
    assert dropped == ["n" * NAME_LIMIT]
    assert out == [GenerationChunk(finish_reason="stop")]
