"""TLS and mutual TLS for uvicorn, and the management server beside the main one."""

from __future__ import annotations

import contextlib
import ssl
from collections.abc import Iterator
from typing import Any

import uvicorn

from nimble.config import Settings
from nimble.errors import ConfigError


def ssl_options(settings: Settings) -> dict[str, Any]:
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


class ManagementServer(uvicorn.Server):
    """The plain-HTTP server of health probes and metrics on `--management-port`. It runs in
    the main server's event loop and leaves the signals to it (the main server stops it)."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield
