"""examples/rag against a real `nimble serve` (chat + embeddings): the repository's own docs
ingested into an embedded Qdrant store, questions whose answers sit in known chunks, recall@3
after reranking, the answer's Sources list, the fallback without a reranker, and the CLI."""

from __future__ import annotations

import re
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from examples.rag import Pipeline, RagConfig, Store
from examples.rag.chunking import Chunk, chunk_file, find_files
from examples.rag.pipeline import Answer, source_label
from tests.e2e.conftest import CHAT_MODEL, EMBED_MODEL, NimbleProcess

pytestmark = [pytest.mark.e2e, pytest.mark.models]

REPO = Path(__file__).resolve().parents[2]
DOCS = [REPO / "docs", REPO / "README.md"]
MAX_TOKENS = 32  # the answers' text is not checked, only their sources: keep it quick
ANSWERED = 4  # cases the chat model answers in full (one request per running slot)

# (question, where the answer is: (file, a phrase of the chunk), ...): one place, or each of
# the few places that state the fact. Phrases are compared with whitespace collapsed.
CASES: list[tuple[str, tuple[tuple[str, str], ...]]] = [
    (
        "Which environment variable makes nimble never touch the network?",
        (
            ("docs/models.md", "`NIMBLE_OFFLINE=1` never touches the network"),
            ("README.md", "`NIMBLE_OFFLINE=1` never touches the network"),
        ),
    ),
    (
        "Which paths does the management port serve, and does it need an API key?",
        (("docs/operations.md", "`--management-port 9000` serves"),),
    ),
    (
        "What file mode is the audit log file created with?",
        (("docs/operations.md", "created with mode 0600"),),
    ),
    (
        "How long does a fresh build of the container image take?",
        (("docs/deploy.md", "A fresh build (base root filesystem included) takes"),),
    ),
    (
        "Which metric counts the tokens generated?",
        (("docs/operations.md", "| `nimble_generation_tokens_total` | counter"),),
    ),
    (
        "Why should autoscaling use waiting requests instead of CPU usage?",
        (
            ("docs/deploy.md", "llama.cpp's threads spin"),
            ("docs/scaling.md", "llama.cpp's threads spin"),
        ),
    ),
    (
        "What is the answer when an API key goes over its requests_per_minute limit?",
        (("docs/operations.md", "over `requests_per_minute`"),),
    ),
    (
        "Where in the cache are downloaded model files stored?",
        (("docs/models.md", "blobs/sha256/<hex>"),),
    ),
    (
        "What happens to a client without a certificate when the server runs in MTLS mode?",
        (("docs/operations.md", "fails the TLS handshake"),),
    ),
    (
        "How is the context window reduced when a model's full context does not fit in memory?",
        (("docs/models.md", "the window is cut, in steps of"),),
    ),
    (
        "How do I rotate the audit log file?",
        (("docs/operations.md", "**Rotation.** Stop nimble"),),
    ),
    (
        "Why does nimble use ONNX for embeddings instead of PyTorch?",
        (("README.md", "Why ONNX for embeddings"),),
    ),
    (
        "Which token is needed to download gated models like Llama or Gemma?",
        (("docs/models.md", "Gated models (Llama, Gemma, Mistral): set `NIMBLE_HF_TOKEN`"),),
    ),
    (
        "What egress does the Helm chart's NetworkPolicy allow?",
        (
            ("docs/deploy.md", "no egress but DNS"),
            ("docs/scaling.md", "Egress is nothing but: DNS"),  # the chart's full policy
        ),
    ),
    (
        "What does nimble do when it receives SIGTERM?",
        (
            ("README.md", "On SIGTERM readiness turns 503"),
            ("docs/deploy.md", "stops gracefully on SIGTERM"),
        ),
    ),
    (
        "Which environment variable sends traces to an OpenTelemetry collector?",
        (
            ("docs/operations.md", "exported over OTLP/HTTP when `OTEL_EXPORTER_OTLP_ENDPOINT`"),
            ("README.md", "OTLP export when `OTEL_EXPORTER_OTLP_ENDPOINT` is set"),
        ),
    ),
]


def _flat(text: str) -> str:
    return " ".join(text.split())


def _expected(chunk: Chunk, where: tuple[tuple[str, str], ...]) -> bool:
    return any(chunk.file == file and _flat(phrase) in _flat(chunk.text) for file, phrase in where)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NimbleProcess]:
    process = NimbleProcess(
        ["--model", CHAT_MODEL, "--model", EMBED_MODEL],
        tmp_path_factory.mktemp("rag") / "nimble.log",
    )
    try:
        yield process.wait_ready()
    finally:
        process.terminate()


@pytest.fixture(scope="module")
def config(server: NimbleProcess) -> RagConfig:
    return RagConfig(base_url=server.base_url + "/v1", max_tokens=MAX_TOKENS)


@pytest.fixture(scope="module")
def store(config: RagConfig, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Store]:
    """The repository's docs, ingested once (input_type=passage) into an embedded store."""
    with Store("docs", path=tmp_path_factory.mktemp("qdrant")) as vectors:
        started = time.perf_counter()
        with Pipeline(config, vectors) as pipeline:
            report = pipeline.ingest(DOCS, root=REPO)
        files = find_files(DOCS)
        assert report.files == len(files) >= 5
        assert report.chunks == vectors.count() > 50
        print(
            f"\ningest: {report.chunks} chunks, {report.files} files, "
            f"{time.perf_counter() - started:.1f} s"
        )
        yield vectors


def test_cases_point_at_real_chunks() -> None:
    """Each expected phrase is in a chunk of its file (else the docs changed: fix the case)."""
    chunks = [c for path in find_files(DOCS) for c in chunk_file(path, _name(path))]
    for question, where in CASES:
        assert any(_expected(c, where) for c in chunks), question


def test_recall_at_3_and_sources(config: RagConfig, store: Store) -> None:
    started = time.perf_counter()
    with Pipeline(config, store) as pipeline, ThreadPoolExecutor(ANSWERED) as pool:
        # retrieval and reranking one by one (the embedded store is single-threaded), for
        # every case: the sources are chosen here, before the model writes. The chat model
        # answers the first ANSWERED cases side by side (nimble's running slots); its text
        # is not what recall measures, and each answer is a prefill of three chunks
        selections = [pipeline.select(question) for question, _ in CASES]
        answered = list(pool.map(pipeline.answer, selections[:ANSWERED]))
    took = time.perf_counter() - started
    assert all(answer.text.strip() for answer in answered)
    answers = answered + [Answer.of(selection) for selection in selections[ANSWERED:]]
    found = 0
    for answer, (question, where) in zip(answers, CASES, strict=True):
        assert answer.reranked and not answer.notes  # /v1/rerank answered
        assert len(answer.sources) == 3 and len(answer.retrieved) == config.top_k
        rendered = answer.render()
        assert rendered.startswith(answer.text.strip() or "(no answer)")  # [n] kept as written
        listed = rendered.split("\n\nSources:\n", 1)[1].splitlines()
        assert listed == [f"[{n}] {source_label(h.chunk)}" for n, h in enumerate(answer.sources, 1)]
        hits = [n for n, h in enumerate(answer.sources, 1) if _expected(h.chunk, where)]
        if hits:  # the Sources list names the chunk that holds the answer
            found += 1
            cited = answer.sources[hits[0] - 1].chunk
            assert f"[{hits[0]}] {cited.file} — {cited.heading} (chunk {cited.index})" in listed
        print(f"{'hit ' if hits else 'MISS'} {question} -> {[h.chunk.id for h in answer.sources]}")
    recall = found / len(CASES)
    print(f"recall@3 {recall:.3f} ({found}/{len(CASES)}); {took:.1f} s, {ANSWERED} answered")
    assert recall >= 0.9


def test_no_reranker_keeps_retrieval_order(config: RagConfig, store: Store) -> None:
    """A 404 from /v1/rerank (here: an unknown model) is a warning, not a failure."""
    no_reranker = RagConfig(base_url=config.base_url, max_tokens=4, rerank_model="no-such-model")
    with Pipeline(no_reranker, store) as pipeline:
        answer = pipeline.ask(CASES[0][0])
    assert not answer.reranked
    (note,) = answer.notes
    assert "no reranking" in note and "kept the retrieval order" in note
    assert answer.sources == answer.retrieved[:3]


def test_cli_ingest_and_ask(server: NimbleProcess, tmp_path: Path) -> None:
    common = ["--store", str(tmp_path / "qdrant"), "--base-url", server.base_url + "/v1"]
    ingest = _cli(["ingest", "README.md", *common])
    assert re.search(r"^\d+ chunks from 1 files in [\d.]+ s", ingest.stdout, re.M), ingest.stdout
    question = "Why does nimble use ONNX for embeddings instead of PyTorch?"
    asked = _cli(["ask", question, *common, "--max-tokens", str(MAX_TOKENS)])
    answer, sources = asked.stdout.split("\nSources:\n")
    assert answer.strip()
    onnx = next(c for c in chunk_file(REPO / "README.md", "README.md") if "Why ONNX" in c.text)
    listed = sources.splitlines()
    assert [line[:3] for line in listed] == ["[1]", "[2]", "[3]"]
    assert any(line.endswith(source_label(onnx)) for line in listed), asked.stdout


def _cli(args: list[str]) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(
        [sys.executable, "-m", "examples.rag", *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    return done


def _name(path: Path) -> str:
    return path.resolve().relative_to(REPO).as_posix()
