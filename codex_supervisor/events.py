"""Typed records of what a supervised run does, for embedders and the CLI.

Every step of :class:`~codex_supervisor.supervisor.Supervisor` emits one of
these to an :data:`EventSink` (any callable taking an :class:`Event`). Events
are plain frozen values with a stable ``name``; they never carry a token, and
their ``message`` is a human sentence fit for a terminal.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import datetime
from typing import ClassVar, final

import attrs

__all__ = [
    "AccountSelected",
    "ChildExited",
    "ChildLaunched",
    "CodexVersionUntested",
    "CollectingSink",
    "Event",
    "EventSink",
    "OccupancyLost",
    "PrewarmReady",
    "PrewarmStarted",
    "QuotaUpdated",
    "Resumed",
    "Rotating",
    "RotationBlocked",
    "SessionBound",
    "WaitingForReset",
    "log_sink",
]

log = logging.getLogger(__name__)


@attrs.frozen(kw_only=True)
class Event:
    """Base of every event: when it happened and a stable name."""

    name: ClassVar[str] = "event"
    at: datetime

    @property
    def message(self) -> str:
        """A one-line human description."""
        return self.name


@attrs.frozen(kw_only=True)
class AccountSelected(Event):
    """An account was chosen to run Codex on."""

    name: ClassVar[str] = "account_selected"
    account: str
    reason: str

    @property
    def message(self) -> str:
        return f"using account {self.account}: {self.reason}"


@attrs.frozen(kw_only=True)
class ChildLaunched(Event):
    """Codex was started on an account.

    ``argv`` is Codex's command line without the program and without the
    ``-c`` flags that give it the session hooks (see :mod:`.hooks`).
    """

    name: ClassVar[str] = "child_launched"
    account: str
    pid: int
    argv: tuple[str, ...]

    @property
    def message(self) -> str:
        return f"started codex (pid {self.pid}) on {self.account}"


@attrs.frozen(kw_only=True)
class SessionBound(Event):
    """The child's session (rollout) was identified."""

    name: ClassVar[str] = "session_bound"
    account: str
    session_id: str
    path: str
    reason: str

    @property
    def message(self) -> str:
        return f"following session {self.session_id}"


@attrs.frozen(kw_only=True)
class QuotaUpdated(Event):
    """New quota data for an account."""

    name: ClassVar[str] = "quota_updated"
    account: str
    source: str
    summary: str

    @property
    def message(self) -> str:
        return f"{self.account}: {self.summary} ({self.source})"


@attrs.frozen(kw_only=True)
class PrewarmStarted(Event):
    """Choosing and checking a successor began in the background."""

    name: ClassVar[str] = "prewarm_started"
    account: str
    reason: str

    @property
    def message(self) -> str:
        return f"{self.account} is running low ({self.reason}); preparing a successor"


@attrs.frozen(kw_only=True)
class PrewarmReady(Event):
    """A successor is chosen, its quota checked and its home prepared."""

    name: ClassVar[str] = "prewarm_ready"
    account: str
    successor: str

    @property
    def message(self) -> str:
        return f"successor ready: {self.successor}"


@attrs.frozen(kw_only=True)
class Rotating(Event):
    """The child is being moved to another account."""

    name: ClassVar[str] = "rotating"
    from_account: str
    to_account: str
    session_id: str | None
    reason: str
    immediate: bool

    @property
    def message(self) -> str:
        when = "now" if self.immediate else "at the turn boundary"
        session = f" session {self.session_id}" if self.session_id else ""
        return f"rotating {self.from_account} -> {self.to_account} {when}:{session} ({self.reason})"


@attrs.frozen(kw_only=True)
class Resumed(Event):
    """The same session continues on another account."""

    name: ClassVar[str] = "resumed"
    account: str
    session_id: str
    pid: int

    @property
    def message(self) -> str:
        return f"resumed session {self.session_id} on {self.account} (pid {self.pid})"


@attrs.frozen(kw_only=True)
class CodexVersionUntested(Event):
    """The Codex CLI is newer than every release the library was tested with.

    It is never refused: it runs with the newest tested release's rules
    (argv grammar, flags). Emitted once per run, before the first launch.
    """

    name: ClassVar[str] = "codex_version_untested"
    version: str
    newest_tested: str

    @property
    def message(self) -> str:
        return (
            f"Codex {self.version} is newer than the newest tested release "
            f"({self.newest_tested}); running it with that release's rules"
        )


@attrs.frozen(kw_only=True)
class RotationBlocked(Event):
    """The child cannot be moved: which conversation to resume is not known for sure.

    Emitted once per distinct reason, e.g. after ``/new``, ``/resume`` or
    ``/fork`` inside the TUI, when Codex writes two sessions at once, or when
    no session could be bound at all. The child keeps running on its account
    (it may still hit the account's limit); rotation comes back by itself
    once the evidence names one session again. ``reason`` reads after
    "because".
    """

    name: ClassVar[str] = "rotation_blocked"
    account: str
    session_id: str | None
    reason: str

    @property
    def message(self) -> str:
        session = f"session {self.session_id}" if self.session_id else "this run"
        return f"rotation is off for {session} on {self.account} because {self.reason}"


@attrs.frozen(kw_only=True)
class WaitingForReset(Event):
    """Every account is blocked; waiting for the earliest reset."""

    name: ClassVar[str] = "waiting_for_reset"
    until: datetime
    seconds_left: float
    reason: str

    @property
    def message(self) -> str:
        left = int(max(0.0, self.seconds_left))
        hours, rest = divmod(left, 3600)
        minutes, seconds = divmod(rest, 60)
        clock = f"{hours}h{minutes:02d}m{seconds:02d}s" if hours else f"{minutes}m{seconds:02d}s"
        return f"every account is blocked; waiting {clock} (until {self.until:%H:%M:%S} UTC)"


@attrs.frozen(kw_only=True)
class ChildExited(Event):
    """The child exited (on its own, or stopped by the supervisor)."""

    name: ClassVar[str] = "child_exited"
    account: str
    returncode: int
    stopped: bool

    @property
    def message(self) -> str:
        how = "was stopped" if self.stopped else "exited"
        return f"codex on {self.account} {how} with status {self.returncode}"


@attrs.frozen(kw_only=True)
class OccupancyLost(Event):
    """The running child's occupancy lease on its account was lost, for good.

    Other sessions no longer count this child as an occupant of the account
    (for a ``remove``, a quota probe), or the account left the pool while
    the lease had lapsed (the supervisor suspended past its TTL). The child
    is not stopped for it; ``reason`` says what the lease backend reported.
    """

    name: ClassVar[str] = "occupancy_lost"
    account: str
    reason: str

    @property
    def message(self) -> str:
        return f"the occupancy lease of {self.account} was lost: {self.reason}"


#: Receives every event; must not block (it runs on the supervisor's loop).
EventSink = Callable[[Event], None]


def log_sink(event: Event) -> None:
    """An EventSink that logs each event at INFO under its stable name."""
    log.info("%s: %s", event.name, event.message)


@final
@attrs.define
class CollectingSink:
    """An EventSink that keeps every event (for tests and summaries)."""

    events: list[Event] = attrs.field(factory=list)

    def __call__(self, event: Event) -> None:
        self.events.append(event)

    def of(self, kind: type[Event]) -> list[Event]:
        """The events of one type, in order."""
        return [e for e in self.events if isinstance(e, kind)]

    @property
    def names(self) -> list[str]:
        """The stable names of every event, in order."""
        return [e.name for e in self.events]
