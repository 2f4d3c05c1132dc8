"""RAG over text and Markdown files with a running nimble: see README.md beside this file.

python -m examples.rag ingest docs README.md
python -m examples.rag ask "Which environment variable keeps nimble off the network?"
"""

from examples.rag.chunking import Chunk, ChunkSettings, chunk_text
from examples.rag.pipeline import (
    Answer,
    IngestReport,
    Pipeline,
    RagConfig,
    RagError,
    Selection,
)
from examples.rag.store import Hit, Store

__all__ = [
    "Answer",
    "Chunk",
    "ChunkSettings",
    "Hit",
    "IngestReport",
    "Pipeline",
    "RagConfig",
    "RagError",
    "Selection",
    "Store",
    "chunk_text",
]
