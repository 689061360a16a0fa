"""AppServerPool replicas: one server per key across pools sharing a lease backend and a store.

The launcher is the fake one (see test_appserver_pool.py); leases are real
(files, and a real redis-server), homes and archives real folders. Two pools
in one process stand for two replicas; the two-process test with the real
app-server and kill -9 is tests/e2e/test_gateway_replicas_real.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sqlite3
import tarfile
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from codex_supervisor import errors
from codex_supervisor.accounts import AccountPool
from codex_supervisor.appserver import pool as pool_module
from codex_supervisor.appserver.checkpoint import snapshot_home
from codex_supervisor.appserver.homestore import LocalDirHomeStore
from codex_supervisor.appserver.pool import (
    AppServerPool,
    EntryState,
    PoolConfig,
    SpawnConfig,
    SpawnContext,
    key_lease_name,
)
from codex_supervisor.lease import FileLeaseBackend, LeaseBackend, LeaseMode, RenewOutcome
from codex_supervisor.lease_redis import RedisLeaseBackend
from codex_supervisor.testing import FakeAppServerLauncher, FakeCodexBackend, RedisServer

pytestmark = pytest.mark.anyio


def build(context: SpawnContext) -> SpawnConfig:
    return SpawnConfig(config={"model": "m"})


@pytest.fixture(params=["file", "redis"])
def leases(
    request: pytest.FixtureRequest, tmp_path: Path, redis_server: RedisServer
) -> Iterator[LeaseBackend]:
    if request.param == "file":
        yield FileLeaseBackend(tmp_path / "leases")
        return
    backend = RedisLeaseBackend(redis_server.url, prefix=f"t-{id(tmp_path)}:")
    yield backend


def replica(
    tmp_path: Path,
    name: str,
    leases: LeaseBackend,
    launcher: FakeAppServerLauncher,
    **config: Any,
) -> AppServerPool:
    """A pool of its own root (a machine of its own), on the shared store and leases."""
    config.setdefault("store", LocalDirHomeStore(tmp_path / "store"))
    return AppServerPool(
        PoolConfig(
            root=tmp_path / name,
            codex="codex",
            leases=leases,
            replica=name,
            address=f"http://{name}.example:8080",
            **config,
        ),
        launcher=launcher,
        environ={"PATH": "/usr/bin"},
    )


@contextlib.asynccontextmanager
async def replicas(
    tmp_path: Path, leases: LeaseBackend, **config: Any
) -> AsyncIterator[tuple[AppServerPool, AppServerPool, FakeAppServerLauncher]]:
    launcher = FakeAppServerLauncher()
    async with (
        replica(tmp_path, "gw-a", leases, launcher, **config) as a,
        replica(tmp_path, "gw-b", leases, launcher, **config) as b,
    ):
        yield a, b, launcher


async def until(condition: Any, what: str, limit: float = 30.0) -> None:
    """Wait for ``condition()`` (a bound for a hang, not a timing assertion)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + limit
    while not condition():
        if loop.time() > deadline:
            raise AssertionError(f"never happened: {what}")
        await asyncio.sleep(0.02)


async def test_concurrent_first_requests_on_two_replicas_spawn_once(
    tmp_path: Path, leases: LeaseBackend
) -> None:
    async with replicas(tmp_path, leases) as (a, b, launcher):
        launcher.delay = 0.05
        outcomes = await asyncio.gather(
            *(pool.ensure("ws", build) for pool in (a, b, a, b, a, b)), return_exceptions=True
        )
        assert len(launcher.requests) == 1
        handles = [o for o in outcomes if not isinstance(o, BaseException)]
        refusals = [o for o in outcomes if isinstance(o, errors.KeyHeldElsewhere)]
        assert len(handles) == 3
        assert len(refusals) == 3
        assert len({id(h) for h in handles}) == 1
        winner = a if a.state("ws") is EntryState.RUNNING else b
        loser = b if winner is a else a
        assert loser.keys() == []
        refusal = refusals[0]
        assert refusal.key == "ws"
        assert refusal.replica == winner.config.replica
        assert refusal.address == winner.config.address
        assert refusal.expires_at is not None
        assert f"replica {winner.config.replica} at {winner.config.address}" in str(refusal)
        # Nothing of the refused spawns is left: no home, no lease record.
        assert not (loser.config.root / "homes").exists() or not any(
            (loser.config.root / "homes").iterdir()
        )
        assert len(await leases.holders(key_lease_name("ws"))) == 1


async def test_a_key_moves_to_the_other_replica_once_archived_and_released(
    tmp_path: Path, leases: LeaseBackend
) -> None:
    async with replicas(tmp_path, leases) as (a, b, launcher):
        first = await a.ensure("ws", build)
        (first.home / "marker.txt").write_text("from a")
        with pytest.raises(errors.KeyHeldElsewhere):
            await b.ensure("ws", build)
        await a.shutdown("ws")
        assert await leases.holders(key_lease_name("ws")) == []
        second = await b.ensure("ws", build)
        assert (second.home / "marker.txt").read_text() == "from a"
        (second.home / "marker.txt").write_text("from b")
        await b.shutdown("ws")
        third = await a.ensure("ws", build)
        assert (third.home / "marker.txt").read_text() == "from b"
        assert await a.store.version("ws") == 2
        assert len(launcher.requests) == 3


async def test_a_spawn_waits_key_lease_timeout_for_a_replica_giving_the_key_back(
    tmp_path: Path, leases: LeaseBackend
) -> None:
    async with replicas(tmp_path, leases, key_lease_timeout=30.0) as (a, b, _):
        await a.ensure("ws", build)
        waiting = asyncio.create_task(b.ensure("ws", build))
        await asyncio.sleep(0.2)
        assert not waiting.done()
        await a.shutdown("ws")
        handle = await waiting
        assert handle.is_alive()


async def test_a_lost_key_lease_stops_the_server_and_the_taker_keeps_the_store(
    tmp_path: Path,
) -> None:
    leases = FileLeaseBackend(tmp_path / "leases")
    async with replicas(tmp_path, leases, key_lease_ttl=0.6) as (a, b, launcher):
        first = await a.ensure("ws", build)
        (first.home / "marker.txt").write_text("from a, never archived")
        name = key_lease_name("ws")
        (record,) = await leases.holders(name)
        # An operator (or a partition seen from the backend) drops a's claim,
        # and b takes the key over before a notices.
        await leases.release(record)
        taken = await b.ensure("ws", build)
        await until(lambda: a.state("ws") is None, "a stops its server")
        assert launcher.processes[0].exit.done()
        # a could not take the key again to archive: its home stays, the store
        # keeps nothing of it, and b's server runs on.
        assert (first.home / "marker.txt").exists()
        assert await a.store.version("ws") is None
        assert taken.is_alive()
        assert b.state("ws") is EntryState.RUNNING


async def test_a_lapsed_key_lease_nobody_took_is_taken_again_to_archive(
    tmp_path: Path, leases: LeaseBackend
) -> None:
    async with replicas(tmp_path, leases, key_lease_ttl=0.6) as (a, _, _):
        first = await a.ensure("ws", build)
        (first.home / "marker.txt").write_text("from a")
        (record,) = await leases.holders(key_lease_name("ws"))
        await leases.release(record)  # lost, but nobody else wants the key
        await until(lambda: a.state("ws") is None, "a stops its server")
        assert not first.home.exists()
        assert await a.store.version("ws") == 1
        assert await leases.holders(key_lease_name("ws")) == []


class CountingStore:
    """A home store that records its reads."""

    def __init__(self, inner: LocalDirHomeStore) -> None:
        self.inner = inner
        self.reads: list[str] = []

    async def put(self, key: str, source: Path, *, version: int) -> None:
        await self.inner.put(key, source, version=version)

    async def get(self, key: str, dest: Path) -> int:
        self.reads.append(key)
        return await self.inner.get(key, dest)

    async def delete(self, key: str) -> None:
        await self.inner.delete(key)

    async def version(self, key: str) -> int | None:
        return await self.inner.version(key)


async def test_a_held_key_is_not_restored_by_the_refused_replica(tmp_path: Path) -> None:
    """The refusal comes before any restore: the loser never reads the store."""
    leases = FileLeaseBackend(tmp_path / "leases")
    launcher = FakeAppServerLauncher()
    store = CountingStore(LocalDirHomeStore(tmp_path / "store"))
    async with (
        replica(tmp_path, "gw-a", leases, launcher) as a,
        replica(tmp_path, "gw-b", leases, launcher, store=store) as b,
    ):
        await a.ensure("ws", build)
        await a.shutdown("ws")
        await a.ensure("ws", build)
        with pytest.raises(errors.KeyHeldElsewhere):
            await b.ensure("ws", build)
        assert store.reads == []
        await a.shutdown("ws")
        await b.ensure("ws", build)
        assert store.reads == ["ws"]


async def test_a_foreign_record_without_a_published_replica_names_its_owner(
    tmp_path: Path,
) -> None:
    leases = FileLeaseBackend(tmp_path / "leases")
    await leases.try_acquire(
        key_lease_name("ws"), owner="someone-else", mode=LeaseMode.EXCLUSIVE, ttl=60
    )
    async with replicas(tmp_path, leases) as (a, _, launcher):
        with pytest.raises(errors.KeyHeldElsewhere) as caught:
            await a.ensure("ws", build)
        assert caught.value.replica == "someone-else"
        assert caught.value.address is None
        assert launcher.requests == []


def test_replica_names_are_checked(tmp_path: Path) -> None:
    with pytest.raises(errors.ConfigError, match="replica"):
        PoolConfig(root=tmp_path, replica="no spaces")
    with pytest.raises(errors.ConfigError, match="replica"):
        PoolConfig(root=tmp_path, replica="x" * 101)
    assert PoolConfig(root=tmp_path).replica != PoolConfig(root=tmp_path).replica


# -- checkpoints --------------------------------------------------------------------------


def _thread_index(home: Path) -> sqlite3.Connection:
    db = sqlite3.connect(home / "state_5.sqlite")
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA wal_autocheckpoint=0")  # every row stays in the -wal file
    db.execute("CREATE TABLE IF NOT EXISTS threads (id TEXT, rollout_path TEXT)")
    return db


async def test_a_checkpoint_archives_the_live_home_with_its_wal_database_consistent(
    tmp_path: Path, leases: LeaseBackend
) -> None:
    async with replicas(tmp_path, leases) as (a, b, _):
        handle = await a.ensure("ws", build)
        (handle.home / "sessions").mkdir()
        (handle.home / "sessions" / "rollout-1.jsonl").write_text('{"turn":1}\n')
        db = _thread_index(handle.home)
        with db:
            db.execute("INSERT INTO threads VALUES ('t1', 'x')")
        assert (handle.home / "state_5.sqlite-wal").stat().st_size > 0
        assert await a.checkpoint("ws") == 1
        # The live server goes on; the archive has the row without any -wal file.
        with db:
            db.execute("INSERT INTO threads VALUES ('t2', 'y')")
        with tarfile.open(tmp_path / "store" / next(iter(_archives(tmp_path)))) as tar:
            names = tar.getnames()
        assert "state_5.sqlite" in names
        assert not any(n.endswith(("-wal", "-shm")) for n in names)
        assert "auth.json" not in names
        assert not any((tmp_path / "gw-a" / "checkpoints").iterdir())
        assert await a.checkpoint("ws") == 2
        db.close()
        # Another replica restoring version 2 sees both rows.
        await a.shutdown("ws")
        assert await a.store.version("ws") == 3
        restored = await b.ensure("ws", build)
        with contextlib.closing(sqlite3.connect(restored.home / "state_5.sqlite")) as copy:
            rows = copy.execute("SELECT id FROM threads ORDER BY id").fetchall()
        assert rows == [("t1",), ("t2",)]
        assert (restored.home / "sessions" / "rollout-1.jsonl").read_text() == '{"turn":1}\n'


def _archives(tmp_path: Path) -> list[Path]:
    return [p.relative_to(tmp_path / "store") for p in (tmp_path / "store").rglob("*.tar.gz")]


async def test_checkpoint_refuses_a_key_without_a_running_server_or_lease(
    tmp_path: Path,
) -> None:
    leases = FileLeaseBackend(tmp_path / "leases")
    # A long TTL: a's heartbeat does not notice the loss before its checkpoint does.
    async with replicas(tmp_path, leases, key_lease_ttl=60) as (a, b, _):
        with pytest.raises(errors.ConfigError, match="no running app-server"):
            await a.checkpoint("ws")
        await a.ensure("ws", build)
        (record,) = await leases.holders(key_lease_name("ws"))
        await leases.release(record)
        await b.ensure("ws", build)  # b holds the key now
        with pytest.raises(errors.LeaseLost, match="taken over, removed or expired"):
            await a.checkpoint("ws")
        assert await a.store.version("ws") is None
        assert not any((tmp_path / "gw-a" / "checkpoints").iterdir())


class FailingOnce(CountingStore):
    """A store whose first put fails (a network error, say)."""

    failed = False

    async def put(self, key: str, source: Path, *, version: int) -> None:
        if not self.failed:
            self.failed = True
            raise errors.HomeStoreError("the store is out of reach")
        await super().put(key, source, version=version)


async def test_a_replica_that_lost_its_key_never_overwrites_what_the_taker_archived(
    tmp_path: Path, leases: LeaseBackend
) -> None:
    """a's checkpoint fails, a loses the key, b runs it, archives and leaves: a's stop
    finds the key free again, but the store moved on, so a's older home stays on disk."""
    launcher = FakeAppServerLauncher()
    store = FailingOnce(LocalDirHomeStore(tmp_path / "store"))
    async with (
        replica(tmp_path, "gw-a", leases, launcher, store=store, key_lease_ttl=60) as a,
        replica(tmp_path, "gw-b", leases, launcher, store=store, key_lease_ttl=60) as b,
    ):
        first = await a.ensure("ws", build)
        (first.home / "marker.txt").write_text("from a (stale)")
        with pytest.raises(errors.HomeStoreError):
            await a.checkpoint("ws")  # version 1 reserved, never stored
        (record,) = await leases.holders(key_lease_name("ws"))
        await leases.release(record)
        taken = await b.ensure("ws", build)
        (taken.home / "marker.txt").write_text("from b")
        await b.shutdown("ws")
        assert await store.version("ws") == 1
        await a.shutdown("ws")  # its lease is found gone; the key is free again
        assert await store.version("ws") == 1
        assert (first.home / "marker.txt").read_text() == "from a (stale)"  # kept
        again = await b.ensure("ws", build)
        assert (again.home / "marker.txt").read_text() == "from b"


async def test_a_checkpoint_whose_lease_goes_during_the_copy_uploads_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    leases = FileLeaseBackend(tmp_path / "leases")
    copying, resume = threading.Event(), threading.Event()
    real = pool_module.snapshot_home

    def slow(home: Path, dest: Path) -> Path:
        copying.set()
        resume.wait(30)
        return real(home, dest)

    monkeypatch.setattr(pool_module, "snapshot_home", slow)
    async with replicas(tmp_path, leases, key_lease_ttl=60) as (a, b, _):
        await a.ensure("ws", build)
        checkpoint = asyncio.create_task(a.checkpoint("ws"))
        await asyncio.to_thread(copying.wait, 30)
        (record,) = await leases.holders(key_lease_name("ws"))
        await leases.release(record)
        await b.ensure("ws", build)
        resume.set()
        with pytest.raises(errors.LeaseLost):
            await checkpoint
        assert await a.store.version("ws") is None


async def test_a_cancelled_checkpoint_leaves_no_copy_behind(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    leases = FileLeaseBackend(tmp_path / "leases")
    copying, resume = threading.Event(), threading.Event()
    real = pool_module.snapshot_home
    finished = threading.Event()

    def slow(home: Path, dest: Path) -> Path:
        copying.set()
        resume.wait(30)
        try:
            return real(home, dest)
        finally:
            finished.set()

    monkeypatch.setattr(pool_module, "snapshot_home", slow)
    async with replicas(tmp_path, leases) as (a, _, _):
        handle = await a.ensure("ws", build)
        (handle.home / "marker.txt").write_text("x")
        checkpoint = asyncio.create_task(a.checkpoint("ws"))
        await asyncio.to_thread(copying.wait, 30)
        checkpoint.cancel()
        with pytest.raises(asyncio.CancelledError):
            await checkpoint
        resume.set()
        await asyncio.to_thread(finished.wait, 30)
        scratch = tmp_path / "gw-a" / "checkpoints"
        await until(lambda: not any(scratch.iterdir()), "the copy is removed")
        assert await a.store.version("ws") is None
        # The version it reserved is skipped: the next archive is newer still.
        monkeypatch.setattr(pool_module, "snapshot_home", real)
        assert await a.checkpoint("ws") == 2


def test_snapshot_home_backs_databases_up_copies_logs_and_links_the_rest(tmp_path: Path) -> None:
    home = tmp_path / "home"
    (home / "sessions" / "2026").mkdir(parents=True)
    rollout = home / "sessions" / "2026" / "rollout-a.jsonl"
    rollout.write_text('{"a": 1}\n{"b": 2}\n{"c": ')  # a line being written
    (home / "config.toml").write_text("model = 'm'\n")
    (home / "auth.json").write_text("{}")
    (home / "link").symlink_to(rollout)
    (home / "broken.db").write_text("not a database")
    (home / "broken.db-wal").write_text("raw wal")
    db = _thread_index(home)
    with db:
        db.execute("INSERT INTO threads VALUES ('t', 'p')")
    copy = snapshot_home(home, tmp_path / "scratch" / "copy")
    db.close()
    assert copy.parent == tmp_path / "scratch"
    copied = copy / "sessions" / "2026" / "rollout-a.jsonl"
    assert copied.read_text() == '{"a": 1}\n{"b": 2}\n'  # whole lines, as they stood
    with rollout.open("a") as more:
        more.write('3}\n{"d": 4}\n')
    assert copied.read_text() == '{"a": 1}\n{"b": 2}\n'
    assert (copy / "config.toml").stat().st_ino == (home / "config.toml").stat().st_ino
    assert not (copy / "auth.json").exists()
    assert not (copy / "link").exists()
    assert not (copy / "state_5.sqlite-wal").exists()
    with contextlib.closing(sqlite3.connect(copy / "state_5.sqlite")) as check:
        assert check.execute("SELECT id FROM threads").fetchall() == [("t",)]
    # A file that is no database travels as it is, with its side files.
    assert (copy / "broken.db").read_text() == "not a database"
    assert (copy / "broken.db-wal").read_text() == "raw wal"


# -- accounts ------------------------------------------------------------------------------


async def test_a_spawn_chooses_another_account_when_its_choice_is_busy_elsewhere(
    tmp_path: Path, backend: FakeCodexBackend, monkeypatch: pytest.MonkeyPatch
) -> None:
    accounts = account_pool(tmp_path, backend, alpha=5.0, beta=30.0)
    refused = refuse_occupancy(monkeypatch, lambda name, refused: name == "alpha" and not refused)
    launcher = FakeAppServerLauncher()
    async with accounts_pool(tmp_path, accounts, launcher) as pool:
        handle = await pool.ensure("ws", build)
    assert refused == ["alpha"]
    assert handle.account == "beta"
    assert len(launcher.requests) == 1


def account_pool(tmp_path: Path, backend: FakeCodexBackend, **used: float) -> AccountPool:
    """A pool of accounts with the given five-hour use, in the fake backend."""
    base = tmp_path / "base"
    backend.write_codex_home(base)
    accounts = AccountPool(root=tmp_path / "accounts", base_codex_home=base)
    for name, percent in used.items():
        backend.add_account(f"id-{name}", five_hour_used=percent)
        accounts.import_auth(name, backend.write_auth(tmp_path / f"login-{name}", f"id-{name}"))
    return accounts


def refuse_occupancy(
    monkeypatch: pytest.MonkeyPatch, busy: Callable[[str, list[str]], bool]
) -> list[str]:
    """Occupying an account ``busy(name, refused so far)`` says is busy raises AccountBusy."""
    real_occupy = AccountPool.occupy
    refused: list[str] = []

    def occupy(self: AccountPool, name: str, **kwargs: Any) -> Any:
        if busy(name, refused):
            refused.append(name)
            raise errors.AccountBusy(name, "other-host:/pool")
        return real_occupy(self, name, **kwargs)

    monkeypatch.setattr(AccountPool, "occupy", occupy)
    return refused


def accounts_pool(
    tmp_path: Path, accounts: AccountPool, launcher: FakeAppServerLauncher
) -> AppServerPool:
    config = PoolConfig(root=tmp_path / "gw", codex="codex")
    return AppServerPool(config, accounts=accounts, launcher=launcher, environ={"PATH": "/usr/bin"})


async def test_a_relative_root_gives_absolute_homes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A spawn runs in its home (its cwd), so CODEX_HOME must not be relative to ours."""
    monkeypatch.chdir(tmp_path)
    launcher = FakeAppServerLauncher()
    config = PoolConfig(root="relative/root", codex="codex")
    assert config.root == tmp_path / "relative" / "root"
    async with AppServerPool(config, launcher=launcher, environ={}) as pool:
        handle = await pool.ensure("ws", build)
    [request] = launcher.requests
    assert Path(request.env["CODEX_HOME"]).is_absolute()
    assert handle.home.is_relative_to(tmp_path / "relative" / "root")


async def test_relative_account_pool_paths_give_links_that_resolve(
    tmp_path: Path, backend: FakeCodexBackend, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A spawn home's auth.json links into the account: never relative to our folder."""
    monkeypatch.chdir(tmp_path)
    backend.write_codex_home(tmp_path / "base")
    accounts = AccountPool(root="accounts", base_codex_home="base")
    assert accounts.root == tmp_path / "accounts"
    assert accounts.base_codex_home == tmp_path / "base"
    backend.add_account("id-alpha")
    accounts.import_auth("alpha", backend.write_auth(tmp_path / "login", "id-alpha"))
    launcher = FakeAppServerLauncher()
    config = PoolConfig(root="gw", codex="codex")
    async with AppServerPool(
        config, accounts=accounts, launcher=launcher, environ={"PATH": "/usr/bin"}
    ) as pool:
        handle = await pool.ensure("ws", build)
        link = handle.home / "auth.json"
        assert link.is_symlink()
        assert link.readlink().is_absolute()
        assert (
            link.resolve()
            == (tmp_path / "accounts").resolve() / "accounts" / "alpha" / "home" / "auth.json"
        )
        assert link.is_file()


class Flaky:
    """A lease backend out of reach for its next ``outage`` renewals (and acquires meanwhile)."""

    def __init__(self, inner: FileLeaseBackend) -> None:
        self.inner = inner
        self.outage = 0

    async def try_acquire(self, name: str, **kwargs: Any) -> Any:
        if self.outage:
            raise errors.LeaseError("the backend is out of reach")
        return await self.inner.try_acquire(name, **kwargs)

    async def renew(self, record: Any, ttl: float, *, purpose: str | None = None) -> Any:
        if self.outage:
            self.outage -= 1
            return RenewOutcome.TRANSIENT, record
        return await self.inner.renew(record, ttl, purpose=purpose)

    async def release(self, record: Any) -> None:
        await self.inner.release(record)

    async def holders(self, name: str) -> Any:
        return await self.inner.holders(name)

    async def records(self, name: str) -> Any:
        if self.outage:
            raise errors.LeaseError("the backend is out of reach")
        return await self.inner.records(name)


async def test_a_backend_out_of_reach_for_a_moment_at_stop_still_gets_the_home_archived(
    tmp_path: Path,
) -> None:
    leases = Flaky(FileLeaseBackend(tmp_path / "leases"))
    async with replicas(tmp_path, leases, key_lease_ttl=30) as (a, _, _):  # type: ignore[arg-type]
        handle = await a.ensure("ws", build)
        (handle.home / "marker.txt").write_text("kept safe")
        leases.outage = 3
        await a.shutdown("ws")
        assert leases.outage == 0
        assert await a.store.version("ws") == 1
        assert not handle.home.exists()


class GatedPut(CountingStore):
    """A store whose puts wait for ``gate`` once ``hold`` is set."""

    def __init__(self, inner: LocalDirHomeStore) -> None:
        super().__init__(inner)
        self.hold = False
        self.waiting = asyncio.Event()
        self.gate = asyncio.Event()

    async def put(self, key: str, source: Path, *, version: int) -> None:
        if self.hold:
            self.waiting.set()
            await self.gate.wait()
        await super().put(key, source, version=version)


async def test_a_checkpoint_cancelled_during_its_upload_still_counts_once_it_lands(
    tmp_path: Path,
) -> None:
    leases = FileLeaseBackend(tmp_path / "leases")
    launcher = FakeAppServerLauncher()
    store = GatedPut(LocalDirHomeStore(tmp_path / "store"))
    async with replica(tmp_path, "gw-a", leases, launcher, store=store) as a:
        handle = await a.ensure("ws", build)
        (handle.home / "marker.txt").write_text("one")
        store.hold = True
        checkpoint = asyncio.create_task(a.checkpoint("ws"))
        await store.waiting.wait()
        checkpoint.cancel()
        with pytest.raises(asyncio.CancelledError):
            await checkpoint
        store.hold = False
        store.gate.set()  # the upload goes on and lands
        await until(lambda: not any((tmp_path / "gw-a" / "checkpoints").iterdir()), "landed")
        assert await store.version("ws") == 1
        (handle.home / "marker.txt").write_text("two")
        await a.shutdown("ws")  # not refused: version 1 is this replica's
        assert await store.version("ws") == 2
        assert not handle.home.exists()


async def test_a_store_another_replica_wrote_stops_the_server_and_keeps_its_home(
    tmp_path: Path,
) -> None:
    leases = FileLeaseBackend(tmp_path / "leases")
    async with replicas(tmp_path, leases) as (a, _, launcher):
        handle = await a.ensure("ws", build)
        (handle.home / "marker.txt").write_text("a's")
        elsewhere = tmp_path / "elsewhere"
        elsewhere.mkdir()
        (elsewhere / "marker.txt").write_text("written by a replica that ran it meanwhile")
        await a.store.put("ws", elsewhere, version=1)
        with pytest.raises(errors.KeyHeldElsewhere):
            await a.checkpoint("ws")
        await until(lambda: a.state("ws") is None, "a stops its server")
        assert launcher.processes[0].exit.done()
        assert await a.store.version("ws") == 1  # nothing of a's replaced it
        assert (handle.home / "marker.txt").read_text() == "a's"  # kept on disk


async def test_a_spawn_passes_over_every_account_refused_as_busy(
    tmp_path: Path, backend: FakeCodexBackend, monkeypatch: pytest.MonkeyPatch
) -> None:
    accounts = account_pool(tmp_path, backend, alpha=5.0, beta=10.0, gamma=30.0)
    everyone = False
    refused = refuse_occupancy(monkeypatch, lambda name, _: everyone or name in ("alpha", "beta"))
    async with accounts_pool(tmp_path, accounts, FakeAppServerLauncher()) as pool:
        handle = await pool.ensure("ws", build)
        assert handle.account == "gamma"
        assert sorted(refused) == ["alpha", "beta"]
        await pool.shutdown("ws")
        everyone = True
        with pytest.raises(errors.QuotaUnavailable, match="refused just now") as caught:
            await pool.ensure("ws", build)  # every account refused
        assert isinstance(caught.value.__cause__, errors.AccountBusy)


async def test_a_checkpoint_removes_copies_a_dead_pool_left_an_hour_ago(tmp_path: Path) -> None:
    leases = FileLeaseBackend(tmp_path / "leases")
    scratch = tmp_path / "gw-a" / "checkpoints"
    old, recent = scratch / "ws-old", scratch / "ws-recent"
    for folder in (old, recent):
        (folder / "sessions").mkdir(parents=True)
    two_hours_ago = time.time() - 7200
    os.utime(old, (two_hours_ago, two_hours_ago))
    async with replicas(tmp_path, leases) as (a, _, _):
        await a.ensure("ws", build)
        assert await a.checkpoint("ws") == 1
    assert not old.exists()
    assert recent.exists()  # perhaps another pool's, at work now
