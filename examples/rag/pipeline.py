"""Ingest (chunk, embed, store) and ask (embed, retrieve, rerank, answer with sources).

Everything goes through nimble's OpenAI-compatible API with the official `openai` client:
`/v1/embeddings` (with NIM's `input_type`: `passage` for chunks, `query` for questions),
`/v1/rerank` (Cohere shape) and `/v1/chat/completions`.

Retrieval is hybrid by default: the chunks nearest to the question's embedding and those that
match its keywords best (BM25), fused by rank (reciprocal rank fusion). Reranking then orders
those candidates. A dedicated reranker (a cross-encoder) is trusted as is. When the reranker
is the embedding model itself (the default: nimble then ranks by cosine similarity), its order
is the embedding's order again, so it takes the embedding's place in the fusion with the
keyword ranks instead of overriding the keyword evidence.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Literal

import openai

from examples.rag import lexical
from examples.rag.chunking import Chunk, ChunkSettings, chunk_file, find_files
from examples.rag.store import Hit, Store

InputType = Literal["query", "passage"]
Progress = Callable[[int, int], None]  # (chunks embedded so far, total)

SYSTEM_PROMPT = (
    "You answer questions using only the numbered sources you are given. Cite the sources "
    "you use by their numbers in square brackets, like [1] or [2]. If the sources do not "
    "contain the answer, say that you do not know."
)


class RagError(Exception):
    """A failure the user can act on (the message says how)."""


@dataclass(frozen=True)
class RagConfig:
    base_url: str = "http://127.0.0.1:8000/v1"  # chat completions
    embed_url: str | None = None  # embeddings and rerank; None: the same server as chat
    api_key: str = "unused"
    chat_model: str = "smollm2-135m-instruct"
    embed_model: str = "all-minilm-l6-v2"
    rerank_model: str | None = None  # None: the embedding model (nimble ranks by cosine)
    hybrid: bool = True  # retrieve by embedding and keywords (False: embedding only)
    rerank_fusion: bool | None = None  # fuse the rerank order with the keyword ranks (hybrid
    # only); None: when the reranker is the embedding model
    input_type: bool = True  # send NIM's input_type with each embeddings request
    rerank: bool = True
    batch_size: int = 32  # chunks per embeddings request
    top_k: int = 8  # chunks retrieved from the vector store
    keep: int = 3  # chunks kept after reranking and given to the chat model
    max_tokens: int = 256
    temperature: float = 0.0


@dataclass(frozen=True)
class IngestReport:
    files: int
    chunks: int
    seconds: float


@dataclass(frozen=True)
class Selection:
    """The chunks chosen for a question, before the chat model answers."""

    question: str
    sources: tuple[Hit, ...]  # the chunks given to the model, numbered from 1
    retrieved: tuple[Hit, ...]  # the top-k from the vector store, before reranking
    reranked: bool
    notes: tuple[str, ...] = ()  # warnings, e.g. no rerank endpoint


@dataclass(frozen=True)
class Answer(Selection):
    text: str = ""  # what the chat model wrote, [n] citations included

    @classmethod
    def of(cls, selection: Selection, text: str = "") -> Answer:
        """`selection` answered with `text` (none: rendered as "(no answer)")."""
        return cls(**{f.name: getattr(selection, f.name) for f in fields(Selection)}, text=text)

    def render(self) -> str:
        """The answer, then the numbered sources (made here, not left to the model)."""
        lines = [self.text.strip() or "(no answer)", "", "Sources:"]
        lines += [f"[{n}] {source_label(hit.chunk)}" for n, hit in enumerate(self.sources, 1)]
        return "\n".join(lines)


def source_label(chunk: Chunk) -> str:
    where = f"{chunk.file} — {chunk.heading}" if chunk.heading else chunk.file
    return f"{where} (chunk {chunk.index})"


@dataclass(frozen=True)
class Retrieval:
    hits: list[Hit]  # the top-k candidates, best first
    keywords: list[Hit]  # the best keyword matches, best first (empty unless hybrid)


class RerankResult(openai.BaseModel):
    index: int
    relevance_score: float


class RerankResponse(openai.BaseModel):
    results: list[RerankResult]


class Pipeline:
    def __init__(self, config: RagConfig, store: Store):
        self.config = config
        self.store = store
        self.chat = openai.OpenAI(base_url=config.base_url, api_key=config.api_key)
        self.embedder = openai.OpenAI(
            base_url=config.embed_url or config.base_url, api_key=config.api_key
        )

    def __enter__(self) -> Pipeline:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Close the HTTP clients (the store is the caller's)."""
        self.chat.close()
        self.embedder.close()

    # ingest

    def ingest(
        self,
        paths: Sequence[Path],
        root: Path | None = None,
        chunking: ChunkSettings | None = None,
        recreate: bool = False,
        progress: Progress | None = None,
    ) -> IngestReport:
        """Chunk every text/Markdown file under `paths`, embed in batches, upsert.

        Files are named relative to `root` (default: the current folder) when inside it:
        the chunk ids `file#index` stay the same from one run to the next."""
        started = time.perf_counter()
        files = find_files(list(paths))
        per_file = {
            name: chunk_file(path, name, chunking)
            for path in files
            for name in [_name(path, root or Path.cwd())]
        }
        chunks = [chunk for file_chunks in per_file.values() for chunk in file_chunks]
        terms = [len(lexical.terms(chunk.context)) for chunk in chunks]
        average_length = sum(terms) / max(len(terms), 1)
        size = max(1, self.config.batch_size)
        prepared = False
        for start in range(0, len(chunks), size):
            batch = chunks[start : start + size]
            vectors = self.embed([chunk.context for chunk in batch], "passage")
            if not prepared:  # the first answer tells the dimensions
                self.store.prepare(len(vectors[0]), recreate)
                prepared = True
            self.store.upsert(batch, vectors, average_length)
            if progress:
                progress(start + len(batch), len(chunks))
        if prepared:
            for name, file_chunks in per_file.items():
                self.store.drop_stale(name, len(file_chunks))
        return IngestReport(len(files), len(chunks), time.perf_counter() - started)

    def embed(self, texts: list[str], input_type: InputType) -> list[list[float]]:
        extra = {"input_type": input_type} if self.config.input_type else None
        try:
            result = self.embedder.embeddings.create(
                model=self.config.embed_model,
                input=texts,
                encoding_format="float",
                extra_body=extra,
            )
        except openai.BadRequestError as error:
            if self.config.input_type and "input_type" in str(error):
                raise RagError(
                    f"the server refused input_type ({error.message}); this nimble may predate "
                    "it: run again with --no-input-type"
                ) from error
            raise
        return [item.embedding for item in sorted(result.data, key=lambda item: item.index)]

    # ask

    def retrieve(self, question: str) -> Retrieval:
        """The top-k chunks: nearest embeddings, fused with the best keyword matches."""
        (vector,) = self.embed([question], "query")
        if not self.config.hybrid:
            return Retrieval(self.store.search(vector, self.config.top_k), [])
        depth = max(3 * self.config.top_k, 20)  # candidates from each side before fusion
        keywords = self.store.keyword_search(question, depth)
        fused = fuse([self.store.search(vector, depth), keywords])
        return Retrieval(fused[: self.config.top_k], keywords)

    def rerank(self, question: str, hits: list[Hit]) -> list[Hit]:
        """`hits` in the reranker's order, best first, scored by relevance.

        Raises openai.NotFoundError when the server has no rerank endpoint or model."""
        if not hits:
            return hits
        ranked = self.embedder.post(
            "/rerank",
            cast_to=RerankResponse,
            body={
                "model": self.reranker,
                "query": question,
                "documents": [hit.chunk.context for hit in hits],
                "top_n": len(hits),
            },
        )
        results = sorted(ranked.results, key=lambda r: r.relevance_score, reverse=True)
        return [Hit(hits[r.index].chunk, r.relevance_score) for r in results]

    @property
    def reranker(self) -> str:
        return self.config.rerank_model or self.config.embed_model

    @property
    def fuses(self) -> bool:
        """Fuse the reranker's order with the keyword ranks (see the module's docstring)?"""
        if self.config.rerank_fusion is not None:
            return self.config.rerank_fusion
        return self.reranker == self.config.embed_model

    def ask(self, question: str) -> Answer:
        return self.answer(self.select(question))

    def select(self, question: str) -> Selection:
        """Retrieve top-k, rerank, keep the best few."""
        retrieval = self.retrieve(question)
        retrieved = ranked = retrieval.hits
        notes: list[str] = []
        if self.config.rerank:
            try:
                ranked = self.rerank(question, retrieved)
            except openai.NotFoundError as error:
                notes.append(f"no reranking ({error.message}): kept the retrieval order")
            else:
                if self.fuses and retrieval.keywords:
                    candidates = {hit.chunk.id for hit in retrieved}
                    matches = [h for h in retrieval.keywords if h.chunk.id in candidates]
                    ranked = fuse([ranked, matches])
        return Selection(
            question=question,
            sources=tuple(ranked[: self.config.keep]),
            retrieved=tuple(retrieved),
            reranked=self.config.rerank and not notes,
            notes=tuple(notes),
        )

    def answer(self, selection: Selection) -> Answer:
        """The chat model's answer from the selected chunks (thread-safe: HTTP only)."""
        reply = self.chat.chat.completions.create(
            model=self.config.chat_model,
            messages=[
                {"role": "system", "content": SYSTEM_PROMPT},
                {"role": "user", "content": prompt(selection.question, selection.sources)},
            ],
            max_tokens=self.config.max_tokens,
            temperature=self.config.temperature,
        )
        text = reply.choices[0].message.content or ""
        return Answer.of(selection, text)


def fuse(orders: Sequence[Sequence[Hit]], k: int = 60) -> list[Hit]:
    """Reciprocal rank fusion: each chunk scores the sum of 1 / (k + rank) over `orders`."""
    scores: dict[str, float] = {}
    chunks: dict[str, Chunk] = {}
    for order in orders:
        for rank, hit in enumerate(order, 1):
            scores[hit.chunk.id] = scores.get(hit.chunk.id, 0.0) + 1 / (k + rank)
            chunks[hit.chunk.id] = hit.chunk
    best = sorted(scores, key=lambda chunk_id: scores[chunk_id], reverse=True)  # stable: ties
    return [Hit(chunks[chunk_id], scores[chunk_id]) for chunk_id in best]


def prompt(question: str, sources: Sequence[Hit]) -> str:
    """The numbered chunks (heading trail first), then the question."""
    numbered = "\n\n".join(f"[{n}] {hit.chunk.context}" for n, hit in enumerate(sources, 1))
    return f"Sources:\n\n{numbered}\n\nQuestion: {question}"


def _name(path: Path, root: Path) -> str:
    """The file's stable name: relative to `root` when inside it, else absolute (POSIX)."""
    resolved = path.resolve()
    try:
        return resolved.relative_to(root.resolve()).as_posix()
    except ValueError:
        return resolved.as_posix()
