"""Finding and following the rollout of the session a Codex child is running.

Codex writes every session to ``sessions/YYYY/MM/DD/rollout-<local time>-<id>.jsonl``
(CODEX_FACTS.md §4). This module

- reads a rollout incrementally (:class:`RolloutReader`): only the bytes
  appended since the last read, tolerating a half-written last line, over-long
  lines, invalid UTF-8 or JSON and unknown line types, and keeps the
  :class:`TurnState` — whether a turn is running — from the turn markers;
- tells whether some process has the thread loaded (:func:`writer_lock`), by
  the thread writer lock Codex holds, without ever creating that file;
- binds a child to its session (:class:`SessionBinder`): a known id by file
  name (a UUIDv7 id names its own date folder), a new session only from
  rollouts created after the launch, in the launch's date folders, whose
  ``session_meta.cwd`` is the child's cwd — and when two such sessions exist,
  only the one whose writer lock our child holds. Ambiguous evidence leaves
  the child unbound and says why: resuming the wrong conversation is the one
  thing a supervisor must never do;
- tells which sessions a running child writes (:meth:`SessionBinder.open_by`,
  :meth:`SessionBinder.still_writes`): a rollout it has open *for writing*
  (``/proc/PID/fdinfo`` flags) or whose writer lock it holds — "it" being the
  child and the processes it started, as npm's ``codex`` is a node launcher
  whose child is the native binary. A rollout open read-only is no evidence:
  ``codex fork`` reads its source and the resume picker reads many. Two
  written sessions are ambiguous, never "the first".

Discovery looks at no more than two date folders for a new session and one for
a UUIDv7 id, so its cost does not grow with the user's history. Symbolic links
inside ``sessions/`` are never followed.
"""

from __future__ import annotations

import contextlib
import enum
import errno
import fcntl
import functools
import io
import json
import logging
import os
import re
import uuid
from collections.abc import Callable, Iterable, Iterator, Sequence
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any, final

import attrs

from .clock import Clock, SystemClock
from .errors import QuotaParseError, SessionError
from .snapshots import QuotaSnapshot

__all__ = [
    "ENV_NO_PROC",
    "BindAttempt",
    "Binding",
    "RateLimitsObserved",
    "RolloutReader",
    "RolloutRecord",
    "SessionBinder",
    "SessionMeta",
    "TurnAborted",
    "TurnCompleted",
    "TurnError",
    "TurnPhase",
    "TurnStarted",
    "TurnState",
    "WriterLock",
    "is_session_id",
    "last_turn_start",
    "parse_line",
    "proc_available",
    "read_session_meta",
    "session_created",
    "writer_lock",
]

log = logging.getLogger(__name__)

_UUID_RE = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
_ROLLOUT_RE = re.compile(
    r"rollout-(\d{4})-(\d{2})-(\d{2})T(\d{2})-(\d{2})-(\d{2})-"
    r"([0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12})\.jsonl"
)
# Top-level line types of 0.169.0. Lines of these types that we do not use
# are skipped without parsing them (response_item lines can be large).
_KNOWN_TYPES = frozenset(
    {
        "session_meta",
        "event_msg",
        "response_item",
        "turn_context",
        "world_state",
        "token_usage_record",
        "compacted",
    }
)
_WANTED_TYPES = frozenset({"session_meta", "event_msg"})
_WANTED_EVENTS = frozenset(
    {
        b"task_started",
        b"turn_started",
        b"task_complete",
        b"turn_complete",
        b"turn_aborted",
        b"token_count",
    }
)
_TYPE_PREFIX = re.compile(rb'"type"\s*:\s*"([A-Za-z_]+)"')
_PREFIX_BYTES = 256
_LOCK_RE = re.compile(r"([0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12})\.lock")
_EVENT_NAMES = frozenset(name.decode() for name in _WANTED_EVENTS)
_CHUNK = 1024 * 1024
#: Lines longer than this are skipped (and logged), never buffered whole.
DEFAULT_MAX_LINE_BYTES = 16 * 1024 * 1024
# The rollout name's time has one-second resolution and Codex may name the
# file a moment before we note the launch time: allow this much.
_CREATION_SLACK = timedelta(seconds=2)
_FIRST_LINE_LIMIT = 4 * 1024 * 1024


def is_session_id(value: str) -> bool:
    """Whether ``value`` looks like a Codex session (thread) id: a lowercase UUID."""
    return bool(_UUID_RE.fullmatch(value))


# -- records -----------------------------------------------------------------------


@attrs.frozen(kw_only=True)
class SessionMeta:
    """The first line of a rollout: which session, where, by which Codex."""

    session_id: str
    cwd: str | None = None
    originator: str | None = None
    source: str | None = None
    cli_version: str | None = None
    model_provider: str | None = None
    creator_account_id: str | None = None
    timestamp: datetime | None = None
    #: A thread a subagent runs inside another session (its ``source`` names the parent).
    subagent: bool = False


@attrs.frozen(kw_only=True)
class TurnError:
    """Why a turn failed, as Codex recorded it."""

    message: str | None = None
    codex_error_info: str | None = None


@attrs.frozen(kw_only=True)
class TurnStarted:
    """A ``task_started`` marker: a turn began."""

    turn_id: str | None
    at: datetime | None = None


@attrs.frozen(kw_only=True)
class TurnCompleted:
    """A ``task_complete`` marker: a turn ended, successfully or with an error."""

    turn_id: str | None
    last_agent_message: str | None = None
    error: TurnError | None = None
    at: datetime | None = None


@attrs.frozen(kw_only=True)
class TurnAborted:
    """A ``turn_aborted`` marker: a turn was interrupted or replaced."""

    turn_id: str | None
    reason: str | None = None
    at: datetime | None = None


@attrs.frozen(kw_only=True)
class RateLimitsObserved:
    """A ``token_count`` line that carried rate limits: free, passive quota data."""

    snapshot: QuotaSnapshot


RolloutRecord = SessionMeta | TurnStarted | TurnCompleted | TurnAborted | RateLimitsObserved


class TurnPhase(enum.Enum):
    """Whether a turn is running, as far as the rollout tells."""

    UNKNOWN = "unknown"
    IDLE = "idle"
    IN_TURN = "in_turn"


@attrs.frozen(kw_only=True)
class TurnState:
    """The turn state of a session, from its turn markers.

    ``IN_TURN`` with no live writer (see :func:`writer_lock`) means the writer
    died mid-turn: a SIGKILLed Codex leaves a dangling ``task_started``.
    """

    phase: TurnPhase = TurnPhase.UNKNOWN
    turn_id: str | None = None
    last_error: TurnError | None = None
    turns_completed: int = 0

    @property
    def at_boundary(self) -> bool:
        """True between turns: a rotation may stop the child now without losing work."""
        return self.phase is TurnPhase.IDLE

    @property
    def usage_limit_exceeded(self) -> bool:
        """True when the last finished turn failed because the account ran out."""
        return (
            self.last_error is not None
            and self.last_error.codex_error_info == "usage_limit_exceeded"
        )


# -- parsing --------------------------------------------------------------------------


def _str(value: object) -> str | None:
    return value if isinstance(value, str) and value else None


def _time(value: object) -> datetime | None:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        with contextlib.suppress(OverflowError, OSError, ValueError):
            return datetime.fromtimestamp(value, UTC)
        return None
    if isinstance(value, str):
        with contextlib.suppress(ValueError):
            parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
            return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)
    return None


def _meta(payload: dict[str, Any]) -> SessionMeta | None:
    session_id = _str(payload.get("id")) or _str(payload.get("session_id"))
    if session_id is None:
        return None
    return SessionMeta(
        session_id=session_id,
        cwd=_str(payload.get("cwd")),
        originator=_str(payload.get("originator")),
        source=_str(payload.get("source")),
        cli_version=_str(payload.get("cli_version")),
        model_provider=_str(payload.get("model_provider")),
        creator_account_id=_str(payload.get("creator_account_id")),
        timestamp=_time(payload.get("timestamp")),
        subagent=isinstance(payload.get("source"), dict) and "subagent" in payload["source"],
    )


def _turn_error(value: object) -> TurnError | None:
    if not isinstance(value, dict):
        return None
    info = value.get("codex_error_info")
    if isinstance(info, dict):  # some versions nest it: {"usage_limit_exceeded": {...}}
        info = next(iter(info), None)
    return TurnError(message=_str(value.get("message")), codex_error_info=_str(info))


def parse_line(  # noqa: PLR0911 - one return per line kind reads best
    line: dict[str, Any], *, account: str, observed_at: datetime | None = None
) -> RolloutRecord | None:
    """The record one parsed rollout line stands for, or None if we do not use it."""
    kind = line.get("type")
    payload = line.get("payload")
    if kind is None and isinstance(line.get("session_meta"), dict):
        # Older versions: {"session_meta": {"payload": {...}}}.
        kind, payload = "session_meta", line["session_meta"].get("payload")
    if not isinstance(payload, dict):
        return None
    if kind == "session_meta":
        return _meta(payload)
    event = payload.get("type") if kind == "event_msg" else None
    # isinstance first: a list or an object is unhashable, and `in` a set raises.
    if not isinstance(event, str) or event not in _EVENT_NAMES:
        return None
    at = _time(line.get("timestamp"))
    if event in ("task_started", "turn_started"):
        return TurnStarted(turn_id=_str(payload.get("turn_id")), at=at)
    if event in ("task_complete", "turn_complete"):
        return TurnCompleted(
            turn_id=_str(payload.get("turn_id")),
            last_agent_message=_str(payload.get("last_agent_message")),
            error=_turn_error(payload.get("error")),
            at=at,
        )
    if event == "turn_aborted":
        return TurnAborted(
            turn_id=_str(payload.get("turn_id")), reason=_str(payload.get("reason")), at=at
        )
    if event == "token_count" and isinstance(payload.get("rate_limits"), dict):
        try:
            snapshot = QuotaSnapshot.from_rollout_rate_limits(
                payload["rate_limits"],
                account=account,
                observed_at=at or observed_at or datetime.now(UTC),
            )
        except QuotaParseError as exc:
            log.debug("rollout: unreadable rate_limits skipped: %s", exc)
            return None
        return RateLimitsObserved(snapshot=snapshot)
    return None


def _advance(state: TurnState, record: RolloutRecord) -> TurnState:
    if isinstance(record, SessionMeta):
        if state.phase is TurnPhase.UNKNOWN:
            return attrs.evolve(state, phase=TurnPhase.IDLE)
        return state
    if isinstance(record, TurnStarted):
        return attrs.evolve(state, phase=TurnPhase.IN_TURN, turn_id=record.turn_id)
    if isinstance(record, TurnCompleted):
        return TurnState(
            phase=TurnPhase.IDLE,
            turn_id=record.turn_id,
            last_error=record.error,
            turns_completed=state.turns_completed + 1,
        )
    if isinstance(record, TurnAborted):
        return TurnState(
            phase=TurnPhase.IDLE,
            turn_id=record.turn_id,
            last_error=TurnError(message=f"turn aborted ({record.reason})"),
            turns_completed=state.turns_completed,
        )
    return state


# -- the reader ------------------------------------------------------------------------


@final
class RolloutReader:
    """Follows one rollout file from a byte offset, yielding new records.

    Each :meth:`read` consumes only what was appended since the previous one.
    A last line without its newline yet is left for the next read; ``offset``
    is always the start of the first unconsumed line, so a new reader started
    at that offset misses nothing. ``account`` names the account the rate
    limits are attributed to; set it again after a rotation.
    """

    def __init__(
        self,
        path: Path | str,
        *,
        account: str = "",
        offset: int = 0,
        max_line_bytes: int = DEFAULT_MAX_LINE_BYTES,
    ) -> None:
        self.path = Path(path)
        self.account = account
        self.max_line_bytes = max_line_bytes
        self._offset = offset
        self._skipping = False  # inside an over-long line, until its newline
        self.state = TurnState()
        self.meta: SessionMeta | None = None
        self.lines_skipped = 0

    @property
    def offset(self) -> int:
        """Bytes of the file consumed so far (always at a line start)."""
        return self._offset

    def read(self) -> list[RolloutRecord]:
        """The records of every complete line appended since the last read."""
        records: list[RolloutRecord] = []
        try:
            fh = self.path.open("rb")
        except FileNotFoundError:
            return records
        with fh:
            fh.seek(self._offset)
            pending = b""
            while True:
                chunk = fh.read(_CHUNK)
                if not chunk:
                    break
                pending += chunk
                pending = self._consume(pending, records)
        return records

    def _consume(self, data: bytes, records: list[RolloutRecord]) -> bytes:
        start = 0
        while True:
            end = data.find(b"\n", start)
            if end < 0:
                break
            line = data[start:end]
            self._offset += end + 1 - start
            start = end + 1
            if self._skipping:
                self._skipping = False  # the tail of an over-long line
                continue
            self._line(line, records)
        rest = data[start:]
        if self._skipping:
            # No newline yet: still the over-long line, already counted and logged.
            self._offset += len(rest)
            return b""
        if len(rest) > self.max_line_bytes:
            # Never buffer an endless line: drop it up to its newline.
            log.warning(
                "rollout %s: a line over %d bytes was skipped", self.path, self.max_line_bytes
            )
            self.lines_skipped += 1
            self._offset += len(rest)
            self._skipping = True
            return b""
        return rest

    def _line(self, line: bytes, records: list[RolloutRecord]) -> None:  # noqa: PLR0911
        if not line.strip():
            return
        if len(line) > self.max_line_bytes:
            log.warning("rollout %s: a line of %d bytes was skipped", self.path, len(line))
            self.lines_skipped += 1
            return
        kinds = _prefix_types(line)
        if kinds:
            kind = kinds[0].decode("ascii", "replace")
            # Only trust the prefix when it names a known top-level type: a
            # payload's own "type" may come first in a reordered line.
            if kind in _KNOWN_TYPES and kind not in _WANTED_TYPES:
                return
            # Codex writes "type" before "payload", so the next "type" is the
            # event's: most event_msg lines are deltas we never use.
            if kind == "event_msg" and len(kinds) > 1 and kinds[1] not in _WANTED_EVENTS:
                return
        try:
            parsed = json.loads(line)
        except (ValueError, RecursionError):  # invalid JSON or UTF-8, or nested too deep
            log.debug("rollout %s: unreadable line skipped", self.path)
            self.lines_skipped += 1
            return
        if not isinstance(parsed, dict):
            self.lines_skipped += 1
            return
        record = parse_line(parsed, account=self.account)
        if record is None:
            return
        if isinstance(record, SessionMeta) and self.meta is None:
            self.meta = record
        self.state = _advance(self.state, record)
        records.append(record)


def _prefix_types(line: bytes) -> list[bytes]:
    """The first two ``"type"`` values near the start of a line, cheaply.

    Codex's serializer writes ``"type":"x"`` without spaces; bytes.find on
    that form is several times faster than a regex. Other spellings fall
    back to the regex.
    """
    first = line.find(b'"type":"', 0, _PREFIX_BYTES)
    if first < 0:
        return _TYPE_PREFIX.findall(line[:_PREFIX_BYTES])
    start = first + 8
    end = line.find(b'"', start, _PREFIX_BYTES)
    if end < 0:
        return _TYPE_PREFIX.findall(line[:_PREFIX_BYTES])
    kinds = [line[start:end]]
    second = line.find(b'"type":"', end, _PREFIX_BYTES)
    if second >= 0:
        close = line.find(b'"', second + 8, _PREFIX_BYTES)
        if close >= 0:
            kinds.append(line[second + 8 : close])
    return kinds


# -- liveness ----------------------------------------------------------------------------


@attrs.frozen(kw_only=True)
class WriterLock:
    """Whether a process has a thread loaded, by Codex's thread writer lock."""

    held: bool
    pid: int | None = None


#: Set (to anything but ``""`` or ``"0"``), the session code reads nothing
#: from ``/proc``: it works as on macOS, where Codex's hooks are the evidence
#: of which session a child writes. The test suite runs the real-binary
#: rotations this way too.
ENV_NO_PROC = "CODEX_SUPERVISOR_NO_PROC"


def proc_available() -> bool:
    """Whether the session code may read ``/proc`` (Linux, and not switched off)."""
    if os.environ.get(ENV_NO_PROC, "") not in ("", "0"):
        return False
    return Path("/proc/self").is_dir()


def _proc_locks() -> list[tuple[int, int, int, int]] | None:
    """(pid, major, minor, inode) of every flock on the system; None if unknown."""
    if not proc_available():
        return None
    try:
        text = Path("/proc/locks").read_text()
    except OSError:
        return None
    locks = []
    for line in text.splitlines():
        parts = line.split()
        # "1: FLOCK  ADVISORY  WRITE 1234 fe:00:2146315 0 EOF"; waiters carry "->".
        if len(parts) < 6 or parts[1] != "FLOCK":
            continue
        try:
            major, minor, inode = parts[5].split(":")
            locks.append((int(parts[4]), int(major, 16), int(minor, 16), int(inode)))
        except ValueError:
            continue
    return locks


def writer_lock(codex_home: Path | str, session_id: str) -> WriterLock:
    """Whether some process holds the writer lock of ``session_id``, and which.

    Never creates the lock file. On Linux it reads ``/proc/locks`` (no lock is
    taken, so Codex can never trip over the probe); elsewhere it tries a
    non-blocking shared lock for an instant.
    """
    if not is_session_id(session_id):
        raise SessionError(f"not a session id: {session_id!r}")
    path = Path(codex_home) / "thread-writer-locks" / f"{session_id}.lock"
    try:
        info = path.stat()
    except FileNotFoundError:
        return WriterLock(held=False)
    locks = _proc_locks()
    if locks is not None:
        device = (os.major(info.st_dev), os.minor(info.st_dev))
        exact = [pid for pid, ma, mi, ino in locks if ino == info.st_ino and (ma, mi) == device]
        # Overlay filesystems may report another device in /proc/locks than
        # stat() does; the inode alone is the fallback.
        loose = [pid for pid, _, _, ino in locks if ino == info.st_ino]
        pids = exact or loose
        return WriterLock(held=bool(pids), pid=pids[0] if pids else None)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        return WriterLock(held=False)
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except OSError as exc:
        if exc.errno in (errno.EAGAIN, errno.EWOULDBLOCK):
            return WriterLock(held=True)
        raise
    else:
        fcntl.flock(fd, fcntl.LOCK_UN)
        return WriterLock(held=False)
    finally:
        os.close(fd)


# -- binding ---------------------------------------------------------------------------------


@attrs.frozen(kw_only=True)
class Binding:
    """A child bound to its session: the id and its rollout file."""

    session_id: str
    path: Path
    meta: SessionMeta | None = None


@attrs.frozen(kw_only=True)
class BindAttempt:
    """The outcome of one look for a new session: bound, or why not."""

    binding: Binding | None
    reason: str
    candidates: tuple[str, ...] = ()
    files_examined: int = 0
    #: Several sessions qualified and nothing told them apart: a caller must
    #: not fall back to a weaker rule that would pick one of them.
    ambiguous: bool = False
    #: The evidence may bind on a later look: the rollout, or its first line,
    #: is not written yet.
    pending: bool = False


def session_created(session_id: str) -> datetime | None:
    """When a session was created, from its id (a UUIDv7 carries it), or None."""
    return _uuid7_time(session_id) if is_session_id(session_id) else None


def _uuid7_time(session_id: str) -> datetime | None:
    try:
        value = uuid.UUID(session_id)
    except ValueError:
        return None
    if value.version != 7:
        return None
    millis = value.int >> 80
    with contextlib.suppress(OverflowError, OSError, ValueError):
        return datetime.fromtimestamp(millis / 1000, UTC)
    return None


def _day_folder(root: Path, day: date) -> Path | None:
    """The date folder of ``day``, or None if it or a parent is a symlink or absent."""
    folder = root
    for part in (f"{day.year:04d}", f"{day.month:02d}", f"{day.day:02d}"):
        folder = folder / part
        if folder.is_symlink() or not folder.is_dir():
            return None
    return folder


def _scan_dir(folder: Path) -> Iterator[os.DirEntry[str]]:
    try:
        with os.scandir(folder) as entries:
            yield from entries
    except (FileNotFoundError, NotADirectoryError, PermissionError):
        return


def _rollout_files(folder: Path) -> Iterator[tuple[os.DirEntry[str], re.Match[str]]]:
    for entry in _scan_dir(folder):
        if entry.is_symlink() or not entry.is_file(follow_symlinks=False):
            continue
        match = _ROLLOUT_RE.fullmatch(entry.name)
        if match:
            yield entry, match


def _numbered_dirs(folder: Path, width: int) -> list[Path]:
    names = [
        entry.name
        for entry in _scan_dir(folder)
        if entry.is_dir(follow_symlinks=False) and len(entry.name) == width and entry.name.isdigit()
    ]
    return [folder / name for name in sorted(names, reverse=True)]


def _day_folders_newest_first(root: Path) -> Iterator[Path]:
    for year in _numbered_dirs(root, 4):
        for month in _numbered_dirs(year, 2):
            yield from _numbered_dirs(month, 2)


def _read_rollout(path: Path, read: Callable[[io.BufferedReader], bytes]) -> bytes | None:
    """What ``read`` takes from a rollout, never through a link; None when it cannot be read."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        with os.fdopen(fd, "rb") as fh:
            return read(fh)
    except OSError:  # a folder, or a read error
        return None


def _tail(fh: io.BufferedReader) -> bytes:
    fh.seek(max(0, fh.seek(0, os.SEEK_END) - _TAIL_LIMIT))
    return fh.read(_TAIL_LIMIT)


def read_session_meta(path: Path) -> SessionMeta | None:
    """The ``session_meta`` of a rollout (its first line), or None if unreadable."""
    first = _read_rollout(path, lambda fh: fh.readline(_FIRST_LINE_LIMIT))
    if first is None:
        return None
    try:
        line = json.loads(first)
    except (ValueError, RecursionError):  # nested past the recursion limit
        return None
    record = parse_line(line, account="") if isinstance(line, dict) else None
    return record if isinstance(record, SessionMeta) else None


#: How many held sessions' rollouts :meth:`SessionBinder.loaded_here` looks up, at most.
_MAX_LOOKUPS = 64


def _held(codex_home: Path, session_id: str) -> bool:
    """Whether a writer lock is held; a probe that fails (ENOLCK on NFS) counts as not."""
    try:
        return writer_lock(codex_home, session_id).held
    except OSError as exc:
        log.debug("writer lock of %s cannot be probed: %s", session_id, exc)
        return False


#: How much of a rollout's end :func:`last_turn_start` reads at most.
_TAIL_LIMIT = 256 * 1024


def last_turn_start(path: Path) -> datetime | None:
    """When the last turn of a rollout started (its last ``task_started``), or None.

    Reads the end of the file only (256 KiB): None also when no turn marker
    lies there, or the file cannot be read.
    """
    tail = _read_rollout(path, _tail)
    if tail is None:
        return None
    for raw in reversed(tail.split(b"\n")):
        if b"task_started" not in raw and b"turn_started" not in raw:
            continue
        with contextlib.suppress(ValueError, RecursionError):
            line = json.loads(raw)
            record = parse_line(line, account="") if isinstance(line, dict) else None
            if isinstance(record, TurnStarted):
                return record.at
    return None


def _same_dir(a: str | None, b: Path) -> bool:
    if a is None:
        return False
    # ValueError: a cwd read from a rollout may hold a NUL or a lone surrogate.
    with contextlib.suppress(OSError, ValueError):
        return Path(a).resolve() == b.resolve()
    return Path(a) == b


@final
class SessionBinder:
    """Finds the rollout of a session in a CODEX_HOME's ``sessions/`` folder.

    Pass the CODEX_HOME the child runs in (an account home): its
    ``sessions`` link is resolved once to the shared folder, and its
    ``thread-writer-locks`` tell which process writes which session. Links
    inside ``sessions/`` are never followed.
    """

    def __init__(self, codex_home: Path | str, *, clock: Clock | None = None) -> None:
        self.codex_home = Path(codex_home)
        self.clock = clock or SystemClock()
        self._meta_cache: dict[Path, SessionMeta | None] = {}

    @functools.cached_property
    def sessions_dir(self) -> Path:
        """The real ``sessions`` folder (the account home's link, resolved once)."""
        return (self.codex_home / "sessions").resolve()

    @functools.cached_property
    def archived_dir(self) -> Path:
        """The real ``archived_sessions`` folder."""
        return (self.codex_home / "archived_sessions").resolve()

    @functools.cached_property
    def locks_dir(self) -> Path:
        """The real ``thread-writer-locks`` folder."""
        return (self.codex_home / "thread-writer-locks").resolve()

    def _meta(self, path: Path) -> SessionMeta | None:
        # Session metadata never changes once written: read each file once.
        if path not in self._meta_cache:
            if len(self._meta_cache) > 4096:
                self._meta_cache.clear()
            self._meta_cache[path] = read_session_meta(path)
        return self._meta_cache[path]

    def find_by_id(self, session_id: str) -> Binding | None:
        """The rollout of ``session_id``: date folders newest first, then the archive.

        A UUIDv7 id carries its creation time, so its date folder (and the
        days beside it, for time zones) is looked at first.
        """
        if not is_session_id(session_id):
            raise SessionError(f"not a session id: {session_id!r}")
        looked: set[Path] = set()
        found = self._in_uuid7_days(session_id, looked)
        if found:
            return found
        for folder in _day_folders_newest_first(self.sessions_dir):
            if folder in looked:
                continue
            found = self._in_folder(folder, session_id)
            if found:
                return found
        return self._in_archive(self.archived_dir, session_id)

    def _in_uuid7_days(self, session_id: str, looked: set[Path]) -> Binding | None:
        """The rollout of a UUIDv7 id in its own date folder or the days beside it.

        At most three folders, whatever the history's size; None for other ids.
        """
        created = _uuid7_time(session_id)
        if created is None:
            return None
        local = created.astimezone().date()
        for day in (local, local - timedelta(days=1), local + timedelta(days=1)):
            folder = _day_folder(self.sessions_dir, day)
            if folder is None:
                continue
            looked.add(folder)
            found = self._in_folder(folder, session_id)
            if found:
                return found
        return None

    def _in_folder(self, folder: Path, session_id: str) -> Binding | None:
        suffix = f"-{session_id}.jsonl"
        for entry, _ in _rollout_files(folder):
            if entry.name.endswith(suffix):
                path = Path(entry.path)
                return Binding(session_id=session_id, path=path, meta=self._meta(path))
        return None

    def _in_archive(self, folder: Path, session_id: str, depth: int = 0) -> Binding | None:
        found = self._in_folder(folder, session_id)
        if found or depth >= 3:
            return found
        for entry in _scan_dir(folder):
            if entry.is_dir(follow_symlinks=False):
                found = self._in_archive(Path(entry.path), session_id, depth + 1)
                if found:
                    return found
        return None

    def bind_new(
        self,
        *,
        cwd: Path | str,
        launched_at: datetime,
        pid: int | None = None,
        exclude: Iterable[str] = (),
        finished_only: bool = False,
    ) -> BindAttempt:
        """One look for the session a child launched at ``launched_at`` in ``cwd`` created.

        Candidates: rollouts in the launch day's and the next day's folders
        (local time), named after the launch, whose ``session_meta`` was
        written after the launch with ``cwd`` as its working folder. One
        candidate binds. Several bind only when exactly one has its writer
        lock held by ``pid`` (our child); otherwise the attempt stays unbound
        and its ``reason`` says why.

        ``finished_only`` is for a child that already exited before it could
        be seen writing: only sessions no live process holds are candidates,
        and a lone one binds (two finished in the folder stay unbound).
        """
        matches, examined = self._new_matches(
            cwd=cwd, launched_at=launched_at, exclude=exclude, finished_only=finished_only
        )
        ids = tuple(sorted(m.session_id for m in matches))
        if not matches:
            return BindAttempt(
                binding=None, reason="no new session in this folder yet", files_examined=examined
            )
        return self._confirm(matches, ids, pid, examined)

    def loaded_here(self, *, cwd: Path | str, written_since: float) -> list[Binding]:
        """Sessions of ``cwd`` some process has loaded now (writer lock held), written lately.

        From every held writer lock (probed with ``flock``: no ``/proc``
        needed; lock files outlive their sessions, so most are not held), each
        rollout found by id — at most 64 of them, looked up in their UUIDv7
        date folders — kept when its ``session_meta`` names ``cwd`` and it was
        modified at or after ``written_since`` (a Unix time).
        """
        found: list[Binding] = []
        folder = Path(cwd)
        looked_up = 0
        for entry in _scan_dir(self.locks_dir):
            name = _LOCK_RE.fullmatch(entry.name)
            if name is None or not _held(self.codex_home, name.group(1)):
                continue
            looked_up += 1
            if looked_up > _MAX_LOOKUPS:
                log.debug("loaded sessions: only %d rollouts looked up", _MAX_LOOKUPS)
                break
            binding = self._in_uuid7_days(name.group(1), set())
            if binding is None or binding.meta is None or not _same_dir(binding.meta.cwd, folder):
                continue
            with contextlib.suppress(OSError):
                if binding.path.stat().st_mtime >= written_since:
                    found.append(binding)
        return found

    def _new_matches(
        self,
        *,
        cwd: Path | str,
        launched_at: datetime,
        exclude: Iterable[str],
        finished_only: bool,
    ) -> tuple[list[Binding], int]:
        if launched_at.tzinfo is None:
            raise SessionError("launched_at must be an aware datetime")
        folder_cwd = Path(cwd)
        local = launched_at.astimezone()
        earliest_name = (local - _CREATION_SLACK).replace(tzinfo=None, microsecond=0)
        excluded = set(exclude)
        examined = 0
        matches: list[Binding] = []
        for day in (local.date(), local.date() + timedelta(days=1)):
            folder = _day_folder(self.sessions_dir, day)
            if folder is None:
                continue
            for entry, name in _rollout_files(folder):
                session_id = name.group(7)
                if session_id in excluded:
                    continue
                stamp = _name_time(name)
                if stamp is None or stamp < earliest_name:
                    continue
                examined += 1
                path = Path(entry.path)
                meta = self._meta(path)
                if meta is None:
                    # Not written yet (Codex creates the file, then the line):
                    # forget it so the next look reads it again.
                    self._meta_cache.pop(path, None)
                    continue
                if meta.timestamp is not None and meta.timestamp < launched_at - _CREATION_SLACK:
                    continue
                if not _same_dir(meta.cwd, folder_cwd):
                    continue
                if finished_only and writer_lock(self.codex_home, session_id).held:
                    continue
                matches.append(Binding(session_id=session_id, path=path, meta=meta))
        return matches, examined

    def _confirm(
        self, matches: list[Binding], ids: tuple[str, ...], pid: int | None, examined: int
    ) -> BindAttempt:
        if pid is None:
            if len(matches) == 1:
                return BindAttempt(
                    binding=matches[0],
                    reason="the only new session (no child pid to confirm it)",
                    candidates=ids,
                    files_examined=examined,
                )
            return BindAttempt(
                binding=None,
                reason=(
                    f"{len(matches)} new sessions in this folder "
                    "and no child pid to tell them apart"
                ),
                candidates=ids,
                files_examined=examined,
                ambiguous=True,
            )
        # With a child pid, even a lone candidate must be shown to be ours: a
        # session another process started a moment earlier in the same
        # folder looks exactly like ours until then.
        ours = [m for m in matches if self._owned_by(m, pid)]
        if len(ours) == 1:
            return BindAttempt(
                binding=ours[0],
                reason=f"{ours[0].session_id} is written by pid {pid}",
                candidates=ids,
                files_examined=examined,
            )
        reason = (
            f"{len(matches)} new session(s) in this folder, "
            f"none shown to be written by pid {pid} yet"
            if not ours
            else f"{len(ours)} new sessions written by pid {pid}: ambiguous, not guessing"
        )
        return BindAttempt(
            binding=None,
            reason=reason,
            candidates=ids,
            files_examined=examined,
            ambiguous=len(ours) > 1,
        )

    def from_hook(self, session_id: str, transcript_path: str | None) -> BindAttempt:
        """The session a hook of the child's own reported (see :mod:`.hooks`): exact evidence.

        Codex names the thread whose turn starts or ends and its rollout. The
        rollout must be a file of this home's ``sessions`` folder named after
        that id (else it is looked up by id) whose ``session_meta`` is written
        (else the attempt is ``pending``: look again). Only a conversation's
        thread binds, one whose ``source`` is a plain name (``cli``,
        ``exec``, ...): a subagent's thread (or any other kind Codex starts
        inside a session) is not the conversation on screen.
        """
        if not is_session_id(session_id):
            return BindAttempt(binding=None, reason=f"a hook named no session id: {session_id!r}")
        found = self._reported(session_id, transcript_path) or self.find_by_id(session_id)
        if found is not None and found.meta is None:
            self._meta_cache.pop(found.path, None)  # read again on the next look
        if found is None or found.meta is None:
            return BindAttempt(
                binding=None,
                reason=f"a hook named session {session_id}, whose rollout is not written yet",
                pending=True,
            )
        if found.meta.subagent or found.meta.source is None:
            return BindAttempt(
                binding=None,
                reason=f"a hook named session {session_id}, a thread that is not a conversation",
            )
        return BindAttempt(
            binding=found,
            reason=f"Codex's hook named session {session_id}",
            candidates=(session_id,),
        )

    def _reported(self, session_id: str, transcript_path: str | None) -> Binding | None:
        if not transcript_path:
            return None
        with contextlib.suppress(OSError, ValueError):
            path = Path(transcript_path)
            real = path.resolve(strict=True)
            name = _ROLLOUT_RE.fullmatch(real.name)
            inside = real.is_relative_to(self.sessions_dir) or real.is_relative_to(
                self.archived_dir
            )
            if name and name.group(7) == session_id and inside and real.is_file():
                self._meta_cache.pop(real, None)  # a rollout only just started
                return Binding(session_id=session_id, path=real, meta=self._meta(real))
        return None

    def _owned_by(self, binding: Binding, pid: int) -> bool:
        """Whether ``pid`` (or a process it started) is shown to write ``binding``'s rollout."""
        return self.still_writes(binding, pid) is True

    def still_writes(self, binding: Binding, pid: int) -> bool | None:
        """Whether process ``pid`` writes ``binding``'s session: ask right before a rotation.

        Evidence: the holder of the thread writer lock, else a descriptor open
        *for writing* on the rollout (Codex 0.169.0 opens it
        ``O_RDWR|O_APPEND`` and keeps it open while the thread is loaded) —
        either in ``pid`` or in a process it started (npm's ``codex`` is a
        node launcher whose child is the native binary), looked at in the same
        process tree as :meth:`open_by`. A descriptor open read-only is no
        evidence. None when neither can be read (no ``/proc``, and the lock
        probe cannot name its holder): the caller keeps what it knew.
        """
        lock = writer_lock(self.codex_home, binding.session_id)
        tree = _process_tree(pid)
        if lock.pid is not None:
            return tree is not None and lock.pid in tree
        files = None if tree is None else _open_files(tree, lambda t: t == str(binding.path))
        if files is None:
            return None
        return any(_writable(flags) for _, flags in files)

    async def wait_for_new(
        self,
        *,
        cwd: Path | str,
        launched_at: datetime,
        pid: int | None = None,
        timeout: float = 30.0,  # noqa: ASYNC109 - a deadline on the injectable clock
        poll: float = 0.1,
        exclude: Iterable[str] = (),
    ) -> Binding:
        """Poll :meth:`bind_new` until bound; SessionError with the last reason on timeout."""
        deadline = self.clock.monotonic() + timeout
        excluded = tuple(exclude)
        while True:
            attempt = self.bind_new(cwd=cwd, launched_at=launched_at, pid=pid, exclude=excluded)
            if attempt.binding is not None:
                log.debug("session bound: %s (%s)", attempt.binding.session_id, attempt.reason)
                return attempt.binding
            if self.clock.monotonic() >= deadline:
                raise SessionError(f"no session bound within {timeout:g}s: {attempt.reason}")
            await self.clock.sleep(poll)

    def open_by(self, pid: int) -> BindAttempt:
        """The session process ``pid`` writes, read from its open files (Linux).

        Codex keeps its rollout open for writing while the thread is loaded,
        so this is exact: no guessing from folders or times, and it works for
        resumes by name and ``--last`` and for forks as well as new sessions.
        A rollout counts only when ``pid`` has it open *for writing*
        (``/proc/PID/fdinfo`` flags) or holds its writer lock: ``codex fork``
        reads its source and the resume picker reads many, read-only. When
        ``pid`` writes several sessions the attempt is ``ambiguous`` and
        unbound, never "the first one found".

        "``pid``" means ``pid`` and the processes it started (a bounded walk
        of its process tree): npm's ``codex`` is a node launcher that holds
        no rollout itself, and a check blind to its child would miss a
        second session the native binary writes.
        """
        found = self._written_by(pid)
        if found is None:
            return BindAttempt(binding=None, reason=f"the open files of pid {pid} cannot be read")
        written, read_only = found
        ids = tuple(sorted(written))
        if len(ids) == 1:
            path = written[ids[0]]
            return BindAttempt(
                binding=Binding(session_id=ids[0], path=path, meta=self._meta(path)),
                reason=f"{ids[0]} is written by pid {pid}",
                candidates=ids,
            )
        if not ids:
            seen = f" ({read_only} open read-only, not evidence)" if read_only else ""
            return BindAttempt(binding=None, reason=f"pid {pid} writes no rollout yet{seen}")
        return BindAttempt(
            binding=None,
            reason=(
                f"pid {pid} writes {len(ids)} sessions ({', '.join(ids)}): ambiguous, not guessing"
            ),
            candidates=ids,
            ambiguous=True,
        )

    def _written_by(self, pid: int) -> tuple[dict[str, Path], int] | None:
        """The rollouts ``pid``'s process tree writes by id, and how many more it only reads.

        None when ``/proc/PID`` cannot be read.
        """
        root = str(self.sessions_dir) + os.sep
        locks = str(self.locks_dir) + os.sep
        tree = _process_tree(pid)
        files = None if tree is None else _open_files(tree, lambda t: t.startswith((root, locks)))
        if tree is None or files is None:
            return None
        written: dict[str, Path] = {}
        read_only: dict[str, Path] = {}
        locked: set[str] = set()
        for target, flags in files:
            if str(target).startswith(locks):
                lock_name = _LOCK_RE.fullmatch(target.name)
                if lock_name and target.parent == self.locks_dir:
                    locked.add(lock_name.group(1))
                continue
            match = _ROLLOUT_RE.fullmatch(target.name)
            if match is None:
                continue
            if _writable(flags):
                written[match.group(7)] = target
            else:
                read_only.setdefault(match.group(7), target)
        # A writer lock pid holds is evidence too (an open lock file alone is
        # not: the lock may not be taken yet, or already released).
        for session_id in sorted(locked - written.keys()):
            lock = writer_lock(self.codex_home, session_id)
            if lock.pid is None or lock.pid not in tree:
                continue
            path = read_only.get(session_id)
            if path is None:
                # Bounded: a lock is often taken before the rollout exists,
                # and this runs on every look while a child is unbound.
                binding = self._in_uuid7_days(session_id, set())
                if binding is None:
                    continue
                path = binding.path
            written[session_id] = path
        return written, len(read_only.keys() - written.keys())

    def find_open_by(self, pid: int) -> Binding | None:
        """The one session process ``pid`` writes (see :meth:`open_by`), else None.

        None also when it writes several: ask :meth:`open_by` to tell that
        apart from "none yet".
        """
        return self.open_by(pid).binding

    def resolve_last(self, *, cwd: Path | str, interactive_only: bool = True) -> Binding | None:
        """The session ``codex resume --last`` would pick in ``cwd``: the last one updated.

        A resumed session keeps appending to its old file in an old date
        folder, so "last updated" needs the modification time of every
        rollout; this is a one-off at launch, never part of a polling loop.
        Sessions of ``codex exec`` are left out unless ``interactive_only`` is
        False (Codex's ``--include-non-interactive``).
        """
        folder_cwd = Path(cwd)
        files: list[tuple[float, str, Path]] = []
        for day in _day_folders_newest_first(self.sessions_dir):
            for entry, name in _rollout_files(day):
                with contextlib.suppress(OSError):
                    files.append(
                        (
                            entry.stat(follow_symlinks=False).st_mtime,
                            name.group(7),
                            Path(entry.path),
                        )
                    )
        for _, session_id, path in sorted(files, reverse=True):
            meta = self._meta(path)
            if meta is None or not _same_dir(meta.cwd, folder_cwd):
                continue
            if interactive_only and (meta.source == "exec" or meta.originator == "codex_exec"):
                continue
            return Binding(session_id=session_id, path=path, meta=meta)
        return None


#: The process tree of a child is looked at this deep below it and this wide
#: at most: the node launcher, the native binary and a few of its helpers.
_TREE_DEPTH = 4
_TREE_LIMIT = 64


@functools.cache
def _has_children_files() -> bool:
    """Whether this kernel lists a task's children in ``/proc`` (CONFIG_PROC_CHILDREN)."""
    return Path("/proc/thread-self/children").exists()


def _children_by_parent() -> dict[int, list[int]]:
    """Every process's children, from each ``/proc/PID/stat``: the slow fallback."""
    found: dict[int, list[int]] = {}
    for entry in _scan_dir(Path("/proc")):
        if not entry.name.isdigit():
            continue
        try:
            stat_line = Path(entry.path, "stat").read_text()
            parent = int(stat_line.rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue  # exited meanwhile, or unreadable
        found.setdefault(parent, []).append(int(entry.name))
    return found


def _children_of(pid: int) -> list[int]:
    """The children of ``pid``, from ``/proc/PID/task/*/children``."""
    children: list[int] = []
    for task in _scan_dir(Path(f"/proc/{pid}/task")):
        with contextlib.suppress(OSError, ValueError):
            children.extend(int(c) for c in Path(task.path, "children").read_text().split())
    return children


def _process_tree(pid: int) -> list[int] | None:
    """``pid`` and the processes it started, breadth first (Linux ``/proc``).

    Bounded: ``_TREE_DEPTH`` levels and ``_TREE_LIMIT`` processes, so a
    child running many helpers costs no more than that. None when ``pid``
    itself cannot be read (not Linux, or no such process).
    """
    if not proc_available() or not Path(f"/proc/{pid}").is_dir():
        return None
    by_parent = None if _has_children_files() else _children_by_parent()
    tree = [pid]
    level = [pid]
    for _ in range(_TREE_DEPTH):
        below: list[int] = []
        for parent in level:
            kids = _children_of(parent) if by_parent is None else by_parent.get(parent, [])
            below.extend(k for k in kids if k not in tree and k not in below)
        room = _TREE_LIMIT - len(tree)
        if len(below) > room:
            log.debug("process tree of pid %d: only %d processes looked at", pid, _TREE_LIMIT)
        below = below[: max(room, 0)]
        if not below:
            break
        tree.extend(below)
        level = below
    return tree


def _fd_flags(pid: int, fd: str) -> int | None:
    """The open flags of descriptor ``fd`` of ``pid`` (``/proc/PID/fdinfo``, octal)."""
    try:
        text = Path(f"/proc/{pid}/fdinfo/{fd}").read_text()
    except OSError:
        return None
    for line in text.splitlines():
        if line.startswith("flags:"):
            with contextlib.suppress(ValueError, IndexError):
                return int(line.split()[1], 8)
            return None
    return None


def _writable(flags: int | None) -> bool:
    """Whether open flags allow writing: ``O_WRONLY`` or ``O_RDWR``.

    ``O_APPEND`` alone proves nothing (``O_RDONLY|O_APPEND`` cannot write);
    the access mode is the same two bits on every Linux architecture.
    """
    return flags is not None and (flags & os.O_ACCMODE) in (os.O_WRONLY, os.O_RDWR)


def _open_files(
    pids: Sequence[int], wanted: Callable[[str], bool]
) -> list[tuple[Path, int | None]] | None:
    """(target, open flags) of the descriptors of ``pids`` whose target is ``wanted``.

    None when the first process's ``/proc/PID/fd`` cannot be read (not Linux,
    or no such process of ours); a later one that cannot be read (exited
    meanwhile) adds nothing. Flags are None when unreadable, which counts as
    "not for writing". A descriptor closed and reused between reading its
    target and its flags is left out rather than paired with another file's
    flags.
    """
    if not proc_available():
        return None
    files: list[tuple[Path, int | None]] = []
    for index, pid in enumerate(pids):
        try:
            entries = list(os.scandir(f"/proc/{pid}/fd"))
        except OSError:
            if index == 0:
                return None
            continue
        for entry in entries:
            try:
                target = str(Path(entry.path).readlink())
            except OSError:
                continue  # closed meanwhile
            if not wanted(target):
                continue
            flags = _fd_flags(pid, entry.name)
            try:
                if str(Path(entry.path).readlink()) != target:
                    continue
            except OSError:
                continue
            files.append((Path(target), flags))
    return files


def _name_time(match: re.Match[str]) -> datetime | None:
    try:
        year, month, day, hour, minute, second = (int(match.group(i)) for i in range(1, 7))
        return datetime(year, month, day, hour, minute, second)  # noqa: DTZ001 - local, like the name
    except ValueError:
        return None
