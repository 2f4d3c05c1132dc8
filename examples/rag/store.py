"""Chunks and their vectors in Qdrant: embedded in this process (a folder) or a Qdrant server.

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

from examples.rag.chunking import Chunk


class StoreError(Exception):
    """The collection is missing or does not fit the embedding model."""


@dataclass(frozen=True)
class Hit:
    """A retrieved chunk and its similarity to the question (cosine, higher is closer)."""

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
            self.client = QdrantClient(path=str(path))
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
                    f"collection {self.collection!r} holds {have}-dimensional vectors, the "
                    f"embedding model gives {dimensions}: use another collection or --recreate"
                )
            return
        self.client.create_collection(
            self.collection,
            vectors_config=models.VectorParams(size=dimensions, distance=models.Distance.COSINE),
        )

    def dimensions(self) -> int:
        vectors = self.client.get_collection(self.collection).config.params.vectors
        assert isinstance(vectors, models.VectorParams)  # one unnamed vector per point
        return vectors.size

    def upsert(self, chunks: Sequence[Chunk], vectors: Sequence[Sequence[float]]) -> None:
        """Stable ids: ingesting a file again replaces its chunks instead of adding copies."""
        points = [
            models.PointStruct(
                id=point_id(chunk.id),
                vector=list(vector),
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
        if not self.client.collection_exists(self.collection):
            raise StoreError(f"no collection {self.collection!r}: ingest documents first")
        found = self.client.query_points(
            self.collection, query=list(vector), limit=limit, with_payload=True
        ).points
        return [Hit(_chunk(point.payload or {}), point.score) for point in found]


def _chunk(payload: dict[str, Any]) -> Chunk:
    return Chunk(
        file=str(payload["file"]),
        index=int(payload["chunk_index"]),
        heading=str(payload["heading"]),
        text=str(payload["text"]),
    )
