"""`type: remote`: another service's `POST /v1/moderations` (OpenAI's shape) or
`POST /v1/classify` (vLLM's shape; another nimble answers both) decides.

- moderations: the first result's `flagged`, or with `threshold` its `category_scores`;
  `labels` limits the categories that count. The category is the worst one's name.
- classify: the first item's `label` blocks when it is one of `labels` and its
  probability (the largest of `probs`) is at least `threshold`.

A failure (connection, timeout, a non-2xx answer, an answer of another shape) follows the
rail's `on_error`: block (the default: fail closed) or allow.
"""

from __future__ import annotations

import os
from typing import Any, Literal
from urllib.parse import urlsplit

import httpx
from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator

from nimble.errors import ConfigError
from nimble.guardrails.rail import Check, ModelHandle, Rail, RailType, Stage


class RemoteError(Exception):
    """The remote service did not give a usable verdict."""


class RemoteSettings(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    url: str  # the endpoint itself: http(s)://host/v1/moderations or .../v1/classify
    api: Literal["moderations", "classify"] | None = None  # None: read from the URL's path
    model: str | None = None  # sent as `model` (the remote service's model)
    labels: tuple[str, ...] = ()
    threshold: float | None = Field(default=None, ge=0, le=1)
    api_key: SecretStr | None = None  # sent as a bearer token; prefer api_key_env
    api_key_env: str | None = None  # an environment variable holding the key, read at start

    @field_validator("url")
    @classmethod
    def _http(cls, value: str) -> str:
        parts = urlsplit(value)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise ValueError("an http:// or https:// URL")
        return value

    @model_validator(mode="before")
    @classmethod
    def _api_from_url(cls, data: Any) -> Any:
        if isinstance(data, dict) and data.get("api") is None and isinstance(data.get("url"), str):
            path = urlsplit(data["url"]).path.rstrip("/")
            api = next((a for a in ("moderations", "classify") if path.endswith("/" + a)), None)
            if api is not None:
                return {**data, "api": api}
        return data

    @model_validator(mode="after")
    def _kind(self) -> RemoteSettings:
        if self.api is None:
            raise ValueError("api: set it (moderations or classify): the URL does not say")
        if self.api == "classify" and not self.labels:
            raise ValueError("labels: a classify service needs them (the labels that block)")
        if self.api_key is not None and self.api_key_env is not None:
            raise ValueError("api_key: give api_key or api_key_env, not both")
        return self


class RemoteRail:
    def __init__(self, name: str, settings: RemoteSettings, key: str | None):
        self.name = name
        self.settings = settings
        self._headers = {"Authorization": f"Bearer {key}"} if key else {}
        self._client: httpx.AsyncClient | None = None

    async def start(self) -> None:
        # the stage bounds each check with the rail's timeout; no second clock here
        self._client = httpx.AsyncClient(timeout=None, headers=self._headers)

    async def stop(self) -> None:
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    async def check(self, text: str, stage: Stage) -> Check:
        if self._client is None:
            raise RemoteError("the rail was not started")
        settings = self.settings
        body: dict[str, Any] = {"input": text}
        if settings.model is not None:
            body["model"] = settings.model
        try:
            answer = await self._client.post(settings.url, json=body)
        except httpx.HTTPError as exc:
            raise RemoteError(f"{type(exc).__name__}") from exc
        if answer.status_code // 100 != 2:
            raise RemoteError(f"HTTP {answer.status_code}")
        try:
            payload = answer.json()
            if settings.api == "moderations":
                return _moderation(payload["results"][0], settings)
            return _classification(payload["data"][0], settings)
        except (ValueError, KeyError, IndexError, TypeError) as exc:
            raise RemoteError(f"an answer not in the {settings.api} shape") from exc


def _moderation(result: dict[str, Any], settings: RemoteSettings) -> Check:
    scores: dict[str, float] = {k: float(v) for k, v in result["category_scores"].items()}
    categories: dict[str, bool] = {k: bool(v) for k, v in result["categories"].items()}
    names = settings.labels or tuple(scores) or tuple(categories)
    if settings.threshold is not None:
        hits = [name for name in names if scores.get(name, 0.0) >= settings.threshold]
    elif settings.labels:
        hits = [name for name in names if categories.get(name, False)]
    else:
        hits = [name for name in names if categories.get(name)] if result["flagged"] else []
        if result["flagged"] and not hits:
            hits = ["flagged"]
    worst = max(hits, key=lambda name: scores.get(name, 0.0)) if hits else None
    top = max((scores.get(name, 0.0) for name in names), default=None)
    if worst is None:
        return Check("allow", score=top)
    return Check("block", score=scores.get(worst, top), category=worst)


def _classification(item: dict[str, Any], settings: RemoteSettings) -> Check:
    label = str(item["label"])
    probs = [float(p) for p in item.get("probs") or []]
    score = max(probs) if probs else 1.0
    threshold = settings.threshold if settings.threshold is not None else 0.5
    if label in settings.labels and score >= threshold:
        return Check("block", score=score, category=label)
    return Check("allow", score=score if label in settings.labels else None)


def _build(name: str, settings: RemoteSettings, models: ModelHandle) -> Rail:
    key = settings.api_key.get_secret_value() if settings.api_key else None
    if settings.api_key_env is not None:
        key = os.environ.get(settings.api_key_env)
        if not key:
            raise ConfigError(
                f"guardrails: flows.{name}.api_key_env: {settings.api_key_env} is not set"
            )
    return RemoteRail(name, settings, key)


def _describe(settings: RemoteSettings) -> dict[str, Any]:
    parts = urlsplit(settings.url)
    host = parts.hostname or ""
    netloc = host + (f":{parts.port}" if parts.port else "")
    return {
        "url": parts._replace(netloc=netloc, query="", fragment="").geturl(),
        "api": settings.api,
        "model": settings.model,
        "labels": list(settings.labels),
        "threshold": settings.threshold,
        "authenticated": settings.api_key is not None or settings.api_key_env is not None,
    }


REMOTE = RailType(RemoteSettings, _build, describe=_describe)
