"""The settings of `nimble gateway`: the service's own (listening, TLS, CORS, logs, keys,
audit) and where the replicas are and how requests are spread over them."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import NoDecode

from nimble.config.service import ServiceSettings, load, split_csv

ROUTING_POLICIES = ("prefix-aware", "least-loaded", "round-robin")


class GatewaySettings(ServiceSettings):
    """nimble gateway's configuration."""

    # --- upstreams ---
    upstream: Annotated[tuple[str, ...], NoDecode] = Field(
        default=(),
        description="URL of a `nimble serve` replica (http:// or https://). Repeat the flag (or "
        "give a comma-separated list in the env var) for several. The gateway learns what "
        "each serves from its /v1/models.",
    )
    upstream_dns: Annotated[tuple[str, ...], NoDecode] = Field(
        default=(),
        description="NAME:PORT (or https://NAME:PORT) whose DNS addresses are replicas, one "
        "per address (a Kubernetes headless Service), re-resolved every --dns-interval: "
        "replicas added or removed are picked up without a restart.",
    )
    upstream_api_key: SecretStr | None = Field(
        default=None,
        description="Key the gateway sends to the replicas (`Authorization: Bearer`), for "
        "probes and requests. Unset: requests carry the client's own key; probes none.",
    )
    upstream_ca_file: Path | None = Field(
        default=None,
        description="CA bundle (PEM) that https replicas' certificates must chain to. Unset: "
        "the system's CAs.",
    )
    routing_policy: Literal["prefix-aware", "least-loaded", "round-robin"] = Field(
        default="prefix-aware",
        description="How a replica is chosen among those serving the request's model: "
        "prefix-aware (the replica that served the prompt's prefix last, unless it is clearly "
        "busier than the others; docs/scaling.md), least-loaded, round-robin.",
    )
    prefix_block_chars: int = Field(
        default=256,
        ge=16,
        description="prefix-aware: prompts are matched in blocks of this many characters.",
    )
    prefix_blocks_per_replica: int = Field(
        default=4096,
        ge=1,
        description="prefix-aware: blocks remembered per replica (the oldest go first); about "
        "the prompt text one replica's KV cache keeps warm.",
    )
    prefix_imbalance_abs: float = Field(
        default=8.0,
        ge=0,
        description="prefix-aware: a replica holding the prompt's prefix keeps it unless its "
        "load (running + 2 x waiting) exceeds the least loaded replica's by more than "
        "max(this, --prefix-imbalance-rel x that load).",
    )
    prefix_imbalance_rel: float = Field(
        default=1.0,
        ge=0,
        description="prefix-aware: the relative part of that margin (1.0: twice the least load).",
    )
    retries: int = Field(
        default=2,
        ge=0,
        description="Other replicas tried when one fails before its first byte (refused "
        "connection, 503, 429); never after the first byte.",
    )
    probe_interval: float = Field(
        default=0.5,
        gt=0,
        description="Seconds between readiness and load probes of each replica.",
    )
    dns_interval: float = Field(
        default=5.0, gt=0, description="Seconds between resolutions of --upstream-dns."
    )
    upstream_timeout: float = Field(
        default=600.0,
        gt=0,
        description="Seconds a replica may take to answer (to its last byte).",
    )

    @field_validator("upstream", "upstream_dns", mode="before")
    @classmethod
    def _split_csv(cls, value: Any) -> Any:
        return split_csv(value)

    @model_validator(mode="after")
    def _some_upstream(self) -> GatewaySettings:
        if not self.upstream and not self.upstream_dns:
            raise ValueError("no replicas: give --upstream URL or --upstream-dns NAME:PORT")
        for url in self.upstream:
            parts = urlsplit(url)
            if parts.scheme not in ("http", "https") or not parts.hostname:
                raise ValueError(f"upstream {url!r}: give http://HOST:PORT or https://HOST:PORT")
        for entry in self.upstream_dns:
            split_dns(entry)
        return self


def split_dns(entry: str) -> tuple[str, str, int]:
    """(scheme, name, port) of an `upstream_dns` entry: NAME:PORT or https://NAME:PORT.
    Raises ValueError for anything else."""
    parts = urlsplit(entry if "://" in entry else "http://" + entry)
    if parts.scheme not in ("http", "https") or not parts.hostname or not parts.port:
        raise ValueError(f"upstream_dns {entry!r}: give NAME:PORT")
    return parts.scheme, parts.hostname, parts.port


def load_gateway_settings(**cli_values: Any) -> GatewaySettings:
    return load(GatewaySettings, cli_values)
