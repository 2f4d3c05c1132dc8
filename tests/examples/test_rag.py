"""examples/rag without a server: chunking, keyword vectors, fusion, the answer's sources, and
the embedded Qdrant store with made-up vectors."""

from __future__ import annotations

import itertools
import re
from pathlib import Path

import pytest

import examples.rag
from examples.rag import lexical
from examples.rag.chunking import Chunk, ChunkSettings, chunk_text, find_files, sections
from examples.rag.pipeline import Answer, fuse, prompt
from examples.rag.store import Hit, Store, StoreError, point_id

REPO = Path(__file__).resolve().parents[2]

DOC = """# Guide

Intro paragraph that says what the guide is about.

## Install

Run `pip install nimble`. It needs Python 3.11.

```bash
# not a heading: a comment inside a code block

pip install 'nimble[rag]'
```

### Offline

Set NIMBLE_OFFLINE=1 and nimble never touches the network.

## Empty section

## Serve

Serve with `nimble serve`.
"""


def _words(text: str) -> list[str]:
    return re.findall(r"\S+", text)


def test_examples_is_the_repository_package() -> None:
    # tests/examples must not shadow the repository's examples package
    assert Path(examples.rag.__file__).parent == REPO / "examples" / "rag"


def test_headings_trail_and_code_fences() -> None:
    chunks = chunk_text("guide.md", DOC)
    by_heading = {c.heading: c.text for c in chunks}
    assert list(by_heading) == [
        "Guide",
        "Guide > Install",
        "Guide > Install > Offline",
        "Guide > Serve",  # the empty section gave no chunk; Offline's level was closed
    ]
    assert "# not a heading" in by_heading["Guide > Install"]  # stays in its code block
    assert by_heading["Guide > Install > Offline"].startswith("Set NIMBLE_OFFLINE=1")
    assert chunks[1].context.startswith("Guide > Install\n\nRun `pip install nimble`.")


def test_plain_text_has_no_headings() -> None:
    (chunk,) = chunk_text("notes.txt", "# not a heading in a .txt file\n\nsecond paragraph")
    assert chunk.heading == ""
    assert chunk.text.startswith("# not a heading")
    assert chunk.context == chunk.text


def _long_doc() -> str:
    paragraphs = [
        " ".join(f"w{p}_{i}" for i in range(n)) for p, n in enumerate([30, 5, 80, 12, 45, 3, 60])
    ]
    return "# Long\n\n" + "\n\n".join(paragraphs) + "\n\n## Next\n\n" + paragraphs[0]


@pytest.mark.parametrize(("size", "overlap"), [(120, 30), (200, 0), (64, 32), (400, 100)])
def test_size_overlap_and_nothing_lost(size: int, overlap: int) -> None:
    text = _long_doc()
    chunks = chunk_text("long.md", text, ChunkSettings(size, overlap))
    assert all(len(c.text) <= size for c in chunks)
    # every word of the file is in some chunk, in order, none invented
    body_words = [w for w in _words(text) if not w.startswith("#") and w not in {"Long", "Next"}]
    seen = [w for c in chunks for w in _words(c.text)]
    assert set(seen) == set(body_words)
    for before, after in itertools.pairwise(chunks):
        if before.heading != after.heading:  # no overlap across sections
            assert not set(_words(after.text)) & set(_words(before.text))
            continue
        shared = [w for w in _words(after.text) if w in _words(before.text)]  # words are unique
        if overlap:
            # the next chunk starts with the last words of the previous one, whole words
            assert shared and _words(before.text)[-len(shared) :] == shared
            assert _words(after.text)[: len(shared)] == shared
            assert len(" ".join(shared)) <= overlap
        else:
            assert not shared


def test_sizes_in_tokens() -> None:
    def count(text: str) -> int:
        return len(_words(text))

    chunks = chunk_text("long.md", _long_doc(), ChunkSettings(size=25, overlap=5, length=count))
    assert len(chunks) > 5
    assert all(count(c.text) <= 25 for c in chunks)
    assert all(count(c.text) >= 1 for c in chunks)


def test_one_word_longer_than_the_limit_is_cut() -> None:
    chunks = chunk_text("x.md", "a" * 50, ChunkSettings(size=20, overlap=0))
    assert [len(c.text) for c in chunks] == [18, 18, 14]  # 20 less the room for a blank line
    assert "".join(c.text for c in chunks) == "a" * 50


def test_stable_ids_and_no_empty_chunks() -> None:
    first = chunk_text("docs/guide.md", DOC, ChunkSettings(60, 20))
    second = chunk_text("docs/guide.md", DOC, ChunkSettings(60, 20))
    assert first == second
    assert [c.id for c in first] == [f"docs/guide.md#{i}" for i in range(len(first))]
    assert all(c.text.strip() for c in first)
    assert point_id(first[0].id) == point_id("docs/guide.md#0") != point_id(first[1].id)
    assert chunk_text("e.md", "") == []
    assert chunk_text("e.md", "# Only\n\n## Headings\n\n   \n\t\n") == []


def test_sections_ignore_tilde_fences() -> None:
    text = "# A\n~~~\n# inside\n~~~\n# B\nb"
    assert [h for h, _ in sections(text)] == ["", "A", "B"]


def test_settings_refuse_nonsense() -> None:
    with pytest.raises(ValueError, match="overlap"):
        ChunkSettings(size=100, overlap=60)
    with pytest.raises(ValueError):
        ChunkSettings(size=0, overlap=0)


def test_find_files(tmp_path: Path) -> None:
    (tmp_path / "b.md").write_text("b")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "a.txt").write_text("a")
    (tmp_path / "sub" / "c.py").write_text("not text")
    (tmp_path / ".hidden").mkdir()
    (tmp_path / ".hidden" / "d.md").write_text("d")
    assert find_files([tmp_path]) == [tmp_path / "b.md", tmp_path / "sub" / "a.txt"]
    with pytest.raises(FileNotFoundError):
        find_files([tmp_path / "missing"])


def test_keyword_terms() -> None:
    assert lexical.terms("Which variable is NIMBLE_OFFLINE? Caches, tokens, class.") == [
        "variabl",
        "nimble_offlin",
        "nimbl",
        "offlin",
        "cach",
        "token",
        "class",
    ]
    indices, values = lexical.document_vector("token token cache", average_length=3)
    assert indices == sorted(indices) and len(indices) == 2
    weights = dict(zip(indices, values, strict=True))
    assert weights[lexical.term_id("token")] > weights[lexical.term_id("cach")]
    assert lexical.query_vector("the of") == ([], [])


def _hit(name: str, score: float = 0.0) -> Hit:
    return Hit(Chunk("f.md", int(name[1:]), "H", name), score)


def test_reciprocal_rank_fusion() -> None:
    a, b, c, d = (_hit(n) for n in ("c0", "c1", "c2", "c3"))
    fused = fuse([[a, b, c], [b, c, d]])
    assert [h.chunk.text for h in fused] == ["c1", "c2", "c0", "c3"]  # both lists beat one
    assert fused[0].score == pytest.approx(1 / 62 + 1 / 61)
    assert [h.chunk.text for h in fuse([[a, b], [b, a]])] == ["c0", "c1"]  # ties: first order


def test_answer_ends_with_deterministic_sources() -> None:
    sources = (
        Hit(Chunk("docs/models.md", 21, "Models > The cache", "NIMBLE_OFFLINE=1 ..."), 0.9),
        Hit(Chunk("notes.txt", 0, "", "plain"), 0.5),
    )
    answer = Answer("q?", sources, sources, reranked=True, text="Set NIMBLE_OFFLINE=1 [1].\n")
    assert answer.render() == (
        "Set NIMBLE_OFFLINE=1 [1].\n\nSources:\n"
        "[1] docs/models.md — Models > The cache (chunk 21)\n"
        "[2] notes.txt (chunk 0)"
    )
    text = prompt("Which variable?", sources)
    assert "[1] Models > The cache\n\nNIMBLE_OFFLINE=1" in text and "[2] plain" in text
    assert text.endswith("Question: Which variable?")


def test_embedded_store(tmp_path: Path) -> None:
    chunks = [Chunk("a.md", i, "A", f"alpha {word}") for i, word in enumerate(["one", "two"])]
    chunks.append(Chunk("b.md", 0, "B", "NIMBLE_OFFLINE keeps nimble off the network"))
    vectors = [[1.0, 0.0, 0.0], [0.8, 0.6, 0.0], [0.0, 0.0, 1.0]]
    with Store("test", path=tmp_path / "q") as store:
        with pytest.raises(StoreError, match="ingest documents first"):
            store.search([1.0, 0.0, 0.0], 2)
        store.prepare(3)
        store.upsert(chunks, vectors, average_length=4)
        store.upsert(chunks, vectors, average_length=4)  # same ids: replaced, not added
        assert store.count() == 3
        assert [h.chunk for h in store.search([0.9, 0.1, 0.0], 2)] == chunks[:2]
        keyword = store.keyword_search("what is nimble_offline?", 3)
        assert [h.chunk for h in keyword] == [chunks[2]]
        store.drop_stale("a.md", 1)  # a.md now has one chunk
        assert store.count() == 2
        with pytest.raises(StoreError, match="3-dimensional"):
            store.prepare(384)
        store.prepare(384, recreate=True)
        assert store.count() == 0 and store.dimensions() == 384
    with Store("test", path=tmp_path / "q") as again:  # the folder keeps the collection
        assert again.dimensions() == 384
