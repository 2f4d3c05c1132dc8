"""PyTorch and Hugging Face transformers: any causal LM, CPU or GPU, batched decoding."""
