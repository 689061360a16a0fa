"""The app-server broker over the real `codex app-server` against the fake backend."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from codex_supervisor.appserver.broker import BUSY_ERROR_CODE, AppServerBroker
from codex_supervisor.testing import Behaviour, FakeCodexBackend, offline_flags

pytestmark = [pytest.mark.real_codex, pytest.mark.anyio]


class Conn:
    """A raw JSONL client of the broker's unix socket (no library client on purpose)."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.next_id = 0

    @classmethod
    async def open(cls, path: str) -> Conn:
        reader, writer = await asyncio.open_unix_connection(path, limit=64 * 1024 * 1024)
        return cls(reader, writer)

    async def recv(self, within: float = 60.0) -> dict[str, Any]:
        async with asyncio.timeout(within):
            line = await self.reader.readline()
        assert line, "unexpected EOF from the broker"
        message: dict[str, Any] = json.loads(line)
        return message

    async def request(self, method: str, params: Any = None) -> dict[str, Any]:
        """Send a request and return its response, skipping notifications."""
        self.next_id += 1
        rid = self.next_id
        line = json.dumps({"id": rid, "method": method, "params": params or {}})
        self.writer.write(line.encode() + b"\n")
        await self.writer.drain()
        while True:
            message = await self.recv()
            if message.get("id") == rid and "method" not in message:
                return message

    async def until(self, method: str, within: float = 60.0) -> dict[str, Any]:
        async with asyncio.timeout(within):
            while True:
                message = await self.recv()
                if message.get("method") == method:
                    return message

    async def expect_eof(self, within: float = 30.0) -> None:
        async with asyncio.timeout(within):
            while await self.reader.readline():
                pass
        self.close()

    def close(self) -> None:
        self.writer.close()


@pytest.fixture
def short_dir() -> Iterator[Path]:
    """A short folder for the unix socket (paths are limited to ~107 bytes)."""
    path = Path(tempfile.mkdtemp(prefix="brkr-", dir="/tmp"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def make_broker(
    codex_bin: Path, backend: FakeCodexBackend, world: Any, short_dir: Path
) -> Callable[[], AppServerBroker]:
    """Brokers over the real app-server, logged in to a fake-backend account."""
    backend.add_account("acct-broker")
    home = backend.write_codex_home(world.codex_home(), "acct-broker")

    def make() -> AppServerBroker:
        return AppServerBroker(
            codex=codex_bin,
            codex_home=home,
            socket_path=short_dir / "b.sock",
            environ=world.env(home, backend),
            args=offline_flags(),
            pid_file=short_dir / "b.pid",
        )

    return make


async def initialize(conn: Conn) -> dict[str, Any]:
    init = await conn.request("initialize", {"clientInfo": {"name": "t", "version": "0"}})
    conn.writer.write(b'{"method":"initialized"}\n')
    result: dict[str, Any] = init["result"]
    return result


async def start_turn(conn: Conn, work: Path, text: str) -> tuple[str, str]:
    thread = await conn.request("thread/start", {"cwd": str(work)})
    thread_id = thread["result"]["thread"]["id"]
    started = await conn.request(
        "turn/start", {"threadId": thread_id, "input": [{"type": "text", "text": text}]}
    )
    return thread_id, started["result"]["turn"]["id"]


async def test_turn_completes_through_the_broker(
    make_broker: Callable[[], AppServerBroker], world: Any
) -> None:
    """A client does thread/start + turn/start through the broker and gets turn/completed."""
    broker = make_broker()
    task = asyncio.create_task(broker.serve())
    assert await broker.wait_ready()
    conn = await Conn.open(broker.socket_path)
    result = await initialize(conn)
    assert "userAgent" in result
    _thread, turn_id = await start_turn(conn, world.work, "say hi")
    completed = await conn.until("turn/completed")
    assert completed["params"]["turn"]["id"] == turn_id
    assert completed["params"]["turn"]["status"] == "completed"
    conn.close()
    broker.request_shutdown("test")
    async with asyncio.timeout(30):
        assert await task == 0


async def test_busy_during_stalled_turn_then_upstream_killed(
    make_broker: Callable[[], AppServerBroker],
    backend: FakeCodexBackend,
    world: Any,
    short_dir: Path,
) -> None:
    """Busy-rejected during a stalled turn; SIGKILL of the upstream group: EOF and exit 1."""
    backend.script(Behaviour.stall())
    broker = make_broker()
    task = asyncio.create_task(broker.serve())
    assert await broker.wait_ready()
    a, b = await Conn.open(broker.socket_path), await Conn.open(broker.socket_path)
    await initialize(a)
    await initialize(b)
    await start_turn(a, world.work, "stall please")
    await a.until("turn/started")
    busy = await b.request("thread/start", {"cwd": str(world.work)})
    assert busy["error"]["code"] == BUSY_ERROR_CODE

    upstream = broker.upstream_pid
    assert upstream is not None
    os.killpg(upstream, signal.SIGKILL)
    await a.expect_eof()
    await b.expect_eof()
    async with asyncio.timeout(30):
        assert await task == 1
    assert not (short_dir / "b.sock").exists()
    assert not (short_dir / "b.pid").exists()
    backend.release_stalls()


async def test_fresh_broker_shuts_down_on_request(
    make_broker: Callable[[], AppServerBroker], short_dir: Path
) -> None:
    """broker/shutdown on a real upstream exits 0 and stops the app-server."""
    broker = make_broker()
    task = asyncio.create_task(broker.serve())
    assert await broker.wait_ready()
    conn = await Conn.open(broker.socket_path)
    await initialize(conn)
    ping = (await conn.request("broker/ping"))["result"]
    assert ping["upstreamPid"] == broker.upstream_pid
    assert (await conn.request("broker/shutdown"))["result"] == {}
    await conn.expect_eof()
    async with asyncio.timeout(30):
        assert await task == 0
    with pytest.raises(ProcessLookupError):
        os.kill(ping["upstreamPid"], 0)
    assert not (short_dir / "b.sock").exists()
