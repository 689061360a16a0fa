"""Session binding and rollout following on what the real Codex CLI 0.169.0 writes."""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import subprocess
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from codex_supervisor.accounts import AccountPool
from codex_supervisor.codex_cli import parse_argv
from codex_supervisor.events import CollectingSink, RotationBlocked
from codex_supervisor.sessions import (
    Binding,
    RateLimitsObserved,
    RolloutReader,
    SessionBinder,
    TurnPhase,
    TurnState,
    writer_lock,
)
from codex_supervisor.supervisor import Supervisor, SupervisorConfig, _ChildRun
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


def _open_flags(pid: int, path: Path) -> list[int]:
    """The open flags of every descriptor ``pid`` has on ``path`` (/proc, read directly)."""
    flags = []
    for entry in Path(f"/proc/{pid}/fd").iterdir():
        with contextlib.suppress(OSError):
            if entry.readlink() == path:
                info = Path(f"/proc/{pid}/fdinfo/{entry.name}").read_text()
                [line] = [x for x in info.splitlines() if x.startswith("flags:")]
                flags.append(int(line.split()[1], 8))
    return flags


def _sent(backend: FakeCodexBackend, text: str) -> list[str | None]:
    """The session ids of the model requests that carried ``text``."""
    return [r.session_id for r in backend.responses_requests() if text in r.input_texts]


def _wait_soft(predicate: Callable[[], bool], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.02)
    return True


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
        # The real writer opens its rollout O_RDWR|O_APPEND (measured on
        # 0.169.0); it may read it through a second, short-lived read-only
        # descriptor too. The "open for writing" rule accepts the writer.
        flags = _open_flags(proc.pid, binding.path)
        writers = [f for f in flags if f & os.O_ACCMODE == os.O_RDWR and f & os.O_APPEND]
        assert len(writers) == 1, [oct(f) for f in flags]
        attempt = binder.open_by(proc.pid)
        assert attempt.binding == binding
        assert not attempt.ambiguous
        assert binder.still_writes(binding, proc.pid) is True
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


@pytest.mark.anyio
async def test_a_fork_binds_its_own_session_never_its_source(
    codex_bin: Path, tls_backend: FakeCodexBackend, world: Any, run_codex: Any
) -> None:
    """``codex fork`` reads its source rollout (read-only) and writes a new one: only that binds."""
    backend = tls_backend
    backend.add_account("acct-a")
    home = backend.write_codex_home(world.codex_home(), "acct-a")
    first = run_codex(
        ["exec", "--skip-git-repo-check", *offline_flags(), "the source"],
        codex_home=home,
        backend=backend,
    )
    found = re.search(r"session id: (\S+)", first.stderr)
    assert found
    source = found.group(1)
    binder = SessionBinder(home)
    source_binding = binder.find_by_id(source)
    assert source_binding is not None
    env = world.env(home, backend, TERM="xterm-256color")
    argv = [str(codex_bin), "fork", "--no-alt-screen", "--no-daemon", *offline_flags()]
    argv += [source, "forked"]
    seen: set[str] = set()
    with PtyProcess(argv, env=env, cwd=world.work) as tui:

        def bound() -> bool:
            attempt = binder.open_by(tui.pid)
            assert not attempt.ambiguous, attempt.reason
            seen.update(attempt.candidates)
            return bool(_sent(backend, "forked")) and attempt.binding is not None

        # Looked at from the very start, while the fork reads its source.
        _wait_for(bound, 60, "the fork to write its own session")
        binding = binder.find_open_by(tui.pid)
        assert binding is not None
        assert binding.session_id != source
        assert seen == {binding.session_id}
        assert _sent(backend, "forked") == [binding.session_id]
        assert binder.still_writes(binding, tui.pid) is True
        assert binder.still_writes(source_binding, tui.pid) is False
        assert writer_lock(home, source).held is False
        tui.send_signal(signal.SIGINT)
        assert tui.wait(timeout=10) == -signal.SIGINT


def _launcher(codex_bin: Path) -> list[str]:
    """npm's ``codex`` for ``codex_bin``: node running ``bin/codex.js`` of its package."""
    node = shutil.which("node")
    if node is None:
        pytest.fail("node is not on PATH (scripts/fetch-codex needs it too)", pytrace=False)
    modules = next((p for p in codex_bin.parents if p.name == "node_modules"), None)
    script = None if modules is None else modules / "@openai" / "codex" / "bin" / "codex.js"
    if script is None or not script.is_file():
        pytest.fail(f"no npm launcher beside {codex_bin}: run scripts/fetch-codex", pytrace=False)
    return [node, str(script)]


def _children(pid: int) -> list[int]:
    return [
        int(c)
        for task in Path(f"/proc/{pid}/task").iterdir()
        for c in (task / "children").read_text().split()
    ]


def _start_and_new(
    tui: PtyProcess, backend: FakeCodexBackend, binder: SessionBinder
) -> tuple[Binding, str]:
    """The first session of a TUI started with "hello one", then ``/new`` and "hello two"."""
    _wait_for(
        lambda: binder.find_open_by(tui.pid) is not None and bool(_sent(backend, "hello one")),
        60,
        "the first session and its prompt",
    )
    first = binder.find_open_by(tui.pid)
    assert first is not None
    assert _sent(backend, "hello one") == [first.session_id]
    tui.expect("Hello from the fake backend", 60)
    headers = tui.text.count("OpenAI Codex (v")
    tui.write("/new")
    tui.expect("start a new chat", 30)
    tui.write("\r")
    _wait_for(lambda: tui.text.count("OpenAI Codex (v") > headers, 30, "the new chat")
    tui.submit("hello two", received=lambda: backend.received("hello two"))
    [second] = _sent(backend, "hello two")
    assert second is not None
    assert second != first.session_id
    _wait_for(lambda: binder.open_by(tui.pid).ambiguous, 60, "the second rollout")
    return first, second


def _run_of(tui: PtyProcess, binder: SessionBinder, binding: Binding, work: Path) -> _ChildRun:
    return _ChildRun(
        inv=parse_argv(["hello one"]),
        child=tui.proc,  # type: ignore[arg-type]  # only its pid is used here
        account="acct-a",
        home=binder.codex_home,
        workdir=work,
        launched_at=datetime.now(UTC),
        binder=binder,
        binding=binding,
        known_session=None,
        prompt_in_argv=True,
        bind_deadline=float("inf"),
        last_passive=0.0,
    )


@pytest.mark.anyio
@pytest.mark.parametrize("launcher", ["native", "npm"])
async def test_new_in_the_tui_is_caught_before_a_rotation(
    codex_bin: Path, tls_backend: FakeCodexBackend, world: Any, tmp_path: Path, launcher: str
) -> None:
    """After ``/new`` the 0.169.0 TUI writes two rollouts: ambiguous, and the rotation refused.

    Also under npm's node launcher (``codex`` on an npm install, the default
    ``SupervisorConfig.codex``): node runs the native binary as its child and
    holds no rollout itself, so both checks must look at that child.
    """
    backend = tls_backend
    backend.add_account("acct-a")
    home = backend.write_codex_home(world.codex_home(), "acct-a")
    env = world.env(home, backend, TERM="xterm-256color")
    program = [str(codex_bin)] if launcher == "native" else _launcher(codex_bin)
    argv = [*program, "--no-alt-screen", "--no-daemon", *offline_flags(), "hello one"]
    binder = SessionBinder(home)
    sink = CollectingSink()
    sup = Supervisor(
        AccountPool(root=tmp_path / "pool", base_codex_home=home),
        config=SupervisorConfig(codex=str(codex_bin)),
        environ=env,
        sink=sink,
    )
    with PtyProcess(argv, env=env, cwd=world.work) as tui:
        first, second = _start_and_new(tui, backend, binder)
        if launcher == "npm":
            # The case under test: node waits, its child writes (no execve in this node).
            [native] = _children(tui.pid)
            assert writer_lock(home, first.session_id).pid == native
            assert not _open_flags(tui.pid, first.path)
        attempt = binder.open_by(tui.pid)
        assert attempt.binding is None
        assert attempt.candidates == tuple(sorted((first.session_id, second)))
        # The old thread stays loaded: "still writes it" alone would resume it.
        assert binder.still_writes(first, tui.pid) is True
        run = _run_of(tui, binder, first, world.work)
        assert not sup._still_bound(run)
        assert not sup._still_bound(run)
        assert run.binding == first  # refused, not swapped for a guess
        [blocked] = sink.of(RotationBlocked)
        assert isinstance(blocked, RotationBlocked)
        assert blocked.session_id == first.session_id
        assert f"also writes session {second}" in blocked.reason
        tui.send_signal(signal.SIGINT)
        tui.wait(timeout=10)


@pytest.mark.anyio
async def test_switching_back_in_the_tui_writes_nothing(
    codex_bin: Path, tls_backend: FakeCodexBackend, world: Any, tmp_path: Path
) -> None:
    """Why no tie-break picks the "current" one of two written sessions.

    After ``/new`` and a turn in the new chat, ``/resume`` back to the first
    chat (still loaded) appends nothing to either rollout: the evidence a
    tie-break would read ("only the new one started a turn since the old one
    last grew") still points at the new chat while the first is on screen,
    and the next prompt goes to the first.
    """
    backend = tls_backend
    backend.add_account("acct-a")
    home = backend.write_codex_home(world.codex_home(), "acct-a")
    env = world.env(home, backend, TERM="xterm-256color")
    argv = [str(codex_bin), "--no-alt-screen", "--no-daemon", *offline_flags(), "hello one"]
    binder = SessionBinder(home)
    sup = Supervisor(
        AccountPool(root=tmp_path / "pool", base_codex_home=home),
        config=SupervisorConfig(codex=str(codex_bin)),
        environ=env,
    )
    with PtyProcess(argv, env=env, cwd=world.work) as tui:
        first, second = _start_and_new(tui, backend, binder)
        new = binder.find_by_id(second)
        assert new is not None
        tui.expect("Hello from the fake backend(.|\n)*Hello from the fake backend", 60)
        _wait_for(lambda: _read(RolloutReader(new.path)).phase is TurnPhase.IDLE, 30, "turn end")
        sizes = (first.path.stat().st_size, new.path.stat().st_size)
        assert new.path.stat().st_mtime_ns >= first.path.stat().st_mtime_ns
        headers = tui.text.count("OpenAI Codex (v")
        mark = len(tui.text)
        tui.write("/resume")
        tui.expect("resume a saved chat", 30)
        tui.write("\r")
        # (Drawn by cursor moves: the spaces may be missing once escapes are removed.)
        _wait_for(lambda: bool(re.search(r"hello\s*one", tui.text[mark:])), 30, "the picker")
        tui.write("\x1b[B")  # sorted by update: the new chat first, the first chat below
        _wait_soft(lambda: False, 0.5)
        tui.write("\r")
        _wait_for(lambda: tui.text.count("OpenAI Codex (v") > headers, 30, "the first chat again")
        assert (first.path.stat().st_size, new.path.stat().st_size) == sizes
        assert not sup._still_bound(_run_of(tui, binder, first, world.work))
        tui.submit("hello three", received=lambda: backend.received("hello three"))
        assert _sent(backend, "hello three") == [first.session_id]
        tui.send_signal(signal.SIGINT)
        tui.wait(timeout=10)
