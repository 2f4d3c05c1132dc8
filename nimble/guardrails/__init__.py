"""Guardrails: rails that check what goes into a model and what comes out of it, in the
serving path (input rails before admission, output rails on the stream), configured per
model and per API key (`--guardrails FILE`, docs/guardrails.md)."""
