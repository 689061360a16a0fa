"""A JSON-RPC client for ``codex app-server`` (CODEX_FACTS.md §8).

The app-server speaks one JSON object per line, without a ``"jsonrpc"`` field:
requests ``{id, method, params}``, responses ``{id, result}`` or
``{id, error}``, notifications ``{method, params}``, and server→client
requests (both ``id`` and ``method``) that the client must answer.

:class:`AppServerClient` owns one transport (a spawned process's stdio, a
unix socket, or a WebSocket: one message a text frame) and one reader task.
What it guarantees:

* When the transport closes — EOF, process exit, a socket error, a
  WebSocket protocol violation — every
  pending request and every subscription fails *promptly* with one shared
  :class:`~codex_supervisor.errors.TransportClosed` carrying the exit code and
  the tail of stderr. A dead app-server sends nothing else (no
  ``turn/completed``), so this is the only way a waiter learns about it.
  Process exit is watched as well as EOF: a grandchild (an MCP server) that
  inherited stdout would otherwise keep the pipe open after Codex died.
* A malformed line is logged and skipped, never fatal.
* Server→client requests go to a pluggable async handler; the default
  (:func:`decline_approvals`) declines every approval and answers ``-32601``
  to anything else, so an unattended turn can never run a command it was not
  allowed to.
* :meth:`AppServerClient.aclose` closes stdin, waits ``grace`` seconds, then
  stops the whole process group; the child is always reaped.

Typed models exist only for what the library itself reads
(:class:`InitializeResult`, :class:`ThreadInfo`, :class:`Turn`); everything
else passes through as plain dicts, so new fields never break us. Their wire
names are recorded in field metadata, and a test checks them against the
schema the pinned binary generates.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import functools
import itertools
import json
import logging
import os
import signal
import subprocess
import threading
from collections.abc import AsyncIterator, Awaitable, Callable, Collection, Mapping, Sequence
from concurrent.futures import Future as ConcurrentFuture
from pathlib import Path
from types import TracebackType
from typing import Any, Final, Protocol, Self, TypeVar, final
from urllib.parse import urlsplit

import attrs
from websockets.asyncio.client import ClientConnection
from websockets.asyncio.client import connect as websocket_connect
from websockets.exceptions import ConnectionClosed, WebSocketException

from ..config import child_environment
from ..errors import AppServerError, ConfigError, RequestFailed, TransportClosed
from ..process import Child, StopPolicy, launch

__all__ = [
    "AppServerClient",
    "InitializeResult",
    "Notification",
    "RequestHandler",
    "Subscription",
    "SyncAppServerClient",
    "ThreadInfo",
    "Turn",
    "decline_approvals",
]

_log = logging.getLogger(__name__)

#: An async callable answering one server→client request: ``(method, params) -> result``.
#: Raise :class:`~codex_supervisor.errors.RequestFailed` to answer with a JSON-RPC error.
RequestHandler = Callable[[str, Any], Awaitable[Any]]

_STDERR_TAIL_BYTES: Final = 8 * 1024
_READ_CHUNK: Final = 64 * 1024
# After the process exits, how long stdout may still deliver what it buffered
# before the transport is declared closed (a grandchild may hold the pipe).
_EXIT_DRAIN_GRACE: Final = 0.5
# After EOF, how long to wait for the process exit code before reporting None.
_EOF_EXIT_WAIT: Final = 2.0
# The largest WebSocket message accepted (a resumed thread with its turns fits);
# a larger one fails the connection with close code 1009.
_WS_MAX_MESSAGE: Final = 64 * 1024 * 1024
# Frames buffered before the socket is no longer read: with the message bound,
# at most this many times 64 MiB waits for the reader.
_WS_MAX_QUEUE: Final = 4
# How long a closing WebSocket waits for the app-server's half of the close
# handshake (and its TCP close) before the socket is dropped.
_WS_CLOSE_TIMEOUT: Final = 2.0

METHOD_NOT_FOUND: Final = -32601
INTERNAL_ERROR: Final = -32603

_APPROVAL_DECLINES: Final[Mapping[str, Mapping[str, str]]] = {
    # v2 approvals: "decline" lets the agent continue the turn without it.
    "item/commandExecution/requestApproval": {"decision": "decline"},
    "item/fileChange/requestApproval": {"decision": "decline"},
    # v1 approvals use the older ReviewDecision enum, which has no "decline".
    "execCommandApproval": {"decision": "denied"},
    "applyPatchApproval": {"decision": "denied"},
}


class LineWriter(Protocol):
    """What the client needs of a transport's sending side (asyncio.StreamWriter fits)."""

    def write(self, data: bytes) -> None:
        """Queue bytes to send."""
        ...

    async def drain(self) -> None:
        """Wait until the queue has room."""
        ...

    def close(self) -> None:
        """Close the transport."""
        ...


class _BoundedCloseConnection(ClientConnection):
    """A client connection that drops the socket once a close has waited too long.

    websockets enforces ``close_timeout`` only while a coroutine is sending.
    When it fails the connection on a bad frame from the server (a masked or
    oversized frame, a fragmented control frame...), it sends a close frame
    and waits for the server to close TCP — for ever if the server never does,
    and ``recv`` with it. Sans-I/O's contract (``close_expected``) is to
    schedule that close: this does.
    """

    _abort_timer: asyncio.TimerHandle | None = None

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        timeout = self.close_timeout
        if self._abort_timer is None and timeout is not None and self.protocol.close_expected():
            self._abort_timer = self.loop.call_later(timeout, self.transport.abort)

    def connection_lost(self, exc: Exception | None) -> None:
        if self._abort_timer is not None:
            self._abort_timer.cancel()
        super().connection_lost(exc)


@final
class _ConnectNoRedirect(websocket_connect):
    """websockets' ``connect`` that never follows a redirect.

    websockets (15.0 to at least 17.4) follows up to ``WEBSOCKETS_MAX_REDIRECTS``
    (an environment variable, default 10) and has no argument to turn it off;
    a redirect answered to the upgrade instead fails the handshake here, as
    any other refusal does: the app-server never redirects.
    """

    def process_redirect(self, exc: Exception) -> Exception | str:
        return exc


class _WebSocketLink:
    """A WebSocket as the client's transport: one JSON message per text frame.

    It is the writer (each line written goes out as one text frame on
    :meth:`drain`) and the reader (an async iterator of whole messages: ``str``
    for text frames, ``bytes`` for binary ones). Iteration ends only by
    raising :class:`websockets.exceptions.ConnectionClosed`.
    """

    __slots__ = ("_connection", "_pending")

    def __init__(self, connection: ClientConnection) -> None:
        self._connection = connection
        self._pending = bytearray()

    def write(self, data: bytes) -> None:
        """Queue ``data``; each newline-terminated line is one message."""
        self._pending += data

    async def drain(self) -> None:
        """Send every complete line queued, one text frame each."""
        try:
            while (end := self._pending.find(b"\n")) >= 0:
                line = bytes(self._pending[:end])
                del self._pending[: end + 1]
                await self._connection.send(line, text=True)
        except ConnectionClosed as exc:
            raise ConnectionError(f"the WebSocket is closed: {exc}") from exc

    def close(self) -> None:
        """Drop the socket now (a no-op once closed); :meth:`aclose` closes cleanly."""
        self._connection.transport.abort()

    async def aclose(self, timeout: float) -> None:  # noqa: ASYNC109 - bounds the handshake
        """Do the close handshake (code 1000) for up to ``timeout`` seconds, then drop."""
        try:
            async with asyncio.timeout(timeout):
                await self._connection.close()
        except TimeoutError:
            pass
        finally:
            self._connection.transport.abort()

    def __aiter__(self) -> Self:
        return self

    async def __anext__(self) -> str | bytes:
        return await self._connection.recv()


async def decline_approvals(method: str, params: Any) -> Any:  # noqa: ARG001
    """The default server-request handler: decline every approval, know nothing else.

    ``item/commandExecution/requestApproval`` and
    ``item/fileChange/requestApproval`` are answered ``{"decision":
    "decline"}``; the legacy ``execCommandApproval`` and
    ``applyPatchApproval`` ``{"decision": "denied"}`` (their enum's
    equivalent). Anything else gets JSON-RPC ``-32601`` (method not found).
    """
    answer = _APPROVAL_DECLINES.get(method)
    if answer is None:
        raise RequestFailed(method, METHOD_NOT_FOUND, f"unsupported server request {method!r}")
    _log.info("declining server request %s", method)
    return dict(answer)


# -- typed models --------------------------------------------------------------


@functools.cache
def _library_version() -> str:
    from importlib.metadata import PackageNotFoundError, version  # noqa: PLC0415

    try:
        return version("codex-supervisor")
    except PackageNotFoundError:
        return "0+unknown"


def _wire(name: str) -> dict[str, str]:
    return {"wire": name}


@final
@attrs.frozen(kw_only=True)
class InitializeResult:
    """The app-server's answer to ``initialize``."""

    user_agent: str = attrs.field(metadata=_wire("userAgent"))
    codex_home: str = attrs.field(metadata=_wire("codexHome"))
    platform_family: str = attrs.field(default="", metadata=_wire("platformFamily"))
    platform_os: str = attrs.field(default="", metadata=_wire("platformOs"))

    @classmethod
    def from_wire(cls, obj: Any) -> InitializeResult:
        """Read an ``initialize`` result; unknown fields are ignored."""
        raw = _object(obj, "initialize result")
        return cls(
            user_agent=_str(raw.get("userAgent")),
            codex_home=_str(raw.get("codexHome")),
            platform_family=_str(raw.get("platformFamily")),
            platform_os=_str(raw.get("platformOs")),
        )


@final
@attrs.frozen(kw_only=True)
class ThreadInfo:
    """A thread as ``thread/start`` reports it: its id and rollout path."""

    id: str = attrs.field(metadata=_wire("id"))
    path: str | None = attrs.field(default=None, metadata=_wire("path"))

    @classmethod
    def from_wire(cls, obj: Any) -> ThreadInfo:
        """Read a ``Thread`` object (``result.thread`` of ``thread/start``)."""
        raw = _object(obj, "thread")
        thread_id = raw.get("id")
        if not isinstance(thread_id, str) or not thread_id:
            raise AppServerError(f"thread without an id: {raw!r}")
        path = raw.get("path")
        return cls(id=thread_id, path=path if isinstance(path, str) else None)


@final
@attrs.frozen(kw_only=True)
class Turn:
    """A turn's id, status (``inProgress``/``completed``/``interrupted``/``failed``) and error."""

    id: str = attrs.field(metadata=_wire("id"))
    status: str = attrs.field(metadata=_wire("status"))
    error: Mapping[str, Any] | None = attrs.field(default=None, metadata=_wire("error"))

    @property
    def terminal(self) -> bool:
        """Whether the turn has ended (any status but ``inProgress``)."""
        return self.status != "inProgress"

    @classmethod
    def from_wire(cls, obj: Any) -> Turn:
        """Read a ``Turn`` object (``result.turn`` of ``turn/start``, ``turn/completed``)."""
        raw = _object(obj, "turn")
        turn_id = raw.get("id")
        if not isinstance(turn_id, str) or not turn_id:
            raise AppServerError(f"turn without an id: {raw!r}")
        error = raw.get("error")
        return cls(
            id=turn_id,
            status=_str(raw.get("status")) or "inProgress",
            error=error if isinstance(error, dict) else None,
        )


@final
@attrs.frozen
class Notification:
    """One notification from the app-server: ``method`` and raw ``params``."""

    method: str
    params: Any = None


def _object(obj: Any, what: str) -> dict[str, Any]:
    if not isinstance(obj, dict):
        raise AppServerError(f"expected a JSON object for the {what}, got {type(obj).__name__}")
    return obj


def _str(value: Any) -> str:
    return value if isinstance(value, str) else ""


# -- subscriptions -------------------------------------------------------------


class _Closed:
    """Queue sentinel: the transport closed (or the subscription was closed)."""

    __slots__ = ("error",)

    def __init__(self, error: TransportClosed | None) -> None:
        self.error = error


@final
class Subscription:
    """An async iterator over the client's notifications, optionally filtered by method.

    Created by :meth:`AppServerClient.subscribe`, *before* the request whose
    notifications it wants, so none is missed. The queue is unbounded. When
    the transport closes, the notifications already queued are delivered and
    then iteration raises :class:`~codex_supervisor.errors.TransportClosed`.
    After :meth:`close`, iteration stops (``StopAsyncIteration``).
    """

    __slots__ = ("_client", "_closed", "_methods", "_queue")

    def __init__(self, client: AppServerClient, methods: Collection[str] | None) -> None:
        self._client = client
        self._methods = frozenset(methods) if methods is not None else None
        self._queue: asyncio.Queue[Notification | _Closed] = asyncio.Queue()
        self._closed = False

    def wants(self, method: str) -> bool:
        """Whether this subscription receives ``method``."""
        return self._methods is None or method in self._methods

    def _put(self, item: Notification | _Closed) -> None:
        if not self._closed:
            self._queue.put_nowait(item)

    async def get(self) -> Notification:
        """The next notification (raises like iteration does)."""
        item = await self._queue.get()
        if isinstance(item, _Closed):
            # Leave the sentinel for the next caller: a closed stream stays closed.
            self._queue.put_nowait(item)
            if item.error is None:
                raise StopAsyncIteration
            raise item.error
        return item

    def pending(self) -> int:
        """How many notifications are queued."""
        return self._queue.qsize()

    def close(self) -> None:
        """Unsubscribe; iteration then stops."""
        if self._closed:
            return
        self._client._unsubscribe(self)  # noqa: SLF001
        self._queue.put_nowait(_Closed(None))
        self._closed = True

    def __aiter__(self) -> Self:
        return self

    async def __anext__(self) -> Notification:
        return await self.get()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        methods = sorted(self._methods) if self._methods is not None else "all"
        return f"Subscription(methods={methods!r}, queued={self._queue.qsize()})"


# -- the client ----------------------------------------------------------------


@final
class AppServerClient:
    """One connection to a ``codex app-server``: requests, notifications, server requests.

    Build it with :meth:`spawn` (a child process on stdio),
    :meth:`connect_unix` (a unix socket, newline-delimited JSON) or
    :meth:`connect_ws` (a WebSocket, one message a frame). Use it as an async
    context manager, or call :meth:`aclose`.
    """

    def __init__(
        self,
        reader: asyncio.StreamReader | AsyncIterator[str | bytes],
        writer: LineWriter,
        *,
        child: Child | None = None,
        handler: RequestHandler | None = None,
        name: str = "app-server",
    ) -> None:
        """Wrap an already-open transport; prefer :meth:`spawn` or a ``connect_*`` method.

        ``reader`` is a stream of newline-delimited JSON, or an async iterator
        of whole messages (one JSON value each, ``str`` or ``bytes``).
        """
        self._reader = reader
        self._writer = writer
        self._child = child
        self._handler: RequestHandler = handler or decline_approvals
        self._name = name
        self._ids = itertools.count(1)
        self._pending: dict[int, tuple[str, asyncio.Future[Any]]] = {}
        self._subscriptions: set[Subscription] = set()
        self._handler_tasks: set[asyncio.Task[None]] = set()
        self._write_lock = asyncio.Lock()
        self._stderr_tail: collections.deque[bytes] = collections.deque()
        self._stderr_size = 0
        self._closed_error: TransportClosed | None = None
        self._closed_event = asyncio.Event()
        self._closing = False
        self.initialize_result: InitializeResult | None = None
        self._tasks: list[asyncio.Task[None]] = [
            asyncio.create_task(self._read_loop(), name=f"{name}-reader")
        ]
        if child is not None:
            if child.stderr is not None:
                self._stderr_task: asyncio.Task[None] | None = asyncio.create_task(
                    self._drain_stderr(child.stderr), name=f"{name}-stderr"
                )
                self._tasks.append(self._stderr_task)
            else:
                self._stderr_task = None
            self._tasks.append(asyncio.create_task(self._watch_exit(child), name=f"{name}-exit"))
        else:
            self._stderr_task = None

    # -- construction ----------------------------------------------------------

    @classmethod
    async def spawn(
        cls,
        codex: str | os.PathLike[str],
        *,
        codex_home: Path | str,
        environ: Mapping[str, str] | None = None,
        args: Sequence[str] = (),
        cwd: str | os.PathLike[str] | None = None,
        handler: RequestHandler | None = None,
        client_name: str = "codex_supervisor",
        initialize: bool = True,
    ) -> AppServerClient:
        """Launch ``codex app-server [*args]`` in its own process group and connect to it.

        The environment is :func:`~codex_supervisor.config.child_environment`
        of ``codex_home`` and ``environ``. With ``initialize`` (the default)
        the handshake is done before returning; if it fails the process is
        stopped and reaped before the error propagates.
        """
        env = child_environment(Path(codex_home), environ)
        child = await launch(
            [os.fspath(codex), "app-server", *args],
            env=env,
            cwd=cwd,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            process_group=True,
        )
        assert child.stdout is not None
        assert child.stdin is not None
        client = cls(
            child.stdout, child.stdin, child=child, handler=handler, name=f"app-server[{child.pid}]"
        )
        if initialize:
            try:
                await client.initialize(client_name=client_name)
            except BaseException:
                await client.aclose(grace=0.0)
                raise
        return client

    @classmethod
    async def connect_unix(
        cls,
        path: str | os.PathLike[str],
        *,
        handler: RequestHandler | None = None,
        client_name: str = "codex_supervisor",
        initialize: bool = True,
    ) -> AppServerClient:
        """Connect to an app-server (or a broker) on a unix socket speaking JSONL."""
        try:
            reader, writer = await asyncio.open_unix_connection(os.fspath(path))
        except OSError as exc:
            raise TransportClosed(f"cannot connect to {os.fspath(path)!r}: {exc}") from exc
        client = cls(reader, writer, handler=handler, name=f"app-server[{os.fspath(path)}]")
        if initialize:
            try:
                await client.initialize(client_name=client_name)
            except BaseException:
                await client.aclose(grace=0.0)
                raise
        return client

    @classmethod
    async def connect_ws(
        cls,
        url: str,
        *,
        handler: RequestHandler | None = None,
        client_name: str = "codex_supervisor",
        initialize: bool = True,
        timeout: float = 10.0,  # noqa: ASYNC109 - bounds the connect + handshake only
    ) -> AppServerClient:
        """Connect to ``codex app-server --listen ws://127.0.0.1:PORT`` (one message a frame).

        Always a direct connection: ``HTTP(S)_PROXY`` and the like are ignored,
        as the app-server listens on loopback. No compression is negotiated
        (on loopback, deflating multi-MiB frames would only cost CPU on the
        event loop) and no keepalive pings are sent (a dead app-server closes
        its socket). A message over 64 MiB, a masked or malformed frame, or
        invalid UTF-8 in a text frame fails the connection (RFC 6455): every
        waiter then gets :class:`~codex_supervisor.errors.TransportClosed`.
        A redirect answered to the upgrade is a refusal, never followed. A URL
        that is no ``ws://HOST:PORT`` (a bad IPv6 literal or port, a space or
        a control character) is a :class:`~codex_supervisor.errors.ConfigError`.
        """
        bad = f"need a ws://HOST:PORT URL, got {url!r} (wss:// is not supported)"
        if any(c.isspace() or not c.isprintable() for c in url):
            raise ConfigError(f"{bad}: it holds a space or a control character")
        try:
            parts = urlsplit(url)
            host, port = parts.hostname, parts.port
        except ValueError as exc:  # "Invalid IPv6 URL", a port out of range or not a number
            raise ConfigError(f"{bad}: {exc}") from exc
        if parts.scheme != "ws" or not host or not port:
            raise ConfigError(bad)
        try:
            connection = await _ConnectNoRedirect(
                url,
                proxy=None,
                compression=None,
                open_timeout=timeout,
                ping_interval=None,
                close_timeout=_WS_CLOSE_TIMEOUT,
                max_size=_WS_MAX_MESSAGE,
                max_queue=_WS_MAX_QUEUE,
                create_connection=_BoundedCloseConnection,
            )
        except (OSError, TimeoutError, WebSocketException) as exc:
            raise TransportClosed(f"cannot open {url}: {exc}") from exc
        except ValueError as exc:  # an argument websockets or the resolver refused
            raise ConfigError(f"cannot open {url!r}: {exc}") from exc
        link = _WebSocketLink(connection)
        client = cls(link, link, handler=handler, name=f"app-server[{url}]")
        if initialize:
            try:
                await client.initialize(client_name=client_name)
            except BaseException:
                await client.aclose(grace=0.0)
                raise
        return client

    async def initialize(
        self,
        *,
        client_name: str = "codex_supervisor",
        title: str | None = None,
        version: str | None = None,
        capabilities: Mapping[str, Any] | None = None,
        timeout: float | None = 30.0,  # noqa: ASYNC109 - per-request bound
    ) -> InitializeResult:
        """Do the handshake: request ``initialize``, then notify ``initialized``."""
        params: dict[str, Any] = {
            "clientInfo": {
                "name": client_name,
                "title": title or client_name,
                "version": version or _library_version(),
            }
        }
        if capabilities is not None:
            params["capabilities"] = dict(capabilities)
        result = InitializeResult.from_wire(
            await self.request("initialize", params, timeout=timeout)
        )
        await self.notify("initialized")
        self.initialize_result = result
        return result

    # -- state -----------------------------------------------------------------

    @property
    def closed(self) -> bool:
        """Whether the transport has closed (no request can succeed any more)."""
        return self._closed_error is not None

    @property
    def returncode(self) -> int | None:
        """The app-server's exit code once reaped (negative: signal); ``None`` otherwise."""
        return self._child.returncode if self._child is not None else None

    @property
    def pid(self) -> int | None:
        """The app-server's pid (also its process group), or ``None`` on a socket."""
        return self._child.pid if self._child is not None else None

    @property
    def child(self) -> Child | None:
        """The spawned process, or ``None`` on a socket."""
        return self._child

    @property
    def stderr_tail(self) -> str:
        """The last ~8 KiB the app-server wrote to stderr."""
        return b"".join(self._stderr_tail)[-_STDERR_TAIL_BYTES:].decode("utf-8", "replace")

    @property
    def close_error(self) -> TransportClosed | None:
        """The error pending requests failed with once the transport closed."""
        return self._closed_error

    async def wait_closed(self) -> TransportClosed:
        """Wait until the transport closes and return the error it closed with."""
        await self._closed_event.wait()
        assert self._closed_error is not None
        return self._closed_error

    # -- requests and notifications -------------------------------------------

    async def request(
        self,
        method: str,
        params: Any = None,
        *,
        timeout: float | None = None,  # noqa: ASYNC109 - per-request bound, the public API
    ) -> Any:
        """Send a request and return its ``result``.

        Raises :class:`~codex_supervisor.errors.RequestFailed` on an error
        response, :class:`~codex_supervisor.errors.TransportClosed` when the
        transport closes first, and :class:`TimeoutError` after ``timeout``
        seconds (the late response is then dropped).
        """
        if self._closed_error is not None:
            raise self._closed_error
        request_id = next(self._ids)
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._pending[request_id] = (method, future)
        message: dict[str, Any] = {"id": request_id, "method": method}
        if params is not None:
            message["params"] = params
        try:
            await self._send(message)
            async with asyncio.timeout(timeout):
                # Shielded: a timeout or cancellation must not cancel the shared
                # future's result handling; the finally drops it from _pending.
                return await asyncio.shield(future)
        finally:
            self._pending.pop(request_id, None)
            if not future.done():
                future.cancel()

    async def notify(self, method: str, params: Any = None) -> None:
        """Send a notification (no answer expected)."""
        message: dict[str, Any] = {"method": method}
        if params is not None:
            message["params"] = params
        await self._send(message)

    def subscribe(self, methods: Collection[str] | None = None) -> Subscription:
        """A new :class:`Subscription` to notifications (all of them, or ``methods``)."""
        sub = Subscription(self, methods)
        if self._closed_error is not None:
            sub._put(_Closed(self._closed_error))  # noqa: SLF001
        else:
            self._subscriptions.add(sub)
        return sub

    def _unsubscribe(self, sub: Subscription) -> None:
        self._subscriptions.discard(sub)

    # -- convenience wrappers --------------------------------------------------

    async def thread_start(self, params: Mapping[str, Any] | None = None) -> ThreadInfo:
        """``thread/start`` with ``params`` (``cwd``, ``model``, ...); the new thread."""
        result = await self.request("thread/start", dict(params or {}))
        return ThreadInfo.from_wire(_object(result, "thread/start result").get("thread"))

    async def thread_resume(
        self, thread_id: str, params: Mapping[str, Any] | None = None
    ) -> ThreadInfo:
        """``thread/resume``: load a thread (by id) into this app-server."""
        result = await self.request("thread/resume", {"threadId": thread_id, **(params or {})})
        return ThreadInfo.from_wire(_object(result, "thread/resume result").get("thread"))

    async def turn_interrupt(
        self,
        thread_id: str,
        turn_id: str,
        *,
        timeout: float | None = None,  # noqa: ASYNC109 - passed to request()
    ) -> None:
        """``turn/interrupt``: ask the app-server to stop a running turn."""
        await self.request(
            "turn/interrupt", {"threadId": thread_id, "turnId": turn_id}, timeout=timeout
        )

    # -- transport internals ---------------------------------------------------

    async def _send(self, message: Mapping[str, Any]) -> None:
        data = json.dumps(message, separators=(",", ":"), ensure_ascii=False).encode() + b"\n"
        async with self._write_lock:
            if self._closed_error is not None:
                raise self._closed_error
            try:
                self._writer.write(data)
                await self._writer.drain()
            except (ConnectionError, OSError, RuntimeError) as exc:
                # The reader sees the same death (EOF / exit) and closes the
                # transport with the exit code; report that error if it is ready.
                if self._closed_error is not None:
                    raise self._closed_error from exc
                raise TransportClosed(
                    f"{self._name}: cannot write {message.get('method', 'response')}: {exc}",
                    self.returncode,
                    self.stderr_tail,
                ) from exc

    async def _read_loop(self) -> None:
        reason = "the app-server closed its output (EOF)"
        try:
            if isinstance(self._reader, asyncio.StreamReader):
                await self._read_lines(self._reader)
            else:
                async for message in self._reader:
                    self._dispatch_line(message)
        except asyncio.CancelledError:
            raise
        except ConnectionClosed as exc:  # the WebSocket's end, clean or failed
            reason = f"the WebSocket closed: {exc}"
        except Exception as exc:  # noqa: BLE001 - a socket error closes the transport
            reason = f"reading from the app-server failed: {exc}"
        await self._after_eof(reason)

    async def _read_lines(self, reader: asyncio.StreamReader) -> None:
        # Chunks, not readline(): StreamReader's line limit (64 KiB) would
        # drop a large message (a resumed thread with its turns) on the floor.
        buffer = bytearray()
        while chunk := await reader.read(_READ_CHUNK):
            buffer += chunk
            while (end := buffer.find(b"\n")) >= 0:
                line = bytes(buffer[:end])
                del buffer[: end + 1]
                self._dispatch_line(line)
        if buffer.strip():
            self._dispatch_line(bytes(buffer))

    async def _after_eof(self, reason: str) -> None:
        if self._child is not None and self._child.returncode is None and not self._closing:
            # EOF usually means the process is exiting: give it a moment so the
            # error can carry its exit code (and stderr its last words).
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(_EOF_EXIT_WAIT):
                    await self._child.wait()
        await self._settle_stderr()
        self._close_transport(reason)

    async def _watch_exit(self, child: Child) -> None:
        code = await child.wait()
        # Let stdout deliver what the process wrote before it died; a
        # grandchild holding the pipe open must not keep us waiting forever.
        reader_task = self._tasks[0]
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(_EXIT_DRAIN_GRACE):
                await asyncio.shield(reader_task)
        await self._settle_stderr()
        self._close_transport(f"the app-server exited with code {code}")

    async def _settle_stderr(self) -> None:
        task = self._stderr_task
        if task is None or task.done():
            return
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(_EXIT_DRAIN_GRACE):
                await asyncio.shield(task)

    async def _drain_stderr(self, stream: asyncio.StreamReader) -> None:
        # Always drained, so a chatty app-server can never block on a full pipe.
        with contextlib.suppress(ConnectionError, OSError):
            while chunk := await stream.read(_READ_CHUNK):
                self._stderr_tail.append(chunk)
                self._stderr_size += len(chunk)
                while self._stderr_size - len(self._stderr_tail[0]) >= _STDERR_TAIL_BYTES:
                    self._stderr_size -= len(self._stderr_tail.popleft())

    def _close_transport(self, reason: str) -> None:
        if self._closed_error is not None:
            return
        error = TransportClosed(f"{self._name}: {reason}", self.returncode, self.stderr_tail)
        self._closed_error = error
        level = logging.DEBUG if self._closing else logging.WARNING
        _log.log(level, "transport closed: %s", error)
        pending, self._pending = self._pending, {}
        for _method, future in pending.values():
            if not future.done():
                future.set_exception(error)
                # Retrieved by its awaiter; a cancelled awaiter must not make
                # asyncio log "exception was never retrieved".
                future.exception()
        subscriptions, self._subscriptions = self._subscriptions, set()
        for sub in subscriptions:
            sub._put(_Closed(error))  # noqa: SLF001
        self._closed_event.set()
        with contextlib.suppress(Exception):
            self._writer.close()

    def _dispatch_line(self, line: bytes | str) -> None:
        if not line.strip():
            return
        try:
            message = json.loads(line)
        except (ValueError, RecursionError) as exc:  # RecursionError: nested too deep
            _log.warning("skipping a malformed line from %s: %s: %.200r", self._name, exc, line)
            return
        if not isinstance(message, dict):
            _log.warning("skipping a non-object message from %s: %.200r", self._name, line)
            return
        method = message.get("method")
        has_id = "id" in message
        if isinstance(method, str) and has_id:
            self._start_handler(message["id"], method, message.get("params"))
        elif isinstance(method, str):
            note = Notification(method, message.get("params"))
            for sub in tuple(self._subscriptions):
                if sub.wants(method):
                    sub._put(note)  # noqa: SLF001
        elif has_id:
            self._resolve(message)
        else:
            _log.warning("skipping an unrecognised message from %s: %.200r", self._name, line)

    def _resolve(self, message: dict[str, Any]) -> None:
        request_id = message.get("id")
        entry = self._pending.pop(request_id, None) if isinstance(request_id, int) else None
        if entry is None:
            _log.debug("response to an unknown or abandoned request %r", request_id)
            return
        method, future = entry
        if future.done():
            return
        error = message.get("error")
        if error is not None:
            err = error if isinstance(error, dict) else {"message": str(error)}
            code = err.get("code")
            future.set_exception(
                RequestFailed(
                    method,
                    code if isinstance(code, int) else INTERNAL_ERROR,
                    str(err.get("message", "")),
                    err.get("data"),
                )
            )
            future.exception()  # see _close_transport
        else:
            future.set_result(message.get("result"))

    def _start_handler(self, request_id: Any, method: str, params: Any) -> None:
        task = asyncio.create_task(
            self._answer(request_id, method, params), name=f"{self._name}-answer-{method}"
        )
        self._handler_tasks.add(task)
        task.add_done_callback(self._handler_tasks.discard)

    async def _answer(self, request_id: Any, method: str, params: Any) -> None:
        reply: dict[str, Any]
        try:
            result = await self._handler(method, params)
            reply = {"id": request_id, "result": result}
        except RequestFailed as exc:
            error: dict[str, Any] = {"code": exc.code, "message": exc.message}
            if exc.data is not None:
                error["data"] = exc.data
            reply = {"id": request_id, "error": error}
        except Exception as exc:  # noqa: BLE001 - a broken handler must not kill the reader
            _log.exception("the handler for server request %s failed", method)
            reply = {"id": request_id, "error": {"code": INTERNAL_ERROR, "message": str(exc)}}
        with contextlib.suppress(TransportClosed):
            await self._send(reply)

    # -- lifecycle -------------------------------------------------------------

    async def aclose(self, grace: float = 2.0) -> None:
        """Close the connection; for a spawned app-server, end and reap the process.

        Closes stdin (Codex exits on EOF), waits up to ``grace`` seconds, then
        stops the process group (SIGTERM, then SIGKILL). A WebSocket does the
        close handshake, for up to ``grace`` seconds. Every background task
        is cancelled and awaited; pending requests fail with
        :class:`~codex_supervisor.errors.TransportClosed`.
        """
        self._closing = True
        try:
            if isinstance(self._writer, _WebSocketLink):
                with contextlib.suppress(Exception):
                    await self._writer.aclose(grace)
            with contextlib.suppress(Exception):
                self._writer.close()
            child = self._child
            if child is not None and child.returncode is None:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(grace):
                        await child.wait()
                await child.stop(
                    StopPolicy(interrupt_grace=1.0, terminate_grace=1.0),
                    first_signal=signal.SIGTERM,
                )
        finally:
            self._close_transport("the client closed the connection")
            tasks = [*self._tasks, *self._handler_tasks]
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    def __repr__(self) -> str:
        state = "closed" if self.closed else "open"
        return f"AppServerClient({self._name}, {state}, pending={len(self._pending)})"


# -- a synchronous facade ------------------------------------------------------

_T = TypeVar("_T")


@final
class SyncAppServerClient:
    """A blocking wrapper for scripts: the async client on a private loop in a thread.

    Every call submits a coroutine to that loop and blocks until it is done,
    so the client's reader keeps running between calls. Not for use from
    inside a running event loop's thread (it would deadlock nothing, but it
    blocks that loop). :meth:`close` (or leaving the ``with`` block) closes
    the client and stops the thread.
    """

    def __init__(
        self, client: AppServerClient, loop: asyncio.AbstractEventLoop, thread: threading.Thread
    ) -> None:
        self._client = client
        self._loop = loop
        self._thread = thread

    @classmethod
    def spawn(cls, codex: str | os.PathLike[str], **kwargs: Any) -> SyncAppServerClient:
        """Like :meth:`AppServerClient.spawn` (same arguments), blocking."""
        loop = asyncio.new_event_loop()
        thread = threading.Thread(target=loop.run_forever, name="sync-app-server", daemon=True)
        thread.start()
        try:
            client = asyncio.run_coroutine_threadsafe(
                AppServerClient.spawn(codex, **kwargs), loop
            ).result()
        except BaseException:
            _stop_loop(loop, thread)
            raise
        return cls(client, loop, thread)

    @property
    def client(self) -> AppServerClient:
        """The async client (use it only through :meth:`call`)."""
        return self._client

    def call(
        self, factory: Callable[[AppServerClient], Awaitable[_T]], timeout: float | None = None
    ) -> _T:
        """Run ``factory(client)`` on the client's loop and return its result."""

        async def run() -> _T:
            return await factory(self._client)

        future: ConcurrentFuture[_T] = asyncio.run_coroutine_threadsafe(run(), self._loop)
        return future.result(timeout)

    def request(self, method: str, params: Any = None, *, timeout: float | None = None) -> Any:
        """Blocking :meth:`AppServerClient.request`."""
        return self.call(lambda c: c.request(method, params, timeout=timeout))

    def notify(self, method: str, params: Any = None) -> None:
        """Blocking :meth:`AppServerClient.notify`."""
        self.call(lambda c: c.notify(method, params))

    def close(self, grace: float = 2.0) -> None:
        """Close the client and stop the private loop's thread."""
        if self._loop.is_closed():
            return
        try:
            self.call(lambda c: c.aclose(grace))
        finally:
            _stop_loop(self._loop, self._thread)

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def _stop_loop(loop: asyncio.AbstractEventLoop, thread: threading.Thread) -> None:
    loop.call_soon_threadsafe(loop.stop)
    thread.join()
    loop.close()
