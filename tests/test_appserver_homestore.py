"""pack_home, unpack_home and LocalDirHomeStore: round trips, hostile archives, versions, races."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import gzip
import hashlib
import io
import logging
import os
import socket
import stat
import tarfile
import tempfile
import time
import tracemalloc
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from codex_supervisor import errors
from codex_supervisor.appserver import archive as archive_format
from codex_supervisor.appserver import homestore
from codex_supervisor.appserver.homestore import (
    PRIVATE_ENTRIES,
    ArchiveStats,
    HomeStore,
    LocalDirHomeStore,
    pack_home,
    unpack_home,
)

MiB = 2**20

# --------------------------------------------------------------------------- #
# Helpers


def snapshot(root: Path) -> dict[str, tuple[str, object, int]]:
    """Every path under ``root`` (not following symlinks): kind, content or target, mode."""
    found: dict[str, tuple[str, object, int]] = {}
    for folder, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            path = Path(folder, name)
            rel = path.relative_to(root).as_posix()
            info = path.lstat()
            mode = stat.S_IMODE(info.st_mode)
            if stat.S_ISLNK(info.st_mode):
                found[rel] = ("link", str(path.readlink()), mode)
            elif stat.S_ISDIR(info.st_mode):
                found[rel] = ("dir", None, mode)
            elif stat.S_ISREG(info.st_mode):
                found[rel] = ("file", path.read_bytes(), mode)
            else:
                found[rel] = ("special", None, mode)
    return found


def contents(root: Path) -> dict[str, tuple[str, object]]:
    """Like snapshot, without modes."""
    return {rel: (kind, data) for rel, (kind, data, _) in snapshot(root).items()}


def make_tree(root: Path, files: dict[str, bytes], folders: tuple[str, ...] = ()) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    for name in folders:
        (root / name).mkdir(parents=True, exist_ok=True)
    for name, data in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    return root


def pack_bytes(source: Path, **kwargs: object) -> tuple[bytes, ArchiveStats]:
    out = io.BytesIO()
    stats = pack_home(source, out, **kwargs)  # type: ignore[arg-type]
    return out.getvalue(), stats


def member_names(archive: bytes) -> list[str]:
    with tarfile.open(fileobj=io.BytesIO(archive), mode="r:gz") as tar:
        return tar.getnames()


def member(
    name: str,
    kind: bytes = tarfile.REGTYPE,
    data: bytes = b"",
    *,
    linkname: str = "",
    mode: int = 0o644,
) -> tuple[tarfile.TarInfo, bytes]:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.mode = mode
    info.linkname = linkname
    info.size = len(data) if kind in (tarfile.REGTYPE, tarfile.AREGTYPE) else 0
    if kind in (tarfile.CHRTYPE, tarfile.BLKTYPE):
        info.devmajor, info.devminor = 1, 3
    if "\0" in name:
        info.pax_headers = {"path": name}
    return info, data


def craft(members: list[tuple[tarfile.TarInfo, bytes]]) -> bytes:
    """A tar.gz built with tarfile directly, members exactly as given."""
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w:gz", format=tarfile.PAX_FORMAT) as tar:
        for info, data in members:
            tar.addfile(info, io.BytesIO(data) if info.size else None)
    return out.getvalue()


def raw_tar(members: list[tuple[tarfile.TarInfo, bytes]]) -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for info, data in members:
            tar.addfile(info, io.BytesIO(data) if info.size else None)
    return out.getvalue()


class Jail:
    """A destination folder, with a sentinel folder next to it and a watch on everything else."""

    def __init__(self, top: Path) -> None:
        self.top = top
        self.box = top / "box"
        self.dest = self.box / "dest"
        self.dest.mkdir(parents=True)
        make_tree(self.box / "sentinel", {"keep.txt": b"keep"})
        self.before = self._outside()

    def _outside(self) -> dict[str, tuple[str, object, int]]:
        return {
            rel: entry
            for rel, entry in snapshot(self.top).items()
            if rel != "box/dest" and not rel.startswith("box/dest/")
        }

    def check(self) -> None:
        """Nothing outside dest changed, and nothing inside it is a symlink or escapes."""
        assert self._outside() == self.before
        real_dest = os.path.realpath(self.dest)
        for rel, (kind, _, _) in snapshot(self.dest).items():
            assert kind in ("file", "dir"), rel
            real = os.path.realpath(self.dest / rel)
            assert real.startswith(real_dest + os.sep), rel


@pytest.fixture
def jail(tmp_path: Path) -> Jail:
    return Jail(tmp_path)


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        while chunk := fh.read(MiB):
            digest.update(chunk)
    return digest.hexdigest()


@pytest.fixture
def traced() -> Iterator[None]:
    assert not tracemalloc.is_tracing()
    tracemalloc.start()
    try:
        yield
    finally:
        tracemalloc.stop()


# --------------------------------------------------------------------------- #
# pack_home / unpack_home round trips


def test_round_trip_of_a_nested_tree(tmp_path: Path) -> None:
    source = make_tree(
        tmp_path / "home",
        {
            "empty": b"",
            "bin.dat": bytes(range(256)) * 300,
            "a/b/c/d/e/f/g/deep.txt": b"deep",
            "unicodé/ファイル 名.txt": "ünï".encode(),
            "sessions/2026/11/22/x.jsonl": b'{"a": 1}\n' * 50,
            "config.toml": b"model = 'x'\n",
        },
        folders=("emptydir", "a/b/other"),
    )
    os.utime(source / "bin.dat", (1_700_000_000, 1_700_000_000))
    archive, packed = pack_bytes(source)
    tree = snapshot(source)
    assert packed == ArchiveStats(
        files=sum(kind == "file" for kind, _, _ in tree.values()),
        folders=sum(kind == "dir" for kind, _, _ in tree.values()),
        bytes=sum(len(data) for kind, data, _ in tree.values() if isinstance(data, bytes)),
        skipped=0,
    )
    assert (packed.files, packed.folders) == (6, 14)
    dest = tmp_path / "dest"
    dest.mkdir()
    restored = unpack_home(io.BytesIO(archive), dest)
    assert restored == packed
    assert contents(dest) == contents(source)
    assert (dest / "bin.dat").stat().st_mtime == 1_700_000_000


def test_archive_members_are_sorted_relative_and_anonymous(tmp_path: Path) -> None:
    source = make_tree(tmp_path / "home", {"b/2": b"2", "b/1": b"1", "a": b"a", "c/x": b"x"})
    archive, _ = pack_bytes(source)
    with tarfile.open(fileobj=io.BytesIO(archive), mode="r:gz") as tar:
        members = tar.getmembers()
    assert [m.name for m in members] == ["a", "b", "b/1", "b/2", "c", "c/x"]
    for m in members:
        assert (m.uid, m.gid, m.uname, m.gname) == (0, 0, "", "")
    # Deterministic: the same tree packs to the same bytes.
    assert pack_bytes(source)[0] == archive


def test_large_file_round_trips_with_bounded_memory(tmp_path: Path, traced: None) -> None:
    source = tmp_path / "home"
    source.mkdir()
    big = source / "big.bin"
    block = os.urandom(4096)
    with big.open("wb") as fh:
        for _ in range(64 * MiB // len(block)):
            fh.write(block)
    archive = tmp_path / "home.tar.gz"
    dest = tmp_path / "dest"
    dest.mkdir()

    tracemalloc.reset_peak()
    with archive.open("wb") as out:
        stats = pack_home(source, out)
    pack_peak = tracemalloc.get_traced_memory()[1]

    tracemalloc.reset_peak()
    with archive.open("rb") as fileobj:
        restored = unpack_home(fileobj, dest)
    unpack_peak = tracemalloc.get_traced_memory()[1]

    assert stats.bytes == restored.bytes == 64 * MiB
    assert pack_peak < 16 * MiB, pack_peak
    assert unpack_peak < 16 * MiB, unpack_peak
    assert sha256_file(dest / "big.bin") == sha256_file(big)


def test_symlinks_fifos_and_sockets_are_skipped(tmp_path: Path) -> None:
    outside = make_tree(tmp_path / "outside", {"secret.txt": b"secret"})
    source = make_tree(tmp_path / "home", {"real.txt": b"real", "sub/inner.txt": b"inner"})
    (source / "link-to-file").symlink_to(source / "real.txt")
    (source / "sub" / "link-to-outside").symlink_to(outside)
    (source / "dangling").symlink_to(tmp_path / "missing")
    os.mkfifo(source / "fifo")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.bind(str(source / "sub" / "sock"))
        archive, stats = pack_bytes(source)
    finally:
        sock.close()
    assert member_names(archive) == ["real.txt", "sub", "sub/inner.txt"]
    assert stats == ArchiveStats(files=2, folders=1, bytes=9, skipped=5)


def test_private_entries_are_never_archived(tmp_path: Path) -> None:
    assert frozenset({"auth.json", "auth.lock"}) <= PRIVATE_ENTRIES
    source = make_tree(
        tmp_path / "home",
        dict.fromkeys(PRIVATE_ENTRIES, b"token") | {"sessions/auth.json": b"not creds"},
    )
    archive, stats = pack_bytes(source)
    assert member_names(archive) == ["sessions", "sessions/auth.json"]
    assert stats.skipped == len(PRIVATE_ENTRIES)
    # An explicit exclude replaces the default.
    archive, stats = pack_bytes(source, exclude=("sessions",))
    assert "auth.json" in member_names(archive)
    assert "sessions" not in member_names(archive)
    assert stats.skipped == 1


def test_modes_are_clamped(tmp_path: Path) -> None:
    source = make_tree(
        tmp_path / "home",
        {"exec": b"x", "shared": b"s", "readonly": b"r", "private": b"p", "dir/f": b"f"},
    )
    for name, mode in [("exec", 0o755), ("shared", 0o644), ("readonly", 0o400), ("private", 0o600)]:
        (source / name).chmod(mode)
    (source / "dir").chmod(0o755)
    archive, _ = pack_bytes(source)
    expected = {
        "exec": 0o600,
        "shared": 0o600,
        "readonly": 0o400,
        "private": 0o600,
        "dir": 0o700,
        "dir/f": 0o600,
    }
    with tarfile.open(fileobj=io.BytesIO(archive), mode="r:gz") as tar:
        assert {m.name: m.mode for m in tar.getmembers()} == expected
    dest = tmp_path / "dest"
    dest.mkdir()
    unpack_home(io.BytesIO(archive), dest)
    assert {rel: mode for rel, (_, _, mode) in snapshot(dest).items()} == expected


def test_unpack_clamps_modes_of_foreign_archives(jail: Jail) -> None:
    archive = craft(
        [
            member("d", tarfile.DIRTYPE, mode=0o777),
            member("d/suid", data=b"x", mode=0o4777),
            member("d/ro", data=b"x", mode=0o444),
            member("plain", tarfile.AREGTYPE, b"x", mode=0o666),
        ]
    )
    unpack_home(io.BytesIO(archive), jail.dest)
    modes = {rel: mode for rel, (_, _, mode) in snapshot(jail.dest).items()}
    assert modes == {"d": 0o700, "d/suid": 0o600, "d/ro": 0o400, "plain": 0o600}
    jail.check()


def test_pack_refuses_a_source_that_is_not_a_folder(tmp_path: Path) -> None:
    (tmp_path / "file").write_bytes(b"x")
    with pytest.raises(errors.HomeStoreError, match="not a folder"):
        pack_home(tmp_path / "file", io.BytesIO())
    with pytest.raises(errors.HomeStoreError, match="cannot archive"):
        pack_home(tmp_path / "missing", io.BytesIO())


@pytest.mark.parametrize(
    ("failure", "message"),
    [(OSError(errno.EIO, "Input/output error"), "Input/output error"), (None, "shrank")],
)
def test_pack_read_failure_is_a_home_store_error_and_leaves_no_complete_archive(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, failure: OSError | None, message: str
) -> None:
    source = make_tree(tmp_path / "home", {"a.txt": b"a" * 1000, "b.txt": b"b"})

    def broken_read(fd: int, size: int) -> bytes:
        if failure is not None:
            raise failure
        return b""

    out = io.BytesIO()
    monkeypatch.setattr(os, "read", broken_read)
    with pytest.raises(errors.HomeStoreError, match=message) as caught:
        pack_home(source, out)
    monkeypatch.undo()
    assert "a.txt" in str(caught.value)
    dest = tmp_path / "dest"
    dest.mkdir()
    with pytest.raises(errors.HomeStoreError, match="corrupt"):
        unpack_home(io.BytesIO(out.getvalue()), dest)


def test_unpack_needs_an_existing_folder(tmp_path: Path) -> None:
    archive, _ = pack_bytes(make_tree(tmp_path / "home", {"a": b"a"}))
    with pytest.raises(errors.HomeStoreError, match="cannot restore into"):
        unpack_home(io.BytesIO(archive), tmp_path / "missing")
    (tmp_path / "file").write_bytes(b"")
    with pytest.raises(errors.HomeStoreError, match="not a folder"):
        unpack_home(io.BytesIO(archive), tmp_path / "file")
    with pytest.raises(errors.ConfigError):
        unpack_home(io.BytesIO(archive), tmp_path, max_bytes=-1)


# --------------------------------------------------------------------------- #
# Hostile archives


def _absolute(jail: Jail) -> list[tuple[tarfile.TarInfo, bytes]]:
    return [member(str(jail.box / "sentinel" / "pwned"), data=b"pwned")]


UNSAFE_CASES: dict[str, Callable[[Jail], list[tuple[tarfile.TarInfo, bytes]]]] = {
    "absolute": _absolute,
    "absolute-dir": lambda jail: [member(str(jail.box / "evil"), tarfile.DIRTYPE)],
    "dotdot": lambda jail: [member("../pwned", data=b"pwned")],
    "nested-dotdot": lambda jail: [member("a/../../pwned", data=b"pwned")],
    "dotdot-folder": lambda jail: [member("..", tarfile.DIRTYPE)],
    "dotdot-late": lambda jail: [member("a", tarfile.DIRTYPE), member("a/b/../../../x", data=b"x")],
    "nul": lambda jail: [member("a\0b", data=b"x")],
    "empty-name": lambda jail: [member("", data=b"x")],
    "file-named-dot": lambda jail: [member("./.", data=b"x")],
    "symlink-inside": lambda jail: [
        member("a", data=b"a"),
        member("l", tarfile.SYMTYPE, linkname="a"),
    ],
    "symlink-outside": lambda jail: [
        member("l", tarfile.SYMTYPE, linkname="../sentinel"),
        member("l/pwned", data=b"pwned"),
    ],
    "symlink-absolute": lambda jail: [
        member("l", tarfile.SYMTYPE, linkname=str(jail.box / "sentinel" / "keep.txt"))
    ],
    "hardlink": lambda jail: [member("a", data=b"a"), member("h", tarfile.LNKTYPE, linkname="a")],
    "hardlink-outside": lambda jail: [
        member("h", tarfile.LNKTYPE, linkname=str(jail.box / "sentinel" / "keep.txt"))
    ],
    "char-device": lambda jail: [member("null", tarfile.CHRTYPE)],
    "block-device": lambda jail: [member("disk", tarfile.BLKTYPE)],
    "fifo": lambda jail: [member("fifo", tarfile.FIFOTYPE)],
    "contiguous": lambda jail: [member("cont", tarfile.CONTTYPE)],
    "duplicate-file": lambda jail: [member("a", data=b"1"), member("a", data=b"2")],
    "folder-over-file": lambda jail: [member("a", data=b"1"), member("a", tarfile.DIRTYPE)],
    "file-over-folder": lambda jail: [member("a", tarfile.DIRTYPE), member("a", data=b"1")],
    "file-under-file": lambda jail: [member("a", data=b"1"), member("a/b", data=b"2")],
}


@pytest.mark.parametrize("case", sorted(UNSAFE_CASES))
def test_unsafe_members_are_refused(jail: Jail, case: str) -> None:
    archive = craft(UNSAFE_CASES[case](jail))
    with pytest.raises(errors.UnsafeArchive) as caught:
        unpack_home(io.BytesIO(archive), jail.dest)
    assert caught.value.why
    jail.check()


def test_unsafe_member_is_refused_before_anything_is_written_for_it(jail: Jail) -> None:
    archive = craft([member("ok.txt", data=b"ok"), member("../pwned", data=b"pwned")])
    with pytest.raises(errors.UnsafeArchive) as caught:
        unpack_home(io.BytesIO(archive), jail.dest)
    assert caught.value.member == "../pwned"
    assert contents(jail.dest) == {"ok.txt": ("file", b"ok")}
    jail.check()


def test_a_planted_symlink_in_dest_is_never_followed(jail: Jail) -> None:
    (jail.dest / "link").symlink_to(jail.box / "sentinel")
    for archive in (
        craft([member("link/pwned", data=b"pwned")]),
        craft([member("link", data=b"pwned")]),
        craft([member("link", tarfile.DIRTYPE)]),
    ):
        with pytest.raises(errors.UnsafeArchive):
            unpack_home(io.BytesIO(archive), jail.dest)
    (jail.dest / "link").unlink()
    jail.check()


def test_excluded_top_level_members_are_dropped(
    jail: Jail, caplog: pytest.LogCaptureFixture
) -> None:
    archive = craft(
        [
            member("auth.json", data=b'{"tokens": "secret"}'),
            member("auth.lock", data=b""),
            member(".credentials.json", tarfile.DIRTYPE),
            member(".credentials.json/inner", data=b"secret"),
            member("ok.txt", data=b"ok"),
            member("sessions", tarfile.DIRTYPE),
            member("sessions/auth.json", data=b"fine"),
        ]
    )
    with caplog.at_level(logging.WARNING, logger=archive_format.__name__):
        stats = unpack_home(io.BytesIO(archive), jail.dest)
    assert stats == ArchiveStats(files=2, folders=1, bytes=6, skipped=4)
    assert contents(jail.dest) == {
        "ok.txt": ("file", b"ok"),
        "sessions": ("dir", None),
        "sessions/auth.json": ("file", b"fine"),
    }
    assert "auth.json" in caplog.text
    jail.check()


def test_dot_slash_prefixes_are_normalised(jail: Jail) -> None:
    archive = craft(
        [
            member("./", tarfile.DIRTYPE),
            member("./a", tarfile.DIRTYPE),
            member("./a/./b.txt", data=b"b"),
            member("./auth.json", data=b"secret"),
        ]
    )
    stats = unpack_home(io.BytesIO(archive), jail.dest)
    assert contents(jail.dest) == {"a": ("dir", None), "a/b.txt": ("file", b"b")}
    assert stats.skipped == 1
    jail.check()


def test_size_limit(jail: Jail) -> None:
    archive = craft([member("a", data=b"x" * 10), member("b", data=b"y" * 10)])
    with pytest.raises(errors.UnsafeArchive, match="bytes"):
        unpack_home(io.BytesIO(archive), jail.dest, max_bytes=15)
    assert not (jail.dest / "b").exists()
    fresh = jail.box / "dest2"
    fresh.mkdir()
    assert unpack_home(io.BytesIO(archive), fresh, max_bytes=20).bytes == 20


def test_member_count_limit(jail: Jail) -> None:
    archive = craft([member("a", tarfile.DIRTYPE), member("a/b", data=b"b"), member("c")])
    with pytest.raises(errors.UnsafeArchive, match="members"):
        unpack_home(io.BytesIO(archive), jail.dest, max_members=2)
    assert not (jail.dest / "c").exists()
    fresh = jail.box / "dest2"
    fresh.mkdir()
    assert unpack_home(io.BytesIO(archive), fresh, max_members=3).files == 2


def _valid_archive() -> bytes:
    return craft(
        [
            member("a", tarfile.DIRTYPE),
            member("a/one.txt", data=bytes(range(256)) * 64),
            member("two.txt", data=b"two" * 5000),
        ]
    )


def _flip(data: bytes, at: int) -> bytes:
    return data[:at] + bytes([data[at] ^ 0xFF]) + data[at + 1 :]


def _garbage_header_after_a_member() -> bytes:
    tar = raw_tar([member("a.txt", data=b"a"), member("b.txt", data=b"b")])
    # Cut after a.txt (header + one data block) and put a garbage block where
    # b.txt's header was: tarfile alone would stop there silently.
    return gzip.compress(tar[: 2 * 512] + b"X" * 512 + tar[3 * 512 :])


def _sparse_header_with_missing_extension() -> bytes:
    # An old GNU sparse header that says an extension block follows, then the end.
    block = bytearray(member("s", tarfile.GNUTYPE_SPARSE)[0].tobuf(format=tarfile.GNU_FORMAT))
    block[482] = 1  # isextended
    block[148:156] = b" " * 8
    block[148:156] = b"%06o\0 " % sum(block[:512])
    return gzip.compress(bytes(block[:512]), mtime=0)


CORRUPT_CASES: dict[str, Callable[[], bytes]] = {
    "sparse-header-cut-short": _sparse_header_with_missing_extension,
    "empty": lambda: b"",
    "not-gzip": lambda: b"this is not an archive at all",
    "noise": lambda: bytes((i * 7919) % 251 for i in range(4096)),
    "gzip-of-noise": lambda: gzip.compress(bytes((i * 31) % 256 for i in range(4096))),
    "truncated-half": lambda: _valid_archive()[: len(_valid_archive()) // 2],
    "truncated-trailer": lambda: _valid_archive()[:-3],
    "truncated-header": lambda: _valid_archive()[:12],
    "flipped-byte": lambda: _flip(_valid_archive(), len(_valid_archive()) // 2),
    "bad-crc": lambda: _flip(_valid_archive(), len(_valid_archive()) - 6),
    "trailing-garbage": lambda: _valid_archive() + b"garbage",
    "garbage-header": _garbage_header_after_a_member,
    "data-after-tar-end": lambda: gzip.compress(raw_tar([member("a", data=b"a")]) + b"tail"),
}


@pytest.mark.parametrize("case", sorted(CORRUPT_CASES))
def test_corrupt_archives_are_home_store_errors(jail: Jail, case: str) -> None:
    with pytest.raises(errors.HomeStoreError, match="corrupt home archive") as caught:
        unpack_home(io.BytesIO(CORRUPT_CASES[case]()), jail.dest)
    assert not isinstance(caught.value, errors.UnsafeArchive)
    jail.check()


def test_a_valid_archive_from_another_tar_writer_is_accepted(jail: Jail) -> None:
    assert unpack_home(io.BytesIO(_valid_archive()), jail.dest).files == 2


COMPONENTS = ["a", "b", ".", "..", "", "/"]
KINDS = {
    "file": tarfile.REGTYPE,
    "afile": tarfile.AREGTYPE,
    "dir": tarfile.DIRTYPE,
    "symlink": tarfile.SYMTYPE,
    "hardlink": tarfile.LNKTYPE,
}
names = st.lists(st.sampled_from(COMPONENTS), max_size=6).map("".join)
members = st.lists(
    st.tuples(names, st.sampled_from(sorted(KINDS)), st.sampled_from(["a", "../sentinel", "/"])),
    min_size=1,
    max_size=6,
)


@settings(max_examples=300, deadline=None)
@given(members)
def test_unpack_never_writes_outside_dest(spec: list[tuple[str, str, str]]) -> None:
    roots = ("/a", "/b")
    before = {path: os.path.lexists(path) for path in roots}
    archive = craft(
        [member(name, KINDS[kind], b"data", linkname=link) for name, kind, link in spec]
    )
    with tempfile.TemporaryDirectory() as top:
        jail = Jail(Path(top))
        with contextlib.suppress(errors.HomeStoreError):  # UnsafeArchive included
            unpack_home(io.BytesIO(archive), jail.dest)
        jail.check()
    assert {path: os.path.lexists(path) for path in roots} == before


# --------------------------------------------------------------------------- #
# LocalDirHomeStore


def home(tmp_path: Path, tag: str) -> Path:
    return make_tree(
        tmp_path / f"home-{tag}",
        {
            f"sessions/{tag}.jsonl": tag.encode() * 100,
            "config.toml": tag.encode(),
            "auth.json": b"x",
        },
        folders=("empty",),
    )


def restored(tmp_path: Path, name: str = "restored") -> Path:
    dest = tmp_path / name
    dest.mkdir()
    return dest


def without_auth(tree: dict[str, tuple[str, object]]) -> dict[str, tuple[str, object]]:
    return {rel: entry for rel, entry in tree.items() if rel != "auth.json"}


def listing(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def keydirs(root: Path) -> list[Path]:
    return sorted(p for p in root.iterdir() if p.is_dir())


def archives(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.endswith(".tar.gz"))


@pytest.mark.anyio
async def test_empty_store(tmp_path: Path) -> None:
    store: HomeStore = LocalDirHomeStore(tmp_path / "store")
    assert await store.version("k") is None
    with pytest.raises(errors.HomeNotFound) as caught:
        await store.get("k", restored(tmp_path))
    assert caught.value.key == "k"
    with pytest.raises(errors.HomeNotFound):
        await store.delete("k")
    assert not (tmp_path / "store").exists()


@pytest.mark.anyio
async def test_put_get_replace_and_delete(tmp_path: Path) -> None:
    root = tmp_path / "store"
    store = LocalDirHomeStore(str(root))
    one, two = home(tmp_path, "one"), home(tmp_path, "two")
    await store.put("acct-1", one, version=1)
    assert await store.version("acct-1") == 1
    await store.put("acct-1", two, version=2)
    assert await store.version("acct-1") == 2
    dest = restored(tmp_path)
    assert await store.get("acct-1", dest) == 2
    assert contents(dest) == without_auth(contents(two))
    [keydir] = keydirs(root)
    assert archives(keydir) == [f"{2:020d}.tar.gz"]
    assert stat.S_IMODE(keydir.stat().st_mode) == 0o700
    assert stat.S_IMODE((keydir / archives(keydir)[0]).stat().st_mode) == 0o600
    assert not [p for p in keydir.iterdir() if p.name.startswith(".tmp-")]

    await store.delete("acct-1")
    assert await store.version("acct-1") is None
    with pytest.raises(errors.HomeNotFound):
        await store.get("acct-1", restored(tmp_path, "again"))
    with pytest.raises(errors.HomeNotFound):
        await store.delete("acct-1")


@pytest.mark.anyio
async def test_keys_are_independent(tmp_path: Path) -> None:
    store = LocalDirHomeStore(tmp_path / "store")
    await store.put("a", home(tmp_path, "a"), version=7)
    await store.put("b", home(tmp_path, "b"), version=1)
    assert (await store.version("a"), await store.version("b")) == (7, 1)
    dest = restored(tmp_path)
    assert await store.get("b", dest) == 1
    assert (dest / "config.toml").read_bytes() == b"b"


@pytest.mark.anyio
@pytest.mark.parametrize("older", [3, 5])
async def test_stale_put_is_refused_and_keeps_the_stored_archive(
    tmp_path: Path, older: int
) -> None:
    root = tmp_path / "store"
    store = LocalDirHomeStore(root)
    await store.put("k", home(tmp_path, "five"), version=5)
    [keydir] = keydirs(root)
    stored = sha256_file(keydir / f"{5:020d}.tar.gz")
    with pytest.raises(errors.StaleArchive) as caught:
        await store.put("k", home(tmp_path, "old"), version=older)
    assert (caught.value.key, caught.value.version, caught.value.stored) == ("k", older, 5)
    assert archives(keydir) == [f"{5:020d}.tar.gz"]
    assert sha256_file(keydir / f"{5:020d}.tar.gz") == stored
    assert not [p for p in keydir.iterdir() if p.name.startswith(".tmp-")]
    dest = restored(tmp_path)
    assert await store.get("k", dest) == 5
    assert (dest / "config.toml").read_bytes() == b"five"


@pytest.mark.anyio
@pytest.mark.parametrize("order", [(5, 3), (3, 5)])
async def test_concurrent_puts_keep_the_newest(tmp_path: Path, order: tuple[int, int]) -> None:
    root = tmp_path / "store"
    store = LocalDirHomeStore(root)
    sources = {v: home(tmp_path, f"v{v}") for v in order}
    results = await asyncio.gather(
        *(store.put("k", sources[v], version=v) for v in order), return_exceptions=True
    )
    for result in results:
        assert result is None or isinstance(result, errors.StaleArchive), result
    assert await store.version("k") == 5
    [keydir] = keydirs(root)
    assert archives(keydir) == [f"{5:020d}.tar.gz"]
    dest = restored(tmp_path)
    assert await store.get("k", dest) == 5
    assert (dest / "config.toml").read_bytes() == b"v5"


@pytest.mark.anyio
async def test_a_reader_keeps_its_version_while_a_put_lands(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = tmp_path / "store"
    store = LocalDirHomeStore(root)
    one = make_tree(tmp_path / "one", {f"s/{i}.jsonl": os.urandom(4096) for i in range(50)})
    await store.put("k", one, version=1)
    [keydir] = keydirs(root)
    loop = asyncio.get_running_loop()
    real_unpack = homestore.unpack_home
    seen: list[list[str]] = []

    def racing_unpack(fileobj: io.BufferedReader, dest: Path) -> ArchiveStats:
        # The archive is open and the lock released: land v2 (deleting v1) now.
        future = asyncio.run_coroutine_threadsafe(
            store.put("k", home(tmp_path, "two"), version=2), loop
        )
        future.result(timeout=60)
        seen.append(archives(keydir))
        return real_unpack(fileobj, dest)

    monkeypatch.setattr(homestore, "unpack_home", racing_unpack)
    dest = restored(tmp_path)
    assert await store.get("k", dest) == 1
    assert seen == [[f"{2:020d}.tar.gz"]]
    assert contents(dest) == contents(one)
    assert await store.version("k") == 2


@pytest.mark.anyio
@pytest.mark.parametrize(
    "key", ["x" * 500, "../../etc/passwd", "a/b/../c", "/absolute", "..", ".", "é/ü\\\0"]
)
async def test_any_key_stays_inside_root(tmp_path: Path, key: str) -> None:
    root = tmp_path / "store"
    store = LocalDirHomeStore(root)
    source = home(tmp_path, "k")
    before = listing(tmp_path)
    await store.put(key, source, version=1)
    assert listing(tmp_path) == [*before, "store"]
    [keydir] = keydirs(root)
    assert keydir.parent == root
    assert keydir.name.startswith("h-" if len(key) > 100 else "k-")
    assert len(keydir.name) <= 200
    assert await store.version(key) == 1
    dest = restored(tmp_path)
    assert await store.get(key, dest) == 1
    await store.delete(key)
    assert await store.version(key) is None


@pytest.mark.anyio
async def test_stale_temp_files_are_removed_on_put(tmp_path: Path) -> None:
    root = tmp_path / "store"
    store = LocalDirHomeStore(root)
    await store.put("k", home(tmp_path, "one"), version=1)
    [keydir] = keydirs(root)
    old, fresh = keydir / ".tmp-0123456789abcdef", keydir / ".tmp-fedcba9876543210"
    old.write_bytes(b"partial")
    fresh.write_bytes(b"in progress")
    two_hours_ago = time.time() - 7200
    os.utime(old, (two_hours_ago, two_hours_ago))
    await store.put("k", home(tmp_path, "two"), version=2)
    assert not old.exists()
    assert fresh.exists()


@pytest.mark.anyio
async def test_foreign_files_in_a_key_folder_are_ignored(tmp_path: Path) -> None:
    root = tmp_path / "store"
    store = LocalDirHomeStore(root)
    await store.put("k", home(tmp_path, "one"), version=1)
    [keydir] = keydirs(root)
    (keydir / "notes.txt").write_bytes(b"x")
    (keydir / "99.tar.gz").write_bytes(b"x")
    (keydir / f"{9:020d}.tar.gz.bak").write_bytes(b"x")
    (keydir / f"{8:020d}.tar.gz").mkdir()
    assert await store.version("k") == 1
    await store.put("k", home(tmp_path, "two"), version=2)
    assert await store.version("k") == 2
    assert (keydir / "notes.txt").exists()


@pytest.mark.anyio
async def test_failed_put_leaves_nothing_behind(tmp_path: Path) -> None:
    root = tmp_path / "store"
    store = LocalDirHomeStore(root)
    with pytest.raises(errors.HomeStoreError):
        await store.put("k", tmp_path / "missing", version=1)
    [keydir] = keydirs(root)
    assert [p.name for p in keydir.iterdir()] == []
    assert await store.version("k") is None


@pytest.mark.anyio
async def test_bad_keys_and_versions_are_config_errors(tmp_path: Path) -> None:
    store = LocalDirHomeStore(tmp_path / "store")
    source = home(tmp_path, "x")
    for key in ("", 123, None, b"k"):
        with pytest.raises(errors.ConfigError):
            await store.put(key, source, version=1)  # type: ignore[arg-type]
        with pytest.raises(errors.ConfigError):
            await store.get(key, tmp_path)  # type: ignore[arg-type]
        with pytest.raises(errors.ConfigError):
            await store.delete(key)  # type: ignore[arg-type]
        with pytest.raises(errors.ConfigError):
            await store.version(key)  # type: ignore[arg-type]
    for version in (-1, True, False, 1.5, "1", None, 10**20):
        with pytest.raises(errors.ConfigError):
            await store.put("k", source, version=version)  # type: ignore[arg-type]
    with pytest.raises(errors.ConfigError):
        LocalDirHomeStore(tmp_path, lock_timeout=-1)
    assert not (tmp_path / "store").exists()
    await store.put("k", source, version=0)
    assert await store.version("k") == 0


def _metadata_bomb(kind: bytes, size: int) -> bytes:
    """A metadata header of ``size`` bytes of digits: tiny once compressed."""
    info = tarfile.TarInfo(
        "././@PaxHeader" if kind != tarfile.GNUTYPE_LONGNAME else "././@LongLink"
    )
    info.type = kind
    info.size = size
    body = info.tobuf(format=tarfile.USTAR_FORMAT) + b"0" * size + b"\0" * (-size % 512 + 1024)
    return gzip.compress(body, mtime=0)


@pytest.mark.parametrize("kind", [tarfile.XHDTYPE, tarfile.XGLTYPE, tarfile.GNUTYPE_LONGNAME])
def test_oversized_metadata_headers_are_refused_before_they_are_read(
    jail: Jail, kind: bytes, traced: None
) -> None:
    """A 4 MiB pax/long-name header (a few KiB of gzip) is refused unread: no hang, no memory."""
    archive = _metadata_bomb(kind, 4 * 2**20)
    assert len(archive) < 16 * 1024
    tracemalloc.reset_peak()
    with pytest.raises(errors.UnsafeArchive, match="metadata header"):
        unpack_home(io.BytesIO(archive), jail.dest)
    _, peak = tracemalloc.get_traced_memory()
    assert peak < 2 * 2**20
    jail.check()


def test_long_paths_fit_the_metadata_bound(tmp_path: Path) -> None:
    """The deepest paths a home can hold (4 KiB) pack with pax headers that unpack fine."""
    deep = "/".join(["d" * 200] * 19) + "/" + "f" * 100 + "-é.jsonl"
    source = make_tree(tmp_path / "home", {deep: b"rollout"})
    archive, _ = pack_bytes(source)
    dest = tmp_path / "dest"
    dest.mkdir()
    unpack_home(io.BytesIO(archive), dest)
    assert (dest / deep).read_bytes() == b"rollout"
    assert len(deep.encode()) > 3800
    assert homestore.MAX_METADATA_HEADER == 8192
