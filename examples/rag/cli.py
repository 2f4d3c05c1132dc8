"""`python -m examples.rag ingest DOCS... | ask QUESTION` (typer + rich)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import openai
import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeElapsedColumn

from examples.rag.chunking import ChunkSettings, Length
from examples.rag.pipeline import Pipeline, RagConfig, RagError
from examples.rag.store import Store, StoreError

app = typer.Typer(
    help="RAG over your text and Markdown files with a running nimble (and Qdrant).",
    no_args_is_help=True,
    add_completion=False,
)
out = Console()
err = Console(stderr=True)

Collection = Annotated[str, typer.Option(help="Qdrant collection.")]
StorePath = Annotated[
    Path, typer.Option("--store", help="Folder of the embedded Qdrant store (no server).")
]
QdrantUrl = Annotated[
    str | None,
    typer.Option(envvar="QDRANT_URL", help="A Qdrant server instead, e.g. http://localhost:6333."),
]
QdrantKey = Annotated[str | None, typer.Option(envvar="QDRANT_API_KEY", help="Its API key.")]
BaseUrl = Annotated[str, typer.Option(help="nimble serving the chat model.")]
EmbedUrl = Annotated[
    str | None,
    typer.Option(help="nimble serving the embedding (and rerank) model; default: --base-url."),
]
ApiKey = Annotated[str, typer.Option(envvar="OPENAI_API_KEY", help="nimble API key.")]
EmbedModel = Annotated[str, typer.Option(help="Embedding model.")]
InputType = Annotated[
    bool, typer.Option(help="Send input_type (passage/query) with embeddings requests.")
]

DEFAULTS = RagConfig()


def _open(collection: str, store: Path, qdrant_url: str | None, qdrant_key: str | None) -> Store:
    if qdrant_url:
        return Store(collection, url=qdrant_url, api_key=qdrant_key)
    return Store(collection, path=store)


@app.command()
def ingest(
    paths: Annotated[list[Path], typer.Argument(help="Folders or files (.md, .markdown, .txt).")],
    collection: Collection = "docs",
    store: StorePath = Path(".rag/qdrant"),
    qdrant_url: QdrantUrl = None,
    qdrant_api_key: QdrantKey = None,
    base_url: BaseUrl = DEFAULTS.base_url,
    embed_url: EmbedUrl = None,
    api_key: ApiKey = DEFAULTS.api_key,
    embed_model: EmbedModel = DEFAULTS.embed_model,
    input_type: InputType = True,
    chunk_size: Annotated[int, typer.Option(help="Chunk size (characters, or tokens).")] = 600,
    chunk_overlap: Annotated[int, typer.Option(help="Overlap between chunks.")] = 100,
    tokenizer: Annotated[
        Path | None,
        typer.Option(help="A tokenizer.json: measure chunks in its tokens, not characters."),
    ] = None,
    batch_size: Annotated[int, typer.Option(help="Chunks per embeddings request.")] = 32,
    recreate: Annotated[bool, typer.Option(help="Empty the collection first.")] = False,
) -> None:
    """Chunk, embed (input_type=passage) and store every text and Markdown file under PATHS."""
    config = RagConfig(
        base_url=base_url,
        embed_url=embed_url,
        api_key=api_key,
        embed_model=embed_model,
        input_type=input_type,
        batch_size=batch_size,
    )
    try:
        chunking = ChunkSettings(chunk_size, chunk_overlap, _length(tokenizer))
    except ValueError as error:
        raise typer.BadParameter(str(error)) from error
    with (
        _errors(),
        _open(collection, store, qdrant_url, qdrant_api_key) as vectors,
        Pipeline(config, vectors) as pipeline,
        Progress(
            "[progress.description]{task.description}",
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            console=err,
        ) as bar,
    ):
        task = bar.add_task("embedding chunks", total=None)
        report = pipeline.ingest(
            paths,
            chunking=chunking,
            recreate=recreate,
            progress=lambda done, total: bar.update(task, completed=done, total=total),
        )
        total = vectors.count() if report.chunks else 0
    if not report.files:
        err.print("[red]error:[/] no .md, .markdown or .txt file there")
        raise typer.Exit(1)
    out.print(
        f"{report.chunks} chunks from {report.files} files in {report.seconds:.1f} s "
        f"(collection {collection!r}: {total} chunks)"
    )


@app.command()
def ask(
    question: Annotated[str, typer.Argument(help="The question.")],
    collection: Collection = "docs",
    store: StorePath = Path(".rag/qdrant"),
    qdrant_url: QdrantUrl = None,
    qdrant_api_key: QdrantKey = None,
    base_url: BaseUrl = DEFAULTS.base_url,
    embed_url: EmbedUrl = None,
    api_key: ApiKey = DEFAULTS.api_key,
    embed_model: EmbedModel = DEFAULTS.embed_model,
    input_type: InputType = True,
    chat_model: Annotated[str, typer.Option(help="Chat model.")] = DEFAULTS.chat_model,
    hybrid: Annotated[
        bool, typer.Option(help="Retrieve by embedding and keywords (BM25), fused by rank.")
    ] = True,
    rerank: Annotated[bool, typer.Option(help="Rerank the retrieved chunks.")] = True,
    rerank_model: Annotated[
        str | None, typer.Option(help="Reranking model; default: the embedding model.")
    ] = None,
    rerank_fusion: Annotated[
        bool | None,
        typer.Option(
            help="Fuse the reranker's order with the retrieval order (default: only when the "
            "reranker is the embedding model)."
        ),
    ] = None,
    top_k: Annotated[int, typer.Option(min=1, help="Chunks retrieved.")] = DEFAULTS.top_k,
    keep: Annotated[int, typer.Option(min=1, help="Chunks given to the model.")] = DEFAULTS.keep,
    max_tokens: Annotated[int, typer.Option(min=1, help="Answer length.")] = DEFAULTS.max_tokens,
) -> None:
    """Retrieve, rerank and answer QUESTION with numbered sources."""
    config = RagConfig(
        base_url=base_url,
        embed_url=embed_url,
        api_key=api_key,
        chat_model=chat_model,
        embed_model=embed_model,
        rerank_model=rerank_model,
        input_type=input_type,
        hybrid=hybrid,
        rerank=rerank,
        rerank_fusion=rerank_fusion,
        top_k=top_k,
        keep=keep,
        max_tokens=max_tokens,
    )
    with (
        _errors(),
        _open(collection, store, qdrant_url, qdrant_api_key) as vectors,
        Pipeline(config, vectors) as pipeline,
    ):
        answer = pipeline.ask(question)
    for note in answer.notes:
        err.print(f"[yellow]warning:[/] {note}")
    out.print(answer.render(), markup=False, highlight=False, soft_wrap=True)


class _errors:
    """Errors the user can act on: one red line and exit 1, no traceback."""

    def __enter__(self) -> None:
        return None

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, _: object
    ) -> None:
        if isinstance(error, RagError | StoreError | FileNotFoundError):
            err.print(f"[red]error:[/] {error}", markup=True, highlight=False)
            raise typer.Exit(1)
        if isinstance(error, openai.APIConnectionError):
            err.print(f"[red]error:[/] cannot reach nimble: {error}", highlight=False)
            raise typer.Exit(1)
        if isinstance(error, openai.APIStatusError):
            err.print(f"[red]error:[/] nimble answered {error.status_code}: {error.message}")
            raise typer.Exit(1)


def _length(tokenizer: Path | None) -> Length:
    if tokenizer is None:
        return len
    from tokenizers import Tokenizer  # nimble[onnx] installs it

    loaded = Tokenizer.from_file(str(tokenizer))
    loaded.no_truncation()
    return lambda text: len(loaded.encode(text, add_special_tokens=False).ids)
