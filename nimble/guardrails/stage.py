"""The guardrails stage of the request path: which rails apply to a request (its model's,
and those bound to the caller's key), the input check before admission, and the output
guard around the stream (`window.py`)."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import (
    AsyncGenerator,
    AsyncIterator,
    Awaitable,
    Callable,
    Coroutine,
    Iterator,
    Sequence,
)
from contextlib import contextmanager
from typing import Any

from nimble.errors import ConfigError, ContentFiltered, PermissionDenied
from nimble.guardrails.bound import Bound, Plan, note, worst
from nimble.guardrails.config import GuardrailsConfig
from nimble.guardrails.inputs import Place, pieces, rebuild
from nimble.guardrails.rail import STAGES, Check, ModelHandle, Stage, TextRedactor
from nimble.guardrails.window import guard_stream
from nimble.observability.record import RequestRecord
from nimble.types import GenerateRequest, GenerationChunk

log = logging.getLogger("nimble.guardrails")


class Guardrails:
    """The rails of a guardrails file, built and started once, shared by every request."""

    def __init__(self, config: GuardrailsConfig, models: ModelHandle):
        self.config = config
        with self._naming_the_file():
            self.rails = {
                name: Bound(spec, spec.kind.build(name, spec.settings, models))
                for name, spec in config.rails.items()
            }

    def check_models(self, served: Sequence[str]) -> None:
        """Refuse, before any model loads, rails on models that are not served."""
        where = f"guardrails {self.config.path}" if self.config.path else "guardrails"
        for name, spec in self.config.rails.items():
            for model in spec.kind.models(spec.settings):
                if model not in served:
                    raise ConfigError(
                        f"{where}: flows.{name}.model: `{model}` is not served here "
                        f"(served: {', '.join(served)})"
                    )
        for model in self.config.models:
            if model not in served:
                raise ConfigError(
                    f"{where}: models.{model}: not a served model (served: {', '.join(served)})"
                )

    async def start(self) -> None:
        with self._naming_the_file():
            for bound in self.rails.values():
                await bound.rail.start()

    @contextmanager
    def _naming_the_file(self) -> Iterator[None]:
        """A rail's refusal (`guardrails: flows.NAME.FIELD: ...`) with the file's name."""
        try:
            yield
        except ConfigError as exc:
            prefix = "guardrails: "
            if self.config.path is None or not exc.message.startswith(prefix):
                raise
            where = f"guardrails {self.config.path}: "
            raise ConfigError(where + exc.message.removeprefix(prefix)) from exc

    async def stop(self) -> None:
        for bound in self.rails.values():
            stop: Callable[[], Awaitable[None]] | None = getattr(bound.rail, "stop", None)
            if stop is not None:
                await stop()

    def plan(self, models: Sequence[str], key_rails: Sequence[str] = ()) -> Plan | None:
        """The rails for a request to a model served under `models` (its names: an
        adapter's, then its base's; the first the file names decides), by a key bound to
        `key_rails`; None: no rail. A key bound to a rail the file does not define is
        refused: skipping it would let the key past a rail it may not skip."""
        unknown = [name for name in key_rails if name not in self.rails]
        if unknown:
            log.error("API key bound to undefined guardrails %s", ", ".join(unknown))
            raise PermissionDenied(
                f"this API key is bound to guardrail {', '.join(unknown)}, which this "
                "service does not define; ask its operator"
            )
        model = next((m for m in models if m in self.config.models), models[0])
        stages: dict[Stage, tuple[Bound, ...]] = {}
        for stage in STAGES:
            names = list(self.config.flows(model, stage))
            names += [n for n in key_rails if stage in self.rails[n].spec.stages]
            stages[stage] = tuple(self.rails[n] for n in dict.fromkeys(names))
        if not stages["input"] and not stages["output"]:
            return None
        return Plan(stages["input"], stages["output"], self.config.window)

    async def redact_for_logs(self, text: str) -> str:
        """`text` with what every PII rail finds redacted (for `--log-prompts` lines)."""
        for bound in self.rails.values():
            redactor = getattr(bound.rail, "redactor", None)
            if isinstance(redactor, TextRedactor):
                text = await asyncio.to_thread(redactor.redact, text)
        return text

    async def check_input(
        self,
        plan: Plan,
        request: GenerateRequest,
        record: RequestRecord,
        prompt_text: str | None = None,
    ) -> GenerateRequest:
        """Run the input rails in order (each over every text at once); ContentFiltered at
        the first block, else the request with what the rails redacted replaced."""
        texts = {piece.place: piece for piece in pieces(request, prompt_text)}
        changed: dict[Place, str] = {}
        for bound in plan.input:
            targets = [piece for piece in texts.values() if bound.reads(piece.role)]
            if not targets:
                continue
            started = time.monotonic()
            checks = await _bounded([bound.run(p.text, "input") for p in targets])
            verdict = worst(checks)
            note(record, bound, "input", verdict, started)
            if verdict.decision == "block":
                param = "messages" if request.messages is not None else "prompt"
                raise ContentFiltered(bound.name, param=param)
            for piece, check in zip(targets, checks, strict=True):
                if check.decision == "redact" and check.text is not None:
                    texts[piece.place] = type(piece)(piece.place, piece.role, check.text)
                    changed[piece.place] = check.text
        return rebuild(request, changed)

    def guard_output(
        self,
        plan: Plan,
        chunks: AsyncIterator[GenerationChunk],
        record: RequestRecord,
        *,
        choices: int,
        stop: Callable[[], Awaitable[None]],
        prompt_tokens: Callable[[], Awaitable[int]],
    ) -> AsyncGenerator[GenerationChunk, None]:
        return guard_stream(
            plan, chunks, record, choices=choices, stop=stop, prompt_tokens=prompt_tokens
        )

    def describe(self, served: Sequence[str]) -> dict[str, Any]:
        """The rails in force, for the deployment record: each rail (type, stages, its
        settings without secrets), the lists each served model runs, the streaming window.
        A key bound to rails (the keys' `rails`) adds them on the stages they list."""
        config = self.config
        return {
            "file": str(config.path) if config.path else None,
            "rails": {name: spec.record() for name, spec in config.rails.items()},
            "models": {
                model: {stage: list(config.flows(model, stage)) for stage in STAGES}
                for model in served
            },
            "streaming": {
                "chunk_size": config.window.chunk_size,
                "context_size": config.window.context_size,
                "unit": "characters",
            },
        }


# texts of one request checked at once by one rail: a long conversation must not flood a
# judge's queue (its 429s would fail the checks)
_AT_ONCE = 8


async def _bounded(checks: list[Coroutine[Any, Any, Check]]) -> list[Check]:
    gate = asyncio.Semaphore(_AT_ONCE)

    async def one(check: Coroutine[Any, Any, Check]) -> Check:
        async with gate:
            return await check

    return list(await asyncio.gather(*(one(c) for c in checks)))
