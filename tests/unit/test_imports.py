"""`import nimble` stays light (and the server modules never import an engine's heavy
library); no two modules of nimble import each other, even through a lazy import."""

from __future__ import annotations

import json
import subprocess
import sys
import tomllib
from pathlib import Path

import grimp


def _heavy() -> tuple[str, ...]:
    """The engine libraries, as the import-linter contract lists them (one list, two guards:
    the contract sees direct imports, this test what a fresh interpreter really loads)."""
    config = tomllib.loads((Path(__file__).parents[2] / "pyproject.toml").read_text())
    contracts = config["tool"]["importlinter"]["contracts"]
    (heavy,) = [c for c in contracts if c["name"].startswith("import nimble never pulls heavy")]
    return tuple(heavy["forbidden_modules"])


HEAVY = _heavy()
SERVER = ("fastapi", "starlette", "uvicorn", "typer", "rich", "numpy")


def imported_after(code: str, modules: tuple[str, ...]) -> list[str]:
    """Which of `modules` a fresh interpreter has imported after running `code`."""
    probe = (
        f"import json, sys; {code}; print(json.dumps([m for m in {modules!r} if m in sys.modules]))"
    )
    result = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True
    )
    return list(json.loads(result.stdout))


def test_server_modules_do_not_import_engine_libraries() -> None:
    code = "import nimble, nimble.api, nimble.runtime, nimble.cli.main, nimble.cli.serve"
    assert imported_after(code, HEAVY) == []


def test_import_nimble_is_light_and_create_app_is_lazy() -> None:
    assert imported_after("import nimble", SERVER + HEAVY) == []
    # the entry point imports the HTTP adapter on first use, and only then
    code = (
        "import nimble, nimble.api.app;"
        "assert nimble.create_app is nimble.api.app.create_app;"
        "assert 'create_app' in nimble.__all__"
    )
    assert imported_after(code, ("fastapi",)) == ["fastapi"]


NUMERICAL = ("numpy", "onnxruntime", "torch")

# the default pair and a torch encoder, the encoders named first; what was imported when
# llama.cpp began to load
_LOAD_ORDER = """
import asyncio, json, sys
from nimble.engines import EngineConfig
from nimble.engines.llamacpp.engine import LlamaCppEngine
from nimble.models import resolve_model
from nimble.runtime import Runtime, RuntimeConfig, ServiceState

seen = []
start = LlamaCppEngine.start

async def noted(self):
    seen.append([m for m in NUMERICAL if m in sys.modules])
    await start(self)

LlamaCppEngine.start = noted
specs = [
    resolve_model("all-minilm-l6-v2"),
    resolve_model("all-minilm-l6-v2", name="minilm-torch", engine="sentence_transformers"),
    resolve_model("smollm2-135m-instruct"),
]

async def main():
    runtime = Runtime(specs, RuntimeConfig(EngineConfig(context_length=512)))
    await runtime.start()
    try:
        assert runtime.state is ServiceState.READY
    finally:
        await runtime.stop()
    print(json.dumps({"at_llamacpp": seen, "after": [m for m in NUMERICAL if m in sys.modules]}))

asyncio.run(main())
"""


def test_engines_are_created_without_numerical_libraries() -> None:
    """The encoders and the transformers engine import them when they start (the runtime
    checks an engine's capabilities when it is created, so its module is imported then)."""
    code = (
        "import nimble.engines.labels;"
        "from nimble.engines import EngineConfig, create_engine;"
        "from nimble.models import resolve_model;"
        "config = EngineConfig(context_length=512);"
        "create_engine(resolve_model('all-minilm-l6-v2'), config);"
        "create_engine(resolve_model('all-minilm-l6-v2', engine='sentence_transformers'), config);"
        "create_engine(resolve_model('smollm2-135m-instruct', engine='transformers'), config)"
    )
    assert imported_after(code, (*NUMERICAL, "transformers")) == []


def test_llamacpp_loads_before_numpy_whatever_the_order_of_the_models() -> None:
    """numpy and ONNX Runtime loaded before llama.cpp's model slow its prompt processing by
    2-3 % for the life of the process (benchmarks/RESULTS.md, 2026-12-05); the runtime starts
    llama.cpp's models first, and the encoder engines import them when they start."""
    probe = f"NUMERICAL = {NUMERICAL!r}\n{_LOAD_ORDER}"
    result = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True, timeout=300
    )
    seen = json.loads(result.stdout.splitlines()[-1])
    assert seen == {"at_llamacpp": [[]], "after": ["numpy", "onnxruntime", "torch"]}


def cycles(graph: grimp.ImportGraph) -> list[list[str]]:
    """The groups of modules that import each other (strongly connected, Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(module: str) -> None:
        index[module] = low[module] = len(index)
        stack.append(module)
        on_stack.add(module)
        for imported in sorted(graph.find_modules_directly_imported_by(module)):
            if imported not in index:
                visit(imported)
                low[module] = min(low[module], low[imported])
            elif imported in on_stack:
                low[module] = min(low[module], index[imported])
        if low[module] == index[module]:
            group = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                group.append(member)
                if member == module:
                    break
            if len(group) > 1:
                found.append(sorted(group))

    for module in sorted(graph.modules):
        if module not in index:
            visit(module)
    return found


def loop(graph: grimp.ImportGraph, group: list[str]) -> list[str]:
    """One way round a group: its first module -> ... -> the same module."""
    there = graph.find_shortest_chain(group[0], group[1]) or ()
    back = graph.find_shortest_chain(group[1], group[0]) or ()
    return [*there, *back[1:]]


def test_no_import_cycles() -> None:
    # grimp reports every import statement: module level, inside functions (lazy) and
    # under TYPE_CHECKING; a cycle through any of them fails
    graph = grimp.build_graph("nimble")
    assert len(graph.modules) > 50  # the whole package was read
    assert [" -> ".join(loop(graph, group)) for group in cycles(graph)] == []


def test_the_cycle_check_sees_a_cycle() -> None:
    graph = grimp.build_graph("nimble")
    graph.add_import(importer="nimble.errors", imported="nimble.cli.main")  # lazy or not
    assert any({"nimble.errors", "nimble.cli.main"} <= set(group) for group in cycles(graph))
