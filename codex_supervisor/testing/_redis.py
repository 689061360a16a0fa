"""A real ``redis-server`` on 127.0.0.1, for tests and benchmarks of the Redis backends."""

from __future__ import annotations

import contextlib
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

from ..errors import ConfigError
from ._server import LocalServer

__all__ = ["RedisServer"]


class RedisServer(LocalServer):
    """``redis-server`` (the system's binary) on 127.0.0.1 at a free port, in a temp folder.

    Nothing is persisted (no RDB, no AOF). :attr:`url` is ``redis://127.0.0.1:PORT/0``.
    :meth:`stop` ends it (SIGTERM, then SIGKILL); :meth:`start` again serves the same
    port, as a server restarting would. Use it as a context manager.
    """

    def __init__(self, binary: str = "redis-server") -> None:
        found = shutil.which(binary)
        if found is None:
            raise ConfigError(
                f"{binary!r} is not on PATH: install Redis (scripts/system-packages does)"
            )
        super().__init__()
        self.binary = found
        self._dir = Path(tempfile.mkdtemp(prefix="codex-supervisor-redis-"))

    @property
    def url(self) -> str:
        """The server's URL, database 0."""
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, timeout: float = 20.0) -> None:
        """Start the server and wait until it answers PING."""
        if self._proc is not None and self._proc.poll() is None:
            return
        log = (self._dir / "redis.log").open("ab")
        with log:
            self._proc = subprocess.Popen(
                [self.binary, "--bind", "127.0.0.1", "--port", str(self.port), "--save", "",
                 "--appendonly", "no", "--dir", str(self._dir), "--protected-mode", "yes"],
                stdin=subprocess.DEVNULL, stdout=log, stderr=log,
            )  # fmt: skip
        deadline = time.monotonic() + timeout
        while not self._pong():
            if self._proc.poll() is not None:
                tail = (self._dir / "redis.log").read_text(errors="replace")[-2000:]
                raise RuntimeError(f"redis-server exited ({self._proc.returncode}):\n{tail}")
            if time.monotonic() > deadline:
                self.stop()
                raise TimeoutError(f"redis-server did not answer on port {self.port}")
            time.sleep(0.02)

    def pause(self) -> None:
        """Stop the server's process (SIGSTOP): it keeps its data but answers nobody."""
        if self._proc is not None:
            self._proc.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        """Let a paused server go on (SIGCONT)."""
        if self._proc is not None:
            self._proc.send_signal(signal.SIGCONT)

    def _pong(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as conn:
                conn.sendall(b"PING\r\n")
                return conn.recv(16).startswith(b"+PONG")
        except OSError:
            return False

    def _cleanup(self) -> None:
        with contextlib.suppress(OSError):
            shutil.rmtree(self._dir)
