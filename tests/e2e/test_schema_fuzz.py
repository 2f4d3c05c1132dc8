"""No input is a 500: schemathesis fuzzes every operation of the OpenAPI document that
`nimble serve` publishes, against the real default models (SmolLM2 on llama.cpp, MiniLM on
ONNX), and fails on any 5xx.

Its coverage phase sends each schema's edge values (missing fields, wrong types, bounds);
its fuzzing phase sends bodies drawn from the schemas. The seed is fixed, so a run is the
same every time: what it found (a block `type` that was an object, two assistant turns at the
end that llama.cpp refuses) stays found. `tests/support/schema_fuzz_hooks.py` names a served
model in every body and keeps the generations short.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.e2e.conftest import NimbleProcess

pytestmark = pytest.mark.models

HOOKS = Path(__file__).parents[1] / "support"
SEED = 20261205
EXAMPLES = 12  # per operation in the fuzzing phase (the coverage phase sends what it must)


def st_command() -> str:
    found = shutil.which("st", path=str(Path(sys.executable).parent)) or shutil.which("st")
    if found is None:
        pytest.fail("schemathesis is not installed (it is in the `test` extra)")
    return found


def test_no_request_gets_a_server_error(default_server: NimbleProcess, tmp_path: Path) -> None:
    run = subprocess.run(
        [
            st_command(),
            "run",
            f"{default_server.base_url}/openapi.json",
            "--checks=not_a_server_error",
            "--phases=coverage,fuzzing",
            f"--max-examples={EXAMPLES}",
            f"--seed={SEED}",
            "--generation-deterministic",
            "--request-timeout=120",
            "--continue-on-failure",
            "--no-color",
            "--warnings=off",
        ],
        env={
            **os.environ,
            "SCHEMATHESIS_HOOKS": "schema_fuzz_hooks",
            "PYTHONPATH": os.pathsep.join(filter(None, [str(HOOKS), os.environ.get("PYTHONPATH")])),
        },
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
        cwd=tmp_path,
    )
    output = run.stdout + run.stderr
    errors = [line for line in default_server.log().splitlines() if "nimble.access" not in line]
    assert run.returncode == 0, output[-12000:] + "\n--- server log ---\n" + "\n".join(errors[-80:])
    operations = re.search(r"Operations:\s+(\d+) selected / (\d+) total", output)
    assert operations is not None, output
    assert int(operations[1]) == int(operations[2]) >= 20, output  # every route was tried
    generated = re.search(r"(\d+) generated", output)
    assert generated is not None and int(generated[1]) > 1000, output
