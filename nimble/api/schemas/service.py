"""Shapes of /v1/models, health, version and metadata."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "nimble"
    # a LoRA adapter: the served model it adapts (vLLM's `parent`); absent for a model
    parent: str | None = None
    # models that answer /v1/ranking and /v1/rerank: how they score (absent otherwise)
    ranking: Literal["cross-encoder", "cosine"] | None = None


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]


class HealthResponse(BaseModel):
    object: Literal["health.response"] = "health.response"
    status: str
    message: str


class VersionResponse(BaseModel):
    release: str
    api_version: str = "v1"


class ModelFileOut(BaseModel):
    path: str
    sha256: str
    size_bytes: int


class ModelMetadata(BaseModel):
    id: str
    tasks: list[str]
    engine: str
    engine_version: str
    context_length: int
    source: str
    profile: str | None = None  # the selected profile's name (None: a fake model)
    profile_id: str | None = None
    files: list[ModelFileOut]
    details: dict[str, str]


class MetadataResponse(BaseModel):
    version: str
    state: str
    models: list[ModelMetadata]
    hardware: str | None = None  # a one-line summary (the full detail is in /v1/manifest)
