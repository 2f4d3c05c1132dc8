"""Supervision of an engine server process (vLLM's `vllm serve`, or anything like it).

`Supervisor` starts a command in its own process group, sends its output to nimble's log
(keeping the last lines for error messages), polls a health probe until the server
answers, and watches the process afterwards. When it dies, the policy decides: restart it
with exponential backoff (within a budget of restarts per window), or give up and call
`on_fatal`. `stop()` ends the whole process group (SIGTERM, then SIGKILL), so worker
processes the server spawned (tensor-parallel ranks, an engine core) do not outlive it.

It knows nothing about HTTP: the engine hands it the command, the probe and a hook that
runs once the server is up (`on_up`, e.g. read the version), each time it (re)starts.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
import shutil
import signal
import time
from collections import deque
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum

from nimble.errors import ModelLoadError

POLL_INTERVAL = 0.25  # seconds between health probes while the server starts
PROGRESS_EVERY = 10.0  # seconds between "still loading" lines
STOP_GRACE = 15.0  # seconds between SIGTERM and SIGKILL
_LINE_LIMIT = 1 << 20  # longest output line read whole (longer ones are cut)
# the last line of a Python traceback, wherever the server's log prefix ends: "(EngineCore
# pid=9) ERROR 12-04 18:19:41 [core.py:1330] ModuleNotFoundError: No module named 'x'"
_ERROR_LINE = re.compile(r"(?:^|[\s\]])((?:[A-Za-z_]\w*\.)*[A-Z]\w*(?:Error|Exception): .+)")
_NOTE_WIDTH = 160  # characters of an output line in a progress or error note


@dataclass(frozen=True)
class RestartPolicy:
    """What happens when the process dies after it was up."""

    restart: bool = True  # False: the first death is fatal
    max_restarts: int = 5  # within `window` seconds; one more is fatal
    window: float = 600.0
    first_delay: float = 1.0  # backoff: 1, 2, 4 ... up to max_delay seconds
    max_delay: float = 30.0


class State(StrEnum):
    IDLE = "idle"
    STARTING = "starting"
    UP = "up"
    RESTARTING = "restarting"
    FAILED = "failed"
    STOPPED = "stopped"


@dataclass(frozen=True)
class Launch:
    """One way to start the server: argv and extra environment, built fresh for each start
    (a restart may pick a new port)."""

    argv: Sequence[str]
    env: Mapping[str, str]


class Supervisor:
    """One supervised server process (restarted in place: `pid` changes)."""

    def __init__(
        self,
        name: str,
        subject: str,
        launch: Callable[[], Launch],
        probe: Callable[[], Awaitable[bool]],
        on_up: Callable[[], Awaitable[None]],
        *,
        log: logging.Logger,
        show_output: bool,
        start_timeout: float,
        policy: RestartPolicy,
        on_fatal: Callable[[str], None] | None,
        install_hint: str,
    ):
        self.name = name  # "vllm for <model id>"
        self._subject = subject  # what a load error names first: the model path
        self._launch_spec = launch
        self._probe = probe
        self._on_up = on_up
        self._log = log
        self._show = show_output
        self._start_timeout = start_timeout
        self._policy = policy
        self._on_fatal = on_fatal
        self._hint = install_hint
        self.state = State.IDLE
        self._proc: asyncio.subprocess.Process | None = None
        self._reader: asyncio.Task[None] | None = None
        self._pipe: asyncio.ReadTransport | None = None
        self._watcher: asyncio.Task[None] | None = None
        self._lines: deque[str] = deque(maxlen=50)
        # the first exception line since the launch (or since it came up): vLLM's servers
        # report the cause first and a generic "see root cause above" after many more lines
        self._first_error: str | None = None
        self._restarts: deque[float] = deque()

    @property
    def up(self) -> bool:
        proc = self._proc
        return self.state is State.UP and proc is not None and proc.returncode is None

    @property
    def pid(self) -> int | None:
        return None if self._proc is None else self._proc.pid

    def tail(self, lines: int = 15) -> str:
        """The process's last output lines, for error messages."""
        kept = list(self._lines)[-lines:]
        return "\n".join(kept) if kept else "(no output)"

    def _output_note(self) -> str:
        """For a message on a failure: the first error in the output, then its last lines."""
        first = f"; first error in its output: {self._first_error}" if self._first_error else ""
        return f"{first}; last output:\n{self.tail()}"

    async def start(self) -> None:
        """Start the process and wait until the probe passes. Raises ModelLoadError."""
        self.state = State.STARTING
        await self._start_once()
        self._watcher = asyncio.create_task(self._watch(), name=f"watch {self.name}")

    async def stop(self) -> None:
        """End the process group. Safe to call twice, and while (re)starting."""
        self.state = State.STOPPED
        if self._watcher is not None:
            self._watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watcher
            self._watcher = None
        await self._terminate()

    # one start

    async def _start_once(self) -> None:
        launch = self._launch_spec()
        executable = launch.argv[0]
        if shutil.which(executable) is None:
            raise ModelLoadError(f"{self._subject}: `{executable}` not found: {self._hint}")
        self._log.info("%s: starting %s", self.name, " ".join(launch.argv))
        # the output pipe is ours, not asyncio's: workers the server forks inherit it, and
        # asyncio's wait() would not return before every holder closed it
        read_end, write_end = os.pipe()
        try:
            proc = await asyncio.create_subprocess_exec(
                *launch.argv,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=write_end,
                stderr=asyncio.subprocess.STDOUT,
                env={**os.environ, **launch.env},
                start_new_session=True,  # its own process group, ended as a whole
            )
        except OSError as exc:
            os.close(read_end)
            raise ModelLoadError(f"{self._subject}: cannot run `{executable}`: {exc}") from exc
        finally:
            os.close(write_end)
        self._proc = proc
        self._lines.clear()
        self._first_error = None
        self._close_output()  # a dead predecessor's, if its reader is still open
        stream, self._pipe = await _reader_of(read_end)
        self._reader = asyncio.create_task(self._read(stream), name=f"output of {self.name}")
        try:
            await self._wait_up(proc)
            await self._on_up()
        except BaseException:
            await self._terminate()
            raise
        self.state = State.UP
        self._first_error = None  # a crash later names its own

    async def _wait_up(self, proc: asyncio.subprocess.Process) -> None:
        exited = asyncio.ensure_future(proc.wait())
        try:
            await self._poll(proc, exited)
        finally:
            exited.cancel()

    async def _poll(self, proc: asyncio.subprocess.Process, exited: asyncio.Future[int]) -> None:
        started = time.monotonic()
        next_note = started + PROGRESS_EVERY
        while True:
            if proc.returncode is not None:
                _kill_group(proc.pid)  # workers left behind hold the output pipe open
                await self._drain()
                raise ModelLoadError(
                    f"{self._subject}: {self.name} {exit_reason(proc.returncode)} while "
                    f"starting{self._output_note()}"
                )
            with contextlib.suppress(Exception):  # not listening yet, or not answering
                if await self._probe():
                    return
            now = time.monotonic()
            if now - started > self._start_timeout:
                raise ModelLoadError(
                    f"{self._subject}: {self.name} not healthy after "
                    f"{self._start_timeout:.0f} s (engine_start_timeout){self._output_note()}"
                )
            if now >= next_note:  # with the server's own latest line: what it is doing
                # a progress bar redraws with \r: its latest state is after the last one
                shown = self._lines[-1].rsplit("\r", 1)[-1] if self._lines else ""
                latest = f": {shown[:_NOTE_WIDTH]}" if shown else ""
                self._log.info("%s: still loading (%.0f s)%s", self.name, now - started, latest)
                next_note = now + PROGRESS_EVERY
            await asyncio.wait({exited}, timeout=POLL_INTERVAL)  # a poll interval, or the exit

    async def _read(self, stream: asyncio.StreamReader) -> None:
        level = logging.INFO if self._show else logging.DEBUG
        while True:
            try:
                raw = await stream.readline()
            except ValueError:  # a line past _LINE_LIMIT: its start was dropped
                continue
            if not raw:
                return
            line = raw.decode(errors="replace").rstrip()
            self._lines.append(line)
            if self._first_error is None and (found := _ERROR_LINE.search(line)):
                self._first_error = found.group(1)[:_NOTE_WIDTH]
            self._log.log(level, "%s: %s", self.name, line)

    async def _drain(self) -> None:
        """Let the reader take the dead process's last lines (for the error message)."""
        if self._reader is not None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(self._reader), 1.0)

    # after the start

    async def _watch(self) -> None:
        try:
            await self._supervise()
        except Exception as exc:  # a bug here must not leave a dead engine looking alive
            self._log.exception("%s: supervision failed", self.name)
            self._fail(f"{self.name}: supervision failed: {exc!r}")

    async def _supervise(self) -> None:
        while True:
            proc = self._proc
            assert proc is not None
            code = await proc.wait()
            if self.state is State.STOPPED:
                return
            _kill_group(proc.pid)  # workers it left behind would hold the GPU
            await self._drain()
            message = f"{self.name} {exit_reason(code)}{self._output_note()}"
            while True:
                if not self._may_restart():
                    self._fail(message)
                    return
                self.state = State.RESTARTING
                delay = min(
                    self._policy.max_delay,
                    self._policy.first_delay * 2 ** (len(self._restarts) - 1),
                )
                self._log.error("%s; restart %d in %.0f s", message, len(self._restarts), delay)
                await asyncio.sleep(delay)  # backoff between restarts
                try:
                    await self._start_once()
                except Exception as exc:  # any failed restart counts as one
                    message = f"{self.name}: restart failed: {exc}"
                    continue
                self._log.info("%s: up again after a restart", self.name)
                break

    def _may_restart(self) -> bool:
        if not self._policy.restart:
            return False
        now = time.monotonic()
        while self._restarts and now - self._restarts[0] > self._policy.window:
            self._restarts.popleft()
        if len(self._restarts) >= self._policy.max_restarts:
            return False
        self._restarts.append(now)
        return True

    def _fail(self, message: str) -> None:
        self.state = State.FAILED
        why = (
            "restarts are off (engine_restart=fail)"
            if not self._policy.restart
            else f"{self._policy.max_restarts} restarts in {self._policy.window:.0f} s already"
        )
        self._log.error("%s; not restarting: %s", message, why)
        if self._on_fatal is not None:
            try:
                self._on_fatal(message)
            except Exception:
                self._log.exception("%s: on_fatal failed", self.name)

    async def _terminate(self) -> None:
        proc, self._proc = self._proc, None
        if proc is not None:
            if proc.returncode is None:
                _signal_group(proc.pid, signal.SIGTERM)
                try:
                    await asyncio.wait_for(proc.wait(), STOP_GRACE)
                except TimeoutError:
                    self._log.warning("%s: no exit %.0f s after SIGTERM", self.name, STOP_GRACE)
            _kill_group(proc.pid)
            await proc.wait()
        if self._reader is not None:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await asyncio.wait_for(self._reader, 5.0)
        self._close_output()

    def _close_output(self) -> None:
        if self._reader is not None:
            self._reader.cancel()
            self._reader = None
        if self._pipe is not None:
            self._pipe.close()
            self._pipe = None


async def _reader_of(fd: int) -> tuple[asyncio.StreamReader, asyncio.ReadTransport]:
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=_LINE_LIMIT, loop=loop)
    pipe = os.fdopen(fd, "rb", buffering=0)
    transport, _ = await loop.connect_read_pipe(
        lambda: asyncio.StreamReaderProtocol(reader, loop=loop), pipe
    )
    return reader, transport


def exit_reason(code: int) -> str:
    if code < 0:
        with contextlib.suppress(ValueError):
            return f"exited with code {code} (killed by {signal.Signals(-code).name})"
    return f"exited with code {code}"


def _signal_group(pgid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


def _kill_group(pgid: int) -> None:
    """SIGKILL what is left of a group whose leader has exited (or will not exit)."""
    _signal_group(pgid, signal.SIGKILL)
