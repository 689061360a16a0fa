"""FileLock, FileLeaseBackend and acquire_lease: exclusion, expiry, renewal and loss."""

from __future__ import annotations

import asyncio
import errno
import json
import logging
import os
import random
import re
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import attrs
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from codex_supervisor import errors
from codex_supervisor import lease as lease_module
from codex_supervisor._convert import structure, unstructure
from codex_supervisor.lease import (
    FileLeaseBackend,
    FileLock,
    Lease,
    LeaseBackend,
    LeaseMode,
    LeaseRecord,
    RenewOutcome,
    acquire_lease,
    claim_alive,
    holder_alive,
)
from codex_supervisor.testing import FakeClock

EXCLUSIVE, SHARED = LeaseMode.EXCLUSIVE, LeaseMode.SHARED


def _fake_clock() -> FakeClock:
    """Virtual time from 0 s and the real date (file mtimes are real); sleeps autojump."""
    return FakeClock(datetime.now(UTC), monotonic_start=0.0, autojump=True)


@attrs.define
class ScriptedBackend:
    """A LeaseBackend whose renewals follow a script (the last outcome repeats)."""

    clock: FakeClock
    outcomes: list[RenewOutcome] = attrs.field(factory=lambda: [RenewOutcome.OK])
    renew_error: Exception | None = None
    release_error: Exception | None = None
    renew_calls: int = 0
    released: list[LeaseRecord] = attrs.field(factory=list)

    async def try_acquire(
        self,
        name: str,
        *,
        owner: str,
        mode: LeaseMode,
        ttl: float,
        purpose: str | None = None,
        replaces: LeaseRecord | None = None,
    ) -> LeaseRecord | None:
        now = self.clock.now()
        return LeaseRecord(
            name=name,
            owner=owner,
            mode=mode,
            pid=os.getpid(),
            host="test",
            acquired_at=now,
            expires_at=now + timedelta(seconds=ttl),
            purpose=purpose,
        )

    async def renew(self, record: LeaseRecord, ttl: float) -> tuple[RenewOutcome, LeaseRecord]:
        self.renew_calls += 1
        if self.renew_error is not None:
            raise self.renew_error
        outcome = self.outcomes.pop(0) if len(self.outcomes) > 1 else self.outcomes[0]
        if outcome is RenewOutcome.OK:
            return outcome, attrs.evolve(
                record, expires_at=self.clock.now() + timedelta(seconds=ttl)
            )
        return outcome, record

    async def release(self, record: LeaseRecord) -> None:
        if self.release_error is not None:
            raise self.release_error
        self.released.append(record)

    async def holders(self, name: str) -> list[LeaseRecord]:
        return []

    async def records(self, name: str) -> list[LeaseRecord]:
        return []


async def _until(predicate: Callable[[], bool], limit: float = 10.0) -> None:
    """Poll ``predicate`` on the real clock until it holds or the deadline passes."""
    deadline = time.monotonic() + limit
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(0.005)


def _until_sync(predicate: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.005)


@pytest.fixture
def clock() -> FakeClock:
    """A fake clock starting at the real current time."""
    return _fake_clock()


@pytest.fixture
def backend(tmp_path: Path, clock: FakeClock) -> FileLeaseBackend:
    """A file backend on a fresh folder, on the fake clock."""
    return FileLeaseBackend(tmp_path / "leases", clock=clock)


def _files(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


# --------------------------------------------------------------------------- #
# FileLock

_HOLD_LOCK = """
import sys, time
from codex_supervisor.lease import FileLock
lock = FileLock(sys.argv[1])
lock.acquire()
print("locked", flush=True)
time.sleep(60)
"""

_COUNT_UNDER_LOCK = """
import sys
from pathlib import Path
from codex_supervisor.lease import FileLock
lock_path, counter, rounds = sys.argv[1], Path(sys.argv[2]), int(sys.argv[3])
for _ in range(rounds):
    with FileLock(lock_path, poll=0.001):
        value = int(counter.read_text())
        counter.write_text(str(value + 1))
"""


def test_filelock_excludes_threads(tmp_path: Path) -> None:
    """Two FileLocks on one path, in different threads, are never held at once."""
    path = tmp_path / "x.lock"
    inside = 0
    overlaps = 0
    guard = threading.Lock()

    def work() -> None:
        nonlocal inside, overlaps
        for _ in range(100):
            with FileLock(path, poll=0.001):
                with guard:
                    inside += 1
                    overlaps += inside > 1
                time.sleep(0.0005)  # widen the critical section, not a wait
                with guard:
                    inside -= 1

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert overlaps == 0


def test_filelock_excludes_processes(tmp_path: Path) -> None:
    """Four processes incrementing one counter under the lock lose no update."""
    counter = tmp_path / "counter"
    counter.write_text("0")
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", _COUNT_UNDER_LOCK, str(tmp_path / "c.lock"), str(counter), "150"]
        )
        for _ in range(4)
    ]
    for proc in procs:
        assert proc.wait(timeout=60) == 0
    assert int(counter.read_text()) == 600


def test_filelock_timeout_names_the_holder(tmp_path: Path) -> None:
    """A contended FileLock times out with LeaseTimeout (a TimeoutError) naming the holder's pid."""
    path = tmp_path / "x.lock"
    with FileLock(path), pytest.raises(errors.LeaseTimeout) as caught:
        FileLock(path, timeout=0.05, poll=0.01).acquire()
    assert isinstance(caught.value, TimeoutError)
    assert caught.value.name == str(path)
    assert caught.value.holder == f"pid {os.getpid()}"
    # Released: the lock is free again at once, and its pid is cleared.
    with FileLock(path, timeout=0):
        pass
    assert path.read_bytes() == b""


@pytest.mark.anyio
async def test_filelock_async_does_not_block_the_loop(tmp_path: Path) -> None:
    """While ``async with FileLock`` waits, other tasks run (and can free the lock)."""
    path = tmp_path / "x.lock"
    holder = FileLock(path)
    holder.acquire()
    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        while True:
            ticks += 1
            await asyncio.sleep(0.001)

    async def release_after_ticks() -> None:
        await _until(lambda: ticks >= 20)
        holder.release()

    tick_task = asyncio.create_task(ticker())
    release_task = asyncio.create_task(release_after_ticks())
    try:
        async with FileLock(path, timeout=10, poll=0.005) as lock:
            assert lock.held
            assert ticks >= 20
        assert not lock.held
    finally:
        tick_task.cancel()
        await asyncio.wait({tick_task, release_task})


@pytest.mark.anyio
async def test_filelock_async_timeout_and_cancel(tmp_path: Path) -> None:
    """An async wait times out with LeaseTimeout; a cancelled wait holds nothing."""
    path = tmp_path / "x.lock"
    with FileLock(path):
        with pytest.raises(errors.LeaseTimeout):
            await FileLock(path, timeout=0.05, poll=0.01).aacquire()
        polls = FakeClock()
        waiter = FileLock(path, timeout=30, poll=0.01, clock=polls)
        task = asyncio.create_task(waiter.aacquire())
        await polls.wait_for_sleepers()
        polls.advance(0.01)  # refused again: it keeps polling
        await polls.wait_for_sleepers()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert not waiter.held
        assert polls.sleepers == ()
    async with FileLock(path, timeout=0):
        pass


def test_filelock_content_is_irrelevant(tmp_path: Path) -> None:
    """An empty or garbage lock file (a crashed writer's leftover) never blocks anyone."""
    for content in (b"", b"\x00garbage", b"99999999\n"):
        path = tmp_path / "x.lock"
        path.write_bytes(content)
        with FileLock(path, timeout=0):
            pass


def test_filelock_is_not_reentrant_and_validates(tmp_path: Path) -> None:
    """Acquiring one FileLock twice is an error, not a deadlock; bad settings are ConfigError."""
    lock = FileLock(tmp_path / "x.lock")
    with lock, pytest.raises(errors.LeaseError):
        lock.acquire()
    with pytest.raises(errors.ConfigError):
        FileLock(tmp_path / "y.lock", timeout=-1)
    with pytest.raises(errors.ConfigError):
        FileLock(tmp_path / "y.lock", poll=0)
    with pytest.raises(errors.LeaseError):
        FileLock(tmp_path / "missing" / "dir" / "z.lock").acquire()


def test_filelock_freed_by_the_kernel_when_holder_is_killed(tmp_path: Path) -> None:
    """SIGKILLing the holding process frees the lock; the dead pid is not reported as holder."""
    path = tmp_path / "x.lock"
    proc = subprocess.Popen(
        [sys.executable, "-c", _HOLD_LOCK, str(path)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == "locked"
        with pytest.raises(errors.LeaseTimeout) as caught:
            FileLock(path, timeout=0).acquire()
        assert caught.value.holder == f"pid {proc.pid}"
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
        assert proc.stdout is not None
        proc.stdout.close()
    with FileLock(path, timeout=5, poll=0.01):
        pass


# --------------------------------------------------------------------------- #
# FileLeaseBackend


async def _acquire(
    backend: FileLeaseBackend, owner: str, mode: LeaseMode = EXCLUSIVE, ttl: float = 10.0
) -> LeaseRecord | None:
    return await backend.try_acquire("acct", owner=owner, mode=mode, ttl=ttl)


def test_file_backend_is_a_lease_backend(backend: FileLeaseBackend) -> None:
    """FileLeaseBackend satisfies the runtime-checkable LeaseBackend protocol."""
    assert isinstance(backend, LeaseBackend)
    assert isinstance(ScriptedBackend(_fake_clock()), LeaseBackend)


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("held", "wanted", "granted"),
    [
        (EXCLUSIVE, EXCLUSIVE, False),
        (EXCLUSIVE, SHARED, False),
        (SHARED, EXCLUSIVE, False),
        (SHARED, SHARED, True),
    ],
)
async def test_compatibility_matrix(
    backend: FileLeaseBackend, held: LeaseMode, wanted: LeaseMode, *, granted: bool
) -> None:
    """Only shared+shared coexist; anything with an exclusive side waits."""
    assert await _acquire(backend, "first", held) is not None
    got = await _acquire(backend, "second", wanted)
    assert (got is not None) is granted


@pytest.mark.anyio
async def test_exclusive_waits_for_every_shared_holder(backend: FileLeaseBackend) -> None:
    """An exclusive request is refused until the last shared holder releases."""
    a = await _acquire(backend, "a", SHARED)
    b = await _acquire(backend, "b", SHARED)
    assert a is not None
    assert b is not None
    await backend.release(a)
    assert await _acquire(backend, "x", EXCLUSIVE) is None
    await backend.release(b)
    assert await _acquire(backend, "x", EXCLUSIVE) is not None


@pytest.mark.anyio
async def test_same_owner_cannot_stack_claims(backend: FileLeaseBackend) -> None:
    """An owner with a live record is refused a second one (one claim per owner id)."""
    assert await _acquire(backend, "a", SHARED) is not None
    assert await _acquire(backend, "a", SHARED) is None


@pytest.mark.anyio
async def test_release_is_idempotent(backend: FileLeaseBackend, tmp_path: Path) -> None:
    """Releasing twice is harmless and removes the record file."""
    rec = await _acquire(backend, "a")
    assert rec is not None
    await backend.release(rec)
    await backend.release(rec)
    assert _files(tmp_path / "leases" / "acct") == [".lock"]
    assert await backend.holders("acct") == []


@pytest.mark.anyio
async def test_release_never_removes_someone_elses_record(
    backend: FileLeaseBackend, clock: FakeClock
) -> None:
    """A stale release leaves the successor's claim, even one by the same owner id."""
    old = await _acquire(backend, "a", ttl=1.0)
    assert old is not None
    clock.advance(2.0)
    other = await _acquire(backend, "b", ttl=1.0)
    assert other is not None
    await backend.release(old)
    assert await backend.holders("acct") == [other]
    clock.advance(2.0)
    again = await _acquire(backend, "a", ttl=10.0)
    assert again is not None
    await backend.release(old)
    assert await backend.holders("acct") == [again]


@pytest.mark.anyio
async def test_holders_lists_live_records_only(backend: FileLeaseBackend, clock: FakeClock) -> None:
    """holders() omits records past their expiry."""
    long = await _acquire(backend, "long", SHARED, ttl=10.0)
    short = await _acquire(backend, "short", SHARED, ttl=1.0)
    assert await backend.holders("acct") == [long, short]
    clock.advance(5.0)
    assert await backend.holders("acct") == [long]
    assert await backend.holders("nobody") == []


@pytest.mark.anyio
async def test_record_on_disk_round_trips(backend: FileLeaseBackend, tmp_path: Path) -> None:
    """The JSON file holds exactly the record try_acquire returned, with aware UTC datetimes."""
    rec = await backend.try_acquire(
        "acct", owner="me", mode=SHARED, ttl=30.0, purpose="codex child"
    )
    assert rec is not None
    data = json.loads((tmp_path / "leases" / "acct" / "me.json").read_text())
    assert data["mode"] == "shared"
    assert structure(data, LeaseRecord) == rec
    assert rec.acquired_at.tzinfo is not None
    assert rec.expires_at - rec.acquired_at == timedelta(seconds=30)
    assert rec.pid == os.getpid()
    assert rec.pid_start is not None  # Linux: the holder process is named exactly
    assert holder_alive(rec) is True


@pytest.mark.anyio
@pytest.mark.parametrize(
    "bad", ["", ".hidden", "..", "a/b", "a b", "x" * 129, "ünï", "-lead", "a\nb"]
)
async def test_bad_names_and_owners_are_config_errors(backend: FileLeaseBackend, bad: str) -> None:
    """Names and owners that are not safe file names raise ConfigError."""
    with pytest.raises(errors.ConfigError):
        await backend.try_acquire(bad, owner="ok", mode=EXCLUSIVE, ttl=1.0)
    with pytest.raises(errors.ConfigError):
        await backend.try_acquire("ok", owner=bad, mode=EXCLUSIVE, ttl=1.0)
    with pytest.raises(errors.ConfigError):
        await backend.holders(bad)


@pytest.mark.anyio
async def test_bad_ttl_and_settings_are_config_errors(
    backend: FileLeaseBackend, tmp_path: Path
) -> None:
    """A non-positive ttl, unknown mode or negative backend setting raises ConfigError."""
    for ttl in (0.0, -1.0, float("nan")):
        with pytest.raises(errors.ConfigError):
            await backend.try_acquire("ok", owner="ok", mode=EXCLUSIVE, ttl=ttl)
    with pytest.raises(errors.ConfigError):
        await backend.try_acquire("ok", owner="ok", mode="weird", ttl=1.0)  # type: ignore[arg-type]
    with pytest.raises(errors.ConfigError):
        FileLeaseBackend(tmp_path, lock_timeout=-1)
    with pytest.raises(errors.ConfigError):
        async with acquire_lease(backend, "ok", ttl=0):
            pass


@pytest.mark.anyio
async def test_renew_ok_extends_and_keeps_the_claim(
    backend: FileLeaseBackend, clock: FakeClock, tmp_path: Path
) -> None:
    """A renewal moves expires_at to now+ttl, keeps acquired_at, and is what is on disk."""
    rec = await _acquire(backend, "a", ttl=3.0)
    assert rec is not None
    clock.advance(2.0)
    outcome, renewed = await backend.renew(rec, 3.0)
    assert outcome is RenewOutcome.OK
    assert renewed.acquired_at == rec.acquired_at
    assert renewed.expires_at == clock.now() + timedelta(seconds=3)
    on_disk = json.loads((tmp_path / "leases" / "acct" / "a.json").read_text())
    assert structure(on_disk, LeaseRecord) == renewed


@pytest.mark.anyio
async def test_renew_lost_after_takeover(backend: FileLeaseBackend, clock: FakeClock) -> None:
    """Once another owner took over an expired lease, the old holder's renewal is LOST."""
    rec = await _acquire(backend, "a", ttl=1.0)
    assert rec is not None
    clock.advance(1.5)
    taker = await _acquire(backend, "b", ttl=10.0)
    assert taker is not None
    outcome, returned = await backend.renew(rec, 1.0)
    assert outcome is RenewOutcome.LOST
    assert returned == rec
    assert await backend.holders("acct") == [taker]


@pytest.mark.anyio
async def test_renew_lost_when_the_file_vanished(backend: FileLeaseBackend, tmp_path: Path) -> None:
    """A renewal of a record that is no longer on disk is LOST, and does not recreate it."""
    rec = await _acquire(backend, "a")
    assert rec is not None
    (tmp_path / "leases" / "acct" / "a.json").unlink()
    outcome, _ = await backend.renew(rec, 10.0)
    assert outcome is RenewOutcome.LOST
    assert await backend.holders("acct") == []


@pytest.mark.anyio
async def test_renew_lost_when_already_expired(backend: FileLeaseBackend, clock: FakeClock) -> None:
    """A renewal that comes after expiry is LOST even if nobody took the lease yet."""
    rec = await _acquire(backend, "a", ttl=1.0)
    assert rec is not None
    clock.advance(1.0)
    outcome, _ = await backend.renew(rec, 1.0)
    assert outcome is RenewOutcome.LOST


@pytest.mark.anyio
async def test_renew_lost_when_replaced_by_a_newer_claim_of_the_same_owner(
    backend: FileLeaseBackend, clock: FakeClock
) -> None:
    """A renewal of an old claim does not extend a newer acquisition by the same owner id."""
    old = await _acquire(backend, "a", ttl=1.0)
    assert old is not None
    clock.advance(2.0)
    new = await _acquire(backend, "a", ttl=1.0)
    assert new is not None
    outcome, _ = await backend.renew(old, 1.0)
    assert outcome is RenewOutcome.LOST
    assert await backend.holders("acct") == [new]


@pytest.mark.anyio
async def test_renew_transient_on_io_error(
    backend: FileLeaseBackend, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An OSError while writing is TRANSIENT, and the record on disk stays intact."""
    rec = await _acquire(backend, "a")
    assert rec is not None
    before = (tmp_path / "leases" / "acct" / "a.json").read_bytes()

    _fail_half_write(monkeypatch)
    outcome, returned = await backend.renew(rec, 10.0)
    monkeypatch.undo()
    assert outcome is RenewOutcome.TRANSIENT
    assert returned == rec
    assert (tmp_path / "leases" / "acct" / "a.json").read_bytes() == before
    assert _files(tmp_path / "leases" / "acct") == [".lock", "a.json"]
    outcome, _ = await backend.renew(rec, 10.0)
    assert outcome is RenewOutcome.OK


@pytest.mark.anyio
async def test_renew_transient_when_the_lock_is_stuck(tmp_path: Path, clock: FakeClock) -> None:
    """A renewal that cannot get the name's lock in time is TRANSIENT, not LOST."""
    backend = FileLeaseBackend(tmp_path / "leases", clock=clock, lock_timeout=0.5)
    rec = await _acquire(backend, "a")
    assert rec is not None
    with FileLock(tmp_path / "leases" / "acct" / ".lock"):
        outcome, _ = await backend.renew(rec, 10.0)
    assert outcome is RenewOutcome.TRANSIENT


def _fail_fsync(monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(fd: int) -> None:
        raise OSError(errno.EIO, "injected fsync failure")

    monkeypatch.setattr(os, "fsync", broken)


def _fail_half_write(monkeypatch: pytest.MonkeyPatch) -> None:
    real_write = os.write

    def half(fd: int, data: bytes | memoryview) -> int:
        real_write(fd, bytes(data)[: max(1, len(data) // 2)])
        raise OSError(errno.ENOSPC, "injected: disk full")

    monkeypatch.setattr(os, "write", half)


def _fail_rename(monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(src: object, dst: object) -> None:
        raise OSError(errno.EXDEV, "injected rename failure")

    monkeypatch.setattr(os, "replace", broken)


@pytest.mark.anyio
async def test_lease_writes_never_flush_to_disk(
    backend: FileLeaseBackend, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Acquire, renew and release write no fsync: a heartbeat must not wake an idle disk.

    A lease means nothing after the machine restarts, so only atomicity matters.
    """
    _fail_fsync(monkeypatch)
    record = await _acquire(backend, "a")
    assert record is not None
    outcome, renewed = await backend.renew(record, 30.0)
    assert outcome is RenewOutcome.OK
    await backend.release(renewed)


@pytest.mark.anyio
@pytest.mark.parametrize("inject", [_fail_half_write, _fail_rename])
async def test_failed_write_leaves_no_record_and_no_temp_file(
    backend: FileLeaseBackend,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    inject: Callable[[pytest.MonkeyPatch], None],
) -> None:
    """A write that fails midway raises LeaseError, leaves nothing behind, and blocks nobody."""
    inject(monkeypatch)
    with pytest.raises(errors.LeaseError) as caught:
        await _acquire(backend, "a")
    monkeypatch.undo()
    assert isinstance(caught.value.__cause__, OSError)
    assert _files(tmp_path / "leases" / "acct") == [".lock"]
    assert await _acquire(backend, "b") is not None


@pytest.mark.anyio
async def test_orphan_temp_files_are_cleaned_under_the_lock(
    backend: FileLeaseBackend, tmp_path: Path
) -> None:
    """A temp file left by a writer that died mid-write is removed by the next acquire."""
    folder = tmp_path / "leases" / "acct"
    folder.mkdir(parents=True)
    (folder / ".dead.0123abcd.tmp").write_bytes(b'{"half')
    assert await _acquire(backend, "a") is not None
    assert _files(folder) == [".lock", "a.json"]


@pytest.mark.anyio
@pytest.mark.parametrize("content", [b"", b"{", b"\xff\xfe binary", b"x" * 70_000])
async def test_garbage_record_is_moved_aside_at_once(
    backend: FileLeaseBackend,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    content: bytes,
) -> None:
    """A record file that is not JSON (e.g. empty) never blocks: it is logged and moved aside."""
    folder = tmp_path / "leases" / "acct"
    folder.mkdir(parents=True)
    (folder / "ghost.json").write_bytes(content)
    assert await backend.holders("acct") == []
    with caplog.at_level(logging.WARNING, logger="codex_supervisor.lease"):
        assert await _acquire(backend, "a") is not None
    assert "lease.corrupt_record_discarded" in caplog.text
    assert _files(folder) == [".lock", "a.json", "ghost.json.corrupt"]


@pytest.mark.anyio
@pytest.mark.parametrize(
    "data",
    [
        {"future": "format"},
        {
            "name": "acct",
            "owner": "ghost",
            "mode": "priority",
            "pid": 1,
            "host": "h",
            "acquired_at": "2020-01-01T00:00:00+00:00",
            "expires_at": "2999-01-01T00:00:00+00:00",
        },
        {
            "name": "acct",
            "owner": "somebody-else",
            "mode": "shared",
            "pid": 1,
            "host": "h",
            "acquired_at": "2020-01-01T00:00:00+00:00",
            "expires_at": "2999-01-01T00:00:00+00:00",
        },
    ],
)
async def test_foreign_record_blocks_until_its_grace_runs_out(
    backend: FileLeaseBackend,
    clock: FakeClock,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    data: dict[str, object],
) -> None:
    """JSON we cannot understand blocks as an exclusive claim until corrupt_grace past its mtime."""
    folder = tmp_path / "leases" / "acct"
    folder.mkdir(parents=True)
    ghost = folder / "ghost.json"
    ghost.write_text(json.dumps(data))
    assert await _acquire(backend, "a", SHARED) is None
    assert await backend.holders("acct") == []
    clock.advance(backend.corrupt_grace + 1.0)
    with caplog.at_level(logging.WARNING, logger="codex_supervisor.lease"):
        assert await _acquire(backend, "a", SHARED) is not None
    assert "lease.corrupt_record_discarded" in caplog.text
    assert not ghost.exists()
    assert (folder / "ghost.json.corrupt").exists()


@pytest.mark.anyio
async def test_unreadable_own_record_renews_as_lost(
    backend: FileLeaseBackend, tmp_path: Path
) -> None:
    """If a holder's own file becomes garbage, renewal answers LOST and release leaves it."""
    rec = await _acquire(backend, "a")
    assert rec is not None
    path = tmp_path / "leases" / "acct" / "a.json"
    path.write_bytes(b"")
    outcome, _ = await backend.renew(rec, 10.0)
    assert outcome is RenewOutcome.LOST
    await backend.release(rec)
    assert path.exists()


# --------------------------------------------------------------------------- #
# Hypothesis properties

_ids = st.from_regex(r"[A-Za-z0-9][A-Za-z0-9_.@:+-]{0,30}", fullmatch=True)
_aware = st.datetimes(timezones=st.just(UTC))
_records = st.builds(
    LeaseRecord,
    name=_ids,
    owner=_ids,
    mode=st.sampled_from(LeaseMode),
    pid=st.integers(1, 2**22),
    host=st.text(max_size=30),
    acquired_at=_aware,
    expires_at=_aware,
    purpose=st.none() | st.text(max_size=30),
    pid_start=st.none() | st.text(max_size=50),
)


@given(_records)
def test_record_round_trips_through_the_converter(record: LeaseRecord) -> None:
    """unstructure → JSON text → structure gives back an equal record."""
    text = json.dumps(unstructure(record))
    assert structure(json.loads(text), LeaseRecord) == record


_OWNERS = ["a", "b", "c"]
_TTLS = [1.0, 4.0]
_ops = st.one_of(
    st.tuples(
        st.just("acquire"),
        st.sampled_from(_OWNERS),
        st.sampled_from(LeaseMode),
        st.sampled_from(_TTLS),
    ),
    st.tuples(st.just("release"), st.sampled_from(_OWNERS)),
    st.tuples(st.just("renew"), st.sampled_from(_OWNERS), st.sampled_from(_TTLS)),
    st.tuples(st.just("advance"), st.floats(0.25, 5.0)),
)


async def _run_ops(ops: list[tuple[object, ...]]) -> None:
    clock = _fake_clock()
    with tempfile.TemporaryDirectory() as tmp:
        backend = FileLeaseBackend(tmp, clock=clock)
        held: dict[str, LeaseRecord] = {}
        for op in ops:
            now = clock.now()
            live = {o: r for o, r in held.items() if not r.expired(now)}
            if op[0] == "acquire":
                _, owner, mode, ttl = op
                assert isinstance(owner, str)
                assert isinstance(mode, LeaseMode)
                assert isinstance(ttl, float)
                blocked = any(
                    o == owner or not (r.mode is SHARED and mode is SHARED) for o, r in live.items()
                )
                got = await backend.try_acquire("x", owner=owner, mode=mode, ttl=ttl)
                assert (got is None) is blocked, (op, live)
                if got is not None:
                    held[owner] = got
            elif op[0] == "release" and op[1] in held:
                await backend.release(held.pop(str(op[1])))
            elif op[0] == "renew" and op[1] in held:
                owner, ttl = str(op[1]), op[2]
                assert isinstance(ttl, float)
                outcome, rec = await backend.renew(held[owner], ttl)
                expected = RenewOutcome.OK if owner in live else RenewOutcome.LOST
                assert outcome is expected, (op, held[owner], now)
                if outcome is RenewOutcome.OK:
                    held[owner] = rec
                else:
                    del held[owner]
            elif op[0] == "advance":
                assert isinstance(op[1], float)
                clock.advance(op[1])
            now = clock.now()
            live_now = [r for r in held.values() if not r.expired(now)]
            exclusive = [r for r in live_now if r.mode is EXCLUSIVE]
            assert len(exclusive) <= 1
            assert not exclusive or len(live_now) == 1
            on_disk = await backend.holders("x")
            assert sorted(on_disk, key=lambda r: r.owner) == sorted(live_now, key=lambda r: r.owner)


@settings(max_examples=60, deadline=None)
@given(st.lists(_ops, max_size=25))
def test_operation_sequences_never_yield_two_exclusive_holders(
    ops: list[tuple[object, ...]],
) -> None:
    """Any acquire/renew/release/time sequence matches the model: one exclusive or many shared."""
    asyncio.run(_run_ops(ops))


# --------------------------------------------------------------------------- #
# acquire_lease and the heartbeat


@pytest.mark.anyio
async def test_acquire_lease_holds_and_releases(tmp_path: Path) -> None:
    """The block holds a live record; leaving it releases the lease."""
    backend = FileLeaseBackend(tmp_path)
    async with acquire_lease(backend, "acct", purpose="test") as lease:
        assert isinstance(lease, Lease)
        assert await backend.holders("acct") == [lease.record]
        assert lease.record.purpose == "test"
        assert not lease.lost
        assert lease.lost_reason is None
        assert lease.mode is EXCLUSIVE
    assert lease.released
    assert await backend.holders("acct") == []


@pytest.mark.anyio
async def test_default_owner_is_host_pid_random(tmp_path: Path) -> None:
    """Default owners are ``<host>-<pid>-<hex>``, unique per acquisition."""
    backend = FileLeaseBackend(tmp_path)
    async with (
        acquire_lease(backend, "a", mode=SHARED) as one,
        acquire_lease(backend, "a", mode=SHARED) as two,
    ):
        assert one.owner != two.owner
    assert re.fullmatch(rf".+-{os.getpid()}-[0-9a-f]{{8}}", one.owner)


@pytest.mark.anyio
async def test_body_exception_propagates_and_releases(tmp_path: Path) -> None:
    """An exception in the block propagates unchanged and the lease is still released."""
    backend = FileLeaseBackend(tmp_path)
    with pytest.raises(KeyError):
        async with acquire_lease(backend, "acct"):
            raise KeyError("boom")
    assert await backend.holders("acct") == []


@pytest.mark.anyio
async def test_release_failure_is_logged_not_raised(
    clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    """A failing release is logged at WARNING and never replaces the body's exception."""
    backend = ScriptedBackend(clock, release_error=errors.LeaseError("disk gone"))
    with caplog.at_level(logging.WARNING, logger="codex_supervisor.lease"):
        with pytest.raises(ValueError, match="body"):
            async with acquire_lease(backend, "acct", clock=clock):
                raise ValueError("body")
        async with acquire_lease(backend, "acct", clock=clock):
            pass
    assert caplog.text.count("lease.release_failed") == 2


@pytest.mark.anyio
async def test_explicit_release_is_early_and_idempotent(tmp_path: Path) -> None:
    """Lease.release() frees the lease inside the block; leaving the block is then a no-op."""
    backend = FileLeaseBackend(tmp_path)
    async with acquire_lease(backend, "acct") as lease:
        await lease.release()
        assert lease.released
        assert await backend.holders("acct") == []
        async with acquire_lease(backend, "acct", timeout=0):
            pass
        await lease.release()


@pytest.mark.anyio
async def test_timeout_names_the_holder(tmp_path: Path) -> None:
    """Waiting past the timeout raises LeaseTimeout naming the current holder."""
    backend = FileLeaseBackend(tmp_path)
    async with acquire_lease(backend, "acct", owner="alice-1"):
        with pytest.raises(errors.LeaseTimeout) as caught:
            async with acquire_lease(backend, "acct", timeout=0.1, poll=0.01):
                pass
    assert isinstance(caught.value, TimeoutError)
    assert caught.value.name == "acct"
    assert caught.value.holder is not None
    assert "alice-1" in caught.value.holder
    assert str(os.getpid()) in caught.value.holder


@pytest.mark.anyio
async def test_waiter_gets_the_lease_when_released(tmp_path: Path) -> None:
    """A waiting acquire_lease proceeds as soon as the holder leaves; shared holders coexist."""
    backend = FileLeaseBackend(tmp_path)
    release = asyncio.Event()
    got_exclusive = asyncio.Event()

    async def shared_holder() -> None:
        async with acquire_lease(backend, "acct", mode=SHARED):
            await release.wait()

    polls = FakeClock()

    async def exclusive_waiter() -> None:
        async with acquire_lease(backend, "acct", timeout=30, poll=0.01, clock=polls):
            got_exclusive.set()

    holders = [asyncio.create_task(shared_holder()) for _ in range(2)]
    await _until(lambda: len(list((tmp_path / "acct").glob("*.json"))) == 2)
    waiter = asyncio.create_task(exclusive_waiter())
    for _ in range(3):  # refused poll after poll while the shared holders stay
        await polls.wait_for_sleepers()
        polls.advance(0.01)
    await polls.wait_for_sleepers()
    assert not got_exclusive.is_set()
    release.set()
    await asyncio.gather(*holders)
    polls.advance(0.01)  # the next poll after they left
    await asyncio.wait_for(waiter, 10)
    assert got_exclusive.is_set()


@pytest.mark.anyio
async def test_cancelled_wait_leaves_no_record(tmp_path: Path) -> None:
    """Cancelling acquire_lease while it waits leaves only the holder's record."""
    backend = FileLeaseBackend(tmp_path)
    async with acquire_lease(backend, "acct") as held:
        polls = FakeClock()

        async def wait_for_it() -> None:
            async with acquire_lease(backend, "acct", timeout=30, poll=0.01, clock=polls):
                pytest.fail("acquired a held lease")

        task = asyncio.create_task(wait_for_it())
        await polls.wait_for_sleepers()
        polls.advance(0.01)  # refused again: it keeps polling
        await polls.wait_for_sleepers()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert await backend.holders("acct") == [held.record]


@pytest.mark.anyio
async def test_heartbeat_updates_the_record(tmp_path: Path) -> None:
    """The heartbeat renews at ttl/3, so Lease.record's expiry moves forward."""
    backend = FileLeaseBackend(tmp_path)
    async with acquire_lease(backend, "acct", ttl=0.3) as lease:
        first = lease.record
        await _until(lambda: lease.record.expires_at > first.expires_at, limit=5)
        assert lease.record.acquired_at == first.acquired_at
        assert await backend.holders("acct") == [lease.record]


@pytest.mark.anyio
async def test_describe_writes_the_new_purpose_with_the_next_renewal(tmp_path: Path) -> None:
    """Lease.describe: others read the new purpose once the heartbeat renewed; it stays."""
    backend = FileLeaseBackend(tmp_path)
    async with acquire_lease(backend, "acct", ttl=0.3, purpose="codex tui in /w") as lease:
        assert [r.purpose for r in await backend.holders("acct")] == ["codex tui in /w"]
        lease.describe("codex tui in /w, session s-1")
        await _until(lambda: lease.record.purpose == "codex tui in /w, session s-1", limit=5)
        [stored] = await backend.holders("acct")
        assert stored.purpose == "codex tui in /w, session s-1"
        # Later renewals keep it (they write what is stored).
        renewed = lease.record.expires_at
        await _until(lambda: lease.record.expires_at > renewed, limit=5)
        assert [r.purpose for r in await backend.holders("acct")] == [
            "codex tui in /w, session s-1"
        ]
        assert lease.record.acquired_at == stored.acquired_at  # the same claim


@pytest.mark.anyio
async def test_describe_leaves_a_backend_without_purpose_renewing_as_before(
    tmp_path: Path,
) -> None:
    """A backend written before renew took purpose= keeps its lease (and its first purpose)."""

    class OlderBackend(FileLeaseBackend):
        async def renew(  # type: ignore[override]
            self, record: LeaseRecord, ttl: float
        ) -> tuple[RenewOutcome, LeaseRecord]:
            return await super().renew(record, ttl)

    backend = OlderBackend(tmp_path)
    async with acquire_lease(backend, "acct", ttl=0.3, purpose="codex exec in /w") as lease:
        lease.describe("codex exec in /w, session s-1")
        first = lease.record
        for _ in range(3):  # renewals go on
            renewed = lease.record.expires_at
            await _until(lambda: lease.record.expires_at > renewed, limit=5)  # noqa: B023
        assert not lease.lost
        assert lease.record.acquired_at == first.acquired_at
        assert [r.purpose for r in await backend.holders("acct")] == ["codex exec in /w"]


@pytest.mark.anyio
async def test_on_lost_called_once_and_never_raised(
    clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    """A LOST renewal calls on_lost once; its exception is logged and the heartbeat ends cleanly."""
    backend = ScriptedBackend(clock, outcomes=[RenewOutcome.LOST])
    calls: list[Lease] = []

    def on_lost(lease: Lease) -> None:
        calls.append(lease)
        raise RuntimeError("hook failed")

    with caplog.at_level(logging.WARNING, logger="codex_supervisor.lease"):
        async with acquire_lease(backend, "acct", ttl=3.0, on_lost=on_lost, clock=clock) as lease:
            await _until(lambda: lease.lost)
            task = lease._heartbeat
            assert task is not None
            await asyncio.wait({task}, timeout=5)
            assert task.done()
            assert not task.cancelled()
            assert task.exception() is None
    assert calls == [lease]
    assert backend.renew_calls == 1
    assert lease.lost_reason is not None
    assert "lease.lost" in caplog.text
    assert "lease.on_lost_failed" in caplog.text
    assert backend.released == [lease.record]


@pytest.mark.anyio
async def test_lost_when_the_record_is_removed(tmp_path: Path, clock: FakeClock) -> None:
    """Deleting a held record from disk makes the next heartbeat report the lease lost."""
    backend = FileLeaseBackend(tmp_path, clock=clock)
    lost = asyncio.Event()
    async with acquire_lease(
        backend, "acct", ttl=3.0, clock=clock, on_lost=lambda _: lost.set()
    ) as lease:
        (tmp_path / "acct" / f"{lease.owner}.json").unlink()
        await asyncio.wait_for(lost.wait(), 10)
        assert lease.lost


@pytest.mark.anyio
async def test_transient_failures_past_expiry_are_a_loss(clock: FakeClock) -> None:
    """Renewals that keep failing transiently until the lease expires report it lost, once."""
    backend = ScriptedBackend(clock, outcomes=[RenewOutcome.TRANSIENT])
    calls: list[Lease] = []
    async with acquire_lease(backend, "acct", ttl=3.0, clock=clock, on_lost=calls.append) as lease:
        await _until(lambda: lease.lost)
        assert lease.lost_reason is not None
        assert "kept failing" in lease.lost_reason
        assert clock.monotonic() >= 3.0
    assert len(calls) == 1
    assert backend.renew_calls >= 2


@pytest.mark.anyio
async def test_transient_failures_then_recovery_keep_the_lease(clock: FakeClock) -> None:
    """A TRANSIENT renewal is retried; one that succeeds before expiry keeps the lease."""
    backend = ScriptedBackend(
        clock, outcomes=[RenewOutcome.TRANSIENT, RenewOutcome.TRANSIENT, RenewOutcome.OK]
    )
    async with acquire_lease(backend, "acct", ttl=3.0, clock=clock) as lease:
        await _until(lambda: backend.renew_calls >= 5)
        assert not lease.lost


@pytest.mark.anyio
async def test_backend_raising_on_renew_is_not_raised(
    clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    """A backend raising from renew counts as transient; the loss is reported, not raised."""
    backend = ScriptedBackend(clock, renew_error=ConnectionError("redis down"))
    with caplog.at_level(logging.WARNING, logger="codex_supervisor.lease"):
        async with acquire_lease(backend, "acct", ttl=3.0, clock=clock) as lease:
            await _until(lambda: lease.lost)
    assert "lease.renew_error" in caplog.text


@attrs.define
class GatedBackend(ScriptedBackend):
    """A ScriptedBackend whose renewals wait until the test opens the gate."""

    gate: asyncio.Event = attrs.field(factory=asyncio.Event)
    entered: int = 0

    async def renew(self, record: LeaseRecord, ttl: float) -> tuple[RenewOutcome, LeaseRecord]:
        self.entered += 1
        await self.gate.wait()
        return await super().renew(record, ttl)


@pytest.mark.anyio
async def test_ensure_held_passes_while_renewals_succeed(clock: FakeClock) -> None:
    """A lease that keeps renewing passes the foreground check, again and again."""
    backend = ScriptedBackend(clock)
    async with acquire_lease(backend, "acct", ttl=3.0, clock=clock) as lease:
        await _until(lambda: backend.renew_calls >= 3)
        lease.ensure_held()
        assert not lease.lost


@pytest.mark.anyio
async def test_ensure_held_raises_lease_lost_and_leaving_the_block_does_not(
    clock: FakeClock,
) -> None:
    """After a reported loss ensure_held raises LeaseLost; the block itself still ends normally."""
    backend = ScriptedBackend(clock, outcomes=[RenewOutcome.LOST])
    async with acquire_lease(backend, "acct", ttl=3.0, clock=clock) as lease:
        await _until(lambda: lease.lost)
        with pytest.raises(errors.LeaseLost) as info:
            lease.ensure_held()
        body_finished = True
    assert body_finished
    assert info.value.name == "acct"
    assert info.value.owner == lease.owner
    assert info.value.reason == lease.lost_reason
    assert isinstance(info.value, errors.LeaseError)
    assert backend.released == [lease.record]


@pytest.mark.anyio
async def test_ensure_held_raises_past_the_local_deadline_while_a_renewal_hangs(
    clock: FakeClock,
) -> None:
    """A renewal stuck past the lease's local deadline fails the check before any loss is known."""
    backend = GatedBackend(clock)
    async with acquire_lease(backend, "acct", ttl=3.0, clock=clock) as lease:
        await _until(lambda: backend.entered == 1)
        lease.ensure_held()  # one second in: the old record surely still holds
        clock.advance(2.5)
        with pytest.raises(errors.LeaseLost, match="no renewal confirmed"):
            lease.ensure_held()
        assert not lease.lost  # the renewal in flight may still succeed...
        backend.gate.set()
        await _until(lambda: backend.renew_calls >= 3)
        lease.ensure_held()  # ...and once it and the next ones have, the check passes again
        assert not lease.lost


@pytest.mark.anyio
async def test_ensure_held_on_a_released_lease_is_a_lease_error(clock: FakeClock) -> None:
    """A lease given back is not held: ensure_held says so with a LeaseError, not LeaseLost."""
    backend = ScriptedBackend(clock)
    async with acquire_lease(backend, "acct", ttl=3.0, clock=clock) as lease:
        pass
    with pytest.raises(errors.LeaseError, match="released") as info:
        lease.ensure_held()
    assert not isinstance(info.value, errors.LeaseLost)


@pytest.mark.anyio
async def test_ensure_held_sees_a_removed_record(tmp_path: Path, clock: FakeClock) -> None:
    """On the file backend, a record deleted under a holder makes ensure_held raise LeaseLost."""
    backend = FileLeaseBackend(tmp_path, clock=clock)
    async with acquire_lease(backend, "acct", ttl=3.0, clock=clock) as lease:
        lease.ensure_held()
        (tmp_path / "acct" / f"{lease.owner}.json").unlink()
        await _until(lambda: lease.lost)
        with pytest.raises(errors.LeaseLost, match="acct"):
            lease.ensure_held()


_TRY_FOR = """
import asyncio, sys
from codex_supervisor.errors import LeaseTimeout
from codex_supervisor.lease import FileLeaseBackend, acquire_lease

async def main():
    try:
        async with acquire_lease(
            FileLeaseBackend(sys.argv[1]), "acct", timeout=float(sys.argv[2]), poll=0.02
        ):
            print("acquired")
    except LeaseTimeout:
        print("timeout")

asyncio.run(main())
"""


@pytest.mark.anyio
async def test_heartbeat_keeps_a_live_holder_from_expiring(tmp_path: Path) -> None:
    """With ttl 0.6 s, another process trying for 2 s (> 3 TTLs) never gets the held lease."""
    backend = FileLeaseBackend(tmp_path)
    async with acquire_lease(backend, "acct", ttl=0.6) as lease:
        first = lease.record
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-c", _TRY_FOR, str(tmp_path), "2.0", stdout=subprocess.PIPE
        )
        out, _ = await asyncio.wait_for(proc.communicate(), 60)
        assert out.decode().strip() == "timeout"
        assert not lease.lost
        assert lease.record.expires_at > first.expires_at + timedelta(seconds=1)


# --------------------------------------------------------------------------- #
# The multi-process torture test

_TORTURE_WORKER = """
import asyncio, os, random, sys, time
from codex_supervisor.lease import FileLeaseBackend, acquire_lease

async def main(root, journal, ttl, stop_at):
    backend = FileLeaseBackend(root)
    fd = os.open(journal, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    pid = os.getpid()
    rng = random.Random(pid)
    while time.monotonic() < stop_at:
        async with acquire_lease(backend, "torture", ttl=ttl, timeout=60, poll=0.01) as lease:
            os.write(fd, f"start {pid} {time.monotonic():.6f}\\n".encode())
            # Mostly a few ms; now and then longer than the TTL, so the
            # heartbeat has to keep the lease alive while it is held.
            hold = ttl * 1.2 if rng.random() < 0.03 else rng.uniform(0.002, 0.02)
            await asyncio.sleep(hold)
            tag = "lost" if lease.lost else "end"
            os.write(fd, f"{tag} {pid} {time.monotonic():.6f}\\n".encode())
        await asyncio.sleep(rng.uniform(0.0, 0.01))

asyncio.run(main(sys.argv[1], sys.argv[2], 1.0, time.monotonic() + 60))
"""


def _journal(path: Path) -> list[tuple[str, int, float]]:
    entries = []
    for line in path.read_text().splitlines():
        kind, pid, stamp = line.split()
        entries.append((kind, int(pid), float(stamp)))
    return entries


@pytest.fixture
def spawn_worker(tmp_path: Path) -> Iterator[Callable[[], subprocess.Popen[bytes]]]:
    """Start torture workers; every one still running is SIGKILLed and reaped afterwards."""
    script = tmp_path / "worker.py"
    script.write_text(_TORTURE_WORKER)
    started: list[subprocess.Popen[bytes]] = []

    def spawn() -> subprocess.Popen[bytes]:
        log = (tmp_path / f"worker-{len(started)}.log").open("wb")
        proc = subprocess.Popen(
            [
                sys.executable,
                str(script),
                str(tmp_path / "leases"),
                str(tmp_path / "journal"),
                "1.0",
            ],
            stdout=log,
            stderr=log,
        )
        log.close()
        started.append(proc)
        return proc

    yield spawn
    for proc in started:
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=30)


def test_torture_many_processes_one_exclusive_lease(
    tmp_path: Path, spawn_worker: Callable[[], subprocess.Popen[bytes]]
) -> None:
    """Four processes on one lease, holders SIGKILLed: never two holders, recovery in TTL."""
    ttl = 1.0
    seed = int.from_bytes(os.urandom(4), "big")
    rng = random.Random(seed)
    journal = tmp_path / "journal"
    journal.touch()
    workers = [spawn_worker() for _ in range(4)]
    _until_sync(lambda: sum(e[0] == "start" for e in _journal(journal)) >= 5, timeout=20)

    kills: dict[int, tuple[float, float]] = {}
    stop_killing = time.monotonic() + 7.0
    while time.monotonic() < stop_killing:
        time.sleep(rng.uniform(0.3, 0.9))  # a random moment to strike, not a wait
        victim = rng.choice(workers)
        if len(kills) % 2 == 0:
            # Aim at whoever holds the lease now, to exercise takeover after expiry.
            def holder_found() -> bool:
                nonlocal victim
                last = _journal(journal)[-1]
                alive = {w.pid: w for w in workers}
                if last[0] == "start" and last[1] in alive:
                    victim = alive[last[1]]
                    return True
                return False

            _until_sync(holder_found, timeout=10)
        before = time.monotonic()
        victim.send_signal(signal.SIGKILL)
        after = time.monotonic()
        victim.wait(timeout=30)
        kills[victim.pid] = (before, after)
        workers.remove(victim)
        workers.append(spawn_worker())

    # Run until the lease has been taken again after the last kill.
    last_kill = max(after for _, after in kills.values())
    _until_sync(
        lambda: any(e[0] == "start" and e[2] > last_kill for e in _journal(journal)),
        timeout=ttl + ttl / 3 + 10,
    )
    for w in workers:
        assert w.poll() is None, f"worker {w.pid} died on its own (see worker-*.log)"

    entries = _journal(journal)
    holder: tuple[int, float] | None = None
    recoveries = []
    context = f"seed={seed} kills={kills}"
    for kind, pid, stamp in entries:
        assert kind != "lost", f"{pid} lost its lease while holding it ({context})"
        if kind == "end":
            assert holder is not None
            assert holder[0] == pid, f"end by {pid} while {holder} holds ({context})"
            holder = None
            continue
        if holder is not None:
            dead, dead_start = holder
            assert dead in kills, f"{pid} started at {stamp} while {dead} held ({context})"
            killed_before, killed_after = kills[dead]
            assert stamp >= killed_before, f"successor before the kill ({context})"
            # The dead holder's record was written just before its "start"
            # line and lives at least one TTL: the successor waited for it.
            assert stamp >= dead_start + ttl - 0.25, f"lease stolen early ({context})"
            recoveries.append(stamp - killed_after)
        holder = (pid, stamp)

    assert sum(kind == "start" for kind, _, _ in entries) >= 20
    assert recoveries, f"no holder was killed mid-hold ({context})"
    # Recovery bound: TTL + one heartbeat interval, plus generous slack for
    # process scheduling on a loaded machine.
    assert max(recoveries) <= ttl + ttl / 3 + 3.0, (recoveries, context)


# --------------------------------------------------------------------------- #
# A lapsed lease: shared ones are taken again, exclusive ones stay lost


@attrs.define
class _GatedRenewals:
    """A file backend whose renewals wait until the test opens the gate."""

    inner: FileLeaseBackend
    gate: asyncio.Event = attrs.field(factory=asyncio.Event)
    entered: int = 0

    async def try_acquire(
        self,
        name: str,
        *,
        owner: str,
        mode: LeaseMode,
        ttl: float,
        purpose: str | None = None,
        replaces: LeaseRecord | None = None,
    ) -> LeaseRecord | None:
        return await self.inner.try_acquire(
            name, owner=owner, mode=mode, ttl=ttl, purpose=purpose, replaces=replaces
        )

    async def renew(self, record: LeaseRecord, ttl: float) -> tuple[RenewOutcome, LeaseRecord]:
        self.entered += 1
        await self.gate.wait()
        return await self.inner.renew(record, ttl)

    async def release(self, record: LeaseRecord) -> None:
        await self.inner.release(record)

    async def holders(self, name: str) -> list[LeaseRecord]:
        return await self.inner.holders(name)

    async def records(self, name: str) -> list[LeaseRecord]:
        return await self.inner.records(name)


@pytest.mark.anyio
async def test_a_lapsed_shared_lease_is_taken_again(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Suspended past its TTL (the clock jumps under a sleeping heartbeat): the shared lease is
    taken again as a new claim of the same owner, not reported lost."""
    clock = FakeClock(datetime.now(UTC), monotonic_start=0.0)  # moves only when told
    backend = FileLeaseBackend(tmp_path, clock=clock)
    lost: list[Lease] = []
    with caplog.at_level(logging.INFO, logger="codex_supervisor.lease"):
        async with acquire_lease(
            backend, "acct", mode=SHARED, ttl=3.0, clock=clock, purpose="codex", on_lost=lost.append
        ) as lease:
            first = lease.record
            await clock.wait_for_sleepers()
            clock.advance(10.0)  # the whole process slept through three TTLs
            await _until(lambda: lease.reacquired == 1)
            assert not lease.lost
            lease.ensure_held()
            again = lease.record
            assert (again.owner, again.mode, again.purpose) == (first.owner, SHARED, "codex")
            assert again.acquired_at > first.acquired_at  # a new claim, not the old one revived
            assert await backend.holders("acct") == [again]
    assert lost == []
    assert await backend.records("acct") == []  # released: the new record went too
    assert caplog.text.count("lease.lapsed") == 1
    assert "lease.reacquired name=acct" in caplog.text
    assert "lease.lost" not in caplog.text


@pytest.mark.anyio
async def test_a_lapsed_shared_lease_taken_exclusively_meanwhile_stays_lost(
    tmp_path: Path,
) -> None:
    """While its holder runs, a lapsed shared record refuses an exclusive claim; once someone
    judged it dead (its record gone) and an exclusive holder (a `remove`) took the name, the
    holder waking finds it lost, once, and leaves the exclusive claim alone."""
    clock = FakeClock(datetime.now(UTC), monotonic_start=0.0)
    backend = _GatedRenewals(FileLeaseBackend(tmp_path, clock=clock))
    lost: list[Lease] = []
    async with acquire_lease(
        backend, "acct", mode=SHARED, ttl=3.0, clock=clock, on_lost=lost.append
    ) as lease:
        await clock.wait_for_sleepers()
        clock.advance(10.0)
        await _until(lambda: backend.entered == 1)  # the renewal is on its way...
        # ...the record lapsed, but its holder (this process, the lease open) runs:
        assert await backend.try_acquire("acct", owner="remover", mode=EXCLUSIVE, ttl=60.0) is None
        assert await backend.records("acct") == [lease.record]
        (tmp_path / "acct" / f"{lease.owner}.json").unlink()  # judged dead by someone
        taker = await backend.try_acquire("acct", owner="remover", mode=EXCLUSIVE, ttl=60.0)
        assert taker is not None
        backend.gate.set()
        await _until(lambda: lease.lost)
        assert lease.lost_reason is not None
        assert "record is gone or was replaced" in lease.lost_reason
        assert lease.reacquired == 0
        with pytest.raises(errors.LeaseLost):
            lease.ensure_held()
        task = lease._heartbeat
        assert task is not None
        await asyncio.wait({task}, timeout=10)
        assert task.done()  # it stopped for good
    assert lost == [lease]
    assert await backend.holders("acct") == [taker]


@pytest.mark.anyio
async def test_an_exclusive_lease_that_lapsed_stays_lost(tmp_path: Path) -> None:
    """The same lapse on an exclusive lease is a loss: nobody may hold it again unseen."""
    clock = FakeClock(datetime.now(UTC), monotonic_start=0.0)
    backend = FileLeaseBackend(tmp_path, clock=clock)
    async with acquire_lease(backend, "acct", ttl=3.0, clock=clock) as lease:
        await clock.wait_for_sleepers()
        clock.advance(10.0)
        await _until(lambda: lease.lost)
        assert lease.reacquired == 0
        assert await backend.holders("acct") == []
        with pytest.raises(errors.LeaseLost):
            lease.ensure_held()


@pytest.mark.anyio
async def test_a_shared_lease_outlives_a_backend_outage_longer_than_its_ttl(
    clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    """Renewals failing past the expiry do not end a shared lease: it is taken again once the
    backend answers, without spinning meanwhile (exclusive: see the test above for loss)."""
    backend = ScriptedBackend(
        clock, outcomes=[*[RenewOutcome.TRANSIENT] * 12, RenewOutcome.LOST, RenewOutcome.OK]
    )
    with caplog.at_level(logging.WARNING, logger="codex_supervisor.lease"):
        async with acquire_lease(backend, "acct", mode=SHARED, ttl=3.0, clock=clock) as lease:
            first = lease.record
            await _until(lambda: lease.reacquired == 1)
            assert clock.monotonic() > 3.0  # it was past its expiry meanwhile
            assert not lease.lost
            await _until(lambda: backend.renew_calls >= 16)  # renewing the new record
            assert not lease.lost
            assert lease.record.acquired_at > first.acquired_at
    assert min(clock.sleeps) > 0  # never a busy loop, not even past the deadline
    assert caplog.text.count("lease.lapsed") == 1
    assert "lease.lost" not in caplog.text


_SLEEPER = "import time; time.sleep(120)"


def _record_of(pid: int, *, host: str | None = None, pid_start: str | None = None) -> LeaseRecord:
    now = datetime.now(UTC)
    return LeaseRecord(
        name="acct",
        owner="someone",
        mode=SHARED,
        pid=pid,
        host=socket.gethostname() if host is None else host,
        acquired_at=now - timedelta(minutes=2),
        expires_at=now - timedelta(minutes=1),
        pid_start=pid_start,
    )


def _proc_state(pid: int) -> str:
    return Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0]


@pytest.mark.anyio
async def test_holder_alive_tells_a_suspended_holder_from_a_gone_one(
    backend: FileLeaseBackend,
) -> None:
    """A lapsed record: its stopped process runs; a zombie, a reaped pid, a reused pid (another
    start) do not; another host's record cannot be judged."""
    mine = await backend.try_acquire("acct", owner="me", mode=SHARED, ttl=1.0)
    assert mine is not None
    assert holder_alive(mine) is True
    assert holder_alive(attrs.evolve(mine, pid_start="another-boot/123")) is False
    # This boot of this machine, whatever its host name says now (renamed while suspended):
    assert holder_alive(attrs.evolve(mine, host=mine.host + "-renamed")) is True
    # Another machine (another boot, another name), or no start to tell: cannot be judged.
    other = attrs.evolve(mine, host=mine.host + "-elsewhere", pid_start="another-boot/123")
    assert holder_alive(other) is None
    assert holder_alive(attrs.evolve(mine, host=mine.host + "-elsewhere", pid_start=None)) is None
    assert holder_alive(attrs.evolve(mine, pid_start=None)) is True  # an older record

    proc = subprocess.Popen([sys.executable, "-c", _SLEEPER])
    try:
        proc.send_signal(signal.SIGSTOP)
        _until_sync(lambda: _proc_state(proc.pid) == "T")
        stopped = attrs.evolve(mine, pid=proc.pid, pid_start=_start_of(proc.pid))
        assert holder_alive(stopped) is True
        proc.kill()
        _until_sync(lambda: _proc_state(proc.pid) == "Z")  # dead, not reaped yet
        assert holder_alive(stopped) is False
    finally:
        proc.kill()
        proc.wait(timeout=60)
    assert holder_alive(stopped) is False
    assert holder_alive(_record_of(proc.pid)) is False


def _start_of(pid: int) -> str | None:
    """The start stamp a record written by ``pid`` carries."""
    return lease_module._pid_start.__wrapped__(pid)


@pytest.mark.anyio
async def test_records_lists_lapsed_claims_until_someone_takes_over(
    backend: FileLeaseBackend, clock: FakeClock
) -> None:
    """records() shows an expired record that holders() hides, until an acquire removes it."""
    old = await _acquire(backend, "old", SHARED, ttl=1.0)
    clock.advance(2.0)
    assert await backend.holders("acct") == []
    assert await backend.records("acct") == [old]
    new = await _acquire(backend, "new", SHARED, ttl=10.0)
    assert await backend.records("acct") == [new]
    assert await backend.records("nobody") == []


# --------------------------------------------------------------------------- #
# A lapsed record whose holder still runs is still a claim (never taken over)


@pytest.fixture
def suspended() -> Iterator[subprocess.Popen[bytes]]:
    """Another process, stopped (a Codex suspended by Ctrl-Z); killed and reaped at the end."""
    proc = subprocess.Popen([sys.executable, "-c", _SLEEPER])
    try:
        proc.send_signal(signal.SIGSTOP)
        _until_sync(lambda: _proc_state(proc.pid) == "T")
        yield proc
    finally:
        proc.kill()
        proc.wait(timeout=60)


async def _lapsed_record_of(
    backend: FileLeaseBackend,
    clock: FakeClock,
    proc: subprocess.Popen[bytes],
    owner: str,
    mode: LeaseMode,
) -> LeaseRecord:
    """A record of ``owner`` as process ``proc`` would have written it, lapsed by now."""
    written = await _acquire(backend, owner, mode, ttl=1.0)
    theirs = attrs.evolve(written, pid=proc.pid, pid_start=_start_of(proc.pid))
    (backend.root / "acct" / f"{owner}.json").write_text(json.dumps(unstructure(theirs)))
    clock.advance(2.0)
    assert await backend.holders("acct") == []
    return theirs


@pytest.mark.anyio
async def test_a_shared_acquire_keeps_the_lapsed_record_of_a_running_holder(
    backend: FileLeaseBackend, clock: FakeClock, suspended: subprocess.Popen[bytes]
) -> None:
    """Another session's shared occupy never erases the record of a suspended holder; an
    exclusive claim waits for it; once its process is gone it is garbage, taken over."""
    theirs = await _lapsed_record_of(backend, clock, suspended, "codex", SHARED)
    other = await _acquire(backend, "other", SHARED, ttl=10.0)
    assert await backend.records("acct") == [theirs, other]
    await backend.release(other)
    assert await backend.records("acct") == [theirs]
    assert await backend.try_acquire("acct", owner="remove", mode=EXCLUSIVE, ttl=10.0) is None
    assert await backend.records("acct") == [theirs]

    suspended.kill()
    suspended.wait(timeout=60)
    remover = await _acquire(backend, "remove", EXCLUSIVE, ttl=10.0)
    assert await backend.records("acct") == [remover]


@pytest.mark.anyio
async def test_a_lapsed_exclusive_record_of_a_running_holder_blocks_everyone(
    backend: FileLeaseBackend, clock: FakeClock, suspended: subprocess.Popen[bytes]
) -> None:
    """A `remove` or a probe suspended mid-way still acts as it resumes: nobody occupies the
    name meanwhile (it finds its own claim lost when it renews)."""
    theirs = await _lapsed_record_of(backend, clock, suspended, "probe", EXCLUSIVE)
    for mode in (SHARED, EXCLUSIVE):
        assert await backend.try_acquire("acct", owner="late", mode=mode, ttl=10.0) is None
    assert await backend.records("acct") == [theirs]
    outcome, _ = await backend.renew(theirs, 10.0)
    assert outcome is RenewOutcome.LOST  # its exclusive claim lapsed: lost, never revived


@pytest.mark.anyio
async def test_a_timeout_names_a_lapsed_holder_that_runs(
    tmp_path: Path, clock: FakeClock, suspended: subprocess.Popen[bytes]
) -> None:
    """The LeaseTimeout of a waiter names the suspended holder that keeps it waiting."""
    backend = FileLeaseBackend(tmp_path, clock=clock)
    await _lapsed_record_of(backend, clock, suspended, "codex", SHARED)
    with pytest.raises(errors.LeaseTimeout, match=rf"codex \(pid {suspended.pid} "):
        async with acquire_lease(backend, "acct", timeout=0.2, clock=clock):
            pytest.fail("took the name of a running holder")


@pytest.mark.anyio
async def test_own_lapsed_records_count_only_while_their_lease_is_open(
    tmp_path: Path,
) -> None:
    """This process's lapsed record is a claim while its Lease block runs; a record it wrote
    without a lease (or failed to release) is garbage once lapsed, so nothing is stuck on it."""
    clock = FakeClock(datetime.now(UTC), monotonic_start=0.0)
    backend = _GatedRenewals(FileLeaseBackend(tmp_path, clock=clock))
    async with acquire_lease(backend, "acct", mode=SHARED, ttl=3.0, clock=clock) as lease:
        await clock.wait_for_sleepers()
        clock.advance(10.0)
        await _until(lambda: backend.entered == 1)  # lapsed, its renewal held at the gate
        assert claim_alive(lease.record)
        assert await backend.try_acquire("acct", owner="x", mode=EXCLUSIVE, ttl=1.0) is None
        stray = await backend.try_acquire("acct", owner="stray", mode=SHARED, ttl=1.0)
        assert stray is not None
        clock.advance(2.0)
        assert not claim_alive(stray)
        assert claim_alive(lease.record)
        backend.gate.set()
        await _until(lambda: lease.reacquired == 1)
        assert not lease.lost
    assert not claim_alive(lease.record)  # the block is over
    taker = await backend.try_acquire("acct", owner="x", mode=EXCLUSIVE, ttl=1.0)
    assert taker is not None
    assert await backend.records("acct") == [taker]  # the stray record went as garbage


@pytest.mark.anyio
async def test_a_retake_needs_the_lapsed_record_unchanged(
    backend: FileLeaseBackend, clock: FakeClock
) -> None:
    """try_acquire(replaces=...) takes a lapsed claim again only while its record is on disk as
    it was: not once gone, not once replaced; never for another owner's record."""
    first = await _acquire(backend, "me", SHARED, ttl=1.0)
    clock.advance(2.0)
    again = await backend.try_acquire("acct", owner="me", mode=SHARED, ttl=5.0, replaces=first)
    assert again is not None
    assert again.acquired_at > first.acquired_at
    assert await backend.records("acct") == [again]
    # The older claim is replaced now: it cannot be taken again.
    assert (
        await backend.try_acquire("acct", owner="me", mode=SHARED, ttl=5.0, replaces=first) is None
    )
    assert await backend.records("acct") == [again]
    await backend.release(again)
    assert (
        await backend.try_acquire("acct", owner="me", mode=SHARED, ttl=5.0, replaces=again) is None
    )
    assert await backend.records("acct") == []
    with pytest.raises(errors.ConfigError, match="same name and owner"):
        await backend.try_acquire("acct", owner="you", mode=SHARED, ttl=5.0, replaces=again)


@pytest.mark.anyio
async def test_a_lapsed_shared_lease_whose_record_is_gone_is_lost_not_retaken(
    tmp_path: Path,
) -> None:
    """Its record erased during the lapse (someone judged the holder dead, then maybe acted):
    lost for good, even though nothing blocks a new claim now."""
    clock = FakeClock(datetime.now(UTC), monotonic_start=0.0)
    backend = _GatedRenewals(FileLeaseBackend(tmp_path, clock=clock))
    lost: list[Lease] = []
    async with acquire_lease(
        backend, "acct", mode=SHARED, ttl=3.0, clock=clock, on_lost=lost.append
    ) as lease:
        await clock.wait_for_sleepers()
        clock.advance(10.0)
        await _until(lambda: backend.entered == 1)
        (tmp_path / "acct" / f"{lease.owner}.json").unlink()
        backend.gate.set()
        await _until(lambda: lease.lost)
        assert lease.reacquired == 0
        assert await backend.records("acct") == []  # not written again
        with pytest.raises(errors.LeaseLost, match="gone or was replaced"):
            lease.ensure_held()
    assert lost == [lease]


@pytest.mark.anyio
@pytest.mark.parametrize("verdict", ["gone", "raises", None])
async def test_a_retaken_lease_is_rechecked_before_it_counts_again(
    tmp_path: Path, verdict: str | None
) -> None:
    """recheck runs after a retake: a reason (or an error) reports the lease lost; None keeps it."""
    clock = FakeClock(datetime.now(UTC), monotonic_start=0.0)
    backend = FileLeaseBackend(tmp_path, clock=clock)
    seen: list[LeaseRecord] = []

    async def recheck(lease: Lease) -> str | None:
        seen.append(lease.record)
        if verdict == "raises":
            raise OSError("state unreadable")
        return None if verdict is None else "the account left the pool"

    lost: list[Lease] = []
    async with acquire_lease(
        backend, "acct", mode=SHARED, ttl=3.0, clock=clock, on_lost=lost.append, recheck=recheck
    ) as lease:
        first = lease.record
        await clock.wait_for_sleepers()
        clock.advance(10.0)
        await _until(lambda: lease.lost or lease.reacquired == 1)
        [retaken] = seen
        assert retaken.acquired_at > first.acquired_at
        if verdict is None:
            assert not lease.lost
            lease.ensure_held()
        else:
            assert lost == [lease]
            with pytest.raises(errors.LeaseLost, match="taken again, but"):
                lease.ensure_held()
            assert lease.reacquired == 0
            # The record stays (the holder still runs there) until the block ends.
            assert await backend.records("acct") == [retaken]
    assert await backend.records("acct") == []


@pytest.mark.anyio
async def test_confirm_asks_the_backend_where_ensure_held_cannot_know(
    tmp_path: Path,
) -> None:
    """A claim removed behind the holder's back passes ensure_held, but not confirm."""
    backend = FileLeaseBackend(tmp_path / "leases")
    async with acquire_lease(backend, "key", ttl=60.0, owner="holder") as lease:
        await lease.confirm()
        before = lease.record.expires_at
        await lease.confirm()
        assert lease.record.expires_at > before
        (record,) = await backend.holders("key")
        await backend.release(record)
        lease.ensure_held()  # local state only: still looks held
        with pytest.raises(errors.LeaseLost, match="taken over, removed or expired"):
            await lease.confirm()
        assert lease.lost
        with pytest.raises(errors.LeaseLost):
            lease.ensure_held()


@pytest.mark.anyio
async def test_confirm_raises_without_marking_lost_when_the_backend_cannot_answer() -> None:
    clock = _fake_clock()
    backend = ScriptedBackend(clock, outcomes=[RenewOutcome.TRANSIENT])
    async with acquire_lease(backend, "key", ttl=60.0, clock=clock) as lease:
        with pytest.raises(errors.LeaseLost, match="could not confirm"):
            await lease.confirm()
        assert not lease.lost
        lease.ensure_held()
