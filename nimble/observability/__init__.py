"""Logging (text or JSON lines), request context; metrics and tracing come later."""
