"""The official `openai` SDK against a real `nimble serve` on the default models."""

from __future__ import annotations

import base64

import httpx
import numpy as np
import openai
import pytest

from tests.e2e.conftest import CHAT_MODEL, EMBED_MODEL, NimbleProcess

pytestmark = [pytest.mark.e2e, pytest.mark.models]

HELLO = [{"role": "user", "content": "Which city is the capital of France?"}]


def test_models_list(default_server: NimbleProcess) -> None:
    ids = [m.id for m in default_server.client().models.list().data]
    assert ids == [CHAT_MODEL, EMBED_MODEL]


def test_chat(default_server: NimbleProcess) -> None:
    result = default_server.client().chat.completions.create(
        model=CHAT_MODEL, messages=HELLO, max_tokens=24, temperature=0
    )
    text = result.choices[0].message.content or ""
    assert "Paris" in text
    assert result.choices[0].finish_reason in {"stop", "length"}
    assert result.usage is not None and result.usage.prompt_tokens > 5
    assert result.usage.completion_tokens <= 24


def test_chat_streaming_with_usage(default_server: NimbleProcess) -> None:
    stream = default_server.client().chat.completions.create(
        model=CHAT_MODEL,
        messages=HELLO,
        max_tokens=16,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    assert chunks[0].choices[0].delta.role == "assistant"
    pieces = [
        c.choices[0].delta.content for c in chunks if c.choices and c.choices[0].delta.content
    ]
    assert len(pieces) >= 2
    finishes = [
        c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason
    ]
    assert finishes == ["stop"] or finishes == ["length"]
    usage = chunks[-1].usage
    assert chunks[-1].choices == [] and usage is not None
    assert 0 < usage.completion_tokens <= 16


def test_completion_and_stop_sequence(default_server: NimbleProcess) -> None:
    client = default_server.client()
    free = client.completions.create(
        model=CHAT_MODEL, prompt="1, 2, 3, 4, 5,", max_tokens=12, temperature=0
    )
    assert "6" in free.choices[0].text
    stopped = client.completions.create(
        model=CHAT_MODEL, prompt="1, 2, 3, 4, 5,", max_tokens=12, temperature=0, stop=["8"]
    )
    assert "8" not in stopped.choices[0].text
    assert stopped.choices[0].finish_reason == "stop"
    assert free.choices[0].text.startswith(stopped.choices[0].text)


def test_seed_reproducible(default_server: NimbleProcess) -> None:
    client = default_server.client()

    def sample(seed: int) -> str:
        r = client.chat.completions.create(
            model=CHAT_MODEL,
            messages=[{"role": "user", "content": "Invent a name for a cat."}],
            max_tokens=20,
            temperature=1.0,
            seed=seed,
        )
        return r.choices[0].message.content or ""

    first = sample(1234)
    assert sample(1234) == first
    assert any(sample(seed) != first for seed in (1, 2, 3))


def test_n_and_logprobs(default_server: NimbleProcess) -> None:
    r = default_server.client().chat.completions.create(
        model=CHAT_MODEL,
        messages=HELLO,
        max_tokens=4,
        n=2,
        logprobs=True,
        top_logprobs=3,
        seed=5,
        temperature=0.8,
    )
    assert [c.index for c in r.choices] == [0, 1]
    content = r.choices[0].logprobs.content  # type: ignore[union-attr]
    assert content and all(len(t.top_logprobs) == 3 and t.logprob <= 0 for t in content)


def _cosine(a: list[float], b: list[float]) -> float:
    return float(np.dot(a, b) / (np.linalg.norm(a) * np.linalg.norm(b)))


def test_embeddings_paraphrase_closer(default_server: NimbleProcess) -> None:
    result = default_server.client().embeddings.create(
        model=EMBED_MODEL,
        input=[
            "A man is playing a guitar.",
            "Someone plays an acoustic guitar.",
            "The stock market fell sharply today.",
        ],
        encoding_format="float",
    )
    a, b, c = (d.embedding for d in result.data)
    assert len(a) == 384
    assert _cosine(a, b) > _cosine(a, c) + 0.3
    assert result.usage.prompt_tokens > 10


def test_embeddings_base64(default_server: NimbleProcess) -> None:
    raw = httpx.post(
        default_server.base_url + "/v1/embeddings",
        json={"model": EMBED_MODEL, "input": "hello world", "encoding_format": "base64"},
    ).json()
    vector = np.frombuffer(base64.b64decode(raw["data"][0]["embedding"]), dtype="<f4")
    assert vector.shape == (384,)
    assert raw["usage"]["prompt_tokens"] == 4  # [CLS] hello world [SEP]


@pytest.mark.parametrize(
    ("kwargs", "status", "param"),
    [
        ({"model": "no-such-model", "messages": HELLO}, 404, "model"),
        ({"model": CHAT_MODEL, "messages": []}, 400, "messages"),
        (
            {"model": CHAT_MODEL, "messages": [{"role": "robot", "content": "x"}]},
            400,
            "messages.0.role",
        ),
        ({"model": CHAT_MODEL, "messages": HELLO, "max_tokens": -1}, 400, "max_tokens"),
        ({"model": CHAT_MODEL, "messages": HELLO, "max_tokens": 10**7}, 400, "max_tokens"),
        ({"model": CHAT_MODEL, "messages": HELLO, "temperature": 9}, 400, "temperature"),
        ({"model": EMBED_MODEL, "messages": HELLO}, 400, "model"),
    ],
)
def test_errors_through_sdk(
    default_server: NimbleProcess, kwargs: dict[str, object], status: int, param: str
) -> None:
    with pytest.raises(openai.APIStatusError) as caught:
        default_server.client().chat.completions.create(**kwargs)  # type: ignore[call-overload]
    assert caught.value.status_code == status
    body = caught.value.body
    assert isinstance(body, dict) and body["param"] == param  # the SDK unwraps "error"
    assert body["message"] and body["type"]


def test_context_length_exceeded(default_server: NimbleProcess) -> None:
    long_text = "hello " * 9000
    with pytest.raises(openai.BadRequestError) as caught:
        default_server.client().chat.completions.create(
            model=CHAT_MODEL, messages=[{"role": "user", "content": long_text}]
        )
    body = caught.value.body
    assert isinstance(body, dict) and body["code"] == "context_length_exceeded"
    assert "8192" in body["message"]


def test_oversized_body_and_malformed_json(default_server: NimbleProcess) -> None:
    big = httpx.post(
        default_server.base_url + "/v1/chat/completions",
        content=b"{" + b" " * (5 * 1024 * 1024) + b"}",
        headers={"content-type": "application/json"},
    )
    assert big.status_code == 413 and big.json()["error"]["type"] == "invalid_request_error"
    bad = httpx.post(
        default_server.base_url + "/v1/chat/completions",
        content=b"{not json",
        headers={"content-type": "application/json"},
    )
    assert bad.status_code == 400 and "JSON" in bad.json()["error"]["message"]


def test_metadata_has_sha256(default_server: NimbleProcess) -> None:
    meta = httpx.get(default_server.base_url + "/v1/metadata").json()
    engines = {m["id"]: m for m in meta["models"]}
    chat = engines[CHAT_MODEL]
    assert chat["engine"] == "llamacpp" and chat["engine_version"]
    (weights,) = chat["files"]
    assert weights["path"].endswith("SmolLM2-135M-Instruct.Q4_1.gguf")
    assert len(weights["sha256"]) == 64
    assert engines[EMBED_MODEL]["engine"] == "onnx"


def test_metrics_after_real_requests(default_server: NimbleProcess) -> None:
    client = default_server.client()
    chat = client.chat.completions.create(model=CHAT_MODEL, messages=HELLO, max_tokens=8)
    client.embeddings.create(model=EMBED_MODEL, input="metrics")
    text = httpx.get(default_server.base_url + "/v1/metrics").text
    samples = {
        line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line and not line.startswith("#")
    }
    chat_label = f'{{model_name="{CHAT_MODEL}"}}'
    embed_label = f'{{model_name="{EMBED_MODEL}"}}'
    assert chat.usage is not None
    assert samples["nimble_prompt_tokens_total" + chat_label] >= chat.usage.prompt_tokens
    assert samples["nimble_generation_tokens_total" + chat_label] >= chat.usage.completion_tokens
    assert samples["nimble_time_to_first_token_seconds_count" + chat_label] >= 1
    assert samples["nimble_e2e_request_latency_seconds_count" + embed_label] >= 1
    assert samples["nimble_num_request_max" + chat_label] == 4
    # llama.cpp reports its KV cache (idle now: 0); the ONNX encoder has none
    assert samples["nimble_kv_cache_usage_ratio" + chat_label] == 0.0
    assert "nimble_kv_cache_usage_ratio" + embed_label not in samples


GET_TIME = {
    "type": "function",
    "function": {
        "name": "get_time",
        "description": "The current time in a time zone",
        "parameters": {"type": "object", "properties": {"tz": {"type": "string"}}},
    },
}


def test_tokenize_counts_equal_usage_and_detokenize_round_trips(
    default_server: NimbleProcess,
) -> None:
    """SmolLM2 on llama.cpp and MiniLM on ONNX: /tokenize counts what the generation and
    embedding usages count (the chat template, with tools as a chat completion writes
    them in); /detokenize gives the text back."""
    url = default_server.base_url
    with default_server.client() as client:
        _tokenize_checks(url, client)


def _tokenize_checks(url: str, client: openai.OpenAI) -> None:
    for tools in ((), (GET_TIME,)):
        extra = {"tools": list(tools)} if tools else {}
        chat = client.chat.completions.create(
            model=CHAT_MODEL,
            messages=HELLO,
            max_tokens=1,
            **extra,  # type: ignore[arg-type]
        )
        counted = httpx.post(
            url + "/tokenize",
            json={"model": CHAT_MODEL, "messages": HELLO, "return_token_strs": True, **extra},
        ).json()
        assert chat.usage is not None and counted["count"] == chat.usage.prompt_tokens
        assert counted["max_model_len"] == 8192 and len(counted["token_strs"]) == counted["count"]
        assert "<|im_start|>" in counted["token_strs"]  # the template's own tokens
    assert counted["count"] > 100  # the tools' instructions were counted
    prompt = "The capital of France is"
    completion = client.completions.create(model=CHAT_MODEL, prompt=prompt, max_tokens=1)
    ids = httpx.post(url + "/tokenize", json={"model": CHAT_MODEL, "prompt": prompt}).json()
    assert completion.usage is not None and ids["count"] == completion.usage.prompt_tokens
    back = httpx.post(url + "/detokenize", json={"model": CHAT_MODEL, "tokens": ids["tokens"]})
    assert back.json() == {"prompt": prompt}
    outside = httpx.post(url + "/detokenize", json={"model": CHAT_MODEL, "tokens": [49152]})
    assert outside.status_code == 400 and outside.json()["error"]["param"] == "tokens"
    # the embedding model: its tokenizer, with [CLS] and [SEP]
    text = "A man is playing a guitar."
    embedded = client.embeddings.create(model=EMBED_MODEL, input=text)
    minilm = httpx.post(
        url + "/tokenize", json={"model": EMBED_MODEL, "prompt": text, "return_token_strs": True}
    ).json()
    assert minilm["count"] == embedded.usage.prompt_tokens and minilm["max_model_len"] == 256
    assert minilm["token_strs"][0] == "[CLS]" and minilm["token_strs"][-1] == "[SEP]"
    words = httpx.post(url + "/detokenize", json={"model": EMBED_MODEL, "tokens": minilm["tokens"]})
    assert words.json()["prompt"] == "[CLS] a man is playing a guitar. [SEP]"


def test_v2_rerank_models_retrieve_and_vllm_health(default_server: NimbleProcess) -> None:
    url = default_server.base_url
    body = {
        "model": EMBED_MODEL,
        "query": "Who plays the guitar?",
        "documents": ["Stocks fell today. A man plays the guitar.", "A woman sings."],
    }
    whole = httpx.post(url + "/v2/rerank", json=body).json()
    cut = httpx.post(url + "/v2/rerank", json={**body, "max_tokens_per_doc": 4}).json()
    v1 = httpx.post(url + "/v1/rerank", json=body).json()
    assert whole["results"] == v1["results"] and whole["meta"]["api_version"]["version"] == "2"
    # the guitar is past the first 4 tokens of the first document: cut, it loses its lead
    assert [r["index"] for r in whole["results"]] == [0, 1]
    assert [r["index"] for r in cut["results"]] == [1, 0]
    with default_server.client() as client:
        model = client.models.retrieve(CHAT_MODEL)
    assert (model.id, model.owned_by) == (CHAT_MODEL, "nimble")
    health = httpx.get(url + "/health")
    assert (health.status_code, health.content) == (200, b"")
