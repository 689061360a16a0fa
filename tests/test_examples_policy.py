"""examples/weekday_policy.py: a RotationPolicy subclass that keeps accounts for the weekend."""

from __future__ import annotations

import importlib.util
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from codex_supervisor.errors import ConfigError
from codex_supervisor.policy import (
    Candidate,
    Continue,
    RotateAtBoundary,
    RotateNow,
    RotationPolicy,
    Strategy,
    WaitUntil,
)
from codex_supervisor.quota import QuotaSnapshot, QuotaWindow, SnapshotSource

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "weekday_policy.py"
MONDAY = datetime(2026, 5, 4, 12, 0, tzinfo=UTC)
SATURDAY = datetime(2026, 5, 9, 12, 0, tzinfo=UTC)
# Saturday 00:00 in Berlin (CEST, UTC+2) is Friday 22:00 UTC.
BERLIN_WEEKEND = datetime(2026, 5, 8, 22, 0, tzinfo=UTC)


def _load() -> ModuleType:
    spec = importlib.util.spec_from_file_location("weekday_policy_example", EXAMPLE)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def example() -> ModuleType:
    """The example module, loaded from its file (examples/ is not a package)."""
    return _load()


@pytest.fixture
def policy(example: ModuleType) -> RotationPolicy:
    """A WeekdayPolicy keeping 'personal' for Berlin weekends."""
    made: RotationPolicy = example.WeekdayPolicy(
        weekend_only={"personal"}, timezone="Europe/Berlin"
    )
    return made


def cand(
    name: str, used: float, now: datetime, *, weekly: float | None = None, **kw: Any
) -> Candidate:
    """A candidate with ``used`` percent used of its five-hour window (and weekly, by default)."""
    weekly = used if weekly is None else weekly
    windows = (
        QuotaWindow(used_percent=used, window_minutes=300, resets_at=now + timedelta(hours=2)),
        QuotaWindow(used_percent=weekly, window_minutes=10080, resets_at=now + timedelta(days=3)),
    )
    snapshot = QuotaSnapshot(
        account=name, windows=windows, source=SnapshotSource.USAGE_ENDPOINT, observed_at=now
    )
    return Candidate(name=name, snapshot=snapshot, **kw)


def test_is_a_rotation_policy_with_the_base_configuration(example: ModuleType) -> None:
    """The subclass keeps every base setting and its defaults."""
    p = example.WeekdayPolicy(weekend_only=["personal"], strategy="drain")
    assert p.weekend_only == frozenset({"personal"})
    assert isinstance(p, RotationPolicy)
    assert p.strategy is Strategy.DRAIN
    assert p.hysteresis == RotationPolicy().hysteresis
    assert example.WeekdayPolicy().timezone is UTC


def test_weekend_only_account_is_skipped_on_weekdays(policy: RotationPolicy) -> None:
    """On a weekday the weekend-only account is not chosen, though it has the most headroom."""
    pool = [cand("personal", 0, MONDAY), cand("work", 40, MONDAY)]
    assert not policy.launchable(pool[0], MONDAY)
    assert not policy.eligible(pool[0], MONDAY)
    assert [c.name for c in policy.rank(pool, MONDAY)] == ["work"]
    assert policy.choose(pool, MONDAY) == "work"


def test_weekend_only_account_is_used_at_the_weekend(policy: RotationPolicy) -> None:
    """On Saturday the weekend-only account is an ordinary, preferred member of the pool."""
    pool = [cand("personal", 0, SATURDAY), cand("work", 40, SATURDAY)]
    assert policy.choose(pool, SATURDAY) == "personal"


def test_the_weekend_starts_in_the_configured_time_zone(example: ModuleType) -> None:
    """Friday 23:30 UTC is already Saturday in Berlin but not in UTC."""
    friday_night = datetime(2026, 5, 8, 23, 30, tzinfo=UTC)
    pool = [cand("personal", 0, friday_night), cand("work", 40, friday_night)]
    berlin = example.WeekdayPolicy(weekend_only={"personal"}, timezone="Europe/Berlin")
    utc = example.WeekdayPolicy(weekend_only={"personal"})
    assert berlin.choose(pool, friday_night) == "personal"
    assert utc.choose(pool, friday_night) == "work"


def test_fallback_never_uses_the_forbidden_account(policy: RotationPolicy) -> None:
    """When nothing is eligible, the low fallback is still never the weekend-only account."""
    pool = [cand("personal", 0, MONDAY), cand("work", 96, MONDAY)]
    assert policy.choose(pool, MONDAY) == "work"


def test_waits_for_the_weekend_when_only_the_forbidden_account_is_left(
    policy: RotationPolicy,
) -> None:
    """With only the weekend-only account left on a weekday, wait until Saturday 00:00 local."""
    # 'work' is weekly-exhausted until Thursday, 'personal' is free from Saturday.
    pool = [cand("personal", 0, MONDAY), cand("work", 100, MONDAY, weekly=100)]
    decision = policy.choose(pool, MONDAY)
    assert isinstance(decision, WaitUntil)
    assert decision.until == MONDAY + timedelta(days=3)
    pool = [cand("personal", 0, MONDAY)]
    decision = policy.choose(pool, MONDAY)
    assert isinstance(decision, WaitUntil)
    assert decision.until == BERLIN_WEEKEND
    blocked = cand("personal", 0, MONDAY, blocked_until=BERLIN_WEEKEND + timedelta(hours=5))
    later = policy.choose([blocked], MONDAY)
    assert isinstance(later, WaitUntil)
    assert later.until == BERLIN_WEEKEND + timedelta(hours=5)


def test_decide_never_names_the_forbidden_account_on_weekdays(policy: RotationPolicy) -> None:
    """decide picks successors and cut-over targets around the weekend-only account."""
    personal = cand("personal", 0, MONDAY)
    spare = cand("spare", 30, MONDAY)
    at_threshold = policy.decide(cand("work", 96, MONDAY), [personal, spare], MONDAY)
    assert at_threshold == RotateAtBoundary(successor="spare", reason=at_threshold.reason)
    alone = policy.decide(cand("work", 96, MONDAY), [personal], MONDAY)
    assert isinstance(alone, Continue)
    # 'work' ran out of its five-hour window, which resets in 2 h: sooner than the weekend.
    exhausted = policy.decide(cand("work", 100, MONDAY, weekly=0), [personal], MONDAY)
    assert isinstance(exhausted, WaitUntil)
    assert exhausted.until == MONDAY + timedelta(hours=2)
    friday = datetime(2026, 5, 8, 21, 0, tzinfo=UTC)
    exhausted = policy.decide(
        cand("work", 100, friday, weekly=0), [cand("personal", 0, friday)], friday
    )
    assert isinstance(exhausted, WaitUntil)
    assert exhausted.until == BERLIN_WEEKEND
    weekend = policy.decide(cand("work", 100, SATURDAY), [cand("personal", 0, SATURDAY)], SATURDAY)
    assert weekend == RotateNow(successor="personal", reason=weekend.reason)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"timezone": "Mars/Olympus_Mons"},
        {"timezone": ""},
        {"weekend_only": "personal"},
        {"hysteresis": -1},
    ],
)
def test_invalid_settings_are_config_errors(example: ModuleType, kwargs: dict[str, Any]) -> None:
    """An unknown zone, a bare string of names or a bad base setting raise ConfigError."""
    with pytest.raises(ConfigError):
        example.WeekdayPolicy(**kwargs)
