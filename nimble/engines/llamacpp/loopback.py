"""llama.cpp's own HTTP listener on 127.0.0.1 (random port), as the engine reaches it: locked
with a random API key that never leaves the engine, and used only for what the in-process calls
lack (`/props`, `/v1/models`, `/health`, `/slots`, `/apply-template`, `/tokenize`,
`/detokenize`). What it fails to answer is an EngineError.
"""

from __future__ import annotations

from typing import Any

import httpx

from nimble.engines.openai_wire import Json
from nimble.errors import EngineError


def client(server: Any, secret: str) -> httpx.AsyncClient:
    """The client of a server's loopback listener (llama.cpp's /tokenize, /props, /slots)."""
    return httpx.AsyncClient(
        base_url=server.listening_address,
        headers={"Authorization": f"Bearer {secret}"},
        timeout=60.0,
        # llama.cpp (cpp-httplib) closes an idle connection after 5 s: the pool lets go of
        # it first, never reusing one the server is closing
        limits=httpx.Limits(keepalive_expiry=2.0),
        trust_env=False,  # never send this to a proxy
    )


async def get(http: httpx.AsyncClient, route: str) -> Json:
    try:
        response = await http.get(route)
        response.raise_for_status()
    except httpx.HTTPError as exc:
        raise EngineError(f"llama.cpp did not answer GET {route}: {exc}") from exc
    answer: Json = response.json()
    return answer


async def post(http: httpx.AsyncClient, route: str, body: Json) -> Json:
    try:
        response = await http.post(route, json=body)
    except httpx.HTTPError as exc:
        raise EngineError(f"llama.cpp did not answer POST {route}: {exc}") from exc
    if response.status_code != 200:
        raise EngineError(f"llama.cpp POST {route}: {response.status_code} {response.text}")
    answer: Json = response.json()
    return answer


async def healthy(http: httpx.AsyncClient) -> bool:
    try:
        response = await http.get("/health", timeout=5.0)
    except httpx.HTTPError:
        return False
    return response.status_code == 200


async def cache_usage(http: httpx.AsyncClient) -> float | None:
    """Cells held by running requests (prompt + generated so far) over the whole KV
    cache. llama.cpp's /metrics has no cache gauge in this build; /slots has the counts."""
    try:
        response = await http.get("/slots", timeout=5.0)
        slots = response.json()
    except (httpx.HTTPError, ValueError):
        return None
    if response.status_code != 200 or not isinstance(slots, list):
        return None
    total = sum(int(slot.get("n_ctx", 0)) for slot in slots)
    used = 0
    for slot in slots:
        if slot.get("is_processing"):
            decoded = sum(int(t.get("n_decoded", 0)) for t in slot.get("next_token", []))
            used += int(slot.get("n_prompt_tokens", 0)) + decoded
    return min(1.0, used / total) if total else None
