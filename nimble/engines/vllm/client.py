"""nimble's HTTP client to its `vllm serve` child on 127.0.0.1: the connection pool, the port
and random API key of the current launch, and a refused connection or an error answer as
nimble's error (Unavailable, named by the supervisor's state, while the engine is down)."""

from __future__ import annotations

import secrets
import socket

import httpx
import orjson

from nimble.engines.openai_wire import Json
from nimble.engines.vllm.supervisor import State, Supervisor
from nimble.engines.vllm.wire import error_of
from nimble.errors import EngineError, InvalidRequest, Unavailable

POOL_IDLE = 5.0  # seconds nimble keeps an idle connection to vLLM (httpx's default)


class VllmClient:
    """HTTP to the vLLM server `process` runs, serving the model `model_id`."""

    def __init__(self, model_id: str, process: Supervisor):
        self._id = model_id
        self._process = process
        self.key = secrets.token_urlsafe(24)
        self.port = 0
        self.http: httpx.AsyncClient | None = None

    def open(self) -> None:
        # no proxies from the environment: every request goes to 127.0.0.1
        self.http = httpx.AsyncClient(
            timeout=httpx.Timeout(30.0, read=None),
            limits=httpx.Limits(
                max_connections=None, max_keepalive_connections=64, keepalive_expiry=POOL_IDLE
            ),
            trust_env=False,
        )

    async def close(self) -> None:
        if self.http is not None:
            await self.http.aclose()
            self.http = None

    def new_port(self) -> int:
        """A free loopback port for the next launch, which the requests go to from now on."""
        self.port = _free_port()
        return self.port

    def opened(self) -> httpx.AsyncClient:
        if self.http is None:
            raise Unavailable(f"model {self._id} is not loaded")
        return self.http

    def ready(self) -> httpx.AsyncClient:
        if not self._process.up:
            raise self.unavailable()
        return self.opened()

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.key}"}

    def unavailable(self) -> Unavailable:
        state = self._process.state
        if state in (State.RESTARTING, State.UP):  # UP: it died a moment ago
            return Unavailable(f"model {self._id}: the vllm engine is restarting")
        if state is State.FAILED:
            return Unavailable(f"model {self._id}: the vllm engine died (not restarted)")
        return Unavailable(f"model {self._id}: the vllm engine is not running")

    async def probe(self) -> bool:
        if self.http is None:
            return False
        try:
            response = await self.http.get(self.url("/health"), timeout=5.0)
        except httpx.HTTPError:
            return False
        return response.status_code == 200

    async def send(self, path: str, body: Json, ready: bool = True) -> tuple[int, object]:
        """One POST to vLLM: its status and decoded body (plain text, as vLLM's LoRA
        endpoints answer on success, comes as `{"message": ...}`). `ready`: refused while
        the engine is down; False while it starts (the adapters loaded again)."""
        client = self.ready() if ready else self.opened()
        try:
            response = await client.post(self.url(path), json=body, headers=self.auth())
        except httpx.ConnectError as exc:
            raise self.unavailable() from exc
        except httpx.HTTPError as exc:
            raise EngineError(f"vllm ({self._id}): {exc!r}") from exc
        return response.status_code, decoded(response.content)

    async def post(self, path: str, body: Json, param: str) -> Json:
        """A JSON answer from vLLM; its refusal as nimble's error, naming `param`."""
        status, payload = await self.send(path, body)
        if status != 200 or not isinstance(payload, dict):
            error = error_of(status, payload, param)
            if isinstance(error, InvalidRequest) and error.param is None:
                error.param = param  # the field nimble forwarded (vLLM's 400s name none)
            raise error
        return payload


def decoded(content: bytes) -> object:
    """vLLM's answer as JSON, or its text (cut) as `{"message": ...}`."""
    try:
        return orjson.loads(content)
    except orjson.JSONDecodeError:
        return {"message": content.decode(errors="replace")[:300]}


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])
