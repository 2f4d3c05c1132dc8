"""What to serve: the catalog, model references and their files (no engine imports)."""

from nimble.models.resolve import resolve_model
from nimble.models.spec import ModelSpec

__all__ = ["ModelSpec", "resolve_model"]
