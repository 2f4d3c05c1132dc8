"""Keyword (BM25) sparse vectors, so that Qdrant can match exact terms beside the embeddings.

A small embedding model such as all-MiniLM-L6-v2 sees "NIMBLE_OFFLINE", "0600" or
"--management-port" as noise; a keyword match does not. Each chunk gets a sparse vector of
its terms (hashed to 32-bit ids) weighted by BM25's term-frequency saturation; Qdrant
multiplies in each term's inverse document frequency (`Modifier.IDF`) at query time, over
the whole collection, so the sum is BM25. A question's vector has weight 1 per term.
"""

from __future__ import annotations

import re
import zlib
from collections import Counter

K1 = 1.2  # BM25 term-frequency saturation
B = 0.75  # BM25 length normalisation
_WORD = re.compile(r"[a-z0-9]+(?:_[a-z0-9]+)*")
_STOP_WORDS = """a an and are as at be by can do does for from how i in into is it its my no not
of on or that the this to use what when where which who why will with you your"""
_STOP = frozenset(_STOP_WORDS.split())


def terms(text: str) -> list[str]:
    """Lowercase words without stop words; `NIMBLE_OFFLINE` also gives `nimble`, `offline`."""
    out: list[str] = []
    for word in _WORD.findall(text.lower()):
        parts = word.split("_")
        for term in [word, *parts] if len(parts) > 1 else [word]:
            if len(term) > 1 and term not in _STOP:
                out.append(_stem(term))
    return out


def document_vector(text: str, average_length: float) -> tuple[list[int], list[float]]:
    """(indices, values) of a chunk: BM25's saturated term frequency per term."""
    counts = Counter(terms(text))
    length = sum(counts.values())
    norm = K1 * (1 - B + B * length / max(average_length, 1.0))
    return _sparse({term: tf * (K1 + 1) / (tf + norm) for term, tf in counts.items()})


def query_vector(text: str) -> tuple[list[int], list[float]]:
    return _sparse(dict.fromkeys(terms(text), 1.0))


def term_id(term: str) -> int:
    return zlib.crc32(term.encode())


def _sparse(weights: dict[str, float]) -> tuple[list[int], list[float]]:
    merged: dict[int, float] = {}
    for term, weight in weights.items():  # two terms may share a hash: add them up
        merged[term_id(term)] = merged.get(term_id(term), 0.0) + weight
    indices = sorted(merged)
    return indices, [merged[i] for i in indices]


def _stem(term: str) -> str:
    """A cheap stemmer: drop a final `s`, then a final `e` (`touches`, `touch` -> `touch`;
    `caches`, `cache` -> `cach`), never below 3 letters and not in `class` or `status`."""
    if len(term) > 3 and term.endswith("s") and not term.endswith(("ss", "us", "is")):
        term = term[:-1]
    if len(term) > 3 and term.endswith("e"):
        term = term[:-1]
    return term
