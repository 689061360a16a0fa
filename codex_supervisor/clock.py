"""Time as the library sees it: a replaceable clock.

Deadlines always come from :meth:`Clock.monotonic`; wall-clock time (aware UTC)
is used only for quota reset times, which the backend states as epochs.
"""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime
from typing import Protocol, final, runtime_checkable

__all__ = ["Clock", "SystemClock"]


@runtime_checkable
class Clock(Protocol):
    """What the library needs to know about time; tests pass a fake."""

    def monotonic(self) -> float:
        """Seconds on a clock that never goes backwards, for deadlines."""
        ...

    def now(self) -> datetime:
        """The current wall-clock time as an aware UTC datetime."""
        ...

    async def sleep(self, seconds: float) -> None:
        """Suspend the calling task for ``seconds``."""
        ...


@final
class SystemClock:
    """The real clock: ``time.monotonic``, ``datetime.now(UTC)``, ``asyncio.sleep``."""

    __slots__ = ()

    def monotonic(self) -> float:
        """Seconds from ``time.monotonic``."""
        return time.monotonic()

    def now(self) -> datetime:
        """The current time in UTC."""
        return datetime.now(UTC)

    async def sleep(self, seconds: float) -> None:
        """Sleep with ``asyncio.sleep`` (never negative)."""
        await asyncio.sleep(max(0.0, seconds))

    def __repr__(self) -> str:
        return "SystemClock()"
