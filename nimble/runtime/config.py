"""What a runtime is told (`RuntimeConfig`, taken from `Settings` at the edge), and what it
derives from it for each model before anything loads."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from nimble.engines import EngineConfig
from nimble.guardrails.config import GuardrailsConfig
from nimble.guardrails.guard_formats import guard_format
from nimble.models import ModelSpec
from nimble.runtime.reasoning import reasoning_format
from nimble.runtime.tools import tool_format
from nimble.types import Task


@dataclass(frozen=True)
class RuntimeConfig:
    engine: EngineConfig
    max_running: int | None = None  # None: the engine's batch size for each model
    max_waiting: int = 64
    max_queue_wait: float = 15.0  # seconds a request may wait for a running slot
    max_n: int = 8
    max_rank_documents: int = 1000
    log_prompts: bool = False
    tool_parser: str | None = None  # overrides every model profile's parser
    reasoning_parser: str | None = None  # overrides every model profile's (`none`: off)
    responses_max_stored: int = 1000
    lora_dir: Path | None = None  # watched for adapters (`adapter_watch.py`)
    lora_poll_interval: float = 5.0  # 0: read at start only
    guardrails: GuardrailsConfig | None = None  # rails on the input and output (`guardrails/`)

    def check(self, spec: ModelSpec) -> None:
        """An unknown tool_parser, reasoning_parser or guard_format stops the start (a
        ConfigError naming it), not a request."""
        tool_format(self.tool_parser or spec.options.get("tool_parser"))
        reasoning_format(self.reasoning_parser or spec.options.get("reasoning_parser"))
        if "guard_format" in spec.options:
            guard_format(spec.options["guard_format"])

    def running_bound(self, spec: ModelSpec) -> int:
        """Requests admitted at once: `max_running`, else as many as the engine runs at once
        (vLLM's max_num_seqs, llama.cpp's slots), so that admission never starves the engine.
        An embedding model (a classifier) batches across requests: let a whole batch in at
        once."""
        engine = self.engine
        bound = self.max_running or engine.batch_size(spec) or engine.max_running
        if spec.tasks in ({Task.EMBEDDING}, {Task.CLASSIFY}):
            return max(bound, engine.embed_batch_size)
        return bound
