"""A virtual :class:`~codex_supervisor.clock.Clock` for deterministic tests.

:class:`FakeClock` keeps its own monotonic seconds and its own aware-UTC wall
time; both move only when the clock is advanced, never with real time, so a
test's outcome cannot depend on how fast or loaded the machine is.

``sleep`` never sleeps for real. It has two modes:

- **manual** (the default): a sleeping task stays suspended until the test moves
  the clock with :meth:`FakeClock.advance` to or past its deadline. Use
  :meth:`FakeClock.wait_for_sleepers` to wait until the code under test is
  sleeping, then advance.
- **autojump** (``FakeClock(autojump=True)``): like trio's ``autojump_threshold=0``.
  While any task sleeps, the clock watches the event loop; once ``idle_turns``
  consecutive loop turns pass with no clock activity (no advance, no sleep
  started, woken or cancelled), it advances to the earliest pending deadline.
  Time thus runs as fast as the code under test can go, and sleepers still wake
  in deadline order. A task blocked on I/O or a thread counts as idle, as in trio.

Only waits made through ``clock.sleep`` are virtual: ``asyncio.sleep``,
``asyncio.timeout`` and ``asyncio.wait_for`` run on the event loop's own real
clock, which this class cannot move. Code under test must take its clock as a
parameter and call ``clock.sleep`` for every wait a test should control.

One clock serves one event loop at a time.

:class:`~codex_supervisor.testing.OffsetClock` is the other clock shipped here:
real time plus an offset, with real sleeps, for code whose background tasks must
keep running on the loop's own timers while a test makes things look older.
"""

from __future__ import annotations

import asyncio
import bisect
import itertools
import math
from datetime import UTC, datetime, timedelta
from typing import ClassVar, Final, final

__all__ = ["FakeClock"]

#: The wall-clock time a FakeClock starts at unless told otherwise.
_DEFAULT_START: Final = datetime(2026, 1, 1, tzinfo=UTC)

# One pending sleep: (deadline, sequence, future). The sequence is unique, so
# tuples order by deadline then by arrival and never compare their futures.
_Sleeper = tuple[float, int, "asyncio.Future[None]"]


@final
class FakeClock:
    """A :class:`~codex_supervisor.clock.Clock` whose time moves only when advanced.

    ``start`` is the initial wall-clock time (aware; stored in UTC), by default
    2026-01-01T00:00:00Z; pass ``datetime.now(UTC)`` when the code under test
    compares ``now()`` with real timestamps such as file mtimes.
    ``monotonic_start`` is the initial :meth:`monotonic` reading. ``autojump``
    and ``idle_turns`` choose how :meth:`sleep` waits (see the module docstring).
    """

    DEFAULT_START: ClassVar[datetime] = _DEFAULT_START

    def __init__(
        self,
        start: datetime | None = None,
        *,
        monotonic_start: float = 1000.0,
        autojump: bool = False,
        idle_turns: int = 100,
    ) -> None:
        if start is not None and start.utcoffset() is None:
            raise ValueError(f"FakeClock start must be timezone-aware, got {start!r}")
        if not math.isfinite(monotonic_start):
            raise ValueError(f"monotonic_start must be finite, got {monotonic_start!r}")
        if idle_turns < 1:
            raise ValueError(f"idle_turns must be >= 1, got {idle_turns!r}")
        self._monotonic = float(monotonic_start)
        # now() is derived from these so that many small jumps never drift the
        # wall clock away from the monotonic one through rounding.
        self._wall_base = (start if start is not None else _DEFAULT_START).astimezone(UTC)
        self._monotonic_base = self._monotonic
        self._autojump = autojump
        self._idle_turns = idle_turns
        self._pending: list[_Sleeper] = []
        self._sequence = itertools.count()
        # Bumped on every advance and every sleep started, woken or cancelled:
        # the autojump watcher only jumps after a run of turns without a bump.
        self._activity = 0
        self._watch_loop: asyncio.AbstractEventLoop | None = None
        #: Every duration passed to :meth:`sleep`, in call order (zero and
        #: negative ones included), so tests can check backoff or count polls.
        self.sleeps: list[float] = []

    @property
    def autojump(self) -> bool:
        """Whether sleeping moves the clock by itself once the loop is idle."""
        return self._autojump

    def monotonic(self) -> float:
        """The virtual monotonic seconds."""
        return self._monotonic

    def now(self) -> datetime:
        """The virtual wall-clock time, an aware UTC datetime."""
        return self._wall_base + timedelta(seconds=self._monotonic - self._monotonic_base)

    @property
    def sleepers(self) -> tuple[float, ...]:
        """The monotonic deadlines of the tasks sleeping now, earliest first."""
        self._prune()
        return tuple(deadline for deadline, _, _ in self._pending)

    def advance(self, seconds: float) -> None:
        """Move both clocks forward by ``seconds`` and wake every sleeper now due.

        Due sleepers wake in deadline order (ties in the order they slept). It
        is one jump: a task woken here that sleeps again measures from the new
        time, even if the jump went past its next deadline too.
        """
        if not (math.isfinite(seconds) and seconds >= 0):
            raise ValueError(f"a FakeClock only moves forward, got advance({seconds!r})")
        self._jump_to(self._monotonic + seconds)

    def set_now(self, when: datetime) -> None:
        """Set the wall-clock time (forward or back, like an NTP step); monotonic stays."""
        if when.utcoffset() is None:
            raise ValueError(f"set_now needs a timezone-aware datetime, got {when!r}")
        self._wall_base = when.astimezone(UTC)
        self._monotonic_base = self._monotonic

    async def sleep(self, seconds: float) -> None:
        """Suspend until virtual time reaches now + ``seconds``; never sleeps for real.

        A zero or negative duration yields to the event loop once, like
        ``asyncio.sleep(0)``. Cancelling a sleeping task removes its sleeper.
        """
        self.sleeps.append(seconds)
        if not seconds > 0:  # also NaN, which SystemClock would clamp too
            await asyncio.sleep(0)
            return
        loop = asyncio.get_running_loop()
        sleeper: _Sleeper = (self._monotonic + seconds, next(self._sequence), loop.create_future())
        bisect.insort(self._pending, sleeper)
        self._activity += 1
        if self._autojump and self._watch_loop is not loop:
            self._watch_loop = loop
            loop.call_soon(self._watch, self._activity, 0)
        try:
            await sleeper[2]
        finally:
            if sleeper in self._pending:  # cancelled before it was due
                self._pending.remove(sleeper)
                self._activity += 1

    async def wait_for_sleepers(self, n: int = 1, *, max_turns: int = 10_000) -> None:
        """Yield to the event loop until at least ``n`` tasks sleep on this clock.

        The bound is in loop turns, not seconds, so it means the same on any
        machine; past ``max_turns`` it raises :class:`RuntimeError`. Code that
        waits on a thread or a socket before it sleeps may need more turns.
        """
        for _ in range(max_turns):
            if len(self.sleepers) >= n:
                return
            await asyncio.sleep(0)
        if len(self.sleepers) >= n:
            return
        raise RuntimeError(
            f"{len(self.sleepers)} of {n} expected sleepers after {max_turns} event-loop turns"
        )

    def _jump_to(self, target: float) -> None:
        self._monotonic = target
        self._activity += 1
        self._prune()
        # Resolving the futures in deadline order queues the tasks' wake-ups in
        # that order, so they run in that order on the next loop turn.
        while self._pending and self._pending[0][0] <= target:
            _, _, future = self._pending.pop(0)
            future.set_result(None)

    def _prune(self) -> None:
        # A task cancelled while sleeping cancels its future at once but only
        # leaves the list when it next runs; it must not count, nor be jumped to.
        if any(future.done() for _, _, future in self._pending):
            self._pending = [s for s in self._pending if not s[2].done()]

    def _watch(self, seen: int, idle: int) -> None:
        # Runs once per loop turn (call_soon queues for the next turn) while
        # anything sleeps; it jumps only after idle_turns turns without activity.
        loop = asyncio.get_running_loop()
        if loop is not self._watch_loop:  # a watcher left over on a loop we moved away from
            return
        self._prune()
        if not self._pending or math.isinf(self._pending[0][0]):
            # Nobody sleeps, or everyone sleeps forever: nothing to jump to. The
            # next finite sleep starts a new watcher.
            self._watch_loop = None
            return
        if self._activity != seen:
            seen, idle = self._activity, 0
        else:
            idle += 1
        if idle >= self._idle_turns:
            self._jump_to(max(self._pending[0][0], self._monotonic))
            seen, idle = self._activity, 0
        loop.call_soon(self._watch, seen, idle)

    def __repr__(self) -> str:
        return (
            f"FakeClock(monotonic={self._monotonic!r}, now={self.now().isoformat()!r}, "
            f"sleepers={len(self.sleepers)}, autojump={self._autojump!r})"
        )
