"""What every nimble service reads the same way (`nimble serve` and `nimble gateway`): where it
listens, TLS and CORS, logs, traces, keys and the audit log. Each field is a flag and a
`NIMBLE_*` variable; `config` names a YAML file of the same settings."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar

from pydantic import (
    AliasChoices,
    Field,
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

LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1")

S = TypeVar("S", bound="ServiceSettings")


class ServiceSettings(BaseSettings):
    """The settings every service has. Field descriptions are the `--help` text and the docs
    table."""

    model_config = SettingsConfigDict(
        env_prefix="NIMBLE_",
        frozen=True,
        extra="forbid",
        env_parse_none_str="",
        populate_by_name=True,
    )

    # --- network ---
    host: str = Field(default="127.0.0.1", description="Address to listen on.")
    port: int = Field(default=8000, ge=0, le=65535, description="Port to listen on (0: any).")

    # --- requests ---
    max_body_bytes: int = Field(
        default=4 * 1024 * 1024,
        ge=1024,
        description="Largest accepted request body in bytes (413 beyond).",
    )
    drain_timeout: float = Field(
        default=30.0,
        ge=0,
        description="Seconds that in-flight requests may take to finish after SIGTERM.",
    )
    keep_alive: int = Field(
        default=75,
        ge=1,
        description="Seconds an idle client connection is kept open. Longer than clients and "
        "load balancers keep theirs (openai/httpx 5, AWS ALB 60), so a client never reuses "
        "a connection just as the server closes it (a reset request).",
    )

    # --- logging ---
    log_level: Literal["debug", "info", "warning", "error"] = Field(
        default="info", description="Log level."
    )
    jsonl_logging: bool = Field(
        default=False, description="Write logs as one JSON object per line."
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
    management_port: int | None = Field(
        default=None,
        ge=0,
        le=65535,
        description="Also serve health probes and /metrics on this port, on the same host, "
        "without API keys or TLS (for probes and scrapers inside the cluster).",
    )

    # --- testing and demos ---
    config: Path | None = Field(
        default=None,
        description="YAML file with settings (same names as the flags, snake_case).",
    )

    @field_validator(
        "cors_allow_origins", "cors_allow_methods", "cors_allow_headers", mode="before"
    )
    @classmethod
    def _split_cors(cls, value: Any) -> Any:
        return split_csv(value)

    @model_validator(mode="after")
    def _safe_transport(self: S) -> S:
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


def split_csv(value: Any) -> Any:
    """A comma-separated string (an env var) as a tuple; anything else as it is."""
    if isinstance(value, str):
        return tuple(part.strip() for part in value.split(",") if part.strip())
    return value


def _yaml_path(*sources: PydanticBaseSettingsSource) -> Path | None:
    for source in sources:
        value = source().get("config")
        if value:
            path = Path(value)
            if not path.is_file():
                raise ConfigError(f"config file {path} does not exist")
            return path
    return None


def load(cls: type[S], cli_values: dict[str, Any]) -> S:
    """Build frozen settings of `cls` from CLI values (highest priority), env and YAML."""
    given = {key: value for key, value in cli_values.items() if value is not None}
    try:
        return cls(**given)
    except SettingsError as exc:
        raise ConfigError(str(exc)) from exc
    except ValidationError as exc:
        raise ConfigError("; ".join(_problem(err) for err in exc.errors())) from exc


def _problem(err: Any) -> str:
    """One validation error as a line: `field: message` (a cross-field check has no field)."""
    where = ".".join(str(p) for p in err["loc"])
    message = str(err["ctx"]["error"]) if err["type"] == "value_error" else err["msg"]
    return f"invalid setting {where}: {message}" if where else message


def fields_in_order(cls: type[ServiceSettings]) -> list[tuple[str, Any]]:
    """`cls`'s fields for `--help` and the docs: its own first (what it serves, how), then
    those every service has."""
    shared = ServiceSettings.model_fields
    own = [(n, f) for n, f in cls.model_fields.items() if n not in shared]
    return own + [(n, f) for n, f in cls.model_fields.items() if n in shared]
