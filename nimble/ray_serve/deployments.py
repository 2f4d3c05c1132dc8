"""nimble as a Ray Serve application: an HTTP ingress in front of N autoscaled replicas.

```
client ─HTTP─▶ Ray proxy ─▶ NimbleIngress (reads the body) ─handle─▶ NimbleServer (N)
                                            PrefixAwareRouter ┘   (nimble.create_app each)
```

`NimbleServer` builds nimble's whole app through the library entry point
(`nimble.create_app(settings)`: routes, auth, metrics, errors, audit) and loads the models
before Ray counts the replica as started, so a replica that autoscaling adds gets traffic only
once it is warm. `NimbleIngress` is a pass-through ASGI app: it reads the request body and
calls `NimbleServer.forward(scope, body)`, which runs the request through nimble's app and
streams the ASGI messages back. It exists so that the router sees the body (Ray's proxy does
not give routers the HTTP body); it parses nothing and answers nothing itself.
"""

from __future__ import annotations

import asyncio
import logging
import warnings
from collections.abc import AsyncIterator, Mapping
from contextlib import AbstractAsyncContextManager, suppress
from dataclasses import asdict, dataclass, fields
from typing import Any, cast

from ray import serve
from ray.serve.config import AutoscalingConfig, RequestRouterConfig
from ray.serve.handle import DeploymentHandle, DeploymentResponseGenerator
from starlette.types import Message, Receive, Scope, Send

from nimble.config import Settings
from nimble.models.select import DEFAULT_SLOTS
from nimble.runtime.runtime import ServiceState

log = logging.getLogger("nimble.ray_serve")

# the parts of an ASGI HTTP scope that travel to the replica (no extensions, no state)
_SCOPE_KEYS = (
    "type",
    "asgi",
    "http_version",
    "method",
    "scheme",
    "path",
    "raw_path",
    "root_path",
    "query_string",
    "headers",
    "client",
    "server",
)
REPLICA_HEADER = b"x-nimble-replica"


@dataclass(frozen=True)
class ServeOptions:
    """How Ray runs nimble: replicas, autoscaling, routing. Every field is a `serve run`
    argument and a `python -m nimble.ray_serve` flag (dashes for underscores)."""

    min_replicas: int = 1
    max_replicas: int = 2
    initial_replicas: int | None = None
    # ongoing requests per replica that autoscaling aims at (Ray's unit: requests sent to a
    # replica and not finished, running or queued in nimble)
    target_ongoing_requests: float = 2.0
    upscale_delay_s: float = 5.0
    downscale_delay_s: float = 30.0
    metrics_interval_s: float = 1.0
    look_back_period_s: float = 5.0
    # requests Ray lets into one replica at once; unset: nimble's max_running + max_waiting,
    # so that nimble's own admission (429 with Retry-After) decides beyond that
    max_ongoing_requests: int | None = None
    replica_cpus: float = 1.0
    replica_gpus: float = 0.0
    ingress_replicas: int = 1
    routing_policy: str = "prefix-aware"  # nimble.gateway.policy.POLICIES; "ray": Ray's own
    routing_stats_period_s: float = 1.0
    graceful_shutdown_timeout_s: float = 30.0

    @classmethod
    def split(cls, args: Mapping[str, Any]) -> tuple[ServeOptions, dict[str, Any]]:
        """(these options, the rest) from a flat mapping such as `serve run` arguments."""
        names = {f.name for f in fields(cls)}
        mine = {k.replace("-", "_"): v for k, v in args.items() if k.replace("-", "_") in names}
        rest = {k: v for k, v in args.items() if k.replace("-", "_") not in names}
        typed: dict[str, Any] = {}
        for f in fields(cls):
            if f.name in mine:
                typed[f.name] = _coerce(mine[f.name], str(f.type))
        return cls(**typed), rest


def _coerce(value: Any, annotation: str) -> Any:
    if not isinstance(value, str):
        return value
    if value.lower() in ("", "none", "null") and "None" in annotation:
        return None
    if annotation.startswith("int"):
        return int(value)
    if annotation.startswith("float"):
        return float(value)
    return value


class NimbleServer:
    """One replica: nimble's app (`nimble.create_app`) with its models loaded."""

    async def __init__(self, settings: Settings) -> None:  # type: ignore[misc]  # Ray awaits it
        import nimble

        self._app = nimble.create_app(settings, load_on_startup=False)
        self._runtime = self._app.state.runtime
        lifespan = self._app.router.lifespan_context(self._app)
        await lifespan.__aenter__()  # the app's lifespan stops the runtime on exit
        self._lifespan: AbstractAsyncContextManager[Any] | None = lifespan
        try:
            await self._runtime.start()  # raises: Ray reports the replica as failed
        except BaseException:
            await self.__del__()
            raise
        self._replica = _replica_id().encode()

    async def forward(self, scope: dict[str, Any], body: bytes) -> AsyncIterator[Message]:
        """Run one HTTP request through nimble's app; yield the ASGI messages it sends."""
        queue: asyncio.Queue[Message | None] = asyncio.Queue()
        gone = asyncio.Event()
        delivered = False

        async def receive() -> Message:
            nonlocal delivered
            if not delivered:
                delivered = True
                return {"type": "http.request", "body": body, "more_body": False}
            await gone.wait()  # the caller went away (or the response is complete)
            return {"type": "http.disconnect"}

        async def send(message: Message) -> None:  # the app's responses, to the caller
            if message["type"] == "http.response.start":
                headers = [*message.get("headers", []), (REPLICA_HEADER, self._replica)]
                message = {**message, "headers": headers}
            await queue.put(message)

        async def run() -> None:
            try:
                await self._app(dict(scope), receive, send)
            finally:
                await queue.put(None)

        task = asyncio.create_task(run())
        try:
            while (message := await queue.get()) is not None:
                yield message
            await task  # re-raises what the app did not turn into a response
        finally:
            gone.set()  # a client that left: nimble sees a disconnect and aborts the work
            if not task.done():
                task.cancel()
                with suppress(asyncio.CancelledError):
                    await task

    def record_routing_stats(self) -> dict[str, Any]:
        """What the router reads (`RunningReplica.routing_stats`), summed over the models."""
        gauges = self._runtime.gauges()
        caches = [g.cache_usage for g in gauges if g.cache_usage is not None]
        return {
            "running": sum(g.running for g in gauges),
            "waiting": sum(g.waiting for g in gauges),
            "cache_usage": max(caches) if caches else None,
        }

    async def check_health(self) -> None:
        """Ray restarts a replica whose engine failed for good or cannot serve."""
        if self._runtime.state is ServiceState.FAILED:
            raise RuntimeError(f"nimble runtime failed: {self._runtime.failure}")
        unhealthy = await self._runtime.unhealthy_models()
        if unhealthy:
            raise RuntimeError(f"unhealthy models: {', '.join(unhealthy)}")

    async def __del__(self) -> None:
        lifespan = getattr(self, "_lifespan", None)
        if lifespan is not None:
            self._lifespan = None
            await lifespan.__aexit__(None, None, None)


def _replica_id() -> str:
    try:
        return str(serve.get_replica_context().replica_id.unique_id)
    except serve.exceptions.RayServeException:  # Ray's local testing mode has no replicas
        return "local"


class NimbleIngress:
    """The HTTP entry: reads the body (up to nimble's limit plus one byte, so nimble can
    answer 413 itself) and streams `NimbleServer.forward` back to the client."""

    def __init__(self, server: DeploymentHandle[Any], max_body_bytes: int):
        self._server = server.options(stream=True, method_name="forward")
        self._max_body = max_body_bytes

    def __serve_build_asgi_app__(self) -> _Forward:
        return _Forward(self)


class _Forward:
    """The ingress's ASGI app (an object with an async `__call__`: uvicorn, which runs its
    lifespan inside Ray, tells ASGI 3 apps from ASGI 2 ones that way)."""

    def __init__(self, ingress: NimbleIngress):
        self._server = ingress._server
        self._max_body = ingress._max_body

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            while (message := await receive())["type"] != "lifespan.shutdown":
                if message["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
            await send({"type": "lifespan.shutdown.complete"})
            return
        if scope["type"] != "http":
            return
        body = await self._read_body(scope, receive)
        forwarded = {key: scope[key] for key in _SCOPE_KEYS if key in scope}
        forwarded["headers"] = [(bytes(k), bytes(v)) for k, v in scope.get("headers", [])]
        response = cast(DeploymentResponseGenerator[Message], self._server.remote(forwarded, body))
        async for message in response:
            await send(message)

    async def _read_body(self, scope: Scope, receive: Receive) -> bytes:
        declared = dict(scope.get("headers", [])).get(b"content-length", b"")
        if declared.isdigit() and int(declared) > self._max_body:
            return b""  # nimble answers 413 from the header alone
        chunks: list[bytes] = []
        size = 0
        while size <= self._max_body:
            message = await receive()
            if message["type"] != "http.request":
                break
            chunks.append(message.get("body", b""))
            size += len(chunks[-1])
            if not message.get("more_body", False):
                break
        return b"".join(chunks)


def build_application(settings: Settings, options: ServeOptions | None = None) -> Any:
    """The Ray Serve application (`serve.run(...)` it): the ingress bound to the autoscaled
    nimble replicas."""
    options = options or ServeOptions()
    if options.min_replicas > options.max_replicas:
        raise ValueError(
            f"min_replicas ({options.min_replicas}) > max_replicas ({options.max_replicas})"
        )
    router = None
    if options.routing_policy != "ray":
        router_fields: dict[str, Any] = {
            "request_router_class": "nimble.ray_serve.router:PrefixAwareRouter",
            "request_router_kwargs": {"policy": options.routing_policy},
            "request_routing_stats_period_s": options.routing_stats_period_s,
        }
        router = RequestRouterConfig(**router_fields)
    with warnings.catch_warnings():
        # Ray >= 2.5x marks metrics_interval_s as deprecated (to become RAY_SERVE_*_PUSH_
        # INTERVAL_S variables) but still reads it; its default (10 s) makes scaling slow
        warnings.simplefilter("ignore", DeprecationWarning)
        autoscaling = AutoscalingConfig(
            min_replicas=options.min_replicas,
            max_replicas=options.max_replicas,
            initial_replicas=options.initial_replicas,
            target_ongoing_requests=options.target_ongoing_requests,
            upscale_delay_s=options.upscale_delay_s,
            downscale_delay_s=options.downscale_delay_s,
            metrics_interval_s=options.metrics_interval_s,
            look_back_period_s=options.look_back_period_s,
        )
    server_options: dict[str, Any] = {
        "autoscaling_config": autoscaling,
        "max_ongoing_requests": options.max_ongoing_requests
        or (settings.max_running or settings.max_batch_size or DEFAULT_SLOTS)
        + settings.max_waiting,
        "ray_actor_options": {"num_cpus": options.replica_cpus}
        | ({"num_gpus": options.replica_gpus} if options.replica_gpus else {}),
        "graceful_shutdown_timeout_s": options.graceful_shutdown_timeout_s,
    }
    if router is not None:
        server_options["request_router_config"] = router
    server = serve.deployment(name="NimbleServer", **server_options)(NimbleServer)
    ingress = serve.deployment(
        name="NimbleIngress",
        num_replicas=options.ingress_replicas,
        # the ingress holds every streaming response open: let it hold many
        max_ongoing_requests=4 * server_options["max_ongoing_requests"] * options.max_replicas,
        ray_actor_options={"num_cpus": 0},
    )(serve.ingress()(NimbleIngress))
    return ingress.bind(server.bind(settings), settings.max_body_bytes)


def build_app(args: dict[str, str]) -> Any:
    """The app builder for `serve run nimble.ray_serve:build_app key=value ...`: the
    `ServeOptions` fields, and any nimble setting (`model=fake`, `max_running=8`: the same
    names as `nimble serve`'s flags, snake_case; NIMBLE_* variables apply too)."""
    options, rest = ServeOptions.split(args)
    return build_application(Settings(**rest), options)


def describe(options: ServeOptions) -> dict[str, Any]:
    return asdict(options)
