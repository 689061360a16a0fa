"""Hypothesis properties over hostile home archives: unpack_home and LocalDirHomeStore.get.

An archive is foreign bytes: whatever it holds, a restore answers ArchiveStats
or a HomeStoreError (UnsafeArchive included), writes nothing outside its
destination and nothing inside it but plain files and folders, stays within
its byte and member budgets, and neither hangs nor fills memory. The
strategies build tar streams header by header — every member type, names with
``..``, NUL, absolute paths, invalid UTF-8 and long components, raw pax
records, old and new GNU sparse maps — then damage them (header bytes
overwritten, with or without a fixed checksum; the gzip layer truncated,
flipped, extended).
"""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import io
import os
import stat
import tarfile
import tempfile
import tracemalloc
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Literal

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from codex_supervisor import errors
from codex_supervisor.appserver.homestore import (
    MAX_METADATA_HEADER,
    ArchiveStats,
    LocalDirHomeStore,
    unpack_home,
)

# Deterministic in CI through the profile tests/conftest.py loads.
FUZZ = settings(
    max_examples=120,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
MAX_BYTES = 64 * 1024
MAX_MEMBERS = 40
BLOCK = tarfile.BLOCKSIZE

# -- building tar streams ---------------------------------------------------------------------

_TYPES = [
    tarfile.REGTYPE,
    tarfile.AREGTYPE,
    tarfile.DIRTYPE,
    tarfile.SYMTYPE,
    tarfile.LNKTYPE,
    tarfile.CHRTYPE,
    tarfile.BLKTYPE,
    tarfile.FIFOTYPE,
    tarfile.CONTTYPE,
    tarfile.GNUTYPE_SPARSE,
    tarfile.GNUTYPE_LONGNAME,
    tarfile.GNUTYPE_LONGLINK,
    tarfile.XHDTYPE,
    tarfile.XGLTYPE,
    b"Z",
    b"\xff",
]
_COMPONENTS = [
    "a",
    "b",
    ".",
    "..",
    "",
    "auth.json",
    "sessions",
    "\u00e9",
    "\udcff\udc80",  # invalid UTF-8 on disk (surrogateescape)
    "a\0b",
    "x" * 300,  # longer than NAME_MAX
    "\\..",
]
_GOOD = st.sampled_from(["a", "b", "a/b", "a/c", "./d", "e/", "sessions/x.jsonl", "a/b/c/d"])
names = st.one_of(
    _GOOD,
    _GOOD,
    st.lists(st.sampled_from(_COMPONENTS), max_size=5).map("/".join),
    st.lists(st.sampled_from(_COMPONENTS), min_size=1, max_size=3).map(lambda p: "/" + "/".join(p)),
    st.text(max_size=30),
)
_FORMATS: list[Literal[0, 1, 2]] = [tarfile.USTAR_FORMAT, tarfile.GNU_FORMAT, tarfile.PAX_FORMAT]


@st.composite
def members(draw: st.DrawFn) -> bytes:
    """One member: its header block(s) and its data, as a tar writer would lay them out."""
    info = tarfile.TarInfo(draw(names))
    common = st.sampled_from([tarfile.REGTYPE, tarfile.DIRTYPE])
    info.type = draw(common | common | st.sampled_from(_TYPES))
    data = draw(st.binary(max_size=600) | st.sampled_from([b"", b"x" * 5000]))
    info.size = draw(
        st.sampled_from([len(data), len(data), 0, -1, MAX_BYTES + 1, 2**40, 8**11 - 1])
    )
    info.mode = draw(st.sampled_from([0o644, 0o4777, 0o7777, 0]))
    info.mtime = draw(st.sampled_from([0, 1_700_000_000, 8**11 - 1, -1, 2**70]))
    info.linkname = draw(st.sampled_from(["", "a", "../sentinel", "/etc/passwd", "x" * 200]))
    info.devmajor = info.devminor = draw(st.sampled_from([0, 1, 2**21 - 1]))
    fmt = draw(st.sampled_from(_FORMATS))
    try:
        header = info.tobuf(format=fmt, encoding="utf-8", errors="surrogateescape")
    except (ValueError, UnicodeError, OverflowError):
        # Not expressible in that format (a NUL in a ustar name, a size too big):
        # pax holds nearly anything; a raw header block the rest.
        try:
            header = info.tobuf(
                format=tarfile.PAX_FORMAT, encoding="utf-8", errors="surrogateescape"
            )
        except (ValueError, UnicodeError, OverflowError):
            header = _raw_block(info.name.encode("utf-8", "surrogateescape"), info.type)
    return header + _padded(data)


def _padded(data: bytes) -> bytes:
    return data + b"\0" * (-len(data) % BLOCK)


def _checksum(block: bytearray) -> None:
    block[148:156] = b" " * 8
    block[148:156] = b"%06o\0 " % sum(block)


def _raw_block(name: bytes, kind: bytes, size: int = 0) -> bytes:
    block = bytearray(BLOCK)
    block[: min(len(name), 100)] = name[:100]
    block[100:108] = b"0000644\0"
    block[124:136] = b"%011o\0" % min(size, 8**11 - 1)
    block[156:157] = kind[:1]
    block[257:265] = b"ustar\x0000"
    _checksum(block)
    return bytes(block)


_PAX_KEYS = [
    "path",
    "linkpath",
    "size",
    "mtime",
    "uid",
    "gid",
    "uname",
    "hdrcharset",
    "GNU.sparse.major",
    "GNU.sparse.minor",
    "GNU.sparse.name",
    "GNU.sparse.realsize",
    "GNU.sparse.size",
    "GNU.sparse.map",
    "GNU.sparse.offset",
    "GNU.sparse.numbytes",
    "SCHILY.xattr.user.x",
    "comment",
]
_PAX_VALUES = [
    b"a",
    b"../pwned",
    b"/abs",
    b"\xff\xfe",
    b"\xed\xa0\x80",
    b"BINARY",
    b"0",
    b"1",
    b"-1",
    b"nan",
    b"inf",
    b"1e400",
    b"9" * 30,
    b"0,1,2",
    b"",
    b"a\0b",
]


@st.composite
def pax_members(draw: st.DrawFn) -> bytes:
    """A raw pax header (records as bytes, any keyword and value), then the member it describes."""
    records = draw(
        st.lists(
            st.tuples(
                st.sampled_from(_PAX_KEYS) | st.text(max_size=8),
                st.sampled_from(_PAX_VALUES) | st.binary(max_size=20),
            ),
            max_size=6,
        )
    )
    body = b"".join(
        _pax_record(key.encode("utf-8", "surrogatepass"), value) for key, value in records
    )
    if draw(st.booleans()):
        # A sparse 1.0 map in the member's data: a count and that many numbers.
        body += _pax_record(b"GNU.sparse.major", b"1") + _pax_record(b"GNU.sparse.minor", b"0")
    kind = draw(st.sampled_from([tarfile.XHDTYPE, tarfile.XGLTYPE]))
    header = _raw_block(b"././@PaxHeader", kind, len(body))
    following = draw(members())
    sparse_map = draw(st.sampled_from([b"", b"2\n1\n2\n3\n4\n", b"99999999\n" + b"0\n" * 700]))
    return header + _padded(body) + following + _padded(sparse_map)


def _pax_record(key: bytes, value: bytes) -> bytes:
    # "%d %s=%s\n", the length counting its own digits.
    rest = b" " + key + b"=" + value + b"\n"
    length = len(rest) + 1
    while len(str(length)) + len(rest) != length:
        length += 1
    return str(length).encode() + rest


@st.composite
def gnu_sparse_members(draw: st.DrawFn) -> bytes:
    """An old GNU sparse header and its chain of extension blocks, maybe cut short."""
    blocks = draw(st.sampled_from([0, 1, 16, 17, 200]) | st.integers(0, 40))
    data = bytearray(_old_sparse(blocks))
    if blocks and draw(st.booleans()):
        data[-BLOCK + 504] = 0  # the last extension block ends the chain
    return bytes(data[: draw(st.sampled_from([len(data), len(data), len(data) // 2]))])


def _old_sparse(blocks: int) -> bytes:
    header = bytearray(_raw_block(b"s", tarfile.GNUTYPE_SPARSE))
    header[482] = 1 if blocks else 0
    _checksum(header)
    extension = bytearray(BLOCK)
    for entry in range(21):
        extension[entry * 24 : entry * 24 + 12] = b"%011o\0" % (1000 + entry)
        extension[entry * 24 + 12 : entry * 24 + 24] = b"%011o\0" % 7
    extension[504] = 1
    return bytes(header) + bytes(extension) * blocks


_FIELDS = [0, 99, 100, 124, 135, 136, 148, 156, 157, 257, 263, 329, 345, 482, 483, 504]
_JUNK = [
    b"\0",
    b"\xff",
    b"/",
    b"..",
    b"\x80" + b"\xff" * 11,  # base-256: a huge number
    b"\xff" * 12,  # base-256: a negative one
    b"77777777777",
    b"-1",
    b" " * 12,
    b"ustar  \0",
]


@st.composite
def tar_streams(draw: st.DrawFn) -> bytes:
    """Members, an end marker (or not), then bytes overwritten here and there."""
    kinds = st.one_of(members(), members(), members(), pax_members(), gnu_sparse_members())
    parts = draw(st.lists(kinds, max_size=5))
    end = draw(st.sampled_from([2 * BLOCK, 2 * BLOCK, 0, BLOCK, 20 * BLOCK, 5]))
    tar = bytearray(b"".join(parts) + bytes(end))
    for _ in range(draw(st.sampled_from([0, 0, 0, 1, 2, 3])) if tar else 0):
        block = draw(st.integers(0, len(tar) // BLOCK - 1)) if len(tar) >= BLOCK else 0
        at = block * BLOCK + draw(st.sampled_from(_FIELDS) | st.integers(0, BLOCK - 1))
        junk = draw(st.sampled_from(_JUNK) | st.binary(min_size=1, max_size=12))
        tar[at : at + len(junk)] = junk
        if draw(st.booleans()) and len(tar) >= (block + 1) * BLOCK:
            # A fixed checksum gets the damage past tarfile's first check.
            header = tar[block * BLOCK : (block + 1) * BLOCK]
            _checksum(header)
            tar[block * BLOCK : (block + 1) * BLOCK] = header
    return bytes(tar)


@st.composite
def archives(draw: st.DrawFn) -> bytes:
    """A tar stream gzip'ed, then the gzip layer maybe damaged."""
    data = gzip.compress(draw(tar_streams()), mtime=0)
    how = draw(st.sampled_from(["none"] * 4 + ["truncate", "flip", "append", "member", "raw"]))
    if how == "truncate":
        return data[: draw(st.integers(0, len(data)))]
    if how == "flip":
        at = draw(st.integers(0, len(data) - 1))
        return data[:at] + bytes([data[at] ^ draw(st.integers(1, 255))]) + data[at + 1 :]
    if how == "append":
        return data + draw(st.binary(min_size=1, max_size=40) | st.just(gzip.compress(b"\0" * 9)))
    if how == "member":
        return data + gzip.compress(draw(tar_streams()), mtime=0)
    if how == "raw":
        return draw(st.binary(max_size=200))
    return data


# -- the jail: what a restore may touch -------------------------------------------------------


def _tree(root: Path) -> dict[str, tuple[str, bytes | str | None]]:
    found: dict[str, tuple[str, bytes | str | None]] = {}
    for folder, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            path = Path(folder, name)
            info = path.lstat()
            rel = path.relative_to(root).as_posix()
            if stat.S_ISLNK(info.st_mode):
                found[rel] = ("link", str(path.readlink()))
            elif stat.S_ISREG(info.st_mode):
                found[rel] = ("file", path.read_bytes())
            elif stat.S_ISDIR(info.st_mode):
                found[rel] = ("dir", None)
            else:
                found[rel] = ("special", None)
    return found


def _restore_jailed(archive: bytes) -> ArchiveStats | errors.HomeStoreError:
    """Unpack into a fresh folder beside a sentinel; check nothing escaped or is special."""
    with tempfile.TemporaryDirectory() as top:
        box = Path(top)
        dest = box / "dest"
        dest.mkdir()
        (box / "sentinel").mkdir()
        (box / "sentinel" / "keep.txt").write_bytes(b"keep")
        before = _tree(box / "sentinel"), sorted(path.name for path in box.iterdir())
        try:
            outcome: ArchiveStats | errors.HomeStoreError = unpack_home(
                io.BytesIO(archive), dest, max_bytes=MAX_BYTES, max_members=MAX_MEMBERS
            )
        except errors.HomeStoreError as exc:  # UnsafeArchive included
            outcome = exc
        assert (_tree(box / "sentinel"), sorted(path.name for path in box.iterdir())) == before
        restored = _tree(dest)
        for rel, (kind, _) in restored.items():
            assert kind in ("file", "dir"), (rel, kind)
            real = os.path.realpath(dest / rel)
            assert real.startswith(os.path.realpath(dest) + os.sep), rel
            assert rel.split("/")[0] != "auth.json", rel
        files = sum(1 for kind, _ in restored.values() if kind == "file")
        size = sum(len(data) for kind, data in restored.values() if isinstance(data, bytes))
        assert size <= MAX_BYTES
        assert files + sum(1 for kind, _ in restored.values() if kind == "dir") <= MAX_MEMBERS
        if isinstance(outcome, ArchiveStats):
            assert (outcome.files, outcome.bytes) == (files, size)
        return outcome


# -- properties -------------------------------------------------------------------------------


@pytest.mark.timeout(90)
@FUZZ
@given(archives())
@example(gzip.compress(b"\0" * (4 << 20), mtime=0))  # a bomb of end blocks
@example(b"\x1f\x8b\x08\x00" + b"\0" * 6)  # a gzip header and nothing else
def test_any_archive_restores_or_raises_a_home_store_error(archive: bytes) -> None:
    """unpack_home of any bytes is ArchiveStats or HomeStoreError, and stays in its folder."""
    _restore_jailed(archive)


@pytest.mark.timeout(90)
@settings(FUZZ, max_examples=30)
@given(st.lists(members() | pax_members(), max_size=3), st.integers(0, 2**16))
def test_a_stored_archive_of_any_bytes_is_a_home_store_error_or_restores(
    parts: list[bytes], seed: int
) -> None:
    """LocalDirHomeStore.get of a damaged stored archive raises only HomeStoreError."""
    data = gzip.compress(b"".join(parts) + bytes(2 * BLOCK), mtime=0)
    data = data[: len(data) - seed % 7]
    with tempfile.TemporaryDirectory() as top:
        root = Path(top)
        store = LocalDirHomeStore(root / "store")
        source = root / "home"
        source.mkdir()
        asyncio.run(store.put("k", source, version=1))
        (stored,) = (root / "store").glob("*/*.tar.gz")
        stored.write_bytes(data)
        dest = root / "dest"
        dest.mkdir()
        with contextlib.suppress(errors.HomeStoreError):
            assert asyncio.run(store.get("k", dest)) == 1
        for path in dest.rglob("*"):
            assert path.is_dir() or path.is_file(), path
            assert not path.is_symlink(), path


def _many_members(count: int) -> bytes:
    one = _raw_block(b"./", tarfile.DIRTYPE)
    return gzip.compress(one * count + bytes(2 * BLOCK), compresslevel=1, mtime=0)


@pytest.mark.timeout(60)
def test_a_member_count_bomb_stops_at_the_budget() -> None:
    """Half a million folder members stop at max_members, long before the end."""
    outcome = _restore_jailed(_many_members(500_000))
    assert isinstance(outcome, errors.UnsafeArchive)
    assert "members" in outcome.why


def _bomb(tar: bytes) -> bytes:
    compressor = zlib.compressobj(9, zlib.DEFLATED, 31)
    return compressor.compress(tar) + compressor.flush()


def _sparse_10_bomb(entries: int) -> bytes:
    """A pax sparse-1.0 member whose map (in its data) holds ``entries`` numbers."""
    body = _pax_record(b"GNU.sparse.major", b"1") + _pax_record(b"GNU.sparse.minor", b"0")
    header = _raw_block(b"././@PaxHeader", tarfile.XHDTYPE, len(body))
    member = _raw_block(b"s", tarfile.REGTYPE)
    return _bomb(header + _padded(body) + member + b"%d\n" % entries + b"0\n" * (2 * entries))


def _old_sparse_bomb(blocks: int) -> bytes:
    """An old GNU sparse header followed by ``blocks`` extension blocks of 21 entries each."""
    return _bomb(_old_sparse(blocks))


@pytest.mark.timeout(60)
@pytest.mark.parametrize(
    ("bomb", "size"),
    [
        pytest.param(_sparse_10_bomb, 2_000_000, id="pax-sparse-1.0-map"),
        pytest.param(_old_sparse_bomb, 20_000, id="gnu-sparse-extension-blocks"),
    ],
)
def test_a_sparse_map_bomb_is_refused_before_it_is_read(
    bomb: Callable[[int], bytes], size: int
) -> None:
    """A few KB of gzip holding millions of sparse map entries is refused in bounded memory.

    tarfile reads a whole sparse map into a list before it returns the member
    (which was then refused anyway): before the fix, 8 MB of map cost 200 MB
    and, traced, 47 s; 40 MB of map (39 KB of gzip) cost 1 GB.
    """
    data = bomb(size)
    assert len(data) < 64 * 1024
    tracemalloc.start()
    try:
        outcome = _restore_jailed(data)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert isinstance(outcome, errors.UnsafeArchive), outcome
    assert "sparse" in outcome.why
    assert peak < 4 * MAX_METADATA_HEADER + (1 << 20), peak
