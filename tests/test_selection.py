"""AccountSelector: candidates, staleness, probes, cooldowns, the choice and the wait."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from codex_supervisor import errors
from codex_supervisor.accounts import AccountPool
from codex_supervisor.events import Event, QuotaUpdated, WaitingForReset
from codex_supervisor.lease import FileLock
from codex_supervisor.policy import RotationPolicy, WaitUntil
from codex_supervisor.quota import QuotaService
from codex_supervisor.selection import AccountSelector
from codex_supervisor.snapshots import QuotaSnapshot, QuotaWindow, SnapshotSource, WindowKind
from codex_supervisor.testing import make_jwt, write_auth_json

pytestmark = pytest.mark.anyio

FIVE = 300
WEEK = 10080


def _now() -> datetime:
    return datetime.now(UTC)


def _snap(
    account: str,
    five: float,
    *,
    resets_in: float = 3600.0,
    observed: datetime | None = None,
    weekly: float | None = None,
    weekly_resets_in: float = 3 * 86400.0,
) -> QuotaSnapshot:
    observed = observed or _now()
    windows = [
        QuotaWindow(
            used_percent=five,
            window_minutes=FIVE,
            resets_at=observed + timedelta(seconds=resets_in),
        )
    ]
    if weekly is not None:
        windows.append(
            QuotaWindow(
                used_percent=weekly,
                window_minutes=WEEK,
                resets_at=observed + timedelta(seconds=weekly_resets_in),
            )
        )
    return QuotaSnapshot(
        account=account,
        windows=tuple(windows),
        source=SnapshotSource.USAGE_ENDPOINT,
        observed_at=observed,
    )


class FakeUsage:
    """A SnapshotProvider answering from a dict; a missing account raises QuotaUnavailable."""

    def __init__(self) -> None:
        self.answers: dict[str, QuotaSnapshot] = {}
        self.calls: list[str] = []
        self.gate: asyncio.Event | None = None
        self.called = asyncio.Event()

    async def fetch(self, account: str) -> QuotaSnapshot:
        self.calls.append(account)
        self.called.set()
        if self.gate is not None:
            await self.gate.wait()
        found = self.answers.get(account)
        if found is None:
            raise errors.QuotaUnavailable(f"no usage for {account}")
        # Observed now, as the real endpoint's answers are.
        return QuotaSnapshot(
            account=account,
            windows=found.windows,
            limit_reached=found.limit_reached,
            source=SnapshotSource.USAGE_ENDPOINT,
            observed_at=_now(),
        )


def _add(pool: AccountPool, root: Path, name: str) -> None:
    folder = root / f"login-{name}"
    folder.mkdir(parents=True, exist_ok=True)
    claims = {"https://api.openai.com/auth": {"chatgpt_account_id": f"id-{name}"}}
    source = write_auth_json(
        folder,
        id_token=make_jwt(claims),
        access_token=make_jwt({"exp": 4102444800}),
        refresh_token=f"rt-{name}",
        account_id=f"id-{name}",
    )
    pool.import_auth(name, source)


@pytest.fixture
def pool(tmp_path: Path) -> AccountPool:
    pool = AccountPool(root=tmp_path / "pool", base_codex_home=tmp_path / "base")
    for name in ("alpha", "beta"):
        _add(pool, tmp_path, name)
    return pool


@pytest.fixture
def usage() -> FakeUsage:
    return FakeUsage()


class Recorder(list[Event]):
    """An event sink that remembers every event and flags the first wait."""

    def __init__(self) -> None:
        super().__init__()
        self.waiting = asyncio.Event()

    def __call__(self, event: Event) -> None:
        self.append(event)
        if isinstance(event, WaitingForReset):
            self.waiting.set()


@pytest.fixture
def events() -> Recorder:
    return Recorder()


@pytest.fixture
def selector(pool: AccountPool, usage: FakeUsage, events: Recorder) -> AccountSelector:
    return AccountSelector(
        pool,
        quota=QuotaService(usage, ttl=120.0),
        sink=events,
        tick=0.05,
        watch_interval=0.01,
        probe_budget=5.0,
    )


def _block(
    pool: AccountPool,
    name: str,
    seconds: float,
    window: WindowKind,
    usage: FakeUsage | None = None,
) -> datetime:
    """Block ``name`` as a 429 would: until its window resets, and the endpoint agrees."""
    until = _now() + timedelta(seconds=seconds)
    pool.set_cooldown(name, window=window, blocked_until=until, reason="test")
    if usage is not None:
        used = {"five": 100.0, "weekly": 10.0} if window is WindowKind.FIVE_HOUR else {}
        usage.answers[name] = (
            _snap(name, used["five"], resets_in=seconds)
            if used
            else _snap(name, 10, weekly=100, weekly_resets_in=seconds)
        )
    return until


async def test_choose_passes_over_the_avoided_account_while_another_can_run(
    selector: AccountSelector, usage: FakeUsage
) -> None:
    """The account just left is skipped when another can run."""
    usage.answers = {"alpha": _snap("alpha", 10), "beta": _snap("beta", 60)}
    assert await selector.choose() == "alpha"
    assert await selector.choose(avoid="alpha") == "beta"


async def test_choose_takes_the_avoided_account_back_when_nothing_else_can_run(
    selector: AccountSelector, pool: AccountPool, usage: FakeUsage
) -> None:
    """With the other account blocked, the avoided one (usable again) is chosen."""
    usage.answers = {"alpha": _snap("alpha", 10), "beta": _snap("beta", 10)}
    _block(pool, "beta", 600, WindowKind.FIVE_HOUR, usage)
    assert await selector.choose(avoid="alpha") == "alpha"


async def test_wait_covers_the_avoided_accounts_own_earlier_reset(
    selector: AccountSelector, pool: AccountPool, usage: FakeUsage
) -> None:
    """Both blocked: the wait ends at the avoided account's reset (30 s), not the other's."""
    usage.answers = {"alpha": _snap("alpha", 10), "beta": _snap("beta", 10)}
    own = _block(pool, "alpha", 30, WindowKind.FIVE_HOUR, usage)
    _block(pool, "beta", 600, WindowKind.FIVE_HOUR, usage)
    choice = await selector.choose(avoid="alpha")
    assert isinstance(choice, WaitUntil)
    assert abs((choice.until - own).total_seconds()) < 1


async def test_wait_emits_at_once_and_resumes_when_a_cooldown_passes(
    selector: AccountSelector, pool: AccountPool, usage: FakeUsage, events: Recorder
) -> None:
    """The first WaitingForReset comes before any sleep; the wait ends when the block lapses."""
    usage.answers = {"alpha": _snap("alpha", 10), "beta": _snap("beta", 10)}
    _block(pool, "alpha", 0.6, WindowKind.FIVE_HOUR, usage)
    _block(pool, "beta", 600, WindowKind.FIVE_HOUR, usage)
    task = asyncio.create_task(selector.select(avoid="alpha"))
    async with asyncio.timeout(30):
        await events.waiting.wait()
    assert not task.done()
    first = next(e for e in events if isinstance(e, WaitingForReset))
    assert first.seconds_left > 0
    async with asyncio.timeout(30):
        assert await task == "alpha"


async def test_wait_wakes_when_another_process_lifts_a_cooldown(
    selector: AccountSelector, pool: AccountPool, usage: FakeUsage, events: Recorder
) -> None:
    """A cooldown cleared by another process ends a wait that was due in ten minutes."""
    _block(pool, "alpha", 600, WindowKind.FIVE_HOUR, usage)
    # beta's block outlives what its (same-period) data shows: only a person can say.
    _block(pool, "beta", 900, WindowKind.FIVE_HOUR)
    usage.answers["beta"] = _snap("beta", 10, resets_in=900)
    task = asyncio.create_task(selector.select())
    async with asyncio.timeout(30):
        await events.waiting.wait()
    script = (
        "import sys; from codex_supervisor.accounts import AccountPool; "
        "AccountPool(root=sys.argv[1], base_codex_home=sys.argv[2]).clear_cooldowns('beta')"
    )
    await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-c", script, str(pool.root), str(pool.base_codex_home)],
        check=True,
    )
    async with asyncio.timeout(30):
        assert await task == "beta"


async def test_wait_wakes_when_fresher_quota_is_stored_elsewhere(
    selector: AccountSelector, pool: AccountPool, usage: FakeUsage, events: Recorder
) -> None:
    """A snapshot another process stores (its window reset) makes an exhausted account usable."""
    usage.answers = {"alpha": _snap("alpha", 100, resets_in=3000)}
    pool.record_snapshot(_snap("alpha", 100, resets_in=3000))
    pool.record_snapshot(_snap("beta", 100, resets_in=3600))
    task = asyncio.create_task(selector.select())
    async with asyncio.timeout(30):
        await events.waiting.wait()
    # Another session's status --refresh: beta's window rolled over.
    fresh = _snap("beta", 3, resets_in=18000, observed=_now() + timedelta(seconds=1))
    await asyncio.to_thread(pool.record_snapshot, fresh)
    async with asyncio.timeout(30):
        assert await task == "beta"


async def test_wait_refuses_when_told_not_to_wait_or_past_max_wait(
    selector: AccountSelector, pool: AccountPool, usage: FakeUsage
) -> None:
    """wait=False and max_wait both end in QuotaUnavailable naming the wait."""
    usage.answers = {"alpha": _snap("alpha", 10), "beta": _snap("beta", 10)}
    _block(pool, "alpha", 600, WindowKind.FIVE_HOUR, usage)
    _block(pool, "beta", 600, WindowKind.FIVE_HOUR, usage)
    with pytest.raises(errors.QuotaUnavailable, match="every account is blocked"):
        await selector.select(wait=False)
    with pytest.raises(errors.QuotaUnavailable, match="still blocked after"):
        await selector.select(max_wait=0.1)


async def test_cancelling_a_wait_leaves_no_probe_or_task_behind(
    selector: AccountSelector, pool: AccountPool, usage: FakeUsage, events: Recorder
) -> None:
    """A cancelled wait (Ctrl-C) raises CancelledError at once and aclose cleans up."""
    _block(pool, "alpha", 600, WindowKind.FIVE_HOUR, usage)
    _block(pool, "beta", 600, WindowKind.FIVE_HOUR, usage)
    task = asyncio.create_task(selector.select())
    async with asyncio.timeout(30):
        await events.waiting.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await selector.aclose()
    assert [t for t in asyncio.all_tasks() if t.get_name().startswith("probe:")] == []


async def test_the_newest_snapshot_wins_between_cache_and_pool(
    selector: AccountSelector, pool: AccountPool
) -> None:
    """A fresher snapshot stored by another process beats this process's cached one."""
    old = _snap("alpha", 20, observed=_now() - timedelta(seconds=30))
    selector.quota.put(old)
    newer = _snap("alpha", 70)
    pool.record_snapshot(newer)
    [alpha, _] = await selector.accounts()
    assert selector.snapshot(alpha) == newer
    mine = _snap("alpha", 80, observed=_now() + timedelta(seconds=5))
    selector.quota.put(mine)
    assert selector.snapshot(alpha) == mine


async def test_staleness_is_age_or_a_reset_since_observed(selector: AccountSelector) -> None:
    """Old data and data overtaken by a window reset are stale; fresh data is not."""
    now = _now()
    assert selector.is_stale(None, now)
    assert not selector.is_stale(_snap("alpha", 10, observed=now), now)
    assert selector.is_stale(_snap("alpha", 10, observed=now - timedelta(minutes=5)), now)
    reset = _snap("alpha", 100, resets_in=5, observed=now - timedelta(seconds=10))
    assert selector.is_stale(reset, now)


async def test_probes_are_single_flight_and_rate_limited(
    selector: AccountSelector, usage: FakeUsage
) -> None:
    """Concurrent probes of one account share a request; a failed one is not retried at once."""
    usage.gate = asyncio.Event()
    usage.answers = {"alpha": _snap("alpha", 10)}
    first = selector.probe_in_background("alpha")
    second = selector.probe_in_background("alpha")
    assert first is second
    usage.gate.set()
    await first
    assert usage.calls == ["alpha"]
    await selector.candidates(probe=True)  # beta has no data: probed once, fails
    await selector.candidates(probe=True)
    assert usage.calls.count("beta") == 1
    assert isinstance(selector.probe_errors["beta"], errors.QuotaUnavailable)


async def test_probe_budget_bounds_the_critical_path(
    pool: AccountPool, usage: FakeUsage, events: Recorder
) -> None:
    """A slow usage endpoint delays a choice by the budget only; the probe lands later."""
    usage.gate = asyncio.Event()
    usage.answers = {"alpha": _snap("alpha", 10), "beta": _snap("beta", 50)}
    selector = AccountSelector(pool, quota=QuotaService(usage), probe_budget=0.05, sink=events)
    assert await selector.choose() == "alpha"  # no data yet: by name
    usage.gate.set()
    await asyncio.gather(*[t for t in asyncio.all_tasks() if t.get_name().startswith("probe:")])
    assert {e.account for e in events if isinstance(e, QuotaUpdated)} == {"alpha", "beta"}
    await selector.aclose()


async def test_cool_down_uses_the_evidence_and_states_absolute_times(
    selector: AccountSelector, pool: AccountPool
) -> None:
    """A snapshot with a full five-hour window blocks that window until its reset, absolutely."""
    evidence = _snap("alpha", 100, resets_in=90)
    cooldown = await selector.cool_down("alpha", snapshot=evidence, cause="alpha ran out")
    assert cooldown.window is WindowKind.FIVE_HOUR
    assert cooldown.blocked_until == evidence.windows[0].resets_at
    assert "UTC" in cooldown.reason
    assert " in " not in cooldown.reason
    assert [c.window for c in pool.get("alpha").cooldowns] == [WindowKind.FIVE_HOUR]


async def test_cool_down_asks_the_endpoint_before_guessing(
    selector: AccountSelector, pool: AccountPool, usage: FakeUsage
) -> None:
    """Evidence without a full window: the probe names the weekly window, so no `other` block."""
    usage.answers = {"alpha": _snap("alpha", 40, weekly=100)}
    cooldown = await selector.cool_down("alpha", snapshot=_snap("alpha", 40))
    assert cooldown.window is WindowKind.WEEKLY
    assert [c.window for c in pool.get("alpha").cooldowns] == [WindowKind.WEEKLY]


async def test_cool_down_backs_off_only_when_nothing_tells_the_reset(
    selector: AccountSelector, pool: AccountPool
) -> None:
    """No evidence and no endpoint: an `other` block that doubles with each failure."""
    policy = RotationPolicy()
    first = await selector.cool_down("alpha", failures=0)
    assert first.window is WindowKind.OTHER
    assert "reset unknown" in first.reason
    base = policy.unknown_reset_backoff.total_seconds()
    assert abs((first.blocked_until - first.recorded_at).total_seconds() - base) < 5
    second = await selector.cool_down("alpha", failures=1)
    assert abs((second.blocked_until - second.recorded_at).total_seconds() - 2 * base) < 5
    assert len(pool.get("alpha").cooldowns) == 1


def test_known_window_block_replaces_a_guess_and_merges_without_shortening(
    pool: AccountPool,
) -> None:
    """One cooldown per window: a known block replaces `other`; the later of two writers wins."""
    now = _now()
    pool.set_cooldown(
        "alpha", window=WindowKind.OTHER, blocked_until=now + timedelta(minutes=15), reason="?"
    )
    pool.set_cooldown(
        "alpha", window=WindowKind.FIVE_HOUR, blocked_until=now + timedelta(seconds=30), reason="a"
    )
    pool.set_cooldown(
        "alpha", window=WindowKind.FIVE_HOUR, blocked_until=now + timedelta(seconds=20), reason="b"
    )
    [only] = pool.get("alpha").cooldowns
    assert only.window is WindowKind.FIVE_HOUR
    assert only.reason == "a"


def test_concurrent_writers_leave_one_cooldown_per_window(pool: AccountPool) -> None:
    """Eight threads blocking one window at once leave exactly one block, the latest."""
    now = _now()
    ends = [now + timedelta(seconds=60 + i) for i in range(8)]
    threads = [
        threading.Thread(
            target=pool.set_cooldown,
            args=("beta",),
            kwargs={"window": WindowKind.WEEKLY, "blocked_until": end, "reason": str(i)},
        )
        for i, end in enumerate(ends)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    [only] = pool.get("beta").cooldowns
    assert only.blocked_until == max(ends)


def test_an_observation_of_a_new_window_lifts_its_block(pool: AccountPool) -> None:
    """A later snapshot whose window rolled over lifts the block; lagging data does not."""
    now = _now()
    reset = now + timedelta(seconds=40)
    pool.set_cooldown("alpha", window=WindowKind.FIVE_HOUR, blocked_until=reset, reason="429")
    lagging = _snap("alpha", 97, resets_in=40, observed=now + timedelta(seconds=2))
    pool.record_snapshot(lagging)
    assert len(pool.get("alpha").cooldowns) == 1
    rolled = _snap("alpha", 0, resets_in=18000, observed=now + timedelta(seconds=41))
    pool.record_snapshot(rolled)
    assert pool.get("alpha").cooldowns == ()


def test_a_guessed_block_is_never_lifted_by_an_observation(pool: AccountPool) -> None:
    """An `other` block survives probes showing room, even a rolled-over window; it expires."""
    now = _now()
    pool.set_cooldown(
        "beta", window=WindowKind.OTHER, blocked_until=now + timedelta(minutes=15), reason="?"
    )
    pool.record_snapshot(_snap("beta", 10, resets_in=3600, observed=now + timedelta(seconds=1)))
    rolled = _snap("beta", 2, resets_in=5 * 3600, observed=now + timedelta(minutes=3))
    pool.record_snapshot(rolled)
    [guess] = pool.get("beta").cooldowns
    assert guess.window is WindowKind.OTHER
    # A block of a known window replaces it.
    pool.set_cooldown(
        "beta", window=WindowKind.WEEKLY, blocked_until=now + timedelta(days=1), reason="429"
    )
    assert [c.window for c in pool.get("beta").cooldowns] == [WindowKind.WEEKLY]


def test_clear_cooldowns_by_window(pool: AccountPool) -> None:
    """clear_cooldowns lifts one window's block, or all, and returns what it lifted."""
    _block(pool, "alpha", 60, WindowKind.FIVE_HOUR)
    _block(pool, "alpha", 60, WindowKind.WEEKLY)
    lifted = pool.clear_cooldowns("alpha", window=WindowKind.WEEKLY)
    assert [c.window for c in lifted] == [WindowKind.WEEKLY]
    assert [c.window for c in pool.get("alpha").cooldowns] == [WindowKind.FIVE_HOUR]
    assert len(pool.clear_cooldowns("alpha")) == 1
    assert pool.get("alpha").cooldowns == ()


def test_selector_refuses_bad_timing_knobs(pool: AccountPool) -> None:
    """Negative or zero intervals are a ConfigError, not a spin."""
    with pytest.raises(errors.ConfigError):
        AccountSelector(pool, tick=0)
    with pytest.raises(errors.ConfigError):
        AccountSelector(pool, probe_budget=-1)


async def test_the_failures_evidence_beats_a_lagging_newer_probe(
    selector: AccountSelector, usage: FakeUsage
) -> None:
    """A probe showing room that landed after the 429 does not turn the block into a guess."""
    evidence = _snap("alpha", 100, resets_in=120, observed=_now() - timedelta(seconds=1))
    usage.answers = {"alpha": _snap("alpha", 40, resets_in=120)}
    await selector.refresh(["alpha"])  # the newer, lagging view
    cooldown = await selector.cool_down("alpha", snapshot=evidence)
    assert cooldown.window is WindowKind.FIVE_HOUR
    assert cooldown.blocked_until == evidence.windows[0].resets_at


async def test_a_cancel_aimed_at_a_refresh_is_never_swallowed(
    selector: AccountSelector, usage: FakeUsage
) -> None:
    """Cancelling a caller waiting on probes raises CancelledError at once; the probe goes on."""
    usage.gate = asyncio.Event()
    usage.answers = {"alpha": _snap("alpha", 10)}
    waiting = asyncio.create_task(selector.refresh(["alpha"], budget=30))
    async with asyncio.timeout(30):
        await usage.called.wait()
    waiting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiting
    usage.gate.set()
    async with asyncio.timeout(30):
        await selector.settle(30)
    assert selector.probe_errors == {}
    await selector.aclose()


async def test_a_passed_reset_forces_one_early_probe_not_one_per_tick(
    selector: AccountSelector, pool: AccountPool, usage: FakeUsage
) -> None:
    """A reset since the last look earns one early probe; a failing endpoint is not hammered."""
    old = _now() - timedelta(seconds=20)
    # Exhausted by the weekly window; the five-hour window reset since.
    pool.record_snapshot(_snap("alpha", 50, resets_in=10, observed=old, weekly=100))
    pool.record_snapshot(_snap("beta", 10, weekly=100, observed=_now()))
    usage.answers = {}  # the endpoint fails for everyone
    for _ in range(5):
        await selector.candidates(probe=True)
        await selector.settle(5)
    assert usage.calls.count("alpha") == 2  # the first look, then once for the reset


# -- accounts held back: a newer login waits in quarantine -------------------------------------


def _quarantine_newer_login(pool: AccountPool, root: Path, name: str, *, dated: bool) -> Path:
    """Put a newer login of ``name`` in quarantine, as a pooled app-server would.

    ``dated``: it has a last_refresh, so it is taken back as soon as the pool
    lock is free (quarantined for a busy lock); without, nothing says it is
    newer and it stays.
    """
    home = root / f"spawn-{name}"
    home.mkdir()
    data = json.loads((pool.account_home(name) / "auth.json").read_text())
    if dated:
        data["last_refresh"] = "2099-01-01T00:00:00Z"
    else:
        del data["last_refresh"]
    data["tokens"]["refresh_token"] = f"rt-{name}-newer"
    (home / "auth.json").write_text(json.dumps(data))
    (home / "auth.json").chmod(0o600)
    timeout, pool.lock_timeout = pool.lock_timeout, 0.0
    try:
        with FileLock(pool.root / "pool.lock"):
            item = pool.take_back_auth(name, home / "auth.json")
    finally:
        pool.lock_timeout = timeout
    assert item is not None
    return item.path


def _refresh_token_of(pool: AccountPool, name: str) -> str:
    token: str = json.loads((pool.account_home(name) / "auth.json").read_text())["tokens"][
        "refresh_token"
    ]
    return token


async def test_an_account_whose_newer_login_waits_in_quarantine_is_held_back(
    selector: AccountSelector, pool: AccountPool, usage: FakeUsage, tmp_path: Path
) -> None:
    """alpha has the most room, but its home holds a spent token: beta is chosen."""
    usage.answers = {"alpha": _snap("alpha", 10), "beta": _snap("beta", 60)}
    path = _quarantine_newer_login(pool, tmp_path, "alpha", dated=False)
    assert await selector.choose() == "beta"
    assert [c.name for c in await selector.candidates()] == ["beta"]
    held = selector.held_back["alpha"]
    assert isinstance(held, errors.LoginQuarantined)
    assert held.path == str(path)
    assert "no last_refresh" in str(held)
    assert "alpha" not in usage.calls, "a held-back account is not even probed"
    # Deleting it (a person's decision) lets alpha run again, at the next look.
    path.unlink()
    assert await selector.choose() == "alpha"
    assert selector.held_back == {}


async def test_a_quarantined_login_is_taken_back_at_the_next_choice(
    selector: AccountSelector, pool: AccountPool, usage: FakeUsage, tmp_path: Path
) -> None:
    """Quarantined for a busy pool lock: the next choice takes it back, and alpha runs on it."""
    usage.answers = {"alpha": _snap("alpha", 10), "beta": _snap("beta", 60)}
    path = _quarantine_newer_login(pool, tmp_path, "alpha", dated=True)
    assert await selector.choose() == "alpha"
    assert not path.exists()
    assert _refresh_token_of(pool, "alpha") == "rt-alpha-newer"
    assert selector.held_back == {}


async def test_every_account_held_back_waits_or_fails_naming_the_login(
    pool: AccountPool, usage: FakeUsage, events: Recorder, tmp_path: Path
) -> None:
    """Only alpha can run, and a newer login of it waits: no wait allowed raises
    LoginQuarantined (an AuthError) naming the file; a wait ends once it is resolved."""
    pool.remove("beta")
    usage.answers = {"alpha": _snap("alpha", 10)}
    path = _quarantine_newer_login(pool, tmp_path, "alpha", dated=False)
    selector = AccountSelector(
        pool, quota=QuotaService(usage, ttl=120.0), sink=events, tick=0.05, watch_interval=0.01
    )
    with pytest.raises(errors.LoginQuarantined, match="quarantine") as raised:
        await selector.select(wait=False)
    assert raised.value.path == str(path)
    choice = await selector.choose()
    assert isinstance(choice, WaitUntil)
    assert str(path) in choice.reason
    waiting = asyncio.create_task(selector.select())
    async with asyncio.timeout(30):
        await events.waiting.wait()
    assert not waiting.done()
    path.unlink()
    async with asyncio.timeout(30):
        assert await waiting == "alpha"
    await selector.aclose()
