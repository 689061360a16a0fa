"""The WebSocket transport against hostile servers: bad frames, random bytes, sockets held open.

A raw TCP server does the opening handshake by hand, waits for the client's
first frame (so a request is pending), then writes arbitrary bytes and ends
with EOF, a reset, or by holding the socket open. Whatever it sends, the
client must end with :class:`~codex_supervisor.errors.TransportClosed` for
every waiter (or a logged skip of a bad message), never another exception,
never a hang: the ``asyncio.timeout`` calls here are guards, not measurements.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import json
import logging
import socket
import struct
from collections.abc import AsyncIterator
from typing import Any, Literal

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from websockets.asyncio.server import ServerConnection, serve

from codex_supervisor import errors
from codex_supervisor.appserver import AppServerClient, Subscription
from codex_supervisor.appserver import client as client_module

End = Literal["eof", "reset", "hold"]
MiB = 1 << 20
LIMIT = 64 * MiB
GUARD = 30.0  # seconds; a guard against hangs, never an expectation
TEXT, BINARY, CONT, CLOSE, PING, PONG = 0x1, 0x2, 0x0, 0x8, 0x9, 0xA
_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"


def apply_mask(payload: bytes, mask: bytes) -> bytes:
    """XOR ``payload`` with the repeated 4-byte ``mask`` (as a big integer: fast)."""
    if not payload:
        return payload
    key = (mask * (len(payload) // 4 + 1))[: len(payload)]
    value = int.from_bytes(payload, "big") ^ int.from_bytes(key, "big")
    return value.to_bytes(len(payload), "big")


def frame(
    opcode: int,
    payload: bytes = b"",
    *,
    fin: bool = True,
    rsv: int = 0,
    mask: bytes | None = None,
    length: int | None = None,
) -> bytes:
    """One WebSocket frame, as valid or as wrong as asked (``length``: the declared size)."""
    size = len(payload) if length is None else length
    head = bytes([(0x80 if fin else 0) | (rsv & 7) << 4 | (opcode & 0xF)])
    bit = 0x80 if mask is not None else 0
    if size < 126:
        head += bytes([bit | size])
    elif size < 1 << 16:
        head += bytes([bit | 126]) + struct.pack("!H", size)
    else:
        head += bytes([bit | 127]) + struct.pack("!Q", size)
    if mask is not None:
        head += mask
        payload = apply_mask(payload, mask)
    return head + payload


def _accept(request: bytes) -> bytes:
    for line in request.split(b"\r\n"):
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"sec-websocket-key":
            return base64.b64encode(hashlib.sha1(value.strip() + _GUID).digest())
    raise AssertionError(f"no Sec-WebSocket-Key in {request!r}")


@contextlib.asynccontextmanager
async def hostile_server(data: bytes, end: End = "eof") -> AsyncIterator[str]:
    """A ws:// URL; its server sends ``data`` after the handshake and the client's first frame."""
    handlers: set[asyncio.Task[None]] = set()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await converse(reader, writer)
        except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
            pass
        finally:
            writer.close()

    async def converse(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        request = await reader.readuntil(b"\r\n\r\n")
        writer.write(
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
            b"Connection: Upgrade\r\nSec-WebSocket-Accept: " + _accept(request) + b"\r\n\r\n"
        )
        await reader.read(2)  # the first bytes of the client's first frame
        writer.write(data)
        await writer.drain()
        if end == "reset":
            sock = writer.get_extra_info("socket")
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        elif end == "hold":
            while await reader.read(64 * 1024):  # until the client drops the socket
                pass

    def track(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.create_task(handle(reader, writer))
        handlers.add(task)
        task.add_done_callback(handlers.discard)

    server = await asyncio.start_server(track, "127.0.0.1", 0)
    try:
        yield f"ws://127.0.0.1:{server.sockets[0].getsockname()[1]}"
    finally:
        server.close()
        for task in tuple(handlers):
            task.cancel()
        await asyncio.gather(*handlers, return_exceptions=True)
        await server.wait_closed()


async def drain(sub: Subscription) -> None:
    """Read notifications (the bytes may carry some) until the subscription raises."""
    async for _note in sub:
        pass


@contextlib.contextmanager
def recorded_trouble() -> Any:
    """Collect ERROR log records and the loop's unhandled exceptions while the block runs."""
    trouble: list[str] = []

    class Recorder(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            trouble.append(f"{record.name}: {record.getMessage()}")

    recorder = Recorder(logging.ERROR)
    loggers = [logging.getLogger(name) for name in ("websockets", "codex_supervisor", "asyncio")]
    for logger in loggers:
        logger.addHandler(recorder)
    loop = asyncio.get_running_loop()
    loop.set_exception_handler(lambda _loop, context: trouble.append(repr(context)))
    try:
        yield trouble
    finally:
        loop.set_exception_handler(None)
        for logger in loggers:
            logger.removeHandler(recorder)


async def outcome(
    data: bytes, end: End = "eof", *, alone: bool = False, grace: float = 0.2
) -> errors.TransportClosed:
    """Run one hostile exchange; check every waiter settled properly; the closing error.

    With ``end="hold"`` the server never closes: with ``alone`` the client
    must close by itself (a violation fails it), else it is closed after a
    moment with ``aclose(grace)``.
    """
    with recorded_trouble() as trouble:
        async with hostile_server(data, end) as url:
            client = await AppServerClient.connect_ws(url, initialize=False)
            try:
                async with asyncio.timeout(GUARD):
                    sub = client.subscribe()
                    request = asyncio.create_task(client.request("probe"))
                    if end == "hold" and not alone:
                        # The server never closes: let its bytes land, then close from our side.
                        with contextlib.suppress(TimeoutError):
                            async with asyncio.timeout(0.2):
                                await client.wait_closed()
                        await client.aclose(grace=grace)
                    error = await client.wait_closed()
                    # The request: answered by the bytes, refused, or failed with the transport.
                    with contextlib.suppress(errors.RequestFailed, errors.TransportClosed):
                        await request
                    with pytest.raises(errors.TransportClosed):
                        await drain(sub)
            finally:
                await client.aclose(grace=0.0)
    assert isinstance(error, errors.TransportClosed)
    # A socket error or a parser bug would read "reading from the app-server failed".
    assert "the WebSocket closed" in str(error) or (
        end == "hold" and not alone and "the client closed" in str(error)
    ), error
    assert not trouble, trouble
    return error


pytestmark = pytest.mark.anyio


@pytest.fixture
def short_close(monkeypatch: pytest.MonkeyPatch) -> None:
    """A server holding its socket open costs the close timeout: keep it short here."""
    monkeypatch.setattr(client_module, "_WS_CLOSE_TIMEOUT", 0.5)


# -- the cases the issue names -----------------------------------------------------------------

_RESPONSE = b'{"id":1,"result":"hello"}'
VIOLATIONS = {
    # (a) RFC 6455 §5.1: a client must fail the connection on a masked frame.
    "masked frame": (frame(TEXT, _RESPONSE, mask=b"\x01\x02\x03\x04"), "1002"),
    # (b) control frames: never fragmented, at most 125 bytes.
    "fragmented ping": (frame(PING, b"x", fin=False), "1002"),
    "ping of 126 bytes": (frame(PING, b"x" * 126), "1002"),
    "close of 126 bytes": (frame(CLOSE, struct.pack("!H", 1000) + b"x" * 124), "1002"),
    # (c) over the 64 MiB bound: refused at the header, nothing allocated.
    "frame of 64 MiB + 1": (frame(TEXT, length=LIMIT + 1), "1009"),
    "frame of 2**63 - 1": (frame(TEXT, length=(1 << 63) - 1), "1009"),
    # (d) RFC 6455 §8.1: invalid UTF-8 in a text message fails the connection.
    "invalid UTF-8": (frame(TEXT, b'{"id":1,"result":"\xff\xfe"}'), "1007"),
    "UTF-8 cut across frames": (
        frame(TEXT, b'{"id":1,"result":"\xc3', fin=False) + frame(CONT, b'"}'),
        "1007",
    ),
    # reserved bits, an unknown opcode, a continuation with nothing to continue
    "RSV1 without an extension": (frame(TEXT, _RESPONSE, rsv=4), "1002"),
    "opcode 0xB": (frame(0xB, b""), "1002"),
    "continuation first": (frame(CONT, _RESPONSE), "1002"),
}


@pytest.mark.parametrize("end", ["eof", "hold"])
@pytest.mark.parametrize("case", VIOLATIONS)
async def test_a_protocol_violation_fails_the_connection(
    case: str, end: End, short_close: None
) -> None:
    """(a)-(d): each violation ends every waiter with TransportClosed, even if the server stays."""
    data, code = VIOLATIONS[case]
    error = await outcome(data, end, alone=True)
    assert f"sent {code}" in str(error), error


async def test_a_fragmented_message_over_the_bound_fails(short_close: None) -> None:
    """(c) 40 MiB, then a continuation that would pass 64 MiB: refused at its header."""
    data = frame(TEXT, b" " * (40 * MiB), fin=False) + frame(CONT, length=30 * MiB)
    error = await outcome(data, "hold", alone=True)
    assert "sent 1009" in str(error), error


async def test_a_message_of_exactly_the_bound_arrives() -> None:
    """A 64 MiB message is the largest accepted, and it arrives whole."""
    head = b'{"id":1,"result":"'
    pad = LIMIT - len(head) - 2
    data = frame(TEXT, head + b"x" * pad + b'"}')
    async with hostile_server(data, "hold") as url:
        client = await AppServerClient.connect_ws(url, initialize=False)
        try:
            async with asyncio.timeout(GUARD):
                result = await client.request("big")
            assert len(result) == pad
            assert not client.closed
        finally:
            await client.aclose(grace=0.2)


@pytest.mark.parametrize("end", ["eof", "reset"])
@pytest.mark.parametrize(
    "data",
    [
        frame(TEXT, _RESPONSE)[:-5],  # (e) a truncated payload
        frame(TEXT, length=1000)[:3],  # (e) a truncated extended length
        frame(TEXT, b"x" * 70_000)[:30_000],
        b"",  # (f) nothing at all: the server just goes
    ],
    ids=["payload", "length", "large", "nothing"],
)
async def test_truncation_or_abrupt_close_fails_the_connection(data: bytes, end: End) -> None:
    """(e)/(f): a frame cut short by EOF or a reset, or a bare close, ends every waiter."""
    error = await outcome(data, end)
    assert "no close frame received" in str(error), error


async def test_a_real_server_dropping_the_socket_fails_the_connection() -> None:
    """(f) A websockets server that aborts mid-conversation: TransportClosed, nothing hangs."""

    async def handler(ws: ServerConnection) -> None:
        async for message in ws:
            msg = json.loads(message)
            if msg.get("method") == "initialize":
                await ws.send(json.dumps({"id": msg["id"], "result": {"userAgent": "x"}}))
            elif msg.get("method") == "drop":
                ws.transport.abort()

    async with serve(handler, "127.0.0.1", 0, compression=None) as server:
        port = server.sockets[0].getsockname()[1]
        client = await AppServerClient.connect_ws(f"ws://127.0.0.1:{port}")
        try:
            sub = client.subscribe()
            async with asyncio.timeout(GUARD):
                with pytest.raises(errors.TransportClosed, match="no close frame received"):
                    await client.request("drop")
                with pytest.raises(errors.TransportClosed):
                    await sub.get()
                with pytest.raises(errors.TransportClosed):
                    await client.request("after")
        finally:
            await client.aclose()


async def test_a_server_ignoring_the_close_handshake_is_dropped() -> None:
    """aclose sends a close frame and waits at most ``grace`` for the answer, then drops."""
    async with hostile_server(b"", "hold") as url:
        client = await AppServerClient.connect_ws(url, initialize=False)
        request = asyncio.create_task(client.request("never answered"))
        await asyncio.sleep(0)
        async with asyncio.timeout(GUARD):
            await client.aclose(grace=0.2)
            with pytest.raises(errors.TransportClosed):
                await request
        assert client.closed


async def test_a_silent_handshake_times_out() -> None:
    """A server that accepts but never answers the upgrade: TransportClosed after ``timeout``."""

    done = asyncio.Event()

    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await reader.read()  # until the client gives up and closes
        finally:
            writer.close()
            done.set()

    server = await asyncio.start_server(silent, "127.0.0.1", 0)
    async with server:
        port = server.sockets[0].getsockname()[1]
        async with asyncio.timeout(GUARD):
            with pytest.raises(errors.TransportClosed, match="cannot open"):
                await AppServerClient.connect_ws(f"ws://127.0.0.1:{port}", timeout=0.3)
            await done.wait()  # the client closed its socket: the server saw EOF


# -- random byte streams -----------------------------------------------------------------------

json_values: st.SearchStrategy[Any] = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner),
    max_leaves=10,
)
messages = st.one_of(
    st.builds(lambda v: {"id": 1, "result": v}, json_values),
    st.builds(lambda v: {"id": 1, "error": v}, json_values),
    st.builds(lambda m, v: {"method": m, "params": v}, st.text(max_size=30), json_values),
    st.builds(
        lambda v: {"id": 7, "method": "item/fileChange/requestApproval", "params": v}, json_values
    ),
    json_values,
).map(lambda v: json.dumps(v, ensure_ascii=False).encode("utf-8", "surrogatepass"))


@st.composite
def deep(draw: st.DrawFn) -> bytes:
    """JSON nested far past the recursion limit, sometimes unclosed."""
    depth = draw(st.sampled_from([1_010, 100_000]) | st.integers(1, 100_000))
    return b'{"method":"x","params":' + b"[" * depth + b"]" * draw(st.integers(0, depth)) + b"}"


@st.composite
def spliced(draw: st.DrawFn, base: st.SearchStrategy[bytes]) -> bytes:
    """Cut short, or with invalid UTF-8 spliced in."""
    data = draw(base)
    where = draw(st.integers(0, len(data)))
    junk = draw(st.sampled_from([b"", b"\xff", b"\xc3", b"\xed\xa0\x80", b"\xf4\x90\x80\x80"]))
    return data[:where] + junk + data[where:] if draw(st.booleans()) else data[:where]


payloads = st.one_of(
    messages,
    spliced(messages),
    deep(),
    st.integers(0, 3 * MiB).map(lambda n: b'{"id":1,"result":"' + b"x" * n + b'"}'),  # huge lines
    st.binary(max_size=200),
    st.builds(
        lambda code, reason: struct.pack("!H", code) + reason,
        st.integers(0, 65535),
        st.binary(max_size=20),
    ),
)
declared = st.sampled_from([125, 126, 65535, 65536, LIMIT, LIMIT + 1, (1 << 63) - 1, (1 << 64) - 1])


@st.composite
def frames(draw: st.DrawFn) -> bytes:
    """One frame: any opcode, FIN, RSV bits, mask and declared length, maybe truncated."""
    payload = draw(payloads)
    raw = frame(
        draw(st.sampled_from([TEXT, BINARY, CONT, CLOSE, PING, PONG]) | st.integers(0, 15)),
        payload,
        fin=draw(st.booleans() | st.just(True)),
        rsv=draw(st.just(0) | st.integers(0, 7)),
        mask=draw(st.none() | st.none() | st.binary(min_size=4, max_size=4)),
        length=draw(st.none() | st.none() | st.none() | declared),
    )
    if draw(st.integers(0, 4)) == 0:  # sometimes cut short
        raw = raw[: draw(st.integers(0, len(raw)))]
    return raw


streams = st.one_of(
    st.binary(max_size=2000),
    st.lists(frames(), min_size=1, max_size=5).map(b"".join),
    st.tuples(st.lists(frames(), max_size=3).map(b"".join), st.binary(max_size=100)).map(b"".join),
)
FUZZ = settings(
    deadline=None,
    max_examples=60,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


@FUZZ
@given(streams, st.sampled_from(["eof", "eof", "reset", "hold"]))
@example(frame(TEXT, _RESPONSE, mask=b"abcd"), "hold")
@example(frame(PING, b"x", fin=False), "hold")
@example(frame(TEXT, length=(1 << 63) - 1), "hold")
@example(frame(TEXT, b"\xff"), "hold")
@example(frame(TEXT, b"[" * 100_000) + frame(TEXT, _RESPONSE), "eof")
@example(frame(TEXT, b'{"id":1,"result":"' + b"x" * (3 * MiB) + b'"}'), "eof")
@example(frame(CLOSE, struct.pack("!H", 1000)), "hold")
@example(frame(CLOSE, struct.pack("!H", 999)), "hold")
@example(frame(CLOSE, b"\x03"), "eof")
@example(frame(TEXT, b"not json") + frame(PING, b"p") + frame(TEXT, _RESPONSE), "eof")
def test_any_byte_stream_ends_in_transport_closed(data: bytes, end: End) -> None:
    """After a valid handshake, any bytes then EOF, a reset or a held socket: TransportClosed."""
    original = client_module._WS_CLOSE_TIMEOUT
    client_module._WS_CLOSE_TIMEOUT = 0.5  # a held socket costs this much; keep examples quick
    try:
        asyncio.run(outcome(data, end))
    finally:
        client_module._WS_CLOSE_TIMEOUT = original
