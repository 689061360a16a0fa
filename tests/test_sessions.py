"""Rollout reading, writer-lock liveness and session binding."""

from __future__ import annotations

import contextlib
import errno
import fcntl
import io
import json
import logging
import math
import os
import subprocess
import sys
import threading
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from codex_supervisor import errors
from codex_supervisor import sessions as sessions_module
from codex_supervisor.accounts import AccountPool
from codex_supervisor.codex_cli import parse_argv
from codex_supervisor.events import CollectingSink, RotationBlocked, SessionBound
from codex_supervisor.hooks import HookInbox
from codex_supervisor.sessions import (
    ENV_NO_PROC,
    RateLimitsObserved,
    RolloutReader,
    SessionBinder,
    SessionMeta,
    TurnAborted,
    TurnCompleted,
    TurnPhase,
    TurnStarted,
    is_session_id,
    proc_available,
    read_session_meta,
    writer_lock,
)
from codex_supervisor.supervisor import Supervisor, SupervisorConfig, _ChildRun, _Rotate
from codex_supervisor.testing import FakeCodexBackend, install_simulator

NOW = datetime.now(UTC).replace(microsecond=0)
_HOLD_LOCK = (
    "import fcntl, os, sys, time; fd = os.open(sys.argv[1], os.O_RDWR); "
    "fcntl.flock(fd, fcntl.LOCK_EX); print('locked', flush=True); time.sleep(60)"
)


_FD_HOLDER = r"""
import fcntl, json, os, sys
modes = {
    "r": os.O_RDONLY,
    "ra": os.O_RDONLY | os.O_APPEND,
    "a": os.O_WRONLY | os.O_APPEND,
    "rwa": os.O_RDWR | os.O_APPEND,
}
held = {}
for line in sys.stdin:
    verb, *args = json.loads(line)
    if verb == "open":
        held.setdefault(args[1], []).append(os.open(args[1], modes[args[0]]))
    elif verb == "lock":
        fcntl.flock(held[args[0]][0], fcntl.LOCK_EX)
    elif verb == "close":
        for fd in held.pop(args[0]):
            os.close(fd)
    print("ok", flush=True)
"""


# A launcher like npm's `codex` (node running the native binary as its child):
# it holds nothing itself; the process it starts opens and locks the files.
_LAUNCHER = "import subprocess, sys; sys.exit(subprocess.call(sys.argv[1:]))"


class FdHolder:
    """A real helper process that opens, locks and closes files when told: a stand-in child.

    ``launchers`` puts that many launcher processes above it: ``pid`` is then
    the outermost launcher's, which holds no file itself.
    """

    def __init__(self, *, launchers: int = 0) -> None:
        argv = [sys.executable, "-c", _FD_HOLDER]
        for _ in range(launchers):
            argv = [sys.executable, "-c", _LAUNCHER, *argv]
        self.proc = subprocess.Popen(
            argv,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )

    @property
    def pid(self) -> int:
        return self.proc.pid

    def _do(self, *command: str) -> None:
        assert self.proc.stdin is not None
        assert self.proc.stdout is not None
        self.proc.stdin.write(json.dumps(command) + "\n")
        self.proc.stdin.flush()
        assert self.proc.stdout.readline().strip() == "ok", f"helper failed on {command}"

    def open(self, path: Path, mode: str) -> None:
        """Open ``path``: "r" read-only, "ra" read-only+append, "a" append, "rwa" read-write."""
        self._do("open", mode, str(path))

    def lock(self, path: Path) -> None:
        """Take an exclusive flock on the first descriptor open on ``path``."""
        self._do("lock", str(path))

    def close(self, path: Path) -> None:
        """Close every descriptor open on ``path``."""
        self._do("close", str(path))

    def __enter__(self) -> FdHolder:
        return self

    def __exit__(self, *exc: object) -> None:
        assert self.proc.stdin is not None
        assert self.proc.stdout is not None
        self.proc.stdin.close()
        self.proc.wait(timeout=60)
        self.proc.stdout.close()


def _uuid7(at: datetime) -> str:
    millis = int(at.timestamp() * 1000)
    rand = uuid.uuid4().int & ((1 << 80) - 1)
    value = (millis << 80) | rand
    value = (value & ~(0xF << 76)) | (0x7 << 76)  # version 7
    value = (value & ~(0x3 << 62)) | (0x2 << 62)  # RFC 4122 variant
    return str(uuid.UUID(int=value))


def _line(kind: str, payload: dict[str, Any], at: datetime = NOW) -> str:
    stamp = at.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
    return json.dumps({"timestamp": stamp, "ordinal": 0, "type": kind, "payload": payload}) + "\n"


def _event(kind: str, **payload: Any) -> str:
    return _line("event_msg", {"type": kind, **payload})


def _meta_line(session_id: str, cwd: Path, at: datetime = NOW, source: str = "cli") -> str:
    return _line(
        "session_meta",
        {
            "id": session_id,
            "timestamp": at.isoformat(),
            "cwd": str(cwd),
            "originator": "codex-tui",
            "cli_version": "0.169.0",
            "source": source,
        },
        at,
    )


def _write_rollout(
    root: Path,
    *,
    cwd: Path,
    at: datetime = NOW,
    session_id: str | None = None,
    extra: str = "",
    source: str = "cli",
) -> tuple[str, Path]:
    session_id = session_id or _uuid7(at)
    local = at.astimezone()
    folder = root / "sessions" / local.strftime("%Y/%m/%d")
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"rollout-{local.strftime('%Y-%m-%dT%H-%M-%S')}-{session_id}.jsonl"
    path.write_text(_meta_line(session_id, cwd, at, source) + extra)
    return session_id, path


RATE_LIMITS = {
    "limit_id": "codex",
    "primary": {"used_percent": 42.0, "window_minutes": 300, "resets_at": 1795339672},
    "secondary": {"used_percent": 7.0, "window_minutes": 10080, "resets_at": 1795926472},
}


# -- the reader ------------------------------------------------------------------------------


def test_reader_yields_typed_records_and_turn_state(tmp_path: Path) -> None:
    """Meta, turn markers and rate limits come out typed; the turn state follows them."""
    session_id, path = _write_rollout(tmp_path, cwd=tmp_path)
    reader = RolloutReader(path, account="alpha")
    [meta] = reader.read()
    assert isinstance(meta, SessionMeta)
    assert meta.session_id == session_id
    assert reader.state.phase is TurnPhase.IDLE

    with path.open("a") as fh:
        fh.write(_line("response_item", {"type": "message", "role": "user", "content": []}))
        fh.write(_event("task_started", turn_id="t1"))
    started = reader.read()
    assert started == [TurnStarted(turn_id="t1", at=started[0].at)]  # type: ignore[union-attr]
    assert reader.state.phase is TurnPhase.IN_TURN
    assert not reader.state.at_boundary

    with path.open("a") as fh:
        fh.write(_event("token_count", info=None, rate_limits=RATE_LIMITS))
        fh.write(
            _event(
                "task_complete",
                turn_id="t1",
                last_agent_message=None,
                error={"message": "limit", "codex_error_info": "usage_limit_exceeded"},
            )
        )
    limits, done = reader.read()
    assert isinstance(limits, RateLimitsObserved)
    assert limits.snapshot.account == "alpha"
    assert limits.snapshot.five_hour is not None
    assert limits.snapshot.five_hour.used_percent == 42.0
    assert isinstance(done, TurnCompleted)
    assert reader.state.at_boundary
    assert reader.state.usage_limit_exceeded
    assert reader.state.turns_completed == 1

    with path.open("a") as fh:
        fh.write(_event("task_started", turn_id="t2"))
        fh.write(_event("turn_aborted", turn_id="t2", reason="interrupted"))
    _, aborted = reader.read()
    assert isinstance(aborted, TurnAborted)
    assert aborted.reason == "interrupted"
    assert reader.state.phase is TurnPhase.IDLE
    assert not reader.state.usage_limit_exceeded
    assert reader.offset == path.stat().st_size


def test_reader_waits_for_the_end_of_a_partial_line(tmp_path: Path) -> None:
    """A line without its newline is left for the next read; offset stays at its start."""
    _, path = _write_rollout(tmp_path, cwd=tmp_path)
    reader = RolloutReader(path)
    reader.read()
    line = _event("task_started", turn_id="t1")
    with path.open("a") as fh:
        fh.write(line[:25])
    before = reader.offset
    assert reader.read() == []
    assert reader.offset == before
    with path.open("a") as fh:
        fh.write(line[25:])
    [record] = reader.read()
    assert isinstance(record, TurnStarted)
    # A new reader from the offset starts exactly at the next line.
    assert RolloutReader(path, offset=before).read()[0] == record


def test_reader_skips_garbage_and_keeps_what_follows(tmp_path: Path) -> None:
    """Invalid JSON, invalid UTF-8, non-objects and unknown types are skipped, never fatal."""
    _, path = _write_rollout(tmp_path, cwd=tmp_path)
    with path.open("ab") as fh:
        fh.write(b"{not json\n\xff\xfe\xfd\n[1, 2]\n\n")
        fh.write(b'{"type": "brand_new_kind", "payload": {"x": 1}}\n')
        fh.write(b'{"type": "event_msg", "payload": {"type": "task_started", "extra": {}}}\n')
        fh.write(b'{"type": "event_msg", "payload": "not an object"}\n')
        fh.write(_event("token_count", info=None, rate_limits={"primary": "garbage"}).encode())
        fh.write(_event("task_complete", turn_id="t9").encode())
    reader = RolloutReader(path)
    records = reader.read()
    assert [type(r) for r in records] == [SessionMeta, TurnStarted, TurnCompleted]
    assert reader.lines_skipped == 3


def test_reader_skips_over_long_lines_without_buffering_them(tmp_path: Path) -> None:
    """A line over the cap is skipped even when it arrives across many reads."""
    _, path = _write_rollout(tmp_path, cwd=tmp_path)
    reader = RolloutReader(path, max_line_bytes=1000)
    reader.read()
    with path.open("a") as fh:
        fh.write('{"type": "event_msg", "payload": {"type": "task_started", "pad": "')
        fh.write("x" * 3000)
    assert reader.read() == []
    with path.open("a") as fh:
        fh.write("y" * 3000 + '"}}\n')
        fh.write(_event("task_started", turn_id="after"))
    [record] = reader.read()
    assert isinstance(record, TurnStarted)
    assert record.turn_id == "after"
    assert reader.lines_skipped == 1


def test_reader_of_a_missing_file_reads_nothing(tmp_path: Path) -> None:
    """A rollout that does not exist (yet) reads as empty."""
    assert RolloutReader(tmp_path / "nope.jsonl").read() == []


def test_reader_follows_a_concurrent_writer(tmp_path: Path) -> None:
    """Records written in random-sized pieces while we read arrive once, in order."""
    _, path = _write_rollout(tmp_path, cwd=tmp_path)
    payload = "".join(
        _event("task_started", turn_id=f"t{i}") + _event("task_complete", turn_id=f"t{i}")
        for i in range(300)
    ).encode()
    done = threading.Event()

    def writer() -> None:
        with path.open("ab", buffering=0) as fh:
            pos = 0
            size = 1
            while pos < len(payload):
                fh.write(payload[pos : pos + size])
                pos += size
                size = size * 7 % 113 + 1
        done.set()

    reader = RolloutReader(path)
    records: list[Any] = []
    thread = threading.Thread(target=writer)
    thread.start()
    while not done.is_set():
        records += reader.read()
    thread.join()
    records += reader.read()
    turns = [r.turn_id for r in records if isinstance(r, TurnStarted)]
    assert turns == [f"t{i}" for i in range(300)]
    assert reader.state.turns_completed == 300


@settings(max_examples=200, deadline=None)
@given(garbage=st.binary(max_size=300), split=st.integers(min_value=0, max_value=400))
def test_reader_never_raises_and_never_loses_a_line_after_garbage(
    tmp_path_factory: pytest.TempPathFactory, garbage: bytes, split: int
) -> None:
    """Arbitrary bytes never raise; a complete line after garbage and a newline is read."""
    folder = tmp_path_factory.mktemp("garbage")
    path = folder / "rollout.jsonl"
    good = _event("task_started", turn_id="survivor").encode()
    data = garbage + b"\n" + good
    reader = RolloutReader(path, max_line_bytes=200)
    path.write_bytes(data[:split])
    records = reader.read()
    with path.open("ab") as fh:
        fh.write(data[split:])
    records += reader.read()
    assert any(isinstance(r, TurnStarted) and r.turn_id == "survivor" for r in records)


# -- writer lock ---------------------------------------------------------------------------------


def test_writer_lock_probe_never_creates_the_file(tmp_path: Path) -> None:
    """An absent lock file means no writer, and probing does not create it."""
    session_id = _uuid7(NOW)
    assert writer_lock(tmp_path, session_id).held is False
    assert not (tmp_path / "thread-writer-locks").exists()
    with pytest.raises(errors.SessionError):
        writer_lock(tmp_path, "../../etc/passwd")


def test_writer_lock_held_by_another_process_names_its_pid(tmp_path: Path) -> None:
    """A held flock is seen with the holder's pid; after the holder dies it is free."""
    session_id = _uuid7(NOW)
    lock = tmp_path / "thread-writer-locks" / f"{session_id}.lock"
    lock.parent.mkdir()
    lock.touch()
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            _HOLD_LOCK,
            str(lock),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None
        assert holder.stdout.readline().strip() == "locked"
        state = writer_lock(tmp_path, session_id)
        assert state.held
        assert state.pid == holder.pid
    finally:
        holder.kill()
        holder.wait()
        assert holder.stdout is not None
        holder.stdout.close()
    assert writer_lock(tmp_path, session_id).held is False
    # Our own probe took no lock: we can take it exclusively right away.
    fd = os.open(lock, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    finally:
        os.close(fd)


# -- binding ---------------------------------------------------------------------------


def test_find_by_id_uses_the_uuid7_date_and_then_the_archive(tmp_path: Path) -> None:
    """A v7 id is found in its own date folder; archived and unknown ids are handled."""
    cwd = tmp_path / "work"
    old = NOW - timedelta(days=40)
    session_id, path = _write_rollout(tmp_path, cwd=cwd, at=old)
    binder = SessionBinder(tmp_path)
    found = binder.find_by_id(session_id)
    assert found is not None
    assert found.path == path
    assert found.meta is not None
    assert found.meta.cwd == str(cwd)

    archived = _uuid7(NOW - timedelta(days=3))
    (tmp_path / "archived_sessions").mkdir()
    apath = tmp_path / "archived_sessions" / f"rollout-2026-01-01T00-00-00-{archived}.jsonl"
    apath.write_text(_meta_line(archived, cwd))
    assert binder.find_by_id(archived) == binder.find_by_id(archived)
    assert (binder.find_by_id(archived) or pytest.fail("not found")).path == apath
    assert binder.find_by_id(str(uuid.uuid4())) is None
    with pytest.raises(errors.SessionError):
        binder.find_by_id("not-an-id")


def test_find_by_id_of_a_non_v7_id_walks_date_folders(tmp_path: Path) -> None:
    """A UUIDv4 id (older Codex) is still found by walking the date folders newest first."""
    v4 = str(uuid.uuid4())
    _, path = _write_rollout(tmp_path, cwd=tmp_path, at=NOW - timedelta(days=400), session_id=v4)
    _write_rollout(tmp_path, cwd=tmp_path, at=NOW)
    found = SessionBinder(tmp_path).find_by_id(v4)
    assert found is not None
    assert found.path == path


def test_bind_new_takes_only_sessions_after_launch_in_our_folder(tmp_path: Path) -> None:
    """Older sessions and sessions of other folders never bind."""
    cwd, other = tmp_path / "work", tmp_path / "elsewhere"
    cwd.mkdir()
    other.mkdir()
    launched = NOW
    _write_rollout(tmp_path, cwd=cwd, at=launched - timedelta(minutes=5))
    _write_rollout(tmp_path, cwd=other, at=launched + timedelta(seconds=1))
    binder = SessionBinder(tmp_path)
    attempt = binder.bind_new(cwd=cwd, launched_at=launched)
    assert attempt.binding is None
    assert "no new session" in attempt.reason
    ours, path = _write_rollout(tmp_path, cwd=cwd, at=launched + timedelta(seconds=1))
    attempt = binder.bind_new(cwd=cwd, launched_at=launched)
    assert attempt.binding is not None
    assert (attempt.binding.session_id, attempt.binding.path) == (ours, path)
    assert binder.bind_new(cwd=cwd, launched_at=launched, exclude=[ours]).binding is None


def test_bind_new_waits_for_an_empty_file_to_get_its_meta(tmp_path: Path) -> None:
    """A rollout created but not yet written is looked at again on the next attempt."""
    cwd = tmp_path / "work"
    session_id, path = _write_rollout(tmp_path, cwd=cwd)
    content = path.read_text()
    path.write_text("")
    binder = SessionBinder(tmp_path)
    assert binder.bind_new(cwd=cwd, launched_at=NOW).binding is None
    path.write_text(content)
    bound = binder.bind_new(cwd=cwd, launched_at=NOW).binding
    assert bound is not None
    assert bound.session_id == session_id


def test_two_sessions_in_one_folder_bind_only_by_writer_lock(tmp_path: Path) -> None:
    """Two new sessions in one folder: unbound without a pid, bound by the lock holder's pid."""
    cwd = tmp_path / "work"
    first, _ = _write_rollout(tmp_path, cwd=cwd)
    second, _ = _write_rollout(tmp_path, cwd=cwd)
    binder = SessionBinder(tmp_path)
    attempt = binder.bind_new(cwd=cwd, launched_at=NOW)
    assert attempt.binding is None
    assert set(attempt.candidates) == {first, second}
    attempt = binder.bind_new(cwd=cwd, launched_at=NOW, pid=os.getpid())
    assert attempt.binding is None
    assert "none shown to be written by pid" in attempt.reason

    locks = tmp_path / "thread-writer-locks"
    locks.mkdir()
    (locks / f"{second}.lock").touch()
    fd = os.open(locks / f"{second}.lock", os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        attempt = binder.bind_new(cwd=cwd, launched_at=NOW, pid=os.getpid())
        assert attempt.binding is not None
        assert attempt.binding.session_id == second
        # Another child (a sibling, not an ancestor of the holder) gets nothing.
        with subprocess.Popen(["sleep", "30"]) as sibling:
            try:
                assert binder.bind_new(cwd=cwd, launched_at=NOW, pid=sibling.pid).binding is None
            finally:
                sibling.kill()
    finally:
        os.close(fd)


def test_a_lone_session_of_another_process_is_not_taken_for_ours(tmp_path: Path) -> None:
    """With a child pid, a single new session whose lock another process holds stays unbound."""
    cwd = tmp_path / "work"
    theirs, _ = _write_rollout(tmp_path, cwd=cwd)
    locks = tmp_path / "thread-writer-locks"
    locks.mkdir()
    (locks / f"{theirs}.lock").touch()
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            _HOLD_LOCK,
            str(locks / f"{theirs}.lock"),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None
        assert holder.stdout.readline().strip() == "locked"
        binder = SessionBinder(tmp_path)
        with subprocess.Popen(["sleep", "30"]) as our_child:
            try:
                attempt = binder.bind_new(cwd=cwd, launched_at=NOW, pid=our_child.pid)
            finally:
                our_child.kill()
        assert attempt.binding is None
        assert attempt.candidates == (theirs,)
        # The holder itself (as "our child") does bind it.
        bound = binder.bind_new(cwd=cwd, launched_at=NOW, pid=holder.pid).binding
        assert bound is not None
        assert bound.session_id == theirs
    finally:
        holder.kill()
        holder.wait()
        assert holder.stdout is not None
        holder.stdout.close()


def test_a_rollout_open_for_writing_is_evidence_too(tmp_path: Path) -> None:
    """Without a writer lock, the child having the rollout open *for writing* shows it is ours."""
    cwd = tmp_path / "work"
    ours, path = _write_rollout(tmp_path, cwd=cwd)
    binder = SessionBinder(tmp_path)
    with FdHolder() as child:
        assert binder.bind_new(cwd=cwd, launched_at=NOW, pid=child.pid).binding is None
        child.open(path, "r")  # a reader (fork's source, the picker): no evidence
        attempt = binder.bind_new(cwd=cwd, launched_at=NOW, pid=child.pid)
        assert attempt.binding is None
        assert "none shown to be written by pid" in attempt.reason
        child.open(path, "a")
        bound = binder.bind_new(cwd=cwd, launched_at=NOW, pid=child.pid).binding
    assert bound is not None
    assert bound.session_id == ours


# -- what a running child writes ---------------------------------------------------------


def test_a_rollout_open_read_only_never_binds(tmp_path: Path) -> None:
    """Read-only descriptors (fork's source, the resume picker) are not evidence; a writer is."""
    cwd = tmp_path / "work"
    source, source_path = _write_rollout(tmp_path, cwd=cwd)
    forked, forked_path = _write_rollout(tmp_path, cwd=cwd)
    binder = SessionBinder(tmp_path)
    with FdHolder() as child:
        assert binder.find_open_by(child.pid) is None
        child.open(source_path, "r")
        child.open(source_path, "ra")  # O_RDONLY|O_APPEND still cannot write
        attempt = binder.open_by(child.pid)
        assert attempt.binding is None
        assert not attempt.ambiguous
        assert "1 open read-only" in attempt.reason
        assert binder.find_open_by(child.pid) is None
        # The fork's own rollout, opened after (a higher descriptor) as Codex does.
        child.open(forked_path, "rwa")
        child.open(forked_path, "r")  # Codex reads its own rollout too
        bound = binder.find_open_by(child.pid)
        assert bound is not None
        assert bound.session_id == forked
        assert bound.path == forked_path
        assert bound.meta is not None
    assert source != forked


def test_two_written_rollouts_are_ambiguous_not_the_first(tmp_path: Path) -> None:
    """A child writing two rollouts binds to neither; the attempt says it is ambiguous."""
    cwd = tmp_path / "work"
    first, first_path = _write_rollout(tmp_path, cwd=cwd)
    second, second_path = _write_rollout(tmp_path, cwd=cwd)
    binder = SessionBinder(tmp_path)
    with FdHolder() as child:
        child.open(first_path, "a")
        assert binder.find_open_by(child.pid) == binder.find_by_id(first)
        child.open(second_path, "a")
        attempt = binder.open_by(child.pid)
        assert attempt.binding is None
        assert attempt.ambiguous
        assert attempt.candidates == tuple(sorted((first, second)))
        assert "ambiguous" in attempt.reason
        assert binder.find_open_by(child.pid) is None
        child.close(first_path)
        assert binder.find_open_by(child.pid) == binder.find_by_id(second)


def test_a_held_writer_lock_is_evidence_for_open_by(tmp_path: Path) -> None:
    """The writer lock a child holds binds its session; a lock file merely open does not."""
    cwd = tmp_path / "work"
    ours, path = _write_rollout(tmp_path, cwd=cwd)
    lock = tmp_path / "thread-writer-locks" / f"{ours}.lock"
    lock.parent.mkdir()
    lock.touch()
    binder = SessionBinder(tmp_path)
    with FdHolder() as child:
        child.open(lock, "rwa")  # open, not locked: no evidence
        child.open(path, "r")
        assert binder.find_open_by(child.pid) is None
        child.lock(lock)
        bound = binder.find_open_by(child.pid)
        assert bound is not None
        assert bound.session_id == ours
        child.close(path)  # the lock alone: the rollout is found by its id's date
        bound = binder.find_open_by(child.pid)
        assert bound is not None
        assert bound.path == path
        assert binder.still_writes(bound, child.pid) is True
        with FdHolder() as other:
            other.open(path, "a")
            # The lock names the writer: another process's descriptor does not outvote it.
            assert binder.still_writes(bound, other.pid) is False


def test_still_writes_follows_the_descriptor(tmp_path: Path) -> None:
    """still_writes: True while open for writing, False once closed or only read."""
    cwd = tmp_path / "work"
    ours, path = _write_rollout(tmp_path, cwd=cwd)
    binder = SessionBinder(tmp_path)
    binding = binder.find_by_id(ours)
    assert binding is not None
    with FdHolder() as child:
        assert binder.still_writes(binding, child.pid) is False
        child.open(path, "a")
        assert binder.still_writes(binding, child.pid) is True
        child.close(path)
        child.open(path, "r")
        assert binder.still_writes(binding, child.pid) is False
        pid = child.pid
    # A process whose open files cannot be read: unknown, not "no".
    assert binder.still_writes(binding, pid) is None


@pytest.mark.parametrize("children_files", [True, False], ids=["children", "stat-scan"])
def test_a_launcher_s_child_is_seen_by_open_by_and_still_writes_alike(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, children_files: bool
) -> None:
    """Under a launcher (npm's node `codex`), both checks read the process it started.

    The launcher itself holds nothing. ``open_by`` once read only its
    descriptors while ``still_writes`` took a lock held by any descendant:
    after a ``/new`` the second session went unseen and the old one looked
    still bound. Also without ``/proc/PID/task/*/children`` (a kernel built
    without it), by every process's parent.
    """
    monkeypatch.setattr(sessions_module, "_has_children_files", lambda: children_files)
    cwd = tmp_path / "work"
    first, first_path = _write_rollout(tmp_path, cwd=cwd)
    second, second_path = _write_rollout(tmp_path, cwd=cwd)
    lock = tmp_path / "thread-writer-locks" / f"{first}.lock"
    lock.parent.mkdir()
    lock.touch()
    binder = SessionBinder(tmp_path)
    first_binding = binder.find_by_id(first)
    assert first_binding is not None
    with FdHolder(launchers=2) as child:  # two levels: `npx codex` and the like
        assert binder.open_by(child.pid).binding is None
        child.open(first_path, "rwa")
        assert binder.find_open_by(child.pid) == first_binding
        assert binder.still_writes(first_binding, child.pid) is True  # by the descriptor
        child.open(lock, "rwa")
        child.lock(lock)
        assert writer_lock(tmp_path, first).pid not in (None, child.pid)
        assert binder.still_writes(first_binding, child.pid) is True  # by the lock
        # A /new: the old thread stays loaded, the new one is written beside it.
        child.open(second_path, "rwa")
        attempt = binder.open_by(child.pid)
        assert attempt.ambiguous
        assert attempt.binding is None
        assert attempt.candidates == tuple(sorted((first, second)))
        bound = binder.bind_new(cwd=cwd, launched_at=NOW, pid=child.pid)
        assert bound.binding is None
        assert bound.ambiguous
        child.close(first_path)
        child.close(lock)  # the lock goes with its descriptor
        assert binder.still_writes(first_binding, child.pid) is False
        assert binder.find_open_by(child.pid) == binder.find_by_id(second)
    with FdHolder() as stranger:
        assert binder.still_writes(first_binding, stranger.pid) is False


def test_the_process_tree_walk_is_bounded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Deeper than the bound, a writer is not looked for (neither check sees it)."""
    monkeypatch.setattr(sessions_module, "_TREE_DEPTH", 1)
    cwd = tmp_path / "work"
    ours, path = _write_rollout(tmp_path, cwd=cwd)
    binder = SessionBinder(tmp_path)
    binding = binder.find_by_id(ours)
    assert binding is not None
    with FdHolder(launchers=1) as near, FdHolder(launchers=2) as far:
        near.open(path, "a")
        far.open(path, "a")
        assert binder.still_writes(binding, near.pid) is True
        assert binder.find_open_by(near.pid) == binding
        assert binder.still_writes(binding, far.pid) is False
        assert binder.open_by(far.pid).binding is None


def test_symlinks_inside_sessions_are_not_followed(tmp_path: Path) -> None:
    """A symlinked rollout or date folder inside sessions/ is ignored."""
    cwd = tmp_path / "work"
    elsewhere = tmp_path / "elsewhere"
    session_id, real = _write_rollout(elsewhere, cwd=cwd)
    folder = tmp_path / "sessions" / NOW.astimezone().strftime("%Y/%m/%d")
    folder.mkdir(parents=True)
    (folder / real.name).symlink_to(real)
    binder = SessionBinder(tmp_path)
    assert binder.bind_new(cwd=cwd, launched_at=NOW).binding is None
    assert binder.find_by_id(session_id) is None
    other_id, other = _write_rollout(elsewhere, cwd=cwd, at=NOW - timedelta(days=2))
    day = (NOW - timedelta(days=2)).astimezone()
    (tmp_path / "sessions" / day.strftime("%Y") / day.strftime("%m")).mkdir(
        parents=True, exist_ok=True
    )
    linked_day = tmp_path / "sessions" / day.strftime("%Y/%m/%d")
    linked_day.symlink_to(other.parent)
    assert binder.find_by_id(other_id) is None


def test_garbage_in_sessions_is_skipped(tmp_path: Path) -> None:
    """Odd names, folders named like rollouts and unreadable first lines never break binding."""
    cwd = tmp_path / "work"
    folder = tmp_path / "sessions" / NOW.astimezone().strftime("%Y/%m/%d")
    folder.mkdir(parents=True)
    stamp = NOW.astimezone().strftime("%Y-%m-%dT%H-%M-%S")
    (folder / "notes.txt").write_text("hi")
    (folder / f"rollout-{stamp}-{_uuid7(NOW)}.jsonl").mkdir()
    (folder / f"rollout-{stamp}-{_uuid7(NOW)}.jsonl").write_bytes(b"\xff\xfe garbage\n")
    (folder / f"rollout-{stamp}-{_uuid7(NOW)}.jsonl").write_text('{"type": "session_meta"}\n')
    (folder / "rollout-9999-99-99T99-99-99-zzz.jsonl").write_text("x")
    binder = SessionBinder(tmp_path)
    assert binder.bind_new(cwd=cwd, launched_at=NOW).binding is None
    ours, _ = _write_rollout(tmp_path, cwd=cwd)
    bound = binder.bind_new(cwd=cwd, launched_at=NOW).binding
    assert bound is not None
    assert bound.session_id == ours


def test_resolve_last_picks_the_last_updated_interactive_session(tmp_path: Path) -> None:
    """--last: the most recently written session of this folder, exec sessions left out."""
    cwd = tmp_path / "work"
    old, old_path = _write_rollout(tmp_path, cwd=cwd, at=NOW - timedelta(days=10))
    newer, newer_path = _write_rollout(tmp_path, cwd=cwd, at=NOW - timedelta(days=1))
    execd, exec_path = _write_rollout(tmp_path, cwd=cwd, at=NOW, source="exec")
    _write_rollout(tmp_path, cwd=tmp_path / "other", at=NOW)
    base = time.time()
    os.utime(old_path, (base - 100, base - 100))
    os.utime(newer_path, (base - 50, base - 50))
    os.utime(exec_path, (base, base))
    binder = SessionBinder(tmp_path)
    assert (binder.resolve_last(cwd=cwd) or pytest.fail("not found")).session_id == newer
    # A resumed old session appends to its old file: it becomes the last one.
    os.utime(old_path, (base + 10, base + 10))
    assert (binder.resolve_last(cwd=cwd) or pytest.fail("not found")).session_id == old
    any_kind = binder.resolve_last(cwd=cwd, interactive_only=False)
    assert any_kind is not None
    assert any_kind.session_id == old
    os.utime(exec_path, (base + 20, base + 20))
    assert (
        binder.resolve_last(cwd=cwd, interactive_only=False) or pytest.fail("not found")
    ).session_id == execd
    assert binder.resolve_last(cwd=tmp_path / "nowhere") is None


def test_binding_cost_does_not_grow_with_history(tmp_path: Path) -> None:
    """With 10,000 old rollouts, binding and v7 lookups examine only today's files."""
    cwd = tmp_path / "work"
    sessions = tmp_path / "sessions"
    for day in range(1, 101):
        at = NOW - timedelta(days=day)
        folder = sessions / at.astimezone().strftime("%Y/%m/%d")
        folder.mkdir(parents=True, exist_ok=True)
        stamp = at.astimezone().strftime("%Y-%m-%dT%H-%M-%S")
        for _ in range(100):
            (folder / f"rollout-{stamp}-{_uuid7(at)}.jsonl").touch()
    target_at = NOW - timedelta(days=77)
    target, target_path = _write_rollout(tmp_path, cwd=cwd, at=target_at)
    binder = SessionBinder(tmp_path)
    ours, _ = _write_rollout(tmp_path, cwd=cwd)
    attempt = binder.bind_new(cwd=cwd, launched_at=NOW - timedelta(seconds=1))
    assert attempt.binding is not None
    assert attempt.binding.session_id == ours
    assert attempt.files_examined == 1
    assert (binder.find_by_id(target) or pytest.fail("not found")).path == target_path


def test_session_ids() -> None:
    """Session ids are lowercase UUIDs; anything else is not."""
    assert is_session_id(_uuid7(NOW))
    assert not is_session_id("01A20182-B459-7C00-A48D-A6108A2870B2")
    assert not is_session_id("my-session-name")


# -- re-validated before a rotation --------------------------------------------------------


class _StandInChild:
    """What the supervisor's decision uses of a Child, over an FdHolder's real process."""

    def __init__(self, holder: FdHolder) -> None:
        self.pid = holder.pid
        self.returncode: int | None = None
        self.stops = 0

    async def stop(self, *args: Any, **kwargs: Any) -> int:
        self.stops += 1
        self.returncode = 0
        return 0


async def _pressed_supervisor(tmp_path: Path, backend: FakeCodexBackend) -> Supervisor:
    """A supervisor whose policy says "rotate alpha at the boundary" (96 % used, beta fresh)."""
    backend.add_account("id-alpha", five_hour_used=96)
    backend.add_account("id-beta", five_hour_used=0)
    base = tmp_path / "codex-home"
    backend.write_codex_home(base)
    pool = AccountPool(root=tmp_path / "pool", base_codex_home=base)
    for name in ("alpha", "beta"):
        pool.import_auth(name, backend.write_auth(tmp_path / f"login-{name}", f"id-{name}"))
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), **backend.codex_env()}
    sup = Supervisor(
        pool, config=SupervisorConfig(codex="codex"), sink=CollectingSink(), environ=env
    )
    await sup.selector.refresh(["alpha", "beta"])
    return sup


def _child_run(child: _StandInChild, binder: SessionBinder, cwd: Path) -> _ChildRun:
    return _ChildRun(
        inv=parse_argv([]),  # an idle TUI: safe to stop between turns
        child=child,  # type: ignore[arg-type]
        account="alpha",
        home=binder.codex_home,
        workdir=cwd,
        launched_at=NOW - timedelta(seconds=5),
        binder=binder,
        binding=None,
        known_session=None,
        prompt_in_argv=False,
        bind_deadline=float("inf"),
        last_passive=0.0,
    )


@pytest.mark.anyio
async def test_a_binding_gone_stale_is_rebound_before_a_rotation(
    tmp_path: Path, backend: FakeCodexBackend
) -> None:
    """The child now writes another rollout (a /new in the TUI): rebind, then rotate that one."""
    sup = await _pressed_supervisor(tmp_path, backend)
    home, cwd = tmp_path / "child-home", tmp_path / "work"
    first, first_path = _write_rollout(home, cwd=cwd)
    second, second_path = _write_rollout(home, cwd=cwd)
    binder = SessionBinder(home)
    with FdHolder() as holder:
        child = _StandInChild(holder)
        run = _child_run(child, binder, cwd)
        holder.open(first_path, "a")
        sup._bind(run)
        assert run.session_id == first
        holder.close(first_path)
        holder.open(first_path, "r")  # still read, no longer written
        holder.open(second_path, "a")
        assert await sup._decide(run) is None  # no rotation on the stale binding
        assert child.stops == 0
        assert run.session_id == second
        assert run.reader is not None
        assert run.reader.path == second_path
        assert isinstance(sup.sink, CollectingSink)
        bound = sup.sink.of(SessionBound)
        assert [b.session_id for b in bound] == [first, second]  # type: ignore[attr-defined]
        assert "rebound" in bound[-1].reason  # type: ignore[attr-defined]
        outcome = await sup._decide(run)  # decided again, on the session it writes
        assert isinstance(outcome, _Rotate)
        assert outcome.session_id == second
        assert child.stops == 1
    await sup.selector.aclose()


@pytest.mark.anyio
async def test_a_binding_with_no_single_writer_refuses_the_rotation(
    tmp_path: Path, backend: FakeCodexBackend, caplog: pytest.LogCaptureFixture
) -> None:
    """The child writes its session and another, or several others, or none: no rotation.

    Said once per problem in the log, never guessed; the rotation goes ahead
    once exactly one written session is left.
    """
    sup = await _pressed_supervisor(tmp_path, backend)
    home, cwd = tmp_path / "child-home", tmp_path / "work"
    first, first_path = _write_rollout(home, cwd=cwd)
    second, second_path = _write_rollout(home, cwd=cwd)
    third, third_path = _write_rollout(home, cwd=cwd)
    binder = SessionBinder(home)

    def refusals() -> list[str]:
        return [r.getMessage() for r in caplog.records if "not rotating" in r.getMessage()]

    with FdHolder() as holder, caplog.at_level(logging.WARNING, "codex_supervisor.supervisor"):
        child = _StandInChild(holder)
        run = _child_run(child, binder, cwd)
        holder.open(first_path, "a")
        sup._bind(run)
        assert run.session_id == first
        # A /new in the 0.169.0 TUI: the old thread stays loaded, a new one is written too.
        holder.open(second_path, "a")
        assert await sup._decide(run) is None
        assert await sup._decide(run) is None
        assert child.stops == 0
        assert run.session_id == first  # neither resumed nor swapped for a guess
        [also] = refusals()
        assert first in also
        assert f"also writes {second}" in also
        # No longer the bound one, and two others.
        holder.close(first_path)
        holder.open(third_path, "a")
        assert await sup._decide(run) is None
        assert len(refusals()) == 2
        assert "ambiguous" in refusals()[-1]
        # None at all.
        holder.close(second_path)
        holder.close(third_path)
        assert await sup._decide(run) is None
        assert "writes no rollout" in refusals()[-1]
        assert child.stops == 0
        assert run.session_id == first
        # Exactly one again: rebound, then rotated on the next decision.
        holder.open(third_path, "a")
        assert await sup._decide(run) is None
        assert run.session_id == third
        outcome = await sup._decide(run)
        assert isinstance(outcome, _Rotate)
        assert outcome.session_id == third
        assert child.stops == 1
    # Each problem told once to the embedder too, in words fit for "because".
    assert isinstance(sup.sink, CollectingSink)
    blocked = [e for e in sup.sink.events if isinstance(e, RotationBlocked)]
    assert [(e.account, e.session_id) for e in blocked] == [("alpha", first)] * 3
    assert f"Codex also writes session {second} (as after /new" in blocked[0].reason
    assert f"no longer writes it but sessions {', '.join(sorted((second, third)))}," in (
        blocked[1].reason
    )
    assert "Codex does not write it now (pid" in blocked[2].reason
    await sup.selector.aclose()


@pytest.mark.anyio
async def test_a_new_conversation_under_a_launcher_refuses_the_rotation(
    tmp_path: Path, backend: FakeCodexBackend
) -> None:
    """Under npm's node launcher, a /new is caught: no rotation, one RotationBlocked.

    The writer lock of the bound session is held by the launcher's child, as
    the native binary holds it; the launcher holds nothing.
    """
    sup = await _pressed_supervisor(tmp_path, backend)
    home, cwd = tmp_path / "child-home", tmp_path / "work"
    first, first_path = _write_rollout(home, cwd=cwd)
    second, second_path = _write_rollout(home, cwd=cwd)
    lock = home / "thread-writer-locks" / f"{first}.lock"
    lock.parent.mkdir()
    lock.touch()
    binder = SessionBinder(home)
    with FdHolder(launchers=1) as holder:
        child = _StandInChild(holder)
        run = _child_run(child, binder, cwd)
        holder.open(lock, "rwa")
        holder.lock(lock)
        holder.open(first_path, "rwa")
        sup._bind(run)
        assert run.session_id == first
        holder.open(second_path, "rwa")  # the /new
        for _ in range(3):
            assert await sup._decide(run) is None
        assert child.stops == 0  # the old conversation was not resumed
        assert run.session_id == first
    assert isinstance(sup.sink, CollectingSink)
    [blocked] = sup.sink.of(RotationBlocked)
    assert isinstance(blocked, RotationBlocked)
    assert blocked.session_id == first
    assert f"also writes session {second}" in blocked.reason
    assert blocked.message.startswith(f"rotation is off for session {first} on alpha because")
    await sup.selector.aclose()


@pytest.mark.anyio
async def test_no_session_bound_by_the_deadline_blocks_rotation_once(tmp_path: Path) -> None:
    """A child nothing could be bound to: one RotationBlocked, no session named."""
    home, cwd = tmp_path / "child-home", tmp_path / "work"
    pool = AccountPool(root=tmp_path / "pool", base_codex_home=tmp_path / "base")
    sup = Supervisor(pool, config=SupervisorConfig(codex="codex"), sink=CollectingSink())
    binder = SessionBinder(home)
    with FdHolder() as holder:
        run = _child_run(_StandInChild(holder), binder, cwd)
        run.bind_deadline = 0.0  # already passed
        sup._bind(run)
        sup._bind(run)
    assert run.binding is None
    assert isinstance(sup.sink, CollectingSink)
    [blocked] = sup.sink.of(RotationBlocked)
    assert isinstance(blocked, RotationBlocked)
    assert blocked.session_id is None
    assert blocked.reason.startswith("the session Codex writes could not be identified (")
    assert "this run" in blocked.message
    await sup.selector.aclose()


def test_the_cli_says_why_rotation_is_off(tmp_path: Path) -> None:
    """examples/cli.py prints a RotationBlocked without -v, on a terminal with a carriage return."""
    from codex_supervisor_cli import cli

    event = RotationBlocked(at=NOW, account="alpha", session_id="s", reason="it writes two")

    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    said = "codex-supervisor: rotation is off for this session because it writes two"
    for stream, line in ((io.StringIO(), f"{said}\n"), (Terminal(), f"\r\033[K{said}\r\n")):
        cli._Notices(0, stream)(event)
        assert stream.getvalue() == line


@pytest.mark.anyio
async def test_a_binding_still_written_rotates_at_once(
    tmp_path: Path, backend: FakeCodexBackend
) -> None:
    """The check costs a valid binding nothing: the first decision rotates it."""
    sup = await _pressed_supervisor(tmp_path, backend)
    home, cwd = tmp_path / "child-home", tmp_path / "work"
    ours, path = _write_rollout(home, cwd=cwd)
    binder = SessionBinder(home)
    with FdHolder() as holder:
        child = _StandInChild(holder)
        run = _child_run(child, binder, cwd)
        holder.open(path, "rwa")
        sup._bind(run)
        outcome = await sup._decide(run)
        assert isinstance(outcome, _Rotate)
        assert outcome.session_id == ours
        assert outcome.successor == "beta"
    await sup.selector.aclose()


# -- with the simulator ----------------------------------------------------------------------------


@pytest.mark.anyio
async def test_binds_a_simulated_exec_and_resume(
    tmp_path: Path, backend: FakeCodexBackend, world: Any
) -> None:
    """The binder finds the simulator's exec session; resume appends to the same file."""
    backend.add_account("acct-a")
    home = backend.write_codex_home(world.codex_home(), "acct-a")
    codex = install_simulator(tmp_path / "bin")
    launched = datetime.now(UTC)
    env = world.env(home, backend)
    run = subprocess.run(
        [str(codex), "exec", "--skip-git-repo-check", "hello"],
        cwd=world.work,
        env=env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    binder = SessionBinder(home)
    binding = await binder.wait_for_new(cwd=world.work, launched_at=launched, timeout=10)
    assert binding.session_id in run.stderr
    reader = RolloutReader(binding.path, account="acct-a")
    reader.read()
    assert reader.state.turns_completed == 1
    subprocess.run(
        [str(codex), "exec", "resume", binding.session_id, "again"],
        cwd=world.work,
        env=env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        timeout=60,
        check=True,
    )
    assert binder.find_by_id(binding.session_id) == binding
    reader.read()
    assert reader.state.turns_completed == 2
    with pytest.raises(errors.SessionError, match="no session bound"):
        await binder.wait_for_new(
            cwd=world.work, launched_at=launched, timeout=0.3, exclude=[binding.session_id]
        )


@pytest.mark.anyio
async def test_two_simulated_sessions_started_together_bind_by_pid(
    tmp_path: Path, backend: FakeCodexBackend, world: Any
) -> None:
    """Two interactive sessions started in one folder at once each bind to their own child."""
    backend.add_account("acct-a")
    home = backend.write_codex_home(world.codex_home(), "acct-a")
    codex = install_simulator(tmp_path / "bin")
    launched = datetime.now(UTC)
    children = [
        subprocess.Popen(
            [str(codex), f"prompt {i}"],
            cwd=world.work,
            env=world.env(home, backend),
            stdin=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        for i in range(2)
    ]
    try:
        binder = SessionBinder(home)
        bindings = [
            await binder.wait_for_new(cwd=world.work, launched_at=launched, pid=c.pid, timeout=20)
            for c in children
        ]
        assert bindings[0].session_id != bindings[1].session_id
        for child, binding in zip(children, bindings, strict=True):
            assert writer_lock(home, binding.session_id).pid == child.pid
        # A child takes its lock before it sends its prompt: wait for both prompts.
        deadline = time.monotonic() + 20
        while len(backend.responses_requests()) < 2 and time.monotonic() < deadline:
            time.sleep(0.02)
        requests = backend.responses_requests()
        by_prompt = {r.input_texts[-1]: r.session_id for r in requests}
        assert by_prompt == {
            "prompt 0": bindings[0].session_id,
            "prompt 1": bindings[1].session_id,
        }
    finally:
        for child in children:
            assert child.stdin is not None
            child.stdin.close()
            child.wait(timeout=20)


# -- deeply nested lines -----------------------------------------------------------------

DEEP = b"[" * 100_000 + b"]" * 100_000


def test_reader_skips_a_deeply_nested_line(tmp_path: Path) -> None:
    """A line nested past the recursion limit is skipped like any unreadable line."""
    _, path = _write_rollout(tmp_path, cwd=tmp_path)
    with path.open("ab") as fh:
        fh.write(DEEP + b"\n")
        fh.write(b'{"type":"event_msg","payload":{"type":"task_started","x":' + DEEP + b"}}\n")
        fh.write(_event("task_started", turn_id="after").encode())
    reader = RolloutReader(path)
    records = reader.read()
    assert [type(r) for r in records] == [SessionMeta, TurnStarted]
    assert reader.lines_skipped == 2


def test_session_meta_of_a_deeply_nested_first_line_is_none(tmp_path: Path) -> None:
    """read_session_meta and the binder treat a deeply nested first line as unreadable."""
    session_id = _uuid7(NOW)
    _, path = _write_rollout(tmp_path, cwd=tmp_path, session_id=session_id)
    path.write_bytes(DEEP + b"\n")
    assert read_session_meta(path) is None
    binding = SessionBinder(tmp_path).find_by_id(session_id)
    assert binding is None or binding.meta is None


def test_reader_skips_a_non_ascii_type_prefix(tmp_path: Path) -> None:
    """A "type" value with non-ASCII bytes near the line start is skipped, never fatal."""
    _, path = _write_rollout(tmp_path, cwd=tmp_path)
    with path.open("ab") as fh:
        fh.write(b'{"type":"\xff\xfe","payload":{}}\n')
        fh.write('{"type":"événement","payload":{}}\n'.encode())
        fh.write(_event("task_started", turn_id="after").encode())
    records = RolloutReader(path).read()
    assert [type(r) for r in records] == [SessionMeta, TurnStarted]


# -- without /proc: the seam and Codex's hooks as the evidence ---------------------------------


async def _settle(sup: Supervisor, run: _ChildRun) -> None:
    """End what a decision started in the background (a pre-warm's probes), then the selector."""
    if run.prewarm is not None:
        run.prewarm.cancel()
        with contextlib.suppress(BaseException):
            await run.prewarm
    await sup.selector.aclose()


def _hooked(
    holder: FdHolder, home: Path, cwd: Path, inbox: HookInbox
) -> tuple[_StandInChild, _ChildRun]:
    """A stand-in child in ``home`` whose session hooks report to ``inbox``, and its run."""
    child = _StandInChild(holder)
    run = _child_run(child, SessionBinder(home), cwd)
    run.hooks = inbox
    return child, run


def _old_turn(turn: str) -> str:
    """A finished turn from an hour before any launch in these tests."""
    hour_ago = NOW - timedelta(hours=1)
    return _line("event_msg", {"type": "task_started", "turn_id": turn}, hour_ago) + _line(
        "event_msg", {"type": "task_complete", "turn_id": turn}, hour_ago
    )


def _hook(
    inbox: HookInbox,
    event: str,
    session_id: str,
    path: Path | None = None,
    turn_id: str | None = None,
) -> None:
    record = {"event": event, "session_id": session_id}
    if path is not None:
        record["transcript_path"] = str(path)
    if turn_id is not None:
        record["turn_id"] = turn_id
    with inbox.path.open("a") as out:
        out.write(json.dumps(record) + "\n")


def test_the_seam_hides_proc_from_every_piece_of_evidence(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With ENV_NO_PROC set, a child writing its rollout and holding its lock shows nothing."""
    cwd = tmp_path / "work"
    ours, path = _write_rollout(tmp_path, cwd=cwd)
    lock = tmp_path / "thread-writer-locks" / f"{ours}.lock"
    lock.parent.mkdir()
    lock.touch()
    binder = SessionBinder(tmp_path)
    with FdHolder() as child:
        child.open(path, "a")
        child.open(lock, "rwa")
        child.lock(lock)
        assert proc_available()
        assert binder.open_by(child.pid).binding is not None
        assert writer_lock(tmp_path, ours).pid == child.pid
        monkeypatch.setenv(ENV_NO_PROC, "1")
        assert not proc_available()
        attempt = binder.open_by(child.pid)
        assert attempt.binding is None
        assert "cannot be read" in attempt.reason
        assert binder.bind_new(cwd=cwd, launched_at=NOW, pid=child.pid).binding is None
        [binding] = [binder.find_by_id(ours)]
        assert binding is not None
        assert binder.still_writes(binding, child.pid) is None  # unknown, not "no"
        # The lock probe still says "held" (as on macOS), but not by whom.
        held = writer_lock(tmp_path, ours)
        assert (held.held, held.pid) == (True, None)
        monkeypatch.setenv(ENV_NO_PROC, "0")
        assert proc_available()


def test_a_hook_binds_only_a_rollout_of_this_home_named_after_its_id(tmp_path: Path) -> None:
    cwd = tmp_path / "work"
    ours, path = _write_rollout(tmp_path, cwd=cwd)
    other, other_path = _write_rollout(tmp_path / "elsewhere", cwd=cwd)
    binder = SessionBinder(tmp_path)
    bound = binder.from_hook(ours, str(path)).binding
    assert bound is not None
    assert (bound.session_id, bound.path) == (ours, path.resolve())
    # A path that does not match the id, or lies outside: looked up by id instead.
    assert binder.from_hook(ours, str(other_path)).binding == bound
    assert binder.from_hook(ours, "/etc/passwd").binding == bound
    assert binder.from_hook(ours, None).binding == bound
    # An id with no rollout here, or no id at all: nothing binds.
    assert binder.from_hook(other, str(other_path)).binding is None
    assert binder.from_hook("not-an-id", str(path)).binding is None
    assert binder.from_hook("", None).binding is None


def test_a_subagents_thread_never_binds(tmp_path: Path) -> None:
    cwd = tmp_path / "work"
    sub, path = _write_rollout(tmp_path, cwd=cwd)
    meta = json.loads(path.read_text())
    meta["payload"]["source"] = {"subagent": {"thread_spawn": {"parent_thread_id": "x"}}}
    path.write_text(json.dumps(meta) + "\n")
    attempt = SessionBinder(tmp_path).from_hook(sub, str(path))
    assert attempt.binding is None
    assert "not a conversation" in attempt.reason


@pytest.mark.anyio
async def test_without_proc_a_hook_binds_rebinds_and_the_rotation_goes_ahead(
    tmp_path: Path, backend: FakeCodexBackend, monkeypatch: pytest.MonkeyPatch
) -> None:
    """As on macOS: the hook binds; a hook naming another session moves the binding."""
    monkeypatch.setenv(ENV_NO_PROC, "1")
    sup = await _pressed_supervisor(tmp_path, backend)
    home, cwd = tmp_path / "child-home", tmp_path / "work"
    first, first_path = _write_rollout(home, cwd=cwd, extra=_old_turn("t1"))
    # An older conversation the TUI resumes: its new turn starts.
    running = _old_turn("t2") + _event("task_started", turn_id="t3")
    second, second_path = _write_rollout(home, cwd=cwd, extra=running)
    inbox = HookInbox(tmp_path)
    with FdHolder() as holder:
        _child, run = _hooked(holder, home, cwd, inbox)
        sup._bind(run)
        assert run.binding is None  # nothing to go by yet
        _hook(inbox, "SessionStart", first, first_path)
        _hook(inbox, "Stop", first, first_path, turn_id="t1")
        sup._bind(run)
        assert run.session_id == first
        # A turn in another conversation of the same TUI (after /resume).
        _hook(inbox, "SessionStart", second, second_path)
        sup._bind(run)
        assert run.session_id == second
        assert run.reader is not None
        assert run.reader.path == second_path.resolve()
        assert run.turns_at_launch == 1  # its earlier turn is not this child's evidence
        assert await sup._decide(run) is None  # its own turn runs
        with second_path.open("a") as out:
            out.write(_event("task_complete", turn_id="t3"))
        await sup._follow(run)
        outcome = await sup._decide(run)
        assert isinstance(outcome, _Rotate)
        assert outcome.session_id == second
    inbox.close()
    assert isinstance(sup.sink, CollectingSink)
    reasons = [(e.session_id, e.reason) for e in sup.sink.of(SessionBound)]  # type: ignore[attr-defined]
    assert reasons == [
        (first, f"Codex's hook named session {first}"),
        (second, f"Codex's hook named session {second} (was {first})"),
    ]
    await _settle(sup, run)


@pytest.mark.anyio
async def test_with_proc_a_hook_cannot_talk_a_rotation_past_two_written_sessions(
    tmp_path: Path, backend: FakeCodexBackend
) -> None:
    """The hook moves the binding to the new conversation; /proc still sees both: no rotation."""
    sup = await _pressed_supervisor(tmp_path, backend)
    home, cwd = tmp_path / "child-home", tmp_path / "work"
    first, first_path = _write_rollout(home, cwd=cwd)
    second, second_path = _write_rollout(home, cwd=cwd)
    inbox = HookInbox(tmp_path)
    with FdHolder() as holder:
        child, run = _hooked(holder, home, cwd, inbox)
        holder.open(first_path, "a")
        sup._bind(run)
        assert run.session_id == first
        holder.open(second_path, "a")
        _hook(inbox, "SessionStart", second, second_path)
        sup._bind(run)
        assert run.session_id == second
        assert await sup._decide(run) is None
        assert child.stops == 0
    inbox.close()
    assert isinstance(sup.sink, CollectingSink)
    [blocked] = sup.sink.of(RotationBlocked)
    assert f"also writes session {first}" in blocked.reason  # type: ignore[attr-defined]
    await sup.selector.aclose()


@pytest.mark.anyio
@pytest.mark.parametrize("hooks", [True, False])
async def test_without_proc_an_unbound_child_says_why_rotation_is_off(
    tmp_path: Path,
    backend: FakeCodexBackend,
    monkeypatch: pytest.MonkeyPatch,
    hooks: bool,
) -> None:
    """No hook by the deadline (which waits for a session to appear): one RotationBlocked."""
    monkeypatch.setenv(ENV_NO_PROC, "1")
    sup = await _pressed_supervisor(tmp_path, backend)
    home, cwd = tmp_path / "child-home", tmp_path / "work"
    inbox = HookInbox(tmp_path) if hooks else None
    if not hooks:
        sup._hooks_off = "session hooks are switched off (SupervisorConfig.session_hooks)"
    with FdHolder() as holder:
        _, run = _hooked(holder, home, cwd, inbox)
        run.bind_deadline = sup._bind_deadline(inbox)
        run.clock_waits_for_session = inbox is not None
        assert math.isinf(run.bind_deadline) == hooks
        if hooks:
            # A TUI waiting for its first prompt: no session yet, so no clock, no warning.
            sup._bind(run)
            assert math.isinf(run.bind_deadline)
            _write_rollout(home, cwd=cwd)  # a session appears: its hook is due now
            sup._bind(run)
            assert math.isfinite(run.bind_deadline)
        run.bind_deadline = 0.0  # the deadline passes
        sup._bind(run)
        sup._bind(run)
    assert run.binding is None
    assert isinstance(sup.sink, CollectingSink)
    [blocked] = sup.sink.of(RotationBlocked)
    reason = blocked.reason  # type: ignore[attr-defined]
    if hooks:
        assert "no hook of this Codex has named it within 30s of a new session appearing" in reason
    else:
        assert "this system has no /proc to read it from, and no session hooks (" in reason
    if inbox is not None:
        inbox.close()
    await sup.selector.aclose()


@pytest.mark.anyio
async def test_a_hook_naming_an_unknown_session_is_logged_once(
    tmp_path: Path, backend: FakeCodexBackend, caplog: pytest.LogCaptureFixture
) -> None:
    sup = await _pressed_supervisor(tmp_path, backend)
    home, cwd = tmp_path / "child-home", tmp_path / "work"
    inbox = HookInbox(tmp_path)
    with FdHolder() as holder:
        _, run = _hooked(holder, home, cwd, inbox)
        _hook(inbox, "SessionStart", "01a22c33-7e06-70a2-9074-21dda48f0185")
        with caplog.at_level(logging.WARNING, "codex_supervisor.supervisor"):
            for _ in range(3):
                sup._bind(run)
    assert run.binding is None
    said = [r for r in caplog.records if "session hook not followed" in r.getMessage()]
    assert len(said) == 1
    inbox.close()
    await sup.selector.aclose()


@pytest.mark.anyio
async def test_a_hook_arriving_right_before_a_rotation_is_read_first(
    tmp_path: Path, backend: FakeCodexBackend, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A SessionStart written between the loop's look and the decision moves the binding first."""
    monkeypatch.setenv(ENV_NO_PROC, "1")
    sup = await _pressed_supervisor(tmp_path, backend)
    home, cwd = tmp_path / "child-home", tmp_path / "work"
    done = _event("task_started", turn_id="t1") + _event("task_complete", turn_id="t1")
    first, first_path = _write_rollout(home, cwd=cwd, extra=done)
    second, second_path = _write_rollout(home, cwd=cwd, extra=_event("task_started", turn_id="t2"))
    inbox = HookInbox(tmp_path)
    with FdHolder() as holder:
        child, run = _hooked(holder, home, cwd, inbox)
        _hook(inbox, "Stop", first, first_path)
        sup._bind(run)
        assert run.session_id == first
        _hook(inbox, "SessionStart", second, second_path)  # a turn starts after /new
        assert await sup._decide(run) is None  # not the idle first conversation
        assert run.session_id == second
        assert await sup._decide(run) is None  # the second one's turn runs: wait for it
        assert child.stops == 0
    inbox.close()
    await _settle(sup, run)


@pytest.mark.anyio
async def test_a_rebinding_never_cuts_the_turn_in_flight_there(
    tmp_path: Path, backend: FakeCodexBackend
) -> None:
    """Rebound through /proc to a session whose turn runs: the turn is the child's, let it end."""
    sup = await _pressed_supervisor(tmp_path, backend)
    home, cwd = tmp_path / "child-home", tmp_path / "work"
    first, first_path = _write_rollout(home, cwd=cwd)
    second, second_path = _write_rollout(home, cwd=cwd, extra=_event("task_started", turn_id="t"))
    with FdHolder() as holder:
        child = _StandInChild(holder)
        run = _child_run(child, SessionBinder(home), cwd)
        holder.open(first_path, "a")
        sup._bind(run)
        assert run.session_id == first
        holder.close(first_path)
        holder.open(second_path, "a")
        assert await sup._decide(run) is None  # rebound
        assert run.session_id == second
        assert await sup._decide(run) is None  # its turn runs
        assert child.stops == 0
        with second_path.open("a") as out:
            out.write(_event("task_complete", turn_id="t"))
        await sup._follow(run)
        assert isinstance(await sup._decide(run), _Rotate)  # at its end
    await _settle(sup, run)


def _held_lock(home: Path, holder: FdHolder, session_id: str) -> Path:
    lock = home / "thread-writer-locks" / f"{session_id}.lock"
    lock.parent.mkdir(exist_ok=True)
    lock.touch()
    holder.open(lock, "rwa")
    holder.lock(lock)
    return lock


@pytest.mark.anyio
async def test_without_proc_another_loaded_conversation_named_by_a_hook_refuses(
    tmp_path: Path, backend: FakeCodexBackend, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Bound to B after /new; A is still loaded (the TUI can go back to it unseen): no rotation."""
    monkeypatch.setenv(ENV_NO_PROC, "1")
    sup = await _pressed_supervisor(tmp_path, backend)
    home, cwd = tmp_path / "child-home", tmp_path / "work"
    first, first_path = _write_rollout(home, cwd=cwd, extra=_old_turn("a"))
    second, second_path = _write_rollout(home, cwd=cwd, extra=_old_turn("b"))
    inbox = HookInbox(tmp_path)
    with FdHolder() as holder:
        child, run = _hooked(holder, home, cwd, inbox)
        lock = _held_lock(home, holder, first)
        _held_lock(home, holder, second)
        _hook(inbox, "Stop", first, first_path)
        _hook(inbox, "Stop", second, second_path)
        sup._bind(run)
        assert run.session_id == second
        for _ in range(2):
            assert await sup._decide(run) is None
        assert child.stops == 0
        holder.close(lock)  # A unloaded: B is the only conversation left
        outcome = await sup._decide(run)
        assert isinstance(outcome, _Rotate)
        assert outcome.session_id == second
    inbox.close()
    assert isinstance(sup.sink, CollectingSink)
    [blocked] = sup.sink.of(RotationBlocked)
    assert f"Codex also has session {first} loaded" in blocked.reason  # type: ignore[attr-defined]
    await sup.selector.aclose()


@pytest.mark.anyio
async def test_without_proc_a_session_just_started_here_holds_the_rotation_back(
    tmp_path: Path, backend: FakeCodexBackend, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Its SessionStart may be on its way: not now, and no "rotation is off" for it.

    Another Codex's conversation in the same folder, busy for a while, holds
    nothing back.
    """
    monkeypatch.setenv(ENV_NO_PROC, "1")
    sup = await _pressed_supervisor(tmp_path, backend)
    home, cwd = tmp_path / "child-home", tmp_path / "work"
    ours, path = _write_rollout(home, cwd=cwd, extra=_old_turn("a"))
    # "Just now" is stamped ahead, and written files are dated ahead: however slowly a
    # loaded machine runs this test, they stay within the few seconds that count.
    ahead = datetime.now(UTC) + timedelta(minutes=10)
    just_now = _line("event_msg", {"type": "task_started", "turn_id": "n"}, ahead)

    def written_now(path: Path) -> None:
        os.utime(path, (ahead.timestamp(), ahead.timestamp()))

    busy, busy_path = _write_rollout(home, cwd=cwd, extra=_old_turn("b") + _old_turn("c"))
    written_now(busy_path)
    inbox = HookInbox(tmp_path)
    with FdHolder() as holder:
        child, run = _hooked(holder, home, cwd, inbox)
        _held_lock(home, holder, busy)
        _hook(inbox, "Stop", ours, path)
        sup._bind(run)
        assert run.session_id == ours
        started, started_path = _write_rollout(home, cwd=cwd, extra=just_now)
        written_now(started_path)
        _held_lock(home, holder, started)
        assert await sup._decide(run) is None
        assert child.stops == 0
        old = time.time() - 60  # its first turn started a minute ago: not one starting now
        started_path.write_text(
            started_path.read_text().replace(
                just_now,
                _line(
                    "event_msg",
                    {"type": "task_started", "turn_id": "n"},
                    NOW - timedelta(minutes=1),
                ),
            )
        )
        written_now(started_path)
        assert busy_path.stat().st_mtime > old  # written just now, but busy for an hour
        assert isinstance(await sup._decide(run), _Rotate)
        # A neighbour starting turns again and again holds it back 15 s at most.
        started_path.write_text(started_path.read_text() + just_now.replace('"n"', '"m"'))
        written_now(started_path)
        assert await sup._decide(run) is None
        assert run.deferred_since is not None
        run.deferred_since -= 20
        assert isinstance(await sup._decide(run), _Rotate)
        assert run.deferred_since is None
    inbox.close()
    assert isinstance(sup.sink, CollectingSink)
    assert sup.sink.of(RotationBlocked) == []
    await sup.selector.aclose()


@pytest.mark.anyio
async def test_a_resumed_session_bound_by_its_hook_keeps_its_turn_in_flight(
    tmp_path: Path, backend: FakeCodexBackend, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`codex resume` (picker): SessionStart follows its turn start; that turn is the child's."""
    monkeypatch.setenv(ENV_NO_PROC, "1")
    sup = await _pressed_supervisor(tmp_path, backend)
    home, cwd = tmp_path / "child-home", tmp_path / "work"
    ours, path = _write_rollout(
        home,
        cwd=cwd,
        at=NOW - timedelta(hours=1),  # an old conversation
        extra=_old_turn("old") + _event("task_started", turn_id="new"),
    )
    inbox = HookInbox(tmp_path)
    with FdHolder() as holder:
        child = _StandInChild(holder)
        run = _child_run(child, SessionBinder(home), cwd)
        run.inv = parse_argv(["resume"])
        run.hooks = inbox
        _hook(inbox, "SessionStart", ours, path)
        sup._bind(run)
        assert run.session_id == ours
        assert run.turns_at_launch == 1  # the old turn is not this child's
        assert await sup._decide(run) is None  # never cut
        assert child.stops == 0
        with path.open("a") as out:
            out.write(_event("task_complete", turn_id="new"))
        await sup._follow(run)
        assert isinstance(await sup._decide(run), _Rotate)
    inbox.close()
    await _settle(sup, run)


def test_a_rebinding_after_the_turn_ended_keeps_its_usage_limit_failure(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A Stop read after its task_complete landed: that failed turn is the child's evidence."""
    monkeypatch.setenv(ENV_NO_PROC, "1")
    home, cwd = tmp_path / "child-home", tmp_path / "work"
    first, first_path = _write_rollout(home, cwd=cwd, extra=_old_turn("a"))
    failed = _event("task_started", turn_id="t") + _event(
        "task_complete", turn_id="t", error={"codex_error_info": "usage_limit_exceeded"}
    )
    second, second_path = _write_rollout(home, cwd=cwd, extra=_old_turn("b") + failed)
    pool = AccountPool(root=tmp_path / "pool", base_codex_home=tmp_path / "base")
    sup = Supervisor(pool, config=SupervisorConfig(codex="codex"), sink=CollectingSink())
    inbox = HookInbox(tmp_path)
    with FdHolder() as holder:
        _, run = _hooked(holder, home, cwd, inbox)
        _hook(inbox, "Stop", first, first_path)
        sup._bind(run)
        _hook(inbox, "Stop", second, second_path, turn_id="t")
        sup._bind(run)
    inbox.close()
    assert run.session_id == second
    assert run.turns_at_launch == 1
    assert run.limit_failure() == "usage_limit_exceeded"


@pytest.mark.anyio
async def test_a_hook_is_acted_on_once_and_never_fights_proc(
    tmp_path: Path, backend: FakeCodexBackend
) -> None:
    """The last hook named A, /proc shows the child writing only B: rebound to B once, and stays."""
    sup = await _pressed_supervisor(tmp_path, backend)
    home, cwd = tmp_path / "child-home", tmp_path / "work"
    first, first_path = _write_rollout(home, cwd=cwd)
    second, second_path = _write_rollout(home, cwd=cwd)
    inbox = HookInbox(tmp_path)
    with FdHolder() as holder:
        _child, run = _hooked(holder, home, cwd, inbox)
        _hook(inbox, "SessionStart", first, first_path)
        holder.open(second_path, "a")
        for _ in range(4):
            sup._bind(run)
            await sup._decide(run)
        assert run.session_id == second
    inbox.close()
    assert isinstance(sup.sink, CollectingSink)
    assert [e.session_id for e in sup.sink.of(SessionBound)] == [first, second]  # type: ignore[attr-defined]
    await sup.selector.aclose()


def test_newest_first_past_a_subagent_and_a_rollout_not_written_yet(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(ENV_NO_PROC, "1")
    home, cwd = tmp_path / "child-home", tmp_path / "work"
    ours, path = _write_rollout(home, cwd=cwd)
    sub, sub_path = _write_rollout(home, cwd=cwd)
    meta = json.loads(sub_path.read_text())
    meta["payload"]["source"] = {"subagent": "review"}
    sub_path.write_text(json.dumps(meta) + "\n")
    pool = AccountPool(root=tmp_path / "pool", base_codex_home=tmp_path / "base")
    sup = Supervisor(pool, config=SupervisorConfig(codex="codex"), sink=CollectingSink())
    inbox = HookInbox(tmp_path)
    with FdHolder() as holder:
        _, run = _hooked(holder, home, cwd, inbox)
        _hook(inbox, "SessionStart", ours, path)
        _hook(inbox, "Stop", sub, sub_path)  # a subagent's turn ends after ours started
        sup._bind(run)
        assert run.session_id == ours
        # A session whose rollout has no first line yet: pending, bound once it has.
        later, later_path = _write_rollout(home, cwd=cwd)
        content = later_path.read_text()
        later_path.write_text("")
        _hook(inbox, "SessionStart", later, later_path)
        sup._bind(run)
        assert run.session_id == ours
        assert run.pending_hook is not None
        later_path.write_text(content)
        sup._bind(run)
        assert run.session_id == later
        assert run.pending_hook is None
    inbox.close()


def test_a_tui_that_resumes_an_old_session_does_not_take_its_old_failure(tmp_path: Path) -> None:
    """Bound through /proc to a session older than the launch: its failed turn is not ours."""
    home, cwd = tmp_path / "child-home", tmp_path / "work"
    hour_ago = NOW - timedelta(hours=1)
    failed = _line("event_msg", {"type": "task_started", "turn_id": "t"}, hour_ago) + _line(
        "event_msg",
        {
            "type": "task_complete",
            "turn_id": "t",
            "error": {"codex_error_info": "usage_limit_exceeded"},
        },
        hour_ago,
    )
    old, path = _write_rollout(home, cwd=cwd, at=hour_ago, extra=failed)
    pool = AccountPool(root=tmp_path / "pool", base_codex_home=tmp_path / "base")
    sup = Supervisor(pool, config=SupervisorConfig(codex="codex"), sink=CollectingSink())
    with FdHolder() as holder:
        run = _child_run(_StandInChild(holder), SessionBinder(home), cwd)
        holder.open(path, "a")  # the TUI's /resume of it
        sup._bind(run)
    assert run.session_id == old
    assert run.turns_at_launch == 1
    assert run.limit_failure() is None


def test_a_dead_writers_turn_in_an_old_session_is_not_the_childs(tmp_path: Path) -> None:
    """Bound through /proc to an old session whose writer died mid-turn an hour ago: idle."""
    home, cwd = tmp_path / "child-home", tmp_path / "work"
    hour_ago = NOW - timedelta(hours=1)
    dangling = _line("event_msg", {"type": "task_started", "turn_id": "t"}, hour_ago)
    old, path = _write_rollout(home, cwd=cwd, at=hour_ago, extra=dangling)
    pool = AccountPool(root=tmp_path / "pool", base_codex_home=tmp_path / "base")
    sup = Supervisor(pool, config=SupervisorConfig(codex="codex"), sink=CollectingSink())
    with FdHolder() as holder:
        run = _child_run(_StandInChild(holder), SessionBinder(home), cwd)
        holder.open(path, "a")
        sup._bind(run)
    assert run.session_id == old
    assert run.turns_started == 0
    assert run.safe_to_stop()


def test_an_inbox_works_where_flock_does_not_and_is_never_swept(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from codex_supervisor import hooks as hooks_module

    def no_flock(*_: object) -> None:
        raise OSError(errno.ENOLCK, "no locks available")

    monkeypatch.setattr(hooks_module.fcntl, "flock", no_flock)
    inbox = HookInbox(tmp_path)
    assert (inbox.folder / ".alive").exists()
    HookInbox(tmp_path)  # its sweep cannot tell: leaves it
    assert inbox.folder.exists()
    inbox.close()
