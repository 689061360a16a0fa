"""A block of text kept up to date: in place on a terminal, as plain lines elsewhere.

``status --watch`` draws each frame through a :class:`LiveScreen`. On a
terminal it takes the alternate screen (as ``watch`` and ``top`` do), and
rewrites only the rows whose text changed since the last frame; a resize
redraws everything. Lines longer than the terminal is wide are cut (a wrapped
line would shift every row below it), and a frame taller than the terminal
ends with a line saying how many lines did not fit. :meth:`LiveScreen.close`
gives the user's screen back and prints the last frame there, so what was
last seen stays in the scrollback.

Elsewhere (a pipe, a log file) a frame is printed whole, after a blank line,
and only when its text changed: a log of ``status --watch`` holds each new
state once.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import unicodedata
from collections.abc import Callable, Iterator
from typing import TextIO

_ENTER = "\033[?1049h\033[?25l"  # the alternate screen; the cursor hidden
_LEAVE = "\033[?25h\033[?1049l"


def _cut(line: str, columns: int) -> str:
    """``line`` in at most ``columns`` cells: control characters shown as ``?``, wide
    characters (CJK, most emoji) counted as two cells."""
    out: list[str] = []
    used = 0
    for char in line:
        shown = char if char.isprintable() else "?"
        if unicodedata.combining(shown):
            out.append(shown)
            continue
        width = 2 if unicodedata.east_asian_width(shown) in ("W", "F") else 1
        if used + width > columns:
            break
        out.append(shown)
        used += width
    return "".join(out)


def _terminal_size() -> tuple[int, int]:
    size = shutil.get_terminal_size()
    return size.lines, size.columns


class LiveScreen:
    """Frames of lines drawn on ``out``; see the module notes."""

    def __init__(
        self,
        out: TextIO,
        *,
        tty: bool,
        size: Callable[[], tuple[int, int]] = _terminal_size,
    ) -> None:
        self.out = out
        self.tty = tty
        self._size = size
        self._shown: list[str] | None = None  # the rows on the screen now
        self._drawn_size: tuple[int, int] | None = None
        self._last: list[str] | None = None  # the last frame, as given
        self._entered = False
        #: Rows rewritten by the last :meth:`draw` (what "only what changed" measures).
        self.rewritten = 0

    def draw(self, lines: list[str], *, header: str | None = None) -> None:
        """Show ``lines`` as the current frame, under ``header`` (a first line, e.g. the time).

        Elsewhere than on a terminal the header is printed with the frame, and
        a frame whose lines did not change is not printed again.
        """
        if not self.tty:
            if lines != self._last:
                if self._last is not None:
                    self.out.write("\n")
                shown = lines if header is None else [header, "", *lines]
                self.out.write("".join(f"{line}\n" for line in shown))
                self.out.flush()
                self.rewritten = len(shown)
            else:
                self.rewritten = 0
            self._last = list(lines)
            return
        if header is not None:
            lines = [header, "", *lines]
        self._last = list(lines)
        rows, columns = self._size()
        rows, columns = max(rows, 1), max(columns, 2)
        if len(lines) > rows:
            hidden = len(lines) - (rows - 1)
            lines = [*lines[: rows - 1], f"... {hidden} more lines (a taller window shows them)"]
        fitted = [_cut(line, columns - 1) for line in lines]
        parts: list[str] = []
        if not self._entered:
            parts.append(_ENTER)
            self._entered = True
        if self._shown is None or self._drawn_size != (rows, columns):
            parts.append("\033[H\033[2J")  # everything, from a clear screen
            old: list[str] = []
        else:
            old = self._shown
        changed = 0
        for row in range(max(len(fitted), len(old))):
            new = fitted[row] if row < len(fitted) else ""
            if row < len(old) and old[row] == new:
                continue
            if row >= len(old) and not new:
                continue
            parts.append(f"\033[{row + 1};1H\033[2K{new}")
            changed += 1
        self.out.write("".join(parts))
        self.out.flush()
        self._shown = fitted
        self._drawn_size = (rows, columns)
        self.rewritten = changed

    @contextlib.contextmanager
    def suspendable(self) -> Iterator[None]:
        """Ctrl-Z while drawing: the user's screen back before stopping, all redrawn after."""
        if not self.tty:
            yield
            return

        def on_stop(signum: int, frame: object) -> None:  # noqa: ARG001 - a signal handler
            if self._entered:
                self.out.write(_LEAVE)
                self.out.flush()
                self._entered = False
                self._shown = None  # redraw everything when drawing again
            os.kill(os.getpid(), signal.SIGSTOP)

        previous = signal.signal(signal.SIGTSTP, on_stop)
        try:
            yield
        finally:
            signal.signal(signal.SIGTSTP, previous)

    def close(self) -> None:
        """Give the user's screen back, with the last frame printed on it (terminal only)."""
        if not self._entered:
            return
        self._entered = False
        self.out.write(_LEAVE)
        self.out.write("".join(f"{line}\n" for line in self._last or []))
        self.out.flush()
