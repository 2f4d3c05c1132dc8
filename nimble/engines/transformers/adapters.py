"""LoRA adapters on the transformers engine (its `AdapterHost` side), through peft.

- Format: PEFT folders (`adapter_config.json` + `adapter_model.safetensors`), plain LoRA.
  A GGUF adapter, or one that does not fit the model, is refused in one line naming it
  (`lora.py`). peft is imported with the first adapter: without adapters the engine runs
  without peft.
- Mixed batches: requests for different adapters and the base share the one batch and its
  KV cache; each row names its adapter in every forward pass and peft applies each
  adapter to its own rows only (`lora.py`). A base row's output is the base model's.
- Loading never stops the batch for longer than the injection itself: the folder is read
  on a worker thread, then the layers and weights go in on the scheduler thread between
  two decode steps.
- Replace (the same name loaded again): the new weights go in under a new internal key
  and the name points to it at once; requests already running keep the key they started
  with, and the old key is deleted when the last of them ends. Unload: the name goes at
  once, the weights when no request holds them.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
from collections import Counter
from collections.abc import Callable
from types import ModuleType
from typing import TYPE_CHECKING, Any

from nimble.engines.transformers.batching import Scheduler
from nimble.engines.transformers.job import BASE_MODEL
from nimble.errors import InvalidRequest
from nimble.models.adapters import AdapterSpec

if TYPE_CHECKING:
    from nimble.engines.transformers.lora import Lora

log = logging.getLogger("nimble.engines.transformers")


class EngineAdapters:
    """The adapters loaded into one model, served by name."""

    def __init__(self, model: Any, model_id: str, scheduler: Scheduler):
        self._model = model
        self._model_id = model_id
        self._scheduler = scheduler
        self._table = AdapterTable()
        self._lora: Lora | None = None

    def names(self) -> list[str]:
        return self._table.names()

    async def load(self, adapter: AdapterSpec) -> None:
        """Load `adapter` (or its new version, when its name is loaded already)."""
        lora = _lora_module(adapter)
        file = await asyncio.to_thread(lora.read, adapter, self._model_id)
        if self._lora is None:
            self._lora = lora.Lora(self._model, self._model_id)
            self._scheduler.route = self._lora.route
        key = self._table.new_key()
        try:
            await asyncio.wrap_future(self._scheduler.call(lambda: self._inject(key, file)))
        except InvalidRequest:
            raise
        except Exception as exc:  # peft failed in a way `lora.py` does not foresee
            log.warning(
                "adapter %s: peft could not load %s", adapter.name, adapter.path, exc_info=True
            )
            first = (str(exc).strip().splitlines() or [""])[0]
            raise InvalidRequest(
                f"{adapter.path}: not a LoRA adapter for model `{self._model_id}`: peft could "
                f"not load it: {type(exc).__name__}: {first}",
                param="lora_path",
            ) from exc
        stale = self._table.point(adapter.name, key)
        if stale is not None:
            await self._delete(stale)

    async def unload(self, name: str) -> None:
        stale = self._table.drop(name)
        if stale is not None:
            await self._delete(stale)

    def acquire(self, name: str | None) -> str:
        """The key a new request for adapter `name` runs on (BASE_MODEL for None), held
        until `release`."""
        return BASE_MODEL if name is None else self._table.acquire(name)

    def release(self, key: str) -> None:
        if key == BASE_MODEL:
            return
        stale = self._table.release(key)
        if stale is not None:  # a replaced or unloaded adapter's last request has ended
            try:
                future = self._scheduler.call(lambda: self._remove(stale))
            except Exception:  # the engine is stopping: the model goes with it
                return
            future.add_done_callback(_log_failure(stale))

    def _inject(self, key: str, file: Any) -> None:
        assert self._lora is not None
        self._lora.inject(key, file)

    def _remove(self, key: str) -> None:
        assert self._lora is not None
        self._lora.delete(key)

    async def _delete(self, key: str) -> None:
        """Delete `key`'s weights now (the name is gone either way: a failure is logged)."""
        try:
            await asyncio.wrap_future(self._scheduler.call(lambda: self._remove(key)))
        except Exception as exc:
            log.error("LoRA adapter key %s could not be deleted: %s", key, exc)


class AdapterTable:
    """Which key serves each adapter name, and how many requests hold each key (event loop
    only). A key no name points to any more is deleted when no request holds it: the
    methods return the key to delete now, if any."""

    def __init__(self) -> None:
        self._keys: dict[str, str] = {}  # served name -> key
        self._held: Counter[str] = Counter()  # key -> requests running on it
        self._numbers = itertools.count(1)

    def new_key(self) -> str:
        """A fresh internal key (peft names modules after it: no served name can be one)."""
        return f"lora-{next(self._numbers)}"

    def names(self) -> list[str]:
        return list(self._keys)

    def acquire(self, name: str) -> str:
        key = self._keys.get(name)
        if key is None:
            raise InvalidRequest(f"adapter `{name}` is not loaded", param="model")
        self._held[key] += 1
        return key

    def release(self, key: str) -> str | None:
        self._held[key] -= 1
        return self._unused(key)

    def point(self, name: str, key: str) -> str | None:
        """Serve `name` from `key`; returns the key it replaced when nothing holds it."""
        old = self._keys.get(name)
        self._keys[name] = key
        return self._unused(old) if old is not None and old != key else None

    def drop(self, name: str) -> str | None:
        old = self._keys.pop(name, None)
        return self._unused(old) if old is not None else None

    def _unused(self, key: str) -> str | None:
        if self._held[key] > 0 or key in self._keys.values():
            return None
        self._held.pop(key, None)
        return key


def _lora_module(adapter: AdapterSpec) -> ModuleType:
    try:
        from nimble.engines.transformers import lora
    except ImportError as exc:
        raise InvalidRequest(
            f"{adapter.path}: LoRA adapters on the transformers engine need peft "
            f"(pip install 'nimble[transformers]'): {exc}",
            param="lora_path",
        ) from exc
    return lora


def _log_failure(key: str) -> Callable[[Any], None]:
    def done(future: Any) -> None:
        if not future.cancelled() and future.exception() is not None:
            log.error("LoRA adapter key %s could not be deleted: %s", key, future.exception())

    return done
