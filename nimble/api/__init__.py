"""The HTTP adapter: FastAPI app, schemas, middleware, error mapping."""

from nimble.api.app import create_app

__all__ = ["create_app"]
