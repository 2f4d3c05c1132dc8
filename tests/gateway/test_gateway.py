"""`nimble gateway` in front of real `nimble serve` replicas (fake models: no weights, tokens at
a set pace), all of them real processes on loopback, driven with the official `openai`
client and plain HTTP."""

from __future__ import annotations

import json
import re
import socket
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
import yaml

from nimble.security.keys import hash_key
from tests.e2e.conftest import NimbleProcess, free_port, idle_connection, seconds_until_closed

pytestmark = pytest.mark.e2e

SYSTEM = "You answer questions about the bank's accounts. " * 25  # ~1,200 characters
FAST = ["--probe-interval", "0.1"]


def gateway_of(
    factory: type[NimbleProcess], *upstreams: NimbleProcess, args: tuple[str, ...] = ()
) -> NimbleProcess:
    urls = [a for u in upstreams for a in ("--upstream", u.base_url)]
    return factory([*urls, *FAST, *args], command="gateway").wait_ready()  # type: ignore[call-arg]


def metric(process: NimbleProcess, name: str, key: str | None = None, **labels: str) -> float:
    """One sample of the process's metrics (0 when absent)."""
    headers = {"authorization": f"Bearer {key}"} if key else {}
    answer = httpx.get(process.base_url + "/metrics", headers=headers, timeout=5)
    assert answer.status_code == 200
    text = answer.text
    for line in text.splitlines():
        if not line.startswith(name + "{") and not line.startswith(name + " "):
            continue
        found = dict(re.findall(r'(\w+)="([^"]*)"', line.partition(" ")[0]))
        if all(found.get(k) == v for k, v in labels.items()):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def poll(condition: Any, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition never held"
        time.sleep(0.05)  # polling interval


@pytest.fixture(scope="module")
def pair(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[NimbleProcess, ...]]:
    """Two replicas (alpha + shared, beta + shared) and a gateway in front of both."""
    logs = tmp_path_factory.mktemp("gateway")
    one = NimbleProcess(
        ["--model", "fake:alpha", "--model", "fake:shared", "--jsonl-logging"], logs / "a.log"
    )
    two = NimbleProcess(["--model", "fake:beta", "--model", "fake:shared"], logs / "b.log")
    started = [one, two]
    try:
        one.wait_ready(), two.wait_ready()
        args = ["--upstream", one.base_url, "--upstream", two.base_url, *FAST]
        gateway = NimbleProcess(args, logs / "gateway.log", command="gateway")
        started.append(gateway)
        yield one, two, gateway.wait_ready()
    finally:
        for process in started:
            process.terminate()


def test_one_endpoint_for_every_model_of_every_replica(pair: tuple[NimbleProcess, ...]) -> None:
    one, two, gateway = pair
    client = gateway.client()
    assert [m.id for m in client.models.list()] == ["alpha", "beta", "shared"]
    assert client.models.retrieve("beta").id == "beta"
    # each entry is a replica's own (`ranking` included), not a thinner one of the gateway's
    entries = [m for r in (one, two) for m in httpx.get(r.base_url + "/v1/models").json()["data"]]
    assert any("ranking" in entry for entry in entries)
    for listed in httpx.get(gateway.base_url + "/v1/models").json()["data"]:
        assert listed in entries
    for model, replica in (("alpha", one), ("beta", two)):
        before = metric(
            gateway, "nimble_gateway_upstream_requests_total", upstream=replica.base_url
        )
        answer = client.chat.completions.create(
            model=model, messages=[{"role": "user", "content": "hi"}], max_tokens=3
        )
        assert answer.model == model and answer.choices[0].message.content
        after = metric(gateway, "nimble_gateway_upstream_requests_total", upstream=replica.base_url)
        assert after == before + 1
    vectors = client.embeddings.create(model="shared", input=["a", "b"])
    assert len(vectors.data) == 2 and vectors.usage.prompt_tokens > 0


def test_streams_pass_through_with_usage_only_when_asked(pair: tuple[NimbleProcess, ...]) -> None:
    gateway = pair[2]
    client = gateway.client()
    messages = [{"role": "user", "content": "tell me"}]
    chunks = list(
        client.chat.completions.create(model="shared", messages=messages, max_tokens=5, stream=True)
    )
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert len(text.split()) == 5
    assert all(c.usage is None and c.choices for c in chunks)  # the gateway asked, and dropped it
    asked = list(
        client.chat.completions.create(
            model="shared",
            messages=messages,
            max_tokens=5,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    assert asked[-1].choices == [] and asked[-1].usage is not None
    assert asked[-1].usage.completion_tokens == 5
    # the gateway read the usage of both on the way through
    assert metric(gateway, "nimble_generation_tokens_total", model_name="shared") >= 10


def test_errors_are_the_replicas_own(pair: tuple[NimbleProcess, ...]) -> None:
    one, _, gateway = pair
    bad = {"model": "alpha", "messages": [], "max_tokens": 3}
    through = httpx.post(gateway.base_url + "/v1/chat/completions", json=bad, timeout=10)
    direct = httpx.post(one.base_url + "/v1/chat/completions", json=bad, timeout=10)
    assert through.status_code == direct.status_code == 400
    assert through.json() == direct.json()
    unknown = httpx.post(
        gateway.base_url + "/v1/chat/completions", json={**bad, "model": "nope"}, timeout=10
    )
    assert unknown.status_code == 404
    error = unknown.json()["error"]
    assert (error["param"], error["code"]) == ("model", "model_not_found")
    assert "alpha" in error["message"]  # what is available
    garbled = httpx.post(
        gateway.base_url + "/v1/chat/completions",
        content=b"{not json",
        headers={"content-type": "application/json"},
        timeout=10,
    )
    assert garbled.status_code == 400 and garbled.json()["error"]["type"] == "invalid_request_error"


def test_a_shared_prefix_stays_on_one_replica(pair: tuple[NimbleProcess, ...]) -> None:
    one, two, gateway = pair
    counts = {
        u.base_url: metric(
            gateway, "nimble_gateway_upstream_requests_total", upstream=u.base_url, status="200"
        )
        for u in (one, two)
    }
    hits = metric(gateway, "nimble_gateway_routing_decisions_total", reason="prefix-hit")
    client = gateway.client()
    for question in range(6):
        client.chat.completions.create(
            model="shared",
            messages=[
                {"role": "system", "content": SYSTEM},
                {"role": "user", "content": f"question {question}"},
            ],
            max_tokens=2,
        )
    grew = [
        metric(gateway, "nimble_gateway_upstream_requests_total", upstream=u.base_url, status="200")
        - counts[u.base_url]
        for u in (one, two)
    ]
    assert sorted(grew) == [0, 6]
    assert (
        metric(gateway, "nimble_gateway_routing_decisions_total", reason="prefix-hit") == hits + 5
    )


def test_request_id_and_trace_reach_the_replica(pair: tuple[NimbleProcess, ...]) -> None:
    one, _, gateway = pair
    trace = "4bf92f3577b34da6a3ce929d0e0e4736"
    answer = httpx.post(
        gateway.base_url + "/v1/chat/completions",
        json={"model": "alpha", "messages": [{"role": "user", "content": "x"}], "max_tokens": 1},
        headers={
            "x-request-id": "through-the-gateway-1",
            "traceparent": f"00-{trace}-00f067aa0ba902b7-01",
        },
        timeout=10,
    )
    assert answer.status_code == 200
    assert answer.headers["x-request-id"] == "through-the-gateway-1"

    def seen() -> list[dict[str, Any]]:
        # the replica writes its access line after the last byte is sent: wait for it
        # whole lines only: the one being written may be cut short (a JSONDecodeError, once)
        complete = one.log().split("\n")[:-1]
        lines = [json.loads(line) for line in complete if line.startswith("{")]
        return [line for line in lines if line.get("request_id") == "through-the-gateway-1"]

    poll(seen)
    assert seen()[-1].get("trace_id") == trace


def write_keys(path: Path, keys: dict[str, dict[str, Any]]) -> Path:
    entries = [{**entry, "sha256": hash_key(key)} for key, entry in keys.items()]
    path.write_text(yaml.safe_dump({"keys": entries}))
    return path


def test_keys_and_limits_hold_across_replicas(
    nimble_process: type[NimbleProcess], tmp_path: Path
) -> None:
    service_key = "replica-service-key"
    replica_keys = write_keys(tmp_path / "replicas.yaml", {service_key: {"id": "gateway"}})
    replicas = [
        nimble_process(["--model", "fake:shared", "--api-keys-file", str(replica_keys)])
        for _ in range(2)
    ]
    for replica in replicas:
        replica.wait_ready()
    client_keys = write_keys(
        tmp_path / "clients.yaml",
        {
            "team-key": {"id": "team", "limits": {"requests_per_minute": 4}},
            "alpha-only": {"id": "narrow", "models": ["alpha"]},
            "ops-key": {"id": "ops", "endpoints": ["metrics"]},
        },
    )
    management = free_port()
    audit = tmp_path / "audit.jsonl"
    args = (
        "--api-keys-file",
        str(client_keys),
        "--upstream-api-key",
        service_key,
        "--routing-policy",
        "round-robin",
        "--management-port",
        str(management),
        "--audit-log",
        str(audit),
    )
    gateway = gateway_of(nimble_process, *replicas, args=args)
    # probes and metrics on the management port need no key
    probes = f"http://127.0.0.1:{management}"
    assert httpx.get(probes + "/v1/health/ready", timeout=5).status_code == 200
    assert "nimble_gateway_upstream_up" in httpx.get(probes + "/metrics", timeout=5).text
    assert httpx.get(gateway.base_url + "/metrics", timeout=5).status_code == 401
    body = {"model": "shared", "messages": [{"role": "user", "content": "x"}], "max_tokens": 1}
    url = gateway.base_url + "/v1/chat/completions"

    def post(key: str | None) -> httpx.Response:
        headers = {"authorization": f"Bearer {key}"} if key else {}
        return httpx.post(url, json=body, headers=headers, timeout=10)

    assert post(None).status_code == 401
    assert post("alpha-only").status_code == 403
    statuses = [post("team-key").status_code for _ in range(5)]
    assert statuses == [200, 200, 200, 200, 429]  # 4 a minute, though each replica saw 2
    for replica in replicas:  # the replicas saw the service key, never the client's
        assert (
            metric(
                gateway,
                "nimble_gateway_upstream_requests_total",
                key="ops-key",
                upstream=replica.base_url,
                status="200",
            )
            == 2
        )
    # the audit log: one chained line per request with the key's id, as `serve` writes it
    lines = [json.loads(line) for line in audit.read_text().splitlines()]
    keys = [line.get("key_id") for line in lines if line.get("path") == "/v1/chat/completions"]
    assert keys.count("team") == 5 and keys.count("narrow") == 1


def test_a_dead_replica_is_ejected_retried_around_and_readmitted(
    nimble_process: type[NimbleProcess],
) -> None:
    replicas = [nimble_process(["--model", "fake:shared"]).wait_ready() for _ in range(2)]
    gateway = gateway_of(nimble_process, *replicas, args=("--routing-policy", "round-robin"))
    dead = replicas[0]
    dead.proc.kill()
    dead.proc.wait()
    client = gateway.client()
    for _ in range(6):  # every one answered: the first to pick the dead one is retried
        client.chat.completions.create(
            model="shared", messages=[{"role": "user", "content": "x"}], max_tokens=1
        )
    up = "nimble_gateway_upstream_up"
    assert metric(gateway, up, upstream=dead.base_url) == 0
    assert (
        metric(
            gateway, "nimble_gateway_upstream_errors_total", upstream=dead.base_url, kind="connect"
        )
        <= 1
    )
    back = nimble_process(["--model", "fake:shared"], port=dead.port).wait_ready()
    poll(lambda: metric(gateway, up, upstream=back.base_url) == 1)
    for _ in range(4):
        client.chat.completions.create(
            model="shared", messages=[{"role": "user", "content": "x"}], max_tokens=1
        )
    served = "nimble_gateway_upstream_requests_total"
    assert metric(gateway, served, upstream=back.base_url, status="200") >= 1


# 400 tokens at 50 ms each: 20 s, far longer than the tests below wait
SLOW_STREAM = {
    "model": "solo",
    "messages": [{"role": "user", "content": "x"}],
    "max_tokens": 400,
    "ignore_eos": True,  # all 400 (the fake model's own answers end after 8 to 15 tokens)
    "stream": True,
}


def slow_solo(factory: type[NimbleProcess]) -> tuple[NimbleProcess, NimbleProcess]:
    """One replica of a slow fake model, and a gateway in front of it alone."""
    replica = factory(["--model", "fake:solo", "--fake-token-delay", "0.05"]).wait_ready()
    return replica, gateway_of(factory, replica)


def test_a_stream_whose_replica_dies_ends_with_an_error_event(
    nimble_process: type[NimbleProcess],
) -> None:
    replica, gateway = slow_solo(nimble_process)
    body = SLOW_STREAM
    events: list[str] = []
    with httpx.stream(
        "POST", gateway.base_url + "/v1/chat/completions", json=body, timeout=20
    ) as answer:
        assert answer.status_code == 200
        for line in answer.iter_lines():
            if line.startswith("data: "):
                events.append(line[6:])
            if len(events) == 3:
                replica.proc.kill()
    assert len(events) < 400
    last = json.loads(events[-1])
    assert last["error"]["code"] == "upstream_error"
    assert events[-1] != "[DONE]"


@pytest.mark.parametrize("stream", [True, False], ids=["streamed", "whole"])
def test_a_client_that_goes_away_cancels_the_replicas_work(
    nimble_process: type[NimbleProcess], stream: bool
) -> None:
    """Before the replica's first byte too: a whole (non-streamed) answer has none until it
    is done, and the gateway did not watch the client until then (the replica went on
    generating for nobody: found by fuzzing through the gateway)."""
    replica, gateway = slow_solo(nimble_process)
    payload = json.dumps({**SLOW_STREAM, "stream": stream}).encode()
    running = "nimble_num_requests_running"
    with socket.create_connection(("127.0.0.1", gateway.port), timeout=20) as client:
        client.sendall(
            b"POST /v1/chat/completions HTTP/1.1\r\nHost: gateway\r\n"
            b"Content-Type: application/json\r\n"
            + f"Content-Length: {len(payload)}\r\n\r\n".encode()
            + payload
        )
        poll(lambda: metric(replica, running, model_name="solo") == 1, timeout=5)
        if stream:
            assert client.recv(65536).startswith(b"HTTP/1.1 200")  # the stream began
    # 400 tokens would take 20 s: the replica stops within a few of them
    poll(lambda: metric(replica, running, model_name="solo") == 0, timeout=5)


def test_no_ready_replica_is_a_503_and_dns_names_find_replicas(
    nimble_process: type[NimbleProcess],
) -> None:
    nowhere = nimble_process(
        [f"--upstream=http://127.0.0.1:{free_port()}", *FAST], command="gateway"
    )  # type: ignore[call-arg]
    nowhere.wait_status("/v1/health/live", 200)
    assert httpx.get(nowhere.base_url + "/v1/health/ready").status_code == 503
    refused = httpx.post(
        nowhere.base_url + "/v1/chat/completions",
        json={"model": "x", "messages": [{"role": "user", "content": "x"}]},
    )
    assert refused.status_code == 503 and refused.headers["retry-after"]
    assert refused.json()["error"]["type"] == "service_unavailable_error"
    replica = nimble_process(["--model", "fake:solo"]).wait_ready()
    found = nimble_process(  # type: ignore[call-arg]
        ["--upstream-dns", f"localhost:{replica.port}", *FAST], command="gateway"
    ).wait_ready()
    assert [m["id"] for m in httpx.get(found.base_url + "/v1/models").json()["data"]] == ["solo"]


def test_a_stored_response_is_found_on_the_replica_that_holds_it(
    pair: tuple[NimbleProcess, ...], nimble_process: type[NimbleProcess]
) -> None:
    one, two, _ = pair
    gateway = gateway_of(nimble_process, one, two, args=("--routing-policy", "round-robin"))
    client = gateway.client()
    first = client.responses.create(model="shared", input="remember this", max_output_tokens=3)
    for _ in range(4):  # round-robin alone would send half of these to the other replica
        assert client.responses.retrieve(first.id).id == first.id
        follow = client.responses.create(
            model="shared", input="and now?", previous_response_id=first.id, max_output_tokens=3
        )
        assert follow.previous_response_id == first.id
    with client.responses.create(
        model="shared", input="x", max_output_tokens=3, stream=True
    ) as streamed:
        events = list(streamed)
    created = next(event for event in events if event.type == "response.created")
    for _ in range(2):
        assert client.responses.retrieve(created.response.id).id == created.response.id


def test_keep_alive_closes_idle_connections(
    pair: tuple[NimbleProcess, ...], nimble_process: type[NimbleProcess]
) -> None:
    """The gateway's --keep-alive reaches its server: an idle connection closes after 1 s
    (its default outlives the clients' pools, as `nimble serve`'s: tests/e2e/test_transport)."""
    gateway = gateway_of(nimble_process, pair[0], args=("--keep-alive", "1"))
    assert seconds_until_closed(idle_connection(gateway.base_url)) >= 0.9


def test_an_adapter_loaded_on_the_replicas_is_routable_at_once(
    nimble_process: type[NimbleProcess], tmp_path: Path
) -> None:
    """The gateway reads its replicas' models every 30 s; a request (or /v1/models) naming
    a model none is known to serve reads them again first: an adapter loaded at run time
    answers through the gateway at once, not after 30 s."""
    replicas = [
        nimble_process(["--model", "fake:shared", "--runtime-adapters"]).wait_ready()
        for _ in range(2)
    ]
    gateway = gateway_of(nimble_process, *replicas)
    with gateway.client() as client:
        assert [m.id for m in client.models.list()] == ["shared"]
        adapter = tmp_path / "pirate.gguf"
        adapter.write_bytes(b"lora")
        for replica in replicas:
            loaded = httpx.post(
                replica.base_url + "/v1/load_lora_adapter",
                json={"lora_name": "pirate", "lora_path": str(adapter)},
                timeout=30,
            )
            assert loaded.status_code == 200, loaded.text
        answer = client.chat.completions.create(
            model="pirate", messages=[{"role": "user", "content": "hi"}], max_tokens=3
        )
        assert answer.model == "pirate"
        assert (answer.choices[0].message.content or "").startswith("[pirate]")
        assert [m.id for m in client.models.list()] == ["pirate", "shared"]
        # the replicas' own entries: an adapter names its base, as vLLM's `parent`
        listed = httpx.get(gateway.base_url + "/v1/models").json()["data"]
        assert [m.get("parent") for m in listed] == ["shared", None]
        retrieved = httpx.get(gateway.base_url + "/v1/models/pirate").json()
        assert (retrieved["id"], retrieved["parent"]) == ("pirate", "shared")
        with pytest.raises(openai.NotFoundError):  # still a 404 after the reading
            client.chat.completions.create(
                model="parrot", messages=[{"role": "user", "content": "hi"}], max_tokens=3
            )


class _ClosesReusedConnections(BaseHTTPRequestHandler):
    """An upstream that answers one POST per connection and closes the connection on the next
    without answering: what a gateway meets when it reuses a pooled connection just as the
    upstream's keep-alive closes it (an upstream that closes idle connections before the
    gateway's pool lets them go: a foreign one, or a replica with a short --keep-alive)."""

    protocol_version = "HTTP/1.1"
    answered = False

    def log_message(self, *args: Any) -> None:
        pass

    def _send(self, body: dict[str, Any]) -> None:
        data = json.dumps(body).encode()
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:  # the gateway's probes
        if self.path == "/v1/models":
            self._send({"object": "list", "data": [{"id": "solo", "object": "model"}]})
        else:
            self._send({"status": "ready"})

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("content-length", "0")))
        if self.answered:  # closed unanswered, as if idle too long
            self.server.dropped += 1  # type: ignore[attr-defined]
            self.close_connection = True
            return
        self.answered = True
        message = {"role": "assistant", "content": "hi"}
        self._send(
            {
                "id": "chatcmpl-1",
                "object": "chat.completion",
                "created": 0,
                "model": "solo",
                "choices": [{"index": 0, "message": message, "finish_reason": "stop"}],
                "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
            }
        )


def test_a_pooled_connection_the_upstream_closed_is_sent_again_on_a_new_one(
    nimble_process: type[NimbleProcess],
) -> None:
    """Not a 503, and the upstream is not ejected: the request goes once more to the same
    upstream on a new connection (counted as `disconnected`)."""
    upstream = ThreadingHTTPServer(("127.0.0.1", 0), _ClosesReusedConnections)
    upstream.dropped = 0  # type: ignore[attr-defined]
    serving = threading.Thread(target=upstream.serve_forever, daemon=True)
    serving.start()
    try:
        gateway = nimble_process(  # type: ignore[call-arg]
            [f"--upstream=http://127.0.0.1:{upstream.server_port}", *FAST], command="gateway"
        ).wait_ready()
        client = openai.OpenAI(base_url=gateway.base_url + "/v1", api_key="-", max_retries=0)
        for _ in range(3):
            answer = client.chat.completions.create(
                model="solo", messages=[{"role": "user", "content": "hello"}]
            )
            assert answer.choices[0].message.content == "hi"
        assert upstream.dropped >= 1  # type: ignore[attr-defined]  # it did close one unanswered
        url = f"http://127.0.0.1:{upstream.server_port}"
        assert (
            metric(
                gateway, "nimble_gateway_upstream_errors_total", upstream=url, kind="disconnected"
            )
            >= 1
        )
        assert (
            metric(gateway, "nimble_gateway_upstream_errors_total", upstream=url, kind="connect")
            == 0
        )
    finally:
        upstream.shutdown()
        upstream.server_close()
