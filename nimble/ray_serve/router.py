"""nimble's routing policy (`nimble.gateway.policy`) as a Ray Serve request router.

Ray Serve (>= 2.46, alpha API) lets a deployment name a `RequestRouter` subclass. Ray calls
its `choose_replicas(candidate_replicas, pending_request)` in the *caller's* process (here:
the `NimbleIngress` replica that holds the handle to `NimbleServer`) and expects ranked lists
of replicas: Ray tries the first rank, sends the request to the replica with the shortest
queue in it that accepts, and falls to the next rank when none does.

What Ray gives the router, and what this adapter uses of it:
- `RunningReplica.replica_id.unique_id`: the policy's replica id.
- `RunningReplica.routing_stats`: whatever the replica's `record_routing_stats()` returned
  last (every `request_routing_stats_period_s`); `NimbleServer` reports nimble's running and
  waiting requests and KV cache use -> `Replica.running`, `.waiting`, `.cache_usage`.
- the router's queue-length cache (`replica_queue_len_cache`: the replica's ongoing requests,
  from Ray's probes and its own sends) and this router's own count of requests routed and
  not completed (`on_request_routed` / `on_request_completed`) -> `Replica.in_flight`.
- `PendingRequest.args`: the arguments of the handle call. Requests that come through Ray's
  HTTP proxy carry only the ASGI scope (the body stays in the proxy until the replica reads
  it), so the prompt is *not* visible there; that is why nimble's Ray app has a small
  ingress deployment that reads the body and calls `NimbleServer.forward(scope, body)`:
  `args[1]` is then the request body, and its prompt text (`prompt_text`) feeds the policy.
- `PendingRequest.metadata.session_id` (the `x-session-id` header at Ray's proxy) is not
  used: nimble's ingress makes its own handle call, and the prompt says more.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from ray.serve.request_router import PendingRequest, RequestRouter, RunningReplica

from nimble import jsontext
from nimble.gateway.policy import Decision, Replica, RoutingPolicy, make_policy
from nimble.gateway.request import prompt_text as gateway_prompt_text

DEFAULT_POLICY = "prefix-aware"


def prompt_text(body: bytes | str | Mapping[str, Any] | None) -> str:
    """The text the policy matches: the model name, then the prompt as the gateway reads it
    (`nimble.gateway.request.prompt_text`: system, tools, then the turns), so that the
    gateway and Ray route the same request alike. "" when the body is not a JSON object
    (the policy then picks the least-loaded replica)."""
    if body is None:
        return ""
    if isinstance(body, bytes | str):
        try:
            body = jsontext.loads(body)
        except (ValueError, UnicodeDecodeError):
            return ""
    if not isinstance(body, Mapping):
        return ""
    payload = dict(body)
    model = payload.get("model")
    text = gateway_prompt_text(payload)
    return f"{model}\x1e{text}" if isinstance(model, str) else text


def reading(
    replica_id: str, routing_stats: Mapping[str, Any] | None, in_flight: int | None
) -> Replica:
    """One replica as the policy sees it, from what Ray knows of it: the stats its
    `record_routing_stats` last returned (`running`, `waiting`, `cache_usage`; missing
    before the first report) and the requests in flight to it (None: unknown)."""
    stats = routing_stats or {}
    cache = stats.get("cache_usage")
    return Replica(
        id=replica_id,
        running=float(stats.get("running", 0.0)),
        waiting=float(stats.get("waiting", 0.0)),
        in_flight=max(0, in_flight or 0),
        cache_usage=float(cache) if isinstance(cache, int | float) else None,
    )


def pending_prompt(args: Sequence[Any], kwargs: Mapping[str, Any]) -> str:
    """The prompt of a pending `NimbleServer.forward(scope, body)` call ("" for any other)."""
    body = kwargs.get("body", args[1] if len(args) > 1 else None)
    return prompt_text(body) if isinstance(body, bytes | str | Mapping) else ""


def ranked(decision: Decision, candidates: Iterable[RunningReplica]) -> list[list[Any]]:
    """Ray's ranks: the policy's choice first, then every other candidate (Ray takes the
    shortest queue among them) for when the chosen one is full."""
    first = [r for r in candidates if r.replica_id.unique_id == decision.replica]
    rest = [r for r in candidates if r.replica_id.unique_id != decision.replica]
    return [ranks for ranks in (first, rest) if ranks]


class PrefixAwareRouter(RequestRouter):
    """Routes each request to the replica that nimble's policy picks (by default
    `prefix-aware`: the replica that last served the longest prefix of the prompt, unless it
    is clearly busier than the least-loaded one). `request_router_kwargs`: `policy` (a name
    of `nimble.gateway.policy.POLICIES`)."""

    def initialize_state(self, policy: str = DEFAULT_POLICY, **_: Any) -> None:
        self._policy: RoutingPolicy = make_policy(policy)
        self._in_flight: dict[str, int] = {}
        self._routed: dict[str, str] = {}  # internal request id -> replica id
        self._known: set[str] = set()
        self.last_decision: Decision | None = None

    def _state(self) -> None:
        if not hasattr(self, "_policy"):  # Ray calls initialize_state; a bare instance may not
            self.initialize_state()

    def readings(self, candidates: Sequence[RunningReplica]) -> list[Replica]:
        self._state()
        readings = []
        for replica in candidates:
            rid = replica.replica_id.unique_id
            cached = self.replica_queue_len_cache.get(replica.replica_id)
            ours = self._in_flight.get(rid, 0)
            readings.append(
                reading(rid, replica.routing_stats, max(ours, cached) if cached else ours)
            )
        return readings

    async def choose_replicas(
        self,
        candidate_replicas: list[RunningReplica],
        pending_request: PendingRequest | None = None,
    ) -> list[list[RunningReplica]]:
        self._state()
        if not candidate_replicas:
            return []
        prompt = ""
        if pending_request is not None:
            prompt = pending_prompt(pending_request.args, pending_request.kwargs)
            # every candidate is ranked: when all refuse, Ray should back off, not spin
            pending_request.routing_context.should_backoff = True
        decision = self._policy.choose(prompt, self.readings(candidate_replicas))
        self.last_decision = decision
        return ranked(decision, candidate_replicas)

    def update_replicas(self, replicas: list[RunningReplica]) -> None:
        super().update_replicas(replicas)
        self.track(r.replica_id.unique_id for r in replicas)

    def track(self, current: Iterable[str]) -> None:
        """The replicas now running: one that left takes its prefixes and counts along."""
        self._state()
        now = set(current)
        for gone in self._known - now:
            self._policy.forget(gone)
            self._in_flight.pop(gone, None)
        self._known = now

    def on_request_routed(
        self, pending_request: PendingRequest, replica_id: Any, result: Any
    ) -> None:
        self._state()
        rid = replica_id.unique_id
        self._in_flight[rid] = self._in_flight.get(rid, 0) + 1
        self._routed[pending_request.metadata.internal_request_id] = rid

    def on_request_completed(self, replica_id: Any, internal_request_id: str) -> None:
        self._state()
        rid = self._routed.pop(internal_request_id, None)
        if rid is not None and self._in_flight.get(rid, 0) > 0:
            self._in_flight[rid] -= 1
