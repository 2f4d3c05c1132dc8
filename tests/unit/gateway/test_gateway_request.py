"""What the gateway reads of a request (model, prompt text, usage) and of a replica (its load
from /v1/metrics, its addresses from DNS)."""

from __future__ import annotations

import asyncio
import json

import httpx
import pytest

from nimble.gateway import upstreams
from nimble.gateway.request import prompt_text, read_target, usage_of
from nimble.gateway.upstreams import PoolConfig, UpstreamPool, parse_load


def test_model_and_prompt_of_a_chat_request() -> None:
    body = {
        "model": "m",
        "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": [{"type": "text", "text": "Hi"}]},
        ],
    }
    target = read_target("/v1/chat/completions", json.dumps(body).encode())
    assert target.model == "m" and target.task == "chat"
    assert target.prompt.startswith("system:Be brief.") and "user:Hi" in target.prompt
    assert json.loads(target.body) == body  # not a stream: passed on unchanged
    assert not target.drop_usage_event


def test_the_gateway_names_each_task_as_the_replicas_do() -> None:
    """The gateway's request record and trace name a path's task with the replica's Task
    value: one name per task in metrics and traces (a rerank was `ranking` at the gateway)."""
    from nimble.types import Task

    body = json.dumps({"model": "m"}).encode()
    for path, task in (
        ("/v1/chat/completions", Task.CHAT),
        ("/v1/messages", Task.CHAT),
        ("/v1/completions", Task.COMPLETION),
        ("/v1/embeddings", Task.EMBEDDING),
        ("/v1/ranking", Task.RERANK),
        ("/v1/rerank", Task.RERANK),
        ("/v2/rerank", Task.RERANK),
        ("/v1/classify", Task.CLASSIFY),
        ("/classify", Task.CLASSIFY),
    ):
        assert read_target(path, body).task == task.value, path


def test_requests_that_share_a_system_prompt_share_a_prompt_prefix() -> None:
    def text(question: str) -> str:
        return prompt_text(
            {
                "messages": [
                    {"role": "system", "content": "S" * 50},
                    {"role": "user", "content": question},
                ]
            }
        )

    one, two = text("first?"), text("second?")
    assert one[:55] == two[:55] and one != two
    # the Responses API and Anthropic's put the system text first as well
    assert prompt_text({"instructions": "S" * 50, "input": "q"}).startswith("S" * 50)
    assert prompt_text({"system": "S" * 50, "messages": []}).startswith("S" * 50)
    assert prompt_text({"prompt": ["a", "b"]}) == "a\x1eb"


def test_a_stream_that_did_not_ask_for_usage_asks_for_it_and_drops_it() -> None:
    body = {"model": "m", "prompt": "x", "stream": True, "stream_options": {"x": 1}}
    target = read_target("/v1/completions", json.dumps(body).encode())
    sent = json.loads(target.body)
    assert sent["stream_options"] == {"x": 1, "include_usage": True}
    assert target.drop_usage_event
    asked = {**body, "stream_options": {"include_usage": True}}
    target = read_target("/v1/completions", json.dumps(asked).encode())
    assert json.loads(target.body) == asked and not target.drop_usage_event
    # the Responses API always reports usage: nothing to add
    responses = {"model": "m", "input": "x", "stream": True}
    assert (
        read_target("/v1/responses", json.dumps(responses).encode()).body
        == json.dumps(responses).encode()
    )


def test_asking_for_usage_keeps_the_rest_of_the_body_as_sent() -> None:
    # no stream_options: the member goes in front, every other byte stays (the seed is past
    # 64 bits, which orjson would have turned into a float)
    raw = b'  {"model": "m", "messages": [], "stream": true, "seed": 18446744073709551616}'
    sent = read_target("/v1/chat/completions", raw).body
    assert sent == b'  {"stream_options":{"include_usage":true},' + raw[3:]
    assert json.loads(sent)["seed"] == 18446744073709551616
    # an explicit null is replaced, not shadowed by a second member
    null = b'{"model": "m", "prompt": "x", "stream": true, "stream_options": null, "seed": 2'
    null += b"0000000000000000000}"
    sent_null = json.loads(read_target("/v1/completions", null).body)
    assert sent_null["stream_options"] == {"include_usage": True}
    assert sent_null["seed"] == 20000000000000000000


def test_a_lone_surrogate_still_routes_by_model() -> None:
    # orjson refuses "\ud800"; the standard library reads it, so the request still goes to a
    # replica of its model, which answers the 400 naming the field
    raw = b'{"model": "m", "messages": [{"role": "user", "content": "\\ud800"}], "stream": true}'
    target = read_target("/v1/chat/completions", raw)
    assert target.model == "m" and target.drop_usage_event
    assert json.loads(target.body)["stream_options"] == {"include_usage": True}


@pytest.mark.parametrize("body", [b"", b"not json", b"[1, 2]", b'{"model": 7}'])
def test_a_body_the_gateway_cannot_read_goes_on_as_it_is(body: bytes) -> None:
    target = read_target("/v1/chat/completions", body)
    assert target.model is None and target.body == body


@pytest.mark.parametrize(("depth", "model"), [(900, "m"), (1000, "m"), (5000, None)])
def test_a_body_nested_too_deep_still_routes(depth: int, model: str | None) -> None:
    """Nested past Python's recursion limit (the prompt's reading overflowed: a 500) or past
    orjson's 1,024 levels too (then `json` overflowed): the request still goes on, by its
    model where orjson read it, and the replica refuses it (pydantic reads ~250 levels)."""
    nested = "[" * depth + "]" * depth
    raw = f'{{"model": "m", "stream": true, "messages": [{{"content": {nested}}}]}}'.encode()
    target = read_target("/v1/chat/completions", raw)
    assert (target.model, target.prompt) == (model, "")
    if model is None:
        assert target.body == raw
    else:
        assert target.drop_usage_event
        assert target.body == b'{"stream_options":{"include_usage":true},' + raw[1:]


def test_responses_name_the_replica_that_holds_them() -> None:
    body = {"model": "m", "input": "x", "previous_response_id": "resp_abc"}
    assert read_target("/v1/responses", json.dumps(body).encode()).previous_response == "resp_abc"
    assert read_target("/v1/responses/resp_xyz", b"").previous_response == "resp_xyz"


def test_usage_in_every_shape() -> None:
    assert usage_of({"usage": {"prompt_tokens": 3, "completion_tokens": 4}}) == (3, 4)
    assert usage_of({"usage": {"prompt_tokens": 3, "total_tokens": 3}}) == (3, 0)  # embeddings
    assert usage_of({"response": {"usage": {"input_tokens": 5, "output_tokens": 6}}}) == (5, 6)
    assert usage_of({"message": {"usage": {"input_tokens": 7, "output_tokens": 1}}}) == (7, 1)
    assert usage_of({"usage": {"output_tokens": 9}}) == (None, 9)  # Anthropic's message_delta
    assert usage_of({"usage": None}) is None
    assert usage_of([1]) is None


def test_load_from_a_replicas_metrics() -> None:
    text = "\n".join(
        [
            "# TYPE nimble_num_requests_running gauge",
            'nimble_num_requests_running{model_name="chat"} 3.0',
            'nimble_num_requests_running{model_name="embed"} 0.0',
            "# TYPE nimble_num_requests_waiting gauge",
            'nimble_num_requests_waiting{model_name="chat"} 5.0',
            "# TYPE nimble_kv_cache_usage_ratio gauge",
            'nimble_kv_cache_usage_ratio{model_name="chat"} 0.25',
            "# TYPE nimble_http_requests counter",
            'nimble_http_requests_total{method="GET",endpoint="x",status="200"} 1.0',
            # a name that only begins like one of them is not read as it
            "# TYPE nimble_num_requests_waiting_seconds histogram",
            'nimble_num_requests_waiting_seconds_bucket{model_name="chat",le="1.0"} 9.0',
        ]
    )
    loads = parse_load(text + "\n")
    assert (loads["chat"].running, loads["chat"].waiting, loads["chat"].cache) == (3, 5, 0.25)
    assert loads["embed"].cache is None


async def test_dns_names_add_and_drop_replicas(monkeypatch: pytest.MonkeyPatch) -> None:
    answers = {"replicas.ns.svc": ["10.0.0.1", "10.0.0.2"]}

    async def addresses(host: str, port: int) -> list[str]:
        if host not in answers:
            raise OSError("no such name")
        return answers[host]

    monkeypatch.setattr(upstreams, "_addresses", addresses)
    removed: list[str] = []
    pool = UpstreamPool(
        PoolConfig(urls=("http://127.0.0.1:9/",), dns=("replicas.ns.svc:8000", "gone.ns.svc:1")),
        on_removed=removed.append,
    )
    try:
        await pool.resolve()
        assert set(pool.upstreams) == {
            "http://127.0.0.1:9",
            "http://10.0.0.1:8000",
            "http://10.0.0.2:8000",
        }
        answers["replicas.ns.svc"] = ["10.0.0.2", "10.0.0.3"]
        await pool.resolve()
        assert set(pool.upstreams) == {
            "http://127.0.0.1:9",
            "http://10.0.0.2:8000",
            "http://10.0.0.3:8000",
        }
        assert removed == ["http://10.0.0.1:8000"]
        del answers["replicas.ns.svc"]  # a failed lookup keeps what the name had
        await pool.resolve()
        assert "http://10.0.0.3:8000" in pool.upstreams
    finally:
        await pool.stop()


async def test_model_readings_are_one_at_a_time_and_fresh_for_who_waits() -> None:
    """`refresh_models`: callers that arrive while a reading runs share the next one (it
    started after they asked, so it sees what they came for); one reading at a time."""
    served = ["shared"]
    readings: list[str] = []
    hold = asyncio.Event()

    async def replica(request: httpx.Request) -> httpx.Response:
        readings.append(request.url.host)
        data = [{"id": model} for model in served]  # what the replica serves when asked
        if len(readings) <= 2:  # the first reading (both replicas) waits
            await hold.wait()
        return httpx.Response(200, json={"object": "list", "data": data})

    pool = UpstreamPool(PoolConfig(urls=("http://a:1", "http://b:1")))
    await pool._client.aclose()
    pool._client = httpx.AsyncClient(transport=httpx.MockTransport(replica))
    for upstream in pool.upstreams.values():
        upstream.ready = True
    try:
        first = asyncio.create_task(pool.refresh_models())
        while len(readings) < 2:
            await asyncio.sleep(0)  # until the first reading has asked both replicas
        served.append("pirate")  # loaded on the replicas after the first reading asked
        waiting = [asyncio.create_task(pool.refresh_models()) for _ in range(3)]
        await asyncio.sleep(0)
        hold.set()
        await asyncio.gather(first, *waiting)
        assert sorted(readings) == ["a", "a", "b", "b"]  # the three shared one more reading
        assert pool.serving("pirate") and len(pool.serving("shared")) == 2
        await pool.refresh_models()  # nothing started since it asked: it reads again
        assert len(readings) == 6
    finally:
        await pool.stop()
