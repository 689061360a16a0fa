"""What the local test servers (Redis, S3) share: a free port, a process, a clean stop."""

from __future__ import annotations

import signal
import socket
import subprocess
from types import TracebackType
from typing import Self

__all__ = ["LocalServer", "free_port"]


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class LocalServer:
    """A server process on 127.0.0.1 at :attr:`port`: started by :meth:`start`, a context manager.

    Subclasses start ``self._proc`` in :meth:`start` and clean their files
    in :meth:`_cleanup`; :meth:`stop` (SIGTERM, then SIGKILL after 5 s) is
    idempotent.
    """

    def __init__(self) -> None:
        self.port = free_port()
        self._proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        raise NotImplementedError

    def stop(self) -> None:
        """Stop the server (SIGTERM, then SIGKILL after 5 s); idempotent."""
        proc, self._proc = self._proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGCONT)  # (a paused one could not end)
        proc.terminate()
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

    def _cleanup(self) -> None:
        """Remove what the server left on disk (after :meth:`stop`)."""

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
        self._cleanup()
