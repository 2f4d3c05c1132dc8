"""vLLM's sampling fields in llama.cpp's names, what llama.cpp cannot do refused with the
field named, and the Cutter that ends choices on llama.cpp's stream (stop_token_ids, kept
stop strings) on payloads shaped as llama.cpp sends them."""

from __future__ import annotations

from typing import Any

import pytest

from nimble.engines.llamacpp.sampling import Cutter, sampling_fields
from nimble.errors import InvalidRequest, UnsupportedParameter
from nimble.types import SamplingParams


def test_fields_in_llama_cpp_names() -> None:
    params = SamplingParams(
        top_k=0,
        min_p=0.2,
        repetition_penalty=1.3,
        ignore_eos=True,
        logit_bias=((3, 100.0), (7, -100.0)),
        continuous_usage=True,
    )
    assert sampling_fields(params, vocab=100, window=2048) == {
        "top_k": 0,  # off
        "min_p": 0.2,
        "repeat_penalty": 1.3,
        "repeat_last_n": 2048,  # the whole window (llama.cpp's default: the last 64)
        "ignore_eos": True,
        "logit_bias": {"3": 100.0, "7": -100.0},
        "timings_per_token": True,
    }
    assert sampling_fields(SamplingParams(), vocab=100, window=2048) == {}
    # the Cutter's needs: token ids, per-token timings; kept stop strings found by it
    cut = SamplingParams(stop=("x",), stop_token_ids=(4,), include_stop_str_in_output=True)
    assert sampling_fields(cut, vocab=None, window=64) == {
        "timings_per_token": True,
        "logprobs": 1,
        "stop": [],
    }


@pytest.mark.parametrize(
    ("params", "param"),
    [
        (SamplingParams(min_tokens=3), "min_tokens"),
        (SamplingParams(min_tokens=3, ignore_eos=True, stop=("a",)), "min_tokens"),
        (SamplingParams(min_tokens=3, ignore_eos=True, stop_token_ids=(1,)), "min_tokens"),
        (SamplingParams(skip_special_tokens=False), "skip_special_tokens"),
        (SamplingParams(logit_bias=((100, 1.0),)), "logit_bias"),
    ],
)
def test_refusals_name_the_field(params: SamplingParams, param: str) -> None:
    with pytest.raises(InvalidRequest) as refused:
        sampling_fields(params, vocab=100, window=64)
    assert refused.value.param == param
    expected = InvalidRequest if param == "logit_bias" else UnsupportedParameter
    assert type(refused.value) is expected


def test_min_tokens_holds_by_itself_with_ignore_eos_alone() -> None:
    params = SamplingParams(max_tokens=8, min_tokens=8, ignore_eos=True)
    assert sampling_fields(params, vocab=100, window=64)["ignore_eos"] is True


def payload(index: int, tokens: list[tuple[int, str]], predicted: int) -> dict[str, Any]:
    """One chunk of llama.cpp's completion stream with token ids and per-token timings."""
    content = [{"id": i, "token": t, "bytes": list(t.encode()), "logprob": -1.0} for i, t in tokens]
    return {
        "choices": [
            {
                "text": "".join(t for _, t in tokens),
                "index": index,
                "logprobs": {"content": content},
                "finish_reason": None,
            }
        ],
        "timings": {"prompt_n": 3, "cache_n": 2, "predicted_n": predicted},
    }


def test_cutter_ends_each_choice_at_its_stop_token() -> None:
    cutter = Cutter(SamplingParams(n=2, stop_token_ids=(9,)))
    assert cutter.rewrite(payload(0, [(1, "Hi")], 1)) is not None
    ended = cutter.rewrite(payload(0, [(2, " there"), (9, "!"), (3, " more")], 4))
    assert ended is not None
    (choice,) = ended["choices"]
    assert (choice["text"], choice["finish_reason"]) == (" there", "stop")
    assert [entry["id"] for entry in choice["logprobs"]["content"]] == [2, 9]
    # 4 predicted through this chunk, less the one after the stop token; prompt 3 + 2 cached
    assert ended["usage"] == {"prompt_tokens": 5, "completion_tokens": 3}
    assert not cutter.done
    assert cutter.rewrite(payload(0, [(4, " later")], 5)) is None  # llama.cpp goes on
    assert cutter.rewrite(payload(1, [(9, "!")], 1)) is not None
    assert cutter.done


def test_cutter_keeps_a_stop_string_split_across_chunks() -> None:
    cutter = Cutter(SamplingParams(stop=("lo wor",), include_stop_str_in_output=True))
    assert cutter.rewrite(payload(0, [(1, "Hel"), (2, "lo")], 2)) is not None
    ended = cutter.rewrite(payload(0, [(3, " wor"), (4, "ld")], 4))
    assert ended is not None
    assert ended["choices"][0]["text"] == " wor" and ended["choices"][0]["finish_reason"] == "stop"
    assert ended["usage"]["completion_tokens"] == 3
    assert cutter.done
    kept_token = Cutter(SamplingParams(stop_token_ids=(2,), include_stop_str_in_output=True))
    ended = kept_token.rewrite(payload(0, [(1, "a"), (2, "b"), (3, "c")], 3))
    assert ended is not None and ended["choices"][0]["text"] == "ab"
