"""Drive a terminal program (such as the Codex TUI) under a pseudo-terminal."""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
import select
import signal
import struct
import subprocess
import termios
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Self

__all__ = ["PtyProcess"]

# Terminal queries the Codex TUI sends at start-up and waits on. Answering the
# cursor-position report is enough for it to proceed (CODEX_FACTS.md §5).
_CURSOR_QUERY = b"\x1b[6n"
_CURSOR_REPLY = b"\x1b[1;1R"
_ANSI = re.compile(
    rb"\x1b\[[0-?]*[ -/]*[@-~]|\x1b\][^\x07\x1b]*(?:\x07|\x1b\\)|\x1b[()][A-Za-z0-9]|\x1b[=>]"
)


def _wait(predicate: Callable[[], bool], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.02)
    return True


def _become_terminal_owner() -> None:  # pragma: no cover - runs in the child
    # After setsid() (start_new_session), opening nothing makes the pty our
    # controlling terminal; TIOCSCTTY on stdin does, so the TUI can open
    # /dev/tty and receive terminal signals like a program started by a shell.
    fcntl.ioctl(0, termios.TIOCSCTTY, 0)


class PtyProcess:
    """A child process whose stdin/stdout/stderr is a fresh pseudo-terminal.

    A reader thread collects everything the child writes and answers the
    cursor-position query: row 1, column 1, or what ``cursor_position`` makes
    of the output so far (a terminal emulator's cursor, 1-based ``(row,
    column)``, so an inline TUI starts below what is already on the screen).
    ``expect`` waits (with a deadline) for text to appear in the output with
    escape sequences stripped.
    """

    def __init__(
        self,
        argv: Sequence[str | os.PathLike[str]],
        *,
        env: Mapping[str, str],
        cwd: Path | str | None = None,
        rows: int = 40,
        cols: int = 120,
        cursor_position: Callable[[bytes], tuple[int, int]] | None = None,
    ) -> None:
        self._cursor_position = cursor_position
        #: What ``cursor_position`` raised (the query was answered with row 1, column 1).
        self.cursor_errors: list[Exception] = []
        master, slave = os.openpty()
        fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))
        try:
            self.proc = subprocess.Popen(
                [os.fspath(a) for a in argv],
                stdin=slave,
                stdout=slave,
                stderr=slave,
                env=dict(env),
                cwd=cwd,
                start_new_session=True,
                preexec_fn=_become_terminal_owner,  # noqa: PLW1509 - only an ioctl
                close_fds=True,
            )
        except BaseException:
            os.close(master)
            raise
        finally:
            os.close(slave)
        self._master = master
        self._buf = bytearray()
        self._cond = threading.Condition()
        self._eof = False
        self._closing = threading.Event()
        self._reader = threading.Thread(target=self._read_loop, name="pty-reader", daemon=True)
        self._reader.start()

    @property
    def pid(self) -> int:
        """The child's PID."""
        return self.proc.pid

    def _read_loop(self) -> None:
        while True:
            # A bounded select lets close() stop the reader even when a
            # grandchild still holds the terminal open.
            if self._closing.is_set():
                chunk = b""
            elif not select.select([self._master], [], [], 0.1)[0]:
                continue
            else:
                try:
                    chunk = os.read(self._master, 65536)
                except OSError:  # EIO: every slave end is closed
                    chunk = b""
            if not chunk:
                with self._cond:
                    self._eof = True
                    self._cond.notify_all()
                return
            with self._cond:
                self._buf.extend(chunk)
                self._cond.notify_all()
            if _CURSOR_QUERY in chunk:
                reply = _CURSOR_REPLY
                if self._cursor_position is not None:
                    try:
                        row, column = self._cursor_position(self.raw_output)
                        reply = f"\x1b[{row};{column}R".encode()
                    except Exception as exc:  # noqa: BLE001 - the reader must go on
                        self.cursor_errors.append(exc)
                with contextlib.suppress(OSError):
                    os.write(self._master, reply)

    @property
    def raw_output(self) -> bytes:
        """Everything the child wrote so far, escape sequences included."""
        with self._cond:
            return bytes(self._buf)

    @property
    def text(self) -> str:
        """The output so far with escape sequences removed."""
        return _ANSI.sub(b"", self.raw_output).decode("utf-8", "replace")

    def write(self, data: str | bytes) -> None:
        """Type ``data`` into the terminal."""
        os.write(self._master, data.encode() if isinstance(data, str) else data)

    def expect(self, pattern: str, timeout: float = 30.0) -> re.Match[str]:
        """Wait until ``pattern`` (a regex) appears in :attr:`text`."""
        deadline = time.monotonic() + timeout
        regex = re.compile(pattern)
        with self._cond:
            while True:
                found = regex.search(_ANSI.sub(b"", bytes(self._buf)).decode("utf-8", "replace"))
                if found:
                    return found
                remaining = deadline - time.monotonic()
                if remaining <= 0 or self._eof:
                    tail = self.text[-2000:]
                    state = "exited" if self._eof else "timed out"
                    raise TimeoutError(f"{pattern!r} not seen ({state}); output tail:\n{tail}")
                self._cond.wait(min(remaining, 0.2))

    def submit(self, text: str, *, received: Callable[[], bool], timeout: float = 60.0) -> None:
        """Type ``text`` and Enter, again if need be, until ``received()`` is true.

        A TUI's composer may still be settling when the first keys arrive, so
        each try waits for the text to be echoed before Enter, then up to 10 s
        for ``received`` (e.g. ``lambda: backend.received(text)``).
        """
        deadline = time.monotonic() + timeout
        while not received():
            if time.monotonic() >= deadline:
                raise TimeoutError(f"{text!r} not received; output tail:\n{self.text[-2000:]}")
            shown = self.text.count(text)
            self.write(text)
            _wait(lambda: self.text.count(text) > shown, 5.0)  # noqa: B023 - used at once
            self.write("\r")
            _wait(received, 10.0)

    def send_signal(self, sig: signal.Signals) -> None:
        """Send ``sig`` to the child if it still runs."""
        if self.proc.poll() is None:
            self.proc.send_signal(sig)

    def wait(self, timeout: float = 10.0) -> int:
        """Wait for the child to exit and return its code (negative = signal)."""
        return self.proc.wait(timeout)

    def close(self, timeout: float = 5.0) -> int:
        """Stop the child (SIGTERM, then SIGKILL), reap it and close the pty."""
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        self._closing.set()
        self._reader.join(timeout=2)
        with contextlib.suppress(OSError):
            os.close(self._master)
        return self.proc.returncode

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
