"""The settings of `nimble serve`. Every field is a flag and a `NIMBLE_*` variable."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import AliasChoices, Field, SecretStr, field_validator, model_validator
from pydantic_settings import NoDecode

from nimble.config.service import LOOPBACK_HOSTS, ServiceSettings, load, split_csv

__all__ = ["ALL_ENDPOINTS", "DEFAULT_MODELS", "LOOPBACK_HOSTS", "Settings", "load_settings"]

DEFAULT_MODELS = ("smollm2-135m-instruct", "all-minilm-l6-v2")
# endpoint names for --endpoints and API key scopes (/v1/health/* probes are always on;
# `health` is vLLM's /health, for routers written for vLLM)
ALL_ENDPOINTS = (
    "chat",
    "messages",
    "completions",
    "embeddings",
    "ranking",
    "rerank",
    "classify",
    "moderations",
    "tokenize",
    "models",
    "metadata",
    "manifest",
    "version",
    "metrics",
    "openapi",
    "health",
    "admin",
    # the console's pages and files (/ui); with the `console` setting (docs/console.md)
    "ui",
)


class Settings(ServiceSettings):
    """nimble serve's configuration: the service's settings and what it serves, how."""

    # --- what to serve ---
    model: Annotated[tuple[str, ...], NoDecode] = Field(
        default=DEFAULT_MODELS,
        description="Model to serve: a catalog id (`nimble list-profiles`), a model manifest "
        "(YAML), a local .gguf file or a local Hugging Face folder. Repeat the flag (or give a "
        "comma-separated list in the env var) to serve several models.",
    )
    served_model_name: Annotated[tuple[str, ...], NoDecode] = Field(
        default=(),
        description="Name under which each --model is served (same order). Defaults to the "
        "catalog id, or the file/folder name.",
    )
    lora: Annotated[tuple[str, ...], NoDecode] = Field(
        default=(),
        description="A LoRA adapter to serve, NAME=PATH (a GGUF adapter for llama.cpp, a PEFT "
        "folder for vLLM and transformers); repeat the flag. Requested as `model: NAME`; its "
        "base is the only generative model served, else the `base` of a manifest beside it "
        "(docs/models.md).",
    )
    lora_dir: Path | None = Field(
        default=None,
        description="A folder of LoRA adapters, one file or folder each, named by it without "
        "its extension; watched: adapters added, changed or removed there are loaded, "
        "reloaded or unloaded without a restart.",
    )
    lora_poll_interval: float = Field(
        default=5.0,
        ge=0,
        description="Seconds between two looks at --lora-dir (0: read it at start only).",
    )
    runtime_adapters: bool = Field(
        default=False,
        description="Answer POST /v1/load_lora_adapter and /v1/unload_lora_adapter (vLLM's); "
        "with API keys, only keys whose endpoints name `admin`. Off: they are 404.",
    )
    max_loras: int = Field(
        default=4,
        ge=1,
        description="vLLM: adapters in one batch (--max-loras); more stay loaded on the CPU.",
    )
    max_lora_rank: int = Field(
        default=16, ge=1, description="vLLM: the largest adapter rank it takes (--max-lora-rank)."
    )
    engine: str | None = Field(
        default=None,
        description="Only consider profiles of this engine (llamacpp, vllm, transformers, onnx, "
        "sentence_transformers, fake). Default: the best engine for the hardware.",
    )
    context_length: int | None = Field(
        default=None,
        ge=16,
        description="Context window per request in tokens. Default: the model's trained "
        "context, capped at 8192 on CPU.",
    )
    threads: int | None = Field(
        default=None, ge=1, description="CPU threads for the engine. Default: all cores."
    )
    prompt_cache_mib: int | None = Field(
        default=None,
        ge=0,
        description="llama.cpp: memory (MiB) for prompts kept beyond the running slots, so "
        "that a later request with the same prefix skips its prefill (0: none, only what "
        "the slots hold). Default: llama.cpp's own, 8192.",
    )
    model_profile: str | None = Field(
        default=None,
        description="Profile to run (name or id, see `nimble list-profiles`) instead of the one "
        "chosen for this hardware. Refused with the reason if it cannot run here.",
    )

    # --- model files ---
    cache_path: Path = Field(
        default=Path("~/.cache/nimble"),
        description="Cache of downloaded model files (by sha256), converted weights and model "
        "folders. `nimble download` fills it ahead of time.",
    )
    offline: bool = Field(
        default=False,
        description="Never use the network: a model file missing from the cache is an error "
        "that names it.",
    )
    hf_endpoint: str | None = Field(
        default=None,
        validation_alias=AliasChoices("NIMBLE_HF_ENDPOINT", "HF_ENDPOINT"),
        description="Hugging Face Hub URL for hf:// sources (a mirror; also read from "
        "HF_ENDPOINT). Default: https://huggingface.co.",
    )
    hf_token: SecretStr | None = Field(
        default=None,
        validation_alias=AliasChoices("NIMBLE_HF_TOKEN", "HF_TOKEN"),
        description="Hugging Face token for gated models (also read from HF_TOKEN). Never "
        "logged or shown.",
    )
    hardware_file: Path | None = Field(
        default=None,
        description="Describe the hardware in a YAML file instead of detecting it (tests, "
        "what-if listings with `nimble list-profiles`).",
    )

    # --- supervised engines (vLLM) ---
    engine_command: str | None = Field(
        default=None,
        description="Command that starts a supervised engine server (vllm: default `vllm serve`).",
    )
    engine_restart: Literal["restart", "fail"] = Field(
        default="restart",
        description="When a supervised engine process dies: restart it (readiness is 503 "
        "meanwhile), or fail (nimble exits non-zero and the orchestrator restarts it).",
    )
    engine_start_timeout: float = Field(
        default=900.0, gt=0, description="Seconds a supervised engine may take to become healthy."
    )

    # --- admission control ---
    max_running: int | None = Field(
        default=None,
        ge=1,
        description="Requests nimble lets run at once per model (admission; the rest wait, "
        "see max_waiting). Default: the engine's batch size (max_batch_size), so admission "
        "never starves the engine. With llama.cpp it also sets the slots when "
        "max_batch_size is unset.",
    )
    max_batch_size: int | None = Field(
        default=None,
        ge=1,
        description="Sequences the engine runs at once per model: vLLM's --max-num-seqs, "
        "llama.cpp's parallel slots (each with its own context window), the transformers "
        "engine's rows. Default: the profile's max_batch_size (vLLM, llama.cpp), else the "
        "engine's own: vLLM's for the GPU (1024 on a GPU of 70 GiB or more other than an "
        "A100, else 256); for llama.cpp and transformers max_running, else 4.",
    )
    max_waiting: int = Field(
        default=64,
        ge=0,
        description="Requests that may wait per model when all running slots are busy; "
        "beyond that the answer is 429 with Retry-After.",
    )
    max_queue_wait: float = Field(
        default=15.0,
        ge=0.0,
        description="Seconds a request may wait for a running slot: one that would wait "
        "longer (from the measured rate at which the queue drains) is refused at once, and "
        "one still waiting when the time runs out gets 429 with Retry-After, so that an "
        "admitted request finishes in bounded time. 0: never wait.",
    )
    embed_batch_size: int = Field(
        default=32,
        ge=1,
        description="Embedding models: inputs run in one batch across concurrent requests "
        "(1: each request alone). Also how many embedding requests run at once.",
    )
    embed_max_wait_ms: float = Field(
        default=2.0,
        ge=0,
        description="Embedding models: how long the first request of a batch waits for others "
        "to join it (milliseconds). Under load batches fill while the previous one runs.",
    )
    max_n: int = Field(default=8, ge=1, description="Largest accepted `n` (choices per request).")
    max_rank_documents: int = Field(
        default=1000,
        ge=1,
        description="Most passages (`/v1/ranking`) or documents (`/v1/rerank`) per request "
        "(400 beyond).",
    )
    chat_template: Path | None = Field(
        default=None,
        description="A Jinja chat template file used instead of the chat models' own (for "
        "example one that shows tools to a model whose template cannot).",
    )
    tool_parser: str | None = Field(
        default=None,
        description="How tool calls are written and parsed (hermes, llama3_json, mistral, "
        "pythonic); unset: the model profile's `tool_parser`, else hermes.",
    )
    reasoning_parser: str | None = Field(
        default=None,
        description="How a thinking model's `<think>...</think>` is moved out of its chat "
        "answer into `reasoning_content` (deepseek_r1, qwen3; none: left in the answer); "
        "unset: the model profile's `reasoning_parser`, else none.",
    )
    responses_max_stored: int = Field(
        default=1000,
        ge=0,
        description="Most `/v1/responses` kept in memory for `store` and "
        "`previous_response_id` (the oldest go first; 0 stores none).",
    )

    # --- logging ---
    engine_log: bool = Field(
        default=False, description="Let the engine print its own (verbose) log to stderr."
    )
    log_prompts: bool = Field(
        default=False,
        description="Log prompts and completions (debugging only: they may hold personal "
        "data). Off: they are never logged.",
    )

    # --- guardrails ---
    guardrails: Path | None = Field(
        default=None,
        description="A YAML file of guardrails: rails that check the input before admission "
        "and the output as it streams (PII, classifiers, LLM judges, topic lists, remote "
        "checks), per model and per API key (docs/guardrails.md). Unset: no rails.",
    )

    # --- transport ---
    endpoints: Annotated[tuple[str, ...], NoDecode] = Field(
        default=ALL_ENDPOINTS,
        description="Endpoints to expose (allowlist); any other answers 404 like an unknown "
        f"path. Names: {', '.join(ALL_ENDPOINTS)}. The /v1/health/live and /v1/health/ready "
        "probes are always on.",
    )

    console: bool | None = Field(
        default=None,
        description="Serve the console (playground, live status, deployment record, API docs) "
        "at /ui. Unset: on when --host is a loopback address, off otherwise (then /ui is 404 "
        "like an unknown path). Needs `ui` in --endpoints. Its files need no key; everything "
        "it shows is read through the API with the key typed into the page.",
    )

    # --- governance ---
    image: str | None = Field(
        default=None,
        description="Container image this deployment runs (the image sets it); shown in the "
        "deployment record.",
    )
    update_channel: str = Field(
        default="pinned",
        description="Update channel recorded in the deployment record (`pinned`: this exact "
        "version; nimble never updates itself).",
    )

    # --- testing and demos ---
    fake_token_delay: float = Field(
        default=0.0,
        ge=0,
        description="Fake engine only: seconds between generated tokens (for tests and demos).",
    )

    @field_validator("model", "served_model_name", "endpoints", "lora", mode="before")
    @classmethod
    def _split_csv(cls, value: Any) -> Any:
        return split_csv(value)

    @model_validator(mode="after")
    def _known_endpoints(self) -> Settings:
        unknown = sorted(set(self.endpoints) - set(ALL_ENDPOINTS))
        if unknown:
            raise ValueError(
                f"endpoints: unknown {', '.join(unknown)} (known: {', '.join(ALL_ENDPOINTS)})"
            )
        if self.console and "ui" not in self.endpoints:
            raise ValueError("console: on, but `ui` is not in --endpoints")
        return self

    @property
    def console_on(self) -> bool:
        """Whether /ui is served: `ui` allowed, and the console asked for (or, unset, a
        loopback host: a console is for the person at the machine unless turned on)."""
        if "ui" not in self.endpoints:
            return False
        return self.host in LOOPBACK_HOSTS if self.console is None else self.console


def load_settings(**cli_values: Any) -> Settings:
    """Build the frozen settings from CLI values (highest priority), env and YAML."""
    return load(Settings, cli_values)
