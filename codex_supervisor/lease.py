"""Locks and leases: who may touch a shared thing, and for how long.

Two mechanisms, for two kinds of claim (ARCHITECTURE.md, D6):

* :class:`FileLock` is an OS file lock (``flock`` through portalocker) for
  *short* critical sections such as a read-modify-write of the pool state. The
  kernel drops it the moment its holder dies, so it can never be stranded, and
  the lock file's content never matters (it only names the holder's pid for
  diagnostics). Lock files are never deleted: unlinking one while a waiter has
  it open would let two processes lock two different inodes of "the same" lock.
* A *lease* (:func:`acquire_lease`) is for *long* claims — a Codex child
  occupying an account, a supervisor's own liveness. It is a record with an
  owner, a mode (exclusive or shared) and a wall-clock expiry, kept alive by a
  heartbeat that renews it at a third of its TTL. A holder that dies stops
  renewing, so its claim lapses within one TTL and the next waiter takes it
  over. A lease that is lost (taken over after it expired, removed, or not
  renewable before its expiry) is reported once through ``on_lost`` and the
  :attr:`Lease.lost` property; it is never raised from the background task,
  nor on leaving the ``async with`` block. A caller about to act on its claim
  asks :meth:`Lease.ensure_held`, which raises
  :class:`~codex_supervisor.errors.LeaseLost` in the caller's own task.

  A *shared* lease is a presence claim ("a Codex child runs here"), not a
  mutual exclusion among its holders, so losing it only because it lapsed
  (its holder was suspended — SIGSTOP, a laptop asleep — for longer than the
  TTL, or the backend failed for that long) is not final: the heartbeat takes
  it again as soon as it can, as a new record of the same owner (a new
  ``acquired_at``), logged as ``lease.reacquired``. It is taken again only
  while its lapsed record is still on disk, unchanged: a record that is gone
  or replaced means someone judged the claim dead and may have acted on the
  name, so the lease is reported lost, for good. An *exclusive* lease that
  lapsed stays lost: its holder may have been unsure of its claim in the
  gap, which no later claim can undo.

  A lapsed record whose holder still runs (:func:`claim_alive`: a holder
  suspended past its TTL) still counts as held, in its mode, until its
  holder releases it or dies: no acquirer deletes it, an exclusive acquirer
  waits for it, and a shared one waits for a lapsed exclusive one. So a
  suspended holder keeps its claim across the lapse, and everyone sees it.

Storage sits behind the small :class:`LeaseBackend` protocol. The
:class:`FileLeaseBackend` keeps one JSON record per holder under a root folder
and serialises every read-modify-write of one lease name under a
:class:`FileLock`. Races it closes:

* *Stealing a renewed lease*: expiry is judged only under the name's lock, on
  the record as it is on disk then. A holder's renewal also takes the lock, so
  a taker sees either the old record or the renewed one, never a stale copy.
  A lapsed record is removed only when its holder is gone (or cannot be
  judged: another host), never while it runs, suspended or not.
* *Half-written records*: records are written whole — a temp file in the same
  folder, renamed over the record — so a crashed or failed write leaves the old
  record or none, never an empty or partial one. They are not fsynced: only a
  machine crash could lose a write, and a lease means nothing after a reboot.
* *Renewing someone else's claim*: a renewal re-reads the record under the lock
  and answers LOST when it is gone, replaced (other owner or a newer
  acquisition) or already expired, instead of resurrecting it.
* *A cancelled acquire leaving a claim behind*: each backend operation does its
  file I/O (a folder scan and one small write) with no await point
  once the lock is held, so cancellation can only land while waiting for the
  lock, before anything was written.

Expiry compares wall-clock times, so every user of one backend root must share
a clock (one machine); deadlines and the heartbeat run on the monotonic clock.

A record names its holder process by host, pid and — where the OS tells
(Linux) — the process's start (boot id and start time), so
:func:`holder_alive` can tell a lapsed record whose process still runs (a
suspended holder, about to take its lease again) from one whose process is
gone, even after the pid was reused.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import functools
import inspect
import json
import logging
import os
import re
import secrets
import socket
import stat
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import datetime, timedelta
from pathlib import Path
from types import TracebackType
from typing import Protocol, Self, final, runtime_checkable

import attrs
import portalocker

from . import errors
from ._convert import structure, unstructure
from ._fs import TEMP_SUFFIX, write_atomic
from .clock import Clock, SystemClock

__all__ = [
    "FileLeaseBackend",
    "FileLock",
    "Lease",
    "LeaseBackend",
    "LeaseMode",
    "LeaseRecord",
    "RenewOutcome",
    "acquire_lease",
    "claim_alive",
    "holder_alive",
]

logger = logging.getLogger(__name__)

# Lease names and owners become file names: a first character that is never a
# dot keeps "." / ".." / hidden temp files out of reach, and no slash can appear.
_ID_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.@:+-]{0,127}")
# A record larger than this is not one of ours; treat it as unreadable.
_MAX_RECORD_BYTES = 64 * 1024
_RECORD_SUFFIX = ".json"
_EXCLUSIVE_NOW = portalocker.LockFlags.EXCLUSIVE | portalocker.LockFlags.NON_BLOCKING
_BOOT_ID = Path("/proc/sys/kernel/random/boot_id")
# Process states of /proc/PID/stat that are no running holder: zombie, dead.
_GONE_STATES = frozenset({"Z", "X", "x"})
# (name, owner) of every lease a Lease of this process holds (its block not
# left yet): which of this process's own lapsed records are still claims.
_OPEN_LEASES: set[tuple[str, str]] = set()


def _or_system_clock(clock: Clock | None) -> Clock:
    return clock if clock is not None else SystemClock()


# --------------------------------------------------------------------------- #
# The OS file lock


@final
@attrs.define
class FileLock:
    """An exclusive OS file lock for short critical sections, sync or async.

    ``with FileLock(path):`` blocks the calling thread while polling;
    ``async with FileLock(path):`` polls with non-blocking attempts and sleeps on
    the event loop, so it never blocks other tasks. Waiting longer than
    ``timeout`` raises :class:`~codex_supervisor.errors.LeaseTimeout`. One
    instance is one holder: it is not re-entrant and not shared between threads.
    """

    path: Path = attrs.field(converter=Path)
    timeout: float = attrs.field(default=10.0, kw_only=True)
    poll: float = attrs.field(default=0.05, kw_only=True)
    clock: Clock = attrs.field(default=None, converter=_or_system_clock, kw_only=True, repr=False)
    _fd: int | None = attrs.field(default=None, init=False, repr=False)

    def __attrs_post_init__(self) -> None:
        if self.timeout < 0:
            raise errors.ConfigError(f"FileLock timeout must be >= 0, got {self.timeout!r}")
        if self.poll <= 0:
            raise errors.ConfigError(f"FileLock poll must be > 0, got {self.poll!r}")

    @property
    def held(self) -> bool:
        """Whether this instance holds the lock now."""
        return self._fd is not None

    def acquire(self) -> None:
        """Take the lock, blocking this thread until it is free or the timeout passes."""
        fd = self._open()
        try:
            deadline = self.clock.monotonic() + self.timeout
            while not (acquired := self._attempt(fd)):
                remaining = deadline - self.clock.monotonic()
                if remaining <= 0:
                    break
                time.sleep(min(self.poll, remaining))
        except BaseException:
            os.close(fd)
            raise
        self._taken_or_timeout(fd, acquired=acquired)

    async def aacquire(self) -> None:
        """Take the lock without blocking the event loop (non-blocking attempts, then sleep)."""
        fd = self._open()
        try:
            deadline = self.clock.monotonic() + self.timeout
            while not (acquired := self._attempt(fd)):
                remaining = deadline - self.clock.monotonic()
                if remaining <= 0:
                    break
                await self.clock.sleep(min(self.poll, remaining))
        except BaseException:
            # Cancelled while waiting: nothing is held, so just close the fd.
            os.close(fd)
            raise
        self._taken_or_timeout(fd, acquired=acquired)

    def release(self) -> None:
        """Give the lock back; a no-op when it is not held."""
        fd, self._fd = self._fd, None
        if fd is None:
            return
        # Clear our pid first so a waiter never names us after we let go.
        with contextlib.suppress(OSError):
            os.ftruncate(fd, 0)
        with contextlib.suppress(portalocker.exceptions.LockException, OSError):
            portalocker.unlock(fd)
        # Closing the only descriptor releases the flock even if unlock failed.
        os.close(fd)

    def __enter__(self) -> Self:
        self.acquire()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.release()

    async def __aenter__(self) -> Self:
        await self.aacquire()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.release()

    def _open(self) -> int:
        if self._fd is not None:
            raise errors.LeaseError(
                f"{self.path} is already held by this FileLock (not re-entrant)"
            )
        try:
            # O_CLOEXEC: a flock belongs to the open file description, so a
            # child that inherited the fd (a Codex process spawned while we
            # hold the lock) would keep the lock alive after we die.
            return os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        except OSError as exc:
            raise errors.LeaseError(f"cannot open lock file {self.path}: {exc}") from exc

    def _attempt(self, fd: int) -> bool:
        try:
            portalocker.lock(
                fd, portalocker.LockFlags.EXCLUSIVE | portalocker.LockFlags.NON_BLOCKING
            )
        except portalocker.exceptions.AlreadyLocked:
            return False
        except portalocker.exceptions.LockException as exc:
            raise errors.LeaseError(f"cannot lock {self.path}: {exc.strerror or exc}") from exc
        return True

    def _taken_or_timeout(self, fd: int, *, acquired: bool) -> None:
        if not acquired:
            os.close(fd)
            raise errors.LeaseTimeout(str(self.path), self.timeout, holder=self._holder())
        self._fd = fd
        # Diagnostics only (who to blame in a LeaseTimeout); locking is by
        # flock, so a failed or partial write here cannot block anyone.
        try:
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        except OSError:
            logger.debug("lock.pid_unwritten path=%s", self.path, exc_info=True)

    def _holder(self) -> str | None:
        # The pid a holder wrote, reported only while that process exists: a
        # holder killed before it could clear the file leaves a stale pid.
        try:
            with self.path.open("rb") as fh:
                pid = int(fh.read(32).decode("ascii").strip())
        except (OSError, ValueError):
            return None
        if pid <= 0:
            return None
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return None
        except PermissionError:
            pass  # alive, owned by another user
        return f"pid {pid}"


# --------------------------------------------------------------------------- #
# Lease records and the backend protocol


class LeaseMode(enum.Enum):
    """How a lease shares its name: one exclusive holder, or many shared ones."""

    EXCLUSIVE = "exclusive"
    SHARED = "shared"


class RenewOutcome(enum.Enum):
    """What a renewal achieved: renewed, lost for good, or failed for now (retry)."""

    OK = "ok"
    LOST = "lost"
    TRANSIENT = "transient"


@functools.cache
def _renew_takes_purpose(renew: Callable[..., object]) -> bool:
    try:
        parameters = inspect.signature(renew).parameters.values()
    except (TypeError, ValueError):
        return False
    return any(p.name == "purpose" or p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters)


def _takes_purpose(backend: LeaseBackend) -> bool:
    """Whether ``backend.renew`` accepts ``purpose=`` (older backends do not)."""
    return _renew_takes_purpose(getattr(type(backend), "renew", backend.renew))


@final
@attrs.frozen(kw_only=True)
class LeaseRecord:
    """One holder's claim on a lease name, as stored by a backend.

    ``pid_start`` is when the holder process started, as ``<boot id>/<start
    time in clock ticks>`` (Linux; None elsewhere and in records of older
    versions): with ``host`` and ``pid`` it names the process exactly, so a
    pid reused later, or after a reboot, is not mistaken for the holder.

    ``fence`` is a fencing token where the backend gives one (the Redis
    backend: a counter of the name that grows on every grant, a retake
    included; None for the file backend): a store that remembers the highest
    fence it saw can refuse a write from a holder whose claim was taken over.

    ``site`` is the holder's site where the backend keeps shared holders to
    one (``RedisLeaseBackend(site=…)``: a machine and its pool folder).
    """

    name: str
    owner: str
    mode: LeaseMode
    pid: int
    host: str
    acquired_at: datetime
    expires_at: datetime
    purpose: str | None = None
    pid_start: str | None = None
    fence: int | None = None
    site: str | None = None

    def expired(self, now: datetime) -> bool:
        """Whether the claim has lapsed at wall-clock time ``now`` (aware UTC)."""
        return now >= self.expires_at

    def same_claim(self, other: LeaseRecord) -> bool:
        """Whether ``other`` is this claim (possibly renewed), not a newer acquisition."""
        return (
            self.name == other.name
            and self.owner == other.owner
            and self.acquired_at == other.acquired_at
        )


@runtime_checkable
class LeaseBackend(Protocol):
    """Where lease records live; the file backend now, a Redis backend later."""

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
        """Claim ``name`` for ``owner`` now, or return None if it is held incompatibly.

        With ``replaces`` (a lapsed record of ``owner``) it takes that claim
        again, as a new record, only while the record stored for ``owner``
        is still that claim; None when it is gone or replaced.
        """
        ...

    async def renew(
        self, record: LeaseRecord, ttl: float, *, purpose: str | None = None
    ) -> tuple[RenewOutcome, LeaseRecord]:
        """Extend ``record`` by ``ttl`` seconds from now; the record returned is the latest.

        ``purpose``, when given, replaces the record's purpose in the same write
        (:meth:`Lease.describe`); None keeps it.
        """
        ...

    async def release(self, record: LeaseRecord) -> None:
        """Drop ``record`` if it is still this claim; idempotent, never touches another's."""
        ...

    async def holders(self, name: str) -> list[LeaseRecord]:
        """The live (unexpired) records of ``name``."""
        ...

    async def records(self, name: str) -> list[LeaseRecord]:
        """Every record of ``name`` still stored, lapsed ones included.

        A lapsed record is one whose expiry passed and that nobody took over
        yet: its holder died, or was suspended and will take the lease again
        (shared) or find it lost (exclusive). :func:`holder_alive` tells which.
        """
        ...


def _check_id(kind: str, value: str) -> str:
    if not isinstance(value, str) or not _ID_PATTERN.fullmatch(value):
        raise errors.ConfigError(
            f"lease {kind} {value!r} must match {_ID_PATTERN.pattern} "
            "(letters, digits and _.@:+- ; at most 128 characters)"
        )
    return value


def _check_ttl(ttl: float) -> float:
    if not ttl > 0:
        raise errors.ConfigError(f"lease ttl must be > 0 seconds, got {ttl!r}")
    return ttl


def _check_acquire(
    name: str, owner: str, mode: LeaseMode, ttl: float, replaces: LeaseRecord | None
) -> LeaseMode:
    """The checks every backend's ``try_acquire`` makes of its arguments; the mode."""
    _check_id("name", name)
    _check_id("owner", owner)
    _check_ttl(ttl)
    try:
        mode = LeaseMode(mode)
    except ValueError as exc:
        raise errors.ConfigError(f"unknown lease mode {mode!r}") from exc
    if replaces is not None and (replaces.name, replaces.owner) != (name, owner):
        raise errors.ConfigError("replaces must be a record of the same name and owner")
    return mode


def _compatible(held: LeaseMode, wanted: LeaseMode) -> bool:
    return held is LeaseMode.SHARED and wanted is LeaseMode.SHARED


@attrs.frozen
class _Unreadable:
    path: Path
    mtime: float
    reason: str
    # Not even JSON (empty, truncated, binary): no version of this code could
    # have written it, since records are only ever renamed into place whole.
    garbage: bool


@final
@attrs.define
class FileLeaseBackend:
    """Lease records as JSON files under ``root``: ``<root>/<name>/<owner>.json``.

    Every read-modify-write of one name runs under the OS lock
    ``<root>/<name>/.lock``. Records are only ever renamed into place whole, so
    a record file we cannot read was not written by this code as it is:

    * not JSON at all (empty, truncated, binary) or no regular file (a fifo,
      a folder): junk that no writer could have produced. It is moved aside
      at once as ``<owner>.json.corrupt`` (logged at WARNING) and never
      blocks anyone;
    * JSON that is not a record we understand (unknown mode, missing fields, a
      name or owner that does not match its path): possibly the claim of a
      newer version. It counts as a live *exclusive* holder until its file is
      ``corrupt_grace`` seconds old by mtime (a live writer keeps renewing it,
      refreshing the mtime), then it is moved aside the same way.
      ``corrupt_grace`` should exceed every TTL used on this root.

    Renewing or releasing a claim whose own file is unreadable answers LOST or
    leaves it alone; :meth:`holders` skips unreadable files.
    """

    root: Path = attrs.field(converter=Path)
    clock: Clock = attrs.field(default=None, converter=_or_system_clock, kw_only=True, repr=False)
    lock_timeout: float = attrs.field(default=10.0, kw_only=True)
    corrupt_grace: float = attrs.field(default=300.0, kw_only=True)

    def __attrs_post_init__(self) -> None:
        if self.lock_timeout < 0:
            raise errors.ConfigError(f"lock_timeout must be >= 0, got {self.lock_timeout!r}")
        if self.corrupt_grace < 0:
            raise errors.ConfigError(f"corrupt_grace must be >= 0, got {self.corrupt_grace!r}")

    # -- the protocol --------------------------------------------------------

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
        """Claim ``name`` for ``owner`` now, or return None if it is held incompatibly.

        An owner that already holds a live record of ``name`` gets None too:
        owners identify one claim each (:func:`acquire_lease` makes them unique).
        A lapsed record whose holder still runs (:func:`claim_alive`) counts as
        held in its mode and is never removed; other lapsed records are.
        With ``replaces`` (a lapsed record of ``owner``) it is a retake: None
        unless the record stored for ``owner`` is still that very claim.
        """
        mode = _check_acquire(name, owner, mode, ttl, replaces)
        folder = self._folder(name)
        try:
            async with self._lock(folder):
                return self._try_acquire_locked(
                    folder,
                    name=name,
                    owner=owner,
                    mode=mode,
                    ttl=ttl,
                    purpose=purpose,
                    replaces=replaces,
                )
        except OSError as exc:
            raise errors.LeaseError(f"cannot acquire lease {name!r}: {exc}") from exc

    async def renew(
        self, record: LeaseRecord, ttl: float, *, purpose: str | None = None
    ) -> tuple[RenewOutcome, LeaseRecord]:
        """Extend ``record`` by ``ttl`` from now: OK, LOST (gone/replaced/expired) or TRANSIENT.

        ``purpose`` (when not None) is written in the same record.
        """
        _check_id("name", record.name)
        _check_id("owner", record.owner)
        _check_ttl(ttl)
        folder = self._folder(record.name)
        try:
            async with self._lock(folder):
                return self._renew_locked(folder, record, ttl, purpose)
        except (OSError, errors.LeaseError) as exc:
            # Lock timeout, a full disk, a failed fsync: the record on disk is
            # unchanged (writes are whole), so the caller may simply retry.
            logger.info(
                "lease.renew_transient name=%s owner=%s error=%s", record.name, record.owner, exc
            )
            return RenewOutcome.TRANSIENT, record

    async def release(self, record: LeaseRecord) -> None:
        """Remove ``record`` if the file still holds this claim; idempotent."""
        _check_id("name", record.name)
        _check_id("owner", record.owner)
        folder = self._folder(record.name)
        try:
            async with self._lock(folder):
                path = folder / f"{record.owner}{_RECORD_SUFFIX}"
                current = self._read(path)
                if isinstance(current, LeaseRecord) and current.same_claim(record):
                    path.unlink()
                    logger.info("lease.released name=%s owner=%s", record.name, record.owner)
        except OSError as exc:
            raise errors.LeaseError(f"cannot release lease {record.name!r}: {exc}") from exc

    async def holders(self, name: str) -> list[LeaseRecord]:
        """The live records of ``name``, oldest first (read without the lock: files are whole)."""
        _check_id("name", name)
        now = self.clock.now()
        try:
            records, _ = self._scan(self.root / name)
        except OSError as exc:
            raise errors.LeaseError(f"cannot list holders of {name!r}: {exc}") from exc
        live = [r for r in records if not r.expired(now)]
        return sorted(live, key=lambda r: (r.acquired_at, r.owner))

    async def records(self, name: str) -> list[LeaseRecord]:
        """Every readable record of ``name``, lapsed ones included, oldest first (no lock)."""
        _check_id("name", name)
        try:
            records, _ = self._scan(self.root / name)
        except OSError as exc:
            raise errors.LeaseError(f"cannot list the records of {name!r}: {exc}") from exc
        return sorted(records, key=lambda r: (r.acquired_at, r.owner))

    # -- under the name's lock ------------------------------------------------

    def _try_acquire_locked(
        self,
        folder: Path,
        *,
        name: str,
        owner: str,
        mode: LeaseMode,
        ttl: float,
        purpose: str | None,
        replaces: LeaseRecord | None,
    ) -> LeaseRecord | None:
        self._remove_orphan_temps(folder)
        now = self.clock.now()
        records, unreadable = self._scan(folder)
        if replaces is not None:
            mine = next((r for r in records if r.owner == owner), None)
            if mine is None or not mine.same_claim(replaces):
                logger.info(
                    "lease.retake_refused name=%s owner=%s reason=%s",
                    name,
                    owner,
                    "its record is gone" if mine is None else "its record was replaced",
                )
                return None
        blocked = False
        for rec in records:
            if rec.owner == owner:
                # Our own lapsed record is overwritten below; a live one is
                # another claim of this owner (or the one being taken again).
                blocked = blocked or (replaces is None and not rec.expired(now))
                continue
            if rec.expired(now) and not claim_alive(rec):
                # Stale takeover, only here under the lock: a renewal that
                # landed before we took the lock is what we just read, so a
                # lease renewed in time is never stolen, and a holder that
                # still runs (suspended) keeps its record.
                (folder / f"{rec.owner}{_RECORD_SUFFIX}").unlink(missing_ok=True)
                logger.info(
                    "lease.expired_removed name=%s owner=%s pid=%s host=%s expired_at=%s",
                    name,
                    rec.owner,
                    rec.pid,
                    rec.host,
                    rec.expires_at.isoformat(),
                )
            elif not _compatible(rec.mode, mode):
                if rec.expired(now):
                    logger.debug(
                        "lease.lapsed_holder_blocks name=%s owner=%s pid=%s",
                        name,
                        rec.owner,
                        rec.pid,
                    )
                blocked = True
        for junk in unreadable:
            if junk.garbage or now.timestamp() - junk.mtime > self.corrupt_grace:
                self._quarantine(junk)
            else:
                # Conservative: what we cannot read might be a live exclusive claim.
                logger.debug("lease.unreadable_blocks path=%s reason=%s", junk.path, junk.reason)
                blocked = True
        if blocked:
            return None
        pid = os.getpid()
        record = LeaseRecord(
            name=name,
            owner=owner,
            mode=mode,
            pid=pid,
            host=socket.gethostname(),
            acquired_at=now,
            expires_at=now + timedelta(seconds=ttl),
            purpose=purpose,
            pid_start=_pid_start(pid),
        )
        self._write(folder, record)
        logger.debug("lease.record_written name=%s owner=%s mode=%s", name, owner, mode.value)
        return record

    def _renew_locked(
        self, folder: Path, record: LeaseRecord, ttl: float, purpose: str | None
    ) -> tuple[RenewOutcome, LeaseRecord]:
        now = self.clock.now()
        current = self._read(folder / f"{record.owner}{_RECORD_SUFFIX}")
        reason = None
        if current is None:
            reason = "record is gone"
        elif isinstance(current, _Unreadable):
            reason = f"record is unreadable ({current.reason})"
        elif not current.same_claim(record):
            reason = "record was replaced by a newer acquisition"
        elif current.expired(now):
            # Others were entitled to take it over already; resurrecting it
            # would hide the gap from the holder.
            reason = f"record expired at {current.expires_at.isoformat()}"
        if reason is not None or not isinstance(current, LeaseRecord):
            logger.info(
                "lease.renew_lost name=%s owner=%s reason=%s", record.name, record.owner, reason
            )
            return RenewOutcome.LOST, record
        renewed = attrs.evolve(
            current,
            expires_at=now + timedelta(seconds=ttl),
            purpose=current.purpose if purpose is None else purpose,
        )
        self._write(folder, renewed)
        return RenewOutcome.OK, renewed

    # -- files ----------------------------------------------------------------

    def _folder(self, name: str) -> Path:
        return self.root / name

    def _lock(self, folder: Path) -> FileLock:
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise errors.LeaseError(f"cannot create lease folder {folder}: {exc}") from exc
        # The lock lives inside the name's folder: "<root>/<name>.lock" would
        # collide with the folder of a lease literally named "<name>.lock".
        return FileLock(folder / ".lock", timeout=self.lock_timeout, clock=self.clock)

    def _scan(self, folder: Path) -> tuple[list[LeaseRecord], list[_Unreadable]]:
        records: list[LeaseRecord] = []
        unreadable: list[_Unreadable] = []
        try:
            paths = sorted(folder.glob(f"*{_RECORD_SUFFIX}"))
        except FileNotFoundError:
            return records, unreadable
        for path in paths:
            found = self._read(path)
            if isinstance(found, LeaseRecord):
                records.append(found)
            elif isinstance(found, _Unreadable):
                unreadable.append(found)
        return records, unreadable

    def _read(self, path: Path) -> LeaseRecord | _Unreadable | None:
        """The record at ``path``, an _Unreadable, or None when there is no file."""
        found = _record_bytes(path)
        if not isinstance(found, tuple):
            return found
        raw, mtime = found
        try:
            data = json.loads(raw) if len(raw) <= _MAX_RECORD_BYTES else None
        except ValueError as exc:  # JSONDecodeError and UnicodeDecodeError
            return _Unreadable(path, mtime, f"not JSON: {exc}", garbage=True)
        except RecursionError:
            return _Unreadable(path, mtime, "nested too deeply", garbage=True)
        if data is None:
            return _Unreadable(path, mtime, "larger than any record", garbage=True)
        try:
            return _parse_record(data, path)
        except errors.StateError as exc:
            return _Unreadable(path, mtime, str(exc), garbage=False)

    def _write(self, folder: Path, record: LeaseRecord) -> None:
        fields = unstructure(record)
        for extra in ("fence", "site"):
            if fields.get(extra) is None:
                del fields[extra]  # (the file backend gives none: its format stays as it was)
        data = (json.dumps(fields, sort_keys=True) + "\n").encode()
        # Not fsynced: a lease means nothing after the machine restarts (its
        # holder is gone; the boot id says so), and an fsync per heartbeat
        # costs an idle session its wake-ups.
        write_atomic(folder / f"{record.owner}{_RECORD_SUFFIX}", data, mode=0o644, durable=False)

    def _remove_orphan_temps(self, folder: Path) -> None:
        # Temp files are only written under this lock, so any seen while we
        # hold it belongs to a writer that died mid-write.
        for temp in folder.glob(f".*{TEMP_SUFFIX}"):
            temp.unlink(missing_ok=True)

    def _quarantine(self, junk: _Unreadable) -> None:
        target = junk.path.with_name(junk.path.name + ".corrupt")
        logger.warning(
            "lease.corrupt_record_discarded path=%s reason=%s moved_to=%s",
            junk.path,
            junk.reason,
            target.name,
        )
        with contextlib.suppress(FileNotFoundError):
            junk.path.replace(target)


def _record_bytes(path: Path) -> tuple[bytes, float] | _Unreadable | None:
    """The first bytes of a record file (one more than a record may hold) and its mtime."""
    try:
        # O_NONBLOCK: a fifo where a record belongs must not hang the scan
        # (and with it every acquire of the name, under its lock).
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:
        return None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            return _Unreadable(path, info.st_mtime, "not a regular file", garbage=True)
        with os.fdopen(fd, "rb", closefd=False) as fh:
            return fh.read(_MAX_RECORD_BYTES + 1), info.st_mtime
    finally:
        os.close(fd)


# --------------------------------------------------------------------------- #
# Is the holder of a record still running?


@functools.cache
def _boot_id() -> str | None:
    try:
        return _BOOT_ID.read_text().strip() or None
    except OSError:
        return None


def _proc_stat(pid: int) -> tuple[str, str] | None:
    """The state letter and start time (clock ticks since boot) of ``pid``, from /proc."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text(errors="replace")
    except OSError:
        return None
    # "pid (comm) state ppid ...": comm may hold spaces and parentheses.
    fields = text.rpartition(")")[2].split()
    if len(fields) < 20:
        return None
    return fields[0], fields[19]


@functools.cache
def _pid_start(pid: int) -> str | None:
    """``<boot id>/<start ticks>`` of process ``pid`` (this one, when recording): Linux only."""
    boot, found = _boot_id(), _proc_stat(pid)
    if boot is None or found is None:
        return None
    return f"{boot}/{found[1]}"


def holder_alive(record: LeaseRecord) -> bool | None:
    """Whether the process that holds ``record`` still runs; None when it cannot be known.

    Known only for a record written on this machine: True while its process
    exists and is no zombie — a stopped (suspended) process counts as
    running — and, when the record names the process's start, only while the
    pid still belongs to that very process. A record whose start names this
    boot of this machine is judged whatever host name it carries (a host
    name may change while a holder is suspended, e.g. a laptop waking on
    another network); otherwise a record of another host answers None.
    """
    boot = _boot_id()
    this_boot = (
        boot is not None
        and record.pid_start is not None
        and record.pid_start.partition("/")[0] == boot
    )
    if not this_boot and record.host != socket.gethostname():
        return None
    found = _proc_stat(record.pid)
    if found is None:
        # /proc answers and has no such process; without /proc, ask the kernel.
        return False if _boot_id() is not None else _pid_exists(record.pid)
    state, started = found
    if state in _GONE_STATES:
        return False
    # A record of an older version names no start: the pid runs, perhaps as another program.
    return record.pid_start is None or record.pid_start == f"{_boot_id()}/{started}"


def claim_alive(record: LeaseRecord) -> bool:
    """Whether a lapsed ``record`` is still somebody's claim: never to be removed by others.

    True while its holder process runs (:func:`holder_alive`), suspended or
    not, since it will take its lease again or find it lost as it resumes —
    except for a record of this very process, which is a claim only while a
    :class:`Lease` of it is open here (a record this process failed to
    release, or wrote without a lease, is garbage once lapsed). False for a
    holder that is gone or cannot be judged (another host).
    """
    if holder_alive(record) is not True:
        return False
    if record.pid == os.getpid():  # alive with our pid (and start): this process
        return (record.name, record.owner) in _OPEN_LEASES
    return True


def _pid_exists(pid: int) -> bool | None:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # alive, owned by another user
    except OSError:
        return None
    return True


def _parse_record(data: object, path: Path) -> LeaseRecord:
    record = structure(data, LeaseRecord, what=f"lease record {path}")
    if record.name != path.parent.name or path.name != f"{record.owner}{_RECORD_SUFFIX}":
        raise errors.StateError("name or owner does not match the file's path")
    return record


# --------------------------------------------------------------------------- #
# The held lease and its heartbeat


@final
@attrs.define(eq=False)
class Lease:
    """A lease this process holds: its latest record, its heartbeat, whether it was lost.

    A shared lease that lapsed is taken again by its heartbeat (see the
    module notes): :attr:`record` is then the new claim (same owner, new
    ``acquired_at``) and :attr:`reacquired` counts how often that happened.
    During the gap :meth:`ensure_held` raises, as for any lease past its
    local deadline; afterwards it passes again. :attr:`lost` is final for
    both modes.

    ``recheck``, when given, runs after each such retake, before
    :meth:`ensure_held` passes again: it returns why the claim no longer
    counts (the lease is then reported lost) or None. An occupancy lease
    uses it to see whether its account left the pool during the gap.
    """

    _backend: LeaseBackend
    _record: LeaseRecord
    _ttl: float
    _clock: Clock = attrs.field(repr=False)
    _on_lost: Callable[[Lease], object] | None = attrs.field(default=None, repr=False)
    _recheck: Callable[[Lease], Awaitable[str | None]] | None = attrs.field(
        default=None, repr=False
    )
    # Monotonic time by which the current record surely expires: measured
    # from *before* the call that produced it, so it is never late.
    _local_deadline: float = attrs.field(default=0.0, repr=False)
    _lost_reason: str | None = attrs.field(default=None, init=False)
    _released: bool = attrs.field(default=False, init=False)
    _reacquired: int = attrs.field(default=0, init=False)
    _lapse_logged: bool = attrs.field(default=False, init=False, repr=False)
    _heartbeat: asyncio.Task[None] | None = attrs.field(default=None, init=False, repr=False)
    _purpose_due: str | None = attrs.field(default=None, init=False, repr=False)

    @property
    def record(self) -> LeaseRecord:
        """The latest record (renewals replace it)."""
        return self._record

    @property
    def name(self) -> str:
        """The lease name."""
        return self._record.name

    @property
    def owner(self) -> str:
        """The owner id this lease was acquired with."""
        return self._record.owner

    @property
    def mode(self) -> LeaseMode:
        """Exclusive or shared."""
        return self._record.mode

    @property
    def ttl(self) -> float:
        """Seconds each renewal extends the lease by."""
        return self._ttl

    @property
    def lost(self) -> bool:
        """Whether the lease was lost (taken over, removed, or not renewed in time)."""
        return self._lost_reason is not None

    @property
    def lost_reason(self) -> str | None:
        """Why the lease was lost, or None while it is held."""
        return self._lost_reason

    @property
    def released(self) -> bool:
        """Whether the lease was given back."""
        return self._released

    @property
    def reacquired(self) -> int:
        """How often this shared lease lapsed and was taken again (each a new record)."""
        return self._reacquired

    def describe(self, purpose: str) -> None:
        """Say what the lease is held for from its next renewal on (a third of its TTL).

        What others read in its record (``status`` shows it), e.g. the session
        a Codex child turned out to run. Nothing is written now: the
        heartbeat's next renewal carries it, so this never waits on the backend.
        A backend whose ``renew`` takes no ``purpose`` (written before it
        existed) keeps the purpose given at acquisition: the lease is renewed
        as before.
        """
        if not _takes_purpose(self._backend):
            logger.debug("lease.describe_unsupported name=%s owner=%s", self.name, self.owner)
            return
        self._purpose_due = purpose

    def ensure_held(self) -> None:
        """Raise :class:`~codex_supervisor.errors.LeaseLost` unless the lease is surely held.

        The fencing check for the caller's own task: call it right before a
        step that is only safe under the claim (committing a write, starting
        work others must not duplicate), or as the last statement of the
        ``async with`` block to fail the block when the claim lapsed during it.

        It reads local state only, no backend call. Besides a loss the
        heartbeat already reported, it raises once the lease's local deadline
        has passed without a confirmed renewal (a renewal stuck behind a slow
        backend, or an event loop blocked for longer than the TTL): others may
        hold the lease by then, so holding it can no longer be proven. That
        case does not mark the lease :attr:`lost`, since a renewal still in
        flight may yet succeed (or, for a shared lease, a lapsed one may be
        taken again). A released lease raises
        :class:`~codex_supervisor.errors.LeaseError`.
        """
        if self._released:
            raise errors.LeaseError(f"lease {self.name!r} of {self.owner} was released")
        if self._lost_reason is not None:
            raise errors.LeaseLost(self.name, self.owner, self._lost_reason)
        if self._now() >= self._local_deadline:
            raise errors.LeaseLost(
                self.name,
                self.owner,
                "no renewal confirmed before it may have expired at "
                f"{self._record.expires_at.isoformat()}",
            )

    async def confirm(self) -> None:
        """Renew the lease now; raise :class:`~codex_supervisor.errors.LeaseLost` unless it is.

        :meth:`ensure_held` reads local state only; this asks the backend, for
        a step others must not race (archiving what the lease guards, say):
        once it returns, the claim holds for a full TTL from the call, so a
        step that ends within it cannot overlap a takeover. A backend that
        reports the claim gone marks an exclusive lease :attr:`lost` (a
        shared one is taken again by its heartbeat); one that cannot answer
        raises too, without marking anything.
        """
        self.ensure_held()
        started = self._now()
        outcome, record = await self._renew_once()
        if outcome is RenewOutcome.OK:
            self._record = record
            self._local_deadline = max(self._local_deadline, started + self._ttl)
            return
        if outcome is RenewOutcome.LOST:
            reason = "the backend reports the lease taken over, removed or expired"
            if self.mode is not LeaseMode.SHARED:
                self._mark_lost(reason)
        else:
            reason = "the backend could not confirm it now"
        raise errors.LeaseLost(self.name, self.owner, reason)

    async def release(self) -> None:
        """Stop the heartbeat and give the lease back now; idempotent.

        Raises :class:`~codex_supervisor.errors.LeaseError` if the backend
        fails (leaving the ``async with`` block retries once and only logs).
        """
        await self._stop_heartbeat()
        if self._released:
            return
        await self._backend.release(self._record)
        self._released = True

    def _start(self) -> None:
        self._heartbeat = asyncio.create_task(
            self._beat(), name=f"lease-heartbeat:{self._record.name}"
        )

    async def _stop_heartbeat(self) -> None:
        task, self._heartbeat = self._heartbeat, None
        if task is None or task.done():
            return
        task.cancel()
        # asyncio.wait, not "await task": our own cancellation must still
        # propagate, while the heartbeat's is expected and swallowed here.
        await asyncio.wait({task})

    async def _close(self) -> None:
        try:
            await self.release()
        except Exception:
            # Never raised over the body's own exception (or its success).
            logger.warning(
                "lease.release_failed name=%s owner=%s",
                self._record.name,
                self._record.owner,
                exc_info=True,
            )

    async def _renew_once(self) -> tuple[RenewOutcome, LeaseRecord]:
        """One renewal (with a purpose :meth:`describe` left due); never raises but cancels."""
        due = self._purpose_due
        try:
            if due is None:
                outcome, record = await self._backend.renew(self._record, self._ttl)
            else:
                outcome, record = await self._backend.renew(self._record, self._ttl, purpose=due)
        except asyncio.CancelledError:
            raise
        except Exception:
            # A backend that raises instead of answering TRANSIENT.
            logger.warning(
                "lease.renew_error name=%s owner=%s", self.name, self.owner, exc_info=True
            )
            return RenewOutcome.TRANSIENT, self._record
        if outcome is RenewOutcome.OK and due is not None and self._purpose_due == due:
            self._purpose_due = None
        return outcome, record

    async def _beat(self) -> None:
        interval = self._ttl / 3
        try:
            delay = interval
            while True:
                # Wake no later than the local deadline, so loss is reported on time;
                # a shared lease past it retries at the retry pace, not in a loop.
                remaining = self._local_deadline - self._now()
                if remaining <= 0 and self.mode is LeaseMode.SHARED:
                    remaining = delay
                await self._clock.sleep(min(delay, max(0.0, remaining)))
                started = self._now()
                outcome, record = await self._renew_once()
                if outcome is RenewOutcome.OK:
                    self._record = record
                    self._local_deadline = started + self._ttl
                    delay = interval
                    continue
                if outcome is RenewOutcome.LOST:
                    reason = "the backend reports the lease taken over, removed or expired"
                    if self.mode is not LeaseMode.SHARED:
                        self._mark_lost(reason)
                        return
                    retaken = await self._retake()
                    if isinstance(retaken, str):
                        self._mark_lost(retaken)
                        return
                    delay = interval if retaken else interval / 2
                    continue
                if self._now() >= self._local_deadline:
                    if self.mode is not LeaseMode.SHARED:
                        self._mark_lost(
                            "renewals kept failing until the lease expired at "
                            f"{self._record.expires_at.isoformat()}"
                        )
                        return
                    # A shared lease is taken again once the backend answers.
                    self._log_lapse("renewals kept failing")
                logger.info("lease.renew_retry name=%s owner=%s", self.name, self.owner)
                delay = interval / 2
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            # Never let the task die with an exception nobody retrieves: a
            # heartbeat that stopped means the lease will lapse, so say so.
            logger.exception("lease.heartbeat_failed name=%s owner=%s", self.name, self.owner)
            self._mark_lost(f"heartbeat failed: {exc!r}")

    async def _retake(self) -> bool | str | None:
        """Take a lapsed shared lease again: True, None (retry later), or why it cannot be.

        Only while its lapsed record is still stored unchanged: one that is
        gone or replaced was judged dead by someone, who may have acted on
        the name (an exclusive holder, a removal) in the gap.
        """
        self._log_lapse("its record lapsed")
        started = self._now()
        lapsed = self._record
        try:
            record = await self._backend.try_acquire(
                self.name,
                owner=self.owner,
                mode=self.mode,
                ttl=self._ttl,
                purpose=self._purpose_due or lapsed.purpose,
                replaces=lapsed,
            )
        except asyncio.CancelledError:
            raise
        except Exception:
            logger.warning(
                "lease.reacquire_error name=%s owner=%s", self.name, self.owner, exc_info=True
            )
            return None
        if record is None:
            return "it lapsed and its record is gone or was replaced: taken over meanwhile"
        # No await since try_acquire returned: a cancellation cannot strand it.
        self._record = record
        if self._recheck is not None:
            try:
                why = await self._recheck(self)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                logger.warning(
                    "lease.recheck_error name=%s owner=%s", self.name, self.owner, exc_info=True
                )
                why = f"it could not be confirmed to still count ({exc!r})"
            if why is not None:
                return f"it lapsed and was taken again, but {why}"
        self._local_deadline = started + self._ttl
        self._reacquired += 1
        self._lapse_logged = False
        logger.warning(
            "lease.reacquired name=%s owner=%s mode=%s lapsed_at=%s reacquired_at=%s",
            self.name,
            self.owner,
            self.mode.value,
            lapsed.expires_at.isoformat(),
            record.acquired_at.isoformat(),
        )
        return True

    def _log_lapse(self, why: str) -> None:
        if self._lapse_logged:
            return
        self._lapse_logged = True
        logger.warning(
            "lease.lapsed name=%s owner=%s mode=%s reason=%s expires_at=%s; "
            "taking it again when possible",
            self.name,
            self.owner,
            self.mode.value,
            why,
            self._record.expires_at.isoformat(),
        )

    def _now(self) -> float:
        return self._clock.monotonic()

    def _mark_lost(self, reason: str) -> None:
        if self._lost_reason is not None:
            return
        self._lost_reason = reason
        logger.warning(
            "lease.lost name=%s owner=%s mode=%s reason=%s",
            self.name,
            self.owner,
            self.mode.value,
            reason,
        )
        if self._on_lost is None:
            return
        try:
            self._on_lost(self)
        except Exception:
            logger.exception("lease.on_lost_failed name=%s owner=%s", self.name, self.owner)


def _default_owner() -> str:
    """A fresh owner id ``<host>-<pid>-<random hex>``, valid as a lease owner."""
    host = re.sub(r"[^A-Za-z0-9.-]+", "-", socket.gethostname()).strip(".-")[:64] or "host"
    return f"{host}-{os.getpid()}-{secrets.token_hex(4)}"


def _in_force(records: list[LeaseRecord], now: datetime) -> list[LeaseRecord]:
    """The records that still hold their name: live, or lapsed with a running holder."""
    return [r for r in records if not r.expired(now) or claim_alive(r)]


def _describe(records: list[LeaseRecord]) -> str | None:
    if not records:
        return None
    return ", ".join(f"{r.owner} (pid {r.pid} on {r.host}, {r.mode.value})" for r in records)


@contextlib.asynccontextmanager
async def acquire_lease(
    backend: LeaseBackend,
    name: str,
    *,
    mode: LeaseMode = LeaseMode.EXCLUSIVE,
    ttl: float = 30.0,
    timeout: float = 10.0,  # noqa: ASYNC109 - a lease wait is polled, not a single await
    poll: float = 0.05,
    owner: str | None = None,
    purpose: str | None = None,
    on_lost: Callable[[Lease], object] | None = None,
    recheck: Callable[[Lease], Awaitable[str | None]] | None = None,
    clock: Clock | None = None,
    replaces: LeaseRecord | None = None,
) -> AsyncIterator[Lease]:
    """Hold lease ``name`` for the ``async with`` block, renewing it at ttl/3.

    Waits up to ``timeout`` seconds (polling every ``poll``), then raises
    :class:`~codex_supervisor.errors.LeaseTimeout` naming the current holders;
    a backend failure while waiting raises its
    :class:`~codex_supervisor.errors.LeaseError`.
    A lease lost while held is reported once through ``on_lost(lease)`` and
    :attr:`Lease.lost`; it is not raised from the heartbeat, nor on leaving
    the block, whose own result or exception always wins. Call
    :meth:`Lease.ensure_held` where the claim matters (it raises
    :class:`~codex_supervisor.errors.LeaseLost`). Leaving the block stops the
    heartbeat and releases the lease (a failed release is logged, not raised).
    ``recheck``: see :class:`Lease` (shared leases taken again after a lapse).
    ``replaces``: a lapsed record of ``owner`` to take again, only while it is
    still stored unchanged (see :meth:`LeaseBackend.try_acquire`).
    """
    _check_ttl(ttl)
    if timeout < 0:
        raise errors.ConfigError(f"lease timeout must be >= 0, got {timeout!r}")
    if poll <= 0:
        raise errors.ConfigError(f"lease poll must be > 0, got {poll!r}")
    clock = clock if clock is not None else SystemClock()
    owner = owner if owner is not None else _default_owner()
    deadline = clock.monotonic() + timeout
    while True:
        started = clock.monotonic()
        if replaces is None:
            record = await backend.try_acquire(
                name, owner=owner, mode=mode, ttl=ttl, purpose=purpose
            )
        else:
            record = await backend.try_acquire(
                name, owner=owner, mode=mode, ttl=ttl, purpose=purpose, replaces=replaces
            )
        if record is not None:
            break
        remaining = deadline - clock.monotonic()
        if remaining <= 0:
            try:
                holder = _describe(_in_force(await backend.records(name), clock.now()))
            except errors.LeaseError:
                holder = None
            raise errors.LeaseTimeout(name, timeout, holder=holder)
        await clock.sleep(min(poll, remaining))
    # No await between getting the record and the try below, so a
    # cancellation cannot strand the record we just wrote.
    lease = Lease(
        backend,
        record,
        ttl,
        clock,
        on_lost=on_lost,
        recheck=recheck,
        local_deadline=started + ttl,
    )
    key = (name, owner)
    _OPEN_LEASES.add(key)
    logger.info("lease.acquired name=%s owner=%s mode=%s ttl=%s", name, owner, mode.value, ttl)
    lease._start()  # noqa: SLF001 - the context manager is the lease's owner
    try:
        yield lease
    finally:
        try:
            await lease._close()  # noqa: SLF001
        finally:
            _OPEN_LEASES.discard(key)
