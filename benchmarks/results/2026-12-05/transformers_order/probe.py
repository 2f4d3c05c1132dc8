import asyncio
import json
import sys
import time
from pathlib import Path

from nimble.engines import EngineConfig
from nimble.engines.llamacpp.engine import LlamaCppEngine
from nimble.models import resolve_model
from nimble.runtime import Runtime, RuntimeConfig, ServiceState

NUMERICAL = ("numpy", "onnxruntime", "torch", "transformers")

seen = []
start = LlamaCppEngine.start


async def noted(self):
    seen.append([m for m in NUMERICAL if m in sys.modules])
    await start(self)


LlamaCppEngine.start = noted
specs = [
    resolve_model("smollm2-135m-instruct", name="smollm2-torch", engine="transformers"),
    resolve_model("all-minilm-l6-v2"),
    resolve_model("smollm2-135m-instruct"),
]


async def main():
    t = time.monotonic()
    runtime = Runtime(
        specs,
        RuntimeConfig(EngineConfig(context_length=512, cache_path=Path("/tmp/tfprobe/cache"))),
    )
    await runtime.start()
    try:
        assert runtime.state is ServiceState.READY
    finally:
        await runtime.stop()
    print(
        json.dumps(
            {
                "at_llamacpp": seen,
                "after": [m for m in NUMERICAL if m in sys.modules],
                "s": round(time.monotonic() - t, 1),
            }
        )
    )


asyncio.run(main())
