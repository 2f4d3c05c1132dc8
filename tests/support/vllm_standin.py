"""A stand-in for `vllm serve`: the same command line and the same OpenAI-compatible HTTP
protocol (health, version, models with max_model_len, completions and chat completions
streamed or not, tokenize and detokenize, embeddings, scores of text pairs, Prometheus
metrics with vLLM's names, vLLM's error bodies, the API key from VLLM_API_KEY), with
deterministic text: the prompt's words, echoed.

Run as `python vllm_standin.py serve MODEL --port P ...`. Knobs (environment):
STANDIN_LOG (append JSON lines: the argv and CUDA_VISIBLE_DEVICES, each request body,
disconnects),
STANDIN_STARTUP_DELAY (seconds before the port opens), STANDIN_EXIT_AT_START (exit code,
before listening), STANDIN_CRASH_AFTER_TOKENS (the process dies mid-stream),
STANDIN_TOKEN_DELAY (seconds between streamed tokens), STANDIN_POOLING ("new": the score
API's activation switch as vLLM 0.26 names it), STANDIN_ERROR_SHAPE ("new": errors
as `{"error": {...}}` like recent vLLM; otherwise the older flat `{"object": "error", ...}`),
STANDIN_WORKER (1: start a worker child in the process group, as tensor-parallel vLLM does;
its pid is logged).

LoRA as vLLM 0.11 serves it: `--enable-lora`, `--max-loras`, `--max-lora-rank` (vLLM's
choices), `--lora-modules` (one flag, each value JSON `{"name", "path", "base_model_name"}`
or `name=path`; a static adapter that does not load stops the start, as in vLLM),
`/v1/load_lora_adapter` and `/v1/unload_lora_adapter` only with
VLLM_ALLOW_RUNTIME_LORA_UPDATING (vLLM's answers: plain text on success, 400 for a name
taken or an adapter that does not fit, 404 for no adapter at the path or no such name),
adapters in `/v1/models` with `parent`. A request whose `model` is an adapter is answered
with `[<adapter name>|<sha256 of its weights as loaded, 8 hex>] ` first, then as the base.
Each unload is logged with the adapter's requests running at that moment.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import os
import re
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from typing import Any

import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, PlainTextResponse, StreamingResponse

from nimble.engines.fake.constrained import instance

VERSION = "0.11.0+standin"
VOCAB_SIZE = 32000
LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)
# the layers of a Llama that vLLM applies LoRA to (unpacked names, as PEFT writes them)
LORA_TARGETS = {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}


def note(entry: dict[str, Any]) -> None:
    path = os.environ.get("STANDIN_LOG")
    if path:
        with open(path, "a") as file:
            file.write(json.dumps(entry) + "\n")


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="vllm")
    parser.add_argument("command", choices=["serve"])
    parser.add_argument("model")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--served-model-name", default=None)
    parser.add_argument("--max-model-len", type=int, default=2048)
    parser.add_argument("--max-num-seqs", type=int, default=256)
    parser.add_argument("--max-logprobs", type=int, default=20)
    parser.add_argument("--api-key", default=None)
    parser.add_argument("--enable-lora", action="store_true")
    parser.add_argument("--max-loras", type=int, default=1)
    parser.add_argument("--max-lora-rank", type=int, default=16, choices=LORA_RANKS)
    parser.add_argument("--lora-modules", nargs="+", default=None)
    args, _unknown = parser.parse_known_args(argv)
    return args


def words_of(body: dict[str, Any]) -> list[str]:
    if "messages" in body:
        text = " ".join(str(m.get("content", "")) for m in body["messages"])
        return ["<|user|>", *text.split(), "<|assistant|>"]
    prompt = body.get("prompt", "")
    if isinstance(prompt, list) and all(isinstance(token, int) for token in prompt):
        return [f"t{token}" for token in prompt]  # token ids: word `t<id>` each
    return (prompt if isinstance(prompt, str) else " ".join(prompt)).split()


def echoed(prompt: list[str], logprobs: int | None) -> tuple[str, dict[str, Any] | None]:
    """`echo`: the prompt's text, and with `logprobs` its tokens' (vLLM's prompt logprobs:
    the first token's logprob and alternatives are null)."""
    tokens = [f"{word} " for word in prompt]
    if logprobs is None:
        return "".join(tokens), None
    values = [None, *(-1.0 - i / 10 for i in range(1, len(tokens)))]
    tops = [None] + [
        {token: value, **{f"alt{k}": -5.0 - k for k in range(logprobs - 1)}}
        for token, value in zip(tokens[1:], values[1:], strict=True)
    ]
    offsets = [len("".join(tokens[:i])) for i in range(len(tokens))]
    shape = {"tokens": tokens, "token_logprobs": values, "top_logprobs": tops}
    return "".join(tokens), {**shape, "text_offset": offsets}


def lora_modules(values: list[str] | None) -> list[dict[str, Any]]:
    """vLLM's LoRAParserAction: `name=path`, else JSON."""
    modules = []
    for item in values or []:
        if "=" in item and "," not in item:
            name, path = item.split("=")
            modules.append({"name": name, "path": path})
        else:
            modules.append(json.loads(item))
    return modules


def lora_refusal(path: str, max_rank: int) -> tuple[int, str] | None:
    """What vLLM says when an adapter folder does not load (None: it loads)."""
    config_file = os.path.join(path, "adapter_config.json")
    if not os.path.isfile(config_file):
        return 404, f"Loading lora {path} failed: No adapter found for {path}"
    with open(config_file) as file:
        config = json.load(file)
    if config.get("use_dora"):
        return 400, "vLLM does not yet support DoRA."
    if int(config.get("r", 8)) > max_rank:
        return 400, f"LoRA rank {config['r']} is greater than max_lora_rank {max_rank}."
    targets = config.get("target_modules") or []
    unexpected = sorted(set(targets) - LORA_TARGETS)
    if unexpected:
        return 400, (
            f"While loading {path}, expected target modules in {sorted(LORA_TARGETS)} but "
            f"received {unexpected}. Please verify that the loaded LoRA module is correct"
        )
    return None


def weights_mark(path: str) -> str:
    weights = os.path.join(path, "adapter_model.safetensors")
    if not os.path.isfile(weights):
        return "nofile"
    with open(weights, "rb") as file:
        return hashlib.sha256(file.read()).hexdigest()[:8]


def error(status: int, message: str, kind: str = "BadRequestError") -> JSONResponse:
    body: dict[str, Any] = {"message": message, "type": kind, "param": None, "code": status}
    if os.environ.get("STANDIN_ERROR_SHAPE") == "new":
        body = {"error": body}
    else:
        body = {"object": "error", **body}
    return JSONResponse(body, status_code=status)


def build(args: argparse.Namespace) -> FastAPI:
    app = FastAPI()
    name = args.served_model_name or args.model
    key = os.environ.get("VLLM_API_KEY") or args.api_key
    state = {"running": 0}
    # adapters by name: path, parent, the weights' mark as loaded, requests running
    loras: dict[str, dict[str, Any]] = {}
    for module in lora_modules(args.lora_modules):
        refused = lora_refusal(module["path"], args.max_lora_rank)
        if not args.enable_lora or refused is not None:
            raise SystemExit(f"ValueError: {refused[1] if refused else 'LoRA is not enabled'}")
        loras[module["name"]] = {
            "path": module["path"],
            "parent": module.get("base_model_name") or name,
            "mark": weights_mark(module["path"]),
            "running": 0,
        }
    crash_after = int(os.environ.get("STANDIN_CRASH_AFTER_TOKENS", "0"))
    token_delay = float(os.environ.get("STANDIN_TOKEN_DELAY", "0"))

    @app.middleware("http")
    async def api_key(request: Request, call_next: Any) -> Any:
        denied = request.headers.get("authorization") != f"Bearer {key}"
        if key and request.url.path.startswith("/v1") and denied:
            return JSONResponse({"error": "Unauthorized"}, status_code=401)
        return await call_next(request)

    @app.get("/health")
    async def health() -> PlainTextResponse:
        return PlainTextResponse("")

    @app.get("/version")
    async def version() -> dict[str, str]:
        return {"version": VERSION}

    @app.get("/v1/models")
    async def models() -> dict[str, Any]:
        entry = {
            "id": name,
            "object": "model",
            "root": args.model,
            "max_model_len": args.max_model_len,
            "owned_by": "vllm",
        }
        cards = [
            {"id": n, "object": "model", "root": lora["path"], "parent": lora["parent"]}
            for n, lora in loras.items()
        ]
        return {"object": "list", "data": [entry, *cards]}

    if os.environ.get("VLLM_ALLOW_RUNTIME_LORA_UPDATING", "0").strip().lower() in ("1", "true"):

        @app.post("/v1/load_lora_adapter")
        async def load_lora_adapter(request: Request) -> Any:
            body = await request.json()
            note({"path": "/v1/load_lora_adapter", "body": body})
            lora_name, path = body.get("lora_name"), body.get("lora_path")
            if not lora_name or not path:
                return error(400, "Both 'lora_name' and 'lora_path' must be provided.")
            if lora_name in loras:
                return error(400, f"The lora adapter '{lora_name}' has already been loaded.")
            refused = lora_refusal(path, args.max_lora_rank) if args.enable_lora else None
            if not args.enable_lora:
                refused = (400, "LoRA is not enabled")
            if refused is not None:
                status, message = refused
                return error(
                    status, message, "NotFoundError" if status == 404 else "BadRequestError"
                )
            loras[lora_name] = {
                "path": path,
                "parent": name,
                "mark": weights_mark(path),
                "running": 0,
            }
            return PlainTextResponse(f"Success: LoRA adapter '{lora_name}' added successfully.")

        @app.post("/v1/unload_lora_adapter")
        async def unload_lora_adapter(request: Request) -> Any:
            body = await request.json()
            lora_name = body.get("lora_name")
            lora = loras.pop(lora_name, None)
            note(
                {
                    "path": "/v1/unload_lora_adapter",
                    "body": body,
                    "running": (lora or {}).get("running"),
                }
            )
            if lora is None:
                return error(
                    404, f"The lora adapter '{lora_name}' cannot be found.", "NotFoundError"
                )
            return PlainTextResponse(f"Success: LoRA adapter '{lora_name}' removed successfully.")

    @app.get("/metrics")
    async def metrics() -> PlainTextResponse:
        label = f'{{model_name="{name}"}}'
        lines = [
            "# TYPE vllm:num_requests_running gauge",
            f"vllm:num_requests_running{label} {state['running']}",
            "# TYPE vllm:num_requests_waiting gauge",
            f"vllm:num_requests_waiting{label} 0",
            "# TYPE vllm:kv_cache_usage_perc gauge",
            f"vllm:kv_cache_usage_perc{label} {min(1.0, 0.25 * state['running'])}",
        ]
        return PlainTextResponse("\n".join(lines) + "\n")

    vocabulary: dict[str, int] = {}  # word -> id, in the order words are first seen

    @app.post("/tokenize")
    async def tokenize(request: Request) -> Any:
        """One token per word (and the template's two around messages), as generation
        counts them; ids in the order words are first seen."""
        body = await request.json()
        note({"path": "/tokenize", "body": body})
        words = words_of(body)
        tokens = [vocabulary.setdefault(word, len(vocabulary)) for word in words]
        answer = {"count": len(tokens), "max_model_len": args.max_model_len, "tokens": tokens}
        answer["token_strs"] = words if body.get("return_token_strs") else None
        return answer

    @app.post("/detokenize")
    async def detokenize(request: Request) -> Any:
        body = await request.json()
        note({"path": "/detokenize", "body": body})
        words = {token: word for word, token in vocabulary.items()}
        outside = [t for t in body["tokens"] if t >= VOCAB_SIZE]
        if outside:
            return error(400, f"Token id {max(outside)} is out of vocabulary")
        return {"prompt": " ".join(words.get(t, f"<{t}>") for t in body["tokens"])}

    @app.post("/v1/embeddings")
    async def embeddings(request: Request) -> Any:
        body = await request.json()
        note({"path": "/v1/embeddings", "body": body})
        inputs = body["input"] if isinstance(body["input"], list) else [body["input"]]
        if any(isinstance(i, int) for i in inputs):
            inputs = [inputs]  # one token array
        inputs = [i if isinstance(i, str) else " ".join(f"t{t}" for t in i) for i in inputs]
        longest = max(len(text.split()) for text in inputs)
        if body.get("truncate_prompt_tokens") is None and longest > args.max_model_len:
            return error(
                400,
                f"This model's maximum context length is {args.max_model_len} tokens. "
                f"However, you requested {longest} tokens in the input for embedding "
                "generation. Please reduce the length of the input.",
            )
        data = []
        for i, text in enumerate(inputs):
            digest = hashlib.sha256(text.encode()).digest()
            data.append(
                {"object": "embedding", "index": i, "embedding": [b / 255 for b in digest[:8]]}
            )
        used = sum(len(t.split()) for t in inputs)
        return {
            "object": "list",
            "data": data,
            "model": name,
            "usage": {"prompt_tokens": used, "total_tokens": used},
        }

    @app.post("/v1/score")
    async def score(request: Request) -> Any:
        """A cross-encoder's logits: words the pair shares, minus a little per word; with
        the activation left on, their sigmoid (as vLLM does for a one-label classifier). The
        switch is `activation` (vLLM 0.10-0.11), or with STANDIN_POOLING=new `use_activation`
        (vLLM 0.26, which ignores `activation` as an unknown field)."""
        body = await request.json()
        note({"path": "/v1/score", "body": body})
        query = body["text_1"]
        documents = body["text_2"] if isinstance(body["text_2"], list) else [body["text_2"]]
        lengths = [len(query.split()) + len(doc.split()) + 3 for doc in documents]
        if body.get("truncate_prompt_tokens") is None and max(lengths) > args.max_model_len:
            return error(
                400,
                f"This model's maximum context length is {args.max_model_len} tokens. "
                f"However, you requested {max(lengths)} tokens in the input for score. "
                "Please reduce the length of the input.",
            )
        data = []
        switch = "use_activation" if os.environ.get("STANDIN_POOLING") == "new" else "activation"
        for i, doc in enumerate(documents):
            logit = len(set(query.split()) & set(doc.split())) - 0.01 * len(doc.split())
            value = logit if body.get(switch) is False else 1 / (1 + 2.718281828**-logit)
            data.append({"index": i, "object": "score", "score": value})
        used = sum(min(n, args.max_model_len) for n in lengths)
        return {
            "object": "list",
            "data": data,
            "model": name,
            "usage": {"prompt_tokens": used, "total_tokens": used},
        }

    async def generate(request: Request, chat: bool) -> Any:
        body = await request.json()
        note({"path": request.url.path, "body": body})
        lora = loras.get(body.get("model"))
        if body.get("model") != name and lora is None:
            return error(404, f"The model `{body.get('model')}` does not exist.", "NotFoundError")
        prompt = words_of(body)
        if lora is not None:  # which adapter answered, as loaded
            prompt = [f"[{body['model']}|{lora['mark']}]", *prompt]
        max_tokens = 16 if body.get("max_tokens") is None else int(body["max_tokens"])
        if max_tokens == 0 and not body.get("echo"):
            return error(400, "max_tokens must be at least 1, got 0.")
        if len(prompt) + max_tokens > args.max_model_len:
            return error(
                400,
                f"This model's maximum context length is {args.max_model_len} tokens. However, "
                f"you requested {len(prompt) + max_tokens} tokens ({len(prompt)} in the "
                f"messages, {max_tokens} in the completion). Please reduce the length of the "
                "messages or completion.",
            )
        wanted = body.get("top_logprobs") if chat else body.get("logprobs")
        if isinstance(wanted, int) and wanted > args.max_logprobs:
            return error(
                400,
                f"Requested sample logprobs of {wanted}, which is greater than max allowed: "
                f"{args.max_logprobs}",
            )
        n = int(body.get("n") or 1)
        stops = body.get("stop") or []
        pieces = [f"{prompt[i % len(prompt)] if prompt else 'x'} " for i in range(max_tokens)]
        if chat and body.get("tools") is not None and body.get("tool_choice") != "none":
            return error(400, '"auto" tool choice requires --enable-auto-tool-choice')
        structured = body.get("structured_outputs")
        if structured is not None:  # vLLM's structured outputs: the simplest valid text
            if "json" in structured:
                forced = json.dumps(instance(structured["json"], structured["json"]))
            elif "choice" in structured:
                forced = structured["choice"][0]
            elif "structural_tag" in structured:
                json.loads(structured["structural_tag"])  # free text until a trigger
                forced = None
            else:
                return error(400, f"the stand-in cannot follow {sorted(structured)}")
            if forced is not None:
                pieces = re.findall(r"\S+\s*", forced)[:max_tokens]
        natural = "length" if len(pieces) == max_tokens else "stop"  # the text came to its end
        kind = "chat.completion" if chat else "text_completion"
        created = int(time.time())

        def choice(index: int, text: str, finish: str | None) -> dict[str, Any]:
            item: dict[str, Any] = {"index": index, "finish_reason": finish}
            if chat and body.get("stream"):
                item["delta"] = {"content": text} if text else {}
            elif chat:
                item["message"] = {"role": "assistant", "content": text}
            else:
                item["text"] = text
            if chat and body.get("logprobs") and text:
                top = int(body.get("top_logprobs") or 0)
                alts = [{"token": text, "logprob": -0.5, "bytes": list(text.encode())}]
                alts += [
                    {"token": f"alt{k}", "logprob": -2.0 - k, "bytes": None} for k in range(top - 1)
                ]
                item["logprobs"] = {
                    "content": [
                        {
                            "token": text,
                            "logprob": -0.5,
                            "bytes": list(text.encode()),
                            "top_logprobs": alts[:top],
                        }
                    ]
                }
            elif not chat and body.get("logprobs") is not None and text:
                # OpenAI's legacy completions shape, as vLLM sends it: the sampled token
                # and up to `logprobs` alternatives in a {token: logprob} map, unordered
                top = int(body["logprobs"])
                alts = {f"alt{k}": -2.0 - k for k in range(top)}
                alts[text] = -0.5
                item["logprobs"] = {
                    "text_offset": [0],
                    "token_logprobs": [-0.5],
                    "tokens": [text],
                    "top_logprobs": [alts],
                }
            return item

        def finished(text: str) -> tuple[str, str]:
            for stop in stops:
                if stop in text:
                    return text[: text.index(stop)], "stop"
            return text, "length"  # no stop string: the caller decides

        usage = {
            "prompt_tokens": len(prompt),
            "completion_tokens": n * max_tokens,
            "total_tokens": len(prompt) + n * max_tokens,
        }
        if not body.get("stream"):
            choices = []
            for index in range(n):
                text, why = finished("".join(pieces))
                choices.append(choice(index, text, natural if why == "length" else why))
            return {
                "id": "cmpl-standin",
                "object": kind,
                "created": created,
                "model": name,
                "choices": choices,
                "usage": usage,
            }

        options = body.get("stream_options") or {}
        continuous = bool(options.get("include_usage") and options.get("continuous_usage_stats"))

        async def events() -> AsyncIterator[str]:
            state["running"] += 1
            if lora is not None:
                lora["running"] += 1
            sent = 0
            try:
                for index in range(n):
                    text, why = "", "length"
                    if not chat and body.get("echo"):  # the prompt first (scored)
                        said, scores = echoed(prompt, body.get("logprobs"))
                        item = {"index": index, "text": said, "logprobs": scores}
                        echo = {"id": "cmpl-standin", "object": kind, "created": created}
                        echo.update(model=name, choices=[{**item, "finish_reason": None}])
                        yield f"data: {json.dumps(echo)}\n\n"
                    if chat:  # vLLM opens each choice with the role and no content
                        opening = {
                            "id": "cmpl-standin",
                            "object": kind + ".chunk",
                            "created": created,
                            "model": name,
                            "choices": [
                                {
                                    "index": index,
                                    "delta": {"role": "assistant", "content": ""},
                                    "logprobs": None,
                                    "finish_reason": None,
                                }
                            ],
                        }
                        yield f"data: {json.dumps(opening)}\n\n"
                    for piece in pieces:
                        if crash_after and sent >= crash_after:
                            note({"event": "crash"})
                            os._exit(1)
                        cut, why = finished(text + piece)
                        if why == "stop":
                            piece = cut[len(text) :]
                            if piece:
                                chunk = {
                                    "id": "cmpl-standin",
                                    "object": kind + ".chunk",
                                    "created": created,
                                    "model": name,
                                    "choices": [choice(index, piece, None)],
                                }
                                yield f"data: {json.dumps(chunk)}\n\n"
                            break
                        text += piece
                        sent += 1
                        chunk = {
                            "id": "cmpl-standin",
                            "object": kind + ".chunk",
                            "created": created,
                            "model": name,
                            "choices": [choice(index, piece, None)],
                        }
                        if continuous:  # vLLM: this choice's usage so far, on every chunk
                            done = len(text.split())
                            chunk["usage"] = {
                                "prompt_tokens": len(prompt),
                                "completion_tokens": done,
                                "total_tokens": len(prompt) + done,
                            }
                        yield f"data: {json.dumps(chunk)}\n\n"
                        if token_delay:
                            await asyncio.sleep(token_delay)
                    else:
                        why = natural
                    last = {
                        "id": "cmpl-standin",
                        "object": kind + ".chunk",
                        "created": created,
                        "model": name,
                        "choices": [choice(index, "", why)],
                    }
                    yield f"data: {json.dumps(last)}\n\n"
                if (body.get("stream_options") or {}).get("include_usage"):
                    tail = {
                        "id": "cmpl-standin",
                        "object": kind + ".chunk",
                        "created": created,
                        "model": name,
                        "choices": [],
                        "usage": usage,
                    }
                    yield f"data: {json.dumps(tail)}\n\n"
                yield "data: [DONE]\n\n"
            except asyncio.CancelledError:
                note({"event": "disconnect", "sent": sent})
                raise
            finally:
                state["running"] -= 1
                if lora is not None:
                    lora["running"] -= 1

        return StreamingResponse(events(), media_type="text/event-stream")

    @app.post("/v1/completions")
    async def completions(request: Request) -> Any:
        return await generate(request, chat=False)

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request) -> Any:
        return await generate(request, chat=True)

    return app


def fail_as_vllm_does() -> None:
    """What vLLM 0.26 printed when its engine core failed to start (seen on an H200): the
    cause in the engine core's traceback, then 60 lines of the API server's own traceback
    that ends in "see root cause above"."""
    core, api = "(EngineCore pid=837) ERROR 12-04 18:19:41 [core.py:1330]", "(APIServer pid=588)"
    print(f"{core} EngineCore failed to start.")
    print(f"{core} Traceback (most recent call last):")
    print(f'{core}   File "/vllm/v1/worker/gpu_worker.py", line 431, in load_model')
    print(f"{core} torch.OutOfMemoryError: CUDA out of memory (simulated). Tried to allocate 2 GiB")
    print(f"{api} Traceback (most recent call last):")
    for frame in range(30):
        print(f'{api}   File "/vllm/entrypoints/frame_{frame}.py", line {frame + 1}, in step')
        print(f"{api}     step_{frame}()")
    print(f"{api}     raise RuntimeError(")
    print(
        f"{api} RuntimeError: Engine core initialization failed. See root cause above.", flush=True
    )


def main() -> None:
    args = parse(sys.argv[1:])
    devices = os.environ.get("CUDA_VISIBLE_DEVICES")  # the GPUs nimble placed it on
    note(
        {
            "argv": sys.argv[1:],
            "api_key_in_env": bool(os.environ.get("VLLM_API_KEY")),
            "runtime_lora": os.environ.get("VLLM_ALLOW_RUNTIME_LORA_UPDATING"),
            "cuda_visible_devices": devices,
        }
    )
    print(f"INFO standin vllm {VERSION} serving {args.model}", flush=True)
    exit_code = int(os.environ.get("STANDIN_EXIT_AT_START", "0"))
    if exit_code:
        fail_as_vllm_does()
        sys.exit(exit_code)
    if os.environ.get("STANDIN_WORKER") == "1":  # a worker in the same process group
        worker = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(300)"])
        note({"worker": worker.pid})
    delay = float(os.environ.get("STANDIN_STARTUP_DELAY", "0"))
    if delay:  # a progress bar, redrawn with \r as vLLM's are
        print("Capturing CUDA graphs (simulated): 50%|#####     |\r", end="")
        print("Capturing CUDA graphs (simulated): 100%|##########|", flush=True)
    time.sleep(delay)  # a slow model load
    keep_alive = int(os.environ.get("VLLM_HTTP_TIMEOUT_KEEP_ALIVE", "5"))  # as vLLM reads it
    uvicorn.run(
        build(args),
        host=args.host,
        port=args.port,
        log_level="warning",
        timeout_keep_alive=keep_alive,
    )


if __name__ == "__main__":
    main()
