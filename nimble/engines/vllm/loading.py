"""LoRA adapters into and out of a running vLLM through its own `/v1/load_lora_adapter` and
`/v1/unload_lora_adapter` (which versions exist and what vLLM calls each: `lora.py`).

- Loading a name that is loaded already loads the new version beside the old one; new
  requests go to the new one, and the old one leaves vLLM when its last request has ended.
- What vLLM refuses to load (400, 404: the file does not fit the model) is the client's
  InvalidRequest; anything else is an EngineError. What fails to unload is logged only: a
  restart forgets it anyway.
- After a restart the adapters loaded at run time are loaded again (the start's are on the
  command line); one vLLM refuses now is logged, and its requests fail with the reason.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

from nimble.engines.openai_wire import Json
from nimble.engines.vllm.lora import Version, VllmAdapters
from nimble.engines.vllm.wire import error_of, log
from nimble.errors import EngineError, InvalidRequest, NimbleError, Unavailable
from nimble.models.adapters import AdapterSpec

# the engine's POST to vLLM: (path, body, whether vLLM must be up) -> (status, payload);
# raises Unavailable when nothing listens, EngineError when the connection breaks
Call = Callable[[str, Json, bool], Awaitable[tuple[int, object]]]


class AdapterLoader:
    def __init__(self, model_id: str, lora: VllmAdapters, call: Call):
        self._id = model_id
        self._lora = lora
        self._call = call
        self._unloads: set[asyncio.Task[None]] = set()  # replaced versions leaving vLLM

    async def load(self, adapter: AdapterSpec) -> None:
        """Load `adapter` into vLLM as a new version; a loaded one of that name keeps its
        requests in flight and leaves vLLM when they have ended."""
        version = await asyncio.to_thread(self._lora.prepare, adapter)
        await self._load(version, ready=True)
        old = self._lora.install(version)
        if old is not None:
            await self._unload(old)

    async def unload(self, name: str) -> None:
        version = self._lora.remove(name)
        if version is not None:
            await self._unload(version)

    def acquire(self, name: str) -> Version:
        """The version of `name` a new request runs on (release it when the request ends)."""
        return self._lora.acquire(name)

    def release(self, version: Version) -> None:
        if self._lora.release(version):  # replaced meanwhile: it may leave vLLM now
            task = asyncio.create_task(self._unload(version), name=f"unload {version.vllm_name}")
            self._unloads.add(task)
            task.add_done_callback(self._unloads.discard)

    async def reload(self) -> None:
        """After a restart, before the engine counts as up: the adapters loaded at run time,
        loaded again."""
        for version in self._lora.to_reload():
            try:
                await self._load(version, ready=False)
                version.broken = None
            except NimbleError as exc:
                version.broken = str(exc)
                log.error(
                    "vllm for %s: adapter %s not loaded again: %s", self._id, version.spec.name, exc
                )

    def cancel(self) -> None:
        """Stop the unloads still under way (the engine is stopping)."""
        for task in list(self._unloads):
            task.cancel()

    async def _load(self, version: Version, *, ready: bool) -> None:
        body = {"lora_name": version.vllm_name, "lora_path": str(version.spec.path)}
        status, payload = await self._call("/v1/load_lora_adapter", body, ready)
        if status == 200:
            log.info("vllm for %s: adapter %s loaded", self._id, version.vllm_name)
            return
        message = " ".join(str(error_of(status, payload, "lora_path")).split())[:500]  # one line
        if status in (400, 404):  # vLLM's refusal: the file does not fit
            raise InvalidRequest(
                f"{version.spec.path}: vLLM refused the adapter: {message}", param="lora_path"
            )
        raise EngineError(f"vllm ({self._id}): loading adapter {version.spec.name}: {message}")

    async def _unload(self, version: Version) -> None:
        """Take `version` out of vLLM (what fails is logged: vLLM keeps some memory)."""
        self._lora.forget(version)
        try:
            body = {"lora_name": version.vllm_name}
            status, payload = await self._call("/v1/unload_lora_adapter", body, True)
        except (Unavailable, EngineError) as exc:  # a restart forgets it anyway
            name = version.vllm_name
            log.warning("vllm for %s: adapter %s not unloaded: %s", self._id, name, exc)
            return
        if status != 200:
            log.warning(
                "vllm for %s: unloading adapter %s: %s",
                self._id,
                version.vllm_name,
                error_of(status, payload, "lora_name"),
            )
        else:
            log.info("vllm for %s: adapter %s unloaded", self._id, version.vllm_name)
