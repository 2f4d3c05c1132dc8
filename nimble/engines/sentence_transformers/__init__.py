"""sentence-transformers folders: bi-encoder embeddings and cross-encoder reranking."""
