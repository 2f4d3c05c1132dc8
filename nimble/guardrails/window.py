"""Output rails over a stream: each choice's output is held back a window at a time, checked,
and only then released.

A choice's chunks are held until `chunk_size` characters wait (its text, its reasoning and
its tool calls' arguments, each read as its own text); the output rails check them, and
the chunks are released but for the last `context_size` characters, which stay held and
are checked again with the next window: a word, a card number or an e-mail address cut at
a window's edge is seen whole once. At the end of a choice what is left is checked and
released before its finish. Chunks are released as they came (their logprobs with them),
except where a rail redacted: those chunks carry the redacted text, without logprobs
(they would spell out what was redacted).

On a block the generation stops (`stop` closes the engine's stream, which frees its slot):
every unfinished choice ends with finish reason `content_filter`, its held text dropped,
and the stream ends with a usage chunk of what was generated up to then.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable

from nimble.guardrails.bound import Plan, note, worst
from nimble.observability.record import RequestRecord
from nimble.types import GenerationChunk, ToolCallDelta, Usage

Channel = str | int  # "text", "reasoning", or the index of a tool call


def channels(chunk: GenerationChunk) -> dict[Channel, str]:
    """The texts a chunk carries, by channel."""
    found: dict[Channel, str] = {}
    if chunk.reasoning:
        found["reasoning"] = chunk.reasoning
    if chunk.text:
        found["text"] = chunk.text
    for delta in chunk.tool_calls:
        if delta.arguments:
            found[delta.index] = found.get(delta.index, "") + delta.arguments
    return found


def size(chunk: GenerationChunk) -> int:
    return sum(len(text) for text in channels(chunk).values())


def _set(chunk: GenerationChunk, channel: Channel, text: str) -> GenerationChunk:
    """`chunk` with `channel`'s text replaced (and its logprobs dropped)."""
    if channel == "text":
        return dataclasses.replace(chunk, text=text, logprobs=())
    if channel == "reasoning":
        return dataclasses.replace(chunk, reasoning=text, logprobs=())
    calls = []
    for delta in chunk.tool_calls:
        if delta.index == channel:
            calls.append(dataclasses.replace(delta, arguments=text))
            text = ""  # the whole text goes to the first piece of the call
        else:
            calls.append(delta)
    return dataclasses.replace(chunk, tool_calls=tuple(calls))


def _alone(index: int, channel: Channel, text: str) -> GenerationChunk:
    if channel == "text":
        return GenerationChunk(index=index, text=text)
    if channel == "reasoning":
        return GenerationChunk(index=index, reasoning=text)
    assert isinstance(channel, int)
    return GenerationChunk(index=index, tool_calls=(ToolCallDelta(channel, arguments=text),))


def rewrite(
    held: list[GenerationChunk], channel: Channel, text: str, keep: int
) -> list[GenerationChunk]:
    """`held` with `channel`'s text replaced by `text`: all of it in the first chunk that
    carried the channel, but for its last `keep` characters, in a chunk of their own right
    after it (so that they stay held for the next window, as the text they replace)."""
    carrying = [k for k, chunk in enumerate(held) if channel in channels(chunk)]
    head, tail = (text[:-keep], text[-keep:]) if 0 < keep < len(text) else (text, "")
    out: list[GenerationChunk] = []
    for k, chunk in enumerate(held):
        if k == carrying[0]:
            out.append(_set(chunk, channel, head))
            if tail:
                out.append(_alone(chunk.index, channel, tail))
        elif k in carrying:
            out.append(_set(chunk, channel, ""))
        else:
            out.append(chunk)
    return out


def release(held: list[GenerationChunk], keep: int) -> list[GenerationChunk]:
    """Take from the front of `held` the chunks that leave at least `keep` characters."""
    left = sum(size(chunk) for chunk in held)
    out: list[GenerationChunk] = []
    while held and left - size(held[0]) >= keep:
        left -= size(held[0])
        out.append(held.pop(0))
    return out


async def check(plan: Plan, held: list[GenerationChunk], record: RequestRecord) -> bool:
    """Run the output rails over what is held (redacting it in place); False on a block."""
    texts: dict[Channel, str] = {}
    for chunk in held:
        for channel, text in channels(chunk).items():
            texts[channel] = texts.get(channel, "") + text
    if not texts:
        return True
    keep = plan.window.context_size
    for bound in plan.output:
        started = time.monotonic()
        names = list(texts)
        checks = await asyncio.gather(*(bound.run(texts[c], "output") for c in names))
        verdict = worst(checks)
        note(record, bound, "output", verdict, started)
        if verdict.decision == "block":
            return False
        for channel, result in zip(names, checks, strict=True):
            redacted = result.text if result.decision == "redact" else None
            if redacted is not None and redacted != texts[channel]:
                held[:] = rewrite(held, channel, redacted, keep)
                texts[channel] = redacted
    return True


async def guard_stream(
    plan: Plan,
    chunks: AsyncIterator[GenerationChunk],
    record: RequestRecord,
    *,
    choices: int,
    stop: Callable[[], Awaitable[None]],
    prompt_tokens: Callable[[], Awaitable[int]],
) -> AsyncGenerator[GenerationChunk, None]:
    """`chunks` (the runtime's stream of `choices` choices) through the output rails."""
    window = plan.window
    step = window.chunk_size - window.context_size  # new characters between two checks
    held: dict[int, list[GenerationChunk]] = {}
    new: dict[int, int] = {}  # characters of each choice not checked yet
    finished: set[int] = set()
    generated = 0  # chunks with output: the completion tokens, if the engine's count is lost
    async for chunk in chunks:
        if chunk.usage is not None:
            yield chunk
            continue
        index = chunk.index
        mine = held.setdefault(index, [])
        end = None
        if chunk.finish_reason is not None:
            end = GenerationChunk(
                index=index, finish_reason=chunk.finish_reason, stop_sequence=chunk.stop_sequence
            )
            chunk = dataclasses.replace(chunk, finish_reason=None, stop_sequence=None)
        added = size(chunk)
        if end is None or added or chunk.logprobs or chunk.progress is not None:
            mine.append(chunk)
        if added:
            generated += 1
            new[index] = new.get(index, 0) + added
        unchecked = new.get(index, 0)
        full = unchecked >= step and sum(size(c) for c in mine) >= window.chunk_size
        if full or (end is not None and unchecked):
            new[index] = 0
            if not await check(plan, mine, record):
                await stop()
                for other in range(choices):
                    if other not in finished:
                        yield GenerationChunk(index=other, finish_reason="content_filter")
                yield GenerationChunk(usage=Usage(await prompt_tokens(), generated))
                return
        if full or end is not None:  # only what was checked leaves
            for released in release(mine, 0 if end is not None else window.context_size):
                yield released
        if end is not None:
            finished.add(index)
            yield end
