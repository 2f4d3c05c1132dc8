"""`--lora-dir` watched: adapters added there are loaded, changed ones reloaded, removed
ones unloaded, without a restart (NIM's `NIM_PEFT_REFRESH_INTERVAL`, done by looking).

The folder is looked at every `interval` seconds (a poll, not inotify: it works the same on
NFS, ConfigMap and PVC volumes). A new or changed adapter is loaded at the first look that
finds it as it was at the look before (size and modification time of each of its files), so
a file still being copied is never loaded half-written. An adapter that fails to load is
logged once and tried again only when its files change.
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

from nimble.errors import NimbleError
from nimble.models.adapters import FoundAdapter, fingerprint, resolve, scan
from nimble.runtime.adapters import Adapters

log = logging.getLogger("nimble.adapters")

Fingerprint = tuple[tuple[str, int, int], ...]


class AdapterWatcher:
    def __init__(self, adapters: Adapters, directory: Path, interval: float):
        self.adapters = adapters
        self.directory = directory
        self.interval = interval
        self._settled: dict[str, Fingerprint] = {}  # as last loaded (or last failed)
        self._seen: dict[str, Fingerprint] = {}  # as at the last look

    async def run(self) -> None:
        self._settled = await asyncio.to_thread(self._current_static)
        while True:
            await asyncio.sleep(self.interval)
            try:
                await self.look()
            except Exception:  # a look that fails must not end the watching
                log.exception("adapters in %s: this look failed", self.directory)

    def _current_static(self) -> dict[str, Fingerprint]:
        """Fingerprints of the folder's adapters that were loaded at start."""
        found = scan(self.directory)
        return {
            name: fingerprint(adapter)
            for name, adapter in found.items()
            if (loaded := self.adapters.get(name)) is not None and loaded.spec.origin == "dir"
        }

    async def look(self) -> None:
        found = await asyncio.to_thread(scan, self.directory)
        marks = await asyncio.to_thread(lambda: {n: fingerprint(a) for n, a in found.items()})
        for loaded in list(self.adapters):
            name = loaded.spec.name
            if loaded.spec.origin == "dir" and name not in found:
                await self.adapters.unload(name)
                self._settled.pop(name, None)
        for name, adapter in found.items():
            mark = marks[name]
            seen, self._seen[name] = self._seen.get(name), mark
            if self._settled.get(name) == mark or seen != mark:
                continue  # unchanged, or still changing: look again next time
            self._settled[name] = mark
            await self._load(adapter)
        for name in set(self._seen) - set(found):
            del self._seen[name]
            self._settled.pop(name, None)

    async def _load(self, adapter: FoundAdapter) -> None:
        current = self.adapters.get(adapter.name)
        if current is not None and current.spec.origin != "dir":
            if current.spec.path == adapter.path:
                return  # named by --lora too: that one stands
            log.error(
                "%s: not loaded: adapter `%s` was loaded from %s already",
                adapter.path,
                adapter.name,
                current.spec.path,
            )
            return
        try:
            spec = await asyncio.to_thread(resolve, adapter, self.adapters.bases(), "dir")
            await self.adapters.load(spec, replace=True)
        except NimbleError as exc:
            log.error("adapter %s not loaded: %s", adapter.name, exc)
