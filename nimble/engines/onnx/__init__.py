"""Embeddings on ONNX Runtime without torch: batches spread over one lane per core."""
