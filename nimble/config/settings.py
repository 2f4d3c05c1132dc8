"""The one settings object. Every field is a `nimble serve` flag and a `NIMBLE_*` variable."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    AliasChoices,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import (
    BaseSettings,
    NoDecode,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    SettingsError,
    YamlConfigSettingsSource,
)

from nimble.errors import ConfigError

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
    "tokenize",
    "models",
    "metadata",
    "manifest",
    "version",
    "metrics",
    "openapi",
    "health",
)
LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1")


class Settings(BaseSettings):
    """nimble's configuration. Field descriptions are the `--help` text and the docs table."""

    model_config = SettingsConfigDict(
        env_prefix="NIMBLE_",
        frozen=True,
        extra="forbid",
        env_parse_none_str="",
        populate_by_name=True,
    )

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
    engine: str | None = Field(
        default=None,
        description="Only consider profiles of this engine (llamacpp, vllm, transformers, "
        "onnx, fake). Default: the best engine for the hardware.",
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

    # --- network ---
    host: str = Field(default="127.0.0.1", description="Address to listen on.")
    port: int = Field(default=8000, ge=0, le=65535, description="Port to listen on (0: any).")

    # --- admission control ---
    max_running: int = Field(
        default=4,
        ge=1,
        description="Requests that run at once per model (llama.cpp: parallel slots).",
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
    max_body_bytes: int = Field(
        default=4 * 1024 * 1024,
        ge=1024,
        description="Largest accepted request body in bytes (413 beyond).",
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
    drain_timeout: float = Field(
        default=30.0,
        ge=0,
        description="Seconds that in-flight requests may take to finish after SIGTERM.",
    )

    # --- logging ---
    log_level: Literal["debug", "info", "warning", "error"] = Field(
        default="info", description="Log level."
    )
    jsonl_logging: bool = Field(
        default=False, description="Write logs as one JSON object per line."
    )
    engine_log: bool = Field(
        default=False, description="Let the engine print its own (verbose) log to stderr."
    )

    log_prompts: bool = Field(
        default=False,
        description="Log prompts and completions (debugging only: they may hold personal "
        "data). Off: they are never logged.",
    )

    # --- metrics and tracing ---
    metrics_require_key: bool = Field(
        default=True,
        description="With API keys on, /metrics needs a key whose endpoints include "
        "`metrics`. Off: anyone who reaches the port may scrape.",
    )
    otlp_endpoint: str | None = Field(
        default=None,
        validation_alias=AliasChoices("NIMBLE_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_ENDPOINT"),
        description="OTLP/HTTP collector URL for traces (also read from "
        "OTEL_EXPORTER_OTLP_ENDPOINT). Unset: tracing exports nothing.",
    )
    otel_service_name: str = Field(
        default="nimble",
        validation_alias=AliasChoices("NIMBLE_OTEL_SERVICE_NAME", "OTEL_SERVICE_NAME"),
        description="service.name of exported traces (also read from OTEL_SERVICE_NAME).",
    )

    # --- access control ---
    api_keys_file: Path | None = Field(
        default=None,
        description="YAML file of API keys (sha256-hashed, with scopes and limits; see "
        "docs/operations.md). Re-read when it changes and on SIGHUP. Unset: no keys.",
    )
    allow_unauthenticated: bool = Field(
        default=False,
        description="Allow listening on an address other than loopback without API keys.",
    )
    audit_log: Path | None = Field(
        default=None,
        description="Append one hash-chained JSON line per request to this file "
        "(`nimble audit verify FILE` checks it). Unset: no audit log.",
    )

    audit_fsync: bool = Field(
        default=False,
        description="fsync the audit log after every line (survives power loss; costs one "
        "disk flush per request).",
    )

    # --- transport ---
    ssl_mode: Literal["DISABLED", "TLS", "MTLS"] = Field(
        default="DISABLED",
        description="DISABLED: plain HTTP. TLS: HTTPS with --ssl-cert-file and --ssl-key-file. "
        "MTLS: HTTPS that also requires a client certificate signed by --ssl-ca-file.",
    )
    ssl_cert_file: Path | None = Field(
        default=None, description="Server certificate (PEM, chain allowed) for TLS and MTLS."
    )
    ssl_key_file: Path | None = Field(
        default=None, description="Private key (PEM) of the server certificate."
    )
    ssl_ca_file: Path | None = Field(
        default=None, description="CA bundle (PEM) that client certificates must chain to (MTLS)."
    )
    cors_allow_origins: Annotated[tuple[str, ...], NoDecode] = Field(
        default=(),
        description="Origins allowed by CORS (`*` for any). Empty: CORS is off.",
    )
    cors_allow_methods: Annotated[tuple[str, ...], NoDecode] = Field(
        default=("GET", "POST", "OPTIONS"), description="Methods allowed by CORS."
    )
    cors_allow_headers: Annotated[tuple[str, ...], NoDecode] = Field(
        default=(
            "Authorization",
            "Content-Type",
            "X-Request-Id",
            "traceparent",
            "X-Api-Key",  # Anthropic clients send the key here
            "Anthropic-Version",
        ),
        description="Request headers allowed by CORS.",
    )
    cors_max_age: int = Field(
        default=600, ge=0, description="Seconds a browser may cache a CORS preflight answer."
    )
    endpoints: Annotated[tuple[str, ...], NoDecode] = Field(
        default=ALL_ENDPOINTS,
        description="Endpoints to expose (allowlist); any other answers 404 like an unknown "
        f"path. Names: {', '.join(ALL_ENDPOINTS)}. The /v1/health/live and /v1/health/ready "
        "probes are always on.",
    )
    management_port: int | None = Field(
        default=None,
        ge=0,
        le=65535,
        description="Also serve health probes and /metrics on this port, on the same host, "
        "without API keys or TLS (for probes and scrapers inside the cluster).",
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

    config: Path | None = Field(
        default=None,
        description="YAML file with settings (same names as the flags, snake_case).",
    )

    @field_validator(
        "model",
        "served_model_name",
        "cors_allow_origins",
        "cors_allow_methods",
        "cors_allow_headers",
        "endpoints",
        mode="before",
    )
    @classmethod
    def _split_csv(cls, value: Any) -> Any:
        if isinstance(value, str):
            return tuple(part.strip() for part in value.split(",") if part.strip())
        return value

    @model_validator(mode="after")
    def _consistent(self) -> Settings:
        unknown = sorted(set(self.endpoints) - set(ALL_ENDPOINTS))
        if unknown:
            raise ValueError(
                f"endpoints: unknown {', '.join(unknown)} (known: {', '.join(ALL_ENDPOINTS)})"
            )
        if self.ssl_mode != "DISABLED" and (
            self.ssl_cert_file is None or self.ssl_key_file is None
        ):
            raise ValueError(f"ssl_mode {self.ssl_mode} needs --ssl-cert-file and --ssl-key-file")
        if self.ssl_mode == "MTLS" and self.ssl_ca_file is None:
            raise ValueError("ssl_mode MTLS needs --ssl-ca-file (the CA of client certificates)")
        if (
            self.host not in LOOPBACK_HOSTS
            and self.api_keys_file is None
            and not self.allow_unauthenticated
        ):
            raise ValueError(
                f"refusing to listen on {self.host} without API keys: give --api-keys-file, "
                "or --allow-unauthenticated if something in front of nimble authenticates"
            )
        return self

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        yaml_path = _yaml_path(init_settings, env_settings)
        if yaml_path is not None:
            sources.append(YamlConfigSettingsSource(settings_cls, yaml_file=yaml_path))
        return tuple(sources)


def _yaml_path(*sources: PydanticBaseSettingsSource) -> Path | None:
    for source in sources:
        value = source().get("config")
        if value:
            path = Path(value)
            if not path.is_file():
                raise ConfigError(f"config file {path} does not exist")
            return path
    return None


def load_settings(**cli_values: Any) -> Settings:
    """Build the frozen settings from CLI values (highest priority), env and YAML."""
    given = {key: value for key, value in cli_values.items() if value is not None}
    try:
        return Settings(**given)
    except SettingsError as exc:
        raise ConfigError(str(exc)) from exc
    except ValidationError as exc:
        raise ConfigError("; ".join(_problem(err) for err in exc.errors())) from exc


def _problem(err: Any) -> str:
    """One validation error as a line: `field: message` (a cross-field check has no field)."""
    where = ".".join(str(p) for p in err["loc"])
    message = str(err["ctx"]["error"]) if err["type"] == "value_error" else err["msg"]
    return f"invalid setting {where}: {message}" if where else message
