"""Supervisor with the Codex simulator: selection, exec cutover, waiting, secrets."""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import pytest

from codex_supervisor import errors
from codex_supervisor.accounts import AccountPool
from codex_supervisor.events import (
    AccountSelected,
    ChildExited,
    CollectingSink,
    Resumed,
    Rotating,
    SessionBound,
    WaitingForReset,
)
from codex_supervisor.quota import WindowKind
from codex_supervisor.supervisor import Supervisor, SupervisorConfig
from codex_supervisor.testing import Behaviour, FakeCodexBackend, install_simulator

pytestmark = pytest.mark.anyio


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
    assert code == 0
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
    assert code == 0
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
    with pytest.raises(errors.QuotaUnavailable, match="blocked"):
        await sim_world.supervisor(wait_for_reset=False).run(
            ["exec", "--skip-git-repo-check", "x"], cwd=sim_world.work
        )
    assert sim_world.backend.responses_requests() == []


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
    assert code == 0
    assert time.monotonic() - started >= 2
    waits = sim_world.sink.of(WaitingForReset)
    assert waits
    assert abs(waits[0].until.timestamp() - soon) < 2  # type: ignore[attr-defined]
    [request] = sim_world.backend.responses_requests()
    assert request.account_id == "id-alpha"


async def test_passthrough_runs_once_unsupervised(sim_world: World) -> None:
    """--version and other unsupervised commands run once and return their code."""
    sim_world.add("alpha")
    assert await sim_world.supervisor().run(["--version"], cwd=sim_world.work) == 0
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
    assert code == 0
    text = caplog.text + repr(sim_world.sink.events)
    for secret in secrets:
        assert secret not in text
        assert secret[:24] not in text
