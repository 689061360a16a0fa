"""Supervisor with the Codex simulator: selection, exec cutover, waiting, secrets."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
import threading
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from codex_supervisor import errors
from codex_supervisor.accounts import AccountPool
from codex_supervisor.codex_cli import TESTED_CODEX_VERSIONS, parse_argv
from codex_supervisor.events import (
    AccountSelected,
    ChildExited,
    ChildLaunched,
    CodexVersionUntested,
    CollectingSink,
    OccupancyLost,
    Resumed,
    Rotating,
    SessionBound,
    WaitingForReset,
)
from codex_supervisor.lease import Lease
from codex_supervisor.policy import TurnCosts
from codex_supervisor.process import Child, SignalWatcher, launch
from codex_supervisor.quota import WindowKind
from codex_supervisor.sessions import (
    ENV_NO_PROC,
    BindAttempt,
    RolloutReader,
    SessionBinder,
    TurnPhase,
)
from codex_supervisor.supervisor import Supervisor, SupervisorConfig, _ChildRun, _Rotate
from codex_supervisor.testing import Behaviour, FakeCodexBackend, install_simulator

pytestmark = pytest.mark.anyio


@pytest.fixture(autouse=True)
def _with_and_without_proc(proc_mode: str) -> str:
    """Every test here runs twice: with /proc, and as on macOS (hooks only)."""
    return proc_mode


class World:
    """A pool of accounts on a fake backend, and a supervisor factory."""

    def __init__(self, root: Path, backend: FakeCodexBackend, codex: Path) -> None:
        self.root = root
        self.backend = backend
        self.codex = codex
        self.base = root / "codex-home"
        backend.write_codex_home(self.base)
        self.pool = AccountPool(root=root / "pool", base_codex_home=self.base)
        self.work = root / "work"
        self.work.mkdir()
        self.sink = CollectingSink()
        self.env = {
            "PATH": "/usr/bin:/bin",
            "HOME": str(root),
            **backend.codex_env(),
        }

    def add(self, name: str, **quota: Any) -> None:
        self.backend.add_account(f"id-{name}", **quota)
        src = self.backend.write_auth(self.root / f"login-{name}", f"id-{name}")
        self.pool.import_auth(name, src)

    def supervisor(self, **config: Any) -> Supervisor:
        settings = {"codex": str(self.codex), "poll_interval": 0.05, **config}
        return Supervisor(
            self.pool, config=SupervisorConfig(**settings), sink=self.sink, environ=self.env
        )


@pytest.fixture
def sim_world(tmp_path: Path, backend: FakeCodexBackend) -> World:
    return World(tmp_path, backend, install_simulator(tmp_path / "bin"))


async def test_exec_runs_on_the_account_with_most_headroom(sim_world: World) -> None:
    """A plain exec runs once, on the account with the most quota left, and returns 0."""
    sim_world.add("alpha", five_hour_used=70)
    sim_world.add("beta", five_hour_used=10)
    code = await sim_world.supervisor().run(
        ["exec", "--skip-git-repo-check", "hello"], cwd=sim_world.work
    )
    assert code.exit_code == 0
    [selected] = sim_world.sink.of(AccountSelected)
    assert selected.account == "beta"  # type: ignore[attr-defined]
    [request] = sim_world.backend.responses_requests()
    assert request.account_id == "id-beta"
    [bound] = sim_world.sink.of(SessionBound)
    assert bound.session_id == request.session_id  # type: ignore[attr-defined]
    [exited] = sim_world.sink.of(ChildExited)
    assert exited.returncode == 0  # type: ignore[attr-defined]
    stored = sim_world.pool.get("beta").last_snapshot
    assert stored is not None
    assert stored.five_hour is not None
    assert stored.five_hour.used_percent > 10


async def test_exec_usage_limit_resumes_the_same_session_on_another_account(
    sim_world: World,
) -> None:
    """A 429 on exec resumes the same session on the next account; the caller sees exit 0."""
    sim_world.add("alpha", five_hour_used=20)
    sim_world.add("beta", five_hour_used=40)
    sim_world.backend.script(Behaviour.usage_limit(), account_id="id-alpha")
    code = await sim_world.supervisor().run(
        ["exec", "--skip-git-repo-check", "do the work"], cwd=sim_world.work
    )
    assert code.exit_code == 0
    requests = sim_world.backend.responses_requests()
    assert [(r.account_id, r.status) for r in requests] == [("id-alpha", 429), ("id-beta", 200)]
    assert requests[0].session_id == requests[1].session_id
    assert "do the work" in requests[1].input_texts  # the conversation came along
    [rotation] = sim_world.sink.of(Rotating)
    assert (rotation.from_account, rotation.to_account) == ("alpha", "beta")  # type: ignore[attr-defined]
    assert rotation.immediate  # type: ignore[attr-defined]
    [resumed] = sim_world.sink.of(Resumed)
    assert resumed.session_id == requests[0].session_id  # type: ignore[attr-defined]
    [cooldown] = sim_world.pool.get("alpha").cooldowns
    assert cooldown.window is WindowKind.FIVE_HOUR
    resets = sim_world.backend.account("id-alpha").windows[0].resets_at
    assert abs(cooldown.blocked_until.timestamp() - resets) < 2
    rollouts = list((sim_world.base / "sessions").rglob("rollout-*.jsonl"))
    assert len(rollouts) == 1  # both attempts in one rollout


async def test_every_account_blocked_fails_fast_when_configured(sim_world: World) -> None:
    """With wait_for_reset=False and every account exhausted, run raises QuotaUnavailable."""
    sim_world.add("alpha", five_hour_used=100)
    sim_world.add("beta", weekly_used=100)
    with pytest.raises(errors.QuotaUnavailable, match="blocked") as raised:
        await sim_world.supervisor(wait_for_reset=False).run(
            ["exec", "--skip-git-repo-check", "x"], cwd=sim_world.work
        )
    assert sim_world.backend.responses_requests() == []
    # It does not wait, so it does not say it waits: when the first account is free.
    assert "waiting" not in str(raised.value)
    assert "the first is free at " in str(raised.value)


async def test_waits_for_the_earliest_reset_then_runs(sim_world: World) -> None:
    """Every account blocked: countdown events until the earliest reset, then the run goes on."""
    sim_world.add("alpha", five_hour_used=100)
    sim_world.add("beta", five_hour_used=100)
    soon = int(time.time()) + 3
    sim_world.backend.set_quota("id-alpha", five_hour_resets_at=soon)
    sim_world.backend.set_quota("id-beta", five_hour_resets_at=soon + 600)
    started = time.monotonic()
    code = await sim_world.supervisor(countdown_interval=0.5, quota_stale_after=0.5).run(
        ["exec", "--skip-git-repo-check", "after the wait"], cwd=sim_world.work
    )
    assert code.exit_code == 0
    assert time.monotonic() - started >= 2
    waits = sim_world.sink.of(WaitingForReset)
    assert waits
    assert abs(waits[0].until.timestamp() - soon) < 2  # type: ignore[attr-defined]
    [request] = sim_world.backend.responses_requests()
    assert request.account_id == "id-alpha"


async def test_passthrough_runs_once_unsupervised(sim_world: World) -> None:
    """--version and other unsupervised commands run once and return their code."""
    sim_world.add("alpha")
    assert (await sim_world.supervisor().run(["--version"], cwd=sim_world.work)).exit_code == 0
    assert sim_world.sink.of(ChildExited) == []


async def test_no_secret_reaches_logs_events_argv_or_child_env(
    sim_world: World, caplog: pytest.LogCaptureFixture
) -> None:
    """Through a whole rotation at DEBUG, no token appears in logs, events or child argv."""
    sim_world.add("alpha")
    sim_world.add("beta")
    sim_world.backend.script(Behaviour.usage_limit(), account_id="id-alpha")
    secrets = []
    for account_id in ("id-alpha", "id-beta"):
        acct = sim_world.backend.account(account_id)
        secrets += [acct.access_token, acct.refresh_token, acct.id_token]
    with caplog.at_level(logging.DEBUG):
        code = await sim_world.supervisor().run(
            ["exec", "--skip-git-repo-check", "x"], cwd=sim_world.work
        )
    assert code.exit_code == 0
    text = caplog.text + repr(sim_world.sink.events)
    for secret in secrets:
        assert secret not in text
        assert secret[:24] not in text


def _exec(*rest: str) -> list[str]:
    return ["exec", "--skip-git-repo-check", *rest]


async def _until_waiting(world: World) -> None:
    deadline = time.monotonic() + 60
    while not world.sink.of(WaitingForReset):
        assert time.monotonic() < deadline, "the run never started waiting"
        await asyncio.sleep(0.01)


def _quarantine_undated_login(world: World, name: str) -> Path:
    """A newer login of ``name`` a pooled app-server could not take back: in quarantine.

    It has no last_refresh, so nothing says it is newer than the account's own
    and it stays there: the account's home holds a spent refresh token.
    """
    home = world.root / f"spawn-home-{name}-{len(list(world.root.glob('spawn-home-*')))}"
    home.mkdir()
    data = json.loads((world.pool.account_home(name) / "auth.json").read_text())
    del data["last_refresh"]
    data["tokens"]["refresh_token"] = f"rt-{name}-only-live-copy"
    (home / "auth.json").write_text(json.dumps(data))
    (home / "auth.json").chmod(0o600)
    item = world.pool.take_back_auth(name, home / "auth.json")
    assert item is not None
    return item.path


def _launched_on(world: World) -> list[str]:
    return [e.account for e in world.sink.of(ChildLaunched)]  # type: ignore[attr-defined]


async def test_a_run_never_starts_on_an_account_whose_newer_login_is_in_quarantine(
    sim_world: World,
) -> None:
    """alpha has the most room, but a newer login of it waits in quarantine: the run is on beta."""
    sim_world.add("alpha", five_hour_used=10)
    sim_world.add("beta", five_hour_used=60)
    _quarantine_undated_login(sim_world, "alpha")
    result = await sim_world.supervisor().run(_exec("hello"), cwd=sim_world.work)
    assert result.exit_code == 0
    assert result.accounts == ("beta",)
    assert _launched_on(sim_world) == ["beta"]
    assert [r.account_id for r in sim_world.backend.responses_requests()] == ["id-beta"]
    sim_world.backend.assert_no_replay()


async def test_a_login_quarantined_after_the_choice_stops_the_launch_there(
    sim_world: World, caplog: pytest.LogCaptureFixture
) -> None:
    """alpha is chosen, then a newer login of it goes to quarantine before Codex starts:
    Codex does not start on alpha; the run goes on beta."""
    sim_world.add("alpha", five_hour_used=10)
    sim_world.add("beta", five_hour_used=60)
    quarantined: list[Path] = []

    def sink(event: Any) -> None:
        sim_world.sink(event)
        if isinstance(event, AccountSelected) and event.account == "alpha" and not quarantined:
            quarantined.append(_quarantine_undated_login(sim_world, "alpha"))

    sup = sim_world.supervisor()
    sup.sink = sink
    result = await sup.run(_exec("hello"), cwd=sim_world.work)
    assert quarantined, "alpha was chosen first"
    assert result.exit_code == 0
    assert result.accounts == ("beta",)
    assert _launched_on(sim_world) == ["beta"]
    assert [r.account_id for r in sim_world.backend.responses_requests()] == ["id-beta"]
    assert "not launching Codex on alpha: account 'alpha' is not used" in caplog.text
    assert str(quarantined[0]) in caplog.text


async def test_the_only_account_held_back_fails_or_waits_and_never_launches(
    sim_world: World,
) -> None:
    """Only alpha, and a newer login of it waits in quarantine: no wait allowed fails with
    LoginQuarantined naming the file; a wait lasts until the login is dealt with."""
    sim_world.add("alpha")
    path = _quarantine_undated_login(sim_world, "alpha")
    with pytest.raises(errors.LoginQuarantined, match="quarantine") as raised:
        await sim_world.supervisor(wait_for_reset=False).run(_exec("x"), cwd=sim_world.work)
    assert raised.value.path == str(path)
    assert _launched_on(sim_world) == []
    run = asyncio.create_task(
        sim_world.supervisor(countdown_interval=0.05).run(_exec("x"), cwd=sim_world.work)
    )
    await _until_waiting(sim_world)
    assert not run.done()
    assert _launched_on(sim_world) == []
    path.unlink()  # a person looked at it and dropped it
    result = await asyncio.wait_for(run, 60)
    assert result.exit_code == 0
    assert _launched_on(sim_world) == ["alpha"]
    assert sim_world.backend.responses_requests()[0].account_id == "id-alpha"


async def test_exec_waits_for_its_own_reset_when_it_comes_first(sim_world: World) -> None:
    """alpha fails with its reset seconds away, beta is blocked for 10 min: resumed on alpha."""
    sim_world.add("alpha", five_hour_used=99)
    sim_world.add("beta", five_hour_used=100)
    soon = int(time.time()) + 3
    sim_world.backend.set_quota("id-alpha", five_hour_resets_at=soon)
    later = int(time.time()) + 600
    sim_world.backend.set_quota("id-beta", five_hour_resets_at=later)
    sim_world.pool.set_cooldown(
        "beta",
        window=WindowKind.FIVE_HOUR,
        blocked_until=datetime.fromtimestamp(later, UTC),
        reason="test",
    )
    sim_world.backend.script(Behaviour.usage_limit(), account_id="id-alpha")
    result = await sim_world.supervisor(quota_stale_after=0.5).run(_exec("go"), cwd=sim_world.work)
    assert result.exit_code == 0
    assert result.accounts == ("alpha", "alpha")
    assert result.rotations == 1
    requests = sim_world.backend.responses_requests()
    assert [(r.account_id, r.status) for r in requests] == [("id-alpha", 429), ("id-alpha", 200)]
    assert result.session_id == requests[0].session_id == requests[1].session_id
    waits = sim_world.sink.of(WaitingForReset)
    assert waits
    assert all(abs(w.until.timestamp() - soon) < 3 for w in waits)  # type: ignore[attr-defined]
    assert [c.window for c in sim_world.pool.get("alpha").cooldowns] in ([], [WindowKind.FIVE_HOUR])


@pytest.mark.parametrize(
    ("sig", "argv"),
    [
        (signal.SIGINT, ["a prompt for the TUI"]),
        (signal.SIGINT, _exec("headless")),
        (signal.SIGTERM, ["a prompt for the TUI"]),
    ],
)
async def test_a_signal_ends_a_wait_at_once(
    sim_world: World, sig: signal.Signals, argv: list[str]
) -> None:
    """Ctrl-C (even in interactive mode) and SIGTERM end a wait with 128+signal; no Codex ran."""
    sim_world.add("alpha", five_hour_used=100)
    sim_world.add("beta", weekly_used=100)
    run = asyncio.create_task(sim_world.supervisor().run(argv, cwd=sim_world.work))
    await _until_waiting(sim_world)
    os.kill(os.getpid(), sig)
    result = await asyncio.wait_for(run, 60)
    assert result.exit_code == 128 + sig
    assert result.signal == sig
    assert result.accounts == ()
    assert sim_world.backend.responses_requests() == []
    assert sim_world.sink.of(ChildExited) == []


async def test_waiting_without_a_sink_says_so_in_the_log(
    sim_world: World, caplog: pytest.LogCaptureFixture
) -> None:
    """No sink: the wait is logged once as a WARNING instead of blocking silently."""
    sim_world.add("alpha", five_hour_used=100)
    sup = Supervisor(
        sim_world.pool,
        config=SupervisorConfig(codex=str(sim_world.codex), wait_for_reset=True, max_wait=0.3),
        environ=sim_world.env,
    )
    with caplog.at_level(logging.WARNING), pytest.raises(errors.QuotaUnavailable):
        await sup.run(_exec("x"), cwd=sim_world.work)
    warnings = [
        r for r in caplog.records if r.levelno == logging.WARNING and "waiting" in r.message
    ]
    assert len(warnings) == 1


def test_run_sync_from_a_worker_thread_and_request_stop(sim_world: World) -> None:
    """From a worker thread run_sync works, and request_stop ends a wait with 143."""
    sim_world.add("alpha")
    results: list[Any] = []
    worker = threading.Thread(
        target=lambda: results.append(
            sim_world.supervisor().run_sync(_exec("hello"), cwd=sim_world.work)
        )
    )
    worker.start()
    worker.join(60)
    assert results[0].exit_code == 0
    assert results[0].accounts == ("alpha",)
    sim_world.pool.set_cooldown(
        "alpha",
        window=WindowKind.FIVE_HOUR,
        blocked_until=datetime.now(UTC) + timedelta(minutes=10),
        reason="test",
    )
    sup = sim_world.supervisor()
    worker = threading.Thread(
        target=lambda: results.append(sup.run_sync(_exec("again"), cwd=sim_world.work))
    )
    worker.start()
    deadline = time.monotonic() + 60
    while not sim_world.sink.of(WaitingForReset):
        assert time.monotonic() < deadline
        time.sleep(0.01)
    sup.request_stop()
    worker.join(60)
    assert results[1].exit_code == 143
    assert results[1].signal == signal.SIGTERM


async def test_the_launcher_is_a_seam(sim_world: World) -> None:
    """An injected launcher starts every child, with CODEX_HOME set and no token in argv."""
    sim_world.add("alpha")
    seen: list[tuple[list[str], dict[str, str]]] = []

    async def recording(argv: Any, **kw: Any) -> Child:
        seen.append((list(argv), dict(kw["env"])))
        return await launch(argv, **kw)

    sup = Supervisor(
        sim_world.pool,
        config=SupervisorConfig(codex=str(sim_world.codex), poll_interval=0.05),
        environ=sim_world.env,
        launcher=recording,
    )
    result = await sup.run(_exec("hi"), cwd=sim_world.work)
    assert result.exit_code == 0
    [(argv, env)] = seen
    assert argv[0] == str(sim_world.codex)
    assert env["CODEX_HOME"] == str(sim_world.pool.account_home("alpha"))
    token = sim_world.backend.account("id-alpha").access_token
    assert all(token not in part for part in argv)
    assert token not in repr(env)


@pytest.mark.parametrize(
    "bad",
    [
        {"poll_interval": 0},
        {"restart_budget": -1},
        {"max_wait": -5},
        {"codex": ""},
        {"countdown_interval": float("nan")},
        {"crash_backoff": True},
    ],
)
def test_supervisor_config_validates_its_fields(bad: dict[str, Any]) -> None:
    """Nonsense settings are a ConfigError at construction, not a spin or a hang later."""
    with pytest.raises(errors.ConfigError):
        SupervisorConfig(**bad)


async def test_restart_budget_zero_never_rotates(sim_world: World) -> None:
    """With no restart budget, a usage-limit failure ends the run with Codex's code."""
    sim_world.add("alpha")
    sim_world.add("beta")
    sim_world.backend.script(Behaviour.usage_limit(), account_id="id-alpha")
    result = await sim_world.supervisor(restart_budget=0).run(_exec("x"), cwd=sim_world.work)
    assert result.exit_code != 0
    assert result.rotations == 0
    assert [r.account_id for r in sim_world.backend.responses_requests()] == ["id-alpha"]


async def test_a_resume_that_keeps_crashing_backs_off_then_gives_up(sim_world: World) -> None:
    """A resumed child failing at once is retried with backoff until the budget runs out."""
    sim_world.add("alpha")
    sim_world.add("beta", five_hour_used=50)
    sim_world.backend.script(Behaviour.usage_limit(), account_id="id-alpha")
    sim_world.backend.script(*[Behaviour.server_error() for _ in range(3)], account_id="id-beta")
    result = await sim_world.supervisor(restart_budget=2, crash_backoff=0.01).run(
        _exec("x"), cwd=sim_world.work
    )
    assert result.exit_code != 0
    # Two restarts in all: the rotation to beta, then one retry of the crash.
    assert result.accounts == ("alpha", "beta", "beta")
    assert result.rotations == 1


async def test_a_prewarmed_successor_is_revalidated_before_the_cutover(
    sim_world: World,
) -> None:
    """A pre-warmed successor blocked meanwhile is passed over for a fresh choice."""
    sim_world.add("alpha")
    sim_world.add("beta")
    sim_world.add("gamma", five_hour_used=30)
    sup = sim_world.supervisor()
    outcome = _Rotate(
        returncode=0,
        session_id="s",
        reason="test",
        successor="beta",
        immediate=False,
        exhausted=False,
    )
    async with SignalWatcher(install=False) as signals:
        assert await sup._successor(outcome, "alpha", signals) == "beta"
        tomorrow = int(time.time()) + 86400
        sim_world.backend.set_quota("id-beta", weekly=100, weekly_resets_at=tomorrow)
        sim_world.pool.set_cooldown(
            "beta",
            window=WindowKind.WEEKLY,
            blocked_until=datetime.fromtimestamp(tomorrow, UTC),
            reason="test",
        )
        assert await sup._successor(outcome, "alpha", signals) == "gamma"
    await sup.selector.aclose()


async def test_passthrough_runs_in_the_users_own_home(sim_world: World) -> None:
    """`logout` and other pass-through commands never run in a pooled account's home."""
    sim_world.add("alpha")
    homes: list[str] = []

    async def recording(argv: Any, **kw: Any) -> Child:
        homes.append(kw["env"]["CODEX_HOME"])
        return await launch([str(sim_world.codex), "--version"], **kw)

    sup = Supervisor(
        sim_world.pool,
        config=SupervisorConfig(codex=str(sim_world.codex)),
        environ=sim_world.env,
        launcher=recording,
    )
    result = await sup.run(["mcp", "list"], cwd=sim_world.work)
    assert result.exit_code == 0
    assert homes == [str(sim_world.base)]
    assert (sim_world.pool.account_home("alpha") / "auth.json").is_file()


@pytest.mark.parametrize("argv", [["logout"], ["login"], ["-c", "x=1", "login", "--device-auth"]])
async def test_login_and_logout_are_refused_under_the_supervisor(
    sim_world: World, argv: list[str]
) -> None:
    """`run -- logout` / `login` would act on a login's credentials: refused, nothing runs."""
    sim_world.add("alpha")
    launched: list[Any] = []

    async def recording(argv: Any, **kw: Any) -> Child:
        launched.append(argv)
        return await launch(argv, **kw)

    sup = Supervisor(
        sim_world.pool,
        config=SupervisorConfig(codex=str(sim_world.codex)),
        environ=sim_world.env,
        launcher=recording,
    )
    with pytest.raises(errors.ConfigError, match="accounts login NAME"):
        await sup.run(argv, cwd=sim_world.work)
    assert launched == []
    assert (sim_world.pool.account_home("alpha") / "auth.json").is_file()


async def test_a_relative_cd_is_applied_once(sim_world: World) -> None:
    """`exec -C sub` starts Codex in the caller's folder (Codex applies -C), bound to sub."""
    sim_world.add("alpha")
    sub = sim_world.work / "sub"
    sub.mkdir()
    cwds: list[str] = []

    async def recording(argv: Any, **kw: Any) -> Child:
        cwds.append(str(kw.get("cwd")))
        return await launch(argv, **kw)

    sup = Supervisor(
        sim_world.pool,
        config=SupervisorConfig(codex=str(sim_world.codex), poll_interval=0.05),
        environ=sim_world.env,
        sink=sim_world.sink,
        launcher=recording,
    )
    result = await sup.run(_exec("-C", "sub", "hello"), cwd=sim_world.work)
    assert result.exit_code == 0
    assert cwds == [str(sim_world.work)]
    [bound] = sim_world.sink.of(SessionBound)
    assert _session_cwd(bound.path) == sub.resolve()  # type: ignore[attr-defined]


def _session_cwd(rollout: str) -> Path:
    """The cwd a rollout's session_meta records."""
    meta = json.loads(Path(rollout).read_text().splitlines()[0])
    return Path(meta["payload"]["cwd"]).resolve()


async def test_an_exec_whose_turn_succeeded_is_never_stopped(sim_world: World) -> None:
    """Even when the policy would pause or rotate at the boundary, a finished exec exits 0."""
    sim_world.add("alpha", five_hour_used=80, per_request_percent=10)
    sup = sim_world.supervisor(poll_interval=0.01, wait_for_reset=False)
    # A learnt 10 % turn: after this one (90 % used) no account can take another.
    sup.selector.costs = TurnCosts().observe("alpha", {WindowKind.FIVE_HOUR: 10})
    result = await sup.run(_exec("one turn"), cwd=sim_world.work)
    assert result.exit_code == 0
    assert result.rotations == 0
    [exited] = sim_world.sink.of(ChildExited)
    assert not exited.stopped  # type: ignore[attr-defined]
    assert len(sim_world.backend.responses_requests()) == 1


def test_request_stop_from_another_thread_wakes_the_run(sim_world: World) -> None:
    """request_stop ends a run in a worker thread at once, even one asked before it started."""
    sim_world.add("alpha")

    async def sleeper(argv: Any, **kw: Any) -> Child:
        return await launch(["sleep", "60"], **kw)

    sup = Supervisor(
        sim_world.pool,
        config=SupervisorConfig(codex=str(sim_world.codex)),
        environ=sim_world.env,
        launcher=sleeper,
    )
    results: list[Any] = []
    worker = threading.Thread(
        target=lambda: results.append(sup.run_sync(["--version"], cwd=sim_world.work))
    )
    worker.start()
    deadline = time.monotonic() + 30
    while sup._loop is None:
        assert time.monotonic() < deadline
        time.sleep(0.01)
    sup.request_stop()
    worker.join(30)
    assert not worker.is_alive()
    assert results[0].exit_code == 143
    sup.request_stop()  # between runs: kept for the next one, which stops at once
    again = sup.run_sync(["--version"], cwd=sim_world.work)
    assert again.signal == signal.SIGTERM


async def test_another_sessions_cooldown_does_not_cut_a_healthy_turn(sim_world: World) -> None:
    """A block recorded elsewhere mid-turn lets the turn finish: no cutover, no lost prompt."""
    sim_world.add("alpha", five_hour_used=10)
    sim_world.add("beta", five_hour_used=20)
    sim_world.backend.script(Behaviour.delay(2.0, "a long, healthy answer"), account_id="id-alpha")
    run = asyncio.create_task(sim_world.supervisor().run(_exec("the long job"), cwd=sim_world.work))
    deadline = time.monotonic() + 60
    while not sim_world.backend.responses_requests():
        assert time.monotonic() < deadline
        await asyncio.sleep(0.02)
    # Another session on alpha just hit alpha's limit and recorded it.
    sim_world.pool.set_cooldown(
        "alpha",
        window=WindowKind.FIVE_HOUR,
        blocked_until=datetime.now(UTC) + timedelta(hours=1),
        reason="another session: 429",
    )
    result = await asyncio.wait_for(run, 60)
    assert result.exit_code == 0
    assert result.accounts == ("alpha",)
    assert result.rotations == 0
    [request] = sim_world.backend.responses_requests()
    assert request.status == 200
    assert "the long job" in request.input_texts


def test_a_child_with_a_prompt_is_safe_to_stop_only_after_its_turn(tmp_path: Path) -> None:
    """A resumed session reads as idle before its new prompt ran: not a boundary for that child."""
    rollout = tmp_path / "rollout.jsonl"
    lines = [
        {"type": "event_msg", "payload": {"type": "task_started", "turn_id": "old"}},
        {"type": "event_msg", "payload": {"type": "task_complete", "turn_id": "old"}},
    ]
    rollout.write_text("".join(json.dumps(line) + "\n" for line in lines))
    reader = RolloutReader(rollout, account="beta")
    reader.read()
    assert reader.state.at_boundary

    def child_run(*, prompt: bool) -> _ChildRun:
        return _ChildRun(
            inv=parse_argv(["resume", "x"]),
            child=None,  # type: ignore[arg-type]
            account="beta",
            home=tmp_path,
            workdir=tmp_path,
            launched_at=datetime.now(UTC),
            binder=None,  # type: ignore[arg-type]
            binding=None,
            known_session="x",
            prompt_in_argv=prompt,
            bind_deadline=0.0,
            last_passive=0.0,
            reader=reader,
            turns_at_launch=reader.state.turns_completed,  # as the catch-up sets it
            caught_up=True,
        )

    with_prompt = child_run(prompt=True)
    assert not with_prompt.safe_to_stop()  # the continuation prompt has not run yet
    with_prompt.turns_started = 1
    assert with_prompt.safe_to_stop()
    assert child_run(prompt=False).safe_to_stop()
    # A dangling task_started from a writer killed mid-turn is not this child's turn.
    with rollout.open("a") as fh:
        fh.write(json.dumps(lines[0]) + "\n")
    reader.read()
    assert reader.state.phase is TurnPhase.IN_TURN
    assert child_run(prompt=False).safe_to_stop()


async def test_no_library_variable_reaches_any_process_it_starts(
    sim_world: World, tmp_path: Path
) -> None:
    """`codex --version` and every child get the child environment: CODEX_SUPERVISOR_* dropped."""
    sim_world.add("alpha")
    seen = tmp_path / "envs"
    wrapper = tmp_path / "codex-wrapper"
    wrapper.write_text(
        f'#!/bin/sh\nenv >> {seen}\necho --- >> {seen}\nexec {sim_world.codex} "$@"\n'
    )
    wrapper.chmod(0o755)
    environ = {**sim_world.env, "CODEX_SUPERVISOR_SECRET_TOKEN": "do-not-leak"}
    sup = Supervisor(
        sim_world.pool,
        config=SupervisorConfig(codex=str(wrapper), poll_interval=0.05),
        environ=environ,
    )
    result = await sup.run(_exec("hi"), cwd=sim_world.work)
    assert result.exit_code == 0
    dumps = _read(seen).split("---")
    assert len(dumps) >= 3  # --version, the exec child (and the trailing separator)
    assert "do-not-leak" not in _read(seen)


def _read(path: Path) -> str:
    return path.read_text()


@pytest.mark.parametrize("command", [["--version"], ["exec", "hi"]])
def test_a_child_killed_by_a_signal_exits_as_a_shell_reports_it(
    sim_world: World, command: list[str]
) -> None:
    """Codex killed by SIGKILL: exit code 137 (128 + 9), never the raw -9 (247 to a shell)."""
    sim_world.add("alpha")

    async def killed(argv: Any, **kw: Any) -> Child:
        return await launch(["sh", "-c", "kill -9 $$"], **kw)

    sup = Supervisor(
        sim_world.pool,
        config=SupervisorConfig(codex=str(sim_world.codex), restart_budget=0),
        environ=sim_world.env,
        launcher=killed,
    )
    result = sup.run_sync(command, cwd=sim_world.work)
    assert result.exit_code == 137
    assert result.signal is None


def test_what_an_exec_leaves_running_ends_with_it(sim_world: World, tmp_path: Path) -> None:
    """An exec that exits leaving a process of its group behind: that process is killed."""
    sim_world.add("alpha")
    left = tmp_path / "left.pid"

    async def leaves_one(argv: Any, **kw: Any) -> Child:
        script = f"sleep 300 & echo $! > {left}; exit 0"
        return await launch(["sh", "-c", script], **kw)

    sup = Supervisor(
        sim_world.pool,
        config=SupervisorConfig(codex=str(sim_world.codex), restart_budget=0),
        environ=sim_world.env,
        launcher=leaves_one,
    )
    result = sup.run_sync(_exec("hi"), cwd=sim_world.work)
    assert result.exit_code == 0
    pid = int(left.read_text())
    deadline = time.monotonic() + 30
    while Path(f"/proc/{pid}").exists():
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        if state == "Z":  # killed, waiting for init to reap it
            break
        assert time.monotonic() < deadline, f"{pid} outlived the exec that started it"
        time.sleep(0.05)


def _removed_when_occupied(monkeypatch: pytest.MonkeyPatch) -> list[Path]:
    """Make the first occupy() find its account just removed (a remove racing the launch)."""
    occupy = AccountPool.occupy
    removed: list[Path] = []

    def remove_then_occupy(self: AccountPool, name: str, **kw: Any) -> Any:
        if not removed:
            removed.append(self.remove(name))
        return occupy(self, name, **kw)

    monkeypatch.setattr(AccountPool, "occupy", remove_then_occupy)
    return removed


async def test_an_account_removed_before_its_launch_is_replaced_by_another(
    sim_world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Chosen, then removed before Codex could occupy it: the run goes to another account, and
    the removed one gets no new (empty, login-less) home outside the pool."""
    sim_world.add("alpha", five_hour_used=10)
    sim_world.add("beta", five_hour_used=50)
    removed = _removed_when_occupied(monkeypatch)
    result = await sim_world.supervisor().run(_exec("hello"), cwd=sim_world.work)
    assert result.exit_code == 0
    assert result.accounts == ("beta",)
    assert [s.account for s in sim_world.sink.of(AccountSelected)] == ["alpha", "beta"]  # type: ignore[attr-defined]
    [request] = sim_world.backend.responses_requests()
    assert request.account_id == "id-beta"
    [aside] = removed
    assert aside.name.startswith(".removed-alpha-")
    assert (aside / "home" / "auth.json").is_file()
    assert not (sim_world.pool.root / "accounts" / "alpha").exists()


async def test_a_run_whose_only_account_was_removed_before_its_launch_says_so(
    sim_world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No other account left: AccountGone says what happened; nothing was launched."""
    sim_world.add("alpha")
    _removed_when_occupied(monkeypatch)
    with pytest.raises(errors.AccountGone, match=r"'alpha'.*no other account is left in the pool"):
        await sim_world.supervisor().run(_exec("hello"), cwd=sim_world.work)
    assert sim_world.backend.responses_requests() == []
    assert sim_world.sink.of(ChildExited) == []
    assert not (sim_world.pool.root / "accounts" / "alpha").exists()


async def test_a_lost_occupancy_lease_is_said_loudly_and_the_child_runs_on(
    sim_world: World, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """The child's occupancy lease reported lost (e.g. its account left the pool during a
    suspend): logged at ERROR and emitted as OccupancyLost; the child is not stopped for it."""
    sim_world.add("alpha")
    occupy = AccountPool.occupy
    why = "it lapsed and was taken again, but account 'alpha' is no longer in the pool"

    def occupy_then_lose(self: AccountPool, name: str, **kw: Any) -> Any:
        claim = occupy(self, name, **kw)

        @contextlib.asynccontextmanager
        async def losing() -> AsyncIterator[Lease]:
            async with claim as lease:
                lease._mark_lost(why)  # as the heartbeat reports it
                yield lease

        return losing()

    monkeypatch.setattr(AccountPool, "occupy", occupy_then_lose)
    with caplog.at_level(logging.ERROR, logger="codex_supervisor.supervisor"):
        result = await sim_world.supervisor().run(_exec("hello"), cwd=sim_world.work)
    assert result.exit_code == 0
    [lost] = sim_world.sink.of(OccupancyLost)
    assert isinstance(lost, OccupancyLost)
    assert (lost.account, lost.reason) == ("alpha", why)
    assert "no longer in the pool" in lost.message
    [logged] = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert "occupancy lease of account 'alpha' was lost" in logged.getMessage()
    [exited] = sim_world.sink.of(ChildExited)
    assert isinstance(exited, ChildExited)
    assert (exited.returncode, exited.stopped) == (0, False)


async def test_a_codex_newer_than_every_tested_release_runs_and_is_announced(
    sim_world: World, tmp_path: Path
) -> None:
    """An untested (newer) Codex is never refused: one event says which rules it runs with."""
    sim_world.add("alpha")
    newer = tmp_path / "codex-newer"
    newer.write_text(
        "#!/bin/sh\n"
        'if [ "$1" = "--version" ]; then echo "codex-cli 9.0.0"; exit 0; fi\n'
        f'exec "{sim_world.codex}" "$@"\n'
    )
    newer.chmod(0o755)
    result = await sim_world.supervisor(codex=str(newer)).run(_exec("hi"), cwd=sim_world.work)
    assert result.exit_code == 0
    [event] = sim_world.sink.of(CodexVersionUntested)
    assert (event.version, event.newest_tested) == ("9.0.0", TESTED_CODEX_VERSIONS[-1])
    assert "9.0.0" in event.message


@pytest.mark.parametrize(("version", "supervised"), [("0.169.0", False), ("0.171.0", True)])
async def test_the_command_line_is_read_with_the_running_codex_s_grammar(
    sim_world: World, tmp_path: Path, version: str, supervised: bool
) -> None:
    """`exec --remote-auth-token-env VAR`: an exec on 0.171.0, an unknown option on 0.169.0.

    0.169.0 would refuse it at once: it is passed through as it is, with no
    account chosen or occupied for a run that cannot start.
    """
    sim_world.add("alpha")
    codex = install_simulator(tmp_path / f"bin-{version}", version=version)
    argv = _exec("--remote-auth-token-env", "TOKEN_VAR", "fix it")
    result = await sim_world.supervisor(codex=str(codex)).run(argv, cwd=sim_world.work)
    assert result.accounts == (("alpha",) if supervised else ())
    assert (result.exit_code == 0) is supervised


async def test_a_resume_by_name_that_fails_on_the_limit_moves_to_another_account(
    sim_world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A session not known at launch (a thread name) whose one turn fails fast still rotates.

    The exec may end between two looks at /proc, so the session hooks name it.
    """
    sim_world.add("alpha", five_hour_used=20)
    sim_world.add("beta", five_hour_used=40)
    first = await sim_world.supervisor().run(
        ["exec", "--skip-git-repo-check", "start"], cwd=sim_world.work
    )
    assert first.session_id is not None
    await asyncio.sleep(2.5)  # an older session: not one the next launch could have made
    sim_world.backend.script(Behaviour.usage_limit(), account_id="id-alpha")
    # What a thread name comes to: nothing known about the session before launch.
    monkeypatch.setattr(Supervisor, "_initial_session", lambda *_: None)
    # Every look at /proc comes too late: the exec has ended before one sees it write.
    missed = BindAttempt(binding=None, reason="not looked at in time")
    monkeypatch.setattr(SessionBinder, "open_by", lambda *_: missed)
    result = await sim_world.supervisor().run(
        ["exec", "--skip-git-repo-check", "resume", first.session_id, "go on"], cwd=sim_world.work
    )
    assert result.exit_code == 0
    assert result.accounts == ("alpha", "beta")
    assert result.session_id == first.session_id
    last = sim_world.backend.responses_requests()[-1]
    assert (last.account_id, last.session_id) == ("id-beta", first.session_id)
    assert [c.window for c in sim_world.pool.get("alpha").cooldowns] == [WindowKind.FIVE_HOUR]


@pytest.mark.parametrize(
    ("setting", "argv", "known", "proc", "on"),
    [
        (None, ["exec", "x"], False, True, False),  # /proc shows it
        (None, ["exec", "x"], False, False, True),  # as on macOS
        (None, ["exec", "resume", "my-thread", "x"], False, True, True),  # unknown at launch
        (None, ["exec", "resume", "my-thread", "x"], True, True, False),  # known: by id
        (True, ["exec", "x"], False, True, True),
        (False, ["exec", "x"], False, False, False),
        (None, ["--disable", "hooks", "exec", "x"], False, False, False),
    ],
)
async def test_where_the_session_hooks_go(  # noqa: PLR0917 - one per parameter
    sim_world: World,
    monkeypatch: pytest.MonkeyPatch,
    setting: bool | None,
    argv: list[str],
    known: bool,
    proc: bool,
    on: bool,
) -> None:
    if proc:
        monkeypatch.delenv(ENV_NO_PROC, raising=False)
    else:
        monkeypatch.setenv(ENV_NO_PROC, "1")
    sup = sim_world.supervisor(session_hooks=setting)
    session = "01a22c33-7e06-70a2-9074-21dda48f0185" if known else None
    why = await sup._hooks_decision(parse_argv(argv), TESTED_CODEX_VERSIONS[0], {}, session)
    assert (why is None) is on, why
