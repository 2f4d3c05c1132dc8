"""The content-addressed model file cache: downloads, verifies and finds model files.

Layout of the cache root (`NIMBLE_CACHE_DIR`, a model store made by `create-model-store`):

```
<root>/
  blobs/sha256/<hex>        downloaded files, each named by the sha256 of its content
  refs/<key>.json           {"source", "sha256", "size"} for a downloaded file whose
                            manifest gives no sha256 (key: sha256 of the source URI), so
                            that `locate` finds it again; its hash is reported as recorded
  partial/<key>.part        a download in progress, resumed with an HTTP Range request
                            (key: the expected sha256, or the sha256 of the source URI)
  locks/<key>.lock          a cross-process lock held around download + verify + move
  index.json                {path: {"size", "mtime_ns", "sha256"}} of files already hashed
```

Local sources (absolute paths, `file://`, `pypi://`) are used in place, never copied. A
file is trusted when its size and modification time are those `index.json` recorded with
its hash; any change makes it hashed again. A download is verified before it is moved into
`blobs/` (with `os.replace`, so a blob is never half-written), and a file whose content is
not the expected one is deleted, never used. A blob whose content no longer matches its
name (truncated or damaged on disk) is not returned: `fetch` downloads it again.

Offline (`NIMBLE_OFFLINE`), nothing touches the network and httpx is not even imported.
The cache never writes outside its root; a read-only root (a mounted model store) works
for files that are present (the index is then not updated).
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any, Literal

from filelock import FileLock

from nimble.models.manifest import FileRef
from nimble.models.sources import (
    CacheError,
    DownloadProgress,
    is_local,
    local_path,
    remote_file,
    transfer,
)

__all__ = ["CacheError", "DownloadProgress", "FileStatus", "ModelCache"]

# present: downloaded and verified; local: used in place and verified; unverified: there,
# but the manifest gives no sha256 to check; missing: not there; corrupt: there, but its
# content is not the expected one (a cached copy is downloaded again by `fetch`)
FileStatus = Literal["present", "local", "unverified", "missing", "corrupt"]


class ModelCache:
    """Model files by `FileRef`: found locally, or downloaded into `root` and verified."""

    def __init__(
        self,
        root: Path,
        *,
        offline: bool = False,
        hf_endpoint: str | None = None,
        hf_token: str | None = None,
        timeout: float = 30.0,
    ) -> None:
        self.root = Path(root)
        self.offline = offline
        self.hf_endpoint = hf_endpoint
        self.timeout = timeout
        self._hf_token = hf_token
        self._index: dict[str, dict[str, Any]] | None = None

    def __repr__(self) -> str:  # never shows the token
        return f"ModelCache({str(self.root)!r}, offline={self.offline})"

    # -- finding files (never touches the network) --------------------------------------

    def blob_path(self, sha256: str) -> Path:
        return self.root / "blobs" / "sha256" / sha256

    def locate(self, ref: FileRef) -> Path | None:
        """The local path of the file if it is there and verified; no network."""
        if is_local(ref.source):
            try:
                path = local_path(ref)
            except CacheError:
                return None
            return path if self._matches(path, ref.sha256, ref.size_bytes) else None
        expected = ref.sha256 or self._recorded(ref)
        if expected is None:
            return None
        blob = self.blob_path(expected)
        return blob if self._matches(blob, expected, ref.size_bytes) else None

    def status(self, ref: FileRef) -> FileStatus:
        """Where the file stands, for `list-profiles` and `inspect` (see `FileStatus`)."""
        if self.locate(ref) is not None:
            if ref.sha256 is None:
                return "unverified"
            return "local" if is_local(ref.source) else "present"
        if is_local(ref.source):
            try:
                local_path(ref)
            except CacheError:
                return "missing"
            return "corrupt"
        expected = ref.sha256 or self._recorded(ref)
        there = expected is not None and self.blob_path(expected).is_file()
        return "corrupt" if there else "missing"

    def recorded_sha256(self, ref: FileRef) -> str | None:
        """The sha256 of the file as verified (or recorded, without a manifest hash)."""
        path = self.locate(ref)
        if path is None:
            return None
        return ref.sha256 or self._digest(path)

    def blobs(self) -> list[Path]:
        folder = self.root / "blobs" / "sha256"
        return sorted(p for p in folder.iterdir() if p.is_file()) if folder.is_dir() else []

    def store_size(self) -> int:
        """Bytes taken by downloaded files."""
        return sum(blob.stat().st_size for blob in self.blobs())

    # -- fetching --------------------------------------------------------------------------

    def fetch(self, ref: FileRef, progress: DownloadProgress | None = None) -> Path:
        """The local path of the file, downloaded if needed and always verified."""
        label = f"{ref.name} ({ref.source})"
        if is_local(ref.source):
            path = local_path(ref)
            self._check_local(ref, path, label)
            return path
        found = self.locate(ref)
        if found is not None:
            return found
        if self.offline:
            raise self._offline_error(ref, label)
        key = self._key(ref)
        locks = self.root / "locks"
        locks.mkdir(parents=True, exist_ok=True)
        with FileLock(locks / f"{key}.lock"):
            found = self.locate(ref)  # another process may have fetched it meanwhile
            if found is not None:
                return found
            return self._download(ref, key, label, progress)

    def _download(
        self, ref: FileRef, key: str, label: str, progress: DownloadProgress | None
    ) -> Path:
        import httpx

        remote = remote_file(ref, hf_endpoint=self.hf_endpoint, hf_token=self._hf_token)
        part = self.root / "partial" / f"{key}.part"
        part.parent.mkdir(parents=True, exist_ok=True)
        with httpx.Client(follow_redirects=True, timeout=self.timeout) as client:
            actual = transfer(client, remote, part, name=ref.name, label=label, progress=progress)
        size = part.stat().st_size
        problem = None
        if ref.sha256 is not None and actual != ref.sha256:
            problem = f"has sha256 {actual}, expected {ref.sha256}"
        elif ref.size_bytes is not None and size != ref.size_bytes:
            problem = f"has {size} bytes, expected {ref.size_bytes}"
        if problem is not None:
            part.unlink()
            raise CacheError(
                f"{label}: the downloaded file {problem}; it was deleted (the source serves "
                "another file than the manifest describes)"
            )
        blob = self.blob_path(actual)
        blob.parent.mkdir(parents=True, exist_ok=True)
        os.replace(part, blob)
        self._remember(blob, actual)
        if ref.sha256 is None:
            record = {"source": ref.source, "sha256": actual, "size": size}
            self._write_json(self.root / "refs" / f"{key}.json", record)
        return blob

    def _check_local(self, ref: FileRef, path: Path, label: str) -> None:
        if path.is_dir():  # a local model folder: its files are hashed by the engine
            return
        size = path.stat().st_size
        if ref.size_bytes is not None and size != ref.size_bytes:
            raise CacheError(
                f"{label}: {path} has {size} bytes, expected {ref.size_bytes}; refusing to use it"
            )
        if ref.sha256 is not None:
            actual = self._digest(path)
            if actual != ref.sha256:
                raise CacheError(
                    f"{label}: {path} has sha256 {actual}, expected {ref.sha256}; "
                    "refusing to use it"
                )

    def _offline_error(self, ref: FileRef, label: str) -> CacheError:
        advice = "run `nimble download <model>` where the network is reachable"
        expected = ref.sha256 or self._recorded(ref)
        blob = self.blob_path(expected) if expected else None
        if blob is not None and blob.is_file():
            return CacheError(
                f"{label}: the cached copy {blob} is damaged (its content is not sha256 "
                f"{expected}) and NIMBLE_OFFLINE is set; {advice}"
            )
        return CacheError(
            f"{label} is not in the cache {self.root} and NIMBLE_OFFLINE is set; {advice}"
        )

    # -- hashes, records and the index -------------------------------------------------

    @staticmethod
    def _key(ref: FileRef) -> str:
        return ref.sha256 or hashlib.sha256(ref.source.encode()).hexdigest()

    def _recorded(self, ref: FileRef) -> str | None:
        record = self._read_json(self.root / "refs" / f"{self._key(ref)}.json")
        sha = record.get("sha256")
        return sha if record.get("source") == ref.source and isinstance(sha, str) else None

    def _matches(self, path: Path, sha256: str | None, size: int | None) -> bool:
        try:
            if not path.is_file() or (size is not None and path.stat().st_size != size):
                return False
        except OSError:
            return False
        return sha256 is None or self._digest(path) == sha256

    def _digest(self, path: Path) -> str:
        """sha256 of a file, from the index when its size and mtime are unchanged."""
        stat = path.stat()
        key = str(path.resolve())
        entry = self._load_index().get(key)
        if (
            entry
            and entry.get("size") == stat.st_size
            and entry.get("mtime_ns") == stat.st_mtime_ns
        ):
            return str(entry["sha256"])
        with path.open("rb") as file:
            sha = hashlib.file_digest(file, "sha256").hexdigest()
        self._remember(path, sha)
        return sha

    def _remember(self, path: Path, sha256: str) -> None:
        stat = path.stat()
        entry = {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns, "sha256": sha256}
        index = self._load_index()
        index[str(path.resolve())] = entry
        try:  # merge what other processes recorded meanwhile; forget files that are gone
            (self.root / "locks").mkdir(parents=True, exist_ok=True)
            with FileLock(self.root / "locks" / "index.lock"):
                merged = {**self._read_json(self.root / "index.json"), **index}
                index = {p: e for p, e in merged.items() if Path(p).exists()}
                self._write_json(self.root / "index.json", index)
        except OSError:
            pass  # a read-only store: hashing again next time is the only cost
        self._index = index

    def _load_index(self) -> dict[str, dict[str, Any]]:
        if self._index is None:
            self._index = self._read_json(self.root / "index.json")
        return self._index

    @staticmethod
    def _read_json(path: Path) -> dict[str, Any]:
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError):
            return {}
        return data if isinstance(data, dict) else {}

    @staticmethod
    def _write_json(path: Path, data: dict[str, Any]) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(data, indent=1, sort_keys=True))
        os.replace(tmp, path)
