"""A service on the fake engine with a guardrails file, for the guardrails API tests.

Two fake models: `fake-model` under the file's rails, `plain` with none (the same outputs:
the fake engine's text does not depend on the model's name). Output text is chosen with
`guided_choice` (the fake engine writes the first choice, a word a chunk)."""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anthropic
import httpx
import httpx2
import openai
import yaml

from nimble.api import create_app
from nimble.config import Settings
from nimble.engines.fake.engine import FakeEngine
from nimble.guardrails.config import parse_guardrails
from nimble.guardrails.rail import RailType
from nimble.observability.tracing import RequestTracing
from nimble.runtime import Runtime
from nimble.runtime.assemble import build_runtime
from tests.conftest import FAKE_MODEL

PLAIN = "plain"
FILLER = " ".join(f"word{i}" for i in range(60))  # 409 characters
FORBIDDEN = "launch codes"
# an answer with the forbidden phrase past the first windows
ANSWER = f"{FILLER} so here are the {FORBIDDEN} you asked for and {FILLER}"

RAILS: dict[str, Any] = {
    "flows": {
        "no-secrets": {"type": "topics", "deny": ["password"]},
        "no-launch": {"type": "topics", "deny": [FORBIDDEN]},
        "key-only": {"type": "topics", "deny": ["confidential"]},
    },
    "rails": {"input": {"flows": ["no-secrets"]}, "output": {"flows": ["no-launch"]}},
    "models": {PLAIN: {"input": {"flows": []}, "output": {"flows": []}}},
}


@dataclass
class Guarded:
    runtime: Runtime
    http: httpx.AsyncClient
    http2: httpx2.AsyncClient

    @property
    def engine(self) -> FakeEngine:
        engine = self.runtime.models[FAKE_MODEL].engine
        assert isinstance(engine, FakeEngine)
        return engine

    def engine_saw(self) -> str:
        """What the fake engine was asked to continue: the messages or the prompt of every
        request (not the constraints that the tests write the answers with)."""
        return repr(
            [r.messages if r.messages is not None else r.prompt for r in self.engine.requests]
        )

    def openai(self, key: str = "unused") -> openai.AsyncOpenAI:
        return openai.AsyncOpenAI(
            api_key=key, base_url="http://nimble.test/v1", http_client=self.http, max_retries=0
        )

    def anthropic(self, key: str = "unused") -> anthropic.AsyncAnthropic:
        return anthropic.AsyncAnthropic(
            api_key=key, base_url="http://nimble.test", http_client=self.http2, max_retries=0
        )


@asynccontextmanager
async def guarded_service(
    tmp_path: Path,
    rails: Mapping[str, Any] = RAILS,
    *,
    types: Mapping[str, RailType[Any]] | None = None,
    tracing: RequestTracing | None = None,
    **settings: Any,
) -> AsyncIterator[Guarded]:
    """The service as `nimble serve --guardrails FILE` builds it (with `types`: a runtime
    whose rails include test-only rail types)."""
    path = tmp_path / "guardrails.yaml"
    path.write_text(yaml.safe_dump(dict(rails)))
    config = Settings(model=("fake", f"fake:{PLAIN}"), guardrails=path, **settings)
    runtime, deployment = build_runtime(config)
    if types is not None:
        own = dataclasses.replace(runtime.config, guardrails=parse_guardrails(rails, path, types))
        runtime = Runtime([m.spec for m in runtime.models.values()], own)
    app = create_app(
        config, runtime=runtime, deployment=deployment, load_on_startup=False, tracing=tracing
    )
    await runtime.start()
    base = "http://nimble.test"
    try:
        async with (
            httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url=base) as http,
            httpx2.AsyncClient(transport=httpx2.ASGITransport(app=app), base_url=base) as http2,
        ):
            yield Guarded(runtime, http, http2)
    finally:
        await runtime.stop()


def choice(text: str = ANSWER) -> dict[str, Any]:
    """The body fields that make the fake engine write `text`."""
    return {"guided_choice": [text], "max_tokens": 500}
