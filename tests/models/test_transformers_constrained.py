"""Grammar-constrained decoding on the transformers engine (llguidance), on the real default
model (SmolLM2-135M-Instruct GGUF, CPU).

Every output is checked against its constraint (jsonschema, re.fullmatch, the choices, the
tool-call markup), sampled where it can be so the mask, not the model's habits, is what
holds; the lazy tool grammar is checked to leave free text alone and to bind once the model
opens a call. The GGUF is converted once per session (the cache of the engine's own tests).
"""

from __future__ import annotations

import asyncio
import json
import math
import re
from collections.abc import AsyncIterator
from typing import Any

import jsonschema
import pytest
import pytest_asyncio
import torch
from transformers import AutoTokenizer

from nimble.engines.config import EngineConfig
from nimble.engines.transformers.constrain import Grammars
from nimble.engines.transformers.engine import TransformersEngine
from nimble.errors import UnsupportedParameter
from nimble.models.resolve import resolve_model
from nimble.types import (
    ChatMessage,
    ChoiceConstraint,
    Constraint,
    GenerateRequest,
    GrammarConstraint,
    JsonSchemaConstraint,
    RegexConstraint,
    SamplingParams,
    ToolCallConstraint,
)
from tests.models.test_transformers_engine import collect, finishes, shared_cache, text_of

pytestmark = [pytest.mark.models, pytest.mark.asyncio(loop_scope="module")]

ROWS = 6
TRIALS = 5
PERSON = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "minLength": 1, "maxLength": 12},
        "age": {"type": "integer", "minimum": 0, "maximum": 120},
        "role": {"enum": ["admin", "editor", "viewer"]},
        "tags": {
            "type": "array",
            "items": {"type": "string", "maxLength": 8},
            "maxItems": 2,
        },
        "address": {
            "type": "object",
            "properties": {
                "city": {"type": "string", "maxLength": 12},
                "zip": {"type": "string", "pattern": "^[0-9]{5}$"},
            },
            "required": ["city", "zip"],
            "additionalProperties": False,
        },
    },
    "required": ["name", "age", "role", "tags", "address"],
    "additionalProperties": False,
}
CITY_ZIP = r"[A-Z][a-z]{2,8}, [0-9]{5}"
WEATHER_PARAMS = {
    "type": "object",
    "properties": {
        "city": {"type": "string", "maxLength": 16},
        "unit": {"enum": ["celsius", "fahrenheit"]},
    },
    "required": ["city", "unit"],
    "additionalProperties": False,
}
CALL_SCHEMA = {
    "type": "object",
    "properties": {"name": {"const": "get_weather"}, "arguments": WEATHER_PARAMS},
    "required": ["name", "arguments"],
    "additionalProperties": False,
}
BEGIN, END, SEPARATOR = "<tool_call>\n", "\n</tool_call>", "\n"
# a completion prompt after which greedy SmolLM2 opens a call of its own accord
TOOL_PROMPT = """You can call tools. To call one, write <tool_call> then a JSON object, then \
</tool_call>.

User: What is the weather in Rome?
Assistant: Let me check. <tool_call>
{"name":"get_weather","arguments":{"city":"Rome","unit":"celsius"}}
</tool_call>

User: What is the weather in Paris?
Assistant:"""


def hermes(*, lazy: bool, max_calls: int | None = 1) -> ToolCallConstraint:
    return ToolCallConstraint(CALL_SCHEMA, BEGIN, END, SEPARATOR, max_calls, lazy)


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def engine(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[TransformersEngine]:
    spec = resolve_model("smollm2-135m-instruct", engine="transformers")
    config = EngineConfig(max_running=ROWS, cache_path=shared_cache(tmp_path_factory))
    engine = TransformersEngine(spec, config)
    await engine.start()
    yield engine
    await engine.stop()


@pytest.fixture(scope="module")
def tokenizer(engine: TransformersEngine, tmp_path_factory: pytest.TempPathFactory) -> Any:
    cache = shared_cache(tmp_path_factory) / "transformers"
    (folder,) = [p for p in cache.iterdir() if p.is_dir()]
    return AutoTokenizer.from_pretrained(folder)


def chat(text: str, constraint: Constraint | None = None, **params: Any) -> GenerateRequest:
    messages = (ChatMessage("user", text),)
    return GenerateRequest(
        "test", SamplingParams(**params), messages=messages, constraint=constraint
    )


def one_call(text: str) -> dict[str, Any]:
    """The call of a text that is exactly one hermes tool call (asserts that it is)."""
    assert text.startswith(BEGIN) and text.endswith(END), text
    call: dict[str, Any] = json.loads(text[len(BEGIN) : -len(END)])
    jsonschema.validate(call, CALL_SCHEMA)
    return call


async def test_json_schema_holds_in_every_sampled_trial(engine: TransformersEngine) -> None:
    requests = [
        chat(
            "Describe a user of a web site as JSON.",
            JsonSchemaConstraint(PERSON),
            max_tokens=160,
            temperature=1.0,
            seed=seed,
        )
        for seed in range(TRIALS)
    ]
    outputs = await asyncio.gather(*(collect(engine, r) for r in requests))
    texts = set()
    for chunks in outputs:
        assert finishes(chunks) == {0: "stop"}, text_of(chunks)
        jsonschema.validate(json.loads(text_of(chunks)), PERSON)
        texts.add(text_of(chunks))
    assert len(texts) > 1  # sampled, not one greedy answer repeated


async def test_regex_fullmatches_with_top_p_and_logprobs(engine: TransformersEngine) -> None:
    request = chat(
        "Give me a city and a zip code.",
        RegexConstraint(CITY_ZIP),
        max_tokens=30,
        temperature=0.9,
        top_p=0.9,
        seed=7,
        top_logprobs=3,
        n=3,
    )
    chunks = await collect(engine, request)
    assert finishes(chunks) == {0: "stop", 1: "stop", 2: "stop"}
    for index in range(3):
        assert re.fullmatch(CITY_ZIP, text_of(chunks, index)), text_of(chunks, index)
        logprobs = [lp for c in chunks if c.index == index for lp in c.logprobs]
        assert "".join(lp.token for lp in logprobs) == text_of(chunks, index)
        for lp in logprobs:  # over the masked distribution: finite, alternatives allowed too
            assert math.isfinite(lp.logprob) and lp.logprob <= 0.0
            assert lp.top and all(math.isfinite(alt.logprob) for alt in lp.top)
        digit = next(lp for lp in logprobs if lp.token.isdigit())
        assert all(alt.token[0].isdigit() for alt in digit.top)


async def test_greedy_regex_and_choices(engine: TransformersEngine) -> None:
    greedy = await collect(
        engine, chat("Where do you live?", RegexConstraint(CITY_ZIP), max_tokens=30, temperature=0)
    )
    assert re.fullmatch(CITY_ZIP, text_of(greedy))
    choices = ("yes", "no", "maybe not")
    request = chat(
        "Is the sky green?", ChoiceConstraint(choices), max_tokens=10, temperature=1.5, n=4, seed=3
    )
    chunks = await collect(engine, request)
    assert finishes(chunks) == {i: "stop" for i in range(4)}
    assert all(text_of(chunks, i) in choices for i in range(4))


async def test_gbnf_and_lark_grammars(engine: TransformersEngine) -> None:
    gbnf = GrammarConstraint('root ::= "red" | "green" | "blue"')
    chunks = await collect(engine, chat("Name a color.", gbnf, max_tokens=10, temperature=0))
    assert text_of(chunks) in ("red", "green", "blue") and finishes(chunks) == {0: "stop"}
    lark = GrammarConstraint('start: "Answer: " /[0-9]{1,3}/ "."')
    chunks = await collect(engine, chat("What is 6 times 7?", lark, max_tokens=12, temperature=0))
    assert re.fullmatch(r"Answer: [0-9]{1,3}\.", text_of(chunks)), text_of(chunks)


async def test_forced_tool_call_is_exactly_one_call(engine: TransformersEngine) -> None:
    request = chat(
        "What's the weather like in Paris?", hermes(lazy=False), max_tokens=80, temperature=0
    )
    chunks = await collect(engine, request)
    assert finishes(chunks) == {0: "stop"}
    assert one_call(text_of(chunks))["name"] == "get_weather"


async def test_lazy_tool_grammar_leaves_plain_text_alone(engine: TransformersEngine) -> None:
    free = await collect(engine, chat("Tell me a joke", max_tokens=24, temperature=0))
    lazy = chat("Tell me a joke", hermes(lazy=True, max_calls=None), max_tokens=24, temperature=0)
    chunks = await collect(engine, lazy)
    assert "<tool_call>" not in text_of(chunks)
    assert text_of(chunks) == text_of(free)  # no mask before the trigger: the same greedy text
    assert finishes(chunks) == finishes(free)


async def test_lazy_tool_grammar_binds_once_the_model_opens_a_call(
    engine: TransformersEngine,
) -> None:
    request = GenerateRequest(
        "test",
        SamplingParams(max_tokens=60, temperature=0),
        prompt=TOOL_PROMPT,
        constraint=hermes(lazy=True, max_calls=1),
    )
    chunks = await collect(engine, request)
    text = text_of(chunks)
    assert finishes(chunks) == {0: "stop"}  # one call at most: the grammar ends the choice
    at = text.index("<tool_call>")
    assert text[:at].strip()  # the free text before the call stays
    assert one_call(text[at:])["arguments"]["city"]


async def test_constrained_and_free_requests_share_one_batch(engine: TransformersEngine) -> None:
    free = chat("Count from one to twenty.", max_tokens=24, temperature=0)
    alone = text_of(await collect(engine, free))
    json_request = chat(
        "Describe a user of a web site as JSON.",
        JsonSchemaConstraint(PERSON),
        max_tokens=160,
        temperature=0,
    )
    regex_request = chat("Where do you live?", RegexConstraint(CITY_ZIP), max_tokens=30)
    most = 0

    async def watch() -> None:
        nonlocal most
        while True:
            most = max(most, engine.stats.running)
            await asyncio.sleep(0.005)

    watcher = asyncio.create_task(watch())
    try:
        together = await asyncio.gather(
            collect(engine, json_request), collect(engine, regex_request), collect(engine, free)
        )
    finally:
        watcher.cancel()
    as_json, as_regex, as_free = together
    jsonschema.validate(json.loads(text_of(as_json)), PERSON)
    assert re.fullmatch(CITY_ZIP, text_of(as_regex))
    assert text_of(as_free) == alone  # the masks of its neighbours do not touch this row
    assert most == 3


@pytest.mark.parametrize(
    ("constraint", "param", "message"),
    [
        (GrammarConstraint('start: "a" rule_that_does_not_exist'), "guided_grammar", "rule"),
        (GrammarConstraint('root ::= "a" missing-rule'), "guided_grammar", "missing-rule"),
        (RegexConstraint("(?=a)a"), "guided_regex", "look-around"),
        (
            JsonSchemaConstraint({"type": "object", "oneOf": [{"type": "string"}]}),
            "response_format",
            "Unsatisfiable",
        ),
    ],
)
async def test_what_llguidance_refuses_is_unsupported_before_any_token(
    engine: TransformersEngine, constraint: Constraint, param: str, message: str
) -> None:
    stream = engine.generate(chat("Hello", constraint, max_tokens=5))
    with pytest.raises(UnsupportedParameter) as caught:
        await anext(stream)  # the first item: no chunk came before the error
    assert caught.value.param == param and message in str(caught.value), str(caught.value)
    assert text_of(await collect(engine, chat("Hello", max_tokens=2, temperature=0)))


async def test_trigger_token_that_overshoots_is_cut_at_the_trigger(tokenizer: Any) -> None:
    """A token that completes the trigger and writes more than the calls can start with is
    replaced by the tokens of its text up to the trigger's end; one whose extra text fits is
    kept and fed to the grammar."""
    grammars = Grammars(tokenizer, frozenset({tokenizer.eos_token_id}))
    before = tokenizer("Sure <tool_call", add_special_tokens=False)["input_ids"]
    (overshoot,) = tokenizer(">,", add_special_tokens=False)["input_ids"]
    (close,) = tokenizer(">", add_special_tokens=False)["input_ids"]
    (state,) = grammars.compile(hermes(lazy=True), 1)
    logits = torch.zeros(len(tokenizer))
    assert torch.equal(state.masked(logits), logits)  # free until the trigger
    assert state.accept(overshoot, before) == close
    allowed = torch.isfinite(state.masked(logits)).nonzero().view(-1).tolist()
    assert allowed and all(tokenizer.decode(t).startswith("\n") for t in allowed)
    (dot,) = tokenizer(">.", add_special_tokens=False)["input_ids"]
    fitting = ToolCallConstraint(CALL_SCHEMA, "<tool_call>.", END, SEPARATOR, 1, True)
    (state,) = grammars.compile(fitting, 1)
    assert state.accept(dot, before) == dot
    allowed = torch.isfinite(state.masked(logits)).nonzero().view(-1).tolist()
    assert allowed and all(tokenizer.decode(t).startswith("{") for t in allowed)
