"""A rotation policy that keeps some accounts for the weekend.

``WeekdayPolicy`` never launches (or rotates to) the accounts named in
``weekend_only`` from Monday to Friday, judged in ``timezone``; on Saturday and
Sunday they are ordinary members of the pool. It shows the two override points
a policy that forbids accounts needs: ``launchable`` (every selection goes
through it, fallbacks included, so a forbidden account is never picked even
when nothing better exists) and ``available_at`` (so a :class:`WaitUntil`
knows when the ban lifts instead of polling).

Plug it in wherever the library takes a ``RotationPolicy``; every other
setting is the base class's::

    from weekday_policy import WeekdayPolicy

    policy = WeekdayPolicy(
        weekend_only={"personal"},
        timezone="Europe/Berlin",
        strategy="soonest_reset",
    )
    policy.choose(candidates, now)  # never "personal" on a weekday

A session that started on the weekend on such an account is not cut off on
Monday morning: it rotates at its next threshold like any other. (A stricter
variant would also override ``decide``.)
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import UTC, datetime, time, timedelta, tzinfo
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import attrs

from codex_supervisor.errors import ConfigError
from codex_supervisor.policy import Candidate, RotationPolicy

_SATURDAY = 5


def _zone(value: str | tzinfo) -> tzinfo:
    if isinstance(value, tzinfo):
        return value
    try:
        return ZoneInfo(value)
    except (ZoneInfoNotFoundError, ValueError) as exc:
        raise ConfigError(f"unknown time zone {value!r}") from exc


def _names(value: Iterable[str]) -> frozenset[str]:
    if isinstance(value, str):
        raise ConfigError("weekend_only must be a collection of account names, not one string")
    return frozenset(value)


@attrs.frozen(kw_only=True)
class WeekdayPolicy(RotationPolicy):
    """A RotationPolicy that keeps ``weekend_only`` accounts out of use Monday to Friday.

    ``timezone`` (default UTC) is an IANA zone name (``"Europe/Berlin"``) or
    a ``tzinfo``: the weekend starts at Saturday 00:00 there.
    """

    weekend_only: frozenset[str] = attrs.field(default=frozenset(), converter=_names)
    timezone: tzinfo = attrs.field(default=UTC, converter=_zone)

    def _weekend_starts(self, now: datetime) -> datetime | None:
        """When the next weekend starts, or None if ``now`` is already in one."""
        local = now.astimezone(self.timezone)
        if local.weekday() >= _SATURDAY:
            return None
        saturday = local.date() + timedelta(days=_SATURDAY - local.weekday())
        return datetime.combine(saturday, time(0), tzinfo=self.timezone)

    def launchable(self, candidate: Candidate, now: datetime) -> bool:
        """Also refuses a ``weekend_only`` account on a weekday."""
        if not super().launchable(candidate, now):
            return False
        return candidate.name not in self.weekend_only or self._weekend_starts(now) is None

    def available_at(self, candidate: Candidate, now: datetime) -> datetime:
        """A ``weekend_only`` account is available at the next weekend at the earliest."""
        base = super().available_at(candidate, now)
        if candidate.name not in self.weekend_only:
            return base
        starts = self._weekend_starts(now)
        return base if starts is None else max(base, starts)
