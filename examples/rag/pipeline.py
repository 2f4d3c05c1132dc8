"""Ingest (chunk, embed, store) and ask (embed, retrieve, rerank, answer with sources).

Everything goes through nimble's OpenAI-compatible API with the official `openai` client:
`/v1/embeddings` (with NIM's `input_type`: `passage` for chunks, `query` for questions),
`/v1/rerank` (Cohere shape) and `/v1/chat/completions`.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import openai

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
class Answer:
    question: str
    text: str  # what the chat model wrote, [n] citations included
    sources: tuple[Hit, ...]  # the chunks given to the model, numbered from 1
    retrieved: tuple[Hit, ...]  # the top-k from the vector store, before reranking
    reranked: bool
    notes: tuple[str, ...] = field(default=())  # warnings, e.g. no rerank endpoint

    def render(self) -> str:
        """The answer, then the numbered sources (made here, not left to the model)."""
        lines = [self.text.strip() or "(no answer)", "", "Sources:"]
        lines += [f"[{n}] {source_label(hit.chunk)}" for n, hit in enumerate(self.sources, 1)]
        return "\n".join(lines)


def source_label(chunk: Chunk) -> str:
    where = f"{chunk.file} — {chunk.heading}" if chunk.heading else chunk.file
    return f"{where} (chunk {chunk.index})"


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
        size = max(1, self.config.batch_size)
        prepared = False
        for start in range(0, len(chunks), size):
            batch = chunks[start : start + size]
            vectors = self.embed([chunk.context for chunk in batch], "passage")
            if not prepared:  # the first answer tells the dimensions
                self.store.prepare(len(vectors[0]), recreate)
                prepared = True
            self.store.upsert(batch, vectors)
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

    def retrieve(self, question: str) -> list[Hit]:
        (vector,) = self.embed([question], "query")
        return self.store.search(vector, self.config.top_k)

    def rerank(self, question: str, hits: list[Hit]) -> tuple[list[Hit], str | None]:
        """Hits in the reranker's order (best first), or as retrieved and why not."""
        if not hits:
            return hits, None
        model = self.config.rerank_model or self.config.embed_model
        try:
            ranked = self.embedder.post(
                "/rerank",
                cast_to=RerankResponse,
                body={
                    "model": model,
                    "query": question,
                    "documents": [hit.chunk.context for hit in hits],
                    "top_n": len(hits),
                },
            )
        except openai.NotFoundError as error:
            return hits, f"no reranking ({error.message}): kept the retrieval order"
        results = sorted(ranked.results, key=lambda r: r.relevance_score, reverse=True)
        return [Hit(hits[r.index].chunk, r.relevance_score) for r in results], None

    def ask(self, question: str) -> Answer:
        retrieved = self.retrieve(question)
        ranked, note = self.rerank(question, retrieved) if self.config.rerank else (retrieved, None)
        sources = tuple(ranked[: self.config.keep])
        reply = self.chat.chat.completions.create(
            model=self.config.chat_model,
            messages=[
                {"role": "system", "content": SYSTEM_PROMPT},
                {"role": "user", "content": prompt(question, sources)},
            ],
            max_tokens=self.config.max_tokens,
            temperature=self.config.temperature,
        )
        return Answer(
            question=question,
            text=reply.choices[0].message.content or "",
            sources=sources,
            retrieved=tuple(retrieved),
            reranked=self.config.rerank and note is None,
            notes=(note,) if note else (),
        )


def prompt(question: str, sources: Sequence[Hit]) -> str:
    numbered = "\n\n".join(
        f"[{n}] ({source_label(hit.chunk)})\n{hit.chunk.text}" for n, hit in enumerate(sources, 1)
    )
    return f"Sources:\n\n{numbered}\n\nQuestion: {question}\nAnswer, citing sources like [1]:"


def _name(path: Path, root: Path) -> str:
    """The file's stable name: relative to `root` when inside it, else absolute (POSIX)."""
    resolved = path.resolve()
    try:
        return resolved.relative_to(root.resolve()).as_posix()
    except ValueError:
        return resolved.as_posix()
