"""What an engine is told at construction, taken from `Settings` at the edge."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from nimble.models.spec import ModelSpec

# sequences per forward pass of an encoder (ONNX session run, torch batch); the inputs are
# sorted by length first, so that a pass pads little
ENCODER_PASS = 32


@dataclass(frozen=True)
class EngineConfig:
    """Engine-level settings taken from `Settings` at the edge."""

    threads: int | None = None
    context_length: int | None = None
    # sequences an engine without a batch size of its own runs at once (llama.cpp slots,
    # transformers rows): the max_batch_size setting, else max_running, else 4
    max_running: int = 4
    # the operator's max_batch_size (None: the profile's, else the engine's own)
    max_batch_size: int | None = None
    engine_log: bool = False
    fake_token_delay: float = 0.0
    # llama.cpp: MiB of host memory for cached prompts beyond the slots (None: its default)
    prompt_cache_mib: int | None = None
    # a chat template (Jinja text) used instead of the model's own; None: the model's
    chat_template: str | None = None
    # embedding engines: sequences per batch across concurrent requests, and how long the
    # first request of a batch may wait for others (seconds)
    embed_batch_size: int = 32
    embed_max_wait: float = 0.002
    # where engines may keep derived files (converted weights, compiled graphs); None: none
    cache_path: Path | None = None
    # supervised engine processes (vllm): the command that starts the engine server (None:
    # the engine's own default, e.g. `vllm serve`), what to do when it dies ("restart" or
    # "fail"), and how long to wait for its health before giving up
    engine_command: tuple[str, ...] | None = None
    engine_restart: str = "restart"
    engine_start_timeout: float = 900.0
    # called (from any thread) when an engine can no longer serve and will not recover;
    # the server then stops with a non-zero exit code
    on_fatal: Callable[[str], None] | None = None
    # LoRA adapters (vLLM): adapters in one batch, the largest rank taken, and whether
    # adapters may be loaded at run time (--runtime-adapters, or a watched --lora-dir)
    max_loras: int = 4
    max_lora_rank: int = 16
    runtime_adapters: bool = False

    def batch_size(self, spec: ModelSpec) -> int | None:
        """Sequences the engine runs at once for this model: the operator's max_batch_size,
        else the spec's `max_num_seqs` (the profile's, or vLLM's own default as planned for
        its GPU); None: not said (the engine's own default)."""
        if self.max_batch_size is not None:
            return self.max_batch_size
        value = spec.options.get("max_num_seqs")
        return int(value) if value else None
