"""A consistent copy of a live Codex home, so it can be archived while its server runs.

:meth:`AppServerPool.checkpoint <codex_supervisor.appserver.pool.AppServerPool.checkpoint>`
archives a home whose ``codex app-server`` keeps running, so a replica that
dies loses no more than what happened since the last checkpoint. Packing the
live folder directly would be unsafe for one kind of file: SQLite databases
(Codex keeps its thread index in ``state_<n>.sqlite``, in WAL mode) may be
caught between the database and its write-ahead log. :func:`snapshot_home`
therefore builds a copy first, in a scratch folder on the same file system:

* every database (``*.sqlite``, ``*.sqlite3``, ``*.db``) is copied with
  SQLite's online backup, which reads one consistent state under a read lock;
  its ``-wal``, ``-shm`` and ``-journal`` files are left out (the copy needs
  none). A database the backup cannot read is copied as its files are, with
  a warning;
* every rollout and other append-only log (``*.jsonl``) is copied up to its
  last complete line as it stands at that moment: the archive is packed a
  little later, and by then the next turn may be appending to it;
* every other regular file is hard-linked (copied where links fail): Codex
  replaces those files whole rather than writing into them, so a link keeps
  the version of the moment, and costs nothing;
* symlinks, sockets and the like are left out, as the archive would leave
  them out, and so are the top-level private entries (``auth.json`` and its
  locks): logins never travel.

The copy is for the archive only; the caller removes it afterwards.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import sqlite3
import stat
import urllib.parse
from collections.abc import Collection
from pathlib import Path

from .archive import PRIVATE_ENTRIES

__all__ = ["snapshot_home"]

log = logging.getLogger(__name__)

_DATABASE_SUFFIXES = (".sqlite", ".sqlite3", ".db")
_SIDE_FILES = ("-wal", "-shm", "-journal")
_LOG_SUFFIXES = (".jsonl",)
_CHUNK = 1024 * 1024


def snapshot_home(home: Path, dest: Path, *, exclude: Collection[str] = PRIVATE_ENTRIES) -> Path:
    """Copy the live ``home`` into the new folder ``dest``; returns ``dest``.

    See the module notes. ``dest`` must not exist (its parent is created,
    ``0o700``) and should be on ``home``'s file system, so files are linked,
    not copied. Raises :class:`OSError` when the home cannot be read or the
    copy written (nothing is left behind then).
    """
    dest.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    dest.mkdir(mode=0o700)
    try:
        _copy_folder(home, dest, frozenset(exclude))
    except BaseException:
        shutil.rmtree(dest, ignore_errors=True)
        raise
    return dest


def _copy_folder(source: Path, dest: Path, exclude: frozenset[str]) -> None:
    with os.scandir(source) as listing:
        entries = sorted(listing, key=lambda e: e.name)
    names = {e.name for e in entries}
    databases = {e.name for e in entries if e.name.endswith(_DATABASE_SUFFIXES)}
    for entry in entries:
        if entry.name in exclude:
            continue
        if any(entry.name == db + side for db in databases for side in _SIDE_FILES):
            continue  # the backup of its database carries what it holds
        try:
            info = entry.stat(follow_symlinks=False)
        except FileNotFoundError:
            continue  # gone since the listing (a temporary file)
        target = dest / entry.name
        if stat.S_ISDIR(info.st_mode):
            target.mkdir(mode=0o700)
            _copy_folder(Path(entry.path), target, frozenset())
        elif stat.S_ISREG(info.st_mode):
            if entry.name in databases and _backup(Path(entry.path), target):
                continue
            if entry.name.endswith(_LOG_SUFFIXES):
                _copy_whole_lines(Path(entry.path), target)
                continue
            _link_or_copy(Path(entry.path), target)
            if entry.name in databases:  # the raw files, as they are
                for side in _SIDE_FILES:
                    if entry.name + side in names:
                        _link_or_copy(source / (entry.name + side), dest / (entry.name + side))


def _backup(database: Path, target: Path) -> bool:
    """Copy ``database`` with SQLite's online backup; False (logged) when it cannot."""
    uri = f"file:{urllib.parse.quote(str(database))}?mode=ro"
    try:
        with (
            contextlib.closing(sqlite3.connect(uri, uri=True, timeout=5.0)) as src,
            contextlib.closing(sqlite3.connect(target)) as copy,
        ):
            src.backup(copy)
    except sqlite3.Error as exc:
        log.warning("cannot back up %s (%s); copying its files as they are", database, exc)
        with contextlib.suppress(FileNotFoundError):
            target.unlink()
        return False
    target.chmod(0o600)
    return True


def _copy_whole_lines(source: Path, target: Path) -> None:
    """Copy the complete lines ``source`` holds now (a line being written is left out)."""
    try:
        src = source.open("rb")
    except FileNotFoundError:
        return  # gone meanwhile
    with src, target.open("xb") as dst:
        remaining = os.fstat(src.fileno()).st_size
        whole = 0  # bytes up to just after the last newline copied
        while remaining > 0 and (chunk := src.read(min(_CHUNK, remaining))):
            newline = chunk.rfind(b"\n")
            if newline >= 0:
                whole = dst.tell() + newline + 1
            dst.write(chunk)
            remaining -= len(chunk)
        dst.truncate(whole)


def _link_or_copy(source: Path, target: Path) -> None:
    try:
        os.link(source, target, follow_symlinks=False)
    except FileNotFoundError:
        return  # gone meanwhile (Codex replaced or removed it)
    except OSError:
        with contextlib.suppress(FileNotFoundError):
            shutil.copyfile(source, target, follow_symlinks=False)
