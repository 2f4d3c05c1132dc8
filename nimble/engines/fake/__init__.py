"""A deterministic engine with no weights, for tests and demos."""
