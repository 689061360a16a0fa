"""Session binding and rollout following on what the real Codex CLI 0.169.0 writes."""

from __future__ import annotations

import re
import signal
import subprocess
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from codex_supervisor.sessions import (
    RateLimitsObserved,
    RolloutReader,
    SessionBinder,
    TurnPhase,
    TurnState,
    writer_lock,
)
from codex_supervisor.testing import Behaviour, FakeCodexBackend, PtyProcess, offline_flags

pytestmark = pytest.mark.real_codex


def _wait_for(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


def _read(reader: RolloutReader) -> TurnState:
    reader.read()
    return reader.state


@pytest.mark.anyio
async def test_binds_a_running_exec_and_follows_its_turn(
    codex_bin: Path, backend: FakeCodexBackend, world: Any
) -> None:
    """A running exec binds by pid; mid-turn reads IN_TURN with a live writer, then IDLE."""
    backend.add_account("acct-a", five_hour_used=12)
    backend.script(Behaviour.delay(1.5))
    home = backend.write_codex_home(world.codex_home(), "acct-a")
    launched = datetime.now(UTC)
    proc = subprocess.Popen(
        [str(codex_bin), "exec", "--skip-git-repo-check", *offline_flags(), "slow turn"],
        cwd=world.work,
        env=world.env(home, backend),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        binder = SessionBinder(home)
        binding = await binder.wait_for_new(
            cwd=world.work, launched_at=launched, pid=proc.pid, timeout=30
        )
        reader = RolloutReader(binding.path, account="acct-a")
        _wait_for(
            lambda: bool(reader.read()) or reader.state.phase is TurnPhase.IN_TURN, 10, "turn"
        )
        assert reader.state.phase is TurnPhase.IN_TURN
        lock = writer_lock(home, binding.session_id)
        assert lock.held
        assert lock.pid == proc.pid
        _, stderr = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0
    assert f"session id: {binding.session_id}" in stderr
    records = reader.read()
    assert reader.state.phase is TurnPhase.IDLE
    assert reader.state.turns_completed == 1
    [limits] = [r for r in records if isinstance(r, RateLimitsObserved)]
    assert limits.snapshot.five_hour is not None
    assert limits.snapshot.five_hour.used_percent == pytest.approx(13)
    assert not writer_lock(home, binding.session_id).held


def test_resume_is_found_by_id_and_read_on_from_the_offset(
    codex_bin: Path, backend: FakeCodexBackend, world: Any, run_codex: Any
) -> None:
    """After exec resume, find_by_id gives the same file and the reader sees only the new turn."""
    backend.add_account("acct-a")
    home = backend.write_codex_home(world.codex_home(), "acct-a")
    exec_args = ["exec", "--skip-git-repo-check", *offline_flags()]
    first = run_codex([*exec_args, "one"], codex_home=home, backend=backend)
    session_id = re.search(r"session id: (\S+)", first.stderr)
    assert session_id
    binder = SessionBinder(home)
    binding = binder.find_by_id(session_id.group(1))
    assert binding is not None
    assert binding.meta is not None
    assert binding.meta.cwd == str(world.work)
    assert binding.meta.originator == "codex_exec"
    reader = RolloutReader(binding.path)
    reader.read()
    offset = reader.offset

    run_codex([*exec_args, "resume", session_id.group(1), "two"], codex_home=home, backend=backend)

    assert binder.find_by_id(session_id.group(1)) == binding
    fresh = RolloutReader(binding.path, offset=offset)
    fresh.read()
    assert fresh.state.turns_completed == 1  # only the resumed turn, nothing re-read
    last = binder.resolve_last(cwd=world.work, interactive_only=False)
    assert last is not None
    assert last.session_id == session_id.group(1)
    assert binder.resolve_last(cwd=world.work) is None  # exec sessions are not "interactive"


def test_usage_limit_turn_is_recognised(
    backend: FakeCodexBackend, world: Any, run_codex: Any
) -> None:
    """A 429 turn reads as usage_limit_exceeded with the account at 100 %."""
    backend.add_account("acct-a", five_hour_used=100)
    home = backend.write_codex_home(world.codex_home(), "acct-a")
    result = run_codex(
        ["exec", "--skip-git-repo-check", *offline_flags(), "x"], codex_home=home, backend=backend
    )
    assert result.returncode == 1
    [path] = list((home / "sessions").rglob("rollout-*.jsonl"))
    reader = RolloutReader(path, account="acct-a")
    records = reader.read()
    assert reader.state.at_boundary
    assert reader.state.usage_limit_exceeded
    [limits] = [r for r in records if isinstance(r, RateLimitsObserved)]
    assert limits.snapshot.limit_reached


@pytest.mark.anyio
async def test_binds_an_interactive_tui_by_pid(
    codex_bin: Path, tls_backend: FakeCodexBackend, world: Any
) -> None:
    """The TUI under a pty binds to the session whose id the backend saw from it."""
    backend = tls_backend
    backend.add_account("acct-a")
    home = backend.write_codex_home(world.codex_home(), "acct-a")
    env = world.env(home, backend, TERM="xterm-256color")
    argv = [codex_bin, "--no-alt-screen", "--no-daemon", *offline_flags(), "hello tui"]
    launched = datetime.now(UTC)
    with PtyProcess(argv, env=env, cwd=world.work) as tui:
        binding = await SessionBinder(home).wait_for_new(
            cwd=world.work, launched_at=launched, pid=tui.pid, timeout=60
        )
        reader = RolloutReader(binding.path)
        _wait_for(lambda: _read(reader).turns_completed >= 1, 60, "the first turn to end")
        assert binding.meta is not None
        assert binding.meta.originator == "codex-tui"
        sent = [r.session_id for r in backend.responses_requests() if "hello tui" in r.input_texts]
        assert sent == [binding.session_id]
        assert writer_lock(home, binding.session_id).pid == tui.pid  # loaded between turns
        tui.send_signal(signal.SIGINT)
        assert tui.wait(timeout=10) == -signal.SIGINT
    # Killed by a signal: the lock file stays, unlocked.
    assert not writer_lock(home, binding.session_id).held
