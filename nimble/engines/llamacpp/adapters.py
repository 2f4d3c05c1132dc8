"""LoRA adapters on the llama.cpp engine: which adapters a server holds, the per-request
`lora` field, the check that a GGUF adapter fits the model, and the swap of servers that
loads or unloads one at run time.

Per request. llama.cpp loads every adapter with the server (`CommonParams.lora_adapters`,
`lora_init_without_apply`) and applies them per request through the request's `lora`
field, `[{"id": i, "scale": s}, ...]`, ids in the order the server was given them. A request
names every adapter of its server: its own at scale 1.0, the others at 0.0, and a base
model request all at 0.0. Measured on this build (xllamacpp 2026.10.11549): a request
without the field gets every adapter at 1.0 (`lora_init_without_apply` leaves the global
scales at 1.0, llama.cpp issue 28674), and so does `"lora": []`; a non-empty list zeroes
the adapters it leaves out, but this engine does not rely on that. With every scale at 0.0
the base model's greedy text is the same as from a server without adapters (tested).

Batching. llama.cpp's server puts two slots in one decode batch only when their adapter
lists are equal (`server_slot::can_batch_with` -> `are_lora_equal`: same adapters, same
scales, tools/server/server-context.cpp). Each decode step starts from the first busy slot
(in slot order) and adds only the slots that can batch with it; the others skip the step.
So requests for the same adapter (or the base model) batch together as usual, and requests
for different adapters do not share a step: measured here, two concurrent 60-token streams
on different adapters ran one after the other (the second started when the first ended),
while two on the same adapter ran side by side. Mixed traffic therefore serialises by
adapter: a request whose adapter differs from the running group's waits until that group's
first slot finishes. The prompt cache follows the adapters: a slot whose adapter list
changes re-reads its prompt (measured: the same prompt on base, adapter, base again on one
slot gives each its cold-start text).

Run-time loading. llama.cpp cannot add an adapter to a running server. Loading, replacing
or unloading one builds a NEW server with the new adapter list and otherwise the same
parameters, warms it with one generation, and switches new requests to it; the old one
finishes the generations it runs (each llama.cpp task stays on the server it was submitted
to, with that server's adapter ids) and is freed when they have ended. Nothing in flight
is disturbed. What a swap costs: the model load (on CPU the GGUF is memory-mapped, so the
second server's weights share the page cache and cost no second copy; on a GPU the weights
are uploaded again and need room for a second copy while both live), a second KV cache
while both servers live, and a cold prompt cache on the new server. One swap runs at a time.

Checks (before llama.cpp sees a file): a GGUF adapter must say it is one
(`general.type = adapter`, `adapter.type = lora`), be for the model's
`general.architecture`, and each `<tensor>.lora_a` / `.lora_b` pair must fit the model's
tensor of that name (lora_a: the tensor's row length by the rank; lora_b: the rank by its
row count). A PEFT folder is refused: llama.cpp takes GGUF adapters (its
`convert_lora_to_gguf.py` converts one).
"""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import xllamacpp

from nimble.engines.llamacpp.gguf import GgufLayout, read_gguf_layout
from nimble.engines.openai_wire import Json
from nimble.errors import InvalidRequest, ModelLoadError
from nimble.models.adapters import AdapterSpec

_SUFFIXES = (".lora_a", ".lora_b")


@dataclass(frozen=True)
class LoraTable:
    """The adapters of one llama.cpp server, in llama.cpp's id order."""

    adapters: tuple[AdapterSpec, ...] = ()

    def __contains__(self, name: object) -> bool:
        return any(adapter.name == name for adapter in self.adapters)

    def with_adapter(self, adapter: AdapterSpec) -> LoraTable:
        """`adapter` added, or in the place of the one of its name."""
        if adapter.name in self:
            return LoraTable(tuple(adapter if a.name == adapter.name else a for a in self.adapters))
        return LoraTable((*self.adapters, adapter))

    def without(self, name: str) -> LoraTable:
        return LoraTable(tuple(a for a in self.adapters if a.name != name))

    def apply(self, params: Any) -> None:
        """Load the adapters with the server, all off until a request turns one on."""
        infos = []
        for adapter in self.adapters:
            info = xllamacpp.CommonAdapterLoraInfo()
            info.path = str(adapter.path)
            info.scale = 1.0
            infos.append(info)
        params.lora_adapters = infos
        params.lora_init_without_apply = bool(infos)

    def field(self, name: str | None) -> list[Json] | None:
        """The request's `lora` field: every adapter, `name` at 1.0 and the rest at 0.0
        (None: this server has no adapters and the request asks for none)."""
        if name is not None and name not in self:
            raise InvalidRequest(f"adapter `{name}` is not loaded", param="model")
        if not self.adapters:
            return None
        return [
            {"id": i, "scale": 1.0 if adapter.name == name else 0.0}
            for i, adapter in enumerate(self.adapters)
        ]


def check_adapter(adapter: AdapterSpec, model: GgufLayout) -> None:
    """Refuse (InvalidRequest on `lora_path`, one line naming the file) an adapter that is
    not a GGUF LoRA adapter of `model`."""
    where = adapter.path
    if adapter.format != "gguf":
        raise InvalidRequest(
            f"{where}: a PEFT folder; llama.cpp takes GGUF LoRA adapters (convert it with "
            "llama.cpp's convert_lora_to_gguf.py)",
            param="lora_path",
        )
    try:
        layout = read_gguf_layout(where)
    except ModelLoadError as exc:
        raise InvalidRequest(str(exc), param="lora_path") from None
    problem = _mismatch(layout, model)
    if problem is not None:
        raise InvalidRequest(f"{where}: {problem}", param="lora_path")


def _mismatch(adapter: GgufLayout, model: GgufLayout) -> str | None:
    kind, lora = adapter.metadata.get("general.type"), adapter.metadata.get("adapter.type")
    if kind != "adapter" or lora != "lora":
        return f"not a LoRA adapter (general.type {kind!r}, adapter.type {lora!r})"
    arch, base_arch = (
        adapter.metadata.get("general.architecture"),
        model.metadata.get("general.architecture"),
    )
    if arch != base_arch:
        return f"a LoRA adapter for architecture {arch!r}, the model is {base_arch!r}"
    pairs: dict[str, dict[str, tuple[int, ...]]] = {}
    for name, shape in adapter.tensors.items():
        base, dot, half = name.rpartition(".")
        if not dot or f".{half}" not in _SUFFIXES:
            return f"tensor {name} is neither a lora_a nor a lora_b"
        pairs.setdefault(base, {})[half] = shape
    if not pairs:
        return "a LoRA adapter without tensors"
    for base, halves in sorted(pairs.items()):
        problem = _pair_mismatch(base, halves, model.tensors.get(base))
        if problem is not None:
            return problem
    return None


def _pair_mismatch(
    base: str, halves: dict[str, tuple[int, ...]], target: tuple[int, ...] | None
) -> str | None:
    """lora_a is (columns, rank) and lora_b (rank, rows) of a (columns, rows) tensor, in
    GGUF's order (llama.cpp's own check, before it loads anything)."""
    if target is None:
        return f"adapts {base}, which the model does not have"
    if set(halves) != {"lora_a", "lora_b"}:
        return f"{base} has only {next(iter(halves))}"
    a, b = halves["lora_a"], halves["lora_b"]
    if len(a) != 2 or len(b) != 2 or len(target) != 2:
        return f"{base}: lora_a {list(a)} and lora_b {list(b)} are not matrices"
    if a[1] != b[0]:
        return f"{base}: lora_a {list(a)} and lora_b {list(b)} disagree on the rank"
    if a[0] != target[0] or b[1] != target[1]:
        return (
            f"{base}: lora_a {list(a)} x lora_b {list(b)} does not fit the model's {list(target)}"
        )
    return None


def model_layout(path: Path) -> GgufLayout:
    return read_gguf_layout(path)


def static_table(adapters: tuple[AdapterSpec, ...], model: GgufLayout) -> LoraTable:
    """The model's adapters at start, each checked (ModelLoadError: one line)."""
    for adapter in adapters:
        try:
            check_adapter(adapter, model)
        except InvalidRequest as exc:
            raise ModelLoadError(str(exc)) from None
    return LoraTable(adapters)


def warm(server: Any, table: LoraTable, adapter: str | None = None) -> None:
    """Worker thread: one short generation on a new server for the base model and one for
    `adapter` (the one just loaded: its first request then pays no graph set-up)."""
    for name in dict.fromkeys((None, adapter)):
        body: Json = {"prompt": "Hello", "max_tokens": 1, "stream": False}
        lora = table.field(name)
        if lora is not None:
            body["lora"] = lora
        failures: list[object] = []

        def on_chunk(chunk: Json, failures: list[object] = failures) -> bool:
            if isinstance(chunk, dict) and "error" in chunk:
                failures.append(chunk["error"])
            return False

        server.handle_completions(body, on_chunk)
        if failures:
            raise ModelLoadError(f"llama.cpp failed its warm-up with the adapters: {failures[0]}")


async def retire(box: list[Any], pool: ThreadPoolExecutor, http: Any) -> None:
    """Free an old server once the generations it runs have ended."""
    from nimble.engines.llamacpp import launch

    await asyncio.to_thread(launch.release, box, pool)
    await http.aclose()
