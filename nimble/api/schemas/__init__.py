"""Pydantic request/response models of the OpenAI-compatible HTTP surface."""
