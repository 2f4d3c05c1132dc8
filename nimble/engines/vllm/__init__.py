"""vLLM on NVIDIA GPUs: a supervised `vllm serve` spoken to over loopback HTTP."""
