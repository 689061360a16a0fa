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
  *limit-reached*. A ``limit_reached`` flag beside full windows is theirs: it
  lapses when they have all reset. A flag with no full window names no
  window: it holds while any reported window has yet to reset, and for good
  with no window at all. A merely discounted window at 0 % is low, not
  exhausted.

Window thresholds apply to five-hour and weekly windows by default; windows of
kind :attr:`~codex_supervisor.quota.WindowKind.OTHER` count only when
``rotate_at`` names them. A full window of any kind still exhausts the
account, since Codex refuses turns once any limit is hit.

Predictive rotation: a fixed threshold is not enough when one turn can cost
more than it. The supervisor sees quota only after each model response, and
the Codex TUI spends quota on side requests (a thread title) that never reach
the rollout, so an account that *looks* 10 % away from its threshold can run
out in the middle of the next turn. Each :class:`Candidate` therefore carries
the expected cost of its next turn (``turn_cost``, percentage points per
window kind), which :class:`TurnCosts` learns from consecutive snapshots
(:func:`spent_between`). A window is at its rotation floor when the remaining
quota is at or below ``max(threshold, cost x cost_margin)``
(:meth:`RotationPolicy.rotation_floor`); pre-warm and successor floors move up
with it. With no cost known, everything is as the thresholds alone say.
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
from .snapshots import QuotaSnapshot, QuotaWindow, WindowKind

__all__ = [
    "USAGE_LIMIT_ERRORS",
    "Candidate",
    "Continue",
    "Decision",
    "PauseAtBoundary",
    "Pressure",
    "Prewarm",
    "RotateAtBoundary",
    "RotateNow",
    "RotationPolicy",
    "Strategy",
    "TurnCosts",
    "WaitUntil",
    "WindowPressure",
    "spent_between",
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


def _costs(candidate: Candidate) -> str:
    ordered = sorted(candidate.turn_cost.items(), key=lambda kv: _DISPLAY_ORDER[kv[0]])
    return ", ".join(f"{_pct(cost)}% of {_label(kind)}" for kind, cost in ordered)


def _kind(key: object) -> WindowKind:
    try:
        return key if isinstance(key, WindowKind) else WindowKind(key)
    except ValueError:
        raise ConfigError(f"not a window kind: {key!r}") from None


def _parse_percents(value: object, what: str) -> dict[WindowKind, float]:
    """A mapping of window kind (or its name) to a percentage 0..100, checked."""
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise ConfigError(f"expected a mapping of window kind to percent, got {value!r}")
    parsed = {}
    for key, number in value.items():
        try:
            kind = _kind(key)
            percent = float(number)
        except (ConfigError, TypeError, ValueError):
            raise ConfigError(f"invalid window {what} {key!r}: {number!r}") from None
        if not (math.isfinite(percent) and 0.0 <= percent <= 100.0):
            raise ConfigError(f"the {kind.value} {what} must be 0..100, got {number!r}")
        parsed[kind] = percent
    return parsed


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


def _turn_cost(
    value: Mapping[WindowKind, float] | Mapping[str, float] | None,
) -> Mapping[WindowKind, float]:
    # Read-only: a candidate is a value, and the policy must not see it change.
    return MappingProxyType(_parse_percents(value, "turn cost"))


@final
@attrs.frozen(kw_only=True)
class Candidate:
    """An account the policy may run on: its latest snapshot, block, load and turn cost.

    ``snapshot`` is the account's main Codex quota (limit id ``"codex"``), or
    ``None`` when nothing is known yet; its ``account`` must be ``name``.
    ``blocked_until`` is the account's cooldown (``Account.blocked_until``),
    ``occupants`` how many children run on it now. ``turn_cost`` is what the
    next turn is expected to cost on this account, in percentage points per
    window kind (:meth:`TurnCosts.expected`; kinds or their names, each
    0..100); empty when unknown. It is a read-only mapping and takes no part
    in the hash (equal candidates still hash equal).
    """

    name: str
    snapshot: QuotaSnapshot | None = None
    blocked_until: datetime | None = attrs.field(default=None, converter=_utc_or_none)
    occupants: int = attrs.field(default=0, validator=_occupants)
    turn_cost: Mapping[WindowKind, float] = attrs.field(
        default=None, converter=_turn_cost, hash=False
    )

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


@final
@attrs.frozen(kw_only=True)
class PauseAtBoundary:
    """No account is expected to finish another turn: stop at the boundary, wait until ``until``.

    The current account still runs (nothing failed yet), but its remaining
    quota is below the expected cost of the next turn, and so is every other
    account's. Starting the turn would most likely end in ``usage_limit``
    midway; waiting (no Codex runs) until ``until``, the earliest moment an
    account can take a turn, loses nothing.
    """

    until: datetime = attrs.field(converter=_until)
    reason: str


Decision: TypeAlias = (
    Continue | Prewarm | RotateAtBoundary | PauseAtBoundary | RotateNow | WaitUntil
)

_URGENCY: Mapping[type, int] = MappingProxyType(
    {
        Continue: 0,
        Prewarm: 1,
        RotateAtBoundary: 2,
        PauseAtBoundary: 3,
        RotateNow: 4,
        WaitUntil: 5,
    }
)


def urgency(decision: Decision) -> int:
    """How pressing a decision is, 0 (Continue) to 5 (WaitUntil).

    Continue 0 < Prewarm 1 < RotateAtBoundary 2 < PauseAtBoundary 3 <
    RotateNow 4 < WaitUntil 5.
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
    merged.update(_parse_percents(value, "setting"))
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


# -- turn costs ------------------------------------------------------------------------

# How far two reports of one reset time may differ and still name the same
# window: a reset time derived from "seconds until reset" moves by the delay
# between the answer and its parsing, while a real reset moves it by at least
# the window's length.
_RESET_JITTER = timedelta(minutes=1)


def spent_between(before: QuotaSnapshot, after: QuotaSnapshot) -> dict[WindowKind, float]:
    """Percentage points spent per window kind from ``before`` to ``after`` (one account).

    A window counts only when both snapshots report it and it cannot have
    reset in between: it is skipped when ``before``'s reset time has passed by
    ``after.observed_at``, when the two reset times differ by more than a
    minute, or when its use went down. ``after`` observed before ``before``
    gives ``{}``. Snapshots of two accounts, or of two different limit ids,
    raise :class:`~codex_supervisor.errors.ConfigError`.

    Take both snapshots from one source: the usage endpoint reports whole
    percents and the rollout fractions, so a mixed pair is off by up to a
    point; and only the usage endpoint sees what the TUI's side requests
    spend, so it is the source that measures what a turn really costs.
    """
    if before.account != after.account:
        raise ConfigError(
            f"cannot compare the quota of {before.account!r} with that of {after.account!r}"
        )
    if None not in (before.limit_id, after.limit_id) and before.limit_id != after.limit_id:
        raise ConfigError(f"cannot compare limit {before.limit_id!r} with limit {after.limit_id!r}")
    if after.observed_at < before.observed_at:
        return {}
    spent: dict[WindowKind, float] = {}
    for kind in WindowKind:
        old, new = before.window(kind), after.window(kind)
        if old is None or new is None:
            continue
        if old.resets_at is not None:
            if old.resets_at <= after.observed_at:
                continue
            if new.resets_at is not None and abs(new.resets_at - old.resets_at) > _RESET_JITTER:
                continue
        delta = new.used_percent - old.used_percent
        if delta >= 0.0:
            spent[kind] = delta + 0.0  # no negative zero
    return spent


@final
@attrs.frozen(kw_only=True)
class _Learned:
    """What one account's turns cost in one window kind so far."""

    mean: float
    recent: tuple[float, ...]

    @property
    def expected(self) -> float:
        return max(self.mean, *self.recent)


def _spend(value: object) -> float | None:
    try:
        number = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError, OverflowError):
        return None
    if not math.isfinite(number) or number < 0.0:
        return None
    # No turn spends more than a whole window; 0.0 also turns -0.0 into 0.0.
    return min(100.0, number) + 0.0


def _history(_: object, attribute: attrs.Attribute[Any], value: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 1000:
        raise ConfigError(f"{attribute.name} must be an integer 1..1000, got {value!r}")


def _smoothing(_: object, attribute: attrs.Attribute[Any], value: float) -> None:
    if not (math.isfinite(value) and 0.0 < value <= 1.0):
        raise ConfigError(f"{attribute.name} must be in (0, 1], got {value!r}")


_Ledger: TypeAlias = Mapping[str, Mapping[WindowKind, _Learned]]
_EMPTY_LEDGER: _Ledger = MappingProxyType({})


@final
@attrs.frozen(kw_only=True)
class TurnCosts:
    """What a turn costs on each account, per window kind, learned from observed turns.

    An immutable value: :meth:`observe` returns a new instance with one
    turn's spend (:func:`spent_between` of the snapshots around it) folded
    in; :meth:`expected` is what to put in :attr:`Candidate.turn_cost`.

    The estimate of a window kind is the larger of

    - the maximum of the last ``history`` observations (default 16), and
    - an exponentially weighted mean of all of them (weight ``smoothing``,
      default 0.25, for the newest).

    Why: turn costs are skewed (most turns are cheap, a few that read many
    files or write much code cost several times more) and the harm is
    asymmetric (an under-estimate lets a turn start that the account cannot
    finish; an over-estimate rotates a turn early and leaves a few percent
    unused). A mean alone is exceeded by about half of all turns. The
    maximum of a short recent history reacts to a costly turn at once and is
    exceeded by the next turn with probability about 1/(history + 1) when
    costs are steady (1 in 17 for 16 observations; the policy's
    ``cost_margin`` covers that remainder). 16 rather than 8: in
    ``benchmarks/bench_predictive.py`` a history of 8 forgot a costly turn
    just before a costly stretch began and let a turn start that failed; 16
    did not, and still follows a conversation whose cost per turn grows. With
    so few observations any higher quantile *is* the maximum or next to it,
    so a quantile would add arithmetic, not safety. The mean keeps a memory
    of a costly stretch beyond the history, so a few cheap turns do not make
    the estimate forget it at once.

    Guarantees (tested): the estimate is never below any of the last
    ``history`` observations, never above the largest observation ever
    folded in, and always in 0..100. Memory is bounded: ``history`` numbers
    and one mean per account and window kind.

    :meth:`observe` ignores spends that are negative (a window reset between
    the two snapshots), NaN, infinite or not readable as numbers, and an empty
    mapping; spends above 100 count as 100. A window kind that is neither a
    :class:`~codex_supervisor.quota.WindowKind` nor its name raises
    :class:`~codex_supervisor.errors.ConfigError`.
    """

    history: int = attrs.field(default=16, validator=_history)
    smoothing: float = attrs.field(default=0.25, converter=_float, validator=_smoothing)
    # account -> kind -> what was learned; read-only, and out of the hash.
    _learned: _Ledger = attrs.field(default=_EMPTY_LEDGER, alias="_learned", hash=False)

    def observe(self, account: str, spent: Mapping[WindowKind, float]) -> TurnCosts:
        """A new estimate with one turn of ``account`` folded in (see the class docstring)."""
        if not isinstance(account, str):
            raise ConfigError(f"account must be a name, got {account!r}")
        if not isinstance(spent, Mapping):
            raise ConfigError(f"spent must be a mapping of window kind to percent, got {spent!r}")
        learned = dict(self._learned.get(account, {}))
        changed = False
        for key, value in spent.items():
            kind = _kind(key)
            cost = _spend(value)
            if cost is None:
                continue
            learned[kind] = self._fold(learned.get(kind), cost)
            changed = True
        if not changed:
            return self
        ledger = dict(self._learned)
        ledger[account] = MappingProxyType(learned)
        return attrs.evolve(self, _learned=MappingProxyType(ledger))

    def _fold(self, known: _Learned | None, cost: float) -> _Learned:
        if known is None:
            return _Learned(mean=cost, recent=(cost,))
        mean = known.mean + self.smoothing * (cost - known.mean)
        return _Learned(mean=mean, recent=(*known.recent, cost)[-self.history :])

    def expected(self, account: str) -> Mapping[WindowKind, float]:
        """Percentage points the next turn of ``account`` is expected to cost, per kind.

        Empty when nothing has been learned about ``account``.
        """
        learned = self._learned.get(account, {})
        return MappingProxyType({kind: known.expected for kind, known in learned.items()})

    def prior(self) -> Mapping[WindowKind, float]:
        """The dearest expected turn over every account, per kind (empty if none learnt).

        What to expect of an account that has no history yet: the cost of a
        turn follows the conversation more than the account, and guessing
        high only rotates a little early.
        """
        dearest: dict[WindowKind, float] = {}
        for learned in self._learned.values():
            for kind, known in learned.items():
                dearest[kind] = max(dearest.get(kind, 0.0), known.expected)
        return MappingProxyType(dearest)

    def recent(self, account: str) -> Mapping[WindowKind, tuple[float, ...]]:
        """The last ``history`` observations of ``account`` per kind, oldest first."""
        learned = self._learned.get(account, {})
        return MappingProxyType({kind: known.recent for kind, known in learned.items()})


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
    - :meth:`rotation_floor` — the remaining percent at or below which a
      window of an account makes us rotate (its threshold, raised to the
      expected next turn's cost x ``cost_margin``); the pre-warm mark and the
      successor floor (:meth:`successor_floor`) follow it;
    - :meth:`launchable` — whether an account may be launched at all (not
      blocked, not limit-reached). Override it to forbid accounts outright:
      every selection, including the fallbacks, goes through it;
    - :meth:`eligible` — whether an account is a good successor
      (launchable and above rotation floor + margin + hysteresis in every
      window);
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
        A successor needs rotation floor + margin + hysteresis remaining in
        every window, so an account that just recovered a few percent is not
        picked back and forth.
    ``cost_margin`` (default 2)
        How many expected turns must fit: a window's rotation floor is
        ``max(threshold, turn_cost x cost_margin)``, where ``turn_cost`` is
        the candidate's own expected cost of its next turn in that window
        kind (:attr:`Candidate.turn_cost`). The margin covers a turn dearer
        than the estimate and the quota Codex spends where the supervisor
        cannot see it (the TUI's side requests). Measured in
        ``benchmarks/bench_predictive.py`` (1000 sessions of 20 turns): 1.5
        let 1 turn in 20,000 start that failed, 2 none; the price is about 5
        points more left on an account when it is rotated away from (still
        usable later).
    ``last_resort_margin`` (default 1.25)
        When no account is a comfortable successor, an account can still
        take a turn (:meth:`can_take_turn`) if every window has more than
        ``turn_cost x last_resort_margin`` left.
    ``pause_when_drained`` (default True)
        When the running account cannot take another turn and no account
        can, :meth:`decide` says :class:`PauseAtBoundary` (and :meth:`choose`
        waits) instead of letting a turn start that would fail midway. False
        keeps using an account until it runs out.
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
    running) that can still take a turn; :class:`WaitUntil` only when no
    account is launchable (or, with ``pause_when_drained``, none can take a
    turn).

    Predictive rotation: with a ``turn_cost`` on the running account, a
    window whose remaining quota will not cover the next turn (times
    ``cost_margin``) rotates at the next turn boundary even above its
    threshold, and pre-warms ``prewarm_margin`` before that; the decision's
    reason then names the expected turn (``five-hour 7% left …, at or below
    the expected next turn (5% x 2 = 10%)``). Adding a cost never makes a
    decision less urgent, except that a successor must now also fit its own
    expected turn: :class:`Continue` can replace a rotation when no account
    does. A successor is eligible only when it is calm on its own terms, so
    the account just rotated to does not itself ask for a pre-warm.
    """

    rotate_at: Mapping[WindowKind, float] = attrs.field(
        default=None, converter=_rotate_at, hash=False
    )
    prewarm_margin: Mapping[WindowKind, float] = attrs.field(
        default=None, converter=_prewarm_margin, hash=False
    )
    hysteresis: float = attrs.field(default=5.0, converter=_float, validator=_percent)
    cost_margin: float = attrs.field(default=2.0, converter=_float, validator=_positive)
    last_resort_margin: float = attrs.field(default=1.25, converter=_float, validator=_positive)
    pause_when_drained: bool = attrs.field(
        default=True, validator=attrs.validators.instance_of(bool)
    )
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

    def rotation_floor(self, kind: WindowKind, candidate: Candidate | None = None) -> float | None:
        """Remaining percent at or below which a ``kind`` window of ``candidate`` rotates.

        ``max(threshold, turn_cost x cost_margin)``, the candidate's own
        expected turn cost in that window kind; the bare threshold without a
        candidate or a cost; ``None`` for a kind without a threshold. The
        pre-warm mark is this floor + ``prewarm_margin`` and the successor
        floor this floor + margin + ``hysteresis``. Override it to weigh turn
        costs differently; keep it pure and never below the threshold.
        """
        threshold = self.rotate_at.get(kind)
        if threshold is None:
            return None
        cost = 0.0 if candidate is None else candidate.turn_cost.get(kind, 0.0)
        return max(threshold, cost * self.cost_margin)

    def successor_floor(self, kind: WindowKind, candidate: Candidate | None = None) -> float | None:
        """Remaining percent a successor needs in a ``kind`` window (None: no limit).

        :meth:`rotation_floor` + ``prewarm_margin`` + ``hysteresis``, so that
        the account rotated to is not itself at its pre-warm mark; without a
        candidate, the floor of an account whose turn cost is unknown.
        """
        floor = self.rotation_floor(kind, candidate)
        if floor is None:
            return None
        return floor + self.prewarm_margin.get(kind, 0.0) + self.hysteresis

    # -- selecting ----------------------------------------------------------------

    def launchable(self, candidate: Candidate, now: datetime) -> bool:
        """Whether ``candidate`` may be launched at all: not blocked, not limit-reached."""
        now = _utc(now, "now")
        if candidate.blocked_until is not None and candidate.blocked_until > now:
            return False
        return not self.pressure(candidate.name, candidate.snapshot, now).limit_reached

    def can_take_turn(self, candidate: Candidate, now: datetime) -> bool:
        """Whether ``candidate`` is launchable and expected to finish one more turn.

        Every window with a learned :attr:`Candidate.turn_cost` must have more
        remaining than that cost x ``last_resort_margin`` (no threshold,
        pre-warm margin or hysteresis: this is the last-resort test, not the
        comfortable one), or be untouched (100 % left). Without learned
        costs, launchable is enough.
        """
        if not self.launchable(candidate, now):
            return False
        if not candidate.turn_cost:
            return True
        pressure = self.pressure(candidate.name, candidate.snapshot, now)
        # A window with nothing used takes any turn: an estimate inflated by
        # spend from elsewhere must not lock an account out for good.
        return all(
            w.remaining_percent >= 100.0
            or w.remaining_percent > candidate.turn_cost.get(w.kind, 0.0) * self.last_resort_margin
            for w in pressure.windows
        )

    def eligible(self, candidate: Candidate, now: datetime) -> bool:
        """Whether ``candidate`` is a good successor: launchable, with headroom everywhere.

        Headroom means :meth:`successor_floor` (rotation floor, with the
        candidate's own expected turn cost, + margin + hysteresis) remaining
        in every window that has a threshold. An account without a snapshot
        is eligible (:meth:`rank` puts it after the known ones).
        """
        if not self.launchable(candidate, now):
            return False
        pressure = self.pressure(candidate.name, candidate.snapshot, now)
        for window in pressure.windows:
            floor = self.successor_floor(window.kind, candidate)
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
        if self.pause_when_drained:
            # A low account beats none, but not one that cannot finish a turn.
            usable = [c for c in usable if self.can_take_turn(c, now)]
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
        :meth:`cooldown_for` computes it) — and, with ``pause_when_drained``,
        the reset of any window with less left than the expected turn cost;
        ``now`` when none holds. A
        subclass that forbids accounts in :meth:`launchable` should extend
        this to say when its rule lifts; otherwise a :class:`WaitUntil` that
        depends on such an account rechecks after ``unknown_reset_backoff``.
        """
        now = _utc(now, "now")
        until = now
        if candidate.blocked_until is not None and candidate.blocked_until > now:
            until = candidate.blocked_until
        pressure = self.pressure(candidate.name, candidate.snapshot, now)
        if pressure.limit_reached:
            until = max(until, self.cooldown_for(candidate.snapshot, now)[1])
        elif self.pause_when_drained and candidate.turn_cost:
            # Too little left for a turn: usable again when the short window resets.
            for window in pressure.windows:
                cost = candidate.turn_cost.get(window.kind, 0.0) * self.last_resort_margin
                short = 0.0 < window.remaining_percent < 100.0 and window.remaining_percent <= cost
                if short and window.resets_at is not None:
                    until = max(until, window.resets_at)
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
            elif self.pause_when_drained and not self.can_take_turn(candidate, now):
                parts.append(
                    f"{candidate.name!r} has too little left for its next turn "
                    f"({pressure.describe()}; a turn costs about {_costs(candidate)})"
                )
            else:
                parts.append(f"{candidate.name!r} not launchable")
        return "; ".join(parts)

    # -- the running account ----------------------------------------------------------

    def decide(  # noqa: PLR0911 - one return per kind of decision reads best
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
        - A window at or below its :meth:`rotation_floor` (the threshold, or
          the expected next turn x ``cost_margin`` when that is more):
          :class:`RotateAtBoundary` to the best eligible successor; at or
          below floor + margin: :class:`Prewarm` it. With no eligible
          successor: :class:`Continue` (keep using the account until it runs
          out) — unless, with ``pause_when_drained``, the account has less
          left than the next turn's expected cost: then
          :class:`RotateAtBoundary` to an account that can still take a turn
          (:meth:`can_take_turn`), or :class:`PauseAtBoundary` until the
          earliest moment one can.
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
        level, window, floor = self._tightest(pressure, current)
        if level == _CALM:
            room = pressure.describe()
            return Continue(
                reason=f"account {current.name!r} has room ({room}); no rotation needed"
            )
        assert window is not None
        why = (
            f"account {current.name!r} has {window.describe()}, "
            f"{self._mark(level, window.kind, current, floor)}"
        )
        ranked = self.rank(rest, now)
        if not ranked:
            if (
                level == _ROTATE
                and self.pause_when_drained
                and not self.can_take_turn(current, now)
            ):
                return self._drained(current, rest, now, why)
            return Continue(
                reason=f"{why}, but no other account is eligible ({self._floors(rest)}); "
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

    def _drained(
        self, current: Candidate, rest: Sequence[Candidate], now: datetime, why: str
    ) -> Decision:
        # The current account cannot finish the next turn and no account is
        # a comfortable successor: one that can still take a turn will do;
        # else nobody can, so pause rather than start a turn that will fail.
        fallback = self._pick(rest, now)
        if fallback is not None:
            about = self.pressure(fallback.name, fallback.snapshot, now).summary()
            return RotateAtBoundary(
                successor=fallback.name,
                reason=f"{why}, less than the next turn needs; no account is a comfortable "
                f"successor, rotating to {fallback.name!r} ({about}), which can still take a turn",
            )
        until, first = self._earliest([current, *rest], now)
        return PauseAtBoundary(
            until=until,
            reason=f"{why}, less than the next turn needs, and no other account can take a "
            f"turn either; pausing at the turn boundary until {_when(until, now)}, when "
            f"{first!r} can",
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

    def _tightest(
        self, pressure: Pressure, current: Candidate
    ) -> tuple[int, WindowPressure | None, float]:
        best: tuple[tuple[Any, ...], int, WindowPressure, float] | None = None
        for window in pressure.windows:
            floor = self.rotation_floor(window.kind, current)
            if floor is None:
                continue
            margin = self.prewarm_margin.get(window.kind, 0.0)
            if window.remaining_percent <= floor:
                level = _ROTATE
            elif window.remaining_percent <= floor + margin:
                level = _PREWARM
            else:
                level = _CALM
            key = (-level, window.remaining_percent - floor, _KIND_ORDER[window.kind])
            if best is None or key < best[0]:
                best = (key, level, window, floor)
        if best is None:
            return _CALM, None, 0.0
        return best[1], best[2], best[3]

    def _mark(self, level: int, kind: WindowKind, current: Candidate, floor: float) -> str:
        """Which line a window crossed, and why that line lies where it does."""
        threshold = self.rotate_at[kind]
        margin = self.prewarm_margin.get(kind, 0.0)
        if floor <= threshold:
            if level == _ROTATE:
                return f"at or below the rotation threshold of {_pct(threshold)}%"
            return f"at or below the pre-warm mark of {_pct(floor + margin)}%"
        cost = current.turn_cost.get(kind, 0.0)
        if cost > 0.0 and floor == cost * self.cost_margin:
            product = f"{_pct(cost)}% x {self.cost_margin:g} = {_pct(floor)}%"
            if level == _ROTATE:
                return f"at or below the expected next turn ({product})"
            line = f"the expected next turn, {product}"
        else:  # a subclass's rotation_floor: say where it lies, not why
            if level == _ROTATE:
                return f"at or below the rotation floor of {_pct(floor)}%"
            line = f"the rotation floor, {_pct(floor)}%"
        return (
            f"at or below the pre-warm mark of {_pct(floor + margin)}% "
            f"({line}, plus a {_pct(margin)}% margin)"
        )

    def _floors(self, rest: Sequence[Candidate] = ()) -> str:
        parts = []
        for kind in sorted(self.rotate_at, key=lambda k: _DISPLAY_ORDER[k]):
            floor = self.successor_floor(kind)
            assert floor is not None
            parts.append(f"{_label(kind)} >= {_pct(floor)}%")
        text = "a successor needs " + ", ".join(parts)
        if any(c.turn_cost for c in rest):
            text += ", more where its expected turn cost asks for it"
        return text

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
    if any(w.used_percent >= 100.0 for w in snapshot.windows):
        # The flag is explained by the windows observed full, and every one
        # of them has reset since: the block ends with them (a full five-hour
        # window must not hold the account until the weekly reset).
        return False
    # An unexplained flag names no window: it holds until every reported
    # window has reset, and for good when the snapshot has no window at all.
    return snapshot.limit_reached and (bool(live) or not snapshot.windows)


def _culprits(snapshot: QuotaSnapshot, now: datetime) -> list[QuotaWindow]:
    live = [w for w in snapshot.windows if not _has_reset(w, now)]
    full = [w for w in live if w.used_percent >= 100.0]
    explained = any(w.used_percent >= 100.0 for w in snapshot.windows)
    if full or explained or not snapshot.limit_reached or not live:
        return full
    # A flag without a full window (it lags the percentages by a rounding):
    # the most-used live window is the one that most plausibly tripped it.
    return [max(live, key=lambda w: (w.used_percent, -_KIND_ORDER[w.kind]))]
