"""TLS and mutual TLS for uvicorn, and the management server beside the main one."""

from __future__ import annotations

import contextlib
import logging
import socket
import ssl
from collections.abc import Iterator
from typing import Any

import uvicorn

from nimble.config.service import ServiceSettings
from nimble.errors import ConfigError

log = logging.getLogger("nimble.serve")


def ssl_options(settings: ServiceSettings) -> dict[str, Any]:
    """uvicorn's ssl_* options for `settings.ssl_mode`, checked now: a missing file, a key
    that does not match its certificate or a bad CA bundle is one clear ConfigError at
    start, not a traceback when the first client connects.

    uvicorn builds an `SSLContext(PROTOCOL_TLS_SERVER)`: TLS 1.2 or newer, OpenSSL's
    default ciphers. MTLS adds `CERT_REQUIRED`: a client without a certificate signed by
    the CA bundle fails the handshake and never reaches HTTP."""
    if settings.ssl_mode == "DISABLED":
        return {}
    cert, key = settings.ssl_cert_file, settings.ssl_key_file
    assert cert is not None and key is not None  # the settings validator holds this
    files = {"--ssl-cert-file": cert, "--ssl-key-file": key}
    if settings.ssl_mode == "MTLS":
        assert settings.ssl_ca_file is not None
        files["--ssl-ca-file"] = settings.ssl_ca_file
    for flag, path in files.items():
        if not path.is_file():
            raise ConfigError(f"{flag} {path}: no such file")
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    try:
        context.load_cert_chain(cert, key)
    except (ssl.SSLError, OSError) as exc:
        raise ConfigError(
            f"cannot use certificate {cert} with key {key}: {exc.strerror or exc}"
        ) from exc
    options: dict[str, Any] = {"ssl_certfile": str(cert), "ssl_keyfile": str(key)}
    if settings.ssl_mode == "MTLS":
        ca = settings.ssl_ca_file
        assert ca is not None
        try:
            context.load_verify_locations(cafile=ca)
        except (ssl.SSLError, OSError) as exc:
            raise ConfigError(f"cannot read CA bundle {ca}: {exc.strerror or exc}") from exc
        options.update(ssl_ca_certs=str(ca), ssl_cert_reqs=ssl.CERT_REQUIRED)
    return options


def listen_socket(host: str, port: int) -> socket.socket:
    """A TCP socket bound to host:port the way uvicorn binds its own (IPv6 when the host has
    a colon, SO_REUSEADDR). Raises OSError when the address is taken or not local."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
    except OSError:
        sock.close()
        raise
    return sock


class ManagementServer(uvicorn.Server):
    """The plain-HTTP server of health probes and metrics on `--management-port`. Its socket
    is bound before the models load (a taken port fails at once, not after a long load). It
    runs in the main server's event loop and leaves the signals to it: the main server
    starts it, and stops it when it stops itself."""

    def __init__(self, config: uvicorn.Config, sock: socket.socket):
        super().__init__(config)
        self.sock = sock

    async def serve(self, sockets: list[socket.socket] | None = None) -> None:
        host, port = self.sock.getsockname()[:2]
        where = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        log.info("management port: health probes and metrics on http://%s", where)
        await super().serve(sockets or [self.sock])

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield
