"""What an engine is told at construction, taken from `Settings` at the edge."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class EngineConfig:
    """Engine-level settings taken from `Settings` at the edge."""

    threads: int | None = None
    context_length: int | None = None
    max_running: int = 4
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
