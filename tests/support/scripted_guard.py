"""A generative guard model with a script instead of weights (no guard model's weights can be
had here): an engine that reads the conversation out of a Llama Guard 3 prompt, as the real
model receives it, and answers as Llama Guard does for a few phrases (`SCRIPT`), `safe`
otherwise. It keeps every prompt it was sent, so a test can check what the runtime asked.

Use it through `Runtime(..., engine_factory=with_scripted_guard)` on a spec whose engine is
`scripted-guard`."""

from __future__ import annotations

import re
from collections.abc import AsyncGenerator

from nimble.engines import Engine, EngineConfig, create_engine
from nimble.models import ModelSpec
from nimble.types import EngineInfo, GenerateRequest, GenerationChunk, Task, Usage

ENGINE = "scripted-guard"
SCRIPT = {  # a phrase in the user's message -> the model's answer, as Llama Guard writes it
    "steal": "\n\nunsafe\nS2",
    "bomb": "\n\nunsafe\nS1,S9",
    "gibberish": "I'm sorry, I cannot assess that.",  # not a verdict
}
_LAST_USER = re.compile(r"User: (.*?)\n\n(?:Agent: |<END CONVERSATION>)", re.S)


class ScriptedGuard:
    def __init__(self, spec: ModelSpec, config: EngineConfig):
        self.spec = spec
        self.prompts: list[str] = []

    async def start(self) -> None:
        pass

    async def stop(self) -> None:
        pass

    async def health(self) -> bool:
        return True

    def info(self) -> EngineInfo:
        return EngineInfo(ENGINE, "0", frozenset({Task.CHAT, Task.COMPLETION}), 4096, False)

    async def prompt_tokens(self, request: GenerateRequest, fits: int) -> int:
        return len(_text(request).split())

    async def generate(self, request: GenerateRequest) -> AsyncGenerator[GenerationChunk, None]:
        prompt = _text(request)
        self.prompts.append(prompt)
        found = _LAST_USER.search(prompt)
        said = found.group(1) if found else ""
        answer = next((a for phrase, a in SCRIPT.items() if phrase in said.lower()), "\n\nsafe")
        yield GenerationChunk(text=answer[:4])
        yield GenerationChunk(text=answer[4:], finish_reason="stop")
        yield GenerationChunk(usage=Usage(len(prompt.split()), len(answer.split())))


def _text(request: GenerateRequest) -> str:
    if request.messages is not None:
        return request.messages[-1].content
    return request.prompt if isinstance(request.prompt, str) else ""


def with_scripted_guard(spec: ModelSpec, config: EngineConfig) -> Engine:
    """The engine factory: the scripted guard for its specs, the registry's engines else."""
    return ScriptedGuard(spec, config) if spec.engine == ENGINE else create_engine(spec, config)
