"""The policy gate for agents: tool calls the caller's key may not have the model make are
dropped from the answer, as it streams.

A stage over the stream of parsed chunks (after `parse_calls`): the first delta of a call
carries its name, so the decision is made there and applies to the call's later deltas.
The calls kept are numbered again from 0 in each choice (a client sees dense indexes, as if
the dropped calls had never been made); a choice whose every call was dropped ends with
`stop` instead of `tool_calls`. The names dropped are appended to `dropped` (the request
record: the audit line and a metric), never their arguments.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import AsyncGenerator, AsyncIterator
from dataclasses import dataclass, field

from nimble.types import GenerationChunk, ToolCallDelta

log = logging.getLogger("nimble.tools")

NAME_LIMIT = 64
"""A dropped call's name is the model's text: kept to this many characters in the record."""


@dataclass
class _Choice:
    kept: dict[int, int] = field(default_factory=dict)  # the parser's index -> the output's
    dropped: set[int] = field(default_factory=set)

    def route(self, delta: ToolCallDelta, allowed: frozenset[str]) -> ToolCallDelta | None:
        """The delta as the client sees it, or None (a call dropped)."""
        opens = delta.index not in self.kept and delta.index not in self.dropped
        if opens and delta.name is not None:
            if delta.name not in allowed:
                self.dropped.add(delta.index)
                return None
            self.kept[delta.index] = len(self.kept)
        target = self.kept.get(delta.index)
        if target is None:  # a dropped call's arguments, or a call never opened: closed
            return None
        return delta if target == delta.index else dataclasses.replace(delta, index=target)


async def gate_calls(
    chunks: AsyncIterator[GenerationChunk],
    allowed: frozenset[str],
    dropped: list[str],
    *,
    key: str | None = None,
) -> AsyncGenerator[GenerationChunk, None]:
    """`chunks` with the calls of tools outside `allowed` removed (see the module's text).
    `key`: the key's id, for the log line."""
    choices: dict[int, _Choice] = {}
    async for chunk in chunks:
        if chunk.usage is not None or not (chunk.tool_calls or chunk.finish_reason):
            yield chunk
            continue
        state = choices.setdefault(chunk.index, _Choice())
        calls = []
        for delta in chunk.tool_calls:
            routed = state.route(delta, allowed)
            if routed is not None:
                calls.append(routed)
            elif delta.name is not None:
                name = delta.name[:NAME_LIMIT]
                dropped.append(name)
                log.warning("tool call dropped: key `%s` may not call `%s`", key, name)
        finish = chunk.finish_reason
        if finish == "tool_calls" and not state.kept:
            finish = "stop"
        changed = dataclasses.replace(chunk, tool_calls=tuple(calls), finish_reason=finish)
        if changed == chunk:
            yield chunk  # nothing dropped or numbered again in this chunk
        elif not _empty(changed):
            yield changed
        # else: it carried only the deltas of dropped calls


def _empty(chunk: GenerationChunk) -> bool:
    return not (
        chunk.text or chunk.reasoning or chunk.tool_calls or chunk.finish_reason or chunk.logprobs
    )
