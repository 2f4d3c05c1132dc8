"""TLS and mutual TLS terminated by `nimble serve` itself (certificates made by the test with
trustme), the management port, and API key reload on SIGHUP. Fake engine: no weights."""

from __future__ import annotations

import os
import select
import signal
import socket
import ssl
import subprocess
import sys
import time
from pathlib import Path

import httpx
import openai
import pytest
import trustme
import yaml

from nimble.security.keys import hash_key
from tests.e2e.conftest import NimbleProcess, free_port, idle_connection, seconds_until_closed

pytestmark = [pytest.mark.e2e]

HELLO = [{"role": "user", "content": "hello"}]


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


def server_files(ca: trustme.CA, tmp_path: Path) -> tuple[Path, Path, Path]:
    """(certificate chain, key, CA bundle) PEM files of a server cert for 127.0.0.1."""
    cert = ca.issue_cert("127.0.0.1", "localhost")
    chain, key, bundle = tmp_path / "server.pem", tmp_path / "server.key", tmp_path / "ca.pem"
    cert.private_key_pem.write_to_path(str(key))
    chain.write_bytes(b"".join(blob.bytes() for blob in cert.cert_chain_pems))
    ca.cert_pem.write_to_path(str(bundle))
    return chain, key, bundle


def client_context(ca: trustme.CA, client_ca: trustme.CA | None = None) -> ssl.SSLContext:
    """Trusts `ca`; presents a client certificate issued by `client_ca` when given."""
    context = ssl.create_default_context()
    ca.configure_trust(context)
    if client_ca is not None:
        client_ca.issue_cert("client@example.com").configure_cert(context)
    return context


def serve_once(*args: str) -> subprocess.CompletedProcess[str]:
    """`nimble serve --model fake ARGS` that is expected to exit at once."""
    return subprocess.run(
        [sys.executable, "-m", "nimble.cli.main", "serve", "--model", "fake", *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def tls_args(chain: Path, key: Path, mode: str = "TLS") -> list[str]:
    return ["--ssl-mode", mode, "--ssl-cert-file", str(chain), "--ssl-key-file", str(key)]


def test_tls(ca: trustme.CA, tmp_path: Path, nimble_process: type[NimbleProcess]) -> None:
    chain, key, _ = server_files(ca, tmp_path)
    trusted = client_context(ca)
    server = nimble_process(
        ["--model", "fake", *tls_args(chain, key)], scheme="https", verify=trusted
    ).wait_ready()
    assert server.base_url.startswith("https://")
    with (
        httpx.Client(verify=trusted) as http,
        openai.OpenAI(
            api_key="unused", base_url=server.base_url + "/v1", http_client=http, max_retries=0
        ) as client,
    ):
        reply = client.chat.completions.create(model="fake-model", messages=HELLO)
    assert reply.choices[0].message.content
    # plain HTTP on the TLS port gets no HTTP answer
    with pytest.raises(httpx.TransportError):
        httpx.get(f"http://127.0.0.1:{server.port}/v1/health/live", timeout=5)
    # nor does a client that does not trust the server's CA
    with pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED"):
        httpx.get(server.base_url + "/v1/health/live", timeout=5)


def test_mutual_tls(ca: trustme.CA, tmp_path: Path, nimble_process: type[NimbleProcess]) -> None:
    chain, key, bundle = server_files(ca, tmp_path)
    with_cert = client_context(ca, client_ca=ca)
    args = ["--model", "fake", *tls_args(chain, key, "MTLS"), "--ssl-ca-file", str(bundle)]
    server = nimble_process(args, scheme="https", verify=with_cert).wait_ready()
    url = server.base_url + "/v1/models"
    assert httpx.get(url, verify=with_cert, timeout=5).json()["data"][0]["id"] == "fake-model"
    # no client certificate, or one from another CA: the server aborts the TLS session and
    # no HTTP response comes back (TLS 1.3 ends the client's side of the handshake before
    # the server checks its certificate, so the client learns it on its first read)
    no_response = (httpx.RemoteProtocolError, httpx.ReadError, httpx.ConnectError)
    for refused in (client_context(ca), client_context(ca, client_ca=trustme.CA())):
        with pytest.raises(no_response):
            httpx.get(url, verify=refused, timeout=5)
    # with TLS 1.2 the refusal is in the handshake itself: the connection never opens
    tls12 = client_context(ca)
    tls12.maximum_version = ssl.TLSVersion.TLSv1_2
    with pytest.raises(httpx.ConnectError):
        httpx.get(url, verify=tls12, timeout=5)
    assert httpx.get(url, verify=with_cert, timeout=5).status_code == 200  # still serving


def test_management_port_answers_without_keys_or_tls(
    ca: trustme.CA, tmp_path: Path, nimble_process: type[NimbleProcess]
) -> None:
    chain, key, _ = server_files(ca, tmp_path)
    keys = tmp_path / "keys.yaml"
    keys.write_text(yaml.safe_dump({"keys": [{"id": "k", "sha256": hash_key("nb-k")}]}))
    management = free_port()
    trusted = client_context(ca)
    args = ["--model", "fake", *tls_args(chain, key), "--api-keys-file", str(keys)]
    args += ["--management-port", str(management)]
    server = nimble_process(args, scheme="https", verify=trusted).wait_ready()
    plain = f"http://127.0.0.1:{management}"
    assert httpx.get(plain + "/v1/health/ready").status_code == 200
    assert httpx.get(plain + "/v1/health/live").status_code == 200
    assert httpx.get(plain + "/health").status_code == 200  # vLLM's, for its routers
    metrics = httpx.get(plain + "/v1/metrics")
    assert metrics.status_code == 200 and "nimble_num_requests_running" in metrics.text
    assert httpx.get(plain + "/metrics").status_code == 200
    # nothing else lives there
    assert httpx.get(plain + "/v1/models").status_code == 404
    # the public port keeps its TLS and keys
    assert httpx.get(server.base_url + "/v1/metrics", verify=trusted).status_code == 401
    assert httpx.get(server.base_url + "/v1/health/ready", verify=trusted).status_code == 200
    authorized = httpx.get(
        server.base_url + "/v1/metrics", verify=trusted, headers={"Authorization": "Bearer nb-k"}
    )
    assert authorized.status_code == 200
    # both ports close with the server
    assert server.terminate() == 0
    with pytest.raises(httpx.ConnectError):
        httpx.get(plain + "/v1/health/live", timeout=5)


def test_management_port_follows_the_drain(
    tmp_path: Path, nimble_process: type[NimbleProcess]
) -> None:
    management = free_port()
    args = ["--model", "fake", "--fake-token-delay", "0.05", "--management-port", str(management)]
    server = nimble_process(args).wait_ready()
    ready = f"http://127.0.0.1:{management}/v1/health/ready"
    assert httpx.get(ready).status_code == 200
    body = {"model": "fake-model", "messages": HELLO, "max_tokens": 60, "stream": True}
    with (
        httpx.Client(base_url=server.base_url, timeout=60) as client,
        client.stream("POST", "/v1/chat/completions", json=body) as stream,
    ):
        lines = stream.iter_lines()
        assert next(line for line in lines if line.startswith("data: "))
        server.proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 30
        while httpx.get(ready).status_code != 503:  # poll: the drain starts on the loop
            assert time.monotonic() < deadline, server.log()
            time.sleep(0.05)
        assert httpx.get(ready.replace("ready", "live")).status_code == 200
        rest = [line for line in lines if line.startswith("data: ")]
    assert rest[-1] == "data: [DONE]"  # the request in flight finished
    assert server.proc.wait(timeout=60) == 0
    with pytest.raises(httpx.ConnectError):
        httpx.get(ready, timeout=5)


def test_an_idle_connection_outlives_the_clients_pool(
    nimble_process: type[NimbleProcess],
) -> None:
    """The openai client (httpx) keeps an idle connection for 5 s and then drops it; a
    server that closes at 5 s too (uvicorn's default) closes some just as the client sends
    its next request on them: that request fails with a connection reset (seen in CI). The
    server keeps an idle connection past the client's 5 s, and reuses it after."""
    expiry = openai._constants.DEFAULT_CONNECTION_LIMITS.keepalive_expiry
    assert expiry is not None
    server = nimble_process(["--model", "fake"]).wait_ready()
    sock = idle_connection(server.base_url)
    readable, _, _ = select.select([sock], [], [], expiry + 1.0)
    assert readable == []  # not closed (nor anything sent)
    sock.sendall(b"GET /v1/health/live HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
    assert sock.recv(4096).startswith(b"HTTP/1.1 200")
    sock.close()


def test_keep_alive_closes_idle_connections_on_both_ports(
    nimble_process: type[NimbleProcess],
) -> None:
    """--keep-alive N: an idle connection is closed by the server after N seconds, on the
    API port and on the management port."""
    management = free_port()
    args = ["--model", "fake", "--keep-alive", "1", "--management-port", str(management)]
    server = nimble_process(args).wait_ready()
    for url in (server.base_url, f"http://127.0.0.1:{management}"):
        assert seconds_until_closed(idle_connection(url)) >= 0.9  # uvicorn's timer, not at once


def test_sighup_reloads_api_keys(tmp_path: Path, nimble_process: type[NimbleProcess]) -> None:
    keys = tmp_path / "keys.yaml"

    def write(key: str) -> None:
        keys.write_text(yaml.safe_dump({"keys": [{"id": key, "sha256": hash_key(key)}]}))

    write("nb-key-a")
    server = nimble_process(["--model", "fake", "--api-keys-file", str(keys)]).wait_ready()

    def status(key: str) -> int:
        headers = {"Authorization": f"Bearer {key}"}
        return httpx.get(server.base_url + "/v1/models", headers=headers).status_code

    assert (status("nb-key-a"), status("nb-key-b")) == (200, 401)
    # rewrite in place, same size and mtime: the file-change polling cannot see it, so only
    # the signal can make the new key work
    before = keys.stat()
    write("nb-key-b")
    os.utime(keys, ns=(before.st_atime_ns, before.st_mtime_ns))
    after = keys.stat()
    assert (after.st_ino, after.st_size, after.st_mtime_ns) == (
        before.st_ino,
        before.st_size,
        before.st_mtime_ns,
    )
    assert status("nb-key-b") == 401
    server.proc.send_signal(signal.SIGHUP)
    deadline = time.monotonic() + 30
    while status("nb-key-b") != 200:  # poll: the reload happens on the server's loop
        assert time.monotonic() < deadline, server.log()
        time.sleep(0.05)
    assert status("nb-key-a") == 401
    assert "SIGHUP: reloading API keys" in server.log()
    assert server.proc.poll() is None  # SIGHUP does not stop the server


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--ssl-mode", "TLS"], "ssl_mode TLS needs --ssl-cert-file and --ssl-key-file"),
        (
            ["--ssl-mode", "TLS", "--ssl-cert-file", "/nonexistent.pem", "--ssl-key-file", "/x"],
            "--ssl-cert-file /nonexistent.pem: no such file",
        ),
        (["--ssl-mode", "MTLS", "--ssl-cert-file", "a", "--ssl-key-file", "b"], "--ssl-ca-file"),
        (["--host", "0.0.0.0"], "refusing to listen on 0.0.0.0 without API keys"),
        (["--port", "8123", "--management-port", "8123"], "--management-port 8123 is also --port"),
    ],
)
def test_unsafe_or_broken_settings_exit_with_one_line(extra: list[str], message: str) -> None:
    done = serve_once(*extra)
    assert done.returncode == 2
    assert message in done.stderr
    assert "Traceback" not in done.stderr and len(done.stderr.strip().splitlines()) == 1


def test_a_key_that_does_not_match_its_certificate(ca: trustme.CA, tmp_path: Path) -> None:
    chain, _, _ = server_files(ca, tmp_path)
    other_key = tmp_path / "other.key"
    ca.issue_cert("127.0.0.1").private_key_pem.write_to_path(str(other_key))

    def tls(key: Path) -> list[str]:
        return tls_args(chain, key)

    done = serve_once(*tls(other_key))
    assert done.returncode == 2
    assert f"cannot use certificate {chain} with key {other_key}" in done.stderr


def test_a_taken_management_port_fails_before_loading() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = serve_once("--port", str(free_port()), "--management-port", str(port))
    assert done.returncode == 3
    assert done.stderr.strip() == (
        f"nimble: cannot listen on 127.0.0.1:{port} (--management-port): Address already in use"
    )
