"""Where the pool state document lives: a file on one machine, or Redis for several.

:class:`~codex_supervisor.accounts.AccountPool` keeps its metadata (identities,
last snapshots, cooldowns) in one versioned JSON document that it reads,
changes and writes whole under the pool lock; the merge rules (never shorten a
block, keep the newer snapshot) live in those changes, so they hold whatever
the store. A store gives the lock and the bytes:

- :class:`FileStateStore` — ``<root>/state.json`` written by rename, the
  previous good version kept as ``state.json.bak``, the lock ``<root>/pool.lock``
  (an OS file lock). What the library has always done.
- :class:`RedisStateStore` — the document, its backup and a version counter
  under one hash tag in Redis; the lock a key taken with ``SET NX PX`` and
  given back only by its taker (a Lua check of its token), so a holder that
  died frees it after ``lock_ttl``.

Both are synchronous: the pool's state methods are short and synchronous.
"""

from __future__ import annotations

import contextlib
import logging
import secrets
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import attrs

from . import errors
from ._fs import write_atomic
from ._redis import connect
from ._redis import masked_url as _masked
from .lease import FileLock

__all__ = ["FileStateStore", "RedisStateStore", "StateStore"]

log = logging.getLogger(__name__)


@runtime_checkable
class StateStore(Protocol):
    """The pool state document's home: a lock, the bytes, and a change token."""

    @property
    def where(self) -> str:
        """Where the document is, for messages (a path, or a masked URL and key)."""
        ...

    def locked(self, timeout: float | None = None) -> contextlib.AbstractContextManager[None]:
        """Exclusive across every process using the store, for a read-change-write.

        Raises :class:`~codex_supervisor.errors.LeaseTimeout` when it stays
        held by another past ``timeout`` (None: the store's own).
        """
        ...

    def read(self) -> bytes | None:
        """The document, or None when there is none yet."""
        ...

    def write(self, data: bytes) -> None:
        """Replace the document (under :meth:`locked`), keeping the previous one as backup."""
        ...

    def backup(self) -> str | None:
        """Where the previous good version is, when there is one (for messages)."""
        ...

    def token(self) -> object | None:
        """Something that changes whenever the document does; None when there is none."""
        ...

    def watch_paths(self) -> list[Path]:
        """Files whose writes mean the document changed (none: poll :meth:`token`)."""
        ...


@attrs.define
class FileStateStore:
    """``<root>/state.json`` with ``state.json.bak``, locked by ``<root>/pool.lock``."""

    root: Path = attrs.field(converter=Path)
    lock_timeout: float = 10.0

    @property
    def path(self) -> Path:
        """The state file."""
        return self.root / "state.json"

    @property
    def backup_path(self) -> Path:
        """The previous good version of the state file."""
        return self.root / "state.json.bak"

    @property
    def where(self) -> str:
        """The state file's path."""
        return str(self.path)

    @contextlib.contextmanager
    def locked(self, timeout: float | None = None) -> Iterator[None]:
        """The OS lock ``<root>/pool.lock`` (the root made 0700 first)."""
        _mkdir_private(self.root)
        wait = self.lock_timeout if timeout is None else timeout
        with FileLock(self.root / "pool.lock", timeout=wait):
            yield

    def read(self) -> bytes | None:
        """The file's bytes; None when it does not exist."""
        try:
            return self.path.read_bytes()
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise errors.StateError(f"cannot read {self.path}: {exc}") from exc

    def write(self, data: bytes) -> None:
        """Rename the new version into place; the one it replaces becomes the backup."""
        with contextlib.suppress(FileNotFoundError):
            # The backup is the last state that loaded cleanly: a write only
            # runs after a read of the current file succeeded.
            write_atomic(self.backup_path, self.path.read_bytes())
        write_atomic(self.path, data)

    def backup(self) -> str | None:
        """The backup file, when it exists."""
        return str(self.backup_path) if self.backup_path.exists() else None

    def token(self) -> tuple[int, int, int] | None:
        """(inode, size, mtime): every write is a whole-file rename, so it changes."""
        try:
            info = self.path.stat()
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise errors.StateError(f"cannot read {self.path}: {exc}") from exc
        return (info.st_ino, info.st_size, info.st_mtime_ns)

    def watch_paths(self) -> list[Path]:
        """The state file."""
        return [self.path]


def _mkdir_private(path: Path) -> None:
    path.mkdir(mode=0o700, parents=True, exist_ok=True)


# KEYS: lock. ARGV: token. Deletes the lock only while this token holds it.
_UNLOCK = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""

# KEYS: document, backup, version, lock. ARGV: data, lock token.
# Refused (0) unless the caller still holds the lock: a holder that stalled past
# the lock's TTL must not overwrite what the next holder wrote.
_WRITE = """
if redis.call('GET', KEYS[4]) ~= ARGV[2] then return 0 end
local old = redis.call('GET', KEYS[1])
if old then redis.call('SET', KEYS[2], old) end
redis.call('SET', KEYS[1], ARGV[1])
return redis.call('INCR', KEYS[3])
"""


@attrs.define
class RedisStateStore:
    """The document at ``{prefix}state:{pool}`` in Redis at ``url`` (extra ``redis``).

    ``pool`` names the pool (several pools may share one server); the backup
    and the version counter sit beside the document under the same hash tag.
    The lock is ``{prefix}state-lock:{pool}``, held at most ``lock_ttl``
    seconds (a read-change-write takes milliseconds; a holder that died
    frees it then) and waited for up to ``lock_timeout``.
    """

    url: str = attrs.field(repr=_masked)
    pool: str = "default"
    prefix: str = attrs.field(default="codex-supervisor:", kw_only=True)
    lock_timeout: float = attrs.field(default=10.0, kw_only=True)
    lock_ttl: float = attrs.field(default=30.0, kw_only=True)
    socket_timeout: float = attrs.field(default=5.0, kw_only=True)
    _redis: Any = attrs.field(default=None, init=False, repr=False)
    # The lock token of the calling thread, while it holds the lock.
    _held: threading.local = attrs.field(factory=threading.local, init=False, repr=False)

    def __attrs_post_init__(self) -> None:
        self._redis = connect(
            self.url,
            socket_timeout=self.socket_timeout,
            who="RedisStateStore",
            error=errors.ConfigError,
        )

    def _key(self, what: str) -> str:
        return f"{self.prefix}{what}:{{{self.pool}}}"

    @property
    def where(self) -> str:
        """The masked URL and the document's key."""
        return f"{_masked(self.url)} key {self._key('state')}"

    @contextlib.contextmanager
    def locked(self, timeout: float | None = None) -> Iterator[None]:
        """The lock key, taken with ``SET NX PX`` and polled for until the timeout."""
        wait = self.lock_timeout if timeout is None else timeout
        token = secrets.token_hex(16).encode()
        key = self._key("state-lock")
        deadline = time.monotonic() + wait
        while not self._call("lock", self._redis.set, key, token, nx=True,
                             px=max(1, round(self.lock_ttl * 1000))):  # fmt: skip
            if time.monotonic() >= deadline:
                raise errors.LeaseTimeout(self.where, wait, holder=None)
            time.sleep(0.01)
        self._held.token = token
        failed = True
        try:
            yield
            failed = False
        finally:
            self._held.token = None
            try:
                released = self._call("unlock", self._redis.eval, _UNLOCK, 1, key, token)
            except errors.StateError:
                if not failed:
                    raise
                # The block's own error says more; the lock frees itself after lock_ttl.
                log.warning("could not give back the pool state lock %s", key, exc_info=True)
            else:
                if not released:
                    log.warning("the pool state lock %s had expired before it was given back", key)

    def read(self) -> bytes | None:
        """The document; None when there is none yet."""
        data = self._call("read", self._redis.get, self._key("state"))
        return None if data is None else bytes(data)

    def write(self, data: bytes) -> None:
        """Replace the document; the one it replaces becomes the backup; the version grows.

        Only under :meth:`locked`, and only while the lock is still this
        caller's: a holder that stalled past ``lock_ttl`` gets a StateError.
        """
        token = getattr(self._held, "token", None)
        if token is None:
            raise errors.StateError("RedisStateStore.write needs the lock (locked())")
        keys = (
            self._key("state"),
            self._key("state-backup"),
            self._key("state-version"),
            self._key("state-lock"),
        )
        if not self._call("write", self._redis.eval, _WRITE, 4, *keys, data, token):
            raise errors.StateError(
                f"the pool state lock of {self.where} expired before the write "
                f"(held longer than {self.lock_ttl:g}s); nothing was written"
            )

    def backup(self) -> str | None:
        """The backup's key, when there is one."""
        exists = self._call("read", self._redis.exists, self._key("state-backup"))
        return f"{_masked(self.url)} key {self._key('state-backup')}" if exists else None

    def token(self) -> int | None:
        """The version counter (None before the first write)."""
        value = self._call("read", self._redis.get, self._key("state-version"))
        try:
            return None if value is None else int(value)
        except ValueError:
            raise errors.StateError(f"the version of {self.where} is no number") from None

    def watch_paths(self) -> list[Path]:
        """None: a change is seen by polling :meth:`token`."""
        return []

    def _call(self, what: str, call: Any, *args: Any, **kwargs: Any) -> Any:
        from redis.exceptions import RedisError  # noqa: PLC0415 - the optional dependency

        try:
            return call(*args, **kwargs)
        except (RedisError, OSError) as exc:
            raise errors.StateError(
                f"cannot {what} the pool state in Redis at {_masked(self.url)}: {_masked(str(exc))}"
            ) from None
