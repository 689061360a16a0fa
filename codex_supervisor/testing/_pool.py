"""Doubles for :class:`~codex_supervisor.appserver.pool.AppServerPool`'s launch step.

:class:`FakeAppServerLauncher` stands in for
:func:`~codex_supervisor.appserver.pool.launch_app_server`: each launch is a
:class:`FakeServerProcess` (an asyncio future, no process) that exits when
stopped or told to crash. The pool's bookkeeping (single flight, stopping,
archives, tokens, reaping) then runs exactly as with real servers, thousands of
times a second, with homes and archives still real files.
"""

from __future__ import annotations

import asyncio
import itertools
import signal
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Final

from ..appserver.pool import Launched, LaunchRequest
from ..process import StopPolicy

__all__ = ["FakeAppServerLauncher", "FakeServerProcess", "OffsetClock"]

_DEFAULT_STOP: Final = StopPolicy()
_PIDS = itertools.count(4_000_000)  # beyond any real pid, never signalled


class FakeServerProcess:
    """An app-server that is only a future: it exits when stopped or crashed."""

    def __init__(self) -> None:
        self.pid = next(_PIDS)
        self.exit: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        #: The first signal of every stop, in order.
        self.signals: list[signal.Signals] = []

    @property
    def running(self) -> bool:
        """Whether it has not exited."""
        return not self.exit.done()

    @property
    def returncode(self) -> int | None:
        """Its exit code once exited."""
        return self.exit.result() if self.exit.done() else None

    def crash(self, code: int = -9) -> None:
        """Exit now with ``code`` (as if killed from outside)."""
        if not self.exit.done():
            self.exit.set_result(code)

    async def wait_group(self) -> int:
        """Wait until it exits."""
        return await asyncio.shield(self.exit)

    async def stop(
        self, policy: StopPolicy = _DEFAULT_STOP, *, first_signal: signal.Signals = signal.SIGINT
    ) -> int:
        """Exit with minus ``first_signal`` after one event-loop turn."""
        del policy
        self.signals.append(first_signal)
        await asyncio.sleep(0)
        self.crash(-int(first_signal))
        return await self.wait_group()


class FakeAppServerLauncher:
    """A :class:`~codex_supervisor.appserver.pool.Launcher` that records and counts.

    Set ``delay`` (seconds) or ``gate`` (an event to wait for) to hold launches
    open, ``fail`` to make them raise. ``shared_home`` turns True if a launch
    ever gets the home of a process still running.
    """

    def __init__(self) -> None:
        self.requests: list[LaunchRequest] = []
        self.processes: list[FakeServerProcess] = []
        self.delay = 0.0
        self.fail: BaseException | None = None
        self.gate: asyncio.Event | None = None
        self.live_homes: set[Path] = set()
        self.shared_home = False

    async def __call__(self, request: LaunchRequest) -> Launched:
        """Record ``request`` and return a running fake server."""
        self.requests.append(request)
        if self.gate is not None:
            await self.gate.wait()
        if self.delay:
            await asyncio.sleep(self.delay)
        if self.fail is not None:
            raise self.fail
        if request.home in self.live_homes:
            self.shared_home = True
        self.live_homes.add(request.home)
        process = FakeServerProcess()
        process.exit.add_done_callback(lambda _: self.live_homes.discard(request.home))
        self.processes.append(process)
        port = 40_000 + len(self.processes)
        return Launched(
            process=process, ws_url=f"ws://127.0.0.1:{port}", http_url=f"http://127.0.0.1:{port}"
        )


class OffsetClock:
    """A :class:`~codex_supervisor.clock.Clock` in real time plus an offset tests move.

    ``advance(seconds)`` makes idle entries look idle (or leases look old)
    without waiting; sleeping still sleeps for real, so background tasks run.
    Unlike :class:`~codex_supervisor.testing.FakeClock` (virtual time, sleeps
    that only the test ends), it suits code that also waits on the loop's own
    timers, such as ``asyncio.timeout`` around a real launch.
    """

    def __init__(self) -> None:
        self.offset = 0.0

    def monotonic(self) -> float:
        """Monotonic seconds, shifted by the offset."""
        return time.monotonic() + self.offset

    def now(self) -> datetime:
        """The aware UTC time, shifted by the offset."""
        return datetime.now(UTC) + timedelta(seconds=self.offset)

    async def sleep(self, seconds: float) -> None:
        """Sleep for real."""
        await asyncio.sleep(seconds)

    def advance(self, seconds: float) -> None:
        """Move the clock forward by ``seconds``."""
        self.offset += seconds
