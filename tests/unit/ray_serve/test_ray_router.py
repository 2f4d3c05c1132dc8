"""The Ray Serve router adapter without a cluster: Ray's replica info and pending requests
map to the policy's readings and prompt, and its choice comes back as Ray's ranks."""

from __future__ import annotations

import json
import warnings
from types import SimpleNamespace
from typing import Any

import pytest

with warnings.catch_warnings():  # Ray's own modules warn at import (pydantic v1-style fields)
    warnings.simplefilter("ignore")
    from ray.serve._private.common import (
        DeploymentHandleSource,
        DeploymentID,
        ReplicaID,
        RequestMetadata,
    )
    from ray.serve.request_router import PendingRequest

    from nimble.ray_serve import ServeOptions
    from nimble.ray_serve.router import (
        PrefixAwareRouter,
        pending_prompt,
        prompt_text,
        reading,
    )

DEPLOYMENT = DeploymentID(name="NimbleServer", app_name="nimble")
LONG = "You are a careful assistant. " * 40  # several 256-character blocks


def replica(name: str, **stats: Any) -> Any:
    """What the router reads of Ray's RunningReplica: its id and its routing stats."""
    return SimpleNamespace(replica_id=ReplicaID(name, DEPLOYMENT), routing_stats=stats)


def router(policy: str = "prefix-aware") -> PrefixAwareRouter:
    made = PrefixAwareRouter(
        deployment_id=DEPLOYMENT,
        handle_source=DeploymentHandleSource.UNKNOWN,
        use_replica_queue_len_cache=True,
    )
    made.initialize_state(policy=policy)
    return made


def chat(content: str, model: str = "fake-model") -> bytes:
    return json.dumps({"model": model, "messages": [{"role": "user", "content": content}]}).encode()


def pending(body: bytes, request: str = "r1") -> PendingRequest:
    scope = {"type": "http", "method": "POST", "path": "/v1/chat/completions"}
    metadata = RequestMetadata(request_id=request, internal_request_id=request)
    return PendingRequest(args=[scope, body], kwargs={}, metadata=metadata)


def test_prompt_text_is_the_model_then_the_gateways_text() -> None:
    assert prompt_text(chat("hello")) == "fake-model\x1euser:hello"
    parts = {
        "role": "user",
        "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}],
    }
    assert prompt_text({"model": "m", "system": "be brief", "messages": [parts]}) == (
        "m\x1ebe brief\x1euser:a\x1eb"
    )
    assert prompt_text(b'{"model": "m", "prompt": ["one", "two"]}') == "m\x1eone\x1etwo"
    assert prompt_text('{"model": "e", "input": "cats sleep"}') == "e\x1ecats sleep"
    assert prompt_text(b'{"prompt": "no model"}') == "no model"
    assert prompt_text(b"not json") == ""
    assert prompt_text(b"[1, 2]") == ""
    assert prompt_text(b"\xff\xfe") == ""
    assert prompt_text(None) == ""
    # the same prompt to two models is two prefixes
    assert prompt_text(chat("hi", "a")) != prompt_text(chat("hi", "b"))


def test_pending_prompt_reads_the_forwarded_body_only() -> None:
    assert pending_prompt([{}, chat("hi")], {}) == "fake-model\x1euser:hi"
    assert pending_prompt([{}], {"body": chat("hi")}) == "fake-model\x1euser:hi"
    assert pending_prompt([b"pickled StreamingHTTPRequest"], {}) == ""  # Ray's proxy path
    assert pending_prompt([], {}) == ""


def test_reading_maps_routing_stats_and_in_flight() -> None:
    got = reading("a", {"running": 3, "waiting": 2, "cache_usage": 0.5}, 4)
    assert (got.id, got.running, got.waiting, got.in_flight, got.cache_usage) == (
        "a",
        3.0,
        2.0,
        4,
        0.5,
    )
    assert got.load() == 7.0
    empty = reading("b", {}, None)  # before the first record_routing_stats
    assert (empty.running, empty.waiting, empty.in_flight, empty.cache_usage) == (0, 0, 0, None)
    assert reading("c", {"cache_usage": None}, -1).in_flight == 0


async def test_same_prefix_goes_to_the_same_replica_and_all_are_ranked() -> None:
    ray_router = router()
    replicas = [replica("a"), replica("b"), replica("c")]
    request = pending(chat(LONG + "first question"))
    ranks = await ray_router.choose_replicas(replicas, request)
    assert request.routing_context.should_backoff  # every replica ranked: back off, not spin
    first = ranks[0][0].replica_id.unique_id
    assert [len(rank) for rank in ranks] == [1, 2]
    assert {r.replica_id.unique_id for rank in ranks for r in rank} == {"a", "b", "c"}
    assert ray_router.last_decision is not None
    assert ray_router.last_decision.reason == "prefix-miss"

    again = await ray_router.choose_replicas(replicas, pending(chat(LONG + "second"), "r2"))
    assert again[0][0].replica_id.unique_id == first
    assert ray_router.last_decision.reason == "prefix-hit"
    assert ray_router.last_decision.matched_chars > 256


async def test_a_busy_replica_loses_its_prefix_to_the_least_loaded() -> None:
    ray_router = router()
    idle = [replica("a"), replica("b")]
    ranks = await ray_router.choose_replicas(idle, pending(chat(LONG)))
    held = ranks[0][0].replica_id.unique_id
    other = "b" if held == "a" else "a"
    # the holder now reports a queue (routing stats): 4 running + 4 waiting = load 12, beyond
    # the default margin of 8 over an idle replica
    busy = [replica(held, running=4, waiting=4), replica(other)]
    ranks = await ray_router.choose_replicas(busy, pending(chat(LONG), "r2"))
    assert ranks[0][0].replica_id.unique_id == other
    assert ray_router.last_decision is not None
    assert ray_router.last_decision.reason == "prefix-overloaded"


async def test_in_flight_counts_follow_routed_and_completed_requests() -> None:
    ray_router = router("least-loaded")
    replicas = [replica("a"), replica("b")]
    for n in range(3):  # requests in flight to `a` make `b` the least loaded
        ray_router.on_request_routed(pending(b"", f"q{n}"), ReplicaID("a", DEPLOYMENT), None)
    assert [r.in_flight for r in ray_router.readings(replicas)] == [3, 0]
    ranks = await ray_router.choose_replicas(replicas, pending(chat("x"), "q9"))
    assert ranks[0][0].replica_id.unique_id == "b"
    ray_router.on_request_completed(ReplicaID("a", DEPLOYMENT), "q0")
    ray_router.on_request_completed(ReplicaID("a", DEPLOYMENT), "unknown")
    assert [r.in_flight for r in ray_router.readings(replicas)] == [2, 0]
    # Ray's own queue-length cache counts too, when it knows more
    ray_router.replica_queue_len_cache.update(ReplicaID("b", DEPLOYMENT), 5)
    assert [r.in_flight for r in ray_router.readings(replicas)] == [2, 5]


async def test_a_replica_that_left_is_forgotten() -> None:
    ray_router = router()
    replicas = [replica("a", running=1), replica("b")]  # `b` is the least loaded
    ray_router.track(["a", "b"])
    ranks = await ray_router.choose_replicas(replicas, pending(chat(LONG)))
    assert ranks[0][0].replica_id.unique_id == "b"
    await ray_router.choose_replicas(replicas, pending(chat(LONG), "r2"))
    assert ray_router.last_decision is not None
    assert ray_router.last_decision.reason == "prefix-hit"
    ray_router.track(["a"])  # `b` left, holding the prefix
    ray_router.track(["a", "b"])  # a new replica under the old id starts cold
    await ray_router.choose_replicas(replicas, pending(chat(LONG), "r3"))
    assert ray_router.last_decision.reason == "prefix-miss"


def test_serve_options_from_serve_run_arguments() -> None:
    options, rest = ServeOptions.split(
        {"min-replicas": "1", "max_replicas": "3", "upscale_delay_s": "0.5", "model": "fake"}
    )
    assert (options.min_replicas, options.max_replicas, options.upscale_delay_s) == (1, 3, 0.5)
    assert options.initial_replicas is None
    assert ServeOptions.split({"initial_replicas": "none"})[0].initial_replicas is None
    assert rest == {"model": "fake"}


def test_unknown_policy_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown routing policy"):
        router("random")
