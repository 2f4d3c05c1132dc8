"""llama.cpp through the xllamacpp wheel: GGUF models, CPU or GPU."""
