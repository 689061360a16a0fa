"""Tests for codex_supervisor.appserver.broker against a tiny fake app-server."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from codex_supervisor import errors
from codex_supervisor.appserver import BrokerAlreadyRunning as ReExported
from codex_supervisor.appserver.broker import (
    BUSY_ERROR_CODE,
    AppServerBroker,
    BrokerAlreadyRunning,
)

pytestmark = pytest.mark.anyio

# A fake `codex app-server`: JSONL on stdio, no "jsonrpc" field. Turn input
# text picks the behaviour: "hold" runs until turn/interrupt, "delay:S"
# completes after S seconds, "die" exits mid-turn, "approval" asks the client
# for an approval first. Every line it receives is appended to $FAKE_LOG.
FAKE_APP_SERVER = r"""
import json, os, sys, threading

log = open(os.environ["FAKE_LOG"], "a", buffering=1)
lock = threading.Lock()
events = {}
counter = [0]


def send(message):
    with lock:
        sys.stdout.write(json.dumps(message) + "\n")
        sys.stdout.flush()


def run_turn(thread_id, turn_id, text, stop):
    base = {"threadId": thread_id}
    turn = {"id": turn_id, "status": "inProgress"}
    send({"method": "turn/started", "params": {**base, "turn": turn}})
    send({"method": "item/agentMessage/delta",
          "params": {**base, "turnId": turn_id, "delta": "hi"}})
    status = "completed"
    if text == "hold":
        stop.wait()
        status = "interrupted"
    elif text.startswith("delay:"):
        if stop.wait(float(text[6:])):
            status = "interrupted"
    elif text == "die":
        os._exit(3)
    elif text == "approval":
        events["srv-1"] = threading.Event()
        send({"id": "srv-1", "method": "item/commandExecution/requestApproval",
              "params": {**base, "turnId": turn_id}})
        events["srv-1"].wait()
    turn = {"id": turn_id, "status": status}
    send({"method": "turn/completed", "params": {**base, "turn": turn}})


for line in sys.stdin:
    log.write(line)
    message = json.loads(line)
    method = message.get("method")
    rid = message.get("id")
    params = message.get("params") or {}
    if method is None:
        events[rid].set()
    elif method == "initialize":
        send({"id": rid, "result": {"userAgent": "fake-app-server/1", "codexHome": "/x",
                                    "platformFamily": "unix", "platformOs": "linux"}})
    elif method == "initialized":
        pass
    elif method == "thread/start":
        counter[0] += 1
        send({"id": rid, "result": {"thread": {"id": f"thr-{counter[0]}"}}})
    elif method == "turn/start":
        counter[0] += 1
        turn_id = f"turn-{counter[0]}"
        stop = events[turn_id] = threading.Event()
        send({"id": rid, "result": {"turn": {"id": turn_id, "status": "inProgress"}}})
        text = params["input"][0]["text"]
        threading.Thread(target=run_turn, args=(params["threadId"], turn_id, text, stop),
                         daemon=True).start()
    elif method == "turn/interrupt":
        send({"id": rid, "result": {}})
        events[params["turnId"]].set()
    elif method == "fake/echo":
        send({"id": rid, "result": {"params": params}})
    elif method == "fake/deep":
        with lock:  # a line json.loads cannot decode (RecursionError), then the answer
            sys.stdout.write("[" * 100000 + "]" * 100000 + "\n")
            sys.stdout.flush()
        send({"id": rid, "result": {"after": "deep"}})
    elif method == "fake/broadcast":
        send({"id": rid, "result": {}})
        send({"method": "account/rateLimits/updated", "params": {"rateLimits": {}}})
    else:
        send({"id": rid, "error": {"code": -32601, "message": f"unknown method {method}"}})
"""


class Conn:
    """A raw JSONL client of the broker's unix socket."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.notifications: list[dict[str, Any]] = []

    @classmethod
    async def open(cls, path: str) -> Conn:
        reader, writer = await asyncio.open_unix_connection(path)
        return cls(reader, writer)

    async def send(self, message: dict[str, Any]) -> None:
        self.writer.write(json.dumps(message).encode() + b"\n")
        await self.writer.drain()

    async def recv(self, within: float = 10.0) -> dict[str, Any]:
        async with asyncio.timeout(within):
            line = await self.reader.readline()
        assert line, "unexpected EOF from the broker"
        message: dict[str, Any] = json.loads(line)
        return message

    async def request(self, method: str, params: Any = None, rid: Any = 1) -> dict[str, Any]:
        """Send a request; the very next message must be its response."""
        await self.send({"id": rid, "method": method, "params": params or {}})
        response = await self.recv()
        assert response.get("id") == rid, response
        assert "method" not in response, response
        return response

    async def until(self, method: str) -> dict[str, Any]:
        """Read until a notification named ``method``; keep what came before."""
        while True:
            message = await self.recv()
            if message.get("method") == method:
                return message
            self.notifications.append(message)

    async def expect_eof(self, within: float = 10.0) -> None:
        async with asyncio.timeout(within):
            while await self.reader.readline():
                pass
        self.close()

    def close(self) -> None:
        self.writer.close()


@pytest.fixture
def short_dir() -> Iterator[Path]:
    """A short folder for unix sockets (paths are limited to ~107 bytes)."""
    path = Path(tempfile.mkdtemp(prefix="brk-", dir="/tmp"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def fake_codex(tmp_path: Path) -> Path:
    """The fake app-server as an executable standing in for the Codex binary."""
    path = tmp_path / "fake-codex"
    path.write_text(f"#!{sys.executable}\n{FAKE_APP_SERVER}")
    path.chmod(0o755)
    return path


@pytest.fixture
def fake_log(tmp_path: Path) -> Path:
    """Where the fake app-server records every line it receives."""
    return tmp_path / "upstream.log"


def upstream_lines(log: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in log.read_text().splitlines()]


@pytest.fixture
def make_broker(
    fake_codex: Path, fake_log: Path, tmp_path: Path, short_dir: Path
) -> Callable[..., AppServerBroker]:
    """Build a broker over the fake app-server, socket and pid file in short_dir."""

    def make(**overrides: Any) -> AppServerBroker:
        kwargs: dict[str, Any] = {
            "codex": fake_codex,
            "codex_home": tmp_path / "codex-home",
            "socket_path": short_dir / "b.sock",
            "environ": {"PATH": os.environ.get("PATH", "/bin"), "FAKE_LOG": str(fake_log)},
            "pid_file": short_dir / "b.pid",
        }
        kwargs.update(overrides)
        return AppServerBroker(**kwargs)

    return make


@pytest.fixture
async def running(
    make_broker: Callable[..., AppServerBroker],
) -> AsyncIterator[tuple[AppServerBroker, asyncio.Task[int]]]:
    """A served broker (ready for clients); shut down after the test if still up."""
    broker = make_broker()
    task = asyncio.create_task(broker.serve())
    assert await broker.wait_ready()
    yield broker, task
    broker.request_shutdown("test teardown")
    async with asyncio.timeout(15):
        await asyncio.gather(task, return_exceptions=True)


def turn_params(thread_id: str, text: str) -> dict[str, Any]:
    return {"threadId": thread_id, "input": [{"type": "text", "text": text}]}


async def start_turn(conn: Conn, text: str) -> tuple[str, str]:
    thread = await conn.request("thread/start", rid=1)
    thread_id = thread["result"]["thread"]["id"]
    started = await conn.request("turn/start", turn_params(thread_id, text), rid=2)
    assert started["result"]["turn"]["status"] == "inProgress"
    return thread_id, started["result"]["turn"]["id"]


async def test_initialize_is_synthesized_and_ids_remapped(
    running: tuple[AppServerBroker, asyncio.Task[int]], fake_log: Path
) -> None:
    """Clients get the upstream's initialize result; one handshake upstream; ids never collide."""
    broker, _task = running
    a, b = await Conn.open(broker.socket_path), await Conn.open(broker.socket_path)
    for conn in (a, b):
        init = await conn.request("initialize", {"clientInfo": {"name": "t"}}, rid=1)
        assert init["result"]["userAgent"] == "fake-app-server/1"
        await conn.send({"method": "initialized"})
    first = await a.request("fake/echo", {"who": "a"}, rid=7)
    second = await b.request("fake/echo", {"who": "b"}, rid=7)
    assert first["result"]["params"] == {"who": "a"}
    assert second["result"]["params"] == {"who": "b"}
    sent = upstream_lines(fake_log)
    assert [m.get("method") for m in sent].count("initialize") == 1
    assert [m.get("method") for m in sent].count("initialized") == 1
    echo_ids = [m["id"] for m in sent if m.get("method") == "fake/echo"]
    assert len(set(echo_ids)) == 2
    a.close()
    b.close()


async def test_second_client_busy_during_turn_and_interrupt_forwarded(
    running: tuple[AppServerBroker, asyncio.Task[int]], fake_log: Path
) -> None:
    """While A's turn runs B gets -32001, but B's turn/interrupt is forwarded and ends A's turn."""
    broker, _task = running
    a, b = await Conn.open(broker.socket_path), await Conn.open(broker.socket_path)
    thread_id, turn_id = await start_turn(a, "hold")
    await a.until("turn/started")

    busy = await b.request("thread/start", rid=1)
    assert busy["error"]["code"] == BUSY_ERROR_CODE
    assert busy["error"]["message"].startswith("broker busy")

    answer = await b.request("turn/interrupt", {"threadId": thread_id, "turnId": turn_id}, rid=9)
    assert answer["result"] == {}
    completed = await a.until("turn/completed")
    assert completed["params"]["turn"] == {"id": turn_id, "status": "interrupted"}
    # The stream is free again; B's first message is its own response (it saw
    # none of A's notifications).
    ok = await b.request("thread/start", rid=2)
    assert ok["result"]["thread"]["id"].startswith("thr-")
    assert any(m.get("method") == "turn/interrupt" for m in upstream_lines(fake_log))
    a.close()
    b.close()


async def test_delayed_turn_completes_for_its_owner(
    running: tuple[AppServerBroker, asyncio.Task[int]],
) -> None:
    """A turn's notifications and turn/completed reach the owner; then the stream is released."""
    broker, _task = running
    a, b = await Conn.open(broker.socket_path), await Conn.open(broker.socket_path)
    _thread, turn_id = await start_turn(a, "delay:0.3")
    busy = await b.request("fake/echo", rid=3)
    assert busy["error"]["code"] == BUSY_ERROR_CODE
    completed = await a.until("turn/completed")
    assert completed["params"]["turn"] == {"id": turn_id, "status": "completed"}
    assert [m["method"] for m in a.notifications] == ["turn/started", "item/agentMessage/delta"]
    assert "result" in await b.request("fake/echo", rid=4)
    a.close()
    b.close()


async def test_server_request_goes_to_owner(
    running: tuple[AppServerBroker, asyncio.Task[int]], fake_log: Path
) -> None:
    """An upstream approval request reaches the owner and its answer reaches the upstream."""
    broker, _task = running
    a = await Conn.open(broker.socket_path)
    await start_turn(a, "approval")
    ask = await a.until("item/commandExecution/requestApproval")
    assert ask["id"] == "srv-1"
    await a.send({"id": "srv-1", "result": {"decision": "accept"}})
    completed = await a.until("turn/completed")
    assert completed["params"]["turn"]["status"] == "completed"
    assert {"id": "srv-1", "result": {"decision": "accept"}} in upstream_lines(fake_log)
    a.close()


async def test_notifications_without_owner_are_broadcast(
    running: tuple[AppServerBroker, asyncio.Task[int]],
) -> None:
    """A notification that arrives while nobody owns the stream reaches every client."""
    broker, _task = running
    a, b = await Conn.open(broker.socket_path), await Conn.open(broker.socket_path)
    await a.request("broker/ping")  # both registered before the broadcast
    assert (await b.request("broker/ping"))["result"]["clients"] == 2
    await a.request("fake/broadcast", rid=5)
    assert (await a.recv())["method"] == "account/rateLimits/updated"
    assert (await b.recv())["method"] == "account/rateLimits/updated"
    a.close()
    b.close()


async def test_owner_disconnect_interrupts_its_turn(
    running: tuple[AppServerBroker, asyncio.Task[int]], fake_log: Path
) -> None:
    """An owner that hangs up mid-turn gets its turn interrupted and frees the stream."""
    broker, _task = running
    a, b = await Conn.open(broker.socket_path), await Conn.open(broker.socket_path)
    _thread, turn_id = await start_turn(a, "hold")
    a.close()
    async with asyncio.timeout(10):
        while True:
            response = await b.request("fake/echo", rid=1)
            if "result" in response:
                break
            await asyncio.sleep(0.02)
    interrupts = [m for m in upstream_lines(fake_log) if m.get("method") == "turn/interrupt"]
    assert interrupts[0]["params"]["turnId"] == turn_id
    b.close()


async def test_ping_reports_pids_and_clients(
    running: tuple[AppServerBroker, asyncio.Task[int]],
) -> None:
    """broker/ping answers with the broker pid, the upstream pid and the client count."""
    broker, _task = running
    a = await Conn.open(broker.socket_path)
    result = (await a.request("broker/ping", rid="p"))["result"]
    assert result == {"pid": os.getpid(), "upstreamPid": broker.upstream_pid, "clients": 1}
    a.close()


async def test_upstream_death_closes_clients_and_returns_1(
    make_broker: Callable[..., AppServerBroker], short_dir: Path
) -> None:
    """When the upstream dies mid-turn every client sees EOF and serve() returns 1."""
    broker = make_broker()
    task = asyncio.create_task(broker.serve())
    assert await broker.wait_ready()
    a, b = await Conn.open(broker.socket_path), await Conn.open(broker.socket_path)
    await b.request("broker/ping")
    await start_turn(a, "die")
    await a.expect_eof()
    await b.expect_eof()
    async with asyncio.timeout(15):
        assert await task == 1
    assert not (short_dir / "b.sock").exists()
    assert not (short_dir / "b.pid").exists()


async def test_broker_shutdown_exits_0_without_reentry(
    running: tuple[AppServerBroker, asyncio.Task[int]], caplog: pytest.LogCaptureFixture
) -> None:
    """broker/shutdown answers {}, exits 0, and the upstream watcher sees the shutting_down flag."""
    broker, task = running
    caplog.set_level(logging.DEBUG, logger="codex_supervisor.appserver.broker")
    a, b = await Conn.open(broker.socket_path), await Conn.open(broker.socket_path)
    await b.request("broker/ping")
    await start_turn(a, "hold")  # an upstream busy mid-turn must not matter
    await a.until("turn/started")
    answer = await b.request("broker/shutdown", rid=42)
    assert answer["result"] == {}
    await a.expect_eof()
    await b.expect_eof()
    async with asyncio.timeout(15):
        assert await task == 0
    messages = [r.getMessage() for r in caplog.records]
    assert sum(m.startswith("broker.shutdown ") for m in messages) == 1
    assert any(m.startswith("broker.upstream_exit_expected") for m in messages)
    assert not any("upstream app-server died" in m for m in messages)
    assert not any(r.levelno >= logging.WARNING for r in caplog.records)


async def test_upstream_exit_during_shutdown_is_expected(
    make_broker: Callable[..., AppServerBroker],
) -> None:
    """The watcher ignores an upstream exit once shutting_down is set; without it, status 1."""
    ignored = make_broker()
    ignored.request_shutdown("test")
    assert ignored.shutting_down
    ignored._upstream_gone("exit 0")
    assert ignored._status == 0

    crashed = make_broker()
    crashed._upstream_gone("exit 3")
    assert crashed._status == 1
    crashed.request_shutdown("later")  # a later shutdown does not turn a crash into 0
    assert crashed._status == 1


async def test_idle_timeout_exits_0(
    make_broker: Callable[..., AppServerBroker], short_dir: Path
) -> None:
    """With no client for idle_timeout seconds the broker exits 0; a client keeps it up."""
    broker = make_broker(idle_timeout=0.4)
    task = asyncio.create_task(broker.serve())
    assert await broker.wait_ready()
    a = await Conn.open(broker.socket_path)
    await a.request("broker/ping")
    await asyncio.sleep(0.8)  # longer than the idle timeout, with a client
    assert not task.done()
    a.close()
    async with asyncio.timeout(10):
        assert await task == 0
    assert not (short_dir / "b.sock").exists()
    assert not (short_dir / "b.pid").exists()


async def test_stale_socket_file_is_replaced(
    make_broker: Callable[..., AppServerBroker], short_dir: Path
) -> None:
    """A socket file nobody listens on is removed and the broker starts."""
    path = short_dir / "b.sock"
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(str(path))
    stale.close()  # leaves the file behind, like a killed broker
    assert path.exists()
    broker = make_broker()
    task = asyncio.create_task(broker.serve())
    assert await broker.wait_ready()
    conn = await Conn.open(str(path))
    assert (await conn.request("broker/ping"))["result"]["pid"] == os.getpid()
    conn.close()
    broker.request_shutdown("test")
    async with asyncio.timeout(15):
        assert await task == 0
    assert not path.exists()


def test_broker_already_running_is_one_class_in_the_error_tree() -> None:
    """BrokerAlreadyRunning is errors.BrokerAlreadyRunning, wherever it is imported from."""
    assert BrokerAlreadyRunning is errors.BrokerAlreadyRunning is ReExported


async def test_live_broker_on_the_path_is_refused(
    running: tuple[AppServerBroker, asyncio.Task[int]],
    make_broker: Callable[..., AppServerBroker],
    short_dir: Path,
) -> None:
    """A second broker on a live broker's socket refuses to start and spawns nothing."""
    first, _task = running
    second = make_broker(pid_file=short_dir / "second.pid")
    with pytest.raises(errors.AppServerError) as info:
        await second.serve()
    assert isinstance(info.value, BrokerAlreadyRunning)
    assert isinstance(info.value, FileExistsError)
    assert info.value.socket_path == str(first.socket_path)
    assert second.upstream_pid is None
    conn = await Conn.open(first.socket_path)
    assert (await conn.request("broker/ping"))["result"]["upstreamPid"] == first.upstream_pid
    assert (short_dir / "b.pid").exists()
    conn.close()


async def test_sigterm_to_broker_process_exits_0_and_cleans_up(
    fake_codex: Path, fake_log: Path, tmp_path: Path, short_dir: Path
) -> None:
    """SIGTERM to `python -m ...broker` exits 0 and removes the pid and socket files."""
    sock, pid_file = short_dir / "b.sock", short_dir / "b.pid"
    env = {**os.environ, "FAKE_LOG": str(fake_log)}
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "codex_supervisor.appserver.broker",
            "--codex",
            str(fake_codex),
            "--codex-home",
            str(tmp_path / "home"),
            "--socket",
            str(sock),
            "--pid-file",
            str(pid_file),
            "--idle-timeout",
            "60",
            "--",
            "--extra-arg",
        ],
        env=env,
        stderr=subprocess.PIPE,
    )
    try:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 20
        while not pid_file.exists():
            assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
            assert loop.time() < deadline, "broker never wrote its pid file"
            await asyncio.sleep(0.02)
        assert int(pid_file.read_text()) == proc.pid
        conn = await Conn.open(str(sock))
        ping = (await conn.request("broker/ping"))["result"]
        assert ping["pid"] == proc.pid
        proc.send_signal(signal.SIGTERM)
        await conn.expect_eof()
        code = await asyncio.wait_for(asyncio.to_thread(proc.wait), 20)
        assert code == 0, proc.stderr.read() if proc.stderr else ""
        assert not sock.exists()
        assert not pid_file.exists()
        with pytest.raises(ProcessLookupError):
            os.kill(ping["upstreamPid"], 0)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        if proc.stderr:
            proc.stderr.close()


def test_cli_refuses_live_socket(fake_codex: Path, tmp_path: Path, short_dir: Path) -> None:
    """The entry point exits 2 when a live listener holds the socket path."""
    sock = short_dir / "live.sock"
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(sock))
    listener.listen()
    try:
        result = subprocess.run(
            [
                sys.executable,
                "-m",
                "codex_supervisor.appserver.broker",
                "--codex",
                str(fake_codex),
                "--codex-home",
                str(tmp_path / "home"),
                "--socket",
                str(sock),
            ],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
    finally:
        listener.close()
    assert result.returncode == 2, result.stderr
    assert "live broker" in result.stderr
    assert sock.exists()  # not ours to remove


async def test_upstream_dying_before_handshake_returns_1(
    make_broker: Callable[..., AppServerBroker], tmp_path: Path, short_dir: Path
) -> None:
    """An upstream that exits before answering initialize ends serve() with 1 and no files left."""
    dead = tmp_path / "dead-codex"
    dead.write_text("#!/bin/sh\nexit 3\n")
    dead.chmod(0o755)
    broker = make_broker(codex=dead)
    async with asyncio.timeout(15):
        assert await broker.serve() == 1
    assert not (short_dir / "b.sock").exists()
    assert not (short_dir / "b.pid").exists()


async def test_a_too_deeply_nested_upstream_line_is_skipped(
    running: tuple[AppServerBroker, asyncio.Task[int]], caplog: pytest.LogCaptureFixture
) -> None:
    """A line that makes json.loads raise RecursionError is skipped; the broker keeps serving."""
    broker, task = running
    a = await Conn.open(broker.socket_path)
    with caplog.at_level(logging.WARNING, logger="codex_supervisor.appserver.broker"):
        response = await a.request("fake/deep", rid=9)
    assert response["result"] == {"after": "deep"}
    assert "too deeply nested" in caplog.text
    assert (await a.request("fake/echo", {"still": "up"}, rid=10))["result"]
    assert not task.done()
    a.close()


async def test_a_dead_upstream_reader_counts_as_upstream_death(
    make_broker: Callable[..., AppServerBroker],
    short_dir: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """If the upstream reader task dies of any error, clients get EOF and serve() returns 1."""
    broker = make_broker()
    task = asyncio.create_task(broker.serve())
    assert await broker.wait_ready()
    a = await Conn.open(broker.socket_path)
    await a.request("broker/ping")

    async def broken(message: dict[str, Any]) -> None:
        raise RuntimeError("reader bug")

    broker._from_upstream = broken  # type: ignore[method-assign]
    await a.send({"id": 1, "method": "fake/echo", "params": {}})
    await a.expect_eof(within=5.0)
    async with asyncio.timeout(15):
        assert await task == 1
    assert "reader bug" in caplog.text
    assert not (short_dir / "b.sock").exists()


async def test_socket_is_private_whatever_the_umask(
    make_broker: Callable[..., AppServerBroker], short_dir: Path
) -> None:
    """The socket is created 0600 even under a permissive umask (002)."""
    broker = make_broker()
    old = os.umask(0o002)
    try:
        task = asyncio.create_task(broker.serve())
        assert await broker.wait_ready()
    finally:
        os.umask(old)
    try:
        mode = (short_dir / "b.sock").stat().st_mode & 0o777
        assert mode == 0o600, oct(mode)
    finally:
        broker.request_shutdown("test")
        async with asyncio.timeout(15):
            assert await task == 0


def test_peer_check_refuses_another_uid() -> None:
    """The peer-credential check accepts our own uid and refuses any other one, with a reason."""
    from codex_supervisor.appserver.broker import _peer_refusal

    left, right = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    with left, right:
        assert _peer_refusal(left, uid=os.getuid()) is None
        reason = _peer_refusal(left, uid=os.getuid() + 1)
        assert reason is not None
        assert str(os.getuid()) in reason
