"""Quota snapshots as values: windows, credits, and the parsers that build them.

This is the pure half of the quota concern (ARCHITECTURE.md, D3): value
objects and tolerant JSON parsers, with no I/O and no HTTP stack, so the
rotation policy (:mod:`codex_supervisor.policy`) and anything else that only
*reads* snapshots can import it without pulling in httpx or tenacity. Fetching
and caching snapshots is :mod:`codex_supervisor.quota`'s job.

Three shapes of the same facts arrive from three places, and each has a
constructor on :class:`QuotaSnapshot`:

- the ``token_count.rate_limits`` object of a session rollout (free, passive):
  :meth:`QuotaSnapshot.from_rollout_rate_limits`;
- the ``GET …/wham/usage`` payload (no quota spent):
  :meth:`QuotaSnapshot.from_usage_payload`;
- the app-server's camelCase ``RateLimitSnapshot``:
  :meth:`QuotaSnapshot.from_app_server`.

Windows are classified by their duration (:func:`classify_window`), never by
their primary/secondary position: weekly-only plans report one 10080-minute
*primary* window.

Errors: the parsers raise only
:class:`~codex_supervisor.errors.QuotaParseError`, whatever JSON they are
given; the value objects raise ``ValueError`` for values that mean nothing
(a naive datetime, a non-finite percentage).
"""

from __future__ import annotations

import contextlib
import enum
import math
from collections.abc import Iterable, Iterator, Mapping
from datetime import UTC, datetime, timedelta
from typing import Any, final

import attrs

from .errors import QuotaParseError

__all__ = [
    "FIVE_HOUR_MINUTES",
    "WEEKLY_MINUTES",
    "Credits",
    "QuotaSnapshot",
    "QuotaWindow",
    "SnapshotSource",
    "WindowKind",
    "classify_window",
]

#: Nominal length of the five-hour window, in minutes.
FIVE_HOUR_MINUTES = 300
#: Nominal length of the weekly window, in minutes.
WEEKLY_MINUTES = 10080

# Relative tolerance of classify_window: the usage endpoint states windows in
# seconds and rounding (or a backend that trims a window by a few minutes) must
# not turn a five-hour window into "other".
_WINDOW_TOLERANCE = 0.1
# Rust's i64, the widest integer Codex itself accepts for these fields.
_MAX_INT = 2**63 - 1


class WindowKind(enum.Enum):
    """What a quota window limits, judged by its duration."""

    FIVE_HOUR = "five_hour"
    WEEKLY = "weekly"
    OTHER = "other"


def classify_window(minutes: int | None) -> WindowKind:
    """Classify a window by its length in minutes (±10 %), never by position.

    ``None`` (a window whose length was not stated) is :attr:`WindowKind.OTHER`.
    """
    if minutes is None:
        return WindowKind.OTHER
    for nominal, kind in (
        (FIVE_HOUR_MINUTES, WindowKind.FIVE_HOUR),
        (WEEKLY_MINUTES, WindowKind.WEEKLY),
    ):
        if abs(minutes - nominal) <= nominal * _WINDOW_TOLERANCE:
            return kind
    return WindowKind.OTHER


class SnapshotSource(enum.Enum):
    """Where a snapshot came from (freshness and trust differ per source)."""

    ROLLOUT = "rollout"
    USAGE_ENDPOINT = "usage_endpoint"
    APP_SERVER = "app_server"


# -- value objects ----------------------------------------------------------------


def _clamp_percent(value: float) -> float:
    # Clamped so that consumers can compute remaining quota without guarding:
    # the backend has sent values over 100 once a window overflows, and a
    # negative share of a window means nothing.
    number = float(value)
    if not math.isfinite(number):
        raise ValueError(f"used_percent must be finite, not {value!r}")
    return min(100.0, max(0.0, number))


def _to_utc(value: datetime) -> datetime:
    if value.tzinfo is None or value.utcoffset() is None:
        raise ValueError(f"expected an aware datetime, got naive {value!r}")
    return value.astimezone(UTC)


def _to_utc_or_none(value: datetime | None) -> datetime | None:
    return None if value is None else _to_utc(value)


def _default_kind(window: QuotaWindow) -> WindowKind:
    return classify_window(window.window_minutes)


@final
@attrs.frozen(kw_only=True)
class QuotaWindow:
    """One quota window of an account: how much is used and when it resets.

    ``used_percent`` is clamped to 0..100 on construction (non-finite values
    are rejected). ``kind`` defaults to :func:`classify_window` of
    ``window_minutes``.
    """

    used_percent: float = attrs.field(converter=_clamp_percent)
    window_minutes: int | None = None
    resets_at: datetime | None = attrs.field(default=None, converter=_to_utc_or_none)
    kind: WindowKind = attrs.field(
        default=attrs.Factory(_default_kind, takes_self=True),
    )

    @property
    def remaining_percent(self) -> float:
        """The share of the window still available, 0..100."""
        return 100.0 - self.used_percent


@final
@attrs.frozen(kw_only=True)
class Credits:
    """Purchased credits, which Codex spends once the plan's windows run out."""

    has_credits: bool
    unlimited: bool
    balance: str | None = None


def _to_windows(value: Iterable[QuotaWindow]) -> tuple[QuotaWindow, ...]:
    return tuple(value)


@final
@attrs.frozen(kw_only=True)
class QuotaSnapshot:
    """What one source said about one account's quota at one moment.

    ``limit_id`` is Codex's metered-limit id (``"codex"`` for the account's
    main Codex quota) when the source states it; rollouts and app-servers may
    also report per-model limits under other ids.
    """

    account: str
    windows: tuple[QuotaWindow, ...] = attrs.field(default=(), converter=_to_windows)
    plan_type: str | None = None
    credits: Credits | None = None
    limit_reached: bool = False
    source: SnapshotSource
    observed_at: datetime = attrs.field(converter=_to_utc)
    limit_id: str | None = None

    @property
    def is_main_quota(self) -> bool:
        """Whether this is the account's main Codex quota (limit id ``codex``, or none stated).

        Codex also reports other metered limits; they are not the account's.
        """
        return self.limit_id in (None, "codex")

    def window(self, kind: WindowKind) -> QuotaWindow | None:
        """The window of ``kind``; if several, the most used one (the binding limit)."""
        matching = [w for w in self.windows if w.kind is kind]
        return max(matching, key=lambda w: w.used_percent) if matching else None

    @property
    def five_hour(self) -> QuotaWindow | None:
        """The five-hour window, if the plan has one."""
        return self.window(WindowKind.FIVE_HOUR)

    @property
    def weekly(self) -> QuotaWindow | None:
        """The weekly window, if reported."""
        return self.window(WindowKind.WEEKLY)

    def age(self, now: datetime) -> timedelta:
        """How long before ``now`` (aware) this snapshot was observed."""
        return now - self.observed_at

    @classmethod
    def from_usage_payload(
        cls, payload: object, *, account: str, observed_at: datetime
    ) -> QuotaSnapshot:
        """Read the JSON of ``GET …/wham/usage`` (CODEX_FACTS.md §7).

        ``rate_limit.primary_window`` / ``secondary_window`` give the windows
        (``limit_window_seconds`` → minutes, rounded up as Codex does;
        ``reset_at`` epoch, else ``reset_after_seconds`` after
        ``observed_at``). ``additional_rate_limits`` are ignored: they are
        per-model limits that Codex reports as separate snapshots with their
        own limit id, and mixing them in would make a model's weekly limit look
        like the account's. The snapshot's ``limit_id`` is ``"codex"``.
        """
        observed_at = _to_utc(observed_at)
        with _parsing("usage payload"):
            root = _as_object(payload, "payload")
            windows: list[QuotaWindow] = []
            reached = False
            rate_limit = _opt_object(root, "rate_limit", "payload")
            if rate_limit is not None:
                for key in ("primary_window", "secondary_window"):
                    where = f"rate_limit.{key}"
                    raw = _opt_object(rate_limit, key, "rate_limit")
                    if raw is None:
                        continue
                    seconds = _opt_int(raw, "limit_window_seconds", where)
                    minutes = None if seconds is None or seconds <= 0 else -(-seconds // 60)
                    windows.append(
                        QuotaWindow(
                            used_percent=_percent(raw, "used_percent", where),
                            window_minutes=minutes,
                            resets_at=_resets(
                                raw, "reset_at", "reset_after_seconds", observed_at, where
                            ),
                        )
                    )
                reached = bool(_opt_bool(rate_limit, "limit_reached", "rate_limit")) or (
                    _opt_bool(rate_limit, "allowed", "rate_limit") is False
                )
            reached = reached or root.get("rate_limit_reached_type") is not None
            return cls._build(
                account=account,
                windows=windows,
                plan_type=_opt_str(root, "plan_type", "payload"),
                credit_info=_credits(root, "credits", ("has_credits", "unlimited"), "payload"),
                flag=reached,
                source=SnapshotSource.USAGE_ENDPOINT,
                observed_at=observed_at,
                limit_id="codex",
            )

    @classmethod
    def from_rollout_rate_limits(
        cls, obj: object, *, account: str, observed_at: datetime
    ) -> QuotaSnapshot:
        """Read a rollout ``token_count.rate_limits`` object (CODEX_FACTS.md §4).

        Windows carry ``used_percent``, ``window_minutes`` and ``resets_at``
        (epoch) or, from older Codex versions, ``resets_in_seconds`` counted
        from ``observed_at`` (pass the rollout line's timestamp). Some builds
        write ``rate_limits: null``; that is the caller's case to handle, and
        passing ``None`` here raises :class:`QuotaParseError`.
        """
        observed_at = _to_utc(observed_at)
        with _parsing("rollout rate_limits"):
            root = _as_object(obj, "rate_limits")
            windows = [
                QuotaWindow(
                    used_percent=_percent(raw, "used_percent", key),
                    window_minutes=_opt_minutes(raw, "window_minutes", key),
                    resets_at=_resets(raw, "resets_at", "resets_in_seconds", observed_at, key),
                )
                for key in ("primary", "secondary")
                if (raw := _opt_object(root, key, "rate_limits")) is not None
            ]
            return cls._build(
                account=account,
                windows=windows,
                plan_type=_opt_str(root, "plan_type", "rate_limits"),
                credit_info=_credits(root, "credits", ("has_credits", "unlimited"), "rate_limits"),
                flag=root.get("rate_limit_reached_type") is not None,
                source=SnapshotSource.ROLLOUT,
                observed_at=observed_at,
                limit_id=_opt_str(root, "limit_id", "rate_limits"),
            )

    @classmethod
    def from_app_server(cls, obj: object, *, account: str, observed_at: datetime) -> QuotaSnapshot:
        """Read the app-server's camelCase ``RateLimitSnapshot`` (CODEX_FACTS.md §8).

        Pass the snapshot itself (``result.rateLimits`` of
        ``account/rateLimits/read``, ``params.rateLimits`` of
        ``account/rateLimits/updated``), not the envelope.
        """
        observed_at = _to_utc(observed_at)
        with _parsing("app-server RateLimitSnapshot"):
            root = _as_object(obj, "rateLimits")
            windows = [
                QuotaWindow(
                    used_percent=_percent(raw, "usedPercent", key),
                    window_minutes=_opt_minutes(raw, "windowDurationMins", key),
                    resets_at=_resets(raw, "resetsAt", None, observed_at, key),
                )
                for key in ("primary", "secondary")
                if (raw := _opt_object(root, key, "rateLimits")) is not None
            ]
            return cls._build(
                account=account,
                windows=windows,
                plan_type=_opt_str(root, "planType", "rateLimits"),
                credit_info=_credits(root, "credits", ("hasCredits", "unlimited"), "rateLimits"),
                flag=root.get("rateLimitReachedType") is not None,
                source=SnapshotSource.APP_SERVER,
                observed_at=observed_at,
                limit_id=_opt_str(root, "limitId", "rateLimits"),
            )

    @classmethod
    def _build(
        cls,
        *,
        account: str,
        windows: list[QuotaWindow],
        plan_type: str | None,
        credit_info: Credits | None,
        flag: bool,
        source: SnapshotSource,
        observed_at: datetime,
        limit_id: str | None,
    ) -> QuotaSnapshot:
        # A full window blocks the account whatever the flag says: the flag
        # lags behind, or is absent from rollouts altogether.
        reached = flag or any(w.used_percent >= 100.0 for w in windows)
        return cls(
            account=account,
            windows=tuple(windows),
            plan_type=plan_type,
            credits=credit_info,
            limit_reached=reached,
            source=source,
            observed_at=observed_at,
            limit_id=limit_id,
        )


# -- tolerant JSON readers ----------------------------------------------------------


@contextlib.contextmanager
def _parsing(what: str) -> Iterator[None]:
    """Turn any stray builtin error of a parser into QuotaParseError.

    The readers below check every type they touch, so this is a net for the
    contract "arbitrary JSON raises only QuotaParseError", not the primary
    defence.
    """
    try:
        yield
    except QuotaParseError:
        raise
    except (
        TypeError,
        ValueError,
        OverflowError,
        KeyError,
        AttributeError,
        RecursionError,
    ) as exc:
        raise QuotaParseError(f"malformed {what}: {exc}") from exc


def _type_name(value: object) -> str:
    return "null" if value is None else type(value).__name__


def _as_object(value: object, where: str) -> Mapping[str, Any]:
    if not isinstance(value, dict):
        raise QuotaParseError(f"{where}: expected an object, got {_type_name(value)}")
    return value


def _opt_object(parent: Mapping[str, Any], key: str, where: str) -> Mapping[str, Any] | None:
    value = parent.get(key)
    return None if value is None else _as_object(value, f"{where}.{key}")


def _number(value: object, where: str) -> float:
    # bool is an int in Python but never a number in JSON.
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise QuotaParseError(f"{where}: expected a number, got {_type_name(value)}")
    try:
        number = float(value)
    except OverflowError as exc:
        raise QuotaParseError(f"{where}: number out of range") from exc
    if not math.isfinite(number):
        raise QuotaParseError(f"{where}: expected a finite number, got {value!r}")
    return number


def _opt_number(parent: Mapping[str, Any], key: str, where: str) -> float | None:
    value = parent.get(key)
    return None if value is None else _number(value, f"{where}.{key}")


def _percent(parent: Mapping[str, Any], key: str, where: str) -> float:
    value = parent.get(key)
    if value is None:
        raise QuotaParseError(f"{where}.{key}: missing")
    return _number(value, f"{where}.{key}")


def _opt_int(parent: Mapping[str, Any], key: str, where: str) -> int | None:
    value = parent.get(key)
    if value is None:
        return None
    if isinstance(value, int) and not isinstance(value, bool):
        number: int = value
    else:
        as_float = _number(value, f"{where}.{key}")
        if not as_float.is_integer():
            raise QuotaParseError(f"{where}.{key}: expected an integer, got {value!r}")
        number = int(as_float)
    if abs(number) > _MAX_INT:
        raise QuotaParseError(f"{where}.{key}: integer out of range")
    return number


def _opt_minutes(parent: Mapping[str, Any], key: str, where: str) -> int | None:
    minutes = _opt_int(parent, key, where)
    # Zero or negative is "length not stated", not a window that never resets.
    return None if minutes is None or minutes <= 0 else minutes


def _opt_str(parent: Mapping[str, Any], key: str, where: str) -> str | None:
    value = parent.get(key)
    if value is None or isinstance(value, str):
        return value
    raise QuotaParseError(f"{where}.{key}: expected a string, got {_type_name(value)}")


def _opt_bool(parent: Mapping[str, Any], key: str, where: str) -> bool | None:
    value = parent.get(key)
    if value is None or isinstance(value, bool):
        return value
    raise QuotaParseError(f"{where}.{key}: expected a boolean, got {_type_name(value)}")


def _resets(
    parent: Mapping[str, Any],
    epoch_key: str,
    relative_key: str | None,
    observed_at: datetime,
    where: str,
) -> datetime | None:
    epoch = _opt_number(parent, epoch_key, where)
    # Epoch 0 (or less) is how some payloads say "no reset time".
    if epoch is not None and epoch > 0:
        try:
            return datetime.fromtimestamp(epoch, UTC)
        except (OverflowError, OSError, ValueError) as exc:
            raise QuotaParseError(f"{where}.{epoch_key}: timestamp out of range") from exc
    relative = None if relative_key is None else _opt_number(parent, relative_key, where)
    if relative is None:
        return None
    try:
        return observed_at + timedelta(seconds=max(0.0, relative))
    except OverflowError as exc:
        raise QuotaParseError(f"{where}.{relative_key}: duration out of range") from exc


def _credits(
    parent: Mapping[str, Any], key: str, flags: tuple[str, str], where: str
) -> Credits | None:
    raw = _opt_object(parent, key, where)
    if raw is None:
        return None
    where = f"{where}.{key}"
    has_key, unlimited_key = flags
    balance = raw.get("balance")
    if balance is not None and not isinstance(balance, str):
        # Some backends send the balance as a JSON number; keep its text.
        number = _number(balance, f"{where}.balance")
        balance = str(balance) if isinstance(balance, int) else repr(number)
    return Credits(
        has_credits=bool(_opt_bool(raw, has_key, where)),
        unlimited=bool(_opt_bool(raw, unlimited_key, where)),
        balance=balance,
    )
