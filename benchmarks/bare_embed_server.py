"""A reference point for run_embed.py: nimble's ONNX embedding engine (with its cross-request
batching) behind a bare ASGI app on uvicorn (httptools, uvloop): no framework, no
middleware, no validation, no auth, metrics, logs or traces. What an HTTP layer in Python
can get out of this engine on this machine; nimble's distance to it is the price of
everything a production server does per request.

    python benchmarks/bare_embed_server.py PORT
"""

from __future__ import annotations

import sys
from typing import Any

import orjson
import uvicorn

from nimble.engines.config import EngineConfig
from nimble.engines.onnx.engine import OnnxEmbeddingEngine
from nimble.models import resolve_model
from nimble.types import EmbedRequest

MODEL = "all-minilm-l6-v2"
engine = OnnxEmbeddingEngine(resolve_model(MODEL), EngineConfig(embed_batch_size=32))
Message = dict[str, Any]


async def app(scope: Message, receive: Any, send: Any) -> None:
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await engine.start()  # with its warm-up
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await engine.stop()
                await send({"type": "lifespan.shutdown.complete"})
                return
    if scope["path"] != "/v1/embeddings":  # the readiness poll: up once lifespan started
        await answer(send, b"{}")
        return
    body = b""
    while True:
        message = await receive()
        body += message.get("body", b"")
        if not message.get("more_body"):
            break
    request = orjson.loads(body)
    inputs = request["input"] if isinstance(request["input"], list) else [request["input"]]
    result = await engine.embed(EmbedRequest("bare", tuple(inputs)))
    data = [
        {"object": "embedding", "index": i, "embedding": list(v)}
        for i, v in enumerate(result.vectors)
    ]
    usage = {"prompt_tokens": result.prompt_tokens, "total_tokens": result.prompt_tokens}
    await answer(
        send, orjson.dumps({"object": "list", "data": data, "model": MODEL, "usage": usage})
    )


async def answer(send: Any, body: bytes) -> None:
    headers = [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(body))]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": body})


if __name__ == "__main__":
    uvicorn.run(
        app,
        host="127.0.0.1",
        port=int(sys.argv[1]),
        http="httptools",
        loop="uvloop",
        log_level="warning",
    )
