"""Chunks and their vectors in Qdrant: embedded in this process (a folder) or a Qdrant server.

Each point holds two vectors: `dense` (the embedding from nimble, cosine) and `lexical` (BM25
term weights, see lexical.py, with Qdrant's IDF modifier), searched one at a time.

`QdrantClient(path=...)` is Qdrant's local mode: pure Python, no server, the collection kept in
a folder (one process at a time holds its lock). `QdrantClient(url=...)` talks to a Qdrant
server, such as the one in deploy/compose; everything below is the same code for both.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from qdrant_client import QdrantClient, models

from examples.rag import lexical
from examples.rag.chunking import Chunk

DENSE = "dense"
LEXICAL = "lexical"


class StoreError(Exception):
    """The collection is missing or does not fit the embedding model."""


@dataclass(frozen=True)
class Hit:
    """A retrieved chunk and its score (cosine, fused rank or relevance: higher is closer)."""

    chunk: Chunk
    score: float


def point_id(chunk_id: str) -> str:
    """Qdrant wants an integer or a UUID: a UUID derived from the stable chunk id."""
    return str(uuid.uuid5(uuid.NAMESPACE_URL, f"nimble-rag:{chunk_id}"))


class Store:
    def __init__(
        self, collection: str, path: Path | None = None, url: str | None = None, **kw: Any
    ):
        """`url` (a Qdrant server) wins over `path` (embedded, in that folder)."""
        if url:
            self.client = QdrantClient(url=url, **kw)
        else:
            if path is None:
                raise ValueError("give a folder for the embedded store or a Qdrant server URL")
            path.mkdir(parents=True, exist_ok=True)
            try:
                self.client = QdrantClient(path=str(path))
            except RuntimeError as error:  # another process holds the folder
                raise StoreError(str(error)) from error
        self.collection = collection

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self.client.close()

    def prepare(self, dimensions: int, recreate: bool = False) -> None:
        """Create the collection (cosine distance) unless it exists with these dimensions."""
        if recreate and self.client.collection_exists(self.collection):
            self.client.delete_collection(self.collection)
        if self.client.collection_exists(self.collection):
            have = self.dimensions()
            if have != dimensions:
                raise StoreError(
                    f"collection {self.collection!r} holds {have or 'other'}-dimensional "
                    f"vectors, the embedding model gives {dimensions}: use another collection "
                    "or --recreate"
                )
            return
        self.client.create_collection(
            self.collection,
            vectors_config={
                DENSE: models.VectorParams(size=dimensions, distance=models.Distance.COSINE)
            },
            sparse_vectors_config={
                LEXICAL: models.SparseVectorParams(modifier=models.Modifier.IDF)
            },
        )

    def dimensions(self) -> int | None:
        """Of the dense vectors; None for a collection that this example did not make."""
        vectors = self.client.get_collection(self.collection).config.params.vectors
        dense = vectors.get(DENSE) if isinstance(vectors, dict) else None
        return dense.size if dense else None

    def upsert(
        self, chunks: Sequence[Chunk], vectors: Sequence[Sequence[float]], average_length: float
    ) -> None:
        """Stable ids: ingesting a file again replaces its chunks instead of adding copies.

        `average_length`: terms per chunk over the documents ingested (BM25's length norm)."""
        points = [
            models.PointStruct(
                id=point_id(chunk.id),
                vector={
                    DENSE: list(vector),
                    LEXICAL: _sparse(lexical.document_vector(chunk.context, average_length)),
                },
                payload={
                    "chunk_id": chunk.id,
                    "file": chunk.file,
                    "chunk_index": chunk.index,
                    "heading": chunk.heading,
                    "text": chunk.text,
                },
            )
            for chunk, vector in zip(chunks, vectors, strict=True)
        ]
        self.client.upsert(self.collection, points=points)

    def drop_stale(self, file: str, count: int) -> None:
        """Remove the chunks of `file` from an earlier ingest whose index is `count` or more."""
        stale = models.Filter(
            must=[
                models.FieldCondition(key="file", match=models.MatchValue(value=file)),
                models.FieldCondition(key="chunk_index", range=models.Range(gte=count)),
            ]
        )
        self.client.delete(self.collection, points_selector=models.FilterSelector(filter=stale))

    def count(self) -> int:
        return self.client.count(self.collection, exact=True).count

    def search(self, vector: Sequence[float], limit: int) -> list[Hit]:
        """The `limit` chunks nearest to `vector` (cosine similarity)."""
        return self._query(list(vector), DENSE, limit)

    def keyword_search(self, text: str, limit: int) -> list[Hit]:
        """The `limit` chunks that match the words of `text` best (BM25)."""
        return self._query(_sparse(lexical.query_vector(text)), LEXICAL, limit)

    def _query(self, query: list[float] | models.SparseVector, using: str, limit: int) -> list[Hit]:
        if not self.client.collection_exists(self.collection):
            raise StoreError(f"no collection {self.collection!r}: ingest documents first")
        found = self.client.query_points(self.collection, query=query, using=using, limit=limit)
        return [Hit(_chunk(point.payload or {}), point.score) for point in found.points]


def _sparse(pair: tuple[list[int], list[float]]) -> models.SparseVector:
    return models.SparseVector(indices=pair[0], values=pair[1])


def _chunk(payload: dict[str, Any]) -> Chunk:
    return Chunk(
        file=str(payload["file"]),
        index=int(payload["chunk_index"]),
        heading=str(payload["heading"]),
        text=str(payload["text"]),
    )
