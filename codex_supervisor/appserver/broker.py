"""A broker that shares one ``codex app-server`` between clients on a unix socket.

The broker owns exactly one upstream ``codex app-server`` (CODEX_FACTS.md §8)
and performs its ``initialize``/``initialized`` handshake once. Clients
connect to a unix socket and speak the same newline-delimited JSON protocol:

* a client's ``initialize`` is answered locally with the upstream's own
  ``initialize`` result, and its ``initialized`` notification is swallowed;
* request ids are remapped to broker-owned upstream ids, so two clients may
  both use ``id: 1`` without colliding;
* one client at a time *owns the stream*: from a request until its response
  and, for ``turn/start``, until ``turn/completed`` for that turn arrives (or
  the upstream dies). Requests from other clients meanwhile are answered with
  error ``-32001`` ("broker busy") — except ``turn/interrupt``, which is always
  forwarded, so anyone can stop a runaway turn;
* upstream notifications go to the owner; when nobody owns the stream (e.g.
  ``account/rateLimits/updated`` between turns, or stragglers after
  ``turn/completed``) they are broadcast to every client;
* server→client requests (approvals, ``item/tool/requestUserInput``, ...) go to
  the owner, keeping the upstream's id; with no owner they are declined with an
  error response, so the upstream never waits on nobody.

Two broker methods are answered by the broker itself: ``broker/ping`` →
``{"pid", "upstreamPid", "clients"}`` (a health check: a client must not reuse
a broker that does not answer it) and ``broker/shutdown`` → ``{}``, then an
intentional shutdown.

Exit status of :meth:`AppServerBroker.serve` — the defects of the broker in
LESSONS.md are the reason for each rule:

* the upstream is watched (stdout EOF *and* process exit). When it dies
  unexpectedly every client socket is closed, so clients see EOF instead of
  hanging on a ``turn/completed`` that never comes, and ``serve()`` returns 1
  so that whoever started the broker can start a fresh one;
* an intentional shutdown (``broker/shutdown``, SIGTERM/SIGINT via
  :meth:`AppServerBroker.request_shutdown`, or the idle timeout) sets a
  ``shutting_down`` flag *before* it stops the upstream; the upstream watcher
  checks that flag, so the exit the shutdown itself causes is expected — it
  neither re-enters the shutdown nor flips the status to 1. Teardown runs
  exactly once, in :meth:`~AppServerBroker.serve`'s ``finally``;
* with no client connected for ``idle_timeout`` seconds the broker exits 0, so
  forgotten brokers do not pile up;
* a reader of the upstream that dies of any error (not just EOF) counts as
  the upstream's death, as above; a line it cannot decode (bad JSON, or JSON
  nested too deeply for the decoder) is skipped and logged;
* the socket file is made 0600 whatever the umask before it accepts anyone,
  and a peer of another uid (``SO_PEERCRED``, Linux) is refused and logged;
* the pid file and the socket file are removed on every exit path. A socket
  path that a live broker answers on is refused; a stale socket file (nobody
  listening) is replaced.

Run it as ``python -m codex_supervisor.appserver.broker --codex BIN
--codex-home DIR --socket PATH [--idle-timeout S] [--pid-file F] [-- ARGS]``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import errno
import json
import logging
import os
import socket
import stat
import struct
import subprocess
import sys
from collections import deque
from collections.abc import AsyncIterator, Mapping, Sequence
from pathlib import Path
from typing import Any, Final, Protocol, final

import attrs

from .._fs import write_atomic
from ..config import child_environment
from ..errors import AppServerError, BrokerAlreadyRunning, ConfigError, TransportClosed
from ..process import Child, SignalWatcher, StopPolicy, launch

__all__ = ["BUSY_ERROR_CODE", "AppServerBroker", "BrokerAlreadyRunning", "main"]

_log = logging.getLogger(__name__)

#: JSON-RPC error code of the "broker busy" (and "declined") responses.
BUSY_ERROR_CODE: Final = -32001
_PARSE_ERROR: Final = -32700
_INVALID_REQUEST: Final = -32600

# app-server lines can be large (a resumed thread's history), far beyond
# asyncio's 64 KiB default line limit.
_LINE_LIMIT: Final = 64 * 1024 * 1024
_READ_CHUNK: Final = 256 * 1024
_HANDSHAKE_TIMEOUT: Final = 60.0
# After closing its stdin the app-server exits by itself; only then signals.
_STDIN_CLOSE_GRACE: Final = 2.0
_STOP_POLICY: Final = StopPolicy(interrupt_grace=2.0, terminate_grace=3.0)
_PROBE_TIMEOUT: Final = 2.0
_STDERR_TAIL_LINES: Final = 50
_ORPHAN_GRACE: Final = 10.0

_Message = dict[str, Any]


@attrs.define(eq=False)
class _Client:
    """One connected socket client."""

    number: int
    writer: asyncio.StreamWriter
    closed: bool = False

    async def send(self, message: _Message) -> None:
        if self.closed:
            return
        try:
            self.writer.write(_encode(message))
            await self.writer.drain()
        except (ConnectionError, RuntimeError) as exc:
            # A client that hung up just loses the message; its reader task
            # sees EOF and unregisters it.
            _log.debug("broker.client_write_failed client=%d: %s", self.number, exc)
            self.close()

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self.writer.close()


@attrs.define(eq=False)
class _Pending:
    """A request forwarded upstream, waiting for its response."""

    client: _Client | None  # None: the broker's own (e.g. an interrupt of a gone owner)
    client_id: Any
    method: str
    thread_id: str | None = None
    owning: bool = True  # False for turn/interrupt, which never takes the stream


def _encode(message: _Message) -> bytes:
    return json.dumps(message, separators=(",", ":")).encode() + b"\n"


def _error(request_id: Any, code: int, message: str) -> _Message:
    return {"id": request_id, "error": {"code": code, "message": message}}


@final
class AppServerBroker:
    """Shares one upstream ``codex app-server`` between unix-socket clients.

    ``codex`` is the Codex binary (run as ``codex app-server *args``) with the
    environment :func:`~codex_supervisor.config.child_environment` builds from
    ``codex_home`` and ``environ``. :meth:`serve` runs the broker until an
    intentional shutdown or idle exit (returns 0) or the upstream's unexpected
    death (returns 1). One instance serves once.
    """

    def __init__(
        self,
        *,
        codex: str | os.PathLike[str],
        codex_home: str | os.PathLike[str],
        socket_path: str | os.PathLike[str],
        environ: Mapping[str, str] | None = None,
        args: Sequence[str] = (),
        idle_timeout: float = 300.0,
        pid_file: str | os.PathLike[str] | None = None,
    ) -> None:
        if not idle_timeout > 0:
            raise ConfigError(
                f"idle_timeout must be a positive number of seconds: {idle_timeout!r}"
            )
        self._codex = os.fspath(codex)
        self._codex_home = Path(codex_home)
        self._socket_path = os.fspath(socket_path)
        self._environ = dict(environ) if environ is not None else None
        self._args = tuple(args)
        self._idle_timeout = float(idle_timeout)
        self._pid_file = Path(pid_file) if pid_file is not None else None

        self._child: Child | None = None
        self._init_result: _Message = {}
        self._clients: dict[int, _Client] = {}
        self._client_tasks: set[asyncio.Task[None]] = set()
        self._client_numbers = 0
        self._next_upstream_id = 1
        self._pending: dict[int, _Pending] = {}
        # upstream server-request id -> the client it was forwarded to
        self._server_requests: dict[Any, _Client] = {}
        self._owner: _Client | None = None
        # turn id -> (owner, thread id) for turns whose turn/completed is due
        self._turns: dict[str, tuple[_Client, str | None]] = {}
        # turn/completed seen before its turn/start response (defensive)
        self._completed_early: set[str] = set()
        self._write_lock = asyncio.Lock()
        self._stderr_tail: deque[str] = deque(maxlen=_STDERR_TAIL_LINES)

        self._started = False
        self._shutting_down = False
        self._status: int | None = None
        self._done = asyncio.Event()
        self._ready = asyncio.Event()
        self._clients_changed = asyncio.Event()
        self._socket_inode: tuple[int, int] | None = None

    # -- public ---------------------------------------------------------------

    @property
    def socket_path(self) -> str:
        """Where clients connect."""
        return self._socket_path

    @property
    def shutting_down(self) -> bool:
        """Whether the broker is on its way out (intentionally or not)."""
        return self._shutting_down

    @property
    def upstream_pid(self) -> int | None:
        """The upstream app-server's pid once launched."""
        return self._child.pid if self._child is not None else None

    async def wait_ready(self) -> bool:
        """Wait until clients are served (``True``) or the broker ended first."""
        ready = asyncio.ensure_future(self._ready.wait())
        done = asyncio.ensure_future(self._done.wait())
        try:
            await asyncio.wait({ready, done}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            ready.cancel()
            done.cancel()
        return self._ready.is_set() and not self._done.is_set()

    def request_shutdown(self, reason: str = "requested") -> None:
        """Ask for an intentional shutdown (exit status 0); idempotent.

        Safe from signal handlers (``loop.add_signal_handler``) and callbacks:
        it only sets the flag and wakes :meth:`serve`, which tears down once.
        """
        self._begin_shutdown(0, reason)

    async def serve(self) -> int:
        """Run the broker; return 0 on intentional/idle exit, 1 if the upstream died."""
        if self._started:
            raise AppServerError("an AppServerBroker serves only once")
        self._started = True
        await self._claim_socket_path()
        server: asyncio.Server | None = None
        tasks: list[asyncio.Task[None]] = []
        idle: asyncio.Task[None] | None = None
        try:
            server = await asyncio.start_unix_server(
                self._on_client, sock=self._bind_private(), limit=_LINE_LIMIT
            )
            self._socket_inode = _identity(self._socket_path)
            child = await launch(
                [self._codex, "app-server", *self._args],
                env=child_environment(self._codex_home, self._environ),
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                process_group=True,
            )
            self._child = child
            assert child.stdout is not None
            assert child.stderr is not None
            tasks.append(asyncio.create_task(self._drain_stderr(child.stderr)))
            lines = self._lines(child.stdout)
            try:
                async with asyncio.timeout(_HANDSHAKE_TIMEOUT):
                    await self._handshake(lines)
            except (TimeoutError, TransportClosed) as exc:
                _log.warning("broker.handshake_failed: %s", exc)
                self._begin_shutdown(1, "upstream handshake failed")
            else:
                tasks.append(asyncio.create_task(self._read_upstream(lines)))
                tasks.append(asyncio.create_task(self._watch_exit(child)))
                idle = asyncio.create_task(self._idle_watch())
                if self._pid_file is not None:
                    write_atomic(self._pid_file, f"{os.getpid()}\n".encode(), mode=0o644)
                self._ready.set()
                _log.info(
                    "broker.ready socket=%s pid=%d upstream=%d",
                    self._socket_path,
                    os.getpid(),
                    child.pid,
                )
            await self._done.wait()
        finally:
            # The one and only teardown: whatever ended the broker (shutdown,
            # upstream death, cancellation, an error) arrives here once.
            self._shutting_down = True
            if idle is not None:
                idle.cancel()
            try:
                await self._teardown(server, tasks)
            finally:
                self._remove_files()
        status = 1 if self._status is None else self._status
        _log.info("broker.exit status=%d", status)
        return status

    # -- lifecycle ------------------------------------------------------------

    def _begin_shutdown(self, status: int, reason: str) -> None:
        if self._shutting_down:
            _log.debug("broker.shutdown_repeat reason=%s", reason)
            return
        # Set before anything stops the upstream: the watcher reads it.
        self._shutting_down = True
        self._status = status
        log = _log.warning if status else _log.info
        log("broker.shutdown status=%d reason=%s", status, reason)
        self._done.set()

    def _upstream_gone(self, how: str) -> None:
        if self._shutting_down:
            # Our own teardown closed the upstream: expected, not a crash.
            _log.info("broker.upstream_exit_expected how=%s", how)
            return
        self._begin_shutdown(1, f"upstream app-server died ({how})")

    async def _teardown(
        self, server: asyncio.Server | None, tasks: list[asyncio.Task[None]]
    ) -> None:
        if server is not None:
            server.close()
        child = self._child
        if child is not None:
            code = await self._stop_upstream(child)
            _log.info("broker.upstream_stopped pid=%d returncode=%s", child.pid, code)
        # The reader and exit watcher end by themselves once the upstream is
        # gone (and report it as expected); the idle watcher is cancelled.
        for task in tasks:
            if not task.done():
                try:
                    async with asyncio.timeout(_STDIN_CLOSE_GRACE):
                        await asyncio.shield(task)
                except TimeoutError:
                    task.cancel()
                except Exception:  # noqa: BLE001 - a watcher's failure must not stop teardown
                    _log.exception("broker.task_failed")
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for client in list(self._clients.values()):
            client.close()
        # Closed sockets end the handlers with EOF; cancelling them instead
        # makes asyncio's stream callback log the CancelledError as an error.
        if self._client_tasks:
            _done, late = await asyncio.wait(set(self._client_tasks), timeout=_STDIN_CLOSE_GRACE)
            for task in late:
                task.cancel()
            await asyncio.gather(*late, return_exceptions=True)
        if server is not None:
            with contextlib.suppress(Exception):
                await server.wait_closed()

    async def _stop_upstream(self, child: Child) -> int:
        if child.stdin is not None and not child.stdin.is_closing():
            child.stdin.close()
        if child.running:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(_STDIN_CLOSE_GRACE):
                    await child.wait()
        # Also reaps what the app-server left in its process group.
        return await child.stop(_STOP_POLICY)

    async def _claim_socket_path(self) -> None:
        path = self._socket_path
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            return
        if not stat.S_ISSOCK(st.st_mode):
            raise ConfigError(f"{path} exists and is not a socket; refusing to replace it")
        try:
            async with asyncio.timeout(_PROBE_TIMEOUT):
                _reader, writer = await asyncio.open_unix_connection(path)
        except (ConnectionRefusedError, FileNotFoundError):
            _log.info("broker.stale_socket_removed path=%s", path)
            _unlink_quietly(path)
            return
        except TimeoutError:
            # Something accepts but is wedged: not ours to take over.
            raise BrokerAlreadyRunning(path) from None
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()
        raise BrokerAlreadyRunning(path)

    def _bind_private(self) -> socket.socket:
        """Bind the socket file 0600 (whatever the umask) before anyone can connect.

        The mode is set between bind() and listen(): until listen() every
        connection is refused, so no other user can slip in through a socket
        the umask left group- or world-writable.
        """
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            try:
                sock.bind(self._socket_path)
            except OSError as exc:
                if exc.errno == errno.EADDRINUSE:  # bound since _claim_socket_path looked
                    raise BrokerAlreadyRunning(self._socket_path) from None
                raise
            try:
                Path(self._socket_path).chmod(0o600)
            except BaseException:
                _unlink_quietly(self._socket_path)  # ours, just bound: leave no file
                raise
        except BaseException:
            sock.close()
            raise
        return sock

    def _remove_files(self) -> None:
        if self._pid_file is not None:
            with contextlib.suppress(FileNotFoundError):
                self._pid_file.unlink()
        if self._socket_inode is not None:
            try:
                st = os.lstat(self._socket_path)
            except FileNotFoundError:
                return
            # Only our own socket: a successor may already have bound the path.
            if (st.st_dev, st.st_ino) == self._socket_inode:
                Path(self._socket_path).unlink()

    # -- upstream -------------------------------------------------------------

    async def _lines(self, stream: asyncio.StreamReader) -> AsyncIterator[bytes]:
        # Own line splitting: launch() keeps asyncio's 64 KiB readline limit.
        buffer = b""
        while True:
            chunk = await stream.read(_READ_CHUNK)
            if not chunk:
                return
            buffer += chunk
            *complete, buffer = buffer.split(b"\n")
            for line in complete:
                if line.strip():
                    yield line
            if len(buffer) > _LINE_LIMIT:
                _log.warning("broker.upstream_line_too_long bytes=%d", len(buffer))
                buffer = b""

    async def _handshake(self, lines: AsyncIterator[bytes]) -> None:
        from .. import __version__  # noqa: PLC0415 - lazy, see codex_supervisor.__getattr__

        await self._send_upstream(
            {
                "id": 0,
                "method": "initialize",
                "params": {
                    "clientInfo": {
                        "name": "codex_supervisor_broker",
                        "title": "codex_supervisor app-server broker",
                        "version": str(__version__),
                    }
                },
            }
        )
        async for line in lines:
            message = _decode(line)
            if message is None or message.get("id") != 0 or "method" in message:
                continue
            if "error" in message:
                raise TransportClosed(f"upstream initialize failed: {message['error']!r}")
            result = message.get("result")
            self._init_result = result if isinstance(result, dict) else {}
            await self._send_upstream({"method": "initialized"})
            return
        raise TransportClosed("upstream app-server closed stdout during initialize")

    async def _send_upstream(self, message: _Message) -> None:
        child = self._child
        if child is None or child.stdin is None or child.stdin.is_closing():
            return
        async with self._write_lock:
            try:
                child.stdin.write(_encode(message))
                await child.stdin.drain()
            except (ConnectionError, RuntimeError) as exc:
                # The watchers report the death; nothing to do here.
                _log.debug("broker.upstream_write_failed: %s", exc)

    async def _drain_stderr(self, stream: asyncio.StreamReader) -> None:
        # Drained so a chatty app-server never blocks on a full pipe; a drain
        # that dies would wedge the upstream, so its death is the upstream's.
        try:
            while True:
                try:
                    line = await stream.readline()
                except ValueError:  # an over-long line: readline() dropped it; skip
                    _log.debug("broker.upstream_stderr_line_too_long")
                    continue
                if not line:
                    return
                text = line.decode(errors="replace").rstrip()
                self._stderr_tail.append(text)
                _log.debug("broker.upstream_stderr %s", text)
        except Exception as exc:  # noqa: BLE001 - any death of the drain is fatal
            _log.exception("broker.upstream_stderr_reader_failed")
            self._upstream_gone(f"stderr reader failed: {exc!r}")

    async def _read_upstream(self, lines: AsyncIterator[bytes]) -> None:
        # Any death of this reader is the upstream's death: nobody else would
        # deliver the turn/completed the clients wait for.
        how = "eof"
        try:
            async for line in lines:
                message = _decode(line)
                if message is None:
                    _log.debug("broker.upstream_garbage %r", line[:200])
                    continue
                await self._from_upstream(message)
        except Exception as exc:  # noqa: BLE001 - any death of the reader is fatal
            _log.exception("broker.upstream_reader_failed")
            how = f"reader failed: {exc!r}"
        self._upstream_gone(how)

    async def _watch_exit(self, child: Child) -> None:
        code = await child.wait()
        _log.debug("broker.upstream_exited returncode=%d", code)
        self._upstream_gone(f"exit {code}")

    async def _from_upstream(self, message: _Message) -> None:
        method = message.get("method")
        if "id" in message and method is None:
            await self._upstream_response(message)
        elif "id" in message:
            await self._upstream_request(message)
        elif isinstance(method, str):
            await self._upstream_notification(method, message)

    async def _upstream_response(self, message: _Message) -> None:
        pending = self._pending.pop(message["id"], None) if _hashable(message["id"]) else None
        if pending is None:
            _log.debug("broker.unknown_response id=%r", message.get("id"))
            return
        if pending.method == "turn/start" and pending.client is not None:
            turn = _dig(message, "result", "turn")
            turn_id = turn.get("id") if isinstance(turn, dict) else None
            if isinstance(turn_id, str) and turn.get("status") == "inProgress":
                if turn_id in self._completed_early:
                    self._completed_early.discard(turn_id)
                else:
                    self._turns[turn_id] = (pending.client, pending.thread_id)
        if pending.client is not None:
            await pending.client.send({**message, "id": pending.client_id})
        self._maybe_release()

    async def _upstream_request(self, message: _Message) -> None:
        owner = self._owner
        if owner is None or owner.closed:
            _log.info("broker.server_request_declined method=%s", message.get("method"))
            await self._send_upstream(
                _error(message["id"], BUSY_ERROR_CODE, "broker: no client owns the stream")
            )
            return
        if _hashable(message["id"]):
            self._server_requests[message["id"]] = owner
        await owner.send(message)

    async def _upstream_notification(self, method: str, message: _Message) -> None:
        owner = self._owner
        if owner is not None:
            await owner.send(message)  # dropped if the owner has left
        else:
            for client in list(self._clients.values()):
                await client.send(message)
        if method == "turn/completed":
            turn_id = _dig(message, "params", "turn", "id")
            if isinstance(turn_id, str):
                unknown = self._turns.pop(turn_id, None) is None
                if unknown and any(p.method == "turn/start" for p in self._pending.values()):
                    self._completed_early.add(turn_id)
                self._maybe_release()

    def _maybe_release(self) -> None:
        owner = self._owner
        if owner is None:
            return
        busy = any(p.client is owner and p.owning for p in self._pending.values()) or any(
            client is owner for client, _thread in self._turns.values()
        )
        if not busy:
            self._owner = None
            _log.debug("broker.stream_released client=%d", owner.number)

    # -- clients --------------------------------------------------------------

    async def _on_client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._client_tasks.add(task)
        self._client_numbers += 1
        client = _Client(self._client_numbers, writer)
        try:
            peer = writer.get_extra_info("socket")
            refusal = _peer_refusal(peer, uid=os.getuid()) if peer is not None else None
            if refusal is not None:
                _log.warning("broker.client_refused client=%d: %s", client.number, refusal)
                return
            if not await self.wait_ready() or self._shutting_down:
                return
            self._clients[client.number] = client
            self._clients_changed.set()
            _log.info(
                "broker.client_connected client=%d clients=%d", client.number, len(self._clients)
            )
            while not self._shutting_down:
                try:
                    line = await reader.readline()
                except (ValueError, ConnectionError):  # over-long line or reset
                    break
                if not line:
                    break
                if not line.strip():
                    continue
                message = _decode(line)
                if message is None:
                    await client.send(_error(None, _PARSE_ERROR, "parse error"))
                    continue
                await self._from_client(client, message)
        finally:
            self._client_tasks.discard(task)
            self._clients.pop(client.number, None)
            self._clients_changed.set()
            client.close()
            if not self._shutting_down:
                await self._client_left(client)
            _log.info(
                "broker.client_disconnected client=%d clients=%d", client.number, len(self._clients)
            )

    async def _client_left(self, client: _Client) -> None:
        # Server requests it was asked: decline, or the upstream waits forever.
        for request_id, target in list(self._server_requests.items()):
            if target is client:
                del self._server_requests[request_id]
                await self._send_upstream(
                    _error(request_id, BUSY_ERROR_CODE, "broker: the client disconnected")
                )
        # Its running turns would keep spending quota for nobody: interrupt.
        # The departed client stays the (closed, so silent) owner until their
        # turn/completed arrives, so the interrupted turn's last notifications
        # are dropped rather than broadcast into another client's stream.
        for turn_id, (owner, thread_id) in list(self._turns.items()):
            if owner is client and thread_id is not None:
                _log.info("broker.orphan_turn_interrupted turn=%s", turn_id)
                interrupt = {"threadId": thread_id, "turnId": turn_id}
                await self._forward(
                    None,
                    {"id": None, "method": "turn/interrupt", "params": interrupt},
                    owning=False,
                )
        self._maybe_release()
        if self._owner is client:
            asyncio.get_running_loop().call_later(_ORPHAN_GRACE, self._drop_ghost, client)

    def _drop_ghost(self, client: _Client) -> None:
        # Bounds the wait for an orphaned turn's turn/completed.
        if self._owner is client:
            _log.warning("broker.orphan_turn_unfinished client=%d", client.number)
            for turn_id, (owner, _thread) in list(self._turns.items()):
                if owner is client:
                    del self._turns[turn_id]
            for pending in self._pending.values():
                if pending.client is client:
                    pending.client = None
            self._owner = None

    async def _from_client(self, client: _Client, message: _Message) -> None:
        method = message.get("method")
        has_id = "id" in message
        if not has_id:
            if method == "initialized":
                return  # the broker did the handshake once, upstream
            if isinstance(method, str):
                await self._send_upstream(message)
            return
        request_id = message["id"]
        if method is None:
            # A response to a server request forwarded to this client.
            if _hashable(request_id) and self._server_requests.get(request_id) is client:
                del self._server_requests[request_id]
                await self._send_upstream(message)
            return
        if not isinstance(method, str):
            await client.send(_error(request_id, _INVALID_REQUEST, "invalid request"))
        else:
            await self._client_request(client, request_id, method, message)

    async def _client_request(
        self, client: _Client, request_id: Any, method: str, message: _Message
    ) -> None:
        if method == "initialize":
            await client.send({"id": request_id, "result": self._init_result})
        elif method == "broker/ping":
            await client.send(
                {
                    "id": request_id,
                    "result": {
                        "pid": os.getpid(),
                        "upstreamPid": self.upstream_pid,
                        "clients": len(self._clients),
                    },
                }
            )
        elif method == "broker/shutdown":
            await client.send({"id": request_id, "result": {}})
            self.request_shutdown(f"broker/shutdown from client {client.number}")
        elif method == "turn/interrupt":
            await self._forward(client, message, owning=False)
        elif self._owner is not None and self._owner is not client:
            await client.send(
                _error(
                    request_id,
                    BUSY_ERROR_CODE,
                    f"broker busy: another client owns the app-server stream ({method} refused)",
                )
            )
        else:
            if self._owner is None:
                _log.debug("broker.stream_taken client=%d method=%s", client.number, method)
            self._owner = client
            await self._forward(client, message, owning=True)

    async def _forward(self, client: _Client | None, message: _Message, *, owning: bool) -> None:
        upstream_id = self._next_upstream_id
        self._next_upstream_id += 1
        method = str(message.get("method"))
        thread_id = _dig(message, "params", "threadId")
        self._pending[upstream_id] = _Pending(
            client=client,
            client_id=message.get("id"),
            method=method,
            thread_id=thread_id if isinstance(thread_id, str) else None,
            owning=owning,
        )
        await self._send_upstream({**message, "id": upstream_id})

    async def _idle_watch(self) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._idle_timeout
        while True:
            self._clients_changed.clear()
            if self._clients:
                await self._clients_changed.wait()
                deadline = loop.time() + self._idle_timeout
                continue
            try:
                async with asyncio.timeout_at(deadline):
                    await self._clients_changed.wait()
            except TimeoutError:
                self.request_shutdown(f"idle for {self._idle_timeout:g}s with no client")
                return
            if not self._clients:
                # A client came and went: the idle period starts now.
                deadline = loop.time() + self._idle_timeout


def _identity(path: str) -> tuple[int, int]:
    st = Path(path).stat()
    return (st.st_dev, st.st_ino)


def _unlink_quietly(path: str) -> None:
    with contextlib.suppress(FileNotFoundError):
        Path(path).unlink()


class _SocketLike(Protocol):
    def getsockopt(self, level: int, option: int, buflen: int, /) -> bytes: ...


_PEERCRED: Final = struct.Struct("3i")  # struct ucred: pid, uid, gid


def _peer_refusal(sock: _SocketLike, *, uid: int) -> str | None:
    """Why the peer of unix socket ``sock`` may not use the broker, or ``None`` if it may.

    Only processes of user ``uid`` may connect (checked with ``SO_PEERCRED``,
    Linux). Where the platform has no ``SO_PEERCRED`` the socket's 0600 mode
    is the only guard and every peer is accepted.
    """
    option = getattr(socket, "SO_PEERCRED", None)
    if option is None:
        return None
    try:
        raw = sock.getsockopt(socket.SOL_SOCKET, option, _PEERCRED.size)
        pid, peer_uid, _gid = _PEERCRED.unpack(raw)
    except (OSError, struct.error) as exc:
        return f"cannot read the peer's credentials: {exc}"
    if peer_uid != uid:
        return f"peer pid {pid} runs as uid {peer_uid}, not the broker's uid {uid}"
    return None


def _decode(line: bytes) -> _Message | None:
    try:
        message = json.loads(line)
    except (ValueError, UnicodeDecodeError):
        return None
    except RecursionError:
        _log.warning("broker.line_skipped: JSON too deeply nested (%d bytes)", len(line))
        return None
    return message if isinstance(message, dict) else None


def _hashable(value: object) -> bool:
    return isinstance(value, str | int | float | bool) or value is None


def _dig(message: _Message, *keys: str) -> Any:
    value: Any = message
    for key in keys:
        if not isinstance(value, dict):
            return None
        value = value.get(key)
    return value


# -- entry point --------------------------------------------------------------


def _parse_args(argv: Sequence[str]) -> argparse.Namespace:
    argv = list(argv)
    extra: list[str] = []
    if "--" in argv:
        cut = argv.index("--")
        argv, extra = argv[:cut], argv[cut + 1 :]
    parser = argparse.ArgumentParser(
        prog="python -m codex_supervisor.appserver.broker",
        description="Share one `codex app-server` between clients on a unix socket.",
        epilog="Arguments after `--` are passed to `codex app-server`.",
    )
    parser.add_argument("--codex", required=True, help="the Codex binary")
    parser.add_argument("--codex-home", required=True, help="CODEX_HOME of the upstream")
    parser.add_argument("--socket", required=True, help="unix socket path to listen on")
    parser.add_argument("--idle-timeout", type=float, default=300.0, help="seconds (default 300)")
    parser.add_argument("--pid-file", default=None, help="write the broker's pid here")
    parser.add_argument("--log-level", default="INFO", help="logging level (default INFO)")
    ns = parser.parse_args(argv)
    ns.extra = extra
    return ns


async def _run(broker: AppServerBroker) -> int:
    # SIGTERM, SIGINT and SIGHUP all mean "shut down gracefully, exit 0".
    async with SignalWatcher(ignore_sigint=False) as watcher:

        async def on_signal() -> None:
            sig = await watcher.wait()
            broker.request_shutdown(f"signal {sig.name}")

        waiter = asyncio.create_task(on_signal())
        try:
            return await broker.serve()
        finally:
            waiter.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await waiter


def main(argv: Sequence[str] | None = None) -> int:
    """Run a broker from the command line; returns its exit status."""
    ns = _parse_args(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(
        level=ns.log_level.upper(), format="%(asctime)s %(name)s %(levelname)s %(message)s"
    )
    try:
        broker = AppServerBroker(
            codex=ns.codex,
            codex_home=ns.codex_home,
            socket_path=ns.socket,
            environ=os.environ,
            args=ns.extra,
            idle_timeout=ns.idle_timeout,
            pid_file=ns.pid_file,
        )
        return asyncio.run(_run(broker))
    except (BrokerAlreadyRunning, ConfigError) as exc:
        sys.stderr.write(f"broker: {exc}\n")
        return 2


if __name__ == "__main__":
    sys.exit(main())
