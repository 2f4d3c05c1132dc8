"""`nimble gateway`: settings → the gateway app (`nimble.gateway.app`) → uvicorn. On SIGTERM
uvicorn stops taking connections and lets in-flight requests finish (up to
`--drain-timeout`), then the process exits 0."""

from __future__ import annotations

import asyncio
import sys
from types import FrameType
from typing import Any

import uvicorn

from nimble.cli.transport import ManagementServer, listen_socket, ssl_options
from nimble.config.gateway import load_gateway_settings
from nimble.errors import ConfigError
from nimble.gateway.app import create_gateway_app, create_gateway_management_app
from nimble.observability.logging import configure_logging
from nimble.observability.tracing import configure_tracing


class GatewayServer(uvicorn.Server):
    """uvicorn with the management server beside it, in the same event loop."""

    management: ManagementServer | None = None

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        # uvicorn's own keeps the signal and raises it again once stopped (the process then
        # dies of SIGTERM); after a graceful stop the gateway exits 0, as `nimble serve` does.
        # A second signal stops at once.
        self.force_exit = self.should_exit
        self.should_exit = True

    async def serve(self, sockets: Any = None) -> None:
        side = asyncio.create_task(self.management.serve()) if self.management else None
        try:
            await super().serve(sockets)
        finally:
            if side is not None and self.management is not None:
                self.management.should_exit = True
                await side


def gateway(values: dict[str, Any]) -> int:
    try:
        settings = load_gateway_settings(**values)
        ssl = ssl_options(settings)
        configure_logging(settings.log_level, settings.jsonl_logging)
        app = create_gateway_app(
            settings,
            tracing=configure_tracing(settings.otel_service_name, settings.otlp_endpoint),
        )
    except ConfigError as exc:
        print(f"nimble: {exc}", file=sys.stderr)
        return 2
    server = GatewayServer(
        uvicorn.Config(
            app,
            host=settings.host,
            port=settings.port,
            log_config=None,
            access_log=False,
            lifespan="on",
            http="httptools",
            timeout_graceful_shutdown=int(settings.drain_timeout) or None,
            timeout_keep_alive=settings.keep_alive,
            **ssl,
        )
    )
    if settings.management_port is not None:
        try:
            sock = listen_socket(settings.host, settings.management_port)
        except OSError as exc:
            print(f"nimble: --management-port: {exc.strerror or exc}", file=sys.stderr)
            return 3
        server.management = ManagementServer(
            uvicorn.Config(
                create_gateway_management_app(app),
                log_config=None,
                access_log=False,
                lifespan="off",
                timeout_keep_alive=settings.keep_alive,
            ),
            sock,
        )
    server.run()
    return 0
