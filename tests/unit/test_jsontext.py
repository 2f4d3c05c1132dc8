"""Reading JSON a client or a model wrote: nesting past the recursion limit is a ValueError."""

from __future__ import annotations

import pytest

from nimble import jsontext
from nimble.runtime.tools.scanner import JsonCallScanner


def test_nesting_too_deep_is_a_value_error_and_the_rest_reads_as_json() -> None:
    assert jsontext.loads('{"a": [1, {"b": null}]}') == {"a": [1, {"b": None}]}
    assert jsontext.loads(b"[" * 100 + b"]" * 100) is not None
    with pytest.raises(ValueError, match="nest too deeply"):
        jsontext.loads("[" * 5000 + "]" * 5000)
    with pytest.raises(ValueError):
        jsontext.loads("{not json")


def test_a_model_that_writes_a_call_nested_too_deep_wrote_no_call() -> None:
    scanner = JsonCallScanner()
    scanner.feed('{"name": "f", "arguments": ' + "[" * 5000 + "]" * 5000 + "}")
    (call,) = scanner.calls
    assert call.done and not call.valid  # it was a RecursionError in the token stream
    scanner.feed('{"name": "f", "arguments": {"x": [[1]]}}')
    assert scanner.calls[1].valid
