"""`import nimble` (and the server modules) never import an engine's heavy library."""

from __future__ import annotations

import subprocess
import sys

HEAVY = ("xllamacpp", "onnxruntime", "torch", "vllm", "llama_cpp", "tokenizers")


def test_server_modules_do_not_import_engine_libraries() -> None:
    code = (
        "import sys, nimble, nimble.api, nimble.runtime, nimble.cli.main, nimble.cli.serve;"
        f"print([m for m in {HEAVY!r} if m in sys.modules])"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == "[]"
