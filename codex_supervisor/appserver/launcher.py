"""Starting one ``codex app-server``: spawn, readiness, and its stderr.

:func:`launch_app_server` is :class:`~codex_supervisor.appserver.pool.AppServerPool`'s
default :class:`Launcher`: it starts ``codex app-server --listen
ws://127.0.0.1:0`` in a process group of its own, reads the port it
announces on stderr, polls ``GET /readyz`` until it answers, and keeps the
tail of its stderr (read in chunks, lines cut at a limit, so a chatty or
hostile server never wedges on a full pipe nor fills memory).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import signal
import subprocess
from collections import deque
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path
from typing import Protocol, final

import attrs
import httpx

from ..errors import SpawnError
from ..process import Child, StopPolicy, launch

__all__ = ["LaunchRequest", "Launched", "Launcher", "ServerProcess", "launch_app_server"]

log = logging.getLogger(__name__)

_LISTENING = re.compile(rb"listening on:\s*(ws://127\.0\.0\.1:\d+)")
_STDERR_TAIL = 64 * 1024
# stderr is read in chunks and split here: StreamReader.readline() raises
# past asyncio's 64 KiB limit, and a dead drain wedges the server on a full pipe.
_STDERR_CHUNK = 64 * 1024
_STDERR_LINE_LIMIT = 16 * 1024
_TRUNCATED = b" ...[truncated]\n"


class ServerProcess(Protocol):
    """What the pool needs of a running app-server (a :class:`~codex_supervisor.process.Child`)."""

    @property
    def pid(self) -> int: ...

    @property
    def running(self) -> bool: ...

    @property
    def returncode(self) -> int | None: ...

    async def wait_group(self) -> int: ...

    async def stop(
        self, policy: StopPolicy = ..., *, first_signal: signal.Signals = ...
    ) -> int: ...


@final
@attrs.frozen(kw_only=True)
class LaunchRequest:
    """One app-server to start: the full argv, environment and readiness deadline."""

    key: str
    argv: tuple[str, ...]
    env: Mapping[str, str] = attrs.field(repr=False)
    cwd: Path
    home: Path
    ready_timeout: float
    ready_interval: float


@final
@attrs.frozen(kw_only=True)
class Launched:
    """A started, ready app-server."""

    process: ServerProcess
    ws_url: str
    http_url: str
    stderr_tail: Callable[[], str] = attrs.field(default=lambda: "", repr=False)
    #: Tasks serving the process (its stderr reader); cancelled once it is stopped.
    background: tuple[asyncio.Task[None], ...] = attrs.field(default=(), repr=False)


class Launcher(Protocol):
    """Starts an app-server and returns once it is ready (or raises :class:`SpawnError`)."""

    def __call__(self, request: LaunchRequest) -> Awaitable[Launched]: ...


async def launch_app_server(request: LaunchRequest) -> Launched:
    """Start ``codex app-server --listen ws://127.0.0.1:0`` and wait until it is ready.

    The child leads its own process group; its port is read from its stderr
    ("listening on: ws://127.0.0.1:PORT"), then ``GET /readyz`` is polled
    until it answers 200. Everything must happen within
    ``request.ready_timeout``; otherwise the group is killed and
    :class:`SpawnError` raised with the exit code and stderr tail.

    Should the process that launched it die (SIGKILL, a crash), the server
    is killed at once (Linux): on SIGTERM it would finish its turns in
    flight, for nobody, in a workspace another replica may take over as
    soon as the dead one's lease expires.
    """
    child = await launch(
        request.argv,
        env=request.env,
        cwd=request.cwd,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        process_group=True,
        death_signal=signal.SIGKILL,
    )
    starting = _Starting(request, child)
    try:
        return await starting.wait_ready()
    except BaseException:
        await starting.kill()
        raise


class _LineSplitter:
    """Splits chunks of a stream into lines, holding at most ``limit`` bytes.

    A line longer than ``limit`` comes out once, cut to ``limit`` bytes and
    marked ``...[truncated]``; the rest of it is dropped until its newline.
    Never raises for any input.
    """

    def __init__(self, limit: int, on_truncated: Callable[[int], None]) -> None:
        self.limit = limit
        self.on_truncated = on_truncated
        self.buffer = bytearray()
        self.dropping: int | None = None  # bytes dropped of the over-long line so far

    def feed(self, chunk: bytes) -> list[bytes]:
        lines: list[bytes] = []
        start = 0
        while start < len(chunk):
            end = chunk.find(b"\n", start)
            piece = chunk[start:] if end < 0 else chunk[start : end + 1]
            start += len(piece)
            if self.dropping is not None:
                self.dropping += len(piece)
                if end >= 0:
                    self.on_truncated(self.dropping)
                    self.dropping = None
                continue
            self.buffer += piece
            if len(self.buffer) - (end >= 0) > self.limit:
                lines.append(bytes(self.buffer[: self.limit]) + _TRUNCATED)
                if end >= 0:
                    self.on_truncated(len(self.buffer))
                else:
                    self.dropping = len(self.buffer)
                self.buffer.clear()
            elif end >= 0:
                lines.append(bytes(self.buffer))
                self.buffer.clear()
        return lines

    def flush(self) -> list[bytes]:
        """What is left at EOF: an unterminated last line, if any."""
        if self.dropping is not None:
            self.on_truncated(self.dropping)
            self.dropping = None
        rest, self.buffer = bytes(self.buffer), bytearray()
        return [rest] if rest else []


class _Starting:
    """One app-server between launch and readiness."""

    def __init__(self, request: LaunchRequest, child: Child) -> None:
        self.request = request
        self.child = child
        self.tail: deque[bytes] = deque()
        self.size = 0
        self.eof = False
        self.drain: asyncio.Task[None] | None = None
        self.deadline = asyncio.get_running_loop().time() + request.ready_timeout
        self.lines = _LineSplitter(_STDERR_LINE_LIMIT, self.truncated)

    def truncated(self, size: int) -> None:
        log.warning(
            "app-server %r: a %d-byte stderr line, truncated to its first %d bytes",
            self.request.key,
            size,
            _STDERR_LINE_LIMIT,
        )

    async def read_lines(self) -> list[bytes]:
        """The next complete stderr lines (possibly none); ``[]`` with ``self.eof`` at EOF."""
        stderr = self.child.stderr
        assert stderr is not None
        chunk = await stderr.read(_STDERR_CHUNK)
        if not chunk:
            self.eof = True
            return self.lines.flush()
        return self.lines.feed(chunk)

    def tail_text(self) -> str:
        return b"".join(self.tail).decode("utf-8", "replace")[-_STDERR_TAIL:]

    def keep(self, line: bytes) -> None:
        self.tail.append(line)
        self.size += len(line)
        while self.size > _STDERR_TAIL and len(self.tail) > 1:
            self.size -= len(self.tail.popleft())

    async def kill(self) -> None:
        if self.child.running:
            await self.child.stop(
                StopPolicy(interrupt_grace=0.0, terminate_grace=0.0), first_signal=signal.SIGKILL
            )
        if self.drain is not None:
            self.drain.cancel()
            await asyncio.gather(self.drain, return_exceptions=True)

    async def failed(self, message: str) -> SpawnError:
        await self.kill()
        return SpawnError(self.request.key, message, self.child.returncode, self.tail_text())

    async def read_port(self) -> str:
        try:
            async with asyncio.timeout_at(self.deadline):
                while not self.eof:
                    lines = await self.read_lines()
                    for index, line in enumerate(lines):
                        self.keep(line)
                        found = _LISTENING.search(line)
                        if found:
                            for later in lines[index + 1 :]:
                                self.keep(later)
                            return found.group(1).decode()
                await self.child.wait()
        except TimeoutError:
            pass
        else:
            raise await self.failed("exited before it announced its port")
        raise await self.failed(f"did not announce its port within {self.request.ready_timeout:g}s")

    async def drain_rest(self) -> None:
        while not self.eof:
            for line in await self.read_lines():
                self.keep(line)

    async def poll_ready(self, http: httpx.AsyncClient, http_url: str) -> None:
        loop = asyncio.get_running_loop()
        while self.child.running:
            left = self.deadline - loop.time()
            if left <= 0:
                raise await self.failed(f"was not ready within {self.request.ready_timeout:g}s")
            with contextlib.suppress(httpx.HTTPError):
                response = await http.get(f"{http_url}/readyz", timeout=min(left, 2.0))
                if response.status_code == 200:
                    return
            await asyncio.sleep(min(self.request.ready_interval, left))
        raise await self.failed("exited before it was ready")

    async def wait_ready(self) -> Launched:
        ws_url = await self.read_port()
        self.drain = asyncio.create_task(
            self.drain_rest(), name=f"app-server-pool:stderr:{self.child.pid}"
        )
        http_url = "http://" + ws_url.removeprefix("ws://")
        async with httpx.AsyncClient(trust_env=False) as http:
            await self.poll_ready(http, http_url)
        return Launched(
            process=self.child,
            ws_url=ws_url,
            http_url=http_url,
            stderr_tail=self.tail_text,
            background=(self.drain,),
        )
