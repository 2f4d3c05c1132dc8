"""The routing policies, pure: replica readings and prompt text in, one choice out."""

from __future__ import annotations

import pytest

from nimble.gateway.policy import (
    LeastLoaded,
    PrefixAware,
    Replica,
    RoundRobin,
    block_hashes,
    least_loaded,
    make_policy,
)

SYSTEM = "You are the assistant of a bank. " * 40  # ~1,300 characters: five blocks


def idle(*ids: str) -> list[Replica]:
    return [Replica(i) for i in ids]


def test_round_robin_takes_each_replica_in_turn_whatever_the_load() -> None:
    policy = RoundRobin()
    replicas = [Replica("a", running=9), Replica("b"), Replica("c")]
    chosen = [policy.choose("", replicas).replica for _ in range(6)]
    assert chosen == ["a", "b", "c", "a", "b", "c"]


def test_least_loaded_counts_waiting_double_and_trusts_its_own_in_flight() -> None:
    replicas = [Replica("a", running=2), Replica("b", waiting=1.5), Replica("c", in_flight=4)]
    assert LeastLoaded().choose("x", replicas).replica == "a"
    replicas = [Replica("a", running=3), Replica("b", waiting=1)]
    assert least_loaded(replicas).id == "b"  # 3 > 2


def test_a_full_kv_cache_counts_as_busy() -> None:
    replicas = [Replica("a", cache_usage=0.99), Replica("b", running=3)]
    assert least_loaded(replicas).id == "b"


def test_block_hashes_chain_so_equal_blocks_after_different_prefixes_differ() -> None:
    one = block_hashes("x" * 16 + "y" * 16, 16)
    two = block_hashes("z" * 16 + "y" * 16, 16)
    assert len(one) == len(two) == 2
    assert one[0] != two[0] and one[1] != two[1]
    assert block_hashes("x" * 16 + "q", 16)[0] == one[0]  # same first block, same hash


def test_prefix_aware_sends_a_shared_prefix_back_to_its_replica() -> None:
    policy = PrefixAware()
    replicas = idle("a", "b")
    first = policy.choose(SYSTEM + "Question one?", replicas)
    assert first.reason == "prefix-miss"
    # the other replica is now less loaded, but it holds nothing of this prefix
    loaded = [Replica(r.id, in_flight=1 if r.id == first.replica else 0) for r in replicas]
    again = policy.choose(SYSTEM + "Question two?", loaded)
    assert again.replica == first.replica
    assert again.reason == "prefix-hit"
    assert again.matched_chars >= len(SYSTEM) - policy.block_chars


def test_prefix_aware_spreads_different_prefixes() -> None:
    policy = PrefixAware()
    first = policy.choose("A" * 600, [Replica("a"), Replica("b")])
    # a new prefix goes to the least loaded, which is the other one now
    busy = [Replica(first.replica, in_flight=1), Replica("b" if first.replica == "a" else "a")]
    second = policy.choose("B" * 600, busy)
    assert second.reason == "prefix-miss" and second.replica != first.replica


def test_prefix_aware_leaves_a_replica_that_is_clearly_busier() -> None:
    policy = PrefixAware(imbalance_abs=2, imbalance_rel=0.5)
    home = policy.choose(SYSTEM, idle("a", "b")).replica
    other = "b" if home == "a" else "a"
    # within the slack (2 above the least): stays
    close = [Replica(home, running=2), Replica(other)]
    assert policy.choose(SYSTEM + "?", close).replica == home
    # beyond it: goes to the least loaded, which then holds the prefix too
    far = [Replica(home, running=3), Replica(other)]
    moved = policy.choose(SYSTEM + "!", far)
    assert (moved.replica, moved.reason) == (other, "prefix-overloaded")
    # both hold it now: the less loaded of the two takes it
    assert policy.choose(SYSTEM + ";", [Replica(home, running=1), Replica(other)]).replica == other
    # the slack grows with the load: 6 against 4 is not clearly busier
    fresh = PrefixAware(imbalance_abs=2, imbalance_rel=0.5)
    fresh.choose(SYSTEM, [Replica("a")])
    relative = [Replica("a", running=6), Replica("b", running=4)]
    assert fresh.choose(SYSTEM + ".", relative).replica == "a"
    relative = [Replica("a", running=6), Replica("b", running=1)]
    assert fresh.choose(SYSTEM + ".", relative).replica == "b"  # 6 > 1 + 2


def test_prefix_aware_default_margin_is_twice_the_least_load_and_eight_above() -> None:
    policy = PrefixAware()
    home = policy.choose(SYSTEM, idle("a", "b")).replica
    other = "b" if home == "a" else "a"
    # one running + three waiting (load 7) against an idle replica: a queue of warm requests
    # is cheaper than a cold prefill of the whole prefix elsewhere
    assert (
        policy.choose(SYSTEM + "?", [Replica(home, running=1, waiting=3), Replica(other)]).replica
        == home
    )
    # 9 against 0: beyond 8
    moved = policy.choose(SYSTEM + "!", [Replica(home, running=1, waiting=4), Replica(other)])
    assert (moved.replica, moved.reason) == (other, "prefix-overloaded")
    # at large loads the relative part rules: 300 against 140 is more than twice
    fresh = PrefixAware()
    fresh.choose(SYSTEM, [Replica("a")])
    assert (
        fresh.choose(SYSTEM + ".", [Replica("a", running=250), Replica("b", running=140)]).replica
        == "a"
    )
    assert (
        fresh.choose(SYSTEM + ".", [Replica("a", running=300), Replica("b", running=140)]).replica
        == "b"
    )


def test_a_new_prefix_goes_to_the_replica_holding_fewer_among_equally_loaded() -> None:
    policy = PrefixAware()
    # "a" comes first by id on a tie, so it takes the first two prefixes while "b" is busier
    policy.choose("A" * 600, [Replica("a"), Replica("b", running=1)])
    policy.choose("B" * 600, [Replica("a"), Replica("b", running=1)])
    # equally loaded now: the third prefix goes to "b", which holds none
    third = policy.choose("C" * 600, idle("a", "b"))
    assert (third.replica, third.reason) == ("b", "prefix-miss")


def test_prefix_aware_prefers_the_longest_match() -> None:
    policy = PrefixAware(block_chars=16)
    short = "s" * 32
    policy.choose(short, [Replica("a")])
    policy.choose(short + "t" * 32, [Replica("b")])  # b holds the longer prefix
    choice = policy.choose(short + "t" * 32 + "?", idle("a", "b"))
    assert (choice.replica, choice.reason) == ("b", "prefix-hit")


def test_prefix_aware_forgets_the_oldest_blocks_and_replicas_that_left() -> None:
    policy = PrefixAware(block_chars=16, blocks_per_replica=2)
    policy.choose("a" * 16, [Replica("a")])
    policy.choose("b" * 32, [Replica("a")])  # two new blocks push the first out
    assert policy.choose("b" * 32, idle("a", "b")).reason == "prefix-hit"
    assert policy.choose("a" * 16, idle("a", "b")).reason == "prefix-miss"
    policy.forget("a")
    assert policy.choose("a" * 16, [Replica("a")]).reason == "prefix-miss"


def test_policies_by_name() -> None:
    assert make_policy("prefix-aware").name == "prefix-aware"
    assert make_policy("round-robin").name == "round-robin"
    with pytest.raises(ValueError, match="unknown routing policy"):
        make_policy("random")
