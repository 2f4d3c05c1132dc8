"""`nimble serve`: settings → runtime (`nimble.runtime.assemble`) → app → uvicorn, with a
graceful drain."""

from __future__ import annotations

import asyncio
import logging
import signal
import sys
from types import FrameType
from typing import Any

import uvicorn

from nimble.api.app import create_app, create_management_app
from nimble.cli.transport import ManagementServer, listen_socket, ssl_options
from nimble.config import load_settings
from nimble.errors import ConfigError, ModelLoadError
from nimble.observability.logging import configure_logging
from nimble.observability.tracing import configure_tracing
from nimble.runtime import Runtime
from nimble.runtime.assemble import build_runtime
from nimble.security.keys import KeyStore

log = logging.getLogger("nimble.serve")


class NimbleServer(uvicorn.Server):
    """uvicorn with nimble's shutdown: the first SIGTERM/SIGINT drains (readiness 503, new
    requests 503, in-flight requests finish up to the drain timeout), then the process exits 0.
    A second signal exits at once."""

    def __init__(self, config: uvicorn.Config, runtime: Runtime, drain_timeout: float):
        super().__init__(config)
        self.runtime = runtime
        self.drain_timeout = drain_timeout
        self.exit_code = 0
        self.management: ManagementServer | None = None
        self.keys: KeyStore | None = None
        self._draining = False
        self._loop: asyncio.AbstractEventLoop | None = None

    async def serve(self, sockets: Any = None) -> None:
        self._loop = asyncio.get_running_loop()
        self._loop.add_signal_handler(signal.SIGHUP, self._reload_keys)
        side = asyncio.create_task(self.management.serve()) if self.management else None
        if side is not None:
            side.add_done_callback(self._management_stopped)
        try:
            await super().serve(sockets)
        finally:
            if side is not None and self.management is not None:
                self.management.should_exit = True
                await side

    def _management_stopped(self, task: asyncio.Task[None]) -> None:
        """The management server stops only when told to; if it stops by itself, so does
        nimble (probes that cannot reach it would restart the pod anyway)."""
        if task.cancelled() or (self.management is not None and self.management.should_exit):
            return
        log.error("management server stopped unexpectedly: %r; exiting", task.exception())
        self.exit_code = 1
        self.should_exit = True

    def _reload_keys(self) -> None:
        if self.keys is None:
            log.info("SIGHUP: no API key file to reload")
            return
        log.info("SIGHUP: reloading API keys from %s", self.keys.path)
        self.keys.reload()

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        if self._draining or self._loop is None:
            self.should_exit = True
            self.force_exit = self._draining
            return
        self._draining = True
        self.runtime.begin_drain()
        log.info("signal %s: draining (up to %.0fs)", signal.Signals(sig).name, self.drain_timeout)
        loop = self._loop
        loop.call_soon_threadsafe(lambda: loop.create_task(self._drain()))

    async def _drain(self) -> None:
        idle = await self.runtime.wait_idle(self.drain_timeout)
        if idle:
            log.info("drained: no request in flight; exiting")
        else:
            log.warning(
                "drain timeout: %d requests still in flight; exiting", self.runtime.inflight
            )
        self.should_exit = True

    def fatal(self, message: str) -> None:
        """An engine can no longer serve and will not recover: stop with exit code 1 (the
        orchestrator restarts the service). Callable from any thread."""

        def stop() -> None:
            log.error("engine failed: %s; exiting", message)
            self.exit_code = 1
            self.runtime.begin_drain()
            self.should_exit = True

        if self._loop is not None:
            self._loop.call_soon_threadsafe(stop)

    def on_loaded(self, error: BaseException | None) -> None:
        if error is not None:
            print(f"nimble: cannot serve: {error}", file=sys.stderr, flush=True)
            self.exit_code = 1
            self.should_exit = True
            return
        # engines may install their own signal handlers while loading (llama.cpp does):
        # take SIGTERM and SIGINT back so that the drain above still applies
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, self.handle_exit)
        log.info("ready: %s", ", ".join(self.runtime.models))


def serve(values: dict[str, Any]) -> int:
    try:
        settings = load_settings(**values)
    except ConfigError as exc:
        print(f"nimble: {exc}", file=sys.stderr)
        return 2
    configure_logging(settings.log_level, settings.jsonl_logging)
    server: NimbleServer | None = None

    def on_fatal(message: str) -> None:
        if server is not None:
            server.fatal(message)

    try:
        runtime, deployment = build_runtime(settings, on_fatal)
    except ModelLoadError as exc:
        print(f"nimble: cannot serve: {exc}", file=sys.stderr)
        return 1
    except ConfigError as exc:
        print(f"nimble: {exc}", file=sys.stderr)
        return 2
    try:
        ssl = ssl_options(settings)
    except ConfigError as exc:
        print(f"nimble: {exc}", file=sys.stderr)
        return 2
    config = uvicorn.Config(
        "nimble:placeholder",  # replaced below; uvicorn needs an app reference at init
        host=settings.host,
        port=settings.port,
        log_config=None,
        access_log=False,
        lifespan="on",
        http="httptools",  # C parser: less Python per request than h11 (a dependency)
        timeout_graceful_shutdown=1,
        timeout_keep_alive=settings.keep_alive,  # longer than clients keep theirs (the setting)
        **ssl,
    )
    server = NimbleServer(config, runtime, settings.drain_timeout)
    try:
        app = create_app(
            settings,
            runtime=runtime,
            deployment=deployment,
            on_loaded=server.on_loaded,
            tracing=configure_tracing(settings.otel_service_name, settings.otlp_endpoint),
        )
    except ConfigError as exc:
        print(f"nimble: {exc}", file=sys.stderr)
        return 2
    config.app = app
    server.keys = app.state.keys
    if settings.management_port is not None:
        if settings.management_port == settings.port != 0:
            print(f"nimble: --management-port {settings.port} is also --port", file=sys.stderr)
            return 2
        try:
            sock = listen_socket(settings.host, settings.management_port)
        except OSError as exc:
            where = f"{settings.host}:{settings.management_port}"
            print(
                f"nimble: cannot listen on {where} (--management-port): {exc.strerror or exc}",
                file=sys.stderr,
            )
            return 3  # what uvicorn answers when the main port is taken
        server.management = ManagementServer(
            uvicorn.Config(
                create_management_app(runtime, app.state.metrics),
                log_config=None,
                access_log=False,
                lifespan="off",
                timeout_keep_alive=settings.keep_alive,
            ),
            sock,
        )
    server.run()
    return server.exit_code
