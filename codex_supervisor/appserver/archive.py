"""The home archive format: a Codex home folder as a gzip'ed tar stream, packed and restored.

The archive is a gzip'ed tar stream, written and read strictly in a streaming
fashion, so a home of many gigabytes never sits in memory:

* :func:`pack_home` walks the home without following symlinks, in sorted order,
  and archives only regular files and folders, with owner 0, no owner names and
  permissions already clamped to the owner (files ``0o400``/``0o600``, folders
  ``0o700``). Symlinks, sockets, fifos and devices are left out and counted.
  The gzip layer is the module's own: its header carries no time stamp, so the
  same tree packs to the same bytes, and its trailer (CRC and length) is only
  written once the whole tree is in, so a pack that fails midway never yields
  something that reads as a complete archive.
* :func:`unpack_home` treats every archive as hostile. Each member is checked
  *before* anything is written for it: a relative path with no ``..``, no NUL,
  a regular file or a folder and nothing else (no links, devices, fifos or
  sparse files), within a byte and a member budget. Folders are created
  ``0o700``; every existing path component under the destination must be a real
  folder (checked with ``lstat``); files are created with ``O_EXCL|O_NOFOLLOW``,
  so a duplicate member or a planted symlink is refused instead of followed.
  Decompression goes through :class:`gzip.GzipFile`, which verifies the gzip
  CRC and length that tarfile's own ``r|gz`` ignores, and the tar stream must
  end in zero blocks only: tarfile silently stops at a garbage header, which
  would otherwise pass a damaged archive as a shorter, valid one.
* Credentials never travel: top-level entries named in :data:`PRIVATE_ENTRIES`
  (``auth.json`` and its locks) are never packed, and are dropped with a
  warning when an archive carries them anyway.

A store (:mod:`.homestore`) keeps these archives; this module only writes and
reads them, from and to file objects.
"""

from __future__ import annotations

import collections
import contextlib
import errno
import gzip
import io
import logging
import os
import stat
import struct
import tarfile
import zlib
from collections.abc import Collection, Iterator
from pathlib import Path
from typing import BinaryIO, Protocol

import attrs

from .. import errors

__all__ = [
    "MAX_METADATA_HEADER",
    "PRIVATE_ENTRIES",
    "ArchiveStats",
    "pack_home",
    "unpack_home",
]

log = logging.getLogger(__name__)

#: Top-level names of a Codex home that never go into an archive nor come out
#: of one: the credentials and their lock files.
PRIVATE_ENTRIES: frozenset[str] = frozenset(
    {"auth.json", "auth.lock", "auth.json.lock", ".credentials.json"}
)

_FOLDER_MODE = 0o700
_ARCHIVE_MODE = 0o600
# Bytes moved per read or write while copying file contents.
_CHUNK = 256 * 1024
_GZIP_LEVEL = 6
# Zero bytes allowed after the tar end marker: tar pads to its record size
# (10 KiB for tarfile and GNU tar's default, up to 1 MiB for large blocking).
_TRAILER_LIMIT = 1 << 20
# How much of the tar stream the reader keeps, to check where it ended.
_TAIL_WINDOW = 64 * 1024
_FILE_TYPES = (tarfile.REGTYPE, tarfile.AREGTYPE)


def _file_mode(mode: int) -> int:
    """A file's mode clamped to its owner: readable always, writable if it was."""
    return (mode & 0o600) | 0o400


@attrs.frozen(kw_only=True)
class ArchiveStats:
    """What one :func:`pack_home` or :func:`unpack_home` moved."""

    #: Regular files archived or restored.
    files: int
    #: Folder members archived or restored (the home folder itself is not one).
    folders: int
    #: Bytes of file content archived or restored.
    bytes: int
    #: Entries left out: symlinks, sockets, fifos, devices and excluded
    #: top-level entries when packing; excluded top-level members when unpacking.
    skipped: int


@attrs.define
class _Counts:
    files: int = 0
    folders: int = 0
    bytes: int = 0
    skipped: int = 0

    def stats(self) -> ArchiveStats:
        return ArchiveStats(
            files=self.files, folders=self.folders, bytes=self.bytes, skipped=self.skipped
        )


# --------------------------------------------------------------------------- #
# Packing


def pack_home(
    source: Path, fileobj: BinaryIO, *, exclude: Collection[str] = PRIVATE_ENTRIES
) -> ArchiveStats:
    """Write the folder ``source`` to ``fileobj`` as a tar.gz stream.

    Only regular files and folders are archived, walked without following
    symlinks in sorted order; member names are relative POSIX paths with owner
    0, no owner names, the original mtime and clamped modes (files ``0o400``
    or ``0o600``, folders ``0o700``). Symlinks, sockets, fifos, devices,
    entries that vanish during the walk and top-level entries named in
    ``exclude`` are left out and counted in :attr:`ArchiveStats.skipped`.

    ``fileobj`` is only written to, sequentially, and is not closed. Raises
    :class:`~codex_supervisor.errors.HomeStoreError` when ``source`` is not a
    folder or an entry cannot be read or the archive cannot be written; what
    was written to ``fileobj`` by then is not a complete archive.
    """
    source = Path(source)
    try:
        source_stat = source.stat()
    except OSError as exc:
        raise errors.HomeStoreError(f"cannot archive {source}: {exc}") from exc
    if not stat.S_ISDIR(source_stat.st_mode):
        raise errors.HomeStoreError(f"cannot archive {source}: not a folder")
    excluded = frozenset(exclude)
    counts = _Counts()
    out = _GzipWriter(fileobj)
    try:
        tar = tarfile.open(fileobj=out, mode="w|", format=tarfile.PAX_FORMAT)  # noqa: SIM115
        for name, path, entry_stat in _walk(source, excluded, counts):
            if stat.S_ISDIR(entry_stat.st_mode):
                tar.addfile(_member(name, tarfile.DIRTYPE, _FOLDER_MODE, entry_stat))
                counts.folders += 1
            else:
                _add_file(tar, name, path, counts)
        tar.close()
        out.finish()
    except OSError as exc:
        out.abandon()
        raise errors.HomeStoreError(f"cannot write home archive: {exc}") from exc
    except BaseException:
        # Whatever tarfile still buffers must not reach fileobj later (its
        # stream flushes on garbage collection): the archive stays unfinished.
        out.abandon()
        raise
    log.debug(
        "homestore.packed source=%s files=%d folders=%d bytes=%d skipped=%d",
        source,
        counts.files,
        counts.folders,
        counts.bytes,
        counts.skipped,
    )
    return counts.stats()


def _walk(
    source: Path, exclude: frozenset[str], counts: _Counts
) -> Iterator[tuple[str, str, os.stat_result]]:
    """Folders and regular files under ``source``: (member name, path, lstat), pre-order, sorted.

    Iterative, so a deep tree cannot exhaust the recursion limit; a folder is
    scanned only after it was yielded.
    """
    pending = _scan(os.fspath(source), "", exclude, counts)
    pending.reverse()
    while pending:
        name, path, entry_stat = pending.pop()
        yield name, path, entry_stat
        if stat.S_ISDIR(entry_stat.st_mode):
            children = _scan(path, name, exclude, counts)
            children.reverse()
            pending.extend(children)


def _scan(
    folder: str, prefix: str, exclude: frozenset[str], counts: _Counts
) -> list[tuple[str, str, os.stat_result]]:
    try:
        with os.scandir(folder) as scan:
            entries = sorted(scan, key=lambda entry: entry.name)
    except FileNotFoundError:
        log.debug("homestore.pack_vanished path=%s", folder)
        return []
    except OSError as exc:
        raise errors.HomeStoreError(f"cannot archive {folder}: {exc}") from exc
    found: list[tuple[str, str, os.stat_result]] = []
    for entry in entries:
        if not prefix and entry.name in exclude:
            counts.skipped += 1
            log.debug("homestore.pack_skipped path=%s reason=excluded", entry.path)
            continue
        try:
            entry_stat = entry.stat(follow_symlinks=False)
        except FileNotFoundError:
            counts.skipped += 1
            log.debug("homestore.pack_skipped path=%s reason=vanished", entry.path)
            continue
        except OSError as exc:
            raise errors.HomeStoreError(f"cannot archive {entry.path}: {exc}") from exc
        if stat.S_ISDIR(entry_stat.st_mode) or stat.S_ISREG(entry_stat.st_mode):
            name = f"{prefix}/{entry.name}" if prefix else entry.name
            found.append((name, entry.path, entry_stat))
        else:
            counts.skipped += 1
            log.debug(
                "homestore.pack_skipped path=%s reason=%s", entry.path, _kind(entry_stat.st_mode)
            )
    return found


def _add_file(tar: tarfile.TarFile, name: str, path: str, counts: _Counts) -> None:
    # O_NOFOLLOW and O_NONBLOCK: an entry swapped for a symlink or a fifo since
    # the scan fails or opens without blocking, and fstat tells the truth.
    flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
    try:
        fd = os.open(path, flags)
    except OSError as exc:
        if exc.errno not in (errno.ENOENT, errno.ELOOP):
            raise errors.HomeStoreError(f"cannot archive {path}: {exc}") from exc
        counts.skipped += 1
        log.debug("homestore.pack_skipped path=%s reason=vanished or replaced", path)
        return
    try:
        try:
            file_stat = os.fstat(fd)
        except OSError as exc:
            raise errors.HomeStoreError(f"cannot archive {path}: {exc}") from exc
        if not stat.S_ISREG(file_stat.st_mode):
            counts.skipped += 1
            log.debug("homestore.pack_skipped path=%s reason=%s", path, _kind(file_stat.st_mode))
            return
        info = _member(name, tarfile.REGTYPE, _file_mode(file_stat.st_mode), file_stat)
        info.size = file_stat.st_size
        tar.addfile(info, _FileReader(fd, path, file_stat.st_size))
    finally:
        os.close(fd)
    counts.files += 1
    counts.bytes += info.size


def _member(name: str, kind: bytes, mode: int, entry_stat: os.stat_result) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.mode = mode
    info.mtime = int(entry_stat.st_mtime)
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    return info


def _kind(mode: int) -> str:
    if stat.S_ISLNK(mode):
        return "symlink"
    if stat.S_ISSOCK(mode):
        return "socket"
    if stat.S_ISFIFO(mode):
        return "fifo"
    if stat.S_ISCHR(mode):
        return "character device"
    if stat.S_ISBLK(mode):
        return "block device"
    return "special file"


class _FileReader:
    """Exactly ``size`` bytes of an open file, for tarfile; read errors become HomeStoreError."""

    def __init__(self, fd: int, path: str, size: int) -> None:
        self._fd = fd
        self._path = path
        self._left = size

    def read(self, size: int = -1, /) -> bytes:
        want = self._left if size < 0 else min(size, self._left)
        parts: list[bytes] = []
        got = 0
        while got < want:
            try:
                chunk = os.read(self._fd, min(want - got, _CHUNK))
            except OSError as exc:
                raise errors.HomeStoreError(f"cannot archive {self._path}: {exc}") from exc
            if not chunk:
                raise errors.HomeStoreError(
                    f"cannot archive {self._path}: the file shrank while it was read"
                )
            parts.append(chunk)
            got += len(chunk)
        self._left -= got
        return b"".join(parts)


class _GzipWriter:
    """A single-member gzip stream onto ``out``, finished only by :meth:`finish`.

    Implements just what tarfile's ``w|`` stream needs. The header has no
    name and time stamp 0, so output depends on content alone.
    """

    def __init__(self, out: BinaryIO) -> None:
        self._out: BinaryIO | None = out
        self._compressor = zlib.compressobj(_GZIP_LEVEL, zlib.DEFLATED, -zlib.MAX_WBITS)
        self._crc = 0
        self._size = 0
        self._pos = 0
        # magic, deflate, no flags, mtime 0, no extra flags, OS unknown
        out.write(b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\xff")

    def write(self, data: bytes, /) -> int:
        if self._out is not None and data:
            self._crc = zlib.crc32(data, self._crc)
            self._size += len(data)
            self._pos += len(data)
            self._out.write(self._compressor.compress(data))
        return len(data)

    def finish(self) -> None:
        """Flush the compressor and write the trailer; the stream is complete."""
        if self._out is None:
            return
        out, self._out = self._out, None
        out.write(self._compressor.flush())
        out.write(struct.pack("<II", self._crc & 0xFFFFFFFF, self._size & 0xFFFFFFFF))

    def abandon(self) -> None:
        """Drop every later write: the stream stays unfinished."""
        self._out = None

    def read(self, size: int = -1, /) -> bytes:  # noqa: ARG002 - tarfile's file protocol
        raise io.UnsupportedOperation("write-only stream")

    def tell(self) -> int:
        return self._pos

    def seek(self, pos: int, /) -> int:  # noqa: ARG002 - tarfile's file protocol
        raise io.UnsupportedOperation("unseekable stream")

    def close(self) -> None:
        """Nothing to release: the caller owns the underlying file."""


# --------------------------------------------------------------------------- #
# Unpacking


def unpack_home(
    fileobj: BinaryIO,
    dest: Path,
    *,
    exclude: Collection[str] = PRIVATE_ENTRIES,
    max_bytes: int = 16 * 2**30,
    max_members: int = 1_000_000,
) -> ArchiveStats:
    """Restore the tar.gz stream ``fileobj`` into the existing folder ``dest``.

    Members are read and written one at a time. Each is validated before
    anything is written for it; an unsafe one raises
    :class:`~codex_supervisor.errors.UnsafeArchive`: an empty, absolute or
    NUL-carrying name, a ``..`` component, a type other than regular file or
    folder (symlinks, hard links, devices, fifos, contiguous and sparse files),
    a duplicate file name, a path through something that is not a real folder,
    more than ``max_members`` members or more than ``max_bytes`` bytes of file
    content. Members whose first path component is in ``exclude`` are dropped
    with a warning and counted in :attr:`ArchiveStats.skipped`.

    Folders get mode ``0o700``, files ``0o400`` or ``0o600`` (owner write kept)
    and their archived mtime. A corrupt or truncated archive raises
    :class:`~codex_supervisor.errors.HomeStoreError` ("corrupt home
    archive"), as does a failure to write. On any error, what was already
    written stays in ``dest``: the caller removes it (``dest`` should be a
    fresh folder made for the restore).
    """
    dest = Path(dest)
    if max_bytes < 0 or max_members < 0:
        raise errors.ConfigError(
            f"max_bytes and max_members must be >= 0, got {max_bytes!r} and {max_members!r}"
        )
    try:
        dest_stat = dest.stat()
    except OSError as exc:
        raise errors.HomeStoreError(f"cannot restore into {dest}: {exc}") from exc
    if not stat.S_ISDIR(dest_stat.st_mode):
        raise errors.HomeStoreError(f"cannot restore into {dest}: not a folder")
    restorer = _Restorer(
        dest=dest, exclude=frozenset(exclude), max_bytes=max_bytes, max_members=max_members
    )
    try:
        with gzip.GzipFile(fileobj=fileobj, mode="rb") as unzipped:
            tail = _TailReader(unzipped)
            with tarfile.open(fileobj=tail, mode="r|", tarinfo=_BoundedTarInfo) as tar:
                while (member := tar.next()) is not None:
                    # A stream TarFile still keeps every member it read; we
                    # never look back, so a million members cost nothing.
                    tar.members.clear()  # type: ignore[attr-defined]  # undocumented
                    restorer.restore(tar, member)
                end = tar.offset
            tail.check_end(end)
    except errors.HomeStoreError:
        raise
    except Exception as exc:
        # tarfile, gzip and zlib raise TarError, EOFError, zlib.error, OSError
        # (gzip.BadGzipFile), ValueError and, on some malformed headers,
        # IndexError. Write failures were translated already.
        raise errors.HomeStoreError(f"corrupt home archive: {type(exc).__name__}: {exc}") from exc
    stats = restorer.counts.stats()
    log.debug(
        "homestore.unpacked dest=%s files=%d folders=%d bytes=%d skipped=%d",
        dest,
        stats.files,
        stats.folders,
        stats.bytes,
        stats.skipped,
    )
    return stats


#: The largest pax or GNU long-name header accepted. tarfile reads such a
#: header whole before returning its member, and CPython before 3.11.10 /
#: 3.12.6 parses pax headers in quadratic time (CVE-2024-6232): unbounded, a
#: few hundred bytes of gzip could hold the restore for minutes or fill
#: memory. A Codex home's longest path fits many times over.
MAX_METADATA_HEADER = 8192

_METADATA_TYPES = frozenset(
    {tarfile.XHDTYPE, tarfile.XGLTYPE, tarfile.GNUTYPE_LONGNAME, tarfile.GNUTYPE_LONGLINK}
)


class _BoundedTarInfo(tarfile.TarInfo):
    """A TarInfo that refuses oversized metadata headers and sparse maps before reading them."""

    def _proc_member(self, tarfile_: tarfile.TarFile) -> tarfile.TarInfo:
        if self.type in _METADATA_TYPES and self.size > MAX_METADATA_HEADER:
            raise errors.UnsafeArchive(
                self.name, f"a {self.size}-byte metadata header (at most {MAX_METADATA_HEADER})"
            )
        member: tarfile.TarInfo = super()._proc_member(tarfile_)  # type: ignore[misc]
        return member

    # tarfile reads a whole sparse map into a list before it returns the member
    # (which the restore then refuses): an old GNU header's chain of extension
    # blocks, or a pax 1.0 map in the member's data. Unbounded, a few KB of
    # gzip expand into millions of entries: seconds and hundreds of MB. Both
    # readers get MAX_METADATA_HEADER bytes of the stream, like any header.

    def _proc_sparse(self, tarfile_: tarfile.TarFile) -> tarfile.TarInfo:
        with _sparse_map_budget(tarfile_, self.name):
            member: tarfile.TarInfo = super()._proc_sparse(tarfile_)  # type: ignore[misc]
        return member

    def _proc_gnusparse_10(
        self, next_: tarfile.TarInfo, pax_headers: dict[str, str], tarfile_: tarfile.TarFile
    ) -> None:
        with _sparse_map_budget(tarfile_, next_.name):
            super()._proc_gnusparse_10(next_, pax_headers, tarfile_)  # type: ignore[misc]


@contextlib.contextmanager
def _sparse_map_budget(tarfile_: tarfile.TarFile, name: str) -> Iterator[None]:
    stream = tarfile_.fileobj
    assert stream is not None  # a TarFile being read always has its stream
    tarfile_.fileobj = _Budget(stream, name)  # type: ignore[assignment]
    try:
        yield
    finally:
        tarfile_.fileobj = stream


class _ReadTell(Protocol):
    def read(self, size: int, /) -> bytes: ...

    def tell(self) -> int: ...


class _Budget:
    """tarfile's stream, refusing reads past MAX_METADATA_HEADER bytes (a sparse map's)."""

    def __init__(self, stream: _ReadTell, name: str) -> None:
        self._stream = stream
        self._name = name
        self._left = MAX_METADATA_HEADER

    def read(self, size: int, /) -> bytes:
        self._left -= size
        if self._left < 0:
            raise errors.UnsafeArchive(self._name, f"a sparse map over {MAX_METADATA_HEADER} bytes")
        return self._stream.read(size)

    def tell(self) -> int:
        return self._stream.tell()


class _TailReader:
    """Passes a decompressed stream to tarfile, remembering its last bytes.

    After tarfile's last member, :meth:`check_end` verifies that the block
    where it stopped and everything after it are zeros, and reads the gzip
    stream to its end, which makes :class:`gzip.GzipFile` check the CRC.
    """

    def __init__(self, raw: gzip.GzipFile) -> None:
        self._raw = raw
        self._pos = 0
        self._recent: collections.deque[bytes] = collections.deque()
        self._recent_size = 0

    def read(self, size: int = -1, /) -> bytes:
        data = self._raw.read(size)
        if data:
            self._pos += len(data)
            self._recent.append(data)
            self._recent_size += len(data)
            while self._recent_size - len(self._recent[0]) >= _TAIL_WINDOW:
                self._recent_size -= len(self._recent.popleft())
        return data

    def check_end(self, offset: int) -> None:
        """Require zeros from tar offset ``offset`` on, and a sound gzip end."""
        window = b"".join(self._recent)
        rest = window[max(0, offset - (self._pos - len(window))) :]
        if rest.count(0) != len(rest):
            raise errors.HomeStoreError(
                f"corrupt home archive: unreadable tar header at offset {offset}"
            )
        drained = 0
        while chunk := self._raw.read(_CHUNK):
            drained += len(chunk)
            if drained > _TRAILER_LIMIT or chunk.count(0) != len(chunk):
                raise errors.HomeStoreError(
                    "corrupt home archive: data after the end of the tar stream"
                )

    def write(self, data: bytes, /) -> int:  # noqa: ARG002 - tarfile's file protocol
        raise io.UnsupportedOperation("read-only stream")

    def tell(self) -> int:
        return self._pos

    def seek(self, pos: int, /) -> int:  # noqa: ARG002 - tarfile's file protocol
        raise io.UnsupportedOperation("unseekable stream")

    def close(self) -> None:
        """Nothing to release: unpack_home closes the gzip layer."""


@attrs.define
class _Restorer:
    """Validates and writes one member at a time under ``dest``."""

    dest: Path
    exclude: frozenset[str]
    max_bytes: int
    max_members: int
    counts: _Counts = attrs.Factory(_Counts)
    members: int = 0
    declared_bytes: int = 0
    # Relative folders already known to be real folders (created or lstat'ed).
    folders: set[tuple[str, ...]] = attrs.Factory(set)

    def restore(self, tar: tarfile.TarFile, member: tarfile.TarInfo) -> None:
        name = member.name
        self.members += 1
        if self.members > self.max_members:
            raise errors.UnsafeArchive(name, f"more than {self.max_members} members")
        parts = _safe_parts(name)
        is_file = member.type in _FILE_TYPES
        if not is_file and member.type != tarfile.DIRTYPE:
            raise errors.UnsafeArchive(name, f"{_tar_kind(member.type)} members are not allowed")
        if member.sparse is not None:
            raise errors.UnsafeArchive(name, "sparse file members are not allowed")
        if is_file:
            if member.size < 0:
                raise errors.UnsafeArchive(name, "negative size")
            self.declared_bytes += member.size
            if self.declared_bytes > self.max_bytes:
                raise errors.UnsafeArchive(
                    name, f"more than {self.max_bytes} bytes of file content"
                )
            if not parts:
                raise errors.UnsafeArchive(name, "a file member cannot name the destination")
        if parts and parts[0] in self.exclude:
            self.counts.skipped += 1
            log.warning(
                "homestore.unpack_dropped member=%r reason=excluded entry in an archive "
                "(credentials never belong in one)",
                name,
            )
            return
        if is_file:
            self._file(tar, member, parts)
        elif parts:
            self._folder(name, parts)
        # A folder member "./" names the destination itself, which exists.

    def _folder(self, name: str, parts: tuple[str, ...]) -> None:
        path = self._parents(name, parts[:-1]) / parts[-1]
        try:
            existing = path.lstat()
        except FileNotFoundError:
            _make_folder(path)
        except OSError as exc:
            raise errors.HomeStoreError(f"cannot restore {path}: {exc}") from exc
        else:
            if not stat.S_ISDIR(existing.st_mode):
                raise errors.UnsafeArchive(name, "the path exists and is not a folder")
            _chmod_folder(path)
        self.folders.add(parts)
        self.counts.folders += 1

    def _file(self, tar: tarfile.TarFile, member: tarfile.TarInfo, parts: tuple[str, ...]) -> None:
        name = member.name
        path = self._parents(name, parts[:-1]) / parts[-1]
        mode = _file_mode(member.mode)
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
        try:
            fd = os.open(path, flags, mode)
        except FileExistsError as exc:
            raise errors.UnsafeArchive(name, "duplicate member: the path exists already") from exc
        except OSError as exc:
            raise errors.HomeStoreError(f"cannot restore {path}: {exc}") from exc
        try:
            _fchmod(fd, mode, path)
            source = tar.extractfile(member)
            if source is None:  # only for non-regular members, refused above
                raise errors.UnsafeArchive(name, "member has no data")
            while chunk := source.read(_CHUNK):
                _write_all(fd, chunk, path)
                self.counts.bytes += len(chunk)
            # Best effort: a crafted mtime out of the platform's range is ignored.
            with contextlib.suppress(OverflowError, ValueError, OSError):
                os.utime(fd, (member.mtime, member.mtime))
        finally:
            os.close(fd)
        self.counts.files += 1

    def _parents(self, name: str, parents: tuple[str, ...]) -> Path:
        """``dest/parents``, each component a real folder (created 0o700 if missing)."""
        current = self.dest
        for depth, part in enumerate(parents, start=1):
            current = current / part
            known = parents[:depth]
            if known in self.folders:
                continue
            try:
                existing = current.lstat()
            except FileNotFoundError:
                _make_folder(current)
            except OSError as exc:
                raise errors.HomeStoreError(f"cannot restore {current}: {exc}") from exc
            else:
                if not stat.S_ISDIR(existing.st_mode):
                    raise errors.UnsafeArchive(
                        name, f"{'/'.join(known)} exists and is not a folder"
                    )
            self.folders.add(known)
        return current


def _safe_parts(name: str) -> tuple[str, ...]:
    """The path components of a member name, or UnsafeArchive; () names the destination."""
    if not name:
        raise errors.UnsafeArchive(name, "empty name")
    if "\0" in name:
        raise errors.UnsafeArchive(name, "NUL in the name")
    if name.startswith("/"):
        raise errors.UnsafeArchive(name, "absolute path")
    parts = tuple(part for part in name.split("/") if part not in ("", "."))
    if ".." in parts:
        raise errors.UnsafeArchive(name, "'..' in the path")
    return parts


def _tar_kind(kind: bytes) -> str:
    names = {
        tarfile.SYMTYPE: "symlink",
        tarfile.LNKTYPE: "hard link",
        tarfile.CHRTYPE: "character device",
        tarfile.BLKTYPE: "block device",
        tarfile.FIFOTYPE: "fifo",
        tarfile.CONTTYPE: "contiguous file",
        tarfile.GNUTYPE_SPARSE: "sparse file",
    }
    return names.get(kind, f"type {kind!r}")


def _make_folder(path: Path) -> None:
    try:
        path.mkdir(mode=_FOLDER_MODE)
    except OSError as exc:
        raise errors.HomeStoreError(f"cannot restore {path}: {exc}") from exc
    _chmod_folder(path)  # the umask may have narrowed it


def _chmod_folder(path: Path) -> None:
    flags = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
    try:
        fd = os.open(path, flags)
    except OSError as exc:
        raise errors.HomeStoreError(f"cannot restore {path}: {exc}") from exc
    try:
        _fchmod(fd, _FOLDER_MODE, path)
    finally:
        os.close(fd)


def _fchmod(fd: int, mode: int, path: Path) -> None:
    try:
        os.fchmod(fd, mode)
    except OSError as exc:
        raise errors.HomeStoreError(f"cannot restore {path}: {exc}") from exc


def _write_all(fd: int, data: bytes, path: Path) -> None:
    view = memoryview(data)
    try:
        while view:
            view = view[os.write(fd, view) :]
    except OSError as exc:
        raise errors.HomeStoreError(f"cannot restore {path}: {exc}") from exc
