"""LoRA adapters served under their own names, over a base model's engine.

An adapter is requested by `model` like any model; the request goes to its base model's
engine (same admission gate: adapters and the base share the engine's slots) with
`GenerateRequest.adapter` set, and is counted, logged and metered under the adapter's name.

Loading one calls the engine while everything else keeps running. Unloading takes the
name away at once (a new request for it is a 404) and frees the engine's copy when the
last request using it has finished: requests in flight always finish on the adapter they
started with, and the call never waits for them.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

from nimble.engines import AdapterHost
from nimble.errors import InvalidRequest, ModelNotFound
from nimble.models.adapters import AdapterSpec
from nimble.runtime.served import ServedModel
from nimble.types import Task

log = logging.getLogger("nimble.adapters")

GENERATIVE = frozenset({Task.CHAT, Task.COMPLETION})  # the tasks an adapter serves


@dataclass
class LoadedAdapter:
    spec: AdapterSpec
    created: int = field(default_factory=lambda: int(time.time()))
    inflight: int = 0
    idle: asyncio.Event = field(default_factory=asyncio.Event)

    def __post_init__(self) -> None:
        self.idle.set()


class Adapters:
    """The adapters being served, by name."""

    def __init__(self, models: dict[str, ServedModel]):
        self._models = models
        self._served: dict[str, LoadedAdapter] = {}
        self._retiring: set[asyncio.Task[None]] = set()
        self._lock = asyncio.Lock()  # one load or unload at a time

    def __iter__(self) -> Iterator[LoadedAdapter]:
        return iter(list(self._served.values()))

    def __contains__(self, name: str) -> bool:
        return name in self._served

    def get(self, name: str) -> LoadedAdapter | None:
        return self._served.get(name)

    def started(self, model: ServedModel) -> None:
        """The model's engine is up with its static adapters (`spec.adapters`)."""
        for adapter in model.spec.adapters:
            self._served[adapter.name] = LoadedAdapter(adapter)

    def host(self, base: str) -> tuple[ServedModel, AdapterHost]:
        """The base model and its engine as an adapter host (400 where it cannot be one)."""
        bases = self.bases()
        if base not in bases:
            raise InvalidRequest(
                f"`{base}` is not a generative model served here; adapters apply to "
                f"{', '.join(bases) or 'none'}",
                param="base_model_name",
            )
        model = self._models[base]
        engine = model.engine
        if not isinstance(engine, AdapterHost):
            raise InvalidRequest(
                f"model `{base}`: the {model.spec.engine} engine does not serve LoRA adapters",
                param="model",
            )
        return model, engine

    def bases(self) -> list[str]:
        return [name for name, model in self._models.items() if model.spec.tasks & GENERATIVE]

    async def load(self, adapter: AdapterSpec, *, replace: bool = False) -> None:
        """Load `adapter` into its base's engine and serve it under its name. `replace`:
        a loaded adapter of that name gives way (its requests in flight finish on it);
        else a taken name is a 400."""
        async with self._lock:
            if adapter.name in self._models:
                raise InvalidRequest(
                    f"`{adapter.name}` is the name of a served model; an adapter needs its own",
                    param="lora_name",
                )
            if adapter.name in self._served and not replace:
                raise InvalidRequest(
                    f"an adapter named `{adapter.name}` is already loaded; unload it first",
                    param="lora_name",
                )
            _, engine = self.host(adapter.base)
            await engine.load_adapter(adapter)
            # a replaced one: the engine swapped it in place, nothing left to free
            self._served[adapter.name] = LoadedAdapter(adapter)
            log.info(
                "adapter %s loaded over %s from %s (sha256 %s)",
                adapter.name,
                adapter.base,
                adapter.path,
                adapter.sha256[:12],
            )

    async def unload(self, name: str) -> int:
        """Stop serving `name` (404 from now on); its engine copy is freed once its requests
        in flight (returned) have finished."""
        async with self._lock:
            loaded = self._served.pop(name, None)
            if loaded is None:
                raise ModelNotFound(f"no adapter named `{name}` is loaded", param="lora_name")
            running = loaded.inflight
            task = asyncio.create_task(self._free(loaded), name=f"unload {name}")
            self._retiring.add(task)
            task.add_done_callback(self._retiring.discard)
        log.info("adapter %s unloaded (%d requests in flight finish first)", name, running)
        return running

    async def _free(self, loaded: LoadedAdapter) -> None:
        await loaded.idle.wait()
        async with self._lock:
            if loaded.spec.name in self._served:  # loaded again meanwhile: it is the engine's now
                return
            _, engine = self.host(loaded.spec.base)
            try:
                await engine.unload_adapter(loaded.spec.name)
            except Exception:  # the name is gone either way; the engine keeps some memory
                log.exception("adapter %s: the engine could not free it", loaded.spec.name)

    async def stop(self) -> None:
        for task in list(self._retiring):
            task.cancel()

    @contextmanager
    def using(self, name: str | None) -> Iterator[LoadedAdapter | None]:
        """Count a request on adapter `name` while it runs (404 if not loaded; None: the
        base model, nothing to count)."""
        if name is None:
            yield None
            return
        loaded = self._served.get(name)
        if loaded is None:
            raise ModelNotFound(f"The model `{name}` does not exist.", param="model")
        loaded.inflight += 1
        loaded.idle.clear()
        try:
            yield loaded
        finally:
            loaded.inflight -= 1
            if loaded.inflight == 0:
                loaded.idle.set()
