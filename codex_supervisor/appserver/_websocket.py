"""A minimal WebSocket client transport (RFC 6455) for ``codex app-server --listen ws://``.

Just enough for the app-server's JSON-RPC: the opening handshake, masked text
frames out, text/continuation/ping/close frames in, no extensions. Each
message becomes one line of a :class:`asyncio.StreamReader`, and each line
written becomes one text frame, so the line-oriented client runs unchanged on
it. Only ``ws://`` on a local address: the app-server binds loopback, and
``wss://`` would need a TLS stack this library does not otherwise carry.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import os
import struct
from urllib.parse import urlsplit

from ..errors import ConfigError, TransportClosed

__all__ = ["WebSocketWriter", "open_websocket"]

_GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
_MAX_MESSAGE = 64 * 1024 * 1024
_TEXT, _BINARY, _CONT, _CLOSE, _PING, _PONG = 0x1, 0x2, 0x0, 0x8, 0x9, 0xA


def _frame(opcode: int, payload: bytes) -> bytes:
    # Client frames are always masked (RFC 6455 §5.3).
    mask = os.urandom(4)
    size = len(payload)
    if size < 126:
        header = struct.pack("!BB", 0x80 | opcode, 0x80 | size)
    elif size < 1 << 16:
        header = struct.pack("!BBH", 0x80 | opcode, 0x80 | 126, size)
    else:
        header = struct.pack("!BBQ", 0x80 | opcode, 0x80 | 127, size)
    masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    return header + mask + masked


class WebSocketWriter:
    """Writes each complete line as one text frame; ``close`` sends a close frame."""

    def __init__(self, writer: asyncio.StreamWriter, pump: asyncio.Task[None]) -> None:
        self._writer = writer
        self.pump = pump  # the reading task; its owner cancels and awaits it
        self._pending = bytearray()
        self._closed = False

    def write(self, data: bytes) -> None:
        """Queue ``data``; every newline-terminated line goes out as a frame."""
        if self._closed:
            raise ConnectionError("the websocket is closed")
        self._pending += data
        while (end := self._pending.find(b"\n")) >= 0:
            line = bytes(self._pending[:end])
            del self._pending[: end + 1]
            self._writer.write(_frame(_TEXT, line))

    async def drain(self) -> None:
        """Wait until the socket's buffer has room."""
        await self._writer.drain()

    def send_control(self, opcode: int, payload: bytes = b"") -> None:
        """Send a control frame (pong, close) unless already closed."""
        if not self._closed and not self._writer.is_closing():
            self._writer.write(_frame(opcode, payload[:125]))

    def close(self) -> None:
        """Send a close frame and close the connection; stop reading."""
        if self._closed:
            return
        with contextlib.suppress(Exception):
            self.send_control(_CLOSE, struct.pack("!H", 1000))
        self._closed = True
        self._writer.close()
        self.pump.cancel()


async def _handshake(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, host: str, path: str
) -> None:
    key = base64.b64encode(os.urandom(16)).decode()
    request = (
        f"GET {path} HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\n"
        f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
    )
    writer.write(request.encode())
    await writer.drain()
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    if " 101 " not in lines[0] + " ":
        raise TransportClosed(f"websocket upgrade refused: {lines[0]!r}")
    headers = {
        name.strip().lower(): value.strip()
        for name, _, value in (line.partition(":") for line in lines[1:] if line)
    }
    expected = base64.b64encode(hashlib.sha1((key + _GUID).encode()).digest()).decode()  # noqa: S324 - the protocol's own hash
    if headers.get("sec-websocket-accept") != expected:
        raise TransportClosed("websocket upgrade answered with a wrong Sec-WebSocket-Accept")


async def _pump(
    source: asyncio.StreamReader, sink: asyncio.StreamReader, writer: WebSocketWriter
) -> None:
    message = bytearray()
    try:
        while True:
            first, second = await source.readexactly(2)
            opcode, fin = first & 0x0F, bool(first & 0x80)
            size = second & 0x7F
            if size == 126:
                (size,) = struct.unpack("!H", await source.readexactly(2))
            elif size == 127:
                (size,) = struct.unpack("!Q", await source.readexactly(8))
            mask = await source.readexactly(4) if second & 0x80 else b""
            if size > _MAX_MESSAGE:
                break
            payload = await source.readexactly(size)
            if mask:
                payload = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
            if opcode == _PING:
                writer.send_control(_PONG, payload)
            elif opcode == _CLOSE:
                writer.send_control(_CLOSE, payload[:2])
                break
            elif opcode in (_TEXT, _BINARY, _CONT):
                message += payload
                if len(message) > _MAX_MESSAGE:
                    break
                if fin:
                    sink.feed_data(bytes(message) + b"\n")
                    message.clear()
    except (asyncio.IncompleteReadError, ConnectionError, OSError):
        pass
    finally:
        sink.feed_eof()


async def open_websocket(
    url: str,
    *,
    timeout: float = 10.0,  # noqa: ASYNC109 - bounds the connect + handshake only
) -> tuple[asyncio.StreamReader, WebSocketWriter]:
    """Connect to ``ws://host:port/path``; returns a line reader and a line writer."""
    parts = urlsplit(url)
    if parts.scheme != "ws" or not parts.hostname or not parts.port:
        raise ConfigError(f"need a ws://HOST:PORT URL, got {url!r} (wss:// is not supported)")
    try:
        async with asyncio.timeout(timeout):
            reader, raw = await asyncio.open_connection(parts.hostname, parts.port)
            try:
                await _handshake(reader, raw, parts.netloc, parts.path or "/")
            except BaseException:
                raw.close()
                raise
    except (OSError, TimeoutError, asyncio.IncompleteReadError, asyncio.LimitOverrunError) as exc:
        raise TransportClosed(f"cannot open {url}: {exc}") from exc
    lines = asyncio.StreamReader(limit=_MAX_MESSAGE)
    holder: list[WebSocketWriter] = []
    pump = asyncio.create_task(_pump_later(reader, lines, holder), name=f"ws-pump[{url}]")
    writer = WebSocketWriter(raw, pump)
    holder.append(writer)
    return lines, writer


async def _pump_later(
    source: asyncio.StreamReader, sink: asyncio.StreamReader, holder: list[WebSocketWriter]
) -> None:
    await asyncio.sleep(0)  # the writer is registered right after the task is created
    await _pump(source, sink, holder[0])
