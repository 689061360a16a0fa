"""When to pre-warm, when to rotate and to which account: the pure rotation decision.

Nothing here does I/O or reads a clock: the caller passes every fact,
including ``now`` (an aware datetime; a naive one raises
:class:`~codex_supervisor.errors.ConfigError`), and equal inputs give equal
answers whatever the order of the candidates. The supervisor feeds it
snapshots (ARCHITECTURE.md, D3) and acts on its decisions (D4):

- :meth:`RotationPolicy.choose` names the account to launch on, or says
  :class:`WaitUntil` when none can be;
- :meth:`RotationPolicy.decide` judges the running account:
  :class:`Continue` < :class:`Prewarm` < :class:`RotateAtBoundary` <
  :class:`RotateNow` < :class:`WaitUntil` (see :func:`urgency`);
- :meth:`RotationPolicy.cooldown_for` says how long an exhausted account stays
  blocked.

How quota data is read (:meth:`RotationPolicy.pressure`):

- A window whose ``resets_at`` has passed at ``now`` has reset since it was
  observed: it counts as 100 % remaining, and its reset time as unknown.
- Stale data is discounted, not trusted. Quota can be spent unseen for as long
  as we have not looked; once that time exceeds ``stale_after``, every window
  loses ``stale_penalty`` percentage points per further hour, at most
  ``stale_penalty_cap`` points. For a window that reset since it was observed,
  the unseen time counts from its reset. The discount applies to the running
  account and to successors alike.
- A window observed full (0 % remaining) that has not reset makes the account
  *limit-reached*. So does the snapshot's ``limit_reached`` flag while any
  reported window has yet to reset (the flag does not say which window
  tripped, and it lapses once they all have); a flag with no window at all
  holds. A merely discounted window at 0 % is low, not exhausted.

Window thresholds apply to five-hour and weekly windows by default; windows of
kind :attr:`~codex_supervisor.quota.WindowKind.OTHER` count only when
``rotate_at`` names them. A full window of any kind still exhausts the
account, since Codex refuses turns once any limit is hit.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from types import MappingProxyType
from typing import Any, TypeAlias, final

import attrs

from .errors import ConfigError
from .quota import QuotaSnapshot, QuotaWindow, WindowKind

__all__ = [
    "USAGE_LIMIT_ERRORS",
    "Candidate",
    "Continue",
    "Decision",
    "Pressure",
    "Prewarm",
    "RotateAtBoundary",
    "RotateNow",
    "RotationPolicy",
    "Strategy",
    "WaitUntil",
    "WindowPressure",
    "urgency",
]

#: Turn errors that mean the account ran out (rollout ``codex_error_info``,
#: app-server ``codexErrorInfo`` and the HTTP 429 body's ``error.type``).
USAGE_LIMIT_ERRORS = frozenset(
    {"usage_limit_exceeded", "usageLimitExceeded", "usage_limit_reached"}
)

_ZERO = timedelta(0)
_HOUR = 3600.0
# The order windows are named in when several tie (the binding one first).
_KIND_ORDER = {WindowKind.WEEKLY: 0, WindowKind.FIVE_HOUR: 1, WindowKind.OTHER: 2}
# The order windows are described in.
_DISPLAY_ORDER = {WindowKind.FIVE_HOUR: 0, WindowKind.WEEKLY: 1, WindowKind.OTHER: 2}
_KIND_LABEL = {
    WindowKind.FIVE_HOUR: "five-hour",
    WindowKind.WEEKLY: "weekly",
    WindowKind.OTHER: "other",
}


# -- small helpers -----------------------------------------------------------------


def _utc(value: object, what: str) -> datetime:
    if not isinstance(value, datetime):
        raise ConfigError(f"{what} must be a datetime, got {type(value).__name__}")
    if value.tzinfo is None or value.utcoffset() is None:
        raise ConfigError(f"{what} must be an aware datetime (UTC), got naive {value!r}")
    return value.astimezone(UTC)


def _utc_or_none(value: datetime | None) -> datetime | None:
    return None if value is None else _utc(value, "blocked_until")


def _until(value: datetime) -> datetime:
    return _utc(value, "until")


def _pct(value: float) -> str:
    text = f"{value:.1f}"
    return text.removesuffix(".0")


def _span(delta: timedelta) -> str:
    seconds = max(0, int(delta.total_seconds()))
    if seconds < 60:
        return "under a minute"
    days, rest = divmod(seconds, 86400)
    hours, rest = divmod(rest, 3600)
    minutes = rest // 60
    parts = [f"{n}{unit}" for n, unit in ((days, "d"), (hours, "h"), (minutes, "m")) if n]
    return " ".join(parts[:2])


def _when(moment: datetime, now: datetime) -> str:
    return f"{moment:%Y-%m-%d %H:%M} UTC (in {_span(moment - now)})"


def _label(kind: WindowKind) -> str:
    return _KIND_LABEL[kind]


# -- pressure ------------------------------------------------------------------------


def _observed_default(self: WindowPressure) -> float:
    return self.remaining_percent


@final
@attrs.frozen(kw_only=True)
class WindowPressure:
    """One window of an account as the policy weighs it at ``now``.

    ``remaining_percent`` is after the reset and staleness rules of the module
    docstring; ``observed_remaining_percent`` is what the snapshot said (100
    for a window that has reset since). ``resets_at``/``resets_in`` are
    ``None`` when the next reset is unknown, which includes a window that
    already reset.
    """

    kind: WindowKind
    remaining_percent: float
    resets_at: datetime | None
    resets_in: timedelta | None
    observed_remaining_percent: float = attrs.field(
        default=attrs.Factory(_observed_default, takes_self=True)
    )
    reset_since_observed: bool = False

    def describe(self) -> str:
        """A short phrase such as ``weekly 4% left (resets in 2d 3h)``."""
        text = f"{_label(self.kind)} {_pct(self.remaining_percent)}% left"
        notes = []
        if self.reset_since_observed:
            notes.append("reset since it was observed")
        elif self.remaining_percent < self.observed_remaining_percent:
            notes.append(f"{_pct(self.observed_remaining_percent)}% observed, discounted as stale")
        if self.resets_in is not None:
            notes.append(f"resets in {_span(self.resets_in)}")
        return f"{text} ({', '.join(notes)})" if notes else text


@final
@attrs.frozen(kw_only=True)
class Pressure:
    """How close one account is to its limits at ``now``, as the policy sees it.

    ``known`` is False when there is no snapshot; then ``windows`` is empty
    and ``staleness`` is zero and means nothing.
    """

    account: str
    windows: tuple[WindowPressure, ...]
    staleness: timedelta
    limit_reached: bool
    known: bool

    def window(self, kind: WindowKind) -> WindowPressure | None:
        """The window of ``kind`` with the least remaining, if any."""
        matching = [w for w in self.windows if w.kind is kind]
        return min(matching, key=lambda w: w.remaining_percent) if matching else None

    def remaining(self, kind: WindowKind) -> float | None:
        """Remaining percent in the window of ``kind`` (the tightest if several)."""
        found = self.window(kind)
        return None if found is None else found.remaining_percent

    @property
    def min_remaining(self) -> float | None:
        """The least remaining percent over all windows, ``None`` without windows."""
        return min((w.remaining_percent for w in self.windows), default=None)

    def summary(self) -> str:
        """The windows in brief, e.g. ``five-hour 80%, weekly 62% left``."""
        if not self.known:
            return "no quota data"
        if not self.windows:
            return "no windows reported"
        ordered = sorted(self.windows, key=lambda w: _DISPLAY_ORDER[w.kind])
        parts = [f"{_label(w.kind)} {_pct(w.remaining_percent)}%" for w in ordered]
        return ", ".join(parts) + " left"

    def describe(self) -> str:
        """The windows in full, e.g. ``five-hour 80% left (resets in 2h), weekly 62% left``."""
        if not self.known:
            return "no quota data"
        if not self.windows:
            return "no windows reported"
        ordered = sorted(self.windows, key=lambda w: _DISPLAY_ORDER[w.kind])
        return ", ".join(w.describe() for w in ordered)


# -- candidates and decisions ---------------------------------------------------------


def _occupants(_: object, attribute: attrs.Attribute[Any], value: int) -> None:
    if value < 0:
        raise ConfigError(f"{attribute.name} must not be negative, got {value!r}")


@final
@attrs.frozen(kw_only=True)
class Candidate:
    """An account the policy may run on: its latest snapshot, block and load.

    ``snapshot`` is the account's main Codex quota (limit id ``"codex"``), or
    ``None`` when nothing is known yet; its ``account`` must be ``name``.
    ``blocked_until`` is the account's cooldown (``Account.blocked_until``),
    ``occupants`` how many children run on it now.
    """

    name: str
    snapshot: QuotaSnapshot | None = None
    blocked_until: datetime | None = attrs.field(default=None, converter=_utc_or_none)
    occupants: int = attrs.field(default=0, validator=_occupants)

    def __attrs_post_init__(self) -> None:
        if self.snapshot is not None and self.snapshot.account != self.name:
            raise ConfigError(
                f"candidate {self.name!r} was given the snapshot of {self.snapshot.account!r}"
            )


@final
@attrs.frozen(kw_only=True)
class Continue:
    """Keep running on the current account."""

    reason: str


@final
@attrs.frozen(kw_only=True)
class Prewarm:
    """Keep running, but prepare ``successor`` now: a rotation is near."""

    successor: str
    reason: str


@final
@attrs.frozen(kw_only=True)
class RotateAtBoundary:
    """Rotate to ``successor`` once the current turn has ended."""

    successor: str
    reason: str


@final
@attrs.frozen(kw_only=True)
class RotateNow:
    """The current account is exhausted: cut over to ``successor`` at once."""

    successor: str
    reason: str


@final
@attrs.frozen(kw_only=True)
class WaitUntil:
    """No account can run now; ``until`` (aware UTC) is the earliest one can."""

    until: datetime = attrs.field(converter=_until)
    reason: str


Decision: TypeAlias = Continue | Prewarm | RotateAtBoundary | RotateNow | WaitUntil

_URGENCY: Mapping[type, int] = MappingProxyType(
    {Continue: 0, Prewarm: 1, RotateAtBoundary: 2, RotateNow: 3, WaitUntil: 4}
)


def urgency(decision: Decision) -> int:
    """How pressing a decision is, 0 (Continue) to 4 (WaitUntil).

    Continue 0 < Prewarm 1 < RotateAtBoundary 2 < RotateNow 3 < WaitUntil 4.
    """
    try:
        return _URGENCY[type(decision)]
    except KeyError:
        raise TypeError(f"not a policy decision: {decision!r}") from None


class Strategy(enum.Enum):
    """Which eligible account a rotation prefers."""

    #: Most remaining quota, the weekly window weighted above the five-hour one.
    HEADROOM = "headroom"
    #: Use accounts one after another in a fixed order (``drain_order``).
    DRAIN = "drain"
    #: The account whose weekly window resets soonest, so its quota is not lost.
    SOONEST_RESET = "soonest_reset"


# -- configuration converters ----------------------------------------------------------

_DEFAULT_ROTATE_AT = {WindowKind.FIVE_HOUR: 5.0, WindowKind.WEEKLY: 5.0}
_DEFAULT_MARGIN = {WindowKind.FIVE_HOUR: 5.0, WindowKind.WEEKLY: 3.0}


def _merge_percents(
    defaults: Mapping[WindowKind, float], value: object
) -> Mapping[WindowKind, float]:
    merged = dict(defaults)
    if value is None:
        return MappingProxyType(merged)
    if not isinstance(value, Mapping):
        raise ConfigError(f"expected a mapping of window kind to percent, got {value!r}")
    for key, number in value.items():
        try:
            kind = key if isinstance(key, WindowKind) else WindowKind(key)
            percent = float(number)
        except (TypeError, ValueError):
            raise ConfigError(f"invalid window setting {key!r}: {number!r}") from None
        if not (math.isfinite(percent) and 0.0 <= percent <= 100.0):
            raise ConfigError(f"the {kind.value} setting must be 0..100, got {number!r}")
        merged[kind] = percent
    # Read-only, so a policy's thresholds cannot change under a running supervisor.
    return MappingProxyType(merged)


# Kinds or their names ("weekly"), so settings can come straight from a config file.
_WindowSettings: TypeAlias = Mapping[WindowKind, float] | Mapping[str, float] | None


def _rotate_at(value: _WindowSettings) -> Mapping[WindowKind, float]:
    return _merge_percents(_DEFAULT_ROTATE_AT, value)


def _prewarm_margin(value: _WindowSettings) -> Mapping[WindowKind, float]:
    return _merge_percents(_DEFAULT_MARGIN, value)


def _float(value: float | str) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        raise ConfigError(f"expected a number, got {value!r}") from None


def _percent(_: object, attribute: attrs.Attribute[Any], value: float) -> None:
    if not (math.isfinite(value) and 0.0 <= value <= 100.0):
        raise ConfigError(f"{attribute.name} must be 0..100, got {value!r}")


def _non_negative(_: object, attribute: attrs.Attribute[Any], value: float) -> None:
    if not (math.isfinite(value) and value >= 0.0):
        raise ConfigError(f"{attribute.name} must be a finite number >= 0, got {value!r}")


def _positive(_: object, attribute: attrs.Attribute[Any], value: float) -> None:
    if not (math.isfinite(value) and value > 0.0):
        raise ConfigError(f"{attribute.name} must be a finite number > 0, got {value!r}")


def _duration(*, allow_zero: bool) -> Callable[[object, attrs.Attribute[Any], timedelta], None]:
    def check(_: object, attribute: attrs.Attribute[Any], value: timedelta) -> None:
        if not isinstance(value, timedelta) or value < _ZERO or (value == _ZERO and not allow_zero):
            bound = ">= 0" if allow_zero else "> 0"
            raise ConfigError(f"{attribute.name} must be a timedelta {bound}, got {value!r}")

    return check


def _strategy(value: Strategy | str) -> Strategy:
    try:
        return value if isinstance(value, Strategy) else Strategy(value)
    except ValueError:
        choices = ", ".join(s.value for s in Strategy)
        raise ConfigError(f"unknown strategy {value!r} (choose from {choices})") from None


def _names(value: Iterable[str]) -> tuple[str, ...]:
    if isinstance(value, str):
        raise ConfigError("drain_order must be a sequence of account names, not one string")
    names = tuple(value)
    if any(not isinstance(n, str) for n in names) or len(set(names)) != len(names):
        raise ConfigError(f"drain_order must list distinct account names, got {names!r}")
    return names


def _unique(candidates: Sequence[Candidate]) -> None:
    seen: set[str] = set()
    for candidate in candidates:
        if candidate.name in seen:
            raise ConfigError(f"account {candidate.name!r} appears twice among the candidates")
        seen.add(candidate.name)


# Levels of a window's pressure on the running account.
_CALM, _PREWARM, _ROTATE = 0, 1, 2


# -- the policy ----------------------------------------------------------------------


@attrs.frozen(kw_only=True)
class RotationPolicy:
    """Decides when to pre-warm, when to rotate and which account to use next.

    The one class of the library meant for subclassing. Every method is pure:
    it reads only its arguments and the configuration. Subclasses add their own
    configuration with ``@attrs.frozen(kw_only=True)`` and override any of:

    - :meth:`pressure` — how a snapshot is read at ``now`` (reset and
      staleness rules);
    - :meth:`launchable` — whether an account may be launched at all (not
      blocked, not limit-reached). Override it to forbid accounts outright:
      every selection, including the fallbacks, goes through it;
    - :meth:`eligible` — whether an account is a good successor
      (launchable and above threshold + margin + hysteresis in every window);
    - :meth:`headroom` — the one-number score HEADROOM ranks by;
    - :meth:`rank` — the eligible accounts, best first;
    - :meth:`choose` — the account to launch on (start, after a cutover);
    - :meth:`decide` — what to do about the running account;
    - :meth:`cooldown_for` — how long an exhausted account stays blocked;
    - :meth:`available_at` — when an account can next be launched (what
      :class:`WaitUntil` waits for); pair it with :meth:`launchable`.

    Configuration (keyword arguments):

    ``rotate_at`` (default five-hour 5, weekly 5)
        Remaining percent at or below which a window makes us rotate. Kinds
        not listed keep their default; OTHER windows count only if listed.
    ``prewarm_margin`` (default five-hour 5, weekly 3)
        Pre-warm a successor once a window is at or below threshold + margin.
    ``hysteresis`` (default 5)
        A successor needs threshold + margin + hysteresis remaining in every
        window, so an account that just recovered a few percent is not picked
        back and forth.
    ``strategy`` (default :attr:`Strategy.HEADROOM`)
        How eligible successors are ranked; ties go to fewer occupants, then
        the name. Accounts without a snapshot rank after all known ones.
    ``drain_order`` (default ``()``)
        The fixed order of :attr:`Strategy.DRAIN`; unlisted accounts follow in
        name order (so the default is plain name order). Drain never rotates
        away before a threshold; a recovered earlier account is preferred only
        at the next rotation.
    ``stale_after`` (default 10 min), ``stale_penalty`` (default 10),
    ``stale_penalty_cap`` (default 50)
        The staleness discount of the module docstring.
    ``unknown_reset_backoff`` (default 15 min), ``max_unknown_reset_backoff``
        (default 2 h)
        Block length when the reset time is unknown: doubled per earlier
        failure, at most the maximum.
    ``weekly_weight`` (default 2)
        Weight of the weekly window against the five-hour one in
        :meth:`headroom`.

    Choosing (:meth:`choose`): the best eligible account; if none is eligible,
    the launchable account with the most remaining (running low beats not
    running); :class:`WaitUntil` only when no account is launchable.
    """

    rotate_at: Mapping[WindowKind, float] = attrs.field(
        default=None, converter=_rotate_at, hash=False
    )
    prewarm_margin: Mapping[WindowKind, float] = attrs.field(
        default=None, converter=_prewarm_margin, hash=False
    )
    hysteresis: float = attrs.field(default=5.0, converter=_float, validator=_percent)
    strategy: Strategy = attrs.field(default=Strategy.HEADROOM, converter=_strategy)
    drain_order: tuple[str, ...] = attrs.field(default=(), converter=_names)
    stale_after: timedelta = attrs.field(
        default=timedelta(minutes=10), validator=_duration(allow_zero=True)
    )
    stale_penalty: float = attrs.field(default=10.0, converter=_float, validator=_non_negative)
    stale_penalty_cap: float = attrs.field(default=50.0, converter=_float, validator=_percent)
    unknown_reset_backoff: timedelta = attrs.field(
        default=timedelta(minutes=15), validator=_duration(allow_zero=False)
    )
    max_unknown_reset_backoff: timedelta = attrs.field(
        default=timedelta(hours=2), validator=_duration(allow_zero=False)
    )
    weekly_weight: float = attrs.field(default=2.0, converter=_float, validator=_positive)

    def __attrs_post_init__(self) -> None:
        if self.max_unknown_reset_backoff < self.unknown_reset_backoff:
            raise ConfigError(
                "max_unknown_reset_backoff must not be shorter than unknown_reset_backoff"
            )

    # -- reading quota ------------------------------------------------------------

    def stale_discount(self, unseen: timedelta) -> float:
        """Percentage points to subtract for quota that may have been spent unseen."""
        over = (unseen - self.stale_after).total_seconds()
        if over <= 0:
            return 0.0
        return min(self.stale_penalty_cap, self.stale_penalty * over / _HOUR)

    def pressure(self, name: str, snapshot: QuotaSnapshot | None, now: datetime) -> Pressure:
        """Read ``snapshot`` of account ``name`` at ``now`` (module docstring rules)."""
        now = _utc(now, "now")
        if snapshot is None:
            return Pressure(
                account=name, windows=(), staleness=_ZERO, limit_reached=False, known=False
            )
        if snapshot.account != name:
            raise ConfigError(f"the snapshot of {snapshot.account!r} was given for {name!r}")
        staleness = max(_ZERO, now - snapshot.observed_at)
        windows = tuple(
            self._window_pressure(w, snapshot.observed_at, now) for w in snapshot.windows
        )
        return Pressure(
            account=name,
            windows=windows,
            staleness=staleness,
            limit_reached=_limit_reached(snapshot, now),
            known=True,
        )

    def _window_pressure(
        self, window: QuotaWindow, observed_at: datetime, now: datetime
    ) -> WindowPressure:
        if _has_reset(window, now):
            assert window.resets_at is not None
            # Known to be empty at its reset; anything after may be unseen use.
            unseen = now - max(window.resets_at, observed_at)
            return WindowPressure(
                kind=window.kind,
                remaining_percent=max(0.0, 100.0 - self.stale_discount(unseen)),
                observed_remaining_percent=100.0,
                resets_at=None,
                resets_in=None,
                reset_since_observed=True,
            )
        observed = window.remaining_percent
        remaining = max(0.0, observed - self.stale_discount(max(_ZERO, now - observed_at)))
        return WindowPressure(
            kind=window.kind,
            remaining_percent=remaining,
            observed_remaining_percent=observed,
            resets_at=window.resets_at,
            resets_in=None if window.resets_at is None else window.resets_at - now,
        )

    def headroom(self, pressure: Pressure) -> float:
        """One score for "how much is left": weighted mean of weekly and five-hour.

        A window the plan does not have counts as 100 (no such limit).
        """
        weekly = pressure.remaining(WindowKind.WEEKLY)
        five = pressure.remaining(WindowKind.FIVE_HOUR)
        weekly = 100.0 if weekly is None else weekly
        five = 100.0 if five is None else five
        return (self.weekly_weight * weekly + five) / (self.weekly_weight + 1.0)

    def successor_floor(self, kind: WindowKind) -> float | None:
        """Remaining percent a successor needs in a ``kind`` window (None: no limit)."""
        threshold = self.rotate_at.get(kind)
        if threshold is None:
            return None
        return threshold + self.prewarm_margin.get(kind, 0.0) + self.hysteresis

    # -- selecting ----------------------------------------------------------------

    def launchable(self, candidate: Candidate, now: datetime) -> bool:
        """Whether ``candidate`` may be launched at all: not blocked, not limit-reached."""
        now = _utc(now, "now")
        if candidate.blocked_until is not None and candidate.blocked_until > now:
            return False
        return not self.pressure(candidate.name, candidate.snapshot, now).limit_reached

    def eligible(self, candidate: Candidate, now: datetime) -> bool:
        """Whether ``candidate`` is a good successor: launchable, with headroom everywhere.

        Headroom means threshold + margin + hysteresis remaining in every
        window that has a threshold. An account without a snapshot is
        eligible (:meth:`rank` puts it after the known ones).
        """
        if not self.launchable(candidate, now):
            return False
        pressure = self.pressure(candidate.name, candidate.snapshot, now)
        for window in pressure.windows:
            floor = self.successor_floor(window.kind)
            if floor is not None and window.remaining_percent < floor:
                return False
        return True

    def rank(self, candidates: Sequence[Candidate], now: datetime) -> list[Candidate]:
        """The eligible candidates, best first, by :attr:`strategy`.

        Known accounts come before accounts without a snapshot; ties go to
        fewer occupants, then the name, so the order never depends on the
        order of ``candidates``.
        """
        now = _utc(now, "now")
        _unique(candidates)
        keyed = [(self._rank_key(c, now), c) for c in candidates if self.eligible(c, now)]
        keyed.sort(key=lambda pair: pair[0])
        return [candidate for _, candidate in keyed]

    def _rank_key(self, candidate: Candidate, now: datetime) -> tuple[Any, ...]:
        pressure = self.pressure(candidate.name, candidate.snapshot, now)
        score = self.headroom(pressure) if pressure.known else 0.0
        tail = (candidate.occupants, candidate.name)
        if self.strategy is Strategy.DRAIN:
            position = (
                self.drain_order.index(candidate.name)
                if candidate.name in self.drain_order
                else len(self.drain_order)
            )
            # Unlisted accounts follow in name order, before occupancy counts.
            unlisted = "" if candidate.name in self.drain_order else candidate.name
            return (not pressure.known, position, unlisted, *tail)
        if self.strategy is Strategy.SOONEST_RESET:
            weekly = pressure.window(WindowKind.WEEKLY)
            reset = None if weekly is None else weekly.resets_at
            # Whole minutes: reset times derived from "seconds until reset"
            # jitter by a second or two between observations.
            minute = 0 if reset is None else math.floor(reset.timestamp() / 60)
            return (not pressure.known, reset is None, minute, -score, *tail)
        return (not pressure.known, -score, *tail)

    def choose(
        self, candidates: Sequence[Candidate], now: datetime, *, exclude: Iterable[str] = ()
    ) -> str | WaitUntil:
        """The account to launch on, or when to try again if none can be.

        The best of :meth:`rank`; if no account is eligible, the launchable
        one with the most remaining (a low account beats no account); if none
        is launchable, :class:`WaitUntil` the earliest :meth:`available_at`.
        Names in ``exclude`` are not considered at all; excluding every
        candidate raises :class:`~codex_supervisor.errors.ConfigError`.
        """
        now = _utc(now, "now")
        _unique(candidates)
        excluded = frozenset(exclude)
        pool = [c for c in candidates if c.name not in excluded]
        if not pool:
            raise ConfigError("no candidate account to choose from")
        picked = self._pick(pool, now)
        if picked is not None:
            return picked.name
        until, first = self._earliest(pool, now)
        return WaitUntil(
            until=until,
            reason=(
                f"no account can run now ({self._blocked_summary(pool, now)}); "
                f"waiting until {_when(until, now)}, when {first!r} becomes available"
            ),
        )

    def _pick(self, pool: Sequence[Candidate], now: datetime) -> Candidate | None:
        ranked = self.rank(pool, now)
        if ranked:
            return ranked[0]
        usable = [c for c in pool if self.launchable(c, now)]
        if not usable:
            return None

        def key(candidate: Candidate) -> tuple[Any, ...]:
            pressure = self.pressure(candidate.name, candidate.snapshot, now)
            limited = [w.remaining_percent for w in pressure.windows if w.kind in self.rotate_at]
            return (
                not pressure.known,
                -min(limited, default=100.0),
                -self.headroom(pressure),
                candidate.occupants,
                candidate.name,
            )

        return min(usable, key=key)

    def available_at(self, candidate: Candidate, now: datetime) -> datetime:
        """When ``candidate`` can next be launched as far as blocks and quota go.

        The later of its block and the end of its exhausted window (as
        :meth:`cooldown_for` computes it); ``now`` when neither holds. A
        subclass that forbids accounts in :meth:`launchable` should extend
        this to say when its rule lifts; otherwise a :class:`WaitUntil` that
        depends on such an account rechecks after ``unknown_reset_backoff``.
        """
        now = _utc(now, "now")
        until = now
        if candidate.blocked_until is not None and candidate.blocked_until > now:
            until = candidate.blocked_until
        if self.pressure(candidate.name, candidate.snapshot, now).limit_reached:
            until = max(until, self.cooldown_for(candidate.snapshot, now)[1])
        return until

    def _earliest(
        self, pool: Sequence[Candidate], now: datetime, *, also: tuple[datetime, str] | None = None
    ) -> tuple[datetime, str]:
        times = [(self.available_at(c, now), c.name) for c in pool]
        if also is not None:
            times.append(also)
        # Everything here was refused just now, so "now" means a rule we
        # cannot see into (a subclass's launchable): recheck after the
        # backoff rather than make the caller spin.
        recheck = now + self.unknown_reset_backoff
        return min((t if t > now else recheck, name) for t, name in times)

    def _blocked_summary(self, pool: Sequence[Candidate], now: datetime) -> str:
        parts = []
        for candidate in sorted(pool, key=lambda c: c.name):
            pressure = self.pressure(candidate.name, candidate.snapshot, now)
            if candidate.blocked_until is not None and candidate.blocked_until > now:
                parts.append(
                    f"{candidate.name!r} blocked until {_when(candidate.blocked_until, now)}"
                )
            elif pressure.limit_reached:
                parts.append(f"{candidate.name!r} exhausted ({pressure.describe()})")
            else:
                parts.append(f"{candidate.name!r} not launchable")
        return "; ".join(parts)

    # -- the running account ----------------------------------------------------------

    def decide(
        self,
        current: Candidate,
        others: Sequence[Candidate],
        now: datetime,
        *,
        last_turn_error: str | None = None,
    ) -> Decision:
        """What to do about the account the child runs on now.

        - Exhausted (``last_turn_error`` in :data:`USAGE_LIMIT_ERRORS`, the
          account limit-reached, or blocked): :class:`RotateNow` to the account
          :meth:`choose` would pick among ``others``, else :class:`WaitUntil`
          the earliest moment any account, the current one included, can run.
        - A window at or below its threshold: :class:`RotateAtBoundary` to the
          best eligible successor; at or below threshold + margin:
          :class:`Prewarm` it. With no eligible successor: :class:`Continue`
          (keep using the account until it runs out).
        - Otherwise :class:`Continue`.

        ``others`` may include ``current`` (it is skipped).
        """
        now = _utc(now, "now")
        rest = [c for c in others if c.name != current.name]
        _unique(rest)
        pressure = self.pressure(current.name, current.snapshot, now)
        cause = self._exhaustion_cause(current, pressure, now, last_turn_error)
        if cause is not None:
            return self._exhausted(current, rest, now, cause)
        if not pressure.known:
            return Continue(reason=f"no quota data for account {current.name!r} yet; continuing")
        level, window = self._tightest(pressure)
        if level == _CALM:
            room = pressure.describe()
            return Continue(
                reason=f"account {current.name!r} has room ({room}); no rotation needed"
            )
        assert window is not None
        threshold = self.rotate_at[window.kind]
        if level == _ROTATE:
            why = (
                f"account {current.name!r} has {window.describe()}, "
                f"at or below the rotation threshold of {_pct(threshold)}%"
            )
        else:
            mark = threshold + self.prewarm_margin.get(window.kind, 0.0)
            why = (
                f"account {current.name!r} has {window.describe()}, "
                f"at or below the pre-warm mark of {_pct(mark)}%"
            )
        ranked = self.rank(rest, now)
        if not ranked:
            return Continue(
                reason=f"{why}, but no other account is eligible ({self._floors()}); "
                f"staying on {current.name!r} until it runs out"
            )
        successor = ranked[0]
        about = self.pressure(successor.name, successor.snapshot, now).summary()
        if level == _ROTATE:
            return RotateAtBoundary(
                successor=successor.name,
                reason=f"{why}; rotating to {successor.name!r} ({about}) at the next turn boundary",
            )
        return Prewarm(
            successor=successor.name,
            reason=f"{why}; pre-warming {successor.name!r} ({about})",
        )

    def _exhaustion_cause(
        self, current: Candidate, pressure: Pressure, now: datetime, error: str | None
    ) -> str | None:
        if error in USAGE_LIMIT_ERRORS:
            return (
                f"account {current.name!r} hit its usage limit (the last turn failed with {error})"
            )
        if pressure.limit_reached:
            full = [w for w in pressure.windows if w.observed_remaining_percent <= 0.0]
            shown = ", ".join(w.describe() for w in full) if full else "limit-reached flag set"
            return f"account {current.name!r} is exhausted ({shown})"
        if current.blocked_until is not None and current.blocked_until > now:
            return f"account {current.name!r} is blocked until {_when(current.blocked_until, now)}"
        return None

    def _exhausted(
        self, current: Candidate, rest: Sequence[Candidate], now: datetime, cause: str
    ) -> Decision:
        successor = self._pick(rest, now)
        if successor is not None:
            about = self.pressure(successor.name, successor.snapshot, now).summary()
            return RotateNow(
                successor=successor.name,
                reason=f"{cause}; rotating now to {successor.name!r} ({about})",
            )
        own = self.available_at(current, now)
        if own <= now:
            # Exhausted by the turn's error while the snapshot does not show
            # it yet: the cooldown rule (or its backoff) says how long.
            own = self.cooldown_for(current.snapshot, now)[1]
        until, first = self._earliest(rest, now, also=(own, current.name))
        others = f" ({self._blocked_summary(rest, now)})" if rest else ""
        return WaitUntil(
            until=until,
            reason=f"{cause} and no other account can take over{others}; "
            f"waiting until {_when(until, now)}, when {first!r} becomes available",
        )

    def _tightest(self, pressure: Pressure) -> tuple[int, WindowPressure | None]:
        best: tuple[tuple[Any, ...], int, WindowPressure] | None = None
        for window in pressure.windows:
            threshold = self.rotate_at.get(window.kind)
            if threshold is None:
                continue
            margin = self.prewarm_margin.get(window.kind, 0.0)
            if window.remaining_percent <= threshold:
                level = _ROTATE
            elif window.remaining_percent <= threshold + margin:
                level = _PREWARM
            else:
                level = _CALM
            key = (-level, window.remaining_percent - threshold, _KIND_ORDER[window.kind])
            if best is None or key < best[0]:
                best = (key, level, window)
        if best is None:
            return _CALM, None
        return best[1], best[2]

    def _floors(self) -> str:
        parts = []
        for kind in sorted(self.rotate_at, key=lambda k: _DISPLAY_ORDER[k]):
            floor = self.successor_floor(kind)
            assert floor is not None
            parts.append(f"{_label(kind)} >= {_pct(floor)}%")
        return "a successor needs " + ", ".join(parts)

    # -- cooldowns ---------------------------------------------------------------------

    def cooldown_for(
        self, snapshot: QuotaSnapshot | None, now: datetime, *, failures: int = 0
    ) -> tuple[WindowKind | None, datetime]:
        """How long an exhausted account stays blocked, and for which window.

        Blocked until the reset of the window that ran out; if several did,
        the latest reset, reported as the weekly window when the weekly one is
        among them (a weekly-exhausted account must not come back at the
        five-hour reset). A limit-reached flag with no full window is put on
        the most-used window that has not reset. When no exhausted window is
        known, or its reset time is not, the block is ``unknown_reset_backoff``
        doubled per earlier ``failures``, at most ``max_unknown_reset_backoff``;
        the kind is ``None`` when no window is known.

        Never-shorten is not this method's concern: ``AccountPool.set_cooldown``
        keeps the later of an existing and a new block.
        """
        now = _utc(now, "now")
        if isinstance(failures, bool) or not isinstance(failures, int) or failures < 0:
            raise ConfigError(f"failures must be an integer >= 0, got {failures!r}")
        backoff_until = now + self._backoff(failures)
        culprits = [] if snapshot is None else _culprits(snapshot, now)
        if not culprits:
            return None, backoff_until
        ends = [(w.resets_at if w.resets_at is not None else backoff_until, w) for w in culprits]
        until = max(end for end, _ in ends)
        kinds = {w.kind for w in culprits}
        if WindowKind.WEEKLY in kinds:
            return WindowKind.WEEKLY, until
        latest = max(ends, key=lambda pair: (pair[0], -_KIND_ORDER[pair[1].kind]))
        return latest[1].kind, until

    def _backoff(self, failures: int) -> timedelta:
        base = self.unknown_reset_backoff.total_seconds()
        cap = self.max_unknown_reset_backoff.total_seconds()
        # The exponent is bounded so that a long failure streak cannot overflow.
        return timedelta(seconds=min(cap, base * 2.0 ** min(failures, 64)))


# -- module-level rules shared by pressure and cooldown_for ------------------------------


def _has_reset(window: QuotaWindow, now: datetime) -> bool:
    return window.resets_at is not None and window.resets_at <= now


def _limit_reached(snapshot: QuotaSnapshot, now: datetime) -> bool:
    live = [w for w in snapshot.windows if not _has_reset(w, now)]
    if any(w.used_percent >= 100.0 for w in live):
        return True
    # The flag names no window: it holds until every reported window has
    # reset (monotone in usage, unlike "the most-used window"), and for good
    # when the snapshot has no window at all.
    return snapshot.limit_reached and (bool(live) or not snapshot.windows)


def _culprits(snapshot: QuotaSnapshot, now: datetime) -> list[QuotaWindow]:
    live = [w for w in snapshot.windows if not _has_reset(w, now)]
    full = [w for w in live if w.used_percent >= 100.0]
    if full or not snapshot.limit_reached or not live:
        return full
    # A flag without a full window (it lags the percentages by a rounding):
    # the most-used live window is the one that most plausibly tripped it.
    return [max(live, key=lambda w: (w.used_percent, -_KIND_ORDER[w.kind]))]
