"""A home store: a Codex home folder (``CODEX_HOME``) archived per key, restored safely.

A pooled ``codex app-server`` keeps its sessions, config and caches in its home
folder. A :class:`HomeStore` saves that folder under a key when the process is
retired and brings it back before the next one starts, possibly elsewhere.

The archive format (a gzip'ed tar stream, packed and restored safely) is
:mod:`.archive`'s.

:class:`LocalDirHomeStore` keeps archives under a root folder as
``<root>/<keydir>/<version:020d>.tar.gz``. A put packs into a temporary file in
the key's folder (outside any lock, as that is the slow part), fsyncs it, then,
under the key's :class:`~codex_supervisor.lease.FileLock`, renames it into
place only if its version is newer than the stored one, and removes the older
archives. A get opens the newest archive under the same lock and unpacks it
after releasing the lock: the open file survives a concurrent put that deletes
it, so a reader always restores one complete version.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import logging
import os
import re
import secrets
import time
from pathlib import Path
from typing import Protocol, final

import attrs

from .. import errors
from .._fs import fsync_dir
from ..lease import FileLock
from .archive import (
    MAX_METADATA_HEADER,
    PRIVATE_ENTRIES,
    ArchiveStats,
    pack_home,
    unpack_home,
)

__all__ = [
    "MAX_METADATA_HEADER",
    "PRIVATE_ENTRIES",
    "ArchiveStats",
    "HomeStore",
    "LocalDirHomeStore",
    "pack_home",
    "unpack_home",
]

log = logging.getLogger(__name__)

_FOLDER_MODE = 0o700
_ARCHIVE_MODE = 0o600
_TEMP_PREFIX = ".tmp-"
_STALE_TEMP_AGE = 3600.0
_ARCHIVE_NAME = re.compile(r"([0-9]{20})\.tar\.gz")
_VERSION_LIMIT = 10**20
_MAX_KEYDIR = 200


# --------------------------------------------------------------------------- #
# Stores


class HomeStore(Protocol):
    """Where Codex homes are kept between the lives of pooled app-servers.

    Every archive has a key and a version; a store keeps the newest version
    of each key and refuses to replace it with an older or equal one.
    """

    async def put(self, key: str, source: Path, *, version: int) -> None:
        """Archive the folder ``source`` as ``version`` of ``key``.

        Raises :class:`~codex_supervisor.errors.StaleArchive` when the store
        holds ``version`` or a newer one already (and keeps that one).
        """
        ...

    async def get(self, key: str, dest: Path) -> int:
        """Restore the newest archive of ``key`` into the existing folder ``dest``.

        Returns the version restored; raises
        :class:`~codex_supervisor.errors.HomeNotFound` when there is none.
        """
        ...

    async def delete(self, key: str) -> None:
        """Remove every archive of ``key``; HomeNotFound when there is none."""
        ...

    async def version(self, key: str) -> int | None:
        """The newest stored version of ``key``, or None."""
        ...


@final
@attrs.define
class LocalDirHomeStore:
    """A :class:`HomeStore` in a local folder: ``root/<keydir>/<version:020d>.tar.gz``.

    ``keydir`` is ``k-`` and the unpadded URL-safe base64 of the key's UTF-8
    bytes, or ``h-`` and its SHA-256 when that would exceed 200 characters, so
    any key maps inside ``root``. Folders are created ``0o700``, archives
    ``0o600``. The key's ``.lock`` file serialises puts, gets and deletes
    across processes (``lock_timeout`` seconds, then
    :class:`~codex_supervisor.errors.LeaseTimeout`); lock files are never
    removed, like every :class:`~codex_supervisor.lease.FileLock`'s.

    The file work runs in a worker thread; cancelling a call does not stop
    it, so a cancelled put still either lands whole or leaves nothing behind.
    """

    root: Path = attrs.field(converter=Path)
    lock_timeout: float = attrs.field(default=30.0, kw_only=True)

    def __attrs_post_init__(self) -> None:
        if self.lock_timeout < 0:
            raise errors.ConfigError(f"lock_timeout must be >= 0, got {self.lock_timeout!r}")

    async def put(self, key: str, source: Path, *, version: int) -> None:
        """Archive ``source`` as ``version`` of ``key``, replacing older versions.

        The archive is packed into a temporary file next to the stored ones
        and renamed into place under the key's lock only if ``version`` is
        newer than the stored one; otherwise it is removed and
        :class:`~codex_supervisor.errors.StaleArchive` is raised. Temporary
        files of crashed writers older than an hour are removed.
        """
        folder = self._folder(key)
        check_version(version)
        await asyncio.to_thread(self._put, key, folder, Path(source), version)

    async def get(self, key: str, dest: Path) -> int:
        """Restore the newest archive of ``key`` into ``dest``; returns its version.

        See :func:`unpack_home` for the checks and for what a failure leaves
        in ``dest``.
        """
        folder = self._folder(key)
        return await asyncio.to_thread(self._get, key, folder, Path(dest))

    async def delete(self, key: str) -> None:
        """Remove every archive of ``key``; HomeNotFound when there is none."""
        folder = self._folder(key)
        await asyncio.to_thread(self._delete, key, folder)

    async def version(self, key: str) -> int | None:
        """The newest stored version of ``key``, or None."""
        folder = self._folder(key)
        return await asyncio.to_thread(self._version, folder)

    # -- blocking halves, run in a worker thread ------------------------------

    def _put(self, key: str, folder: Path, source: Path, version: int) -> None:
        try:
            self.root.mkdir(mode=_FOLDER_MODE, parents=True, exist_ok=True)
            folder.mkdir(mode=_FOLDER_MODE, exist_ok=True)
        except OSError as exc:
            raise errors.HomeStoreError(f"cannot create home store folder {folder}: {exc}") from exc
        temp = folder / f"{_TEMP_PREFIX}{secrets.token_hex(8)}"
        try:
            stats = _pack_to(temp, source)
            with self._lock(folder):
                _remove_stale_temps(folder)
                _commit(key, folder, temp, version)
        except BaseException:
            with contextlib.suppress(OSError):
                temp.unlink(missing_ok=True)
            raise
        log.info(
            "homestore.put key=%r version=%d files=%d bytes=%d",
            key,
            version,
            stats.files,
            stats.bytes,
        )

    def _get(self, key: str, folder: Path, dest: Path) -> int:
        if not folder.is_dir():
            raise errors.HomeNotFound(key)
        with self._lock(folder):
            stored = _newest(folder)
            if stored is None:
                raise errors.HomeNotFound(key)
            path = folder / _archive_name(stored)
            try:
                # The open file outlives a put that removes it once we unlock.
                archive = path.open("rb")
            except OSError as exc:
                raise errors.HomeStoreError(f"cannot open home archive {path}: {exc}") from exc
        with archive:
            stats = unpack_home(archive, dest)
        log.info(
            "homestore.get key=%r version=%d files=%d bytes=%d",
            key,
            stored,
            stats.files,
            stats.bytes,
        )
        return stored

    def _delete(self, key: str, folder: Path) -> None:
        if not folder.is_dir():
            raise errors.HomeNotFound(key)
        with self._lock(folder):
            if _newest(folder) is None:
                raise errors.HomeNotFound(key)
            _remove_versions(folder, below=None)
            fsync_dir(folder)
        log.info("homestore.delete key=%r", key)

    def _version(self, folder: Path) -> int | None:
        if not folder.is_dir():
            return None
        with self._lock(folder):
            return _newest(folder)

    def _folder(self, key: str) -> Path:
        return self.root / key_dir(key)

    def _lock(self, folder: Path) -> FileLock:
        return FileLock(folder / ".lock", timeout=self.lock_timeout)


def key_dir(key: str) -> str:
    """The folder (or object prefix) name of ``key``: ``k-`` + base64, or ``h-`` + SHA-256.

    Any key maps to one safe path part: the unpadded URL-safe base64 of its
    UTF-8 bytes, or their SHA-256 when that would exceed 200 characters.
    """
    if not isinstance(key, str) or not key:
        raise errors.ConfigError(f"home store key must be a non-empty string, got {key!r}")
    raw = key.encode("utf-8", "surrogatepass")
    name = "k-" + base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")
    if len(name) > _MAX_KEYDIR:
        name = "h-" + hashlib.sha256(raw).hexdigest()
    return name


def check_version(version: int) -> None:
    """A ConfigError unless ``version`` is an int in [0, 10**20)."""
    if isinstance(version, bool) or not isinstance(version, int):
        raise errors.ConfigError(f"home archive version must be an int, got {version!r}")
    if not 0 <= version < _VERSION_LIMIT:
        raise errors.ConfigError(
            f"home archive version must be in [0, {_VERSION_LIMIT}), got {version!r}"
        )


def _commit(key: str, folder: Path, temp: Path, version: int) -> None:
    """Rename ``temp`` into place as ``version`` if that is the newest; under the key's lock."""
    stored = _newest(folder)
    if stored is not None and stored >= version:
        raise errors.StaleArchive(key, version, stored)
    try:
        temp.rename(folder / _archive_name(version))
    except OSError as exc:
        raise errors.HomeStoreError(f"cannot store home archive {key!r}: {exc}") from exc
    fsync_dir(folder)
    _remove_versions(folder, below=version)


def _archive_name(version: int) -> str:
    return f"{version:020d}.tar.gz"


def _pack_to(temp: Path, source: Path) -> ArchiveStats:
    """Pack ``source`` into the new file ``temp`` (0o600), flushed and fsynced."""
    try:
        fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, _ARCHIVE_MODE)
        with os.fdopen(fd, "wb") as out:
            os.fchmod(fd, _ARCHIVE_MODE)  # the umask may have narrowed it
            stats = pack_home(source, out)
            out.flush()
            os.fsync(fd)
    except OSError as exc:
        raise errors.HomeStoreError(f"cannot write home archive {temp}: {exc}") from exc
    return stats


def _versions(folder: Path) -> list[int]:
    """Versions of the archives in ``folder``; other names and non-files are ignored."""
    try:
        with os.scandir(folder) as scan:
            return [
                int(match[1])
                for entry in scan
                if (match := _ARCHIVE_NAME.fullmatch(entry.name))
                and entry.is_file(follow_symlinks=False)
            ]
    except FileNotFoundError:
        return []
    except OSError as exc:
        raise errors.HomeStoreError(f"cannot list home archives in {folder}: {exc}") from exc


def _newest(folder: Path) -> int | None:
    return max(_versions(folder), default=None)


def _remove_versions(folder: Path, *, below: int | None) -> None:
    """Remove the archives older than ``below`` (all of them for None)."""
    for version in _versions(folder):
        if below is not None and version >= below:
            continue
        path = folder / _archive_name(version)
        try:
            path.unlink(missing_ok=True)
        except OSError as exc:
            if below is None:
                raise errors.HomeStoreError(f"cannot delete {path}: {exc}") from exc
            # The new archive landed; a leftover older one is only wasted space.
            log.warning("homestore.old_archive_kept path=%s error=%s", path, exc)


def _remove_stale_temps(folder: Path) -> None:
    """Remove temporary archives of writers that died more than an hour ago."""
    cutoff = time.time() - _STALE_TEMP_AGE
    try:
        with os.scandir(folder) as scan:
            temps = [entry for entry in scan if entry.name.startswith(_TEMP_PREFIX)]
    except OSError:
        log.warning("homestore.temp_scan_failed folder=%s", folder, exc_info=True)
        return
    for entry in temps:
        try:
            if entry.stat(follow_symlinks=False).st_mtime >= cutoff:
                continue
            Path(entry.path).unlink()
        except FileNotFoundError:
            continue
        except OSError:
            log.warning("homestore.stale_temp_kept path=%s", entry.path, exc_info=True)
            continue
        log.info("homestore.stale_temp_removed path=%s", entry.path)
