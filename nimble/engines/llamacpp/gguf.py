"""Just enough of the GGUF format to vet a file before llama.cpp sees it.

llama.cpp reports a bad file only on stderr ("Failed to init server" is all Python gets), so
the engine checks the cheap things itself: the file exists, starts with the GGUF magic, and
its metadata section is complete. It also reads the trained context window
(`<architecture>.context_length`), which the KV cache must be sized from before loading,
and (`read_gguf_layout`) the scalar metadata and every tensor's name and shape, which a
LoRA adapter is checked against (`adapters.py`). This reader skips the big arrays (the
vocabulary) instead of parsing them, so reading a model's layout takes milliseconds.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from nimble.errors import ModelLoadError

MAGIC = b"GGUF"
_STRING = 8
_ARRAY = 9
# value type -> struct format of one little-endian scalar (GGUF v2/v3)
_SCALARS: dict[int, str] = {
    0: "<B",
    1: "<b",
    2: "<H",
    3: "<h",
    4: "<I",
    5: "<i",
    6: "<f",
    7: "<?",
    10: "<Q",
    11: "<q",
    12: "<d",
}


@dataclass(frozen=True)
class GgufSummary:
    version: int
    tensor_count: int
    architecture: str | None
    context_length: int | None


class _Bad(Exception):
    """The file is not a usable GGUF file; the message says why."""


class _Truncated(_Bad):
    def __init__(self) -> None:
        super().__init__("GGUF metadata is truncated or corrupt")


class _Reader:
    def __init__(self, file: BinaryIO, size: int):
        self._file = file
        self._size = size

    def take(self, n: int) -> bytes:
        data = self._file.read(n)
        if len(data) != n:
            raise _Truncated
        return data

    def unpack(self, fmt: str) -> int | float | bool:
        value: int | float | bool = struct.unpack(fmt, self.take(struct.calcsize(fmt)))[0]
        return value

    def count(self) -> int:
        n = int(self.unpack("<Q"))
        if n > self._size:
            raise _Truncated  # a length longer than the file: corrupt or cut short
        return n

    def string(self) -> str:
        return self.take(self.count()).decode("utf-8", errors="replace")

    def skip_array(self) -> None:
        kind, n = int(self.unpack("<I")), self.count()
        if kind in _SCALARS:
            self.skip(n * struct.calcsize(_SCALARS[kind]))
        else:
            for _ in range(n):
                self.value(kind)

    def skip(self, n: int) -> None:
        if self._file.seek(n, 1) > self._size:
            raise _Truncated

    def value(self, kind: int) -> object:
        if kind in _SCALARS:
            return self.unpack(_SCALARS[kind])
        if kind == _STRING:
            return self.string()
        if kind == _ARRAY:
            self.skip_array()
            return None
        raise _Bad(f"corrupt GGUF metadata (unknown value type {kind})")


def read_gguf_summary(path: Path) -> GgufSummary:
    """Vet `path` as a GGUF file; raise ModelLoadError naming the file and the cause."""
    try:
        size = path.stat().st_size
        with path.open("rb") as file:
            return _summarise(_Reader(file, size))
    except FileNotFoundError:
        raise ModelLoadError(f"{path}: model file not found") from None
    except IsADirectoryError:
        raise ModelLoadError(f"{path}: is a folder, not a GGUF file") from None
    except PermissionError:
        raise ModelLoadError(f"{path}: permission denied reading the model file") from None
    except _Bad as exc:
        raise ModelLoadError(f"{path}: {exc}") from None


@dataclass(frozen=True)
class GgufLayout:
    """A GGUF file's scalar metadata (arrays left out) and its tensors' shapes (GGUF's
    order: the row length first)."""

    metadata: dict[str, object]
    tensors: dict[str, tuple[int, ...]]


def read_gguf_layout(path: Path) -> GgufLayout:
    """The metadata and tensor shapes of `path`; raise ModelLoadError naming the file."""
    try:
        size = path.stat().st_size
        with path.open("rb") as file:
            reader = _Reader(file, size)
            _, tensor_count, metadata = _metadata(reader)
            tensors: dict[str, tuple[int, ...]] = {}
            for _ in range(tensor_count):
                name = reader.string()
                dims = int(reader.unpack("<I"))
                tensors[name] = tuple(int(reader.unpack("<Q")) for _ in range(dims))
                reader.skip(12)  # the type (u32) and the data offset (u64)
            return GgufLayout(metadata, tensors)
    except OSError as exc:
        raise ModelLoadError(f"{path}: cannot read the file: {exc.strerror or exc}") from None
    except _Bad as exc:
        raise ModelLoadError(f"{path}: {exc}") from None


def _metadata(reader: _Reader) -> tuple[int, int, dict[str, object]]:
    """The header (version, tensor count) and the metadata section."""
    try:
        magic = reader.take(4)
    except _Truncated:
        magic = b""
    if magic != MAGIC:
        raise _Bad(f"not a GGUF file (starts with {magic!r}, expected {MAGIC!r})")
    version = int(reader.unpack("<I"))
    if version not in (2, 3):
        raise _Bad(f"unsupported GGUF version {version} (llama.cpp reads 2 and 3)")
    tensor_count, kv_count = int(reader.unpack("<Q")), int(reader.unpack("<Q"))
    metadata: dict[str, object] = {}
    for _ in range(kv_count):
        key = reader.string()
        metadata[key] = reader.value(int(reader.unpack("<I")))
    return version, tensor_count, metadata


def _summarise(reader: _Reader) -> GgufSummary:
    version, tensor_count, metadata = _metadata(reader)
    arch = metadata.get("general.architecture")
    architecture = arch if isinstance(arch, str) else None
    context = metadata.get(f"{architecture}.context_length")
    context_length = None
    if isinstance(context, int) and not isinstance(context, bool) and context > 0:
        context_length = context
    return GgufSummary(version, tensor_count, architecture, context_length)
