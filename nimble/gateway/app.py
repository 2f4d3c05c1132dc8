"""The gateway's HTTP app: nimble's own middleware (request ids, traces, access and audit log,
metrics, API keys with scopes and limits, body limit, CORS, Anthropic error shapes) around a
proxy of the inference paths, plus what the gateway answers itself: health probes (ready
while at least one replica is), `/v1/models` (the union of the replicas'), metrics and
version.

`create_gateway_app(settings)` is the library entry point, like `nimble.create_app`.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import orjson
from fastapi import FastAPI, Request, Response
from prometheus_client import CONTENT_TYPE_LATEST

from nimble.api.endpoints import ENDPOINT_PATHS
from nimble.api.errors import install_error_handlers
from nimble.api.middleware import RecordSink
from nimble.api.stack import install_middleware
from nimble.api.streaming import until_disconnect
from nimble.config.gateway import GatewaySettings
from nimble.config.settings import ALL_ENDPOINTS
from nimble.errors import ModelNotFound
from nimble.gateway.metrics import GatewayMetrics
from nimble.gateway.policy import LeastLoaded, PrefixAware, RoundRobin, RoutingPolicy
from nimble.gateway.proxy import Proxy, ProxyConfig
from nimble.gateway.request import read_target
from nimble.gateway.upstreams import PoolConfig, UpstreamPool
from nimble.observability.metrics import Metrics
from nimble.observability.tracing import RequestTracing
from nimble.security.audit import AuditLog
from nimble.security.keys import KeyStore
from nimble.version import __version__

# the endpoints whose paths the gateway passes on to a replica
PROXIED = (
    "chat", "messages", "completions", "embeddings", "ranking", "rerank", "classify",
    "moderations", "tokenize",
)  # fmt: skip


def routing_policy(settings: GatewaySettings) -> RoutingPolicy:
    if settings.routing_policy == "prefix-aware":
        return PrefixAware(
            block_chars=settings.prefix_block_chars,
            blocks_per_replica=settings.prefix_blocks_per_replica,
            imbalance_abs=settings.prefix_imbalance_abs,
            imbalance_rel=settings.prefix_imbalance_rel,
        )
    return LeastLoaded() if settings.routing_policy == "least-loaded" else RoundRobin()


def create_gateway_app(
    settings: GatewaySettings, *, tracing: RequestTracing | None = None
) -> FastAPI:
    """The gateway in front of `settings.upstream` / `settings.upstream_dns`. Its lifespan
    starts the probes of the replicas and stops them. Raises ConfigError (a broken key file)."""
    tracing = tracing or RequestTracing()
    upstream_key = (
        settings.upstream_api_key.get_secret_value() if settings.upstream_api_key else None
    )
    # tool scopes and rails are enforced by the replicas, on the key a request carries
    no_policy = (
        "the replicas see the gateway's --upstream-api-key, not this key (give the scope to "
        "the replicas' keys, and run the gateway without --upstream-api-key so that each "
        "request carries its client's key)"
        if upstream_key
        else None
    )
    keys = (
        KeyStore(settings.api_keys_file, ALL_ENDPOINTS, no_policy=no_policy)
        if settings.api_keys_file
        else None
    )
    audit = AuditLog(settings.audit_log, fsync=settings.audit_fsync) if settings.audit_log else None
    verify: bool | str = str(settings.upstream_ca_file) if settings.upstream_ca_file else True
    policy = routing_policy(settings)
    pool = UpstreamPool(
        PoolConfig(
            urls=settings.upstream,
            dns=settings.upstream_dns,
            headers=(("authorization", f"Bearer {upstream_key}"),) if upstream_key else (),
            probe_interval=settings.probe_interval,
            dns_interval=settings.dns_interval,
            verify=verify,
        ),
        on_removed=policy.forget,
    )
    metrics = Metrics()
    proxy = Proxy(
        pool,
        policy,
        GatewayMetrics(metrics, lambda: list(pool.upstreams.values())),
        ProxyConfig(
            retries=settings.retries,
            upstream_key=upstream_key,
            timeout=settings.upstream_timeout,
            verify=verify,
        ),
    )

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await pool.start()
        await proxy.start()
        try:
            yield
        finally:
            await pool.stop()
            await proxy.stop()
            if audit is not None:
                audit.close()
            tracing.shutdown()

    app = FastAPI(
        title="nimble gateway",
        version=__version__,
        lifespan=lifespan,
        docs_url=None,
        redoc_url=None,
        openapi_url=None,
        telemetry={"tracing": False, "metrics": False, "logs": False},
    )
    app.state.pool, app.state.proxy, app.state.metrics, app.state.keys = pool, proxy, metrics, keys
    install_error_handlers(app)

    async def forward(request: Request) -> Response:
        target = read_target(request.scope["path"], await request.body())
        key = request.scope.get("state", {}).get("api_key")
        if key is not None and target.model is not None:
            key.require_model(target.model)
        # watched until the answer begins (a whole answer's first byte is its end); from
        # there the Relay watches: either way a client that leaves stops the replica's work
        return await until_disconnect(request, proxy.forward(request, target))

    # plain Starlette routes: no FastAPI dependency solving or validation on the path every
    # proxied request takes (the replica validates); first in the router, which tries routes
    # in order
    for name in PROXIED:
        for path in ENDPOINT_PATHS[name]:
            app.add_route(path, forward, methods=["POST"], include_in_schema=False)
    app.add_route(
        "/v1/responses/{response_id}", forward, methods=["GET", "DELETE"], include_in_schema=False
    )
    _own_routes(app, pool, metrics)

    sinks: list[RecordSink] = [metrics.observe]
    if audit is not None:
        sinks.append(audit.write)
    install_middleware(app, settings, keys, sinks, tracing, anthropic=True)
    return app


def create_gateway_management_app(gateway: FastAPI) -> FastAPI:
    """Health probes and metrics alone, for `--management-port` (no keys, no TLS), sharing
    the gateway's replicas and metrics."""
    app = FastAPI(title="nimble gateway management", version=__version__, openapi_url=None)
    install_error_handlers(app)
    _probe_routes(app, gateway.state.pool, gateway.state.metrics)
    return app


def _own_routes(app: FastAPI, pool: UpstreamPool, metrics: Metrics) -> None:
    created = int(time.time())

    def model_object(model: str) -> dict[str, Any]:
        """The replica's own entry (with `parent`, `ranking`), or the plain one."""
        plain = {"id": model, "object": "model", "created": created, "owned_by": "nimble"}
        return pool.card(model) or plain

    _probe_routes(app, pool, metrics)

    @app.get("/v1/models", include_in_schema=False)
    async def models() -> dict[str, Any]:
        await pool.refresh_models()  # adapters come and go on the replicas
        return {"object": "list", "data": [model_object(m) for m in pool.models()]}

    @app.get("/v1/models/{model_id:path}", include_in_schema=False)
    async def model(model_id: str) -> dict[str, Any]:
        if model_id not in pool.models():
            await pool.refresh_models()
        if model_id not in pool.models():
            raise ModelNotFound(f"The model `{model_id}` does not exist.", param="model")
        return model_object(model_id)

    @app.get("/v1/version", include_in_schema=False)
    async def version() -> dict[str, Any]:
        return {"object": "version", "version": __version__, "service": "gateway"}


def _probe_routes(app: FastAPI, pool: UpstreamPool, metrics: Metrics) -> None:
    @app.get("/v1/health/live", include_in_schema=False)
    async def live() -> Response:
        return _health(200, "live", "Gateway is live.")

    @app.get("/v1/health/ready", include_in_schema=False)
    async def ready() -> Response:
        if pool.ready():
            return _health(
                200, "ready", f"{len(pool.ready())} of {len(pool.upstreams)} replicas ready."
            )
        return _health(503, "no_replica", "Gateway is not ready: no replica is ready.")

    @app.get("/health", include_in_schema=False)
    async def health() -> Response:
        return Response(status_code=200 if pool.ready() else 503)

    async def exposition() -> Response:
        return Response(metrics.exposition(), media_type=CONTENT_TYPE_LATEST)

    for path in ENDPOINT_PATHS["metrics"]:
        app.add_api_route(path, exposition, methods=["GET"], include_in_schema=False)


def _health(status: int, state: str, message: str) -> Response:
    body = {"object": "health.response", "status": state, "message": message}
    return Response(orjson.dumps(body), status, media_type="application/json")
