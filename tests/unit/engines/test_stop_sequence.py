"""Which stop string ended a choice (`GenerationChunk.stop_sequence`): read from the
engines' wire (vLLM's `stop_reason`, llama.cpp's `__verbose.stopping_word`) and kept by
the runtime's stages, so that Anthropic's `stop_reason: stop_sequence` can name it."""

from __future__ import annotations

from collections.abc import AsyncGenerator

from nimble.engines.openai_wire import ChunkMapper
from nimble.runtime.tools import parse_calls, tool_format
from nimble.types import ChatMessage, GenerateRequest, GenerationChunk, SamplingParams

REQUEST = GenerateRequest("r", SamplingParams(stop=("END",)), messages=(ChatMessage("user", "x"),))


def _finish(choice: dict[str, object], **payload: object) -> GenerationChunk:
    [chunk] = ChunkMapper(REQUEST).map({"choices": [{"index": 0, **choice}], **payload})
    return chunk


def test_the_wire_names_the_stop_string() -> None:
    vllm = _finish({"delta": {}, "finish_reason": "stop", "stop_reason": "END"})
    assert (vllm.finish_reason, vllm.stop_sequence) == ("stop", "END")
    token = _finish({"delta": {}, "finish_reason": "stop", "stop_reason": 128009})
    assert token.stop_sequence is None  # a stop token, not a string
    word = {"stop_type": "word", "stopping_word": "END"}
    llama = _finish({"delta": {}, "finish_reason": "stop"}, __verbose=word)
    assert llama.stop_sequence == "END"
    eos = {"stop_type": "eos", "stopping_word": ""}
    assert _finish({"delta": {}, "finish_reason": "stop"}, __verbose=eos).stop_sequence is None
    cut = _finish({"delta": {}, "finish_reason": "length"}, __verbose=word)
    assert cut.stop_sequence is None  # only a "stop" names one


async def test_the_tool_call_stage_keeps_it() -> None:
    async def engine() -> AsyncGenerator[GenerationChunk, None]:
        yield GenerationChunk(text="plain text")
        yield GenerationChunk(finish_reason="stop", stop_sequence="END")

    chunks = [chunk async for chunk in parse_calls(engine(), tool_format(None))]
    assert chunks[-1].stop_sequence == "END"
    assert "".join(chunk.text for chunk in chunks) == "plain text"
