"""LoRA adapters on the transformers engine, on the real default model (SmolLM2-135M, CPU).

Two real PEFT adapters are built for the model (`tests/support/lora.py`) and every answer
is checked, greedy, against peft's own `PeftModel.generate` on the same weights: alone, in a
batch mixing the base model and both adapters, across a replace, and after an unload.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import shutil
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest
import pytest_asyncio
from peft.tuners.lora import LoraLayer
from transformers import AutoTokenizer

from nimble.engines import AdapterHost
from nimble.engines.config import EngineConfig
from nimble.engines.transformers.engine import TransformersEngine
from nimble.errors import InvalidRequest, ModelLoadError
from nimble.models.adapters import AdapterSpec
from nimble.models.resolve import resolve_model
from nimble.models.spec import ModelSpec
from nimble.types import ChatMessage, GenerateRequest, SamplingParams
from tests.support.lora import build_lora, peft_greedy, peft_reference, smollm2_folder
from tests.support.tiny_llama import build_tiny_llama

pytestmark = [pytest.mark.models, pytest.mark.asyncio(loop_scope="module")]

ROWS = 4
TOKENS = 10
PATIENCE = 300.0  # hang guard only
DRAGON = "Write a long story about a dragon."
COLOR = "Name a color."
CAPITAL = "What is the capital of France?"
# (adapter, question): what peft alone answers, greedy, in TOKENS tokens
CASES = [
    (None, DRAGON),
    (None, COLOR),
    (None, CAPITAL),
    ("pirate", COLOR),
    ("parrot", COLOR),
    ("pirate", CAPITAL),
    ("parrot", CAPITAL),
]


@pytest.fixture(scope="module")
def spec() -> ModelSpec:
    return resolve_model("smollm2-135m-instruct", engine="transformers")


@pytest.fixture(scope="module")
def cache_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    # the cache of tests/models/test_transformers_engine.py: one GGUF conversion per session
    return tmp_path_factory.getbasetemp() / "transformers-engine-cache"


@pytest.fixture(scope="module")
def folders(cache_path: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The model's folder ("base") and two adapters for it."""
    base = smollm2_folder(cache_path)
    out = tmp_path_factory.mktemp("adapters")
    return {
        "base": base,
        "pirate": build_lora(base, out / "pirate", seed=3),
        "parrot": build_lora(base, out / "parrot", seed=4),
    }


@pytest.fixture(scope="module")
def expected(folders: dict[str, Path]) -> dict[tuple[str | None, str], str]:
    adapters = {name: folders[name] for name in ("pirate", "parrot")}
    model = peft_reference(folders["base"], adapters)
    tokenizer = AutoTokenizer.from_pretrained(folders["base"])
    return {(name, q): peft_greedy(model, tokenizer, name, q, TOKENS) for name, q in CASES}


def adapter(name: str, path: Path, fmt: str = "peft") -> AdapterSpec:
    return AdapterSpec(name, "smollm2-135m-instruct", path, fmt, "0" * 64)  # type: ignore[arg-type]


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def engine(
    spec: ModelSpec, cache_path: Path, folders: dict[str, Path]
) -> AsyncIterator[TransformersEngine]:
    engine = TransformersEngine(spec, EngineConfig(max_running=ROWS, cache_path=cache_path))
    await engine.start()
    for name in ("pirate", "parrot"):
        await engine.load_adapter(adapter(name, folders[name]))
    yield engine
    await engine.stop()


async def answer(
    engine: TransformersEngine, question: str, name: str | None = None, tokens: int = TOKENS
) -> str:
    params = SamplingParams(max_tokens=tokens, temperature=0)
    request = GenerateRequest("t", params, messages=(ChatMessage("user", question),), adapter=name)

    async def drain() -> str:
        chunks = [c async for c in engine.generate(request)]
        return "".join(c.text for c in chunks if c.usage is None)

    return await asyncio.wait_for(drain(), PATIENCE)


async def until(condition: Callable[[], bool], what: str) -> None:
    """Poll (never sleep a fixed time) until `condition()` is true."""
    deadline = time.monotonic() + PATIENCE
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.01)


def keys_in(engine: TransformersEngine) -> set[str]:
    """The adapter keys the model's LoRA layers hold (empty: no LoRA layer at all)."""
    assert engine._loaded is not None
    return {k for m in engine._loaded.model.modules() if isinstance(m, LoraLayer) for k in m.lora_A}


async def test_an_adapter_answers_as_peft_does(
    engine: TransformersEngine, expected: dict[tuple[str | None, str], str]
) -> None:
    assert isinstance(engine, AdapterHost)
    base, pirate, parrot = (expected[(name, COLOR)] for name in (None, "pirate", "parrot"))
    assert len({base, pirate, parrot}) == 3  # else a mix-up could not show
    capital = {expected[(name, CAPITAL)] for name in (None, "pirate", "parrot")}
    assert len(capital) == 3
    assert await answer(engine, COLOR, "pirate") == pirate
    assert await answer(engine, COLOR, "parrot") == parrot
    assert await answer(engine, COLOR) == base


async def test_one_batch_mixes_the_base_and_two_adapters(
    engine: TransformersEngine, expected: dict[tuple[str | None, str], str]
) -> None:
    for first in (None, "pirate"):  # a base row first, then an adapter's
        engine.stats.max_batch = 0
        question = DRAGON if first is None else CAPITAL
        long = asyncio.ensure_future(answer(engine, question, first, tokens=3 * TOKENS))
        await until(lambda: engine.stats.running == 1, "the first request to run")
        rest = [("parrot", COLOR), (None, COLOR), ("pirate", COLOR)]
        if first is not None:
            rest = [(None, CAPITAL), ("parrot", CAPITAL), ("pirate", COLOR)]
        answers = await asyncio.gather(long, *(answer(engine, q, name) for name, q in rest))
        assert engine.stats.max_batch == ROWS
        assert answers[0].startswith(expected[(first, question)])
        assert answers[1:] == [expected[(name, q)] for name, q in rest]


async def test_a_replaced_adapter_finishes_its_running_requests(
    engine: TransformersEngine,
    folders: dict[str, Path],
    expected: dict[tuple[str | None, str], str],
) -> None:
    assert len(keys_in(engine)) == 2
    params = SamplingParams(max_tokens=TOKENS, temperature=0)
    request = GenerateRequest("t", params, messages=(ChatMessage("user", COLOR),), adapter="pirate")
    running = engine.generate(request)
    first = await asyncio.wait_for(anext(running), PATIENCE)  # it holds pirate's weights
    await engine.load_adapter(adapter("pirate", folders["parrot"]))  # pirate's new weights
    assert len(keys_in(engine)) == 3  # the old ones stay for the running request
    assert await answer(engine, COLOR, "pirate") == expected[("parrot", COLOR)]
    rest = [c async for c in running]
    assert first.text + "".join(c.text for c in rest) == expected[("pirate", COLOR)]
    await until(lambda: len(keys_in(engine)) == 2, "the old pirate weights to go")
    await engine.load_adapter(adapter("pirate", folders["pirate"]))
    assert await answer(engine, COLOR, "pirate") == expected[("pirate", COLOR)]


async def test_adapters_that_do_not_fit_are_refused_in_one_line(
    engine: TransformersEngine, folders: dict[str, Path], tmp_path: Path
) -> None:
    keys = keys_in(engine)
    tiny = build_tiny_llama(tmp_path / "tiny")  # hidden size 128, not 576
    narrow = build_lora(tiny, tmp_path / "narrow", seed=3)
    foreign = tmp_path / "foreign"  # GPT-2's module names
    shutil.copytree(folders["pirate"], foreign)
    config = json.loads((foreign / "adapter_config.json").read_text())
    (foreign / "adapter_config.json").write_text(
        json.dumps({**config, "target_modules": ["c_attn"]})
    )
    gguf = tmp_path / "pirate.gguf"
    gguf.write_bytes(b"GGUF")
    refusals = {
        narrow: "is [4, 128] in the adapter and [4, 576] in the model",
        foreign: "c_attn",
        gguf: "GGUF adapter",
    }
    for path, why in refusals.items():
        with pytest.raises(InvalidRequest) as refused:
            await engine.load_adapter(adapter("bad", path, "gguf" if path == gguf else "peft"))
        message = str(refused.value)
        assert message.startswith(f"{path}: not a LoRA adapter for model `smollm2-135m-instruct`")
        assert why in message and "\n" not in message
        assert refused.value.param == "lora_path"
    assert keys_in(engine) == keys  # nothing of them was left in the model
    with pytest.raises(InvalidRequest, match="`bad` is not loaded"):
        await answer(engine, COLOR, "bad")


async def test_unloading_every_adapter_gives_the_model_back(
    engine: TransformersEngine, expected: dict[tuple[str | None, str], str]
) -> None:
    await engine.unload_adapter("pirate")
    with pytest.raises(InvalidRequest, match="`pirate` is not loaded"):
        await answer(engine, COLOR, "pirate")
    assert await answer(engine, COLOR, "parrot") == expected[("parrot", COLOR)]
    await engine.unload_adapter("parrot")
    assert keys_in(engine) == set()  # no LoRA layer left: the plain modules are back
    assert await answer(engine, CAPITAL) == expected[(None, CAPITAL)]


async def test_a_static_adapter_that_does_not_fit_stops_the_start(
    spec: ModelSpec, cache_path: Path, tmp_path: Path
) -> None:
    tiny = build_tiny_llama(tmp_path / "tiny")
    narrow = build_lora(tiny, tmp_path / "narrow", seed=3)
    spec = dataclasses.replace(spec, adapters=(adapter("narrow", narrow),))
    engine = TransformersEngine(spec, EngineConfig(max_running=1, cache_path=cache_path))
    with pytest.raises(ModelLoadError) as failed:
        await engine.start()
    assert str(failed.value).startswith(f"{narrow}: not a LoRA adapter")
    assert "\n" not in str(failed.value)
    assert not await engine.health()
