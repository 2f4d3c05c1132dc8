"""Continuous batching for the transformers engine: one thread, one batched decode loop.

The batch is a set of rows (one per running choice) that share one KV cache of shape
[rows, heads, T, head_dim] per layer, left-padded: a row's own tokens sit at the right end
of the cache and the columns before them are zeros that its attention mask hides. Each
decode step feeds one token per row, the padded 2-D attention mask and each row's own
position ids (its real length, not the padded one), so rotary positions and distances inside
a row are exactly those it would have alone.

A new request joins the running batch between two steps: its prompt is prefilled on its own
(batch of one, no padding), its cache is repeated for `n` choices and left-padded (or the
batch is, whichever is shorter) and concatenated to the batch. A finished or aborted row is
removed between steps with an index select, and cache columns that no row uses any more are
trimmed from the left. Requests wait (first in, first out) while the batch holds
`max_rows` rows.

Every torch call happens on the scheduler thread; the event loop only hands in jobs and reads
their chunks (`Job.get`), so a closed stream frees its rows at the next step. Work that must
not overlap a forward pass (loading or deleting a LoRA adapter) is handed in with `call` and
runs between two steps.

LoRA adapters: each job names its adapter's key (`BASE_MODEL`: none); with adapters loaded,
`route` is told each row's key before every forward pass (`lora.Lora.route`), so one batch
mixes the base model and any adapters.
"""

from __future__ import annotations

import concurrent.futures
import inspect
import logging
import threading
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from transformers import DynamicCache

from nimble.engines.transformers.choice import Sampler
from nimble.engines.transformers.constrain import ConstraintFailed
from nimble.engines.transformers.echo import Echo
from nimble.engines.transformers.job import DecodeStats, Job
from nimble.errors import EngineError, Unavailable
from nimble.types import GenerationChunk, TokenLogprob

log = logging.getLogger("nimble.engines.transformers")


@dataclass
class _Row:
    job: Job
    choice: Sampler


class Scheduler:
    """Owns the model's forward passes: admits jobs, prefills them, decodes all rows together."""

    def __init__(
        self,
        model: Any,
        device: torch.device,
        max_rows: int,
        stats: DecodeStats,
        on_fatal: Callable[[str], None] | None = None,
    ):
        self.stats = stats
        self._on_fatal = on_fatal
        self._model = model
        self._device = device
        self._max_rows = max_rows
        self._condition = threading.Condition()
        self._waiting: deque[Job] = deque()
        self._stopping = False
        self._calls: deque[tuple[Callable[[], None], concurrent.futures.Future[None]]] = deque()
        # with LoRA adapters loaded: told each row's adapter key before every forward pass
        self.route: Callable[[list[str]], None] | None = None
        self._rows: list[_Row] = []
        self._cache: Any = None  # DynamicCache of the running rows
        self._mask: torch.Tensor | None = None  # [rows, T] 1 where the cache holds a token
        # only the last position's logits in a prefill (a prompt-sized logits tensor is big)
        accepts = inspect.signature(model.forward).parameters
        self._last_logits_only = {"logits_to_keep": 1} if "logits_to_keep" in accepts else {}
        # transformers 5.x renamed `past_key_values` to `cache` (the old name warns)
        self._cache_arg = "cache" if "cache" in accepts else "past_key_values"
        self._thread = threading.Thread(target=self._run, name="nimble-transformers", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def alive(self) -> bool:
        return self._thread.is_alive() and not self._stopping

    def submit(self, job: Job) -> None:
        with self._condition:
            if self._stopping or not self._thread.is_alive():
                raise Unavailable("the transformers engine is not running")
            self._waiting.append(job)
            self._condition.notify()

    def call(self, work: Callable[[], None]) -> concurrent.futures.Future[None]:
        """Run `work` on the scheduler thread between two steps; its future says when it
        is done (or what it raised)."""
        future: concurrent.futures.Future[None] = concurrent.futures.Future()
        with self._condition:
            if self._stopping or not self._thread.is_alive():
                raise Unavailable("the transformers engine is not running")
            self._calls.append((work, future))
            self._condition.notify()
        return future

    def close(self) -> None:
        """Blocking: stop the loop after its current step and fail the jobs left."""
        with self._condition:
            self._stopping = True
            self._condition.notify()
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join()

    # the scheduler thread

    def _run(self) -> None:
        try:
            with torch.inference_mode():
                while (admitted := self._next_jobs()) is not None:
                    self._run_calls()
                    for job in admitted:
                        self._guarded(job)
                    self._drop_done()
                    if self._rows:
                        self._guarded(None)
                        self._drop_done()
        except BaseException as exc:  # a bug here must not leave streams waiting forever
            log.exception("the transformers scheduler failed")
            self._fail_all(EngineError(f"the transformers engine failed: {exc}"))
            if self._on_fatal is not None:
                self._on_fatal(f"the transformers engine's scheduler stopped: {exc}")
        finally:
            with self._condition:
                self._stopping = True
            self._fail_all(Unavailable("the model was stopped during the generation"))

    def _next_jobs(self) -> list[Job] | None:
        """Wait for work; the jobs that fit in the batch now (first in, first out)."""
        with self._condition:
            while not self._stopping and not self._waiting and not self._rows and not self._calls:
                self._condition.wait()
            if self._stopping:
                return None
            admitted: list[Job] = []
            used = len(self._rows)
            while self._waiting:
                job = self._waiting[0]
                if job.cancelled:
                    self._waiting.popleft()
                    continue
                if used + len(job.choices) > self._max_rows:
                    break
                admitted.append(self._waiting.popleft())
                used += len(job.choices)
            return admitted

    def _run_calls(self) -> None:
        """The work handed in with `call`, after the rows of cancelled jobs have left."""
        with self._condition:
            calls = list(self._calls)
            self._calls.clear()
        if not calls:
            return
        self._drop_done()
        for work, future in calls:
            if not future.set_running_or_notify_cancel():
                continue
            try:
                work()
            except Exception as exc:
                future.set_exception(exc)
            else:
                future.set_result(None)

    def _guarded(self, job: Job | None) -> None:
        """Prefill `job`, or run one decode step (None). A torch failure (out of memory...)
        fails the running jobs and that one, clears the batch, and the loop goes on."""
        try:
            if job is None:
                self._step()
            else:
                self._prefill(job)
        except Exception as exc:
            log.exception("transformers forward pass failed")
            error = EngineError(f"the transformers engine failed: {exc}")
            for running in [row.job for row in self._rows] + ([job] if job else []):
                running.fail(error)
            self._rows, self._cache, self._mask = [], None, None
            self.stats.running = 0

    def _prefill(self, job: Job) -> None:
        echo = job.echo
        scoring = echo is not None and echo.top is not None
        if echo is not None and not scoring and not job.generate:
            self._echoed(job, echo, ())  # nothing for the model to do
            return
        ids = torch.tensor([job.prompt_ids], dtype=torch.long, device=self._device)
        if self.route is not None:
            self.route([job.adapter])
        cache = DynamicCache()
        out = self._model(
            input_ids=ids,
            attention_mask=torch.ones_like(ids),
            use_cache=True,
            **{self._cache_arg: cache},
            **({} if scoring else self._last_logits_only),  # scoring reads every position
        )
        logits = out.logits[0, -1].float()
        scored = echo.logprobs(out.logits[0], job.prompt_ids) if echo and scoring else ()
        del out
        self.stats.prefills += 1
        if echo is not None and not self._echoed(job, echo, scored):
            return
        if len(job.choices) > 1:
            cache.batch_repeat_interleave(len(job.choices))
        mask = torch.ones((len(job.choices), ids.shape[1]), dtype=torch.long, device=self._device)
        self._join(cache, mask)
        self._rows.extend(_Row(job, choice) for choice in job.choices)
        for choice in job.choices:
            self._advance(job, choice, logits)

    def _echoed(self, job: Job, echo: Echo, scored: tuple[TokenLogprob, ...]) -> bool:
        """Start each choice with the prompt; True if they go on to generate."""
        for choice in job.choices:
            job.send([GenerationChunk(index=choice.index, text=echo.text, logprobs=scored)], choice)
        if job.generate:
            return True
        for choice in job.choices:  # max_tokens 0: the prompt was all
            choice.finish = "length"
            job.send([GenerationChunk(index=choice.index, finish_reason="length")], choice)
        return False

    def _step(self) -> None:
        rows = self._rows
        assert self._mask is not None
        ids = torch.tensor([[r.choice.last_token] for r in rows], device=self._device)
        positions = torch.tensor([[r.choice.position] for r in rows], device=self._device)
        mask = torch.cat([self._mask, torch.ones_like(ids)], dim=1)
        if self.route is not None:
            self.route([r.job.adapter for r in rows])
        out = self._model(
            input_ids=ids,
            attention_mask=mask,
            position_ids=positions,
            use_cache=True,
            **{self._cache_arg: self._cache},
        )
        self._mask = mask
        logits = out.logits[:, -1].float()
        del out
        self.stats.steps += 1
        self.stats.max_batch = max(self.stats.max_batch, len(rows))
        for i, row in enumerate(rows):
            self._advance(row.job, row.choice, logits[i])

    def _advance(self, job: Job, choice: Sampler, logits: torch.Tensor) -> None:
        """Sample one token of `choice`; a broken grammar fails its request alone."""
        try:
            chunks = choice.step(logits)
        except ConstraintFailed as exc:
            log.error("constrained decoding failed: %s", exc)
            job.fail(exc)
            job.cancelled = True  # its rows leave the batch after this step
            return
        job.send(chunks, choice)
        self.stats.tokens += 1

    def _join(self, cache: Any, mask: torch.Tensor) -> None:
        """Append the rows of a prefilled cache to the batch, left-padding the shorter side."""
        if self._cache is None or self._mask is None:
            self._cache, self._mask = cache, mask
            return
        length = max(self._mask.shape[1], mask.shape[1])
        for mine, theirs in zip(_layers(self._cache), _layers(cache), strict=True):
            mine.keys = torch.cat([_pad_left(mine.keys, length), _pad_left(theirs.keys, length)])
            mine.values = torch.cat(
                [_pad_left(mine.values, length), _pad_left(theirs.values, length)]
            )
        self._mask = torch.cat([_pad_left(self._mask, length), _pad_left(mask, length)])

    def _drop_done(self) -> None:
        """Remove finished and aborted rows; trim the cache columns no row uses."""
        keep = [i for i, row in enumerate(self._rows) if not _done(row)]
        self.stats.running = len(keep)
        if len(keep) == len(self._rows):
            return
        self._rows = [self._rows[i] for i in keep]
        if not keep or self._mask is None:
            self._rows, self._cache, self._mask = [], None, None
            return
        index = torch.tensor(keep, dtype=torch.long, device=self._device)
        mask = self._mask.index_select(0, index)
        first = int(mask.any(dim=0).nonzero()[0].item())
        self._mask = mask[:, first:]
        for layer in _layers(self._cache):
            layer.keys = layer.keys.index_select(0, index)[:, :, first:]
            layer.values = layer.values.index_select(0, index)[:, :, first:]

    def _fail_all(self, error: BaseException) -> None:
        with self._condition:
            jobs = list(self._waiting)
            self._waiting.clear()
            calls = list(self._calls)
            self._calls.clear()
        for _, future in calls:
            if future.set_running_or_notify_cancel():
                future.set_exception(error)
        jobs.extend(row.job for row in self._rows)
        for job in jobs:
            job.fail(error)
        self._rows, self._cache, self._mask = [], None, None
        self.stats.running = 0


def _done(row: _Row) -> bool:
    return row.job.cancelled or row.choice.finish is not None


def _layers(cache: Any) -> list[Any]:
    layers: list[Any] = cache.layers
    return layers


def _pad_left(tensor: torch.Tensor, length: int) -> torch.Tensor:
    """Zeros before the sequence axis (the last of a mask, the third of a K or V tensor)."""
    axis = 1 if tensor.dim() == 2 else 2
    missing = length - tensor.shape[axis]
    if missing == 0:
        return tensor
    shape = list(tensor.shape)
    shape[axis] = missing
    return torch.cat([tensor.new_zeros(shape), tensor], dim=axis)
