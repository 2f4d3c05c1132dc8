"""The replicas behind the gateway: where they are, what they serve, whether they are ready
and how loaded they are.

Each upstream is a `nimble serve`. Every `probe_interval` the pool asks each one for its
readiness (`/v1/health/ready`) and its load (`/v1/metrics`: running and waiting requests and
KV cache use, per model); it learns the models an upstream serves from `/v1/models` when the
upstream becomes ready, every `models_interval` after, and at once (`refresh_models`) when a
request names a model that no ready upstream is known to serve, or asks for the list: an
adapter loaded on the replicas, or found in their watched folder, is routable without
waiting for the next reading. An upstream that fails a probe, or that a request could not
connect to (`eject`), is out of the rotation at once and back when a probe finds it ready
again. Upstreams come from fixed URLs and from DNS names (a Kubernetes headless Service: one
replica per address), re-resolved every `dns_interval`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import time
from collections.abc import Callable, KeysView
from dataclasses import dataclass, field
from typing import Any

import httpx
from prometheus_client.parser import text_string_to_metric_families

from nimble.config.gateway import split_dns
from nimble.gateway.policy import Replica

log = logging.getLogger("nimble.gateway")

_LOAD_METRICS = {
    "nimble_num_requests_running": "running",
    "nimble_num_requests_waiting": "waiting",
    "nimble_kv_cache_usage_ratio": "cache",
}
# the lines of a replica's exposition that carry them: only these are parsed (the whole text
# is hundreds of histogram lines, read every probe interval)
_LOAD_LINES = tuple(
    f"{prefix}{name}{end}"
    for name in _LOAD_METRICS
    for prefix, end in (("", "{"), ("", " "), ("# TYPE ", " "), ("# HELP ", " "))
)


# what reading a replica's answers can raise: unreachable, an error status, a body not as expected
_READ_ERRORS = (httpx.HTTPError, ValueError, KeyError, TypeError)


@dataclass
class ModelLoad:
    running: float = 0.0
    waiting: float = 0.0
    cache: float | None = None


@dataclass
class Upstream:
    """One replica. `in_flight` is the gateway's own count of requests sent to it."""

    url: str
    source: str  # the --upstream URL or the DNS name it came from
    ready: bool = False
    cards: dict[str, dict[str, Any]] = field(default_factory=dict)  # its /v1/models entries
    load: dict[str, ModelLoad] = field(default_factory=dict)
    in_flight: int = 0
    models_read_at: float = 0.0
    reason: str = "not probed yet"

    @property
    def models(self) -> KeysView[str]:
        """The ids of the models it serves."""
        return self.cards.keys()

    def reading(self, model: str) -> Replica:
        """What the routing policy sees of this replica for a request to `model`."""
        load = self.load.get(model, ModelLoad())
        return Replica(self.url, load.running, load.waiting, self.in_flight, load.cache)


@dataclass(frozen=True)
class PoolConfig:
    urls: tuple[str, ...] = ()
    dns: tuple[str, ...] = ()  # "name:port" or "https://name:port"
    headers: tuple[tuple[str, str], ...] = ()  # sent with every probe (a service key)
    probe_interval: float = 0.5
    probe_timeout: float = 2.0
    models_interval: float = 30.0
    dns_interval: float = 5.0
    verify: bool | str = True  # TLS verification of https upstreams (a CA bundle path)


class UpstreamPool:
    def __init__(
        self,
        config: PoolConfig,
        on_removed: Callable[[str], None] = lambda url: None,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.config = config
        self._on_removed = on_removed
        self._clock = clock
        self.upstreams: dict[str, Upstream] = {}
        for url in config.urls:
            clean = url.rstrip("/")
            self.upstreams[clean] = Upstream(clean, url)
        self._client = httpx.AsyncClient(
            headers=dict(config.headers),
            timeout=config.probe_timeout,
            trust_env=False,
            verify=config.verify,
        )
        self._tasks: list[asyncio.Task[None]] = []
        self._refreshing = asyncio.Lock()
        self._refresh_started: float | None = None

    # --- lifecycle ---

    async def start(self) -> None:
        """Resolve the DNS names and probe every upstream once, then keep doing both."""
        await self.resolve()
        await self.probe_all()
        self._tasks = [asyncio.create_task(self._every(self.config.probe_interval, self.probe_all))]
        if self.config.dns:
            self._tasks.append(
                asyncio.create_task(self._every(self.config.dns_interval, self.resolve))
            )

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks = []
        await self._client.aclose()

    async def _every(self, seconds: float, work: Callable[[], object]) -> None:
        while True:
            await asyncio.sleep(seconds)  # a period between probes, not a wait for readiness
            try:
                result = work()
                if asyncio.iscoroutine(result):
                    await result
            except Exception:  # one failed round must not end the loop
                log.exception("gateway: upstream refresh failed")

    # --- what the router reads ---

    def serving(self, model: str) -> list[Upstream]:
        """The ready upstreams that serve `model`."""
        return [u for u in self.upstreams.values() if u.ready and model in u.models]

    def known(self, model: str) -> bool:
        """Whether any upstream, ready or not, was seen serving `model`."""
        return any(model in u.models for u in self.upstreams.values())

    def ready(self) -> list[Upstream]:
        return [u for u in self.upstreams.values() if u.ready]

    def models(self) -> list[str]:
        """Every model a ready upstream serves, in a stable order."""
        return sorted({m for u in self.ready() for m in u.models})

    def card(self, model: str) -> dict[str, Any] | None:
        """`model`'s /v1/models entry as a ready replica gives it (an adapter's `parent`, a
        ranking model's `ranking`), from the first in URL order."""
        for upstream in sorted(self.ready(), key=lambda u: u.url):
            if model in upstream.cards:
                return upstream.cards[model]
        return None

    def eject(self, url: str, reason: str) -> None:
        """A request found `url` down: out of the rotation until a probe finds it ready."""
        upstream = self.upstreams.get(url)
        if upstream is not None and upstream.ready:
            log.warning("gateway: upstream %s ejected: %s", url, reason)
            upstream.ready = False
            upstream.reason = reason

    async def refresh_models(self) -> None:
        """Read every ready upstream's models again, unless a reading that started after
        this call was made has ended meanwhile: one reading at a time, and callers that
        arrive during one share the next. An upstream that does not answer keeps what it
        had (its probe decides its readiness)."""
        asked = self._clock()
        async with self._refreshing:
            started = self._refresh_started
            if started is not None and started >= asked:
                return
            self._refresh_started = self._clock()
            await asyncio.gather(*(self._reread_models(u) for u in self.ready()))

    async def _reread_models(self, upstream: Upstream) -> None:
        try:
            await self._read_models(upstream)
        except _READ_ERRORS as exc:
            log.warning("gateway: cannot read the models of %s: %s", upstream.url, exc)

    # --- probes ---

    async def probe_all(self) -> None:
        await asyncio.gather(*(self.probe(u) for u in list(self.upstreams.values())))

    async def probe(self, upstream: Upstream) -> None:
        was_ready = upstream.ready
        try:
            answer = await self._client.get(upstream.url + "/v1/health/ready")
            ready = answer.status_code == 200
            reason = "ready" if ready else f"readiness answered {answer.status_code}"
            if ready:
                await self._read_load(upstream)
                stale = self._clock() - upstream.models_read_at > self.config.models_interval
                if not was_ready or stale:
                    await self._read_models(upstream)
        except _READ_ERRORS as exc:
            ready, reason = False, f"{type(exc).__name__}: {exc}".rstrip(": ")
        upstream.ready, upstream.reason = ready, reason
        if ready and not was_ready:
            log.info(
                "gateway: upstream %s ready (%s)", upstream.url, ", ".join(sorted(upstream.models))
            )
        elif was_ready and not ready:
            log.warning("gateway: upstream %s out of rotation: %s", upstream.url, reason)
            self._on_removed(upstream.url)  # a restarted replica comes back with a cold cache

    async def _read_models(self, upstream: Upstream) -> None:
        answer = await self._client.get(upstream.url + "/v1/models")
        answer.raise_for_status()
        upstream.cards = {str(m["id"]): m for m in answer.json()["data"]}
        upstream.models_read_at = self._clock()

    async def _read_load(self, upstream: Upstream) -> None:
        answer = await self._client.get(upstream.url + "/v1/metrics")
        if answer.status_code != 200:
            return  # metrics off or behind another key: the gateway's own counts remain
        upstream.load = parse_load(answer.text)

    # --- DNS ---

    async def resolve(self) -> None:
        """Add an upstream for every address the DNS names have now; drop those of a name
        that it no longer has."""
        for entry in self.config.dns:
            scheme, host, port = split_dns(entry)
            try:
                addresses = await _addresses(host, port)
            except OSError as exc:
                log.warning("gateway: cannot resolve %s: %s", entry, exc)
                continue  # keep what it had: a DNS blip must not empty the pool
            urls = {f"{scheme}://{_host(a)}:{port}" for a in addresses}
            for url in urls - self.upstreams.keys():
                log.info("gateway: upstream %s found through %s", url, entry)
                self.upstreams[url] = Upstream(url, entry)
            for url, upstream in list(self.upstreams.items()):
                if upstream.source == entry and url not in urls:
                    log.info("gateway: upstream %s gone from %s", url, entry)
                    del self.upstreams[url]
                    self._on_removed(url)


def parse_load(exposition: str) -> dict[str, ModelLoad]:
    """Per model: running, waiting and KV cache use, from a nimble's Prometheus text."""
    loads: dict[str, ModelLoad] = {}
    wanted = "\n".join(line for line in exposition.splitlines() if line.startswith(_LOAD_LINES))
    for family in text_string_to_metric_families(wanted + "\n"):
        attribute = _LOAD_METRICS.get(family.name)
        if attribute is None:
            continue
        for sample in family.samples:
            model = sample.labels.get("model_name")
            if model is not None:
                setattr(loads.setdefault(model, ModelLoad()), attribute, float(sample.value))
    return loads


async def _addresses(host: str, port: int) -> list[str]:
    infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return sorted({str(info[4][0]) for info in infos})


def _host(address: str) -> str:
    return f"[{address}]" if ":" in address else address
