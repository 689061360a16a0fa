"""PtyProcess runs a program on a real pseudo-terminal it controls."""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path

import pytest

from codex_supervisor.testing import PtyProcess

_ECHO = r"""
import os, sys, termios, tty
print("tty:", os.isatty(0), os.isatty(1), flush=True)
fd = os.open("/dev/tty", os.O_RDWR)  # works only with a controlling terminal
saved = termios.tcgetattr(fd)
tty.setraw(fd)
os.write(fd, b"\x1b[6n")
reply = b""
while not reply.endswith(b"R"):
    reply += os.read(fd, 1)
termios.tcsetattr(fd, termios.TCSADRAIN, saved)
os.close(fd)
print("got:", reply[1:].decode(), flush=True)
for line in sys.stdin:
    print("echo:", line.strip(), flush=True)
"""


def _env() -> dict[str, str]:
    return {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "TERM": "xterm-256color"}


def test_child_gets_a_controlling_terminal_and_cursor_reply(tmp_path: Path) -> None:
    """The child sees a tty, can open /dev/tty, and its cursor query is answered."""
    with PtyProcess([sys.executable, "-c", _ECHO], env=_env(), cwd=tmp_path) as proc:
        proc.expect(r"tty: True True")
        proc.expect(r"got: .*1;1R")  # the reply was read as input by the child
        proc.write("hello\r")
        proc.expect(r"echo: hello")
        proc.send_signal(signal.SIGINT)
        assert proc.wait(5) != 0
    assert "hello" in proc.text
    assert b"\x1b[6n" in proc.raw_output


def test_expect_times_out_with_the_output_tail() -> None:
    """expect raises TimeoutError naming the pattern and showing the output."""
    with PtyProcess([sys.executable, "-c", "print('only this')"], env=_env()) as proc:
        with pytest.raises(TimeoutError, match="never") as info:
            proc.expect("never", timeout=5)
        assert "only this" in str(info.value)


def test_close_stops_a_child_that_ignores_sigterm() -> None:
    """close escalates to SIGKILL and reaps a child that ignores SIGTERM."""
    code = (
        "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
        "print('ready', flush=True); time.sleep(60)"
    )
    proc = PtyProcess([sys.executable, "-c", code], env=_env())
    proc.expect("ready")
    assert proc.close(timeout=0.5) == -signal.SIGKILL
    assert proc.proc.poll() is not None
