"""Prometheus metrics: per-model counters, histograms and gauges that match what the API
answered; HTTP status counts; no user data in any label; every name documented."""

from __future__ import annotations

import asyncio
import re
from pathlib import Path

import httpx
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import FAKE_MODEL, chat_body, fake_service

DOCS = Path(__file__).parents[2] / "docs" / "operations.md"


async def scrape(client: httpx.AsyncClient, path: str = "/v1/metrics") -> dict[str, float]:
    """{'name{label="v",...}': value} of every sample."""
    response = await client.get(path)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    samples: dict[str, float] = {}
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            labels = ",".join(f'{k}="{v}"' for k, v in sorted(sample.labels.items()))
            samples[f"{sample.name}{{{labels}}}"] = sample.value
    return samples


def model_sample(name: str, **labels: str) -> str:
    merged = {"model_name": FAKE_MODEL, **labels}
    return f"nimble_{name}{{" + ",".join(f'{k}="{v}"' for k, v in sorted(merged.items())) + "}"


async def test_counters_and_histograms_match_the_answers() -> None:
    async with fake_service() as (_, client):
        plain = (await client.post("/v1/chat/completions", json=chat_body(max_tokens=4))).json()
        streamed = await client.post(
            "/v1/chat/completions",
            json=chat_body(stream=True, stream_options={"include_usage": True}),
        )
        usage_line = [line for line in streamed.text.splitlines() if '"usage":{' in line][-1]
        stream_usage = [
            int(n) for n in re.findall(r'"(?:prompt|completion)_tokens":(\d+)', usage_line)
        ]
        embedded = (
            await client.post("/v1/embeddings", json={"model": FAKE_MODEL, "input": "a b"})
        ).json()
        reranked = await client.post(
            "/v1/rerank", json={"model": FAKE_MODEL, "query": "a", "documents": ["a b", "c"]}
        )
        assert reranked.status_code == 200, reranked.text
        assert (await client.get("/v1/nowhere")).status_code == 404
        assert (
            await client.post("/v1/chat/completions", json={"model": FAKE_MODEL})
        ).status_code == 400

        m = await scrape(client)
        prompt = (
            plain["usage"]["prompt_tokens"]
            + stream_usage[0]
            + embedded["usage"]["prompt_tokens"]
            + reranked.json()["usage"]["total_tokens"]
        )
        generated = plain["usage"]["completion_tokens"] + stream_usage[1]
        assert m[model_sample("prompt_tokens_total")] == prompt
        assert m[model_sample("generation_tokens_total")] == generated
        assert m[model_sample("request_finish_total", finish_reason="length")] == 1  # max_tokens 4
        assert m[model_sample("request_finish_total", finish_reason="stop")] == 1
        # generation histograms: the two chat requests (an embedding or a rerank generates
        # nothing); latency and queue: all four
        assert m[model_sample("time_to_first_token_seconds_count")] == 2
        assert m[model_sample("time_per_output_token_seconds_count")] == 2
        assert m[model_sample("request_generation_tokens_count")] == 2
        assert m[model_sample("request_generation_tokens_sum")] == generated
        assert m[model_sample("request_prompt_tokens_sum")] == prompt
        assert m[model_sample("e2e_request_latency_seconds_count")] == 4
        assert m[model_sample("request_queue_time_seconds_count")] == 4
        assert m[model_sample("e2e_request_latency_seconds_sum")] > 0
        # HTTP status counts by endpoint name
        http = 'nimble_http_requests_total{{endpoint="{}",method="{}",status="{}"}}'
        assert m[http.format("chat", "POST", "200")] == 2
        assert m[http.format("chat", "POST", "400")] == 1
        assert m[http.format("embeddings", "POST", "200")] == 1
        assert m[http.format("rerank", "POST", "200")] == 1
        assert m[http.format("other", "GET", "404")] == 1
        # gauges
        assert m[model_sample("num_request_max")] == 4
        assert m[model_sample("num_requests_running")] == 0
        assert m[model_sample("num_requests_waiting")] == 0
        assert m[model_sample("kv_cache_usage_ratio")] == 0
        # the alias serves the same registry
        alias = await scrape(client, "/metrics")
        assert alias[model_sample("prompt_tokens_total")] == prompt


async def test_gauges_while_requests_run_and_wait() -> None:
    async with fake_service(max_running=1, max_waiting=4, token_delay=0.05) as (runtime, client):
        admission = runtime.models[FAKE_MODEL].admission
        tasks = [
            asyncio.create_task(client.post("/v1/chat/completions", json=chat_body()))
            for _ in range(3)
        ]
        while admission.waiting < 2:  # poll until one runs and two wait
            await asyncio.sleep(0.002)
        m = await scrape(client)
        assert m[model_sample("num_requests_running")] == 1
        assert m[model_sample("num_requests_waiting")] == 2
        assert m[model_sample("num_request_max")] == 1
        assert m[model_sample("kv_cache_usage_ratio")] == 1.0  # the fake's one slot is busy
        responses = await asyncio.gather(*tasks)
        assert [r.status_code for r in responses] == [200, 200, 200]
        m = await scrape(client)
        assert m[model_sample("num_requests_running")] == 0
        assert m[model_sample("request_queue_time_seconds_count")] == 3
        # two of the three waited at least one generation (> 8 tokens x 50 ms)
        assert m[model_sample("request_queue_time_seconds_sum")] > 0.4


async def test_aborted_requests_are_counted() -> None:
    async with fake_service(token_delay=0.05) as (runtime, client):
        model = runtime.models[FAKE_MODEL]
        task = asyncio.create_task(client.post("/v1/chat/completions", json=chat_body()))
        while model.admission.running == 0:
            await asyncio.sleep(0.002)
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        m = await scrape(client)
        assert m[model_sample("request_finish_total", finish_reason="abort")] == 1
        assert model_sample("request_finish_total", finish_reason="stop") not in m


async def test_no_user_data_in_labels() -> None:
    async with fake_service() as (_, client):
        await client.post(
            "/v1/chat/completions",
            json=chat_body(model="secret-model-name", user="secret-user"),
        )
        await client.post(
            "/v1/chat/completions",
            json=chat_body(messages=[{"role": "user", "content": "secret-prompt"}]),
            headers={"Authorization": "Bearer secret-key", "X-Request-Id": "secret-id"},
        )
        await client.get("/v1/secret-path?q=secret-query")
        text = (await client.get("/metrics")).text
        assert "secret" not in text
        labels = set(re.findall(r'(\w+)="', text))
        assert labels <= {"model_name", "finish_reason", "method", "endpoint", "status", "le"}


async def test_every_metric_is_documented() -> None:
    documented = set(re.findall(r"^\| `(nimble_\w+)`", DOCS.read_text(), flags=re.MULTILINE))
    async with fake_service() as (_, client):
        await client.post("/v1/chat/completions", json=chat_body())
        response = await client.get("/metrics")
    families = {family.name for family in text_string_to_metric_families(response.text)}
    # counters are exposed as <name>_total; the table lists the full sample names
    exposed = {name + "_total" if name + "_total" in response.text else name for name in families}
    assert exposed == documented
