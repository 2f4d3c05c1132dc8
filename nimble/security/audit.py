"""The audit log: one hash-chained JSON line per request. TODO(audit): implementation."""

from __future__ import annotations

from pathlib import Path

from nimble.observability.record import RequestRecord


class AuditLog:
    """Appends one line per finished request to `path`."""

    def __init__(self, path: Path):
        self.path = path

    def write(self, record: RequestRecord, latency: float) -> None:
        return None

    def close(self) -> None:
        return None
