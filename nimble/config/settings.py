"""The one settings object. Every field is a `nimble serve` flag and a `NIMBLE_*` variable."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, ValidationError, field_validator
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


class Settings(BaseSettings):
    """nimble's configuration. Field descriptions are the `--help` text and the docs table."""

    model_config = SettingsConfigDict(
        env_prefix="NIMBLE_",
        frozen=True,
        extra="forbid",
        env_parse_none_str="",
    )

    # --- what to serve ---
    model: Annotated[tuple[str, ...], NoDecode] = Field(
        default=DEFAULT_MODELS,
        description="Model to serve: a catalog id, a local .gguf file or a local Hugging Face "
        "folder. Repeat the flag (or give a comma-separated list in the env var) to serve "
        "several models.",
    )
    served_model_name: Annotated[tuple[str, ...], NoDecode] = Field(
        default=(),
        description="Name under which each --model is served (same order). Defaults to the "
        "catalog id, or the file/folder name.",
    )
    engine: str | None = Field(
        default=None,
        description="Force an engine for models given by path (llamacpp, onnx, fake). "
        "Default: chosen from the model format.",
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
    max_body_bytes: int = Field(
        default=4 * 1024 * 1024,
        ge=1024,
        description="Largest accepted request body in bytes (413 beyond).",
    )
    max_n: int = Field(default=8, ge=1, description="Largest accepted `n` (choices per request).")
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

    @field_validator("model", "served_model_name", mode="before")
    @classmethod
    def _split_csv(cls, value: Any) -> Any:
        if isinstance(value, str):
            return tuple(part.strip() for part in value.split(",") if part.strip())
        return value

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
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc']) or 'settings'}: {err['msg']}"
            for err in exc.errors()
        )
        raise ConfigError(f"invalid settings: {problems}") from exc
