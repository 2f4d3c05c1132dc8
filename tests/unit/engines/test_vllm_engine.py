"""The vLLM adapter against a stand-in process that speaks vLLM's command line and HTTP
protocol (tests/support/vllm_standin.py): startup, flags, requests, errors, aborts,
metrics, a crashing engine restarted or fatal, and a clean stop of the process group."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import os
import re
import signal
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from nimble.engines.config import EngineConfig
from nimble.engines.vllm import engine as vllm_server
from nimble.engines.vllm import supervisor
from nimble.engines.vllm.client import POOL_IDLE
from nimble.engines.vllm.engine import VllmEngine
from nimble.engines.vllm.supervisor import RestartPolicy
from nimble.engines.vllm.wire import (
    chat_logprobs,
    error_of,
    is_error,
    serve_args,
    template_shows_tools,
    vocab_size,
)
from nimble.errors import (
    ContextLengthExceeded,
    EngineError,
    InvalidRequest,
    ModelLoadError,
    Unavailable,
    UnsupportedParameter,
)
from nimble.models.spec import ModelSpec
from nimble.runtime.tools import FORMATS
from nimble.types import (
    ChatMessage,
    EmbedRequest,
    GenerateRequest,
    GenerationChunk,
    JsonSchemaConstraint,
    RankRequest,
    SamplingParams,
    Task,
    TokenizeRequest,
    ToolCallConstraint,
    ToolFunction,
)

STANDIN = Path(__file__).parents[2] / "support" / "vllm_standin.py"
COMMAND = (sys.executable, str(STANDIN), "serve")


@pytest.fixture
def log(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = tmp_path / "standin.jsonl"
    monkeypatch.setenv("STANDIN_LOG", str(path))
    return path


def entries(log: Path, key: str | None = None) -> list[dict[str, Any]]:
    if not log.exists():
        return []
    rows = [json.loads(line) for line in log.read_text().splitlines()]
    return [row for row in rows if key is None or key in row]


def bodies(log: Path, path: str) -> list[dict[str, Any]]:
    return [row["body"] for row in entries(log, "path") if row["path"] == path]


def spec(tmp_path: Path, **options: str) -> ModelSpec:
    folder = tmp_path / "model"
    folder.mkdir(exist_ok=True)
    (folder / "config.json").write_text('{"architectures": ["LlamaForCausalLM"]}')
    (folder / "model.safetensors").write_bytes(b"\x01" * 4096)
    (folder / "README.md").write_text("not a weight file")
    return ModelSpec(
        id="llama-test",
        engine="vllm",
        tasks=frozenset({Task.CHAT, Task.COMPLETION, Task.EMBEDDING}),
        weights=folder,
        source="hf://org/llama@main",
        options={"precision": "bf16", **options},
    )


async def until(check: Callable[[], Awaitable[bool]], timeout: float = 20.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not await check():
        assert asyncio.get_running_loop().time() < deadline, "condition never held"
        await asyncio.sleep(0.05)  # polling interval


def alive(pid: int) -> bool:
    """A process that exists and is not a zombie (an orphan's zombie waits for init)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


async def collect(engine: VllmEngine, request: GenerateRequest) -> list[GenerationChunk]:
    return [chunk async for chunk in engine.generate(request)]


def chat(text: str, **params: Any) -> GenerateRequest:
    return GenerateRequest("r1", SamplingParams(**params), messages=(ChatMessage("user", text),))


def engine_for(tmp_path: Path, **config: Any) -> VllmEngine:
    return VllmEngine(spec(tmp_path), EngineConfig(engine_command=COMMAND, **config))


@pytest.fixture
async def running(tmp_path: Path, log: Path) -> AsyncIterator[VllmEngine]:
    engine = VllmEngine(
        spec(
            tmp_path,
            tensor_parallel_size="2",
            context_length="64",
            enforce_eager="true",
            enable_prefix_caching="false",
            gpu_memory_utilization="0.85",
        ),
        EngineConfig(engine_command=COMMAND, max_running=4),
    )
    await engine.start()
    # start() passed one real generation (readiness depends on it); the tests below read
    # only the requests they make themselves, so the warm-up's line is dropped
    (warmup,) = bodies(log, "/v1/completions")
    assert warmup["max_tokens"] == 1
    lines = log.read_text().splitlines(keepends=True)
    log.write_text("".join(x for x in lines if json.loads(x).get("path") != "/v1/completions"))
    try:
        yield engine
    finally:
        await engine.stop()


# the command line


def flag_values(argv: list[str]) -> dict[str, str]:
    return {
        flag: argv[i + 1] if i + 1 < len(argv) and not argv[i + 1].startswith("--") else ""
        for i, flag in enumerate(argv)
        if flag.startswith("--")
    }


async def test_start_maps_the_profile_to_vllm_flags_and_hides_the_key(
    running: VllmEngine, log: Path
) -> None:
    (started,) = entries(log, "argv")
    argv = started["argv"]
    assert argv[:2] == ["serve", str(running.spec.weights)]
    flags = flag_values(argv)
    assert flags["--host"] == "127.0.0.1"
    assert flags["--served-model-name"] == "llama-test"
    assert flags["--dtype"] == "bfloat16"
    assert flags["--tensor-parallel-size"] == "2"
    assert flags["--max-model-len"] == "64"
    assert "--max-num-seqs" not in flags  # nimble's admission (max_running 4) is not vLLM's
    assert flags["--gpu-memory-utilization"] == "0.85"
    assert flags["--enforce-eager"] == "" and flags["--no-enable-prefix-caching"] == ""
    assert "--precision" not in argv and "--context-length" not in argv
    assert started["api_key_in_env"] and not any("api-key" in a or "api_key" in a for a in argv)
    info = running.info()
    assert (info.engine, info.engine_version, info.context_length) == ("vllm", "0.11.0+standin", 64)
    assert info.supports_logprobs
    names = {Path(f.path).name: f for f in info.files}
    assert set(names) == {"config.json", "model.safetensors"}
    import hashlib

    expected = hashlib.sha256(b"\x01" * 4096).hexdigest()
    assert (names["model.safetensors"].sha256, names["model.safetensors"].size_bytes) == (
        expected,
        4096,
    )
    assert await running.health()


def test_serve_args_precedence_and_names(tmp_path: Path) -> None:
    base = spec(tmp_path, max_model_len="8192", max_num_seqs="64", dtype="fp16", port="1")
    args = serve_args(base, context_length=2048, batch_size=None)
    assert flag_values(args) == {
        "--dtype": "float16",
        "--max-model-len": "2048",
        "--max-num-seqs": "64",  # the profile's
    }
    assert args.count("--dtype") == 1 and args.count("--max-model-len") == 1
    fp8 = spec(tmp_path, precision="fp8", trust_remote_code="True")
    assert flag_values(serve_args(fp8, None, 8)) == {
        "--quantization": "fp8",
        "--trust-remote-code": "",
        "--max-num-seqs": "8",  # the operator's max_batch_size
    }
    assert "--max-num-seqs" not in serve_args(spec(tmp_path), None, None)  # vLLM's own
    with pytest.raises(ModelLoadError, match="not a vLLM option"):
        serve_args(spec(tmp_path, **{"x; rm -rf": "1"}), None, 1)


def test_the_process_sees_only_the_gpus_nimble_placed_it_on(tmp_path: Path) -> None:
    config = EngineConfig(engine_command=COMMAND, max_running=4, max_batch_size=32)
    placed = dataclasses.replace(spec(tmp_path, max_num_seqs="1024"), devices=(2, 3))
    launch = VllmEngine(placed, config)._launch()
    assert launch.env["CUDA_VISIBLE_DEVICES"] == "2,3"
    assert launch.env["CUDA_DEVICE_ORDER"] == "PCI_BUS_ID"  # NVML's numbering
    assert flag_values(list(launch.argv))["--max-num-seqs"] == "32"  # the operator's wins
    alone = VllmEngine(spec(tmp_path), EngineConfig(engine_command=COMMAND))._launch()
    assert "CUDA_VISIBLE_DEVICES" not in alone.env  # not placed: every visible GPU


def test_vllm_keeps_idle_connections_longer_than_nimbles_pool(tmp_path: Path) -> None:
    """vLLM's keep-alive (5 s by default) against httpx's pool (5 s): a connection vLLM
    closes just as nimble reuses it fails that request. nimble's pool lets go first."""
    launch = VllmEngine(spec(tmp_path), EngineConfig(engine_command=COMMAND))._launch()
    assert float(launch.env["VLLM_HTTP_TIMEOUT_KEEP_ALIVE"]) >= 10 * POOL_IDLE


# requests


async def test_chat_streams_text_usage_and_logprobs(running: VllmEngine, log: Path) -> None:
    request = chat(
        "hello there",
        max_tokens=3,
        top_logprobs=2,
        presence_penalty=0.5,
        frequency_penalty=0.25,
        seed=2**40,
    )
    chunks = await collect(running, request)
    assert "".join(c.text for c in chunks) == "<|user|> hello there "
    assert [c.finish_reason for c in chunks if c.finish_reason] == ["length"]
    assert chunks[-1].usage is not None and not chunks[-1].text
    assert (chunks[-1].usage.prompt_tokens, chunks[-1].usage.completion_tokens) == (4, 3)
    with_logprobs = [c for c in chunks if c.logprobs]
    assert len(with_logprobs) == 3 and len(with_logprobs[0].logprobs[0].top) == 2
    assert with_logprobs[0].logprobs[0].bytes == tuple(b"<|user|> ")
    (sent,) = bodies(log, "/v1/chat/completions")
    assert sent["messages"] == [{"role": "user", "content": "hello there"}]
    assert sent["model"] == "llama-test" and sent["stream"] is True
    assert sent["stream_options"] == {"include_usage": True}
    assert (sent["presence_penalty"], sent["frequency_penalty"]) == (0.5, 0.25)
    assert (sent["logprobs"], sent["top_logprobs"], sent["seed"]) == (True, 2, 2**40)


async def test_structured_output_and_tool_calls_go_to_vllm_structured_outputs(
    running: VllmEngine, log: Path
) -> None:
    schema = {"type": "object", "properties": {"a": {"type": "integer"}}, "required": ["a"]}
    chunks = await collect(
        running,
        dataclasses.replace(chat("hi", max_tokens=20), constraint=JsonSchemaConstraint(schema)),
    )
    assert "".join(c.text for c in chunks) == '{"a": 0}'
    assert [c.finish_reason for c in chunks if c.finish_reason] == ["stop"]
    assert bodies(log, "/v1/chat/completions")[-1]["structured_outputs"] == {"json": schema}

    weather = ToolFunction("get_weather", "", schema)
    call = FORMATS["hermes"].call_schema((weather,), parallel=False)
    forced = ToolCallConstraint(call, "<tool_call>\n", "\n</tool_call>", "\n", max_calls=1)
    request = dataclasses.replace(chat("hi", max_tokens=30), tools=(weather,), constraint=forced)
    text = "".join(c.text for c in await collect(running, request))
    # vLLM writes the JSON, nimble the markers around it
    assert text == '<tool_call>\n{"name": "get_weather", "arguments": {"a": 0}}\n</tool_call>'
    sent = bodies(log, "/v1/chat/completions")[-1]
    assert sent["structured_outputs"] == {"json": call}
    assert sent["tool_choice"] == "none"  # vLLM renders the tools; nimble reads the calls
    assert sent["tools"][0]["function"]["name"] == "get_weather"

    lazy = dataclasses.replace(forced, lazy=True, max_calls=None)
    await collect(running, dataclasses.replace(request, constraint=lazy))
    tag = json.loads(
        bodies(log, "/v1/chat/completions")[-1]["structured_outputs"]["structural_tag"]
    )
    assert tag["triggers"] == ["<tool_call>"]
    assert tag["structures"] == [
        {"begin": "<tool_call>\n", "schema": call, "end": "\n</tool_call>"}
    ]


async def test_completion_with_stop_n_and_legacy_logprobs(running: VllmEngine, log: Path) -> None:
    request = GenerateRequest(
        "r2",
        SamplingParams(
            max_tokens=6, n=2, stop=("c",), seed=7, temperature=0.5, top_p=0.9, top_logprobs=2
        ),
        prompt="a b c d",
    )
    chunks = await collect(running, request)
    by_choice = {i: "".join(c.text for c in chunks if c.index == i) for i in (0, 1)}
    assert by_choice == {0: "a b ", 1: "a b "}
    assert [c.finish_reason for c in chunks if c.finish_reason] == ["stop", "stop"]
    first = next(c for c in chunks if c.logprobs).logprobs[0]
    assert (first.token, first.logprob) == ("a ", -0.5)
    assert [(t.token, t.logprob) for t in first.top] == [("a ", -0.5), ("alt0", -2.0)]
    (sent,) = bodies(log, "/v1/completions")
    assert sent["prompt"] == "a b c d" and sent["max_tokens"] == 6
    assert sent["seed"] == 7 and sent["temperature"] == 0.5 and sent["top_p"] == 0.9
    assert sent["stop"] == ["c"] and sent["n"] == 2 and sent["logprobs"] == 2


async def test_sampling_extensions_go_to_vllm_in_its_names(running: VllmEngine, log: Path) -> None:
    request = chat(
        "a b c",
        max_tokens=4,
        top_k=0,
        min_p=0.1,
        repetition_penalty=1.2,
        min_tokens=2,
        stop_token_ids=(7, 9),
        ignore_eos=True,
        include_stop_str_in_output=True,
        skip_special_tokens=False,
        logit_bias=((5, -100.0), (11, 2.5)),
        continuous_usage=True,
    )
    chunks = await collect(running, request)
    (sent,) = bodies(log, "/v1/chat/completions")
    assert {key: sent[key] for key in sent if key not in ("messages", "model")} == {
        "stream": True,
        "stream_options": {"include_usage": True, "continuous_usage_stats": True},
        "n": 1,
        "presence_penalty": 0.0,
        "frequency_penalty": 0.0,
        "max_tokens": 4,
        "top_k": -1,  # off, in the spelling every vLLM version takes
        "min_p": 0.1,
        "repetition_penalty": 1.2,
        "min_tokens": 2,
        "stop_token_ids": [7, 9],
        "ignore_eos": True,
        "include_stop_str_in_output": True,
        "skip_special_tokens": False,
        "logit_bias": {"5": -100.0, "11": 2.5},
    }
    # vLLM's usage on every chunk is progress; only the last, choice-less one is the total
    texts = [c for c in chunks if c.text]
    assert [c.progress.completion_tokens for c in texts if c.progress] == [1, 2, 3, 4]
    assert {c.progress.prompt_tokens for c in texts if c.progress} == {5}
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 4
    # unset: nothing of vLLM's own is sent (its defaults, or the model's generation_config)
    await collect(running, chat("a b c", max_tokens=2))
    plain = bodies(log, "/v1/chat/completions")[-1]
    assert not {"top_k", "min_p", "repetition_penalty", "logit_bias", "ignore_eos"} & set(plain)
    assert plain["stream_options"] == {"include_usage": True}


async def test_tokens_embeddings_and_cache_usage(running: VllmEngine, log: Path) -> None:
    assert await running.prompt_tokens(chat("one two three"), fits=0) == 5  # exact
    (counted,) = bodies(log, "/tokenize")
    assert counted["add_generation_prompt"] is True and counted["model"] == "llama-test"
    prompt = GenerateRequest("t", SamplingParams(), prompt="one two")
    assert await running.prompt_tokens(prompt, fits=0) == 2
    assert len(bodies(log, "/tokenize")) == 2
    # a bound that fits is answered without a /tokenize round trip, and bounds the count
    assert await running.prompt_tokens(prompt, fits=10_000) >= 2
    assert await running.prompt_tokens(chat("one two three"), fits=10_000) >= 5
    assert len(bodies(log, "/tokenize")) == 2
    result = await running.embed(EmbedRequest("e", ("a", "b c")))
    assert len(result.vectors) == 2 and len(result.vectors[0]) == 8
    assert result.prompt_tokens == 3
    assert bodies(log, "/v1/embeddings")[-1]["truncate_prompt_tokens"] == -1
    with pytest.raises(ContextLengthExceeded, match="maximum context length is 64"):
        await running.embed(EmbedRequest("e", ("w " * 70,), truncate="NONE"))
    with pytest.raises(UnsupportedParameter):
        await running.embed(EmbedRequest("e", ("a",), truncate="START"))
    assert await running.cache_usage() == 0.0


async def test_token_id_prompts_and_echo_go_to_vllm(running: VllmEngine, log: Path) -> None:
    """Ids go as a JSON array (counted without a /tokenize), `echo` and max_tokens 0 as
    they are; vLLM's echoed prompt comes back first, its first token's logprob null."""
    params = SamplingParams(max_tokens=0, top_logprobs=2)
    scoring = GenerateRequest("s", params, prompt=(5, 6, 7), echo=True)
    assert await running.prompt_tokens(scoring, fits=0) == 3
    assert bodies(log, "/tokenize") == []
    chunks = await collect(running, scoring)
    (echo,) = [c for c in chunks if c.text]
    assert echo.text == "t5 t6 t7 "
    assert [(t.token, t.logprob) for t in echo.logprobs] == [
        ("t5 ", None),
        ("t6 ", -1.1),
        ("t7 ", -1.2),
    ]
    assert [t.token for t in echo.logprobs[1].top] == ["t6 ", "alt0"]
    assert [c.finish_reason for c in chunks if c.finish_reason] == ["length"]
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 0
    (sent,) = bodies(log, "/v1/completions")
    assert (sent["prompt"], sent["echo"], sent["max_tokens"]) == ([5, 6, 7], True, 0)
    generated = GenerateRequest("g", SamplingParams(max_tokens=2), prompt=(5, 6), echo=True)
    text = "".join(c.text for c in await collect(running, generated))
    assert text == "t5 t6 " + "t5 t6 "


async def test_tokenize_and_detokenize_forward_to_vllm(running: VllmEngine, log: Path) -> None:
    tool = ToolFunction("get_time", "The time", {"type": "object"})
    conversation = dataclasses.replace(chat("what time"), tools=(tool,))
    request = TokenizeRequest(
        chat=conversation, add_generation_prompt=False, continue_final_message=True
    )
    tokens = await running.tokenize(request)
    assert tokens.pieces == ("<|user|>", "what", "time", "<|assistant|>")
    sent = bodies(log, "/tokenize")[-1]
    assert sent == {
        "model": "llama-test",
        "add_special_tokens": True,
        "messages": [{"role": "user", "content": "what time"}],
        "add_generation_prompt": False,
        "continue_final_message": True,
        "tools": [
            {
                "type": "function",
                "function": {
                    "name": "get_time",
                    "description": "The time",
                    "parameters": {"type": "object"},
                },
            }
        ],
        "return_token_strs": True,
    }
    prompt = await running.tokenize(TokenizeRequest(prompt="what now", add_special_tokens=False))
    assert bodies(log, "/tokenize")[-1]["prompt"] == "what now"
    assert await running.detokenize(prompt.ids) == "what now"
    assert bodies(log, "/detokenize")[-1] == {"model": "llama-test", "tokens": list(prompt.ids)}
    # the folder's config.json says no vocabulary size: vLLM refuses an unknown id itself
    assert running.vocab_size() is None
    with pytest.raises(InvalidRequest, match="out of vocabulary") as outside:
        await running.detokenize((32000,))
    assert outside.value.param == "tokens"


def test_the_vocabulary_size_comes_from_the_model_folder(tmp_path: Path) -> None:
    assert vocab_size(tmp_path) is None  # no config.json
    (tmp_path / "config.json").write_text('{"vocab_size": 49152}')
    assert vocab_size(tmp_path) == 49152
    (tmp_path / "config.json").write_text('{"text_config": {"vocab_size": 5}}')
    assert vocab_size(tmp_path) is None  # not said at the top: unknown, vLLM checks


@pytest.mark.parametrize("pooling", ["old", "new"])
async def test_a_reranker_scores_pairs_through_the_score_api(
    tmp_path: Path, log: Path, pooling: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("STANDIN_POOLING", pooling)  # vLLM 0.11's switch for raw logits, or 0.26's
    reranker = dataclasses.replace(
        spec(tmp_path, context_length="16"), id="rerank-test", tasks=frozenset({Task.RERANK})
    )
    engine = VllmEngine(reranker, EngineConfig(engine_command=COMMAND))
    await engine.start()  # its warm-up is a score request, not a generation
    try:
        assert not bodies(log, "/v1/completions") and len(bodies(log, "/v1/score")) == 1
        result = await engine.rank(RankRequest("r", "cats sleep", ("dogs bark", "cats sleep")))
        assert result.scores == pytest.approx((-0.02, 1.98))  # logits, not probabilities
        assert result.prompt_tokens == 14
        sent = bodies(log, "/v1/score")[-1]
        assert sent == {
            "model": "rerank-test",
            "text_1": "cats sleep",
            "text_2": ["dogs bark", "cats sleep"],
            "activation": False,
            "use_activation": False,
            "truncate_prompt_tokens": -1,
        }
        long = RankRequest("r", "q", ("w " * 20,), truncate="NONE")
        with pytest.raises(ContextLengthExceeded, match="maximum context length is 16") as cut:
            await engine.rank(long)
        assert cut.value.param == "passages"
    finally:
        await engine.stop()


async def test_the_api_key_guards_vllm(running: VllmEngine) -> None:
    base = f"http://127.0.0.1:{running._client.port}"
    async with httpx.AsyncClient(base_url=base, trust_env=False) as client:
        assert (await client.get("/v1/models")).status_code == 401
        assert (await client.get("/health")).status_code == 200


async def test_vllm_errors_map_to_nimble_errors(running: VllmEngine) -> None:
    with pytest.raises(ContextLengthExceeded, match="maximum context length is 64 tokens") as ctx:
        await collect(running, chat("word " * 80, max_tokens=4))
    assert ctx.value.param == "messages"
    with pytest.raises(InvalidRequest, match="greater than max allowed: 20") as bad:
        await collect(running, chat("hi", max_tokens=2, top_logprobs=25))
    assert type(bad.value) is InvalidRequest


def test_error_bodies_of_old_and_new_vllm() -> None:
    old = {"object": "error", "message": "bad n", "type": "BadRequestError", "code": 400}
    new = {"error": {"message": "bad n", "type": "BadRequestError", "param": "n", "code": 400}}
    assert type(error_of(400, old, "prompt")) is InvalidRequest
    assert error_of(400, new, "prompt").param == "n"
    long = {
        "error": {
            "message": "The decoder prompt (length 9000) is longer than the maximum "
            "model length of 4096.",
            "code": 400,
        }
    }
    assert isinstance(error_of(400, long, "prompt"), ContextLengthExceeded)
    # errors inside a 200 stream carry their own code
    assert is_error(new) and is_error(old) and not is_error({"choices": []})
    assert type(error_of(200, new, "prompt")) is InvalidRequest
    internal = {"error": {"message": "boom", "type": "InternalServerError", "code": 500}}
    assert isinstance(error_of(200, internal, "prompt"), EngineError)
    assert isinstance(error_of(503, {"message": "draining"}, "prompt"), Unavailable)
    assert isinstance(error_of(500, "not json", "prompt"), EngineError)
    assert chat_logprobs({"text": "x", "logprobs": None}) == {"text": "x", "logprobs": None}


async def test_closing_the_stream_aborts_the_request_in_vllm(
    tmp_path: Path, log: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("STANDIN_TOKEN_DELAY", "0.05")
    engine = engine_for(tmp_path)
    await engine.start()
    try:
        stream = engine.generate(chat("go", max_tokens=500))
        for _ in range(3):
            await anext(stream)
        assert await engine.cache_usage() == 0.25  # one request running
        await stream.aclose()

        async def disconnected() -> bool:
            return bool(entries(log, "event")) and entries(log, "event")[0]["event"] == "disconnect"

        await until(disconnected)
        await until(lambda: _equals(engine.cache_usage(), 0.0))
    finally:
        await engine.stop()


async def _equals(value: Awaitable[float | None], expected: float) -> bool:
    return await value == expected


# starting


async def test_startup_polls_health_and_reports_progress(
    tmp_path: Path, log: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv("STANDIN_STARTUP_DELAY", "1.5")
    monkeypatch.setattr(supervisor, "PROGRESS_EVERY", 0.4)
    engine = engine_for(tmp_path)
    try:
        with caplog.at_level(logging.INFO, logger="nimble.engines.vllm"):
            await engine.start()
        assert await engine.health()
        # with what the server said last (vLLM's own progress: compiling, capturing graphs)
        # (a progress bar redrawn with \r: its state as last drawn)
        note = r"vllm for llama-test: still loading \(\d+ s\): Capturing CUDA graphs"
        assert re.search(note + r" \(simulated\): 100%\|#+\|\n", caplog.text)
    finally:
        await engine.stop()


async def test_an_engine_that_exits_while_starting(
    tmp_path: Path, log: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("STANDIN_EXIT_AT_START", "3")
    engine = engine_for(tmp_path)
    with pytest.raises(ModelLoadError) as info:
        await engine.start()
    message = str(info.value)
    assert message.startswith(str(engine.spec.weights))
    # the cause is 60 lines above the end of vLLM's output (as on a real GPU): named first
    assert (
        "exited with code 3 while starting; first error in its output: "
        "torch.OutOfMemoryError: CUDA out of memory (simulated)" in message
    )
    assert message.endswith(
        "RuntimeError: Engine core initialization failed. See root cause above."
    )
    assert not await engine.health()
    await engine.stop()


async def test_an_engine_that_never_gets_healthy_is_killed(
    tmp_path: Path, log: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("STANDIN_STARTUP_DELAY", "60")
    monkeypatch.setenv("STANDIN_WORKER", "1")
    # long enough for the stand-in to import its web stack, print and start its worker
    engine = engine_for(tmp_path, engine_start_timeout=3.0)
    with pytest.raises(ModelLoadError, match="not healthy after 3 s") as info:
        await engine.start()
    assert "serving" in str(info.value)  # the last output lines
    ((_started,), (worker,)) = entries(log, "argv"), entries(log, "worker")
    pid = worker["worker"]

    async def gone() -> bool:  # SIGKILL is delivered, not awaited: the worker ends soon after
        return not alive(pid)

    await until(gone)
    await engine.stop()


async def test_vllm_not_installed(tmp_path: Path) -> None:
    engine = VllmEngine(
        spec(tmp_path), EngineConfig(engine_command=("no-such-vllm-executable", "serve"))
    )
    with pytest.raises(ModelLoadError, match=r"not found: pip install 'nimble\[gpu\]'"):
        await engine.start()
    await engine.stop()


# supervision


async def test_a_crashed_engine_is_restarted(
    tmp_path: Path, log: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("STANDIN_CRASH_AFTER_TOKENS", "3")
    monkeypatch.setenv("STANDIN_WORKER", "1")
    engine = engine_for(tmp_path)
    await engine.start()
    try:
        first_pid = engine._process.pid
        with pytest.raises(EngineError, match="connection lost"):
            await collect(engine, chat("crash me", max_tokens=10))
        await until(lambda: _not(engine.health()))
        with pytest.raises(Unavailable, match="restarting"):
            await engine.prompt_tokens(chat("x"), fits=0)
        with pytest.raises(Unavailable, match="restarting"):
            await collect(engine, chat("x"))
        await until(engine.health)
        assert engine._process.pid not in (None, first_pid)
        chunks = await collect(engine, chat("again", max_tokens=2))
        assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 2
        assert len(entries(log, "argv")) == 2
        first_worker = entries(log, "worker")[0]["worker"]
        assert not alive(first_worker)  # swept before the restart
    finally:
        await engine.stop()


async def _not(value: Awaitable[bool]) -> bool:
    return not await value


async def test_a_crashed_engine_is_fatal_with_the_fail_policy(
    tmp_path: Path, log: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("STANDIN_CRASH_AFTER_TOKENS", "1")
    fatal: list[str] = []
    engine = engine_for(tmp_path, engine_restart="fail", on_fatal=fatal.append)
    await engine.start()
    try:
        with pytest.raises(EngineError):
            await collect(engine, chat("crash", max_tokens=5))

        async def told() -> bool:
            return bool(fatal)

        await until(told)
        assert fatal[0].startswith("vllm for llama-test exited with code 1")
        assert not await engine.health()
        with pytest.raises(Unavailable, match="not restarted"):
            await collect(engine, chat("x"))
        assert await engine.cache_usage() is None
        assert len(entries(log, "argv")) == 1  # never restarted
    finally:
        await engine.stop()


async def test_too_many_restarts_are_fatal(
    tmp_path: Path, log: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    policy = RestartPolicy(max_restarts=2, first_delay=0.05, max_delay=0.1)
    monkeypatch.setattr(vllm_server, "RESTARTS", policy)
    fatal: list[str] = []
    engine = engine_for(tmp_path, on_fatal=fatal.append)
    await engine.start()
    try:
        monkeypatch.setenv("STANDIN_EXIT_AT_START", "5")  # every restart fails
        pid = engine._process.pid
        assert pid is not None
        os.kill(pid, signal.SIGKILL)  # the OOM killer, say

        async def told() -> bool:
            return bool(fatal)

        await until(told)
        assert "restart failed" in fatal[0] and "exited with code 5 while starting" in fatal[0]
        assert len(entries(log, "argv")) == 3  # the start and two restarts
        assert not await engine.health()
    finally:
        await engine.stop()


async def test_stop_ends_the_process_group(
    tmp_path: Path, log: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("STANDIN_WORKER", "1")
    engine = engine_for(tmp_path)
    await engine.start()
    pid = engine._process.pid
    assert pid is not None
    (worker,) = entries(log, "worker")
    assert alive(pid) and alive(worker["worker"])
    await engine.stop()
    assert not alive(pid) and not alive(worker["worker"])
    assert not await engine.health()
    await engine.stop()  # twice is fine


async def test_output_past_the_line_limit_keeps_flowing() -> None:
    script = "print('x' * (3 << 20)); print('after', flush=True); import time; time.sleep(60)"

    async def saw_after() -> bool:
        return "after" in process.tail()

    async def nothing() -> None:
        return None

    process = supervisor.Supervisor(
        "printer",
        "test",
        lambda: supervisor.Launch([sys.executable, "-c", script], {}),
        saw_after,
        nothing,
        log=logging.getLogger("nimble.engines.test"),
        show_output=False,
        start_timeout=20.0,
        policy=RestartPolicy(restart=False),
        on_fatal=None,
        install_hint="",
    )
    await process.start()
    try:
        assert process.up and process.tail().endswith("after")
    finally:
        await process.stop()
    assert not process.up and process.state is supervisor.State.STOPPED


def test_the_folder_template_says_whether_it_shows_tools(tmp_path: Path) -> None:
    folder = spec(tmp_path).weights
    assert not template_shows_tools(folder)
    config = folder / "tokenizer_config.json"
    config.write_text(json.dumps({"chat_template": "{{ messages }}"}))
    assert not template_shows_tools(folder)
    named = [{"name": "default", "template": "{% if tools %}{{ tools }}{% endif %}"}]
    config.write_text(json.dumps({"chat_template": named}))
    assert template_shows_tools(folder)
    config.unlink()
    (folder / "chat_template.jinja").write_text("{% for tool in tools %}{% endfor %}")
    assert template_shows_tools(folder)
