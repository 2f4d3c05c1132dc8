"""ssl_options (files checked at start, TLS 1.2 floor, client certificates under MTLS) and the
management server (its own socket, no signal handlers, readiness of the shared runtime)."""

from __future__ import annotations

import asyncio
import re
import signal
import socket
import ssl
from pathlib import Path
from typing import Any

import httpx
import pytest
import trustme
import uvicorn

from nimble.api.app import create_management_app
from nimble.cli.transport import ManagementServer, listen_socket, ssl_options
from nimble.config import Settings
from nimble.errors import ConfigError
from nimble.observability.metrics import Metrics
from nimble.runtime.assemble import build_runtime


@pytest.fixture
def pems(tmp_path: Path) -> dict[str, Path]:
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1")
    files = {name: tmp_path / f"{name}.pem" for name in ("cert", "key", "ca")}
    files["cert"].write_bytes(b"".join(blob.bytes() for blob in cert.cert_chain_pems))
    cert.private_key_pem.write_to_path(str(files["key"]))
    ca.cert_pem.write_to_path(str(files["ca"]))
    return files


def settings(mode: str, pems: dict[str, Path], **overrides: Any) -> Settings:
    files = {"ssl_cert_file": pems["cert"], "ssl_key_file": pems["key"], "ssl_ca_file": pems["ca"]}
    return Settings(model=("fake",), ssl_mode=mode, **{**files, **overrides})


def uvicorn_context(options: dict[str, Any]) -> ssl.SSLContext:
    """The context uvicorn itself builds from the options."""

    async def app(scope: Any, receive: Any, send: Any) -> None:
        raise AssertionError("not called")

    config = uvicorn.Config(app, log_config=None, **options)
    config.load()
    assert config.ssl is not None
    return config.ssl


def test_disabled_means_plain_http(pems: dict[str, Path]) -> None:
    assert ssl_options(settings("DISABLED", pems)) == {}
    # files named but unused are not checked
    missing = pems["cert"].with_name("gone.pem")
    assert ssl_options(settings("DISABLED", pems, ssl_cert_file=missing)) == {}


def test_tls(pems: dict[str, Path]) -> None:
    options = ssl_options(settings("TLS", pems))
    assert options == {"ssl_certfile": str(pems["cert"]), "ssl_keyfile": str(pems["key"])}
    context = uvicorn_context(options)
    assert context.minimum_version >= ssl.TLSVersion.TLSv1_2
    assert context.verify_mode == ssl.CERT_NONE  # TLS alone asks no client certificate
    names = [cipher["name"] for cipher in context.get_ciphers()]
    assert names and not any("NULL" in name or "RC4" in name for name in names)


def test_mtls_requires_client_certificates(pems: dict[str, Path]) -> None:
    options = ssl_options(settings("MTLS", pems))
    assert options["ssl_ca_certs"] == str(pems["ca"])
    assert options["ssl_cert_reqs"] == ssl.CERT_REQUIRED
    context = uvicorn_context(options)
    assert context.verify_mode == ssl.CERT_REQUIRED
    assert context.minimum_version >= ssl.TLSVersion.TLSv1_2


@pytest.mark.parametrize(
    ("mode", "missing", "flag"),
    [
        ("TLS", "cert", "--ssl-cert-file"),
        ("TLS", "key", "--ssl-key-file"),
        ("MTLS", "ca", "--ssl-ca-file"),
    ],
)
def test_a_missing_file_is_one_clear_error(
    pems: dict[str, Path], mode: str, missing: str, flag: str
) -> None:
    pems[missing].unlink()
    with pytest.raises(
        ConfigError, match=f"^{re.escape(f'{flag} {pems[missing]}: no such file')}$"
    ):
        ssl_options(settings(mode, pems))


def test_unusable_files(pems: dict[str, Path], tmp_path: Path) -> None:
    other = tmp_path / "other.key"
    trustme.CA().issue_cert("127.0.0.1").private_key_pem.write_to_path(str(other))
    with pytest.raises(
        ConfigError, match=re.escape(f"cannot use certificate {pems['cert']} with key {other}:")
    ):
        ssl_options(settings("TLS", pems, ssl_key_file=other))
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("not a certificate\n")
    with pytest.raises(ConfigError, match=re.escape(f"cannot use certificate {garbage} with key")):
        ssl_options(settings("TLS", pems, ssl_cert_file=garbage))
    with pytest.raises(ConfigError, match=re.escape(f"cannot read CA bundle {garbage}:")):
        ssl_options(settings("MTLS", pems, ssl_ca_file=garbage))


def test_listen_socket_refuses_a_taken_port() -> None:
    with listen_socket("127.0.0.1", 0) as taken:
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(OSError):
            listen_socket("127.0.0.1", port)


async def test_management_server_shares_readiness_and_leaves_signals_alone() -> None:
    runtime, _ = build_runtime(Settings(model=("fake",)))
    sock = listen_socket("127.0.0.1", 0)
    port = sock.getsockname()[1]
    config = uvicorn.Config(
        create_management_app(runtime, Metrics(runtime)), log_config=None, lifespan="off"
    )
    server = ManagementServer(config, sock)
    handlers = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    task = asyncio.create_task(server.serve())
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as client:
            while not server.started:  # poll: startup runs on this loop
                assert not task.done(), task
                await asyncio.sleep(0.01)
            assert {sig: signal.getsignal(sig) for sig in handlers} == handlers
            assert (await client.get("/v1/health/ready")).status_code == 503  # not loaded
            assert (await client.get("/v1/health/live")).status_code == 200
            await runtime.start()
            assert (await client.get("/v1/health/ready")).status_code == 200
            assert (await client.get("/v1/metrics")).status_code == 200
            runtime.begin_drain()
            assert (await client.get("/v1/health/ready")).status_code == 503
    finally:
        server.should_exit = True
        await task
        await runtime.stop()
    assert {sig: signal.getsignal(sig) for sig in handlers} == handlers
    with socket.socket() as probe:  # its socket is closed with it
        assert probe.connect_ex(("127.0.0.1", port)) != 0
