"""transformers engine: any Hugging Face causal LM (or a GGUF file) on PyTorch, CPU or GPU.

How it works
- Weights (`loading.py`): a Hugging Face model folder (config.json, safetensors,
  tokenizer) loads as is; a GGUF file is dequantized once into
  `cache_path/transformers/<sha256[:16]>` and loaded from there afterwards.
- Device: CUDA when torch sees a GPU (bfloat16), else the CPU (float32, `threads` threads).
- Batching: continuous. One scheduler thread (`batching.Scheduler`) owns every forward
  pass; all running choices advance together, one batched decode step per token, over one
  left-padded KV cache; a new request is prefilled alone and joins the batch at the next
  step; a finished or aborted one leaves it at the next step. At most `max_running` rows (a
  request with `n` choices takes `n`). `stats.max_batch` is the largest batch run so far.
- Prompts: chat messages go through the tokenizer's own chat template (a model without one
  serves completions only); completions are the raw prompt with the tokenizer's special
  tokens (BOS where the model adds one).
- Sampling per choice (`choice.Sampler`): temperature (0: greedy; unset: the model's
  generation_config when it samples by default, else 1), top_p, presence and frequency
  penalties, stop strings, seed (a torch.Generator per choice), logprobs with alternatives;
  vLLM's top_k, min_p, repetition_penalty, min_tokens, stop_token_ids, ignore_eos,
  include_stop_str_in_output, skip_special_tokens, and OpenAI's logit_bias.
- LoRA adapters (`adapters.py`, `lora.py`): PEFT folders loaded through peft into the
  model itself; one batch mixes rows of the base model and of any adapters (peft's
  mixed-batch forward, each row naming its adapter), so adapters share `max_running`.
- Constraints (`constrain.py`): JSON schema, regex, choice, grammar (Lark, or GBNF) and tool
  calls (forced, or lazy for tool_choice auto) are enforced while decoding by masking each
  constrained row's logits with llguidance; a grammar it cannot compile is a 400 before any
  token. Unconstrained rows pay nothing for it.

Models whose cache is not a plain key/value cache per layer (state-space or linear-attention
layers) are not supported by the batching code.
"""

from __future__ import annotations

import asyncio
import dataclasses
import gc
import secrets
from collections.abc import AsyncGenerator
from typing import TYPE_CHECKING

import jinja2

from nimble.engines.config import EngineConfig
from nimble.engines.transformers.job import DecodeStats, Job
from nimble.errors import (
    ContextLengthExceeded,
    InvalidRequest,
    ModelLoadError,
    Unavailable,
    UnsupportedParameter,
)
from nimble.models.adapters import AdapterSpec
from nimble.models.spec import ModelSpec
from nimble.types import (
    ChatMessage,
    EngineInfo,
    GenerateRequest,
    GenerationChunk,
    SamplingParams,
    TokenizeRequest,
    Tokens,
)

if TYPE_CHECKING:
    # torch and transformers: imported when the engine starts, not when it is created, so
    # that a llama.cpp model of the same process loads before them (registry.py)
    from nimble.engines.transformers.adapters import EngineAdapters
    from nimble.engines.transformers.batching import Scheduler
    from nimble.engines.transformers.choice import Sampler
    from nimble.engines.transformers.constrain import Constrained, Grammars
    from nimble.engines.transformers.loading import Loaded


class TransformersEngine:
    """One causal language model on PyTorch, with continuous batching. It reports no KV
    cache use: the cache grows with the batch, there is no fixed pool to fill."""

    def __init__(self, spec: ModelSpec, config: EngineConfig):
        self.spec = spec
        self.stats = DecodeStats()
        self._config = config
        self._loaded: Loaded | None = None
        self._scheduler: Scheduler | None = None
        self._grammars: Grammars | None = None
        self._adapters: EngineAdapters | None = None

    # lifecycle

    async def start(self) -> None:
        if self._loaded is not None:
            return
        from nimble.engines.transformers.adapters import EngineAdapters
        from nimble.engines.transformers.batching import Scheduler
        from nimble.engines.transformers.constrain import Grammars
        from nimble.engines.transformers.loading import load

        try:
            loaded = await asyncio.to_thread(load, self.spec, self._config)
        except ModelLoadError:
            raise
        except Exception as exc:
            raise ModelLoadError(
                f"{self.spec.weights}: transformers could not load it: {type(exc).__name__}: {exc}"
            ) from exc
        scheduler = Scheduler(
            loaded.model, loaded.device, self._config.max_running, self.stats, self._config.on_fatal
        )
        scheduler.start()
        self._loaded, self._scheduler = loaded, scheduler
        self._grammars = Grammars(loaded.tokenizer, loaded.eos_ids)
        self._adapters = EngineAdapters(loaded.model, self.spec.id, scheduler)
        for adapter in self.spec.adapters:
            try:
                await self.load_adapter(adapter)
            except InvalidRequest as exc:
                await self.stop()
                raise ModelLoadError(str(exc)) from exc
        request = GenerateRequest("warmup", SamplingParams(max_tokens=2), prompt="Hello")
        async for _ in self.generate(request):  # one real generation: readiness needs it
            pass

    async def stop(self) -> None:
        scheduler, loaded = self._scheduler, self._loaded
        self._scheduler, self._loaded, self._grammars = None, None, None
        self._adapters = None
        if scheduler is not None:
            await asyncio.to_thread(scheduler.close)
        if loaded is not None:
            device = loaded.device
            del loaded, scheduler
            gc.collect()
            if device.type == "cuda":
                import torch  # loaded by start()

                torch.cuda.empty_cache()

    async def health(self) -> bool:
        return self._scheduler is not None and self._scheduler.alive()

    def info(self) -> EngineInfo:
        import torch  # loaded by start()
        import transformers

        loaded = self._loaded
        extra = {"torch": torch.__version__, "batching": "continuous"}
        if loaded is not None:
            extra["device"] = str(loaded.device)
            extra["dtype"] = str(loaded.model.dtype).removeprefix("torch.")
        return EngineInfo(
            engine="transformers",
            engine_version=transformers.__version__,
            tasks=self.spec.tasks,
            context_length=loaded.context_length if loaded else 0,
            supports_logprobs=True,
            files=loaded.files if loaded else (),
            extra=extra,
        )

    # adapters

    async def load_adapter(self, adapter: AdapterSpec) -> None:
        await self._host().load(adapter)

    async def unload_adapter(self, name: str) -> None:
        await self._host().unload(name)

    def _host(self) -> EngineAdapters:
        if self._adapters is None:
            raise Unavailable(f"model {self.spec.id} is not loaded")
        return self._adapters

    # requests

    async def prompt_tokens(self, request: GenerateRequest, fits: int) -> int:
        bound = self._bound(request)
        if bound is not None and bound <= fits:
            return bound
        return len(await asyncio.to_thread(self._encode, request))

    def _bound(self, request: GenerateRequest) -> int | None:
        """Every token covers at least one byte of the rendered prompt (special tokens many);
        2 more for BOS/EOS or a leading-space marker the tokenizer may add."""
        if isinstance(request.prompt, tuple):
            return len(request.prompt)
        if request.messages is None:
            return len((request.prompt or "").encode()) + 2
        try:
            return len(self._render(request.messages).encode()) + 2
        except (InvalidRequest, Unavailable):
            return None

    async def generate(self, request: GenerateRequest) -> AsyncGenerator[GenerationChunk, None]:
        loaded, scheduler = self._require()
        params = request.params
        if params.n > self._config.max_running:
            raise UnsupportedParameter(
                f"n: this model runs at most {self._config.max_running} sequences at once "
                f"(max_running); got n={params.n}",
                param="n",
            )
        adapters = self._host()
        adapter = adapters.acquire(request.adapter)  # held until the request ends
        try:
            ids = await asyncio.to_thread(self._encode, request)
            constraints: list[Constrained] | None = None
            if request.constraint is not None:
                if (grammars := self._grammars) is None:
                    raise Unavailable(f"model {self.spec.id} is not loaded")
                constraints = await asyncio.to_thread(
                    grammars.compile, request.constraint, params.n
                )
            choices = self._choices(loaded, request, ids, constraints)
            echo = None
            if request.echo:  # the prompt starts each choice (scored in the prefill)
                from nimble.engines.transformers.echo import Echo

                prompt = request.prompt
                text = prompt if isinstance(prompt, str) else await self.detokenize(tuple(ids))
                echo = Echo(text, params.top_logprobs, loaded.tokenizer)
            loop = asyncio.get_running_loop()
            generate = params.max_tokens != 0
            job = Job(ids, choices, loop, echo=echo, generate=generate, adapter=adapter)
            scheduler.submit(job)
            try:
                while (chunk := await job.get()) is not None:
                    yield chunk
            finally:
                job.cancelled = True  # the scheduler drops its rows at the next step
        finally:
            adapters.release(adapter)

    # tokenizer

    def vocab_size(self) -> int | None:
        return len(self._loaded.tokenizer) if self._loaded is not None else None

    async def tokenize(self, request: TokenizeRequest) -> Tokens:
        loaded, _ = self._require()
        ids = await asyncio.to_thread(self._ids, request)
        return Tokens(tuple(ids), tuple(loaded.tokenizer.convert_ids_to_tokens(ids)))

    async def detokenize(self, ids: tuple[int, ...]) -> str:
        loaded, _ = self._require()
        return str(await asyncio.to_thread(loaded.tokenizer.decode, list(ids)))

    # helpers

    def _require(self) -> tuple[Loaded, Scheduler]:
        if self._loaded is None or self._scheduler is None:
            raise Unavailable(f"model {self.spec.id} is not loaded")
        return self._loaded, self._scheduler

    def _choices(
        self,
        loaded: Loaded,
        request: GenerateRequest,
        ids: list[int],
        constraints: list[Constrained] | None = None,
    ) -> list[Sampler]:
        from nimble.engines.transformers.choice import SEED_BITS, Sampler, seeded_generator

        params = request.params
        where = "messages" if request.messages is not None else "prompt"
        if not ids:
            raise InvalidRequest("prompt: empty, and this model adds no BOS token", param=where)
        room = loaded.context_length - len(ids)
        if room <= 0:
            raise ContextLengthExceeded(
                f"This model's maximum context length is {loaded.context_length} tokens; the "
                f"prompt has {len(ids)}",
                param=where,
            )
        budget = min(params.max_tokens, room) if params.max_tokens else room
        vocab = int(getattr(loaded.model.config, "vocab_size", 0) or len(loaded.tokenizer))
        outside = sorted(token for token, _ in params.logit_bias if token >= vocab)
        if outside:
            raise InvalidRequest(
                f"logit_bias: token id {outside[0]} is not in the model's vocabulary "
                f"(0 to {vocab - 1})",
                param="logit_bias",
            )
        effective = dataclasses.replace(
            params,
            temperature=loaded.temperature if params.temperature is None else params.temperature,
            top_p=loaded.top_p if params.top_p is None else params.top_p,
        )
        seed = params.seed if params.seed is not None else secrets.randbits(SEED_BITS)
        return [
            Sampler(
                index,
                effective,
                prompt_length=len(ids),
                budget=budget,
                tokenizer=loaded.tokenizer,
                eos_ids=loaded.eos_ids,
                generator=seeded_generator(loaded.device, seed, index),
                constraint=constraints[index] if constraints else None,
                prompt_ids=ids,
            )
            for index in range(params.n)
        ]

    def _encode(self, request: GenerateRequest) -> list[int]:
        if isinstance(request.prompt, tuple):
            return list(request.prompt)  # token ids, as they are
        chat = request if request.messages is not None else None
        # a chat template writes the special tokens itself
        return self._ids(TokenizeRequest(request.prompt, chat, add_special_tokens=chat is None))

    def _ids(self, request: TokenizeRequest) -> list[int]:
        """The ids of a prompt or a conversation, as generation (and /tokenize) sees them."""
        loaded, _ = self._require()
        text = request.prompt or ""
        if request.chat is not None:
            text = self._render(
                request.chat.messages or (),
                request.add_generation_prompt,
                request.continue_final_message,
            )
        encoded = loaded.tokenizer(text, add_special_tokens=request.add_special_tokens)
        return list(encoded["input_ids"])

    def _render(
        self,
        messages: tuple[ChatMessage, ...],
        add_generation_prompt: bool = True,
        continue_final_message: bool = False,
    ) -> str:
        loaded, _ = self._require()
        tokenizer = loaded.tokenizer
        if not getattr(tokenizer, "chat_template", None):
            raise InvalidRequest(
                f"model {self.spec.id} has no chat template, so it cannot serve chat "
                "requests; use /v1/completions with a prompt",
                param="messages",
            )
        conversation = [
            {"role": m.role, "content": m.content, **({"name": m.name} if m.name else {})}
            for m in messages
        ]
        try:
            rendered = tokenizer.apply_chat_template(
                conversation,
                tokenize=False,
                add_generation_prompt=add_generation_prompt,
                continue_final_message=continue_final_message,
            )
        except jinja2.TemplateError as exc:
            raise InvalidRequest(
                f"messages: the model's chat template refused them: {exc}", param="messages"
            ) from exc
        except ValueError as exc:  # the last message cannot be found to continue it
            if not continue_final_message:
                raise
            raise InvalidRequest(
                f"continue_final_message: {exc}", param="continue_final_message"
            ) from exc
        return str(rendered)
