"""Reasoning output: a thinking model's `<think>...</think>` moved out of its answer.

One `ThinkSplitter` per choice reads the engine's text as it streams. The output starts
inside the thinking: Qwen3 and DeepSeek-R1 templates often write `<think>` into the
prompt, so the model's first token is already thought. An opening tag at the very start
(after whitespace) is dropped; the text up to the closing tag is reasoning, the text after
it the answer (kept as written: the newlines after `</think>` included). An output that
never closes the tag is all reasoning. A piece of a tag split across chunks is held back
until it is known to be the tag or text, so that `reasoning + answer` is the output less
its tags.

With tools offered, the tool-call format's opening marker also ends the thinking (and
stays in the answer, for the call parser): a model that opens a call without closing its
thoughts first still makes the call.
"""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncGenerator, AsyncIterator
from dataclasses import dataclass

from nimble.errors import ConfigError
from nimble.types import GenerationChunk, TokenLogprob, Usage


@dataclass(frozen=True)
class ReasoningFormat:
    """How a model family marks its thinking (parser names as vLLM's `--reasoning-parser`)."""

    name: str
    start: str = "<think>"
    end: str = "</think>"


OFF = "none"  # the setting's value that turns a model profile's parser off
FORMATS: dict[str, ReasoningFormat] = {
    fmt.name: fmt for fmt in (ReasoningFormat("deepseek_r1"), ReasoningFormat("qwen3"))
}


def reasoning_format(name: str | None) -> ReasoningFormat | None:
    """The format of a `reasoning_parser` name; None when unset or `none`."""
    if name is None or name == OFF:
        return None
    fmt = FORMATS.get(name)
    if fmt is None:
        known = ", ".join([OFF, *sorted(FORMATS)])
        raise ConfigError(f"unknown reasoning_parser {name!r}; known: {known}")
    return fmt


@dataclass
class Split:
    reasoning: str = ""
    content: str = ""


class ThinkSplitter:
    """One choice's text, as it streams, into reasoning and answer."""

    def __init__(self, fmt: ReasoningFormat, also_ends: tuple[str, ...] = ()):
        self._fmt = fmt
        self._kept_ends = tuple(marker for marker in also_ends if marker)
        self._pending = ""  # text not yet known to be reasoning, a tag, or the answer
        self._started = False  # past the place where an opening tag may stand
        self.thinking = True

    def feed(self, text: str) -> Split:
        return self._split(text, final=False)

    def finish(self) -> Split:
        """What was held back, at the end of the choice."""
        return self._split("", final=True)

    def _split(self, text: str, final: bool) -> Split:
        if not self.thinking:
            return Split(content=text)
        self._pending += text
        if not self._started:
            stripped = self._pending.lstrip()
            if not final and self._fmt.start.startswith(stripped):
                return Split()  # whitespace, or what may still become the opening tag
            self._started = True
            if stripped.startswith(self._fmt.start):
                self._pending = stripped[len(self._fmt.start) :]
        pending = self._pending
        end = _first(pending, (self._fmt.end, *self._kept_ends))
        if end is not None:
            at, marker = end
            self._pending = ""
            self.thinking = False
            after = at + len(marker) if marker == self._fmt.end else at
            return Split(reasoning=pending[:at], content=pending[after:])
        keep = 0 if final else _partial_suffix(pending, (self._fmt.end, *self._kept_ends))
        cut = len(pending) - keep
        self._pending = pending[cut:]
        return Split(reasoning=pending[:cut])


async def split_reasoning(
    chunks: AsyncIterator[GenerationChunk],
    fmt: ReasoningFormat,
    also_ends: tuple[str, ...] = (),
) -> AsyncGenerator[GenerationChunk, None]:
    """The engine's text chunks, with the thinking moved to `reasoning`: each chunk out holds
    either reasoning or answer text, a choice's finish comes alone in its last chunk, and
    the usage chunk counts `reasoning_tokens`.

    Reasoning tokens are counted per engine chunk that arrives while the choice thinks (its
    tags included), or per token logprob where the chunk has them; llama.cpp and the fake
    engine stream one token per chunk, so the count is exact there. It never exceeds the
    completion tokens."""
    splitters: dict[int, ThinkSplitter] = {}
    held: dict[int, tuple[TokenLogprob, ...]] = {}  # logprobs of text still held back
    thought = 0
    async for chunk in chunks:
        if chunk.usage is not None:
            usage = chunk.usage
            counted = min(thought, usage.completion_tokens)
            yield GenerationChunk(usage=dataclasses.replace(usage, reasoning_tokens=counted))
            continue
        index = chunk.index
        splitter = splitters.get(index)
        if splitter is None:
            splitter = splitters[index] = ThinkSplitter(fmt, also_ends)
        if chunk.text and splitter.thinking:
            thought += max(1, len(chunk.logprobs))
        logprobs = held.pop(index, ()) + chunk.logprobs
        if chunk.text:
            for out in _pieces(index, splitter.feed(chunk.text), logprobs, chunk.progress):
                logprobs = ()
                yield out
        if logprobs:
            held[index] = logprobs
        if chunk.finish_reason is None:
            continue
        for out in _pieces(index, splitter.finish(), held.pop(index, ())):
            yield out
        yield GenerationChunk(
            index=index, finish_reason=chunk.finish_reason, stop_sequence=chunk.stop_sequence
        )


def _pieces(
    index: int,
    split: Split,
    logprobs: tuple[TokenLogprob, ...],
    progress: Usage | None = None,
) -> list[GenerationChunk]:
    """A split as chunks, the chunk's logprobs on the first of them (and its usage so far,
    for continuous usage, on each)."""
    out = []
    if split.reasoning:
        out.append(
            GenerationChunk(
                index=index, reasoning=split.reasoning, logprobs=logprobs, progress=progress
            )
        )
        logprobs = ()
    if split.content:
        out.append(
            GenerationChunk(index=index, text=split.content, logprobs=logprobs, progress=progress)
        )
    return out


def _first(text: str, markers: tuple[str, ...]) -> tuple[int, str] | None:
    """Where the earliest of `markers` starts in `text`, and which it is."""
    found = [(at, marker) for marker in markers if (at := text.find(marker)) >= 0]
    return min(found) if found else None


def _partial_suffix(text: str, markers: tuple[str, ...]) -> int:
    """Length of the longest end of `text` that is a proper start of one of `markers`."""
    longest = 0
    for marker in markers:
        for size in range(min(len(text), len(marker) - 1), longest, -1):
            if marker.startswith(text[-size:]):
                longest = size
                break
    return longest
