"""snapshots: window classification, the tolerant parsers and their round trips."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from codex_supervisor import errors
from codex_supervisor._convert import structure, unstructure
from codex_supervisor.snapshots import (
    Credits,
    QuotaSnapshot,
    QuotaWindow,
    SnapshotSource,
    WindowKind,
    classify_window,
)

OBSERVED = datetime(2026, 5, 1, 12, 0, tzinfo=UTC)
RESET_5H = 1795339672
RESET_WEEK = 1795739672

USAGE_PAYLOAD: dict[str, Any] = {
    "plan_type": "plus",
    "rate_limit": {
        "allowed": True,
        "limit_reached": False,
        "primary_window": {
            "used_percent": 37,
            "limit_window_seconds": 18000,
            "reset_after_seconds": 1200,
            "reset_at": RESET_5H,
        },
        "secondary_window": {
            "used_percent": 41,
            "limit_window_seconds": 604800,
            "reset_after_seconds": 400000,
            "reset_at": RESET_WEEK,
        },
    },
    "credits": {"has_credits": False, "unlimited": False, "balance": "0"},
}

ROLLOUT_RATE_LIMITS: dict[str, Any] = {
    "limit_id": "codex",
    "limit_name": None,
    "primary": {"used_percent": 10.0, "window_minutes": 300, "resets_at": RESET_5H},
    "secondary": {"used_percent": 10.0, "window_minutes": 10080, "resets_at": RESET_WEEK},
    "credits": {"has_credits": False, "unlimited": False, "balance": None},
    "plan_type": "plus",
}

APP_SERVER_SNAPSHOT: dict[str, Any] = {
    "limitId": "codex",
    "limitName": None,
    "primary": {"usedPercent": 40, "windowDurationMins": 10080, "resetsAt": RESET_WEEK},
    "secondary": None,
    "credits": {"hasCredits": False, "unlimited": False, "balance": "0"},
    "planType": "plus",
    "rateLimitReachedType": None,
}

Parser = Callable[..., QuotaSnapshot]
PARSERS: dict[str, Parser] = {
    "usage": QuotaSnapshot.from_usage_payload,
    "rollout": QuotaSnapshot.from_rollout_rate_limits,
    "app_server": QuotaSnapshot.from_app_server,
}


def _epoch(seconds: int) -> datetime:
    return datetime.fromtimestamp(seconds, UTC)


# -- classification -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("minutes", "kind"),
    [
        (300, WindowKind.FIVE_HOUR),
        (299, WindowKind.FIVE_HOUR),
        (301, WindowKind.FIVE_HOUR),
        (330, WindowKind.FIVE_HOUR),
        (10080, WindowKind.WEEKLY),
        (10079, WindowKind.WEEKLY),
        (10081, WindowKind.WEEKLY),
        (None, WindowKind.OTHER),
        (0, WindowKind.OTHER),
        (60, WindowKind.OTHER),
        (1440, WindowKind.OTHER),
        (43200, WindowKind.OTHER),
    ],
)
def test_classify_window_by_duration(minutes: int | None, kind: WindowKind) -> None:
    """Windows are classified by their length in minutes, with a small tolerance."""
    assert classify_window(minutes) is kind


def test_weekly_only_primary_window_is_weekly_from_every_source() -> None:
    """A weekly-only plan's single 10080-minute *primary* window is the weekly window."""
    rollout = {"primary": {"used_percent": 55.0, "window_minutes": 10080, "resets_at": RESET_WEEK}}
    usage = {"rate_limit": {"primary_window": {"used_percent": 55, "limit_window_seconds": 604800}}}
    for snap in (
        QuotaSnapshot.from_rollout_rate_limits(rollout, account="a", observed_at=OBSERVED),
        QuotaSnapshot.from_usage_payload(usage, account="a", observed_at=OBSERVED),
        QuotaSnapshot.from_app_server(APP_SERVER_SNAPSHOT, account="a", observed_at=OBSERVED),
    ):
        assert snap.five_hour is None
        assert snap.weekly is not None
        assert snap.weekly.window_minutes == 10080


def test_window_lookup_ignores_position() -> None:
    """A weekly window reported as primary and a five-hour one as secondary land right."""
    obj = {
        "primary": {"used_percent": 70.0, "window_minutes": 10080},
        "secondary": {"used_percent": 20.0, "window_minutes": 300},
    }
    snap = QuotaSnapshot.from_rollout_rate_limits(obj, account="a", observed_at=OBSERVED)
    assert snap.weekly is not None
    assert snap.weekly.used_percent == 70.0
    assert snap.five_hour is not None
    assert snap.five_hour.used_percent == 20.0


# -- constructors on real-shaped payloads ---------------------------------------------------------


def test_usage_payload_is_read() -> None:
    """The wham/usage payload becomes windows, plan, credits and the codex limit id."""
    snap = QuotaSnapshot.from_usage_payload(USAGE_PAYLOAD, account="alice", observed_at=OBSERVED)
    assert snap.account == "alice"
    assert snap.source is SnapshotSource.USAGE_ENDPOINT
    assert snap.observed_at == OBSERVED
    assert snap.plan_type == "plus"
    assert snap.limit_id == "codex"
    assert snap.credits == Credits(has_credits=False, unlimited=False, balance="0")
    assert snap.limit_reached is False
    assert snap.five_hour == QuotaWindow(
        used_percent=37.0, window_minutes=300, resets_at=_epoch(RESET_5H)
    )
    assert snap.weekly == QuotaWindow(
        used_percent=41.0, window_minutes=10080, resets_at=_epoch(RESET_WEEK)
    )
    assert snap.five_hour.remaining_percent == 63.0


def test_usage_payload_falls_back_to_reset_after_seconds() -> None:
    """Without reset_at, the reset time is reset_after_seconds after the observation."""
    payload = {"rate_limit": {"primary_window": {"used_percent": 5, "reset_after_seconds": 90}}}
    snap = QuotaSnapshot.from_usage_payload(payload, account="a", observed_at=OBSERVED)
    assert snap.windows[0].resets_at == OBSERVED + timedelta(seconds=90)
    assert snap.windows[0].window_minutes is None
    assert snap.windows[0].kind is WindowKind.OTHER


def test_usage_payload_additional_rate_limits_are_ignored() -> None:
    """Per-model additional_rate_limits never become windows of the account."""
    payload = {
        **USAGE_PAYLOAD,
        "additional_rate_limits": [
            {
                "limit_name": "gpt-x",
                "metered_feature": "codex_x",
                "rate_limit": {
                    "primary_window": {"used_percent": 100, "limit_window_seconds": 604800}
                },
            }
        ],
    }
    snap = QuotaSnapshot.from_usage_payload(payload, account="a", observed_at=OBSERVED)
    assert len(snap.windows) == 2
    assert snap.limit_reached is False
    assert snap.weekly is not None
    assert snap.weekly.used_percent == 41.0


@pytest.mark.parametrize(
    "rate_limit_patch",
    [{"limit_reached": True}, {"allowed": False}],
)
def test_usage_payload_flags_mark_limit_reached(rate_limit_patch: dict[str, Any]) -> None:
    """limit_reached or allowed=false in the payload marks the snapshot as limited."""
    payload = {**USAGE_PAYLOAD, "rate_limit": {**USAGE_PAYLOAD["rate_limit"], **rate_limit_patch}}
    snap = QuotaSnapshot.from_usage_payload(payload, account="a", observed_at=OBSERVED)
    assert snap.limit_reached is True


def test_usage_payload_rate_limit_reached_type_marks_limit_reached() -> None:
    """A rate_limit_reached_type (e.g. credits depleted) marks the snapshot as limited."""
    payload = {**USAGE_PAYLOAD, "rate_limit_reached_type": {"type": "credits_depleted"}}
    snap = QuotaSnapshot.from_usage_payload(payload, account="a", observed_at=OBSERVED)
    assert snap.limit_reached is True


def test_rollout_rate_limits_are_read() -> None:
    """A rollout token_count.rate_limits object becomes a rollout snapshot."""
    snap = QuotaSnapshot.from_rollout_rate_limits(
        ROLLOUT_RATE_LIMITS, account="bob", observed_at=OBSERVED
    )
    assert snap.source is SnapshotSource.ROLLOUT
    assert snap.limit_id == "codex"
    assert snap.plan_type == "plus"
    assert snap.credits == Credits(has_credits=False, unlimited=False, balance=None)
    assert snap.five_hour == QuotaWindow(
        used_percent=10.0, window_minutes=300, resets_at=_epoch(RESET_5H)
    )
    assert snap.weekly == QuotaWindow(
        used_percent=10.0, window_minutes=10080, resets_at=_epoch(RESET_WEEK)
    )
    assert snap.limit_reached is False


def test_rollout_resets_in_seconds_fallback() -> None:
    """Older rollouts' resets_in_seconds count from the observation time."""
    obj = {
        "primary": {"used_percent": 12.5, "window_minutes": 300, "resets_in_seconds": 600},
        "secondary": {"used_percent": 3.0, "window_minutes": 10080, "resets_in_seconds": 86400},
    }
    snap = QuotaSnapshot.from_rollout_rate_limits(obj, account="a", observed_at=OBSERVED)
    assert snap.five_hour is not None
    assert snap.five_hour.resets_at == OBSERVED + timedelta(seconds=600)
    assert snap.weekly is not None
    assert snap.weekly.resets_at == OBSERVED + timedelta(days=1)


def test_rollout_epoch_wins_over_relative_reset() -> None:
    """When both are present, the absolute resets_at is used."""
    obj = {"primary": {"used_percent": 1, "resets_at": RESET_5H, "resets_in_seconds": 5}}
    snap = QuotaSnapshot.from_rollout_rate_limits(obj, account="a", observed_at=OBSERVED)
    assert snap.windows[0].resets_at == _epoch(RESET_5H)


def test_app_server_snapshot_is_read() -> None:
    """The app-server's camelCase RateLimitSnapshot becomes an app-server snapshot."""
    obj = {
        **APP_SERVER_SNAPSHOT,
        "primary": {"usedPercent": 20, "windowDurationMins": 300, "resetsAt": RESET_5H},
        "secondary": {"usedPercent": 60, "windowDurationMins": 10080, "resetsAt": RESET_WEEK},
        "credits": {"hasCredits": True, "unlimited": False, "balance": "12.50"},
    }
    snap = QuotaSnapshot.from_app_server(obj, account="carol", observed_at=OBSERVED)
    assert snap.source is SnapshotSource.APP_SERVER
    assert snap.limit_id == "codex"
    assert snap.plan_type == "plus"
    assert snap.credits == Credits(has_credits=True, unlimited=False, balance="12.50")
    assert snap.five_hour is not None
    assert snap.five_hour.used_percent == 20.0
    assert snap.weekly is not None
    assert snap.weekly.resets_at == _epoch(RESET_WEEK)


def test_app_server_reached_type_marks_limit_reached() -> None:
    """A non-null rateLimitReachedType marks the snapshot as limited."""
    obj = {**APP_SERVER_SNAPSHOT, "rateLimitReachedType": "rate_limit_reached"}
    snap = QuotaSnapshot.from_app_server(obj, account="a", observed_at=OBSERVED)
    assert snap.limit_reached is True


@pytest.mark.parametrize("name", sorted(PARSERS))
def test_full_window_marks_limit_reached(name: str) -> None:
    """Any window at 100 % marks the snapshot as limited, whatever the flags say."""
    payloads = {
        "usage": {
            "rate_limit": {"limit_reached": False, "secondary_window": {"used_percent": 100}}
        },
        "rollout": {"secondary": {"used_percent": 100.0, "window_minutes": 10080}},
        "app_server": {"primary": {"usedPercent": 100, "windowDurationMins": 300}},
    }
    snap = PARSERS[name](payloads[name], account="a", observed_at=OBSERVED)
    assert snap.limit_reached is True


@pytest.mark.parametrize("name", sorted(PARSERS))
def test_missing_optional_fields_are_none(name: str) -> None:
    """An empty object is a valid snapshot with no windows and no optional data."""
    snap = PARSERS[name]({}, account="a", observed_at=OBSERVED)
    assert snap.windows == ()
    assert snap.plan_type is None
    assert snap.credits is None
    assert snap.limit_reached is False
    assert snap.five_hour is None
    assert snap.weekly is None


def test_null_windows_are_absent_and_unknown_fields_ignored() -> None:
    """A null window is just absent; unknown keys anywhere are skipped."""
    obj = {
        "primary": None,
        "secondary": {"used_percent": 5.0, "window_minutes": 10080, "future_field": [1, 2]},
        "brand_new": {"x": 1},
    }
    snap = QuotaSnapshot.from_rollout_rate_limits(obj, account="a", observed_at=OBSERVED)
    assert [w.kind for w in snap.windows] == [WindowKind.WEEKLY]


def test_used_percent_is_clamped() -> None:
    """Percentages outside 0..100 are clamped on construction; non-finite ones rejected."""
    obj = {
        "primary": {"used_percent": 150.0, "window_minutes": 300},
        "secondary": {"used_percent": -5, "window_minutes": 10080},
    }
    snap = QuotaSnapshot.from_rollout_rate_limits(obj, account="a", observed_at=OBSERVED)
    assert snap.five_hour is not None
    assert snap.five_hour.used_percent == 100.0
    assert snap.weekly is not None
    assert snap.weekly.used_percent == 0.0
    assert snap.limit_reached is True
    with pytest.raises(ValueError, match="finite"):
        QuotaWindow(used_percent=math.nan)


def test_numeric_credit_balance_is_kept_as_text() -> None:
    """A balance sent as a JSON number is kept as its text."""
    for balance, text in ((5.39, "5.39"), (12, "12")):
        payload = {"credits": {"has_credits": True, "unlimited": False, "balance": balance}}
        snap = QuotaSnapshot.from_usage_payload(payload, account="a", observed_at=OBSERVED)
        assert snap.credits == Credits(has_credits=True, unlimited=False, balance=text)


def test_zero_epoch_means_no_reset_time() -> None:
    """reset_at 0 is 'not stated' and falls back to the relative field."""
    payload = {"rate_limit": {"primary_window": {"used_percent": 1, "reset_at": 0}}}
    snap = QuotaSnapshot.from_usage_payload(payload, account="a", observed_at=OBSERVED)
    assert snap.windows[0].resets_at is None


def test_naive_observed_at_is_rejected() -> None:
    """Snapshots carry aware UTC times only; a naive observation time is a caller bug."""
    naive = datetime(2026, 1, 1)  # noqa: DTZ001 - the point of the test
    with pytest.raises(ValueError, match="aware"):
        QuotaSnapshot.from_rollout_rate_limits({}, account="a", observed_at=naive)


def test_observed_at_is_normalised_to_utc() -> None:
    """An aware non-UTC observation time is stored as UTC."""
    from datetime import timezone

    local = OBSERVED.astimezone(timezone(timedelta(hours=2)))
    snap = QuotaSnapshot.from_rollout_rate_limits({}, account="a", observed_at=local)
    assert snap.observed_at == OBSERVED
    assert snap.observed_at.utcoffset() == timedelta(0)


BAD_INPUTS: list[tuple[str, object]] = [
    ("usage", None),
    ("usage", []),
    ("usage", "x"),
    ("usage", {"rate_limit": []}),
    ("usage", {"rate_limit": {"primary_window": {"used_percent": "37"}}}),
    ("usage", {"rate_limit": {"primary_window": {"used_percent": True}}}),
    ("usage", {"rate_limit": {"primary_window": {}}}),
    ("usage", {"rate_limit": {"primary_window": {"used_percent": 1, "reset_at": 10**20}}}),
    ("usage", {"rate_limit": {"primary_window": {"used_percent": 1, "limit_window_seconds": 1.5}}}),
    ("usage", {"rate_limit": {"limit_reached": "yes"}}),
    ("usage", {"plan_type": 3}),
    ("usage", {"credits": "none"}),
    ("usage", {"credits": {"has_credits": 1}}),
    ("usage", {"credits": {"balance": [1]}}),
    ("usage", {"credits": {"balance": 10**5000}}),
    ("usage", {"credits": {"balance": math.inf}}),
    ("rollout", None),
    ("rollout", 17),
    ("rollout", {"primary": "full"}),
    ("rollout", {"primary": {"used_percent": math.nan}}),
    ("rollout", {"primary": {"used_percent": math.inf}}),
    ("rollout", {"primary": {"used_percent": -math.inf}}),
    ("rollout", {"primary": {"used_percent": 10**400}}),
    ("rollout", {"primary": {"used_percent": 1, "window_minutes": 2**70}}),
    ("rollout", {"primary": {"used_percent": 1, "window_minutes": False}}),
    ("rollout", {"primary": {"used_percent": 1, "resets_in_seconds": 1e300}}),
    ("rollout", {"primary": {"used_percent": 1, "resets_at": "soon"}}),
    ("rollout", {"limit_id": 5}),
    ("app_server", ["rateLimits"]),
    ("app_server", {"primary": {"usedPercent": None}}),
    ("app_server", {"secondary": {"usedPercent": 1, "resetsAt": [1]}}),
    ("app_server", {"primary": {"usedPercent": 1, "resetsAt": 1e30}}),
    ("app_server", {"credits": {"hasCredits": "true"}}),
    ("app_server", {"planType": {"name": "plus"}}),
]


@pytest.mark.parametrize(("name", "payload"), BAD_INPUTS)
def test_malformed_inputs_raise_quota_parse_error(name: str, payload: object) -> None:
    """Wrong types, non-finite or huge numbers and non-objects raise QuotaParseError only."""
    with pytest.raises(errors.QuotaParseError):
        PARSERS[name](payload, account="a", observed_at=OBSERVED)


# -- hypothesis: arbitrary JSON and round trips ---------------------------------------------------

_scalars = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.sampled_from([10**400, -(10**400), 2**63, 1e308, -0.0])
    | st.floats()
    | st.text(max_size=6)
)
json_values = st.recursive(
    _scalars,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner, max_size=4)
    ),
    max_leaves=12,
)


def _shaped(**keys: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    # The right keys with arbitrary values reach far deeper than random dicts.
    return st.fixed_dictionaries({}, optional={k: v | json_values for k, v in keys.items()})


_usage_window = _shaped(
    used_percent=json_values,
    limit_window_seconds=json_values,
    reset_after_seconds=json_values,
    reset_at=json_values,
)
_rollout_window = _shaped(
    used_percent=json_values,
    window_minutes=json_values,
    resets_at=json_values,
    resets_in_seconds=json_values,
)
_app_window = _shaped(usedPercent=json_values, windowDurationMins=json_values, resetsAt=json_values)
SHAPED = {
    "usage": _shaped(
        plan_type=json_values,
        rate_limit=_shaped(
            allowed=json_values,
            limit_reached=json_values,
            primary_window=_usage_window,
            secondary_window=_usage_window,
        ),
        credits=_shaped(has_credits=json_values, unlimited=json_values, balance=json_values),
        rate_limit_reached_type=json_values,
        additional_rate_limits=json_values,
    ),
    "rollout": _shaped(
        limit_id=json_values,
        primary=_rollout_window,
        secondary=_rollout_window,
        credits=_shaped(has_credits=json_values, unlimited=json_values, balance=json_values),
        plan_type=json_values,
        rate_limit_reached_type=json_values,
    ),
    "app_server": _shaped(
        limitId=json_values,
        primary=_app_window,
        secondary=_app_window,
        credits=_shaped(hasCredits=json_values, unlimited=json_values, balance=json_values),
        planType=json_values,
        rateLimitReachedType=json_values,
    ),
}


def _round_trips(snap: QuotaSnapshot) -> None:
    data = json.loads(json.dumps(unstructure(snap)))
    assert structure(data, QuotaSnapshot, what="snapshot") == snap


@pytest.mark.parametrize("name", sorted(PARSERS))
@settings(max_examples=300, deadline=None)
@given(data=st.data())
def test_arbitrary_json_raises_only_quota_parse_error(name: str, data: st.DataObject) -> None:
    """Whatever JSON arrives, a parser returns a snapshot or raises QuotaParseError."""
    payload = data.draw(json_values | SHAPED[name])
    try:
        snap = PARSERS[name](payload, account="a", observed_at=OBSERVED)
    except errors.QuotaParseError:
        return
    assert isinstance(snap, QuotaSnapshot)
    assert all(0.0 <= w.used_percent <= 100.0 for w in snap.windows)
    _round_trips(snap)


_percents = st.integers(-20, 150) | st.floats(-20, 150)
_minutes = st.none() | st.sampled_from([300, 10080, 1440]) | st.integers(1, 10**6)
_epochs = st.none() | st.integers(1, 4_000_000_000)
_plans = st.none() | st.sampled_from(["plus", "pro", "team", "free"])
_balances = st.none() | st.text(max_size=5) | st.floats(0, 1e6) | st.integers(0, 10**9)


@settings(max_examples=200, deadline=None)
@given(
    windows=st.lists(
        st.fixed_dictionaries(
            {"used_percent": _percents},
            optional={"window_minutes": _minutes, "resets_at": _epochs},
        ),
        max_size=2,
    ),
    plan=_plans,
    credit_obj=st.none()
    | st.fixed_dictionaries(
        {"has_credits": st.booleans(), "unlimited": st.booleans(), "balance": _balances}
    ),
)
def test_valid_rollout_snapshots_round_trip(
    windows: list[dict[str, Any]], plan: str | None, credit_obj: dict[str, Any] | None
) -> None:
    """Valid rollout objects parse, and the snapshot survives unstructure → JSON → structure."""
    obj: dict[str, Any] = {"limit_id": "codex", "plan_type": plan, "credits": credit_obj}
    obj.update(zip(("primary", "secondary"), windows, strict=False))
    snap = QuotaSnapshot.from_rollout_rate_limits(obj, account="a", observed_at=OBSERVED)
    assert len(snap.windows) == len(windows)
    _round_trips(snap)


@settings(max_examples=200, deadline=None)
@given(
    windows=st.lists(
        st.fixed_dictionaries(
            {"used_percent": _percents},
            optional={
                "limit_window_seconds": st.none() | st.integers(1, 10**8),
                "reset_at": _epochs,
                "reset_after_seconds": st.none() | st.integers(0, 10**7),
            },
        ),
        max_size=2,
    ),
    plan=_plans,
    reached=st.none() | st.booleans(),
)
def test_valid_usage_payloads_round_trip(
    windows: list[dict[str, Any]], plan: str | None, reached: bool | None
) -> None:
    """Valid usage payloads parse, and the snapshot survives the converter round trip."""
    rate_limit: dict[str, Any] = {"limit_reached": reached}
    rate_limit.update(zip(("primary_window", "secondary_window"), windows, strict=False))
    payload = {"plan_type": plan, "rate_limit": rate_limit}
    snap = QuotaSnapshot.from_usage_payload(payload, account="a", observed_at=OBSERVED)
    assert snap.limit_reached == (bool(reached) or any(w.used_percent >= 100 for w in snap.windows))
    _round_trips(snap)


@settings(max_examples=100, deadline=None)
@given(
    windows=st.lists(
        st.builds(
            QuotaWindow,
            used_percent=_percents,
            window_minutes=_minutes,
            resets_at=st.none() | st.datetimes(timezones=st.just(UTC)),
        ),
        max_size=3,
    ),
    source=st.sampled_from(SnapshotSource),
    observed=st.datetimes(timezones=st.just(UTC)),
)
def test_built_snapshots_round_trip(
    windows: list[QuotaWindow], source: SnapshotSource, observed: datetime
) -> None:
    """Directly built snapshots, with any source, survive the converter round trip."""
    snap = QuotaSnapshot(
        account="x", windows=tuple(windows), source=source, observed_at=observed, limit_id=None
    )
    _round_trips(snap)


# -- the pure half stays pure ---------------------------------------------------------------------


def test_policy_and_snapshots_import_without_the_http_stack() -> None:
    """Importing policy and snapshots in a fresh interpreter loads neither httpx nor tenacity."""
    probe = (
        "import sys\n"
        "import codex_supervisor.policy, codex_supervisor.snapshots\n"
        "print(sorted(m for m in ('httpx', 'tenacity') if m in sys.modules))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True, timeout=60
    )
    assert result.stdout.strip() == "[]", result.stderr


def _nested(depth: int) -> Any:
    value: Any = []
    for _ in range(depth):
        value = {"x": [value]}
    return value


@pytest.mark.parametrize("depth", [1, 50_000])
def test_deeply_nested_values_anywhere_are_parse_errors(depth: int) -> None:
    """Every parser answers a deeply nested value in any position with QuotaParseError."""
    deep = _nested(depth)
    parsers: list[tuple[Callable[..., QuotaSnapshot], dict[str, Any], list[tuple[str, ...]]]] = [
        (
            QuotaSnapshot.from_usage_payload,
            USAGE_PAYLOAD,
            [
                ("rate_limit", "limit_reached"),
                ("rate_limit", "primary_window"),
                ("credits", "unlimited"),
                ("plan_type",),
            ],
        ),
        (
            QuotaSnapshot.from_rollout_rate_limits,
            ROLLOUT_RATE_LIMITS,
            [("primary",), ("primary", "used_percent"), ("credits", "balance"), ("limit_id",)],
        ),
        (
            QuotaSnapshot.from_app_server,
            APP_SERVER_SNAPSHOT,
            [("primary",), ("primary", "resetsAt"), ("credits", "hasCredits"), ("planType",)],
        ),
    ]
    for parse, good, paths in parsers:
        for path in paths:
            payload = json.loads(json.dumps(good))
            target = payload
            for key in path[:-1]:
                target = target[key]
            target[path[-1]] = deep
            with pytest.raises(errors.QuotaParseError):
                parse(payload, account="a", observed_at=OBSERVED)


def test_only_the_codex_limit_is_the_main_quota() -> None:
    """Snapshots of another metered limit are not the account's main quota."""
    main = QuotaSnapshot.from_rollout_rate_limits(
        ROLLOUT_RATE_LIMITS, account="a", observed_at=OBSERVED
    )
    assert main.is_main_quota
    other = QuotaSnapshot.from_rollout_rate_limits(
        {**ROLLOUT_RATE_LIMITS, "limit_id": "codex_other_model"}, account="a", observed_at=OBSERVED
    )
    assert not other.is_main_quota
    unstated = QuotaSnapshot.from_rollout_rate_limits(
        {k: v for k, v in ROLLOUT_RATE_LIMITS.items() if k != "limit_id"},
        account="a",
        observed_at=OBSERVED,
    )
    assert unstated.is_main_quota
