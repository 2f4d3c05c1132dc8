"""What nimble says to `vllm serve` and how it reads the answers: the command line built
from a profile, vLLM's error bodies, its completion logprobs, the weight files to hash.

Pure functions, no vLLM import (vLLM runs in its own process)."""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path

from nimble.engines.openai_wire import Json
from nimble.errors import (
    ContextLengthExceeded,
    EngineError,
    InvalidRequest,
    ModelLoadError,
    NimbleError,
    Unavailable,
)
from nimble.models.files import sha256_of
from nimble.models.spec import ModelSpec
from nimble.types import (
    ChoiceConstraint,
    Constraint,
    GrammarConstraint,
    JsonSchemaConstraint,
    ModelFile,
    RegexConstraint,
    SamplingParams,
    ToolCallConstraint,
)

log = logging.getLogger("nimble.engines.vllm")


# profile precision -> vLLM flags (other precisions, awq-int4, gptq..., are read by vLLM
# from the checkpoint's quantization_config)
_PRECISION: dict[str, tuple[str, str]] = {
    "bf16": ("--dtype", "bfloat16"),
    "fp16": ("--dtype", "float16"),
    "fp32": ("--dtype", "float32"),
    "fp8": ("--quantization", "fp8"),
}
_DTYPES = {"bf16": "bfloat16", "fp16": "float16", "fp32": "float32"}
_ALIASES = {"context_length": "max_model_len"}  # spec option -> vLLM argument
_OWN = {"model", "host", "port", "served_model_name", "api_key"}  # nimble sets these
_KEY = re.compile(r"^[a-z][a-z0-9_-]*$")
_WEIGHT_SUFFIXES = {".safetensors", ".bin", ".pt", ".pth", ".json", ".model", ".txt", ".tiktoken"}
_WEIGHT_SUFFIXES |= {".jinja"}
# how vLLM words a prompt longer than the window, across versions
_CONTEXT_MESSAGES = ("maximum context length", "maximum model length", "is too long and exceeds")


def serve_args(spec: ModelSpec, context_length: int | None, batch_size: int | None) -> list[str]:
    """vLLM's flags for a spec (port, host and name excluded): the profile's precision, its
    options as `--key-with-dashes value` ("true": a bare switch, "false": `--no-key`), the
    operator's context length, and the batch size (`--max-num-seqs`; None: vLLM's own).
    nimble's admission limit (max_running) is not vLLM's: it never reaches vLLM."""
    options = {_ALIASES.get(key, key): value for key, value in spec.options.items()}
    flags: dict[str, str | None] = {}
    precision = options.pop("precision", "").lower()
    options.pop("tool_parser", None)  # nimble parses tool calls itself
    options.pop("reasoning_parser", None)  # and thinking: vLLM must send it as text
    if precision in _PRECISION:
        flag, value = _PRECISION[precision]
        flags[flag] = value
    if "dtype" in options:
        options["dtype"] = _DTYPES.get(options["dtype"].lower(), options["dtype"])
    if context_length:  # the operator's --context-length wins over the profile's
        options["max_model_len"] = str(context_length)
    if batch_size is not None:
        options["max_num_seqs"] = str(batch_size)
    for key, value in options.items():
        if key in _OWN:
            log.warning("vllm: option %s is set by nimble; the profile's value is ignored", key)
            continue
        if not _KEY.match(key):
            raise ModelLoadError(f"{spec.weights}: {key!r} is not a vLLM option name")
        flag = "--" + key.replace("_", "-")
        if value.lower() == "true":
            flags[flag] = None
        elif value.lower() == "false":
            flags.pop(flag, None)
            flags["--no-" + key.replace("_", "-")] = None
        else:
            flags[flag] = value
    args: list[str] = []
    for flag, flag_value in flags.items():
        args += [flag] if flag_value is None else [flag, flag_value]
    return args


def gpu_env(spec: ModelSpec) -> dict[str, str]:
    """The environment that keeps the vLLM process on the GPUs nimble placed the model on
    (numbered as NVML numbers them: in PCI bus order); none when it was not placed."""
    if not spec.devices:
        return {}
    devices = ",".join(str(index) for index in spec.devices)
    return {"CUDA_DEVICE_ORDER": "PCI_BUS_ID", "CUDA_VISIBLE_DEVICES": devices}


def sampling_fields(params: SamplingParams) -> Json:
    """vLLM's own sampling fields, in its names, for what the request sets (vLLM's
    defaults, or the model's generation_config, for the rest)."""
    fields: Json = {}
    if params.top_k is not None:
        fields["top_k"] = params.top_k or -1  # -1: off, in every vLLM version
    if params.min_p is not None:
        fields["min_p"] = params.min_p
    if params.repetition_penalty is not None:
        fields["repetition_penalty"] = params.repetition_penalty
    if params.min_tokens:
        fields["min_tokens"] = params.min_tokens
    if params.stop_token_ids:
        fields["stop_token_ids"] = list(params.stop_token_ids)
    if params.ignore_eos:
        fields["ignore_eos"] = True
    if params.include_stop_str_in_output:
        fields["include_stop_str_in_output"] = True
    if not params.skip_special_tokens:
        fields["skip_special_tokens"] = False
    if params.logit_bias:
        fields["logit_bias"] = {str(token): bias for token, bias in params.logit_bias}
    if params.continuous_usage:
        fields["stream_options"] = {"include_usage": True, "continuous_usage_stats": True}
    return fields


def structured_fields(constraint: Constraint) -> tuple[Json, tuple[str, str]]:
    """vLLM's `structured_outputs` for a constraint, and the text nimble puts around what
    vLLM writes: a forced tool call is a JSON schema for vLLM, its markers are nimble's."""
    wrap = ("", "")
    match constraint:
        case JsonSchemaConstraint(schema=schema):
            fields: Json = {"json": schema}
        case RegexConstraint(pattern=pattern):
            fields = {"regex": pattern}
        case ChoiceConstraint(choices=choices):
            fields = {"choice": list(choices)}
        case GrammarConstraint(grammar=grammar):
            fields = {"grammar": grammar}
        case ToolCallConstraint(lazy=True) as calls:
            tag = {
                "type": "structural_tag",
                "structures": [
                    {"begin": calls.begin, "schema": calls.call_schema, "end": calls.end}
                ],
                "triggers": [calls.begin.strip() or calls.begin],
            }
            fields = {"structural_tag": json.dumps(tag)}
        case ToolCallConstraint() as calls:
            schema = calls.call_schema
            if calls.max_calls != 1:
                schema = {"type": "array", "items": schema, "minItems": 1}
            fields, wrap = {"json": schema}, (calls.begin, calls.end)
        case _:
            raise AssertionError(f"unknown constraint {constraint!r}")
    return {"structured_outputs": fields}, wrap


def error_of(status: int, payload: object, param: str) -> NimbleError:
    """vLLM's error bodies: `{"object": "error", "message", "type", "code"}` (older), or
    `{"error": {"message", "type", "param", "code"}}` (newer, and errors inside a stream)."""
    inner = payload.get("error") if isinstance(payload, dict) else None
    error: Json = inner if isinstance(inner, dict) else payload if isinstance(payload, dict) else {}
    message = str(error.get("message") or inner or f"vllm answered {status} without a message")
    code = error.get("code")
    status = code if isinstance(code, int) and status == 200 else status
    if status == 400 and any(part in message for part in _CONTEXT_MESSAGES):
        return ContextLengthExceeded(message, param=param)
    if status in (400, 422):
        named = error.get("param")
        return InvalidRequest(message, param=named if isinstance(named, str) else None)
    if status == 503:
        return Unavailable(f"vllm: {message}")
    return EngineError(f"vllm answered {status}: {message}")


def is_error(payload: Json) -> bool:
    return "error" in payload or payload.get("object") == "error"


def chat_logprobs(choice: Json) -> Json:
    """A /v1/completions choice with OpenAI's legacy logprobs (`tokens`, `token_logprobs`,
    `top_logprobs` as {token: logprob}) rewritten in the chat shape (`content`) that the
    chunk mapper reads; other choices are returned as they are."""
    raw = choice.get("logprobs")
    if not isinstance(raw, dict) or "tokens" not in raw:
        return choice
    tops = raw.get("top_logprobs") or []
    values = raw.get("token_logprobs") or []
    content = []
    for i, token in enumerate(raw["tokens"]):
        alternatives = tops[i] if i < len(tops) and isinstance(tops[i], dict) else {}
        ranked = sorted(alternatives.items(), key=lambda item: -_number(item[1]))
        content.append(
            {
                "token": token,
                "logprob": values[i] if i < len(values) else None,
                "top_logprobs": [{"token": t, "logprob": lp} for t, lp in ranked],
            }
        )
    return {**choice, "logprobs": {"content": content}}


def _number(value: object) -> float:
    return float(value) if isinstance(value, int | float) else float("-inf")


def template_shows_tools(folder: Path) -> bool:
    """Whether the model folder's chat template renders `tools` (its tokenizer_config.json
    `chat_template`, or chat_template.jinja). If not, nimble writes the tools in itself."""
    if not folder.is_dir():
        return False
    texts = []
    jinja = folder / "chat_template.jinja"
    if jinja.is_file():
        texts.append(jinja.read_text(errors="replace"))
    config = folder / "tokenizer_config.json"
    if config.is_file():
        try:
            template = json.loads(config.read_text()).get("chat_template")
        except (ValueError, AttributeError):
            template = None
        if isinstance(template, list):  # named templates: [{"name", "template"}]
            texts += [str(t.get("template", "")) for t in template if isinstance(t, dict)]
        elif isinstance(template, str):
            texts.append(template)
    return any("tools" in text for text in texts)


def weight_files(folder: Path) -> tuple[ModelFile, ...]:
    """The files vLLM loads from a model folder (weights, config, tokenizer), hashed."""
    if folder.is_file():
        paths = [folder]
    else:
        paths = sorted(p for p in folder.iterdir() if p.suffix in _WEIGHT_SUFFIXES)
    return tuple(ModelFile(str(p), sha256_of(p), p.stat().st_size) for p in paths if p.is_file())


def vocab_size(folder: Path) -> int | None:
    """The model's vocabulary size from its folder's config.json (None: not said there)."""
    config = folder / "config.json"
    try:
        value = json.loads(config.read_text()).get("vocab_size") if config.is_file() else None
    except (OSError, ValueError, AttributeError):
        return None
    return value if isinstance(value, int) and value > 0 else None
