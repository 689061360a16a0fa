"""The Supervisor driving the real Codex CLI 0.169.0 against the fake backend."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
import os
import signal
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from codex_supervisor.accounts import AccountPool
from codex_supervisor.events import ChildLaunched, CollectingSink, SessionBound
from codex_supervisor.quota import WindowKind
from codex_supervisor.sessions import ENV_NO_PROC
from codex_supervisor.supervisor import Supervisor, SupervisorConfig
from codex_supervisor.testing import (
    Behaviour,
    FakeCodexBackend,
    PtyProcess,
    hermetic_env,
    offline_flags,
)

pytestmark = [pytest.mark.real_codex]


class RealWorld:
    """A pool on a fake backend with the real binary, for in-process and pty runs."""

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
        self.env = hermetic_env(self.base, root, backend)

    def add(self, name: str, **quota: Any) -> None:
        self.backend.add_account(f"id-{name}", **quota)
        self.pool.import_auth(
            name, self.backend.write_auth(self.root / f"login-{name}", f"id-{name}")
        )

    def supervisor(self, **config: Any) -> Supervisor:
        settings = {"codex": str(self.codex), "poll_interval": 0.05, **config}
        return Supervisor(
            self.pool, config=SupervisorConfig(**settings), sink=self.sink, environ=self.env
        )


@pytest.fixture
def real(tmp_path: Path, backend: FakeCodexBackend, codex_bin: Path) -> RealWorld:
    return RealWorld(tmp_path, backend, codex_bin)


def _exec(*rest: str) -> list[str]:
    return ["exec", "--skip-git-repo-check", *offline_flags(), *rest]


@pytest.mark.anyio
async def test_exec_usage_limit_despite_usage_endpoint_resumes_on_b(
    real: RealWorld, proc_mode: str
) -> None:
    """A's usage endpoint says 50 % but its model request gets 429: the run ends on B, exit 0.

    Also without /proc (as on macOS), where only Codex's SessionStart hook
    names the session the 429 interrupted.
    """
    real.add("alpha", five_hour_used=50)
    real.add("beta", five_hour_used=60)
    real.backend.script(Behaviour.usage_limit(), account_id="id-alpha")
    result = await real.supervisor().run(_exec("build the thing"), cwd=real.work)
    assert result.exit_code == 0
    requests = real.backend.responses_requests()
    assert [(r.account_id, r.status) for r in requests] == [("id-alpha", 429), ("id-beta", 200)]
    assert requests[0].session_id == requests[1].session_id
    [rollout] = list((real.base / "sessions").rglob("rollout-*.jsonl"))
    lines = [json.loads(line) for line in rollout.read_text().splitlines()]
    markers = [
        line["payload"]["type"]
        for line in lines
        if line["type"] == "event_msg"
        and line["payload"]["type"] in ("task_started", "task_complete")
    ]
    assert markers == ["task_started", "task_complete"] * 2  # both attempts, one file
    [cooldown] = real.pool.get("alpha").cooldowns
    assert cooldown.window is WindowKind.FIVE_HOUR
    reset = real.backend.account("id-alpha").windows[0].resets_at
    assert abs(cooldown.blocked_until.timestamp() - reset) < 2
    real.backend.assert_no_replay()
    [bound, *_] = real.sink.of(SessionBound)
    assert bound.session_id == requests[0].session_id  # type: ignore[attr-defined]
    if proc_mode == "no-proc":
        assert bound.reason.startswith("Codex's hook named session")  # type: ignore[attr-defined]


@pytest.mark.anyio
async def test_forced_token_refresh_is_adopted_and_never_replayed(real: RealWorld) -> None:
    """Codex refreshes A's expired token in A's home; later rotations replay nothing."""
    real.add("alpha", access_token_expired=True)
    # Beta is low (below the pre-warm margin) so alpha, whose quota cannot be
    # probed with an expired token, is the one chosen.
    real.add("beta", five_hour_used=92)
    real.backend.script(
        Behaviour.reply("refreshed and answered"), Behaviour.usage_limit(), account_id="id-alpha"
    )
    assert (await real.supervisor().run(_exec("first run"), cwd=real.work)).exit_code == 0
    alpha = real.backend.account("id-alpha")
    assert alpha.refresh_count == 1
    auth = json.loads((real.pool.account_home("alpha") / "auth.json").read_text())
    assert auth["tokens"]["refresh_token"] == alpha.refresh_token

    # A second run hits A's 429 and moves to B; then A comes back after its
    # cooldown is lifted and uses the refreshed tokens, not the old ones.
    assert (await real.supervisor().run(_exec("second run"), cwd=real.work)).exit_code == 0
    real.pool.clear_cooldowns("alpha")
    real.backend.set_quota("id-beta", five_hour=99)
    await asyncio.sleep(0.6)
    # Every account is probed afresh: alpha's probe uses the refreshed token
    # Codex left in alpha's home.
    fresh = real.supervisor(quota_stale_after=0.5)
    assert (await fresh.run(_exec("third run"), cwd=real.work)).exit_code == 0
    accounts = [r.account_id for r in real.backend.responses_requests() if r.status == 200]
    assert accounts[-1] == "id-alpha"
    assert real.backend.account("id-alpha").refresh_count == 1
    real.backend.assert_no_replay()


@pytest.mark.anyio
async def test_a_run_never_starts_codex_on_a_login_whose_newer_copy_is_in_quarantine(
    real: RealWorld,
) -> None:
    """A pooled app-server refreshed alpha's login into a file of its own that waits in
    quarantine: alpha's home holds the spent refresh token. The run goes to beta, and
    nothing is replayed; once the quarantined login is taken back, alpha runs on it."""
    real.add("alpha", five_hour_used=10)
    real.add("beta", five_hour_used=60)
    # Fresh quota of both on record: alpha, with the most room, is the one a run picks.
    probing = real.supervisor().selector
    await probing.refresh()
    await probing.aclose()
    assert real.pool.get("alpha").last_snapshot is not None
    auth_path = real.pool.account_home("alpha") / "auth.json"
    spent = json.loads(auth_path.read_text())
    async with httpx.AsyncClient() as client:
        refreshed = await client.post(
            real.backend.token_url, json={"refresh_token": spent["tokens"]["refresh_token"]}
        )
    assert refreshed.status_code == 200
    live = {**spent, "tokens": {**spent["tokens"], **refreshed.json()}}
    del live["last_refresh"]  # nothing says it is newer: it stays in quarantine
    spawn_home = real.root / "spawn-home"
    spawn_home.mkdir()
    (spawn_home / "auth.json").write_text(json.dumps(live))
    (spawn_home / "auth.json").chmod(0o600)
    item = real.pool.take_back_auth("alpha", spawn_home / "auth.json")
    assert item is not None

    result = await real.supervisor().run(_exec("not on alpha"), cwd=real.work)
    assert result.exit_code == 0
    assert result.accounts == ("beta",)
    assert [e.account for e in real.sink.of(ChildLaunched)] == ["beta"]  # type: ignore[attr-defined]
    assert {r.account_id for r in real.backend.responses_requests()} == {"id-beta"}
    real.backend.assert_no_replay()

    # Dealt with (here: the live login put in alpha's home, dated): alpha runs again.
    live["last_refresh"] = "2099-01-01T00:00:00Z"
    item.path.write_text(json.dumps(live))
    result = await real.supervisor().run(_exec("on alpha again"), cwd=real.work)
    assert result.exit_code == 0
    assert result.accounts == ("alpha",)
    assert real.pool.quarantined() == []
    assert (
        json.loads(auth_path.read_text())["tokens"]["refresh_token"]
        == live["tokens"]["refresh_token"]
    )
    assert real.backend.responses_requests()[-1].account_id == "id-alpha"
    real.backend.assert_no_replay()


@pytest.mark.anyio
async def test_no_secret_in_logs_events_argv_or_child_environment(
    real: RealWorld, caplog: pytest.LogCaptureFixture
) -> None:
    """At DEBUG through a rotation: no token in logs, events, the child's argv or environment."""
    real.add("alpha")
    real.add("beta")
    real.backend.script(Behaviour.delay(1.0), Behaviour.usage_limit(), account_id="id-alpha")
    real.backend.script(Behaviour.delay(1.0), account_id="id-beta")
    secrets: list[str] = []
    for account_id in ("id-alpha", "id-beta"):
        acct = real.backend.account(account_id)
        secrets += [acct.access_token, acct.refresh_token, acct.id_token]
    seen_env: list[bytes] = []
    seen_argv: list[bytes] = []

    def spy(event: Any) -> None:
        real.sink(event)
        if isinstance(event, ChildLaunched):
            with contextlib.suppress(OSError):
                seen_env.append(Path(f"/proc/{event.pid}/environ").read_bytes())
                seen_argv.append(Path(f"/proc/{event.pid}/cmdline").read_bytes())

    sup = real.supervisor()
    sup.sink = spy
    with caplog.at_level(logging.DEBUG):
        code = (await sup.run(_exec("first"), cwd=real.work)).exit_code
        code2 = (await sup.run(_exec("second"), cwd=real.work)).exit_code if code == 0 else code
    assert (code, code2) == (0, 0)
    assert seen_env, "could not read any child's environment"
    text = caplog.text + repr(real.sink.events)
    blob = b"".join(seen_env + seen_argv)
    assert b"CODEX_SUPERVISOR" not in blob
    for secret in secrets:
        assert secret not in text
        assert secret.encode() not in blob


# -- under a pseudo-terminal -------------------------------------------------------------

_DRIVER = r"""
import json, sys, termios
from pathlib import Path
from codex_supervisor.accounts import AccountPool
from codex_supervisor.policy import RotationPolicy
from codex_supervisor.supervisor import Supervisor, SupervisorConfig

cfg = json.loads(sys.argv[1])
pool = AccountPool(root=Path(cfg["pool"]), base_codex_home=Path(cfg["base"]))
log = open(cfg["events"], "a", buffering=1)

def sink(event):
    record = {"name": event.name, "at": event.at.timestamp(), "message": event.message}
    for key in (
        "account", "to_account", "from_account", "session_id", "successor", "pid", "reason"
    ):
        if hasattr(event, key):
            record[key] = getattr(event, key)
    log.write(json.dumps(record) + "\n")

before = termios.tcgetattr(0)
sup = Supervisor(
    pool,
    config=SupervisorConfig(codex=cfg["codex"], poll_interval=0.05),
    sink=sink,
    environ=cfg["env"],
    policy=RotationPolicy(
        strategy=cfg.get("strategy", "headroom"), hysteresis=cfg.get("hysteresis", 5.0)
    ),
)
code = sup.run_sync(cfg["argv"], cwd=cfg["cwd"]).exit_code
print("TERMIOS_RESTORED", termios.tcgetattr(0) == before, flush=True)
sys.exit(code)
"""


def _events(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _wait_for(
    predicate: Callable[[], bool], timeout: float, what: str, tui: PtyProcess, events: Path
) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, (
            f"timed out waiting for {what}:\n{tui.text[-3000:]}\n"
            + "\n".join(e["message"] for e in _events(events))
        )
        time.sleep(0.05)


def _terminal_env(world: RealWorld) -> dict[str, str]:
    """The environment a driver runs in: the world's, a terminal, and the /proc mode of the test."""
    env = dict(world.env, TERM="xterm-256color")
    if os.environ.get(ENV_NO_PROC):
        env[ENV_NO_PROC] = os.environ[ENV_NO_PROC]
    return env


def _driver(
    tmp_path: Path, world: RealWorld, argv: list[str], strategy: str = "headroom"
) -> tuple[list[str], Path]:
    script = tmp_path / "driver.py"
    script.write_text(_DRIVER)
    events = tmp_path / "events.jsonl"
    env = _terminal_env(world)
    cfg = {
        "pool": str(world.pool.root),
        "base": str(world.base),
        "codex": str(world.codex),
        "events": str(events),
        "env": env,
        "argv": argv,
        "cwd": str(world.work),
        "strategy": strategy,
        "hysteresis": 0.0 if strategy == "drain" else 5.0,
    }
    return [sys.executable, str(script), json.dumps(cfg)], events


@pytest.fixture
def tls_real(tmp_path: Path, tls_backend: FakeCodexBackend, codex_bin: Path) -> RealWorld:
    return RealWorld(tmp_path, tls_backend, codex_bin)


def test_interactive_rotation_prewarms_resumes_and_restores_the_terminal(
    tmp_path: Path, tls_real: RealWorld, proc_mode: str
) -> None:
    """Turns on A pre-warm then rotate at the boundary; a typed prompt is answered by B.

    Also without /proc (as on macOS): Codex's hooks name the session.
    """
    world = tls_real
    # Turn 1 takes A to 91 % (pre-warm margin), the TUI's title request to
    # 93 %, turn 2 to 95 %: at the threshold, so A rotates once turn 2 ends.
    world.add("alpha", five_hour_used=89, per_request_percent=2)
    world.add("beta", five_hour_used=10, per_request_percent=1)
    # Drain (no hysteresis): alpha at 89 % is eligible and used until its threshold.
    argv, events = _driver(
        tmp_path, world, ["--no-alt-screen", *offline_flags(), "first prompt"], strategy="drain"
    )
    env = _terminal_env(world)
    with PtyProcess(argv, env=env, cwd=world.work) as tui:
        # Turn 1 (and the TUI's title request) push A to the pre-warm margin.
        _wait_for(
            lambda: any(e["name"] == "prewarm_ready" for e in _events(events)),
            60,
            "pre-warm",
            tui,
            events,
        )
        tui.submit("second prompt", received=lambda: world.backend.received("second prompt"))
        _wait_for(
            lambda: any(e["name"] == "resumed" for e in _events(events)), 60, "resume", tui, events
        )
        tui.submit("third prompt", received=lambda: world.backend.received("third prompt"))
        requests = world.backend.responses_requests()
        session = next(r.session_id for r in requests if "first prompt" in r.input_texts)
        third = next(r for r in requests if "third prompt" in r.input_texts)
        assert third.account_id == "id-beta"
        assert third.session_id == session
        assert "first prompt" in third.input_texts  # the same conversation
        tui.send_signal(signal.SIGTERM)
        code = tui.wait(timeout=30)
    log = _events(events)
    names = [e["name"] for e in log]
    assert names.index("prewarm_ready") < names.index("rotating") < names.index("resumed")
    rotating = next(e for e in log if e["name"] == "rotating")
    assert (rotating["from_account"], rotating["to_account"]) == ("alpha", "beta")
    assert rotating["session_id"] == session
    # Pre-warmed: no quota request between stopping A and starting B.
    stopped = next(e["at"] for e in log if e["name"] == "child_exited")
    resumed = next(e["at"] for e in log if e["name"] == "resumed")
    usage = [r for r in world.backend.requests if "usage" in r.path and stopped <= r.at <= resumed]
    assert usage == []
    assert code == 143
    assert "TERMIOS_RESTORED True" in tui.text
    assert b"\x1b[?2004l" in tui.raw_output  # bracketed paste switched off again
    bound = next(e for e in log if e["name"] == "session_bound")
    assert bound["session_id"] == session
    if proc_mode == "no-proc":
        assert bound["reason"].startswith("Codex's hook named session")


def test_sigterm_stops_codex_releases_leases_and_exits_143(
    tmp_path: Path, tls_real: RealWorld
) -> None:
    """SIGTERM to a supervised TUI: Codex is gone, leases released, exit 143."""
    world = tls_real
    world.add("alpha")
    argv = ["--no-alt-screen", *offline_flags(), "hello"]
    with _bound_in_a_terminal(tmp_path, world, argv) as (tui, pid):
        tui.send_signal(signal.SIGTERM)
        assert tui.wait(timeout=30) == 143
    assert not Path(f"/proc/{pid}").exists()
    assert "TERMIOS_RESTORED True" in tui.text
    assert asyncio.run(world.pool.occupants("alpha")) == []


def test_cli_waits_for_the_earliest_reset_then_continues(tmp_path: Path, real: RealWorld) -> None:
    """All accounts blocked: a countdown until the earliest reset, then the exec completes."""
    real.add("alpha", five_hour_used=100)
    real.add("beta", weekly_used=100)
    soon = int(time.time()) + 4
    real.backend.set_quota("id-alpha", five_hour_resets_at=soon)
    argv, events = _driver(tmp_path, real, _exec("waited for this"))
    env = dict(real.env, TERM="xterm-256color")
    with PtyProcess(argv, env=env, cwd=real.work) as proc:
        try:
            code = proc.wait(timeout=90)
        finally:
            print(events.read_text() if events.exists() else "no events", proc.text[-2000:])
    assert code == 0, proc.text[-3000:]
    log = _events(events)
    waits = [e for e in log if e["name"] == "waiting_for_reset"]
    assert len(waits) >= 2
    assert [r.account_id for r in real.backend.responses_requests()] == ["id-alpha"]
    ran = next(e["at"] for e in log if e["name"] == "child_launched")
    assert ran >= soon - 1


def _pgrp(pid: int) -> int:
    """The process group of ``pid``, from /proc (field 5 of stat, after the name)."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    return int(stat.rsplit(")", 1)[1].split()[2])


def test_headless_exec_leads_its_own_process_group_and_ctrl_c_ends_the_run(
    tmp_path: Path, real: RealWorld
) -> None:
    """Under a terminal, exec runs in a group of its own; Ctrl-C stops it through us: 130."""
    with _exec_in_a_terminal(tmp_path, real) as (proc, pid):
        # Its own group, so a stop reaches the whole tree; not the terminal's
        # foreground group, so the terminal's Ctrl-C reaches only the supervisor.
        assert _pgrp(pid) == pid
        assert _pgrp(pid) != _pgrp(proc.pid)
        proc.write("\x03")
        assert proc.wait(timeout=30) == 130
    assert not Path(f"/proc/{pid}").exists()
    assert "TERMIOS_RESTORED True" in proc.text
    assert asyncio.run(real.pool.occupants("alpha")) == []


def _state(pid: int) -> str:
    """The one-letter state of ``pid`` (T: stopped), from /proc."""
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]


def _until_state(pid: int, wanted: Callable[[str], bool], what: str) -> None:
    deadline = time.monotonic() + 30
    while not wanted(_state(pid)):
        assert time.monotonic() < deadline, f"{what}: state {_state(pid)}"
        time.sleep(0.02)


@contextlib.contextmanager
def _bound_in_a_terminal(
    tmp_path: Path, world: RealWorld, argv: list[str]
) -> Iterator[tuple[PtyProcess, int]]:
    """A supervised run under a pty, once its session is bound: the terminal, Codex's pid."""
    driver, events = _driver(tmp_path, world, argv)
    with PtyProcess(driver, env=dict(world.env, TERM="xterm-256color"), cwd=world.work) as proc:
        _wait_for(
            lambda: any(e["name"] == "session_bound" for e in _events(events)),
            60,
            "bind",
            proc,
            events,
        )
        yield proc, next(e["pid"] for e in _events(events) if e["name"] == "child_launched")


def _exec_in_a_terminal(
    tmp_path: Path, real: RealWorld
) -> contextlib.AbstractContextManager[tuple[PtyProcess, int]]:
    """A supervised exec mid-turn (the backend never answers) under a pty."""
    real.add("alpha")
    real.backend.script(Behaviour.stall())
    return _bound_in_a_terminal(tmp_path, real, _exec("a long task"))


def test_ctrl_z_suspends_a_headless_exec_with_its_supervisor(
    tmp_path: Path, real: RealWorld
) -> None:
    """Ctrl-Z reaches only the supervisor; it stops the exec's group too, and continues it."""
    with _exec_in_a_terminal(tmp_path, real) as (proc, pid):
        proc.write("\x1a")
        _until_state(proc.pid, lambda s: s == "T", "the supervisor stops")
        _until_state(pid, lambda s: s == "T", "the exec stops with it")
        os.kill(proc.pid, signal.SIGCONT)  # what the shell's fg/bg sends
        _until_state(proc.pid, lambda s: s != "T", "the supervisor continues")
        _until_state(pid, lambda s: s != "T", "the exec continues with it")
        proc.write("\x03")
        assert proc.wait(timeout=30) == 130
    assert not Path(f"/proc/{pid}").exists()


def test_a_killed_supervisor_takes_its_headless_exec_with_it(
    tmp_path: Path, real: RealWorld
) -> None:
    """SIGKILL of the supervisor: the exec (its own group, out of the job's reach) ends too."""
    with _exec_in_a_terminal(tmp_path, real) as (proc, pid):
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
        deadline = time.monotonic() + 30
        while Path(f"/proc/{pid}").exists() and _state(pid) != "Z":
            assert time.monotonic() < deadline, f"exec {pid} outlived its supervisor"
            time.sleep(0.05)


def _new_chat(tui: PtyProcess, events: Path) -> None:
    """``/new`` in the TUI, typed again until its new chat's header shows."""
    deadline = time.monotonic() + 60
    while True:
        headers = tui.text.count("OpenAI Codex (v")
        tui.write("/new")
        time.sleep(0.5)
        tui.write("\r")
        with contextlib.suppress(AssertionError):
            _wait_for(
                functools.partial(lambda seen: tui.text.count("OpenAI Codex (v") > seen, headers),
                5,
                "/new",
                tui,
                events,
            )
            return
        assert time.monotonic() < deadline, tui.text[-3000:]
        tui.write("\x15")  # clear whatever the composer holds


def test_without_proc_a_new_chat_in_the_tui_holds_the_rotation_back(
    tmp_path: Path, tls_real: RealWorld, monkeypatch: pytest.MonkeyPatch
) -> None:
    """As on macOS: after /new and a turn there, the old thread stays loaded: no rotation.

    The hooks name both conversations; the old one's writer lock, probed with
    flock, shows Codex still has it loaded, so which one is on screen cannot be
    told: one RotationBlocked, and Codex keeps running on alpha.
    """
    monkeypatch.setenv(ENV_NO_PROC, "1")
    world = tls_real
    world.add("alpha", five_hour_used=89, per_request_percent=2)
    world.add("beta", five_hour_used=10, per_request_percent=1)
    argv, events = _driver(
        tmp_path, world, ["--no-alt-screen", *offline_flags(), "first prompt"], strategy="drain"
    )
    with PtyProcess(argv, env=_terminal_env(world), cwd=world.work) as tui:
        _wait_for(
            lambda: any(e["name"] == "session_bound" for e in _events(events)),
            60,
            "the first session",
            tui,
            events,
        )
        tui.expect("Hello from the fake backend", 60)
        _new_chat(tui, events)
        tui.submit("second prompt", received=lambda: world.backend.received("second prompt"))
        _wait_for(
            lambda: any(e["name"] == "rotation_blocked" for e in _events(events)),
            60,
            "the refusal",
            tui,
            events,
        )
        tui.send_signal(signal.SIGTERM)
        code = tui.wait(timeout=30)
    log = _events(events)
    requests = world.backend.responses_requests()
    first = next(r.session_id for r in requests if "first prompt" in r.input_texts)
    second = next(r.session_id for r in requests if "second prompt" in r.input_texts)
    assert first != second
    bound = [e["session_id"] for e in log if e["name"] == "session_bound"]
    assert bound == [first, second]  # each named by its SessionStart hook
    [blocked] = [e for e in log if e["name"] == "rotation_blocked"]
    assert f"Codex also has session {first} loaded" in blocked["reason"]
    assert not any(e["name"] in ("rotating", "resumed") for e in log)
    assert {r.account_id for r in requests if r.session_id in (first, second)} == {"id-alpha"}
    assert code == 143
