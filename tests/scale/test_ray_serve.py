"""nimble on a Ray cluster (head + worker on loopback): `python -m nimble.ray_serve` deploys
it, the OpenAI API answers through Ray's proxy as `nimble serve` does, and the replicas scale
from 1 to 2 under load and back to 1 after it. Polls, never sleeps to wait; stops everything
it started (the deploying process, then each Ray node's own processes)."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import httpx
import openai
import pytest

from tests.conftest import chat_body, fake_service
from tests.e2e.conftest import (
    CHAT_MODEL,
    EMBED_MODEL,
    free_port,
    idle_connection,
    seconds_until_closed,
)

with warnings.catch_warnings():  # Ray's modules warn at import (pydantic v1-style fields)
    warnings.simplefilter("ignore")
    import ray
    from ray import serve
    from ray.cluster_utils import Cluster

    from nimble.config import Settings
    from nimble.ray_serve import ServeOptions, build_application

pytestmark = [
    pytest.mark.e2e,
    # Ray's own code warns (deprecated pydantic and asyncio uses) in the driver
    pytest.mark.filterwarnings("ignore::DeprecationWarning"),
    pytest.mark.filterwarnings("ignore::ResourceWarning"),
]

APP = "nimble"
HELLO = [{"role": "user", "content": "Which city is the capital of France?"}]
TOKEN_DELAY = 0.05  # the fake engine's seconds per token: a 100-token answer takes 5 s


@dataclass
class RayNimble:
    base_url: str
    proc: subprocess.Popen[bytes]
    log_path: Path
    timings: dict[str, float]

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def client(self) -> openai.OpenAI:
        return openai.OpenAI(api_key="unused", base_url=self.base_url + "/v1", max_retries=0)


def poll(
    condition: Callable[[], bool], what: str, timeout: float, alive: RayNimble | None = None
) -> float:
    """Seconds until `condition()` holds (fails after `timeout`, or if the deployer died)."""
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        if alive is not None and alive.proc.poll() is not None:
            raise AssertionError(f"the deploying process exited:\n{alive.log()}")
        if condition():
            return time.monotonic() - started
        time.sleep(0.1)  # polling interval, not a wait for a state
    log = alive.log() if alive is not None else ""
    raise AssertionError(f"{what}: not within {timeout} s\n{log}")


def running_replicas() -> int:
    app = serve.status().applications.get(APP)
    if app is None or "NimbleServer" not in app.deployments:
        return 0
    return int(app.deployments["NimbleServer"].replica_states.get("RUNNING", 0))


def ours(marker: str) -> list[int]:
    """Processes whose command line names this test's Ray temp dir (nothing else's)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                cmdline = (entry / "cmdline").read_bytes()
            except OSError:
                continue
            if marker.encode() in cmdline:
                found.append(int(entry.name))
    return found


@pytest.fixture(scope="module")
def cluster() -> Iterator[Cluster]:
    # a short temp dir of its own: Ray's unix sockets live under it (108-byte path limit),
    # and Ray writes the cluster's address under RAY_TMPDIR
    temp_dir = tempfile.mkdtemp(prefix="nrs", dir="/tmp")
    saved = os.environ.get("RAY_TMPDIR")
    os.environ["RAY_TMPDIR"] = temp_dir
    timings: dict[str, float] = {}
    started = time.monotonic()
    made = Cluster()
    try:
        # both nodes on this host, at the address Ray picks for it (a driver, the test's
        # and the deploying process's, looks for a node at that address)
        made.add_node(num_cpus=1, temp_dir=f"{temp_dir}/ray", include_dashboard=False)
        made.add_node(num_cpus=1)  # the worker: replicas land on both nodes
        made.wait_for_nodes()
        ray.init(address=made.address, log_to_driver=False)  # the replicas log to files
        timings["cluster_start_s"] = round(time.monotonic() - started, 1)
        made.timings = timings  # type: ignore[attr-defined]
        yield made
    finally:
        if ray.is_initialized():
            ray.shutdown()
        made.shutdown()
        if saved is None:
            os.environ.pop("RAY_TMPDIR", None)
        else:
            os.environ["RAY_TMPDIR"] = saved
        leftover = ours(temp_dir)
        for pid in leftover:  # only processes of this cluster's session
            os.kill(pid, 9)
        shutil.rmtree(temp_dir, ignore_errors=True)
        assert not leftover, f"Ray processes outlived the cluster: {leftover}"


def port_outside_rays_ranges() -> int:
    """A free port that no process of the cluster can take first. Ray's processes bind ports
    the kernel picks from the ephemeral range (and workers take 10002-19999), so a port
    taken from that range and handed to Serve's proxy seconds later was, once, taken by
    then ("Failed to bind to address"): pick one between the two."""
    low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    for port in range(20_000 + os.getpid() % 1_000, low):
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    return free_port()  # no room below the ephemeral range: as before


@pytest.fixture(scope="module")
def deployed(cluster: Cluster, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RayNimble]:
    port = port_outside_rays_ranges()
    log_path = tmp_path_factory.mktemp("ray-serve") / "deploy.log"
    # fast autoscaling: the target is 2 ongoing requests per replica, decided on 2 s of data
    args = [
        "--address", cluster.address, "--proxy-location", "HeadOnly",
        "--model", "fake", "--set", f"port={port}", "--set", f"fake_token_delay={TOKEN_DELAY}",
        "--set", "keep_alive=2",
        "--min-replicas", "1", "--max-replicas", "2", "--target-ongoing-requests", "2",
        "--upscale-delay-s", "0.5", "--downscale-delay-s", "2",
        "--metrics-interval-s", "0.5", "--look-back-period-s", "2",
        "--routing-stats-period-s", "0.5", "--graceful-shutdown-timeout-s", "5",
    ]  # fmt: skip
    started = time.monotonic()
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "nimble.ray_serve", *args], stdout=log, stderr=log
        )
    service = RayNimble(f"http://127.0.0.1:{port}", proc, log_path, cluster.timings)  # type: ignore[attr-defined]
    try:

        def ready() -> bool:
            try:
                return httpx.get(service.base_url + "/v1/health/ready", timeout=2).is_success
            except httpx.TransportError:
                return False

        poll(ready, "readiness through Ray", 120, service)
        service.timings["deploy_s"] = time.monotonic() - started
        yield service
    finally:
        if proc.poll() is None:
            proc.terminate()  # the deployer deletes the app and shuts Serve down
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        print(f"\nRay Serve timings: {json.dumps(service.timings)}")


def test_openai_api_through_ray(deployed: RayNimble) -> None:
    client = deployed.client()
    assert [m.id for m in client.models.list()] == ["fake-model"]

    stream = client.chat.completions.create(
        model="fake-model",
        messages=[{"role": "user", "content": "Say something"}],
        max_tokens=8,
        seed=7,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 8
    whole = client.chat.completions.create(
        model="fake-model",
        messages=[{"role": "user", "content": "Say something"}],
        max_tokens=8,
        seed=7,
    )
    assert whole.choices[0].message.content == text  # the fake engine is deterministic

    vectors = client.embeddings.create(model="fake-model", input=["cats sleep", "dogs bark"])
    assert len(vectors.data) == 2 and len(vectors.data[0].embedding) > 0

    with pytest.raises(openai.NotFoundError) as missing:
        client.chat.completions.create(
            model="no-such-model", messages=[{"role": "user", "content": "hi"}]
        )
    assert missing.value.body["code"] == "model_not_found"  # type: ignore[index]

    # a replica id names who answered (the router's choice)
    answer = httpx.get(deployed.base_url + "/v1/models", timeout=10)
    assert answer.headers["x-nimble-replica"]


async def test_errors_have_the_shape_of_nimble_serve(deployed: RayNimble) -> None:
    bad = chat_body(temperature=7)
    async with httpx.AsyncClient(base_url=deployed.base_url, timeout=10) as ray_client:
        through_ray = await ray_client.post("/v1/chat/completions", json=bad)
        no_route = await ray_client.get("/v1/no-such-path")
        too_big = await ray_client.post(
            "/v1/embeddings", content=b"x" * (5 * 1024 * 1024), headers={"content-type": "text"}
        )
    async with fake_service() as (_, local):
        in_process = await local.post("/v1/chat/completions", json=bad)
    assert through_ray.status_code == in_process.status_code == 400
    assert through_ray.json() == in_process.json()
    assert through_ray.json()["error"]["param"] == "temperature"
    assert no_route.status_code == 404
    assert too_big.status_code == 413
    assert "error" in too_big.json()


def test_scales_to_two_replicas_under_load_and_back(deployed: RayNimble) -> None:
    assert poll(lambda: running_replicas() == 1, "one replica at rest", 60, deployed) >= 0
    client = deployed.client()

    def ask(n: int) -> tuple[str, str]:
        raw = client.chat.completions.with_raw_response.create(
            model="fake-model",
            messages=[{"role": "user", "content": f"question {n}"}],
            max_tokens=100,  # 5 s each at TOKEN_DELAY
            extra_body={"ignore_eos": True},
        )
        return raw.headers["x-nimble-replica"], raw.parse().choices[0].message.content or ""

    started = time.monotonic()
    with ThreadPoolExecutor(max_workers=8) as pool:
        # 8 requests at once for 15 s (three waves): 8 ongoing vs a target of 2 each
        futures = [pool.submit(ask, n) for n in range(24)]
        up = poll(lambda: running_replicas() == 2, "a second replica under load", 60, deployed)
        answers = [f.result(timeout=120) for f in futures]
    load_s = time.monotonic() - started
    assert all(text for _, text in answers)
    assert len({replica for replica, _ in answers}) == 2  # the router used the new replica
    down = poll(lambda: running_replicas() == 1, "back to one replica", 90, deployed)
    deployed.timings.update(
        scale_up_s=round(up, 1), load_s=round(load_s, 1), scale_down_s=round(down, 1)
    )
    # still answering after the scale-down
    assert client.models.list().data[0].id == "fake-model"


@pytest.mark.models
def test_real_weights_through_ray(deployed: RayNimble) -> None:
    """SmolLM2 (llama.cpp) and all-MiniLM-L6-v2 in one replica, deployed from Python beside
    the fake app (its own route prefix) once that one is back to one replica."""
    settings = Settings(model=(CHAT_MODEL, EMBED_MODEL), threads=1, max_running=2)
    started = time.monotonic()
    serve.run(
        build_application(settings, ServeOptions(min_replicas=1, max_replicas=1)),
        name="real",
        route_prefix="/real",
    )
    deployed.timings["real_deploy_s"] = round(time.monotonic() - started, 1)
    try:
        client = openai.OpenAI(
            api_key="unused", base_url=deployed.base_url + "/real/v1", max_retries=0
        )
        stream = client.chat.completions.create(
            model=CHAT_MODEL,
            messages=HELLO,
            max_tokens=24,
            temperature=0,
            stream=True,
        )
        text = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
        assert "Paris" in text
        vectors = client.embeddings.create(model=EMBED_MODEL, input=["cats sleep"])
        assert len(vectors.data[0].embedding) == 384
    finally:
        serve.delete("real")


def test_keep_alive_reaches_rays_proxy(deployed: RayNimble) -> None:
    """`keep_alive` is the idle timeout of Ray's HTTP proxy too: an idle connection is closed
    after 2 s (the fixture's), not Ray's own 90."""
    assert seconds_until_closed(idle_connection(deployed.base_url)) >= 1.9
