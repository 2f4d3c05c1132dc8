"""The output window: nothing leaves before a rail has read it, a phrase cut at a window's
edge is still seen whole, a block stops the stream with content_filter, a redaction
reaches the client in place of the text (without the logprobs that would spell it out)."""

from __future__ import annotations

import re
from collections.abc import AsyncGenerator, AsyncIterator
from typing import Any

from nimble.guardrails.bound import Bound, Plan
from nimble.guardrails.config import Window, parse_guardrails
from nimble.guardrails.rail import Check, Stage
from nimble.guardrails.window import guard_stream, release, rewrite
from nimble.observability.record import RequestRecord
from nimble.types import GenerationChunk, TokenLogprob, ToolCallDelta, Usage

WORDS = [
    "alpha",
    "bravo",
    "charlie",
    "delta",
    "echo",
    "foxtrot",
    "golf",
    "hotel",
    "india",
    "juliet",
    "kilo",
    "lima",
]


class Reader:
    """A rail that blocks `block` and redacts `redact` (regexes), and notes how much of the
    stream had been produced each time it read."""

    name = "reader"

    def __init__(self, source: Source, block: str | None = None, redact: str | None = None):
        self.source = source
        self.block = re.compile(block) if block else None
        self.redact = re.compile(redact) if redact else None
        self.read: list[str] = []
        self.produced_at_read: list[int] = []

    async def start(self) -> None:
        pass

    async def check(self, text: str, stage: Stage) -> Check:
        self.read.append(text)
        self.produced_at_read.append(self.source.produced)
        if self.block is not None and self.block.search(text):
            return Check("block", score=0.99, category="test")
        if self.redact is not None and self.redact.search(text):
            return Check("redact", category="SECRET", text=self.redact.sub("<SECRET>", text))
        return Check("allow", score=0.1)


class Source:
    """An engine's stream: `text` a word a chunk (each with a logprob), then the finish and
    the usage; counts what was pulled."""

    def __init__(self, text: str, choices: int = 1, finish_text: str = ""):
        self.pieces = re.findall(r"\S+\s*", text)
        self.choices = choices
        self.finish_text = finish_text
        self.produced = 0
        self.pulled = 0
        self.closed = False

    async def stream(self) -> AsyncGenerator[GenerationChunk, None]:
        try:
            for index in range(self.choices):
                for piece in self.pieces:
                    self.pulled += 1
                    self.produced += len(piece)
                    logprob = TokenLogprob(piece, -0.5)
                    yield GenerationChunk(index=index, text=piece, logprobs=(logprob,))
                self.produced += len(self.finish_text)
                yield GenerationChunk(index=index, text=self.finish_text, finish_reason="stop")
            yield GenerationChunk(usage=Usage(7, self.pulled))
        finally:
            self.closed = True


def plan_for(rail: Any, chunk_size: int = 60, context_size: int = 15) -> Plan:
    config = parse_guardrails({"flows": {"reader": {"type": "topics", "deny": ["unused"]}}})
    bound = Bound(config.rails["reader"], rail)
    return Plan((), (bound,), Window(chunk_size, context_size))


async def run(
    source: Source, rail: Reader, *, chunk_size: int = 60, context_size: int = 15
) -> tuple[list[GenerationChunk], RequestRecord, list[int]]:
    """The guarded stream's chunks, the record, and for each chunk how much of the stream
    had been produced when the rail last read, at the moment it was yielded."""
    record = RequestRecord(request_id="t")
    stream = source.stream()

    async def stop() -> None:
        await stream.aclose()

    async def prompt_tokens() -> int:
        return 7

    guarded: AsyncIterator[GenerationChunk] = guard_stream(
        plan_for(rail, chunk_size, context_size),
        stream,
        record,
        choices=source.choices,
        stop=stop,
        prompt_tokens=prompt_tokens,
    )
    out: list[GenerationChunk] = []
    covered: list[int] = []
    async for chunk in guarded:
        out.append(chunk)
        covered.append(rail.produced_at_read[-1] if rail.produced_at_read else 0)
    return out, record, covered


def text_of(chunks: list[GenerationChunk], index: int = 0) -> str:
    return "".join(c.text for c in chunks if c.index == index and c.usage is None)


TEXT = " ".join(WORDS * 6)  # 6 * 67 characters


async def test_nothing_leaves_before_it_was_read() -> None:
    source = Source(TEXT)
    rail = Reader(source)
    chunks, record, covered = await run(source, rail)
    assert text_of(chunks) == TEXT  # all of it, in order, unchanged
    released = 0
    for chunk, read_upto in zip(chunks, covered, strict=True):
        released += len(chunk.text)
        assert released <= read_upto, "a chunk left before a rail read it"
    first_text = next(i for i, c in enumerate(chunks) if c.text)
    assert rail.produced_at_read[0] >= 60  # the first window: chunk_size characters held
    assert covered[first_text] >= 60
    # each window re-reads the held tail of the one before: context_size characters at
    # least (whole chunks)
    for before, after in zip(rail.read, rail.read[1:], strict=False):
        assert any(after.startswith(before[-k:]) for k in range(15, len(before)))
    assert [c.finish_reason for c in chunks if c.finish_reason] == ["stop"]
    assert chunks[-1].usage == Usage(7, len(TEXT.split()))
    assert all(len(c.logprobs) == 1 for c in chunks if c.text)  # kept where nothing changed
    assert {c.stage for c in record.guardrails} == {"output"}
    assert len(record.guardrails) == len(rail.read) >= len(TEXT) // 60


async def test_a_phrase_cut_at_the_window_edge_is_seen_whole() -> None:
    # "golf hotel" straddles the first window's edge (60 characters)
    text = "x" * 52 + " golf hotel " + "y " * 40
    assert text.index("golf hotel") < 60 < text.index("golf hotel") + len("golf hotel")
    source = Source(text)
    rail = Reader(source, block=r"golf hotel")
    chunks, _, _ = await run(source, rail)
    assert any("golf hotel" in read for read in rail.read)
    assert "golf" not in text_of(chunks)
    assert chunks[-2].finish_reason == "content_filter"


async def test_a_block_stops_the_stream_with_content_filter() -> None:
    text = TEXT + " forbidden " + TEXT
    source = Source(text)
    rail = Reader(source, block=r"\bforbidden\b")
    chunks, record, _ = await run(source, rail)
    sent = text_of(chunks)
    assert "forbidden" not in sent
    assert text.startswith(sent)
    at = text.index("forbidden")
    assert at - 60 - 10 <= len(sent) <= at  # what was clean before the window was sent
    assert [c.finish_reason for c in chunks if c.finish_reason] == ["content_filter"]
    assert chunks[-1].usage is not None and chunks[-1].usage.prompt_tokens == 7
    assert source.closed  # the engine's stream was closed: its slot frees
    assert source.pulled < len(text.split())  # nothing pulled after the block
    assert record.guardrails[-1].decision == "block"
    assert [c.decision for c in record.guardrails[:-1]] == ["allow"] * (len(record.guardrails) - 1)


async def test_a_block_ends_every_unfinished_choice() -> None:
    source = Source("one two three four five six seven eight nine ten forbidden", choices=3)
    rail = Reader(source, block=r"forbidden")
    chunks, _, _ = await run(source, rail)
    ends = {c.index: c.finish_reason for c in chunks if c.finish_reason}
    assert ends == {0: "content_filter", 1: "content_filter", 2: "content_filter"}
    assert text_of(chunks, 0) == ""  # the whole choice was held: shorter than a window


async def test_a_short_answer_is_read_whole_at_its_end() -> None:
    source = Source("just a few words", finish_text=" and the last")
    rail = Reader(source)
    chunks, _, _covered = await run(source, rail)
    assert rail.read == ["just a few words and the last"]  # the finish chunk's text too
    assert text_of(chunks) == "just a few words and the last"
    assert [c.finish_reason for c in chunks if c.finish_reason] == ["stop"]
    end = next(c for c in chunks if c.finish_reason)
    assert end.text == ""  # the finish comes after the text, on its own


async def test_redaction_replaces_the_text_and_drops_its_logprobs() -> None:
    text = TEXT[:100] + " secret-1234 " + TEXT[:150] + " secret-9876"
    source = Source(text)
    rail = Reader(source, redact=r"secret-\d+")
    chunks, record, _ = await run(source, rail)
    sent = text_of(chunks)
    assert "secret-" not in sent
    assert sent == re.sub(r"secret-\d+", "<SECRET>", text)
    redacted = [c for c in chunks if "<SECRET>" in c.text]
    assert redacted and all(c.logprobs == () for c in redacted)
    assert any(c.logprobs for c in chunks if c.text)  # untouched chunks keep theirs
    assert {c.decision for c in record.guardrails} == {"allow", "redact"}


async def test_tool_call_arguments_are_read_and_blocked() -> None:
    async def calls() -> AsyncGenerator[GenerationChunk, None]:
        yield GenerationChunk(tool_calls=(ToolCallDelta(0, "call_1", "launch", ""),))
        for piece in ['{"target": ', '"the moon", ', '"code": "0000"}']:
            yield GenerationChunk(tool_calls=(ToolCallDelta(0, arguments=piece),))
        yield GenerationChunk(finish_reason="tool_calls")
        yield GenerationChunk(usage=Usage(3, 4))

    source = Source("")
    rail = Reader(source, block=r'"code": "\d+"')
    record = RequestRecord(request_id="t")
    stream = calls()

    async def stop() -> None:
        await stream.aclose()

    async def tokens() -> int:
        return 3

    chunks = [
        c
        async for c in guard_stream(
            plan_for(rail), stream, record, choices=1, stop=stop, prompt_tokens=tokens
        )
    ]
    assert rail.read == ['{"target": "the moon", "code": "0000"}']
    assert all(not c.tool_calls or not c.tool_calls[0].arguments for c in chunks)
    assert [c.finish_reason for c in chunks if c.finish_reason] == ["content_filter"]


def test_rewrite_keeps_the_tail_held() -> None:
    held = [GenerationChunk(text=w + " ") for w in ["aaaa", "bbbb", "cccc", "dddd"]]
    out = rewrite(held, "text", "AAAA BBBB <X> DDDD ", keep=5)
    assert "".join(c.text for c in out) == "AAAA BBBB <X> DDDD "
    assert out[0].text == "AAAA BBBB <X> " and out[1].text == "DDDD "
    assert [c.text for c in out[2:]] == ["", "", ""]
    left = list(out)
    gone = release(left, 5)
    assert "".join(c.text for c in gone) == "AAAA BBBB <X> "
    assert "".join(c.text for c in left) == "DDDD "


def test_rewrite_of_a_tool_call() -> None:
    held = [
        GenerationChunk(tool_calls=(ToolCallDelta(0, "c", "f", '{"a": '),)),
        GenerationChunk(tool_calls=(ToolCallDelta(0, arguments='"x@y.z"}'),)),
    ]
    out = rewrite(held, 0, '{"a": "<EMAIL>"}', keep=0)
    assert out[0].tool_calls == (ToolCallDelta(0, "c", "f", '{"a": "<EMAIL>"}'),)
    assert out[1].tool_calls == (ToolCallDelta(0, arguments=""),)


def test_release_takes_whole_chunks_from_the_front() -> None:
    held = [GenerationChunk(text="x" * n) for n in (10, 10, 10)]
    assert [len(c.text) for c in release(held, 15)] == [10]
    assert [len(c.text) for c in held] == [10, 10]
    assert release(held, 0) == [GenerationChunk(text="x" * 10)] * 2
    assert held == []
