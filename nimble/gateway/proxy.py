"""Forward one request to a replica: pick it (the routing policy), send it, retry on another
one while nothing has reached the client, then pass the answer through as it comes.

- A replica that refuses the connection (or drops it before answering) is ejected from the
  rotation at once; one that answers 503 or 429 (draining, loading, its queue full) is
  skipped. Either way the request goes to another replica, at most `retries` more times,
  and only before the first byte of the answer: the gateway holds the response headers
  until the replica's first body byte, so a replica that dies while it generates a
  non-streamed answer is retried too. After the first byte nothing is retried: a stream
  whose replica dies ends with one error event (the endpoint's own error event shape).
- Nothing is buffered: each chunk goes on to the client as it arrives. A client that goes
  away closes the upstream response, and the replica cancels the generation.
- The usage of each answer (its JSON `usage`, or the stream's usage event) is read on the
  way through, for the access log, the metrics and the API keys' token limits. A chat or
  completion stream that did not ask for usage is sent upstream with
  `stream_options.include_usage` and its usage-only event is dropped before the client.
"""

from __future__ import annotations

import asyncio
import logging
import re
import ssl
import time
from collections import OrderedDict
from collections.abc import AsyncIterator
from dataclasses import dataclass

import aiohttp
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import Scope

from nimble.errors import ModelNotFound, Unavailable
from nimble.gateway.metrics import GatewayMetrics
from nimble.gateway.policy import RoutingPolicy
from nimble.gateway.relay import (
    HOP_BY_HOP,
    Relay,
    UsageReader,
    broken_event,
    response_headers,
)
from nimble.gateway.request import Target
from nimble.gateway.upstreams import Upstream, UpstreamPool
from nimble.observability.record import RequestRecord, current_record

log = logging.getLogger("nimble.gateway")

_TRACE_HEADERS = (b"traceparent", b"tracestate")
_RESPONSE_ID = re.compile(rb'"id"\s*:\s*"(resp_[A-Za-z0-9_-]+)"')
_STICKY = 10_000  # response ids remembered (their replica holds them: previous_response_id)


# what a replica that cannot be reached or that breaks off raises (aiohttp's read timeout is
# asyncio's TimeoutError)
_TRANSPORT_ERRORS = (aiohttp.ClientError, asyncio.TimeoutError)


@dataclass(frozen=True)
class ProxyConfig:
    retries: int = 2
    upstream_key: str | None = None  # sent as the bearer key instead of the client's
    timeout: float = 600.0  # seconds without a byte from a replica
    verify: bool | str = True  # https replicas: the system's CAs, or this CA bundle


class Proxy:
    """`start()` opens the HTTP session to the replicas (in the running event loop), `stop()`
    closes it. aiohttp rather than httpx here: this is the per-request path, and aiohttp
    costs about a third of the CPU per proxied request (benchmarks/RESULTS.md)."""

    def __init__(
        self,
        pool: UpstreamPool,
        policy: RoutingPolicy,
        metrics: GatewayMetrics,
        config: ProxyConfig,
    ):
        self.pool = pool
        self.policy = policy
        self.metrics = metrics
        self.config = config
        self._session: aiohttp.ClientSession | None = None
        self._fresh: aiohttp.ClientSession | None = None  # a new connection for every request
        self._responses: OrderedDict[str, str] = OrderedDict()  # response id -> replica

    async def start(self) -> None:
        verify = self.config.verify
        tls: ssl.SSLContext | bool = (
            ssl.create_default_context(cafile=verify) if isinstance(verify, str) else verify
        )
        self._session, self._fresh = self._new_session(tls), self._new_session(tls, fresh=True)

    def _new_session(
        self, tls: ssl.SSLContext | bool, fresh: bool = False
    ) -> aiohttp.ClientSession:
        return aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=0, ssl=tls, force_close=fresh),
            timeout=aiohttp.ClientTimeout(
                total=None, sock_connect=5.0, sock_read=self.config.timeout
            ),
            auto_decompress=False,  # bytes pass through as the replica encoded them
            skip_auto_headers=("Accept-Encoding", "User-Agent", "Content-Type"),
        )

    async def stop(self) -> None:
        for session in (self._session, self._fresh):
            if session is not None:
                await session.close()

    async def forward(self, request: Request, target: Target) -> Response:
        record = current_record.get() or RequestRecord(request_id="-")
        record.model = target.model
        record.task = target.task
        record.queued_at = record.started
        candidates = await self._candidates(target)
        tried: set[str] = set()
        last: aiohttp.ClientResponse | None = None
        for attempt in range(self.config.retries + 1):
            left = [u for u in candidates if u.url not in tried and u.ready]
            if not left:
                break
            upstream = self._choose(target, left)
            tried.add(upstream.url)
            if attempt:
                self.metrics.retries.labels(upstream.url).inc()
            opened = await self._open(request, target, upstream)
            if opened is None:
                continue
            if isinstance(opened, aiohttp.ClientResponse):
                if last is not None:
                    last.close()
                last = opened
                continue
            record.admitted_at = time.monotonic()
            return self._respond(request, target, upstream, opened, record)
        if last is not None:  # every replica tried answered 429/503: pass the last one on
            try:
                body = await last.read()
            finally:
                last.release()
            return Response(body, last.status, response_headers(last))
        raise Unavailable(
            f"no replica could take the request for model {target.model}"
            if target.model
            else "no replica could take the request"
        )

    # --- choosing ---

    async def _candidates(self, target: Target) -> list[Upstream]:
        if target.model is None:
            upstreams = self.pool.ready()
            if not upstreams:
                raise Unavailable("no replica is ready")
        else:
            upstreams = self.pool.serving(target.model)
            if not upstreams and not self.pool.known(target.model):
                await self.pool.refresh_models()  # new on the replicas since the last reading?
                upstreams = self.pool.serving(target.model)
        if upstreams:
            sticky = self._responses.get(target.previous_response or "")
            held = [u for u in upstreams if u.url == sticky]
            return held or upstreams
        assert target.model is not None
        if self.pool.known(target.model) or not self.pool.ready():
            raise Unavailable(f"no replica serving model {target.model} is ready")
        raise ModelNotFound(
            f"The model `{target.model}` does not exist. Available: "
            + ", ".join(self.pool.models()),
            param="model",
        )

    def _choose(self, target: Target, upstreams: list[Upstream]) -> Upstream:
        if len(upstreams) == 1 and not target.prompt:
            return upstreams[0]
        readings = [u.reading(target.model or "") for u in upstreams]
        decision = self.policy.choose(target.prompt, readings)
        self.metrics.decisions.labels(self.policy.name, decision.reason).inc()
        if decision.matched_chars:
            self.metrics.prefix_chars.inc(decision.matched_chars)
        return next(u for u in upstreams if u.url == decision.replica)

    # --- sending ---

    async def _open(
        self, request: Request, target: Target, upstream: Upstream, fresh: bool = False
    ) -> _Opened | aiohttp.ClientResponse | None:
        """The replica's answer with its first body chunk read; a 429/503 answer (to pass
        on if no other replica does better); None when it could not be reached (it is
        ejected). A replica that closed the connection before answering is most often one
        whose keep-alive closed a pooled connection as this request reused it, not one that
        is down: the request goes to it once more on a `fresh` connection, and only that
        failing ejects it."""
        session = self._fresh if fresh else self._session
        assert session is not None, "Proxy.start() was not awaited"
        sent = time.monotonic()
        upstream.in_flight += 1
        url = upstream.url + _target_path(request.scope)
        response: aiohttp.ClientResponse | None = None
        try:
            response = await session.request(
                request.method,
                url,
                headers=self._request_headers(request),
                data=target.body,
                allow_redirects=False,
            )
            if response.status in (429, 503):
                self.metrics.errors.labels(upstream.url, "status").inc()
                self.metrics.requests.labels(upstream.url, str(response.status)).inc()
                if response.status == 503:
                    self.pool.eject(upstream.url, "answered 503")
                upstream.in_flight -= 1
                return response
            chunks = _chunks(response)
            first = await anext(chunks, b"")
        except _TRANSPORT_ERRORS as exc:
            if response is not None:
                response.close()
            upstream.in_flight -= 1
            if isinstance(exc, aiohttp.ServerDisconnectedError) and response is None and not fresh:
                self.metrics.errors.labels(upstream.url, "disconnected").inc()
                return await self._open(request, target, upstream, fresh=True)
            self.metrics.errors.labels(upstream.url, "connect").inc()
            self.pool.eject(upstream.url, _describe(exc))
            return None
        except BaseException:
            if response is not None:
                response.close()
            upstream.in_flight -= 1
            raise
        self.metrics.first_byte.labels(upstream.url).observe(time.monotonic() - sent)
        self.metrics.requests.labels(upstream.url, str(response.status)).inc()
        return _Opened(response, first, chunks)

    def _request_headers(self, request: Request) -> list[tuple[str, str]]:
        state = request.scope.get("state", {})
        own = {b"x-request-id", b"traceparent", b"tracestate"}
        if self.config.upstream_key is not None:
            own |= {b"authorization", b"x-api-key"}
        headers = [
            (k.decode("latin-1"), v.decode("latin-1"))
            for k, v in request.scope["headers"]
            if k.lower() not in own and k.decode("latin-1").lower() not in HOP_BY_HOP
        ]
        headers.append(("x-request-id", str(state.get("request_id", "-"))))
        trace = state.get("trace_headers") or [
            (k, v)
            for k, v in request.scope["headers"]
            if k.lower() in (b"traceparent", b"tracestate")
        ]
        headers.extend((k.decode("latin-1"), v.decode("latin-1")) for k, v in trace)
        if self.config.upstream_key is not None:
            headers.append(("authorization", f"Bearer {self.config.upstream_key}"))
        return headers

    # --- passing the answer on ---

    def _respond(
        self,
        request: Request,
        target: Target,
        upstream: Upstream,
        opened: _Opened,
        record: RequestRecord,
    ) -> Response:
        response = opened.response
        streamed = response.headers.get("content-type", "").startswith("text/event-stream")
        whole = False  # read to its end: the connection can serve the next request
        reader = UsageReader(streamed, target.drop_usage_event, record)

        closed = False

        async def close() -> None:
            nonlocal closed
            if not closed:
                closed = True
                record.finished_at = time.monotonic()
                upstream.in_flight -= 1
                if whole:
                    response.release()
                else:  # cut short: closing the connection tells the replica to stop
                    response.close()

        async def body() -> AsyncIterator[bytes]:
            nonlocal whole
            try:
                if opened.first:
                    record.first_token_at = time.monotonic()
                    self._remember_response(target, opened.first, upstream)
                    yield reader.feed(opened.first)
                async for chunk in opened.chunks:
                    out = reader.feed(chunk)
                    if out:
                        record.last_token_at = time.monotonic()
                        yield out
                whole = True
                tail = reader.flush()
                if tail:
                    yield tail
            except _TRANSPORT_ERRORS as exc:
                self.metrics.errors.labels(upstream.url, "broken").inc()
                self.pool.eject(upstream.url, f"stream broke: {_describe(exc)}")
                record.aborted = True
                log.warning("gateway: %s broke off request %s", upstream.url, record.request_id)
                if streamed:
                    yield broken_event(request.scope["path"], record.request_id)
            finally:
                await close()

        return Relay(close, body(), response.status, response_headers(response))

    def _remember_response(self, target: Target, first: bytes, upstream: Upstream) -> None:
        if target.task != "responses":
            return
        found = _RESPONSE_ID.search(first)
        if found is not None:
            self._responses[found.group(1).decode()] = upstream.url
            while len(self._responses) > _STICKY:
                self._responses.popitem(last=False)


@dataclass
class _Opened:
    response: aiohttp.ClientResponse
    first: bytes
    chunks: AsyncIterator[bytes]


async def _chunks(response: aiohttp.ClientResponse) -> AsyncIterator[bytes]:
    """The body as it arrives, each piece as soon as the socket gives it."""
    while chunk := await response.content.readany():
        yield chunk


def _target_path(scope: Scope) -> str:
    """The request's path and query as the client sent them (still percent-encoded)."""
    raw = scope.get("raw_path")
    path = raw.decode("latin-1") if raw else scope["path"]
    query = scope.get("query_string", b"")
    return f"{path}?{query.decode('latin-1')}" if query else path


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}".rstrip(": ")
