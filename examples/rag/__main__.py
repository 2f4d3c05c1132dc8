"""`python -m examples.rag` (from the repository root)."""

from examples.rag.cli import app

app()
