"""Routing policy: which replica serves a request, from the replicas' load and the prompts
each one served last. Pure: no I/O, no clock, no HTTP; the gateway and Ray Serve's request
router both feed it (`Replica` readings in, one `Decision` out).

Three policies, by name (`POLICIES`):
- `round-robin`: each replica in turn, load ignored.
- `least-loaded`: the replica with the smallest load (below).
- `prefix-aware` (the default): a prompt is cut into blocks of `block_chars` characters and
  each block is named by a hash chained over the blocks before it, so a block's hash stands
  for the whole prefix up to it (vLLM's and llm-d's block hashing, on text: the gateway has
  no tokenizer). Each replica keeps an LRU set of the block hashes routed to it, bounded by
  `blocks_per_replica` (the share of prompts a replica's KV cache keeps warm). A request goes
  to the replica holding the longest run of its leading blocks, unless that replica is
  clearly busier than the least-loaded one: its load exceeds the least load by more than
  `max(imbalance_abs, imbalance_rel * least)` (8 and 1.0: twice the least load and 8 above
  it; a miss costs a whole prefill, which on a CPU replica is worth several queued warm
  requests). With no match (or an overloaded match) the least-loaded replica takes it, the
  one holding fewer prompt blocks among equally loaded ones, and from then on holds its
  prefix.

Load of a replica: requests waiting count double (they hold no slot yet and each adds a full
wait), running count once, and the gateway's own in-flight requests to it stand in for the
scraped numbers when those are older than the last few decisions: `max(in_flight, running +
2 * waiting)`. A replica whose KV cache is over `full_cache` is treated as overloaded.
"""

from __future__ import annotations

import hashlib
import itertools
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Literal, Protocol

FULL_CACHE = 0.95  # KV cache use above which a replica counts as busy

Reason = Literal["round-robin", "least-loaded", "prefix-hit", "prefix-miss", "prefix-overloaded"]


@dataclass(frozen=True)
class Replica:
    """One replica as the policy sees it: an id (its URL) and its last known load."""

    id: str
    running: float = 0.0  # requests running, from the replica's metrics
    waiting: float = 0.0  # requests waiting for a slot, from its metrics
    in_flight: int = 0  # requests the router has sent it that have not finished
    cache_usage: float | None = None  # its KV cache use, 0..1, where it reports one

    def load(self) -> float:
        return max(float(self.in_flight), self.running + 2.0 * self.waiting)


@dataclass(frozen=True)
class Decision:
    replica: str
    reason: Reason
    matched_chars: int = 0  # the length of the prefix the chosen replica was known to hold


class RoutingPolicy(Protocol):
    name: str

    def choose(self, prompt: str, replicas: Sequence[Replica]) -> Decision:
        """One replica of `replicas` (never empty) for a request whose prompt text is
        `prompt` ("" where a request has none)."""
        ...

    def forget(self, replica: str) -> None:
        """`replica` left (removed, or restarted with an empty cache)."""
        ...


class RoundRobin:
    name = "round-robin"

    def __init__(self) -> None:
        self._turn = itertools.count()

    def choose(self, prompt: str, replicas: Sequence[Replica]) -> Decision:
        ordered = sorted(replicas, key=lambda r: r.id)
        return Decision(ordered[next(self._turn) % len(ordered)].id, "round-robin")

    def forget(self, replica: str) -> None:
        pass


class LeastLoaded:
    name = "least-loaded"

    def choose(self, prompt: str, replicas: Sequence[Replica]) -> Decision:
        return Decision(least_loaded(replicas).id, "least-loaded")

    def forget(self, replica: str) -> None:
        pass


@dataclass
class PrefixAware:
    name = "prefix-aware"
    block_chars: int = 256
    blocks_per_replica: int = 4096
    imbalance_abs: float = 8.0
    imbalance_rel: float = 1.0
    full_cache: float = FULL_CACHE
    _held: dict[str, OrderedDict[bytes, None]] = field(default_factory=dict, repr=False)

    def choose(self, prompt: str, replicas: Sequence[Replica]) -> Decision:
        blocks = block_hashes(prompt, self.block_chars)
        least = min(
            replicas,
            key=lambda r: (
                _cache_full(r, self.full_cache),
                r.load(),
                len(self._held.get(r.id, ())),
                r.id,
            ),
        )
        best, matched = least, 0
        for replica in sorted(replicas, key=lambda r: (r.load(), r.id)):
            run = self._run(replica.id, blocks)
            if run > matched:
                best, matched = replica, run
        if matched == 0:
            decision = Decision(least.id, "prefix-miss")
        elif self._overloaded(best, least):
            decision = Decision(least.id, "prefix-overloaded")
        else:
            decision = Decision(best.id, "prefix-hit", min(len(prompt), matched * self.block_chars))
        self._remember(decision.replica, blocks)
        return decision

    def forget(self, replica: str) -> None:
        self._held.pop(replica, None)

    def _overloaded(self, replica: Replica, least: Replica) -> bool:
        if _cache_full(replica, self.full_cache):
            return replica.id != least.id
        slack = max(self.imbalance_abs, self.imbalance_rel * least.load())
        return replica.load() > least.load() + slack

    def _run(self, replica: str, blocks: Sequence[bytes]) -> int:
        held = self._held.get(replica)
        if not held:
            return 0
        run = 0
        for block in blocks:
            if block not in held:
                break
            run += 1
        return run

    def _remember(self, replica: str, blocks: Sequence[bytes]) -> None:
        held = self._held.setdefault(replica, OrderedDict())
        for block in blocks:
            held[block] = None
            held.move_to_end(block)
        while len(held) > self.blocks_per_replica:
            held.popitem(last=False)


def least_loaded(replicas: Sequence[Replica], full_cache: float = FULL_CACHE) -> Replica:
    """The replica with the least load; a tie goes to the lower id (stable choices)."""
    if not replicas:
        raise ValueError("no replica to choose from")
    return min(replicas, key=lambda r: (_cache_full(r, full_cache), r.load(), r.id))


def _cache_full(replica: Replica, full_cache: float) -> bool:
    return replica.cache_usage is not None and replica.cache_usage > full_cache


def block_hashes(text: str, block_chars: int) -> list[bytes]:
    """The chained hash of each whole block of `text` (a last partial block counts too: a
    prompt shorter than one block still has a prefix to match)."""
    hashes: list[bytes] = []
    previous = b""
    for start in range(0, len(text), block_chars):
        digest = hashlib.blake2b(previous, digest_size=16)
        digest.update(text[start : start + block_chars].encode("utf-8", "surrogatepass"))
        previous = digest.digest()
        hashes.append(previous)
    return hashes


POLICIES: dict[str, Callable[[], RoutingPolicy]] = {
    RoundRobin.name: RoundRobin,
    LeastLoaded.name: LeastLoaded,
    PrefixAware.name: PrefixAware,
}


def make_policy(name: str) -> RoutingPolicy:
    try:
        return POLICIES[name]()
    except KeyError:
        raise ValueError(f"unknown routing policy {name!r}: one of {', '.join(POLICIES)}") from None
