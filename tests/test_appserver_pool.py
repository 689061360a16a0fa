"""AppServerPool bookkeeping with a fake launcher: single flight, stopping state, tokens, reaper.

The real app-server runs in tests/e2e/test_appserver_pool_real.py; here the
launcher is a fake whose processes are asyncio futures, so races can be driven
step by step and counted exactly. Homes and archives are real folders and
tar.gz files.
"""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import hmac
import json
import os
import random
import signal
import stat
import sys
import tarfile
import tomllib
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from codex_supervisor import errors
from codex_supervisor.accounts import AccountPool, QuarantinedAuth
from codex_supervisor.appserver.homestore import PRIVATE_ENTRIES, LocalDirHomeStore
from codex_supervisor.appserver.pool import (
    AppServerPool,
    EntryState,
    IdleReaper,
    Launched,
    LaunchRequest,
    PoolConfig,
    SpawnConfig,
    SpawnContext,
    launch_app_server,
)
from codex_supervisor.lease import FileLock
from codex_supervisor.process import StopPolicy
from codex_supervisor.testing import FakeAppServerLauncher, FakeCodexBackend, OffsetClock

pytestmark = pytest.mark.anyio


FakeLauncher = FakeAppServerLauncher


FakeClock = OffsetClock


def plain_build(context: SpawnContext) -> SpawnConfig:
    return SpawnConfig(config={"model": "m", "marker": {"key": context.key}})


@pytest.fixture
def launcher() -> FakeLauncher:
    return FakeLauncher()


@pytest.fixture
def pool_root(tmp_path: Path) -> Path:
    return tmp_path / "pool"


def make_pool(root: Path, launcher: FakeLauncher, **kwargs: Any) -> AppServerPool:
    config = PoolConfig(root=root, codex="codex", **kwargs.pop("config", {}))
    return AppServerPool(config, launcher=launcher, environ={"PATH": "/usr/bin"}, **kwargs)


async def test_fifty_concurrent_ensures_share_one_spawn(
    pool_root: Path, launcher: FakeLauncher
) -> None:
    """50 ensures of one cold key → one launch, one handle, every caller gets it."""
    launcher.delay = 0.05
    async with make_pool(pool_root, launcher) as pool:
        handles = await asyncio.gather(*(pool.ensure("ws-1", plain_build) for _ in range(50)))
        assert len(launcher.requests) == 1
        assert len({id(h) for h in handles}) == 1
        assert handles[0].is_alive()
        assert pool.state("ws-1") is EntryState.RUNNING
        again = await pool.ensure("ws-1", plain_build)
        assert again is handles[0]
        assert len(launcher.requests) == 1


async def test_a_cancelled_caller_does_not_cancel_the_shared_spawn(
    pool_root: Path, launcher: FakeLauncher
) -> None:
    launcher.gate = asyncio.Event()
    async with make_pool(pool_root, launcher) as pool:
        first = asyncio.create_task(pool.ensure("k", plain_build))
        second = asyncio.create_task(pool.ensure("k", plain_build))
        await asyncio.sleep(0.01)
        first.cancel()
        launcher.gate.set()
        handle = await second
        with pytest.raises(asyncio.CancelledError):
            await first
        assert handle.is_alive()
        assert len(launcher.requests) == 1


async def test_a_failed_spawn_reaches_every_waiter_and_leaves_nothing(
    pool_root: Path, launcher: FakeLauncher
) -> None:
    launcher.fail = errors.SpawnError("k", "boom", 1, "tail")
    launcher.delay = 0.02
    async with make_pool(pool_root, launcher) as pool:
        results = await asyncio.gather(
            *(pool.ensure("k", plain_build) for _ in range(5)), return_exceptions=True
        )
        assert all(isinstance(r, errors.SpawnError) for r in results)
        assert len(launcher.requests) == 1
        assert pool.state("k") is None
        assert list((pool_root / "homes").iterdir()) == []
        launcher.fail = None
        handle = await pool.ensure("k", plain_build)
        assert handle.is_alive()
        assert len(launcher.requests) == 2


async def test_each_spawn_gets_its_own_home_with_the_config_written(
    pool_root: Path, launcher: FakeLauncher
) -> None:
    async with make_pool(pool_root, launcher) as pool:
        first = await pool.ensure("k", plain_build)
        config = tomllib.loads((first.home / "config.toml").read_text())
        assert config == {"model": "m", "marker": {"key": "k"}}
        assert first.home.parent == pool_root / "homes"
        assert first.home.stat().st_mode & 0o777 == 0o700
        await pool.shutdown("k")
        assert not first.home.exists()
        second = await pool.ensure("k", plain_build)
        assert second.home != first.home
        assert second.generation > first.generation


async def test_crashed_child_is_evicted_archived_and_respawned_with_its_files(
    pool_root: Path, launcher: FakeLauncher
) -> None:
    """A dead process is evicted (archived first); the next ensure restores its files."""
    async with make_pool(pool_root, launcher) as pool:
        handle = await pool.ensure("k", plain_build)
        (handle.home / "sessions").mkdir()
        (handle.home / "sessions" / "marker.jsonl").write_text("kept\n")
        launcher.processes[0].crash(-9)
        assert not handle.is_alive()
        assert await handle.done() == -9
        fresh = await pool.ensure("k", plain_build)
        assert fresh is not handle
        assert (fresh.home / "sessions" / "marker.jsonl").read_text() == "kept\n"
        assert not handle.home.exists()
        assert await pool.store.version("k") == 1


async def test_ensure_racing_shutdown_never_shares_a_home_or_regresses_an_archive(
    pool_root: Path, launcher: FakeLauncher
) -> None:
    """Randomised ensure/shutdown storms on one key: homes unique, archive versions rise."""
    rng = random.Random(7)
    launcher.delay = 0.002
    async with make_pool(pool_root, launcher) as pool:
        versions: list[int] = []

        written: list[int] = []

        async def ensure_and_write() -> None:
            handle = await pool.ensure("k", plain_build)
            # Each live server appends its generation to a file its home carries
            # forward: a lost or regressed archive would drop an entry.
            if pool.handle("k") is handle and handle.is_alive():
                with (handle.home / "generations").open("a") as log_file:
                    log_file.write(f"{handle.generation}\n")
                written.append(handle.generation)

        async def stop() -> None:
            await asyncio.sleep(rng.random() * 0.01)
            await pool.shutdown("k")
            version = await pool.store.version("k")
            if version is not None:
                versions.append(version)

        for _ in range(15):
            jobs: list[Awaitable[None]] = [
                ensure_and_write() if rng.random() < 0.6 else stop() for _ in range(8)
            ]
            await asyncio.gather(*jobs)
        await pool.shutdown("k")
        final = await pool.store.version("k")
        restored = pool_root / "restored"
        restored.mkdir()
        await pool.store.get("k", restored)
    lines = (restored / "generations").read_text().split()
    # Every write survived, in spawn order (a server writes once per hit).
    assert list(dict.fromkeys(int(g) for g in lines)) == sorted(set(written))
    assert len(lines) == len(written)
    assert not launcher.shared_home
    homes = [r.home for r in launcher.requests]
    assert len(set(homes)) == len(homes)
    assert versions == sorted(versions)
    # Every spawn archived exactly once, each one version above the last.
    assert final == len(launcher.requests)


async def test_ensure_outlasts_shutdowns_that_stop_its_fresh_server_before_it_looks(
    pool_root: Path,
) -> None:
    """A shutdown that runs between a spawn's end and its ensure waking (a timer due in the
    same loop turn) stops a healthy server: the ensure spawns again instead of calling
    that "exited right after it became ready" (seen as a flaky real-binary test)."""
    stoppers: list[asyncio.Task[None]] = []

    class ShutDownAtOnce(FakeLauncher):
        async def __call__(self, request: LaunchRequest) -> Launched:
            launched = await super().__call__(request)
            if len(self.requests) <= 3:  # the first three servers are stopped on purpose
                # Queued now, so it runs before the ensure that waits on this spawn.
                stoppers.append(asyncio.get_running_loop().create_task(pool.shutdown("k")))
            return launched

    launcher = ShutDownAtOnce()
    async with make_pool(pool_root, launcher) as pool:
        handle = await pool.ensure("k", plain_build)
        assert handle.is_alive()
        assert handle.generation == 4
        await asyncio.gather(*stoppers)
        assert pool.handle("k") is handle
    assert len(launcher.requests) == 4


async def test_ensure_during_stopping_waits_for_the_archive(
    pool_root: Path, launcher: FakeLauncher
) -> None:
    store = SlowStore(pool_root / "archives")
    async with make_pool(pool_root, launcher, config={"store": store}) as pool:
        first = await pool.ensure("k", plain_build)
        (first.home / "note").write_text("one")
        stopping = asyncio.create_task(pool.shutdown("k"))
        await asyncio.sleep(0.005)
        assert pool.state("k") is EntryState.STOPPING
        second = await pool.ensure("k", plain_build)
        # The respawn saw the archive the stop wrote, so it happened after it.
        assert store.events == ["get", "put-start", "put-end", "get"]
        assert (second.home / "note").read_text() == "one"
        await stopping


async def test_crash_eviction_archives_before_any_respawn_restores(
    pool_root: Path, launcher: FakeLauncher
) -> None:
    """An ensure right after a crash waits for the dead home's archive, then restores it."""
    store = SlowStore(pool_root / "archives")
    async with make_pool(pool_root, launcher, config={"store": store}) as pool:
        first = await pool.ensure("k", plain_build)
        (first.home / "last-words").write_text("archived")
        launcher.processes[0].crash(-9)
        second, third = await asyncio.gather(
            pool.ensure("k", plain_build), pool.ensure("k", plain_build)
        )
        assert second is third
        assert store.events == ["get", "put-start", "put-end", "get"]
        assert (second.home / "last-words").read_text() == "archived"
        assert len(launcher.requests) == 2


async def test_a_failing_stop_is_logged_and_the_next_ensure_spawns_afresh(
    pool_root: Path, launcher: FakeLauncher, caplog: pytest.LogCaptureFixture
) -> None:
    async with make_pool(pool_root, launcher) as pool:
        first = await pool.ensure("k", plain_build)
        process = launcher.processes[0]

        async def broken_stop(*_: object, **__: object) -> int:
            raise errors.ProcessError("cannot signal")

        process.stop = broken_stop  # type: ignore[method-assign]
        with pytest.raises(errors.ProcessError):
            await pool.shutdown("k")
        assert "stopping the app-server for 'k' failed" in caplog.text
        assert pool.state("k") is None
        process.crash(-15)
        second = await pool.ensure("k", plain_build)
        assert second is not first


class SlowStore(LocalDirHomeStore):
    """A local store whose puts take a while, recording the order of operations."""

    def __init__(self, root: Path) -> None:
        super().__init__(root)
        self.events: list[str] = []

    async def put(self, key: str, source: Path, *, version: int) -> None:
        self.events.append("put-start")
        await asyncio.sleep(0.05)
        await super().put(key, source, version=version)
        self.events.append("put-end")

    async def get(self, key: str, dest: Path) -> int:
        self.events.append("get")
        return await super().get(key, dest)


async def test_tokens_are_per_spawn_found_by_key_and_revoked(
    pool_root: Path, launcher: FakeLauncher
) -> None:
    seen: dict[str, str] = {}

    def build(context: SpawnContext) -> SpawnConfig:
        seen[context.key] = context.loopback_token
        assert pool.lookup_key_for_token(context.loopback_token) == context.key
        return SpawnConfig()

    async with make_pool(pool_root, launcher) as pool:
        await pool.ensure("a", build)
        await pool.ensure("b", build)
        assert len(seen["a"]) == 64
        assert int(seen["a"], 16) >= 0
        assert seen["a"] != seen["b"]
        assert pool.lookup_key_for_token(seen["a"]) == "a"
        assert pool.lookup_key_for_token(seen["b"]) == "b"
        assert pool.lookup_key_for_token("") is None
        assert pool.lookup_key_for_token("0" * 64) is None
        assert pool.lookup_key_for_token(seen["a"][:-1]) is None
        assert pool.lookup_key_for_token("é" * 10) is None
        [first, _] = launcher.requests
        assert first.env["CODEX_LOOPBACK_TOKEN"] == seen["a"]
        assert all(seen["a"] not in arg for arg in first.argv)
        await pool.shutdown("a")
        assert pool.lookup_key_for_token(seen["a"]) is None
        await pool.ensure("a", build)
        assert pool.lookup_key_for_token(seen["a"]) == "a"  # the new spawn's token


async def test_token_lookup_compares_every_live_entry_without_stopping_early(
    pool_root: Path, launcher: FakeLauncher, monkeypatch: pytest.MonkeyPatch
) -> None:
    tokens: dict[str, str] = {}

    def build(context: SpawnContext) -> SpawnConfig:
        tokens[context.key] = context.loopback_token
        return SpawnConfig()

    calls: list[bytes] = []
    real_compare = hmac.compare_digest

    def counting(a: bytes, b: bytes) -> bool:
        calls.append(b)
        return real_compare(a, b)

    async with make_pool(pool_root, launcher) as pool:
        for key in ("a", "b", "c"):
            await pool.ensure(key, build)
        monkeypatch.setattr(hmac, "compare_digest", counting)
        for key in ("a", "c"):
            calls.clear()
            assert pool.lookup_key_for_token(tokens[key]) == key
            assert sorted(calls) == sorted(t.encode() for t in tokens.values())
        calls.clear()
        assert pool.lookup_key_for_token("0" * 64) is None
        assert len(calls) == 3


async def test_token_is_revoked_as_soon_as_the_entry_stops(
    pool_root: Path, launcher: FakeLauncher
) -> None:
    tokens: list[str] = []

    def build(context: SpawnContext) -> SpawnConfig:
        tokens.append(context.loopback_token)
        return SpawnConfig()

    store = SlowStore(pool_root / "archives")
    async with make_pool(pool_root, launcher, config={"store": store}) as pool:
        await pool.ensure("k", build)
        stopping = asyncio.create_task(pool.shutdown("k"))
        await asyncio.sleep(0)
        assert pool.state("k") is EntryState.STOPPING
        assert pool.lookup_key_for_token(tokens[0]) is None
        await stopping


async def test_environment_is_the_pools_plus_the_builders(
    pool_root: Path, launcher: FakeLauncher
) -> None:
    def build(_: SpawnContext) -> SpawnConfig:
        return SpawnConfig(env={"WORKSPACE_KEY": "w"}, args=("--disable", "apps"))

    config = {"extra_env": {"GATEWAY": "g"}, "codex": "/opt/codex"}
    environ = {"PATH": "/bin", "CODEX_SUPERVISOR_HOME": "/secret", "CODEX_HOME": "/base"}
    pool = AppServerPool(PoolConfig(root=pool_root, **config), launcher=launcher, environ=environ)
    async with pool:
        handle = await pool.ensure("k", build)
        [request] = launcher.requests
        assert request.env["CODEX_HOME"] == str(handle.home)
        assert request.env["GATEWAY"] == "g"
        assert request.env["WORKSPACE_KEY"] == "w"
        assert "CODEX_SUPERVISOR_HOME" not in request.env
        assert request.argv[:4] == ("/opt/codex", "app-server", "--listen", "ws://127.0.0.1:0")
        assert request.argv[-2:] == ("--disable", "apps")
        assert request.cwd == handle.home


@pytest.mark.parametrize(
    ("build", "error"),
    [
        (lambda _: {"not": "a SpawnConfig"}, errors.ConfigError),
        (lambda _: SpawnConfig(env={"CODEX_HOME": "/x"}), errors.ConfigError),
        (lambda _: SpawnConfig(env={"CODEX_LOOPBACK_TOKEN": "x"}), errors.ConfigError),
        (lambda _: SpawnConfig(config="not = [toml"), errors.ConfigError),
        (lambda _: SpawnConfig(config={"x": object()}), errors.ConfigError),
        # Foreign TOML within bounds: deep nesting, a long dotted key, a huge text.
        (lambda _: SpawnConfig(config="x = " + "[" * 5000 + "]" * 5000), errors.ConfigError),
        (lambda _: SpawnConfig(config=".".join(["k"] * 20_000) + " = 1"), errors.ConfigError),
        (lambda _: SpawnConfig(config="# " + "x" * (2 << 20)), errors.ConfigError),
        (lambda _: SpawnConfig(config={"a": ["\ud800"]}), errors.ConfigError),
    ],
)
async def test_bad_builder_output_is_a_clear_error_and_leaves_nothing(
    pool_root: Path, launcher: FakeLauncher, build: Callable[[SpawnContext], Any], error: type
) -> None:
    async with make_pool(pool_root, launcher) as pool:
        with pytest.raises(error):
            await pool.ensure("k", build)
        assert pool.state("k") is None
        assert launcher.requests == []
        assert list((pool_root / "homes").iterdir()) == []


async def test_async_builder_and_restored_config_kept_when_builder_gives_none(
    pool_root: Path, launcher: FakeLauncher
) -> None:
    async def first(_: SpawnContext) -> SpawnConfig:
        await asyncio.sleep(0)
        return SpawnConfig(config='model = "restored"\n')

    async with make_pool(pool_root, launcher) as pool:
        handle = await pool.ensure("k", first)
        await pool.shutdown("k")
        handle = await pool.ensure("k", lambda _: SpawnConfig())
        assert tomllib.loads((handle.home / "config.toml").read_text()) == {"model": "restored"}


async def test_pool_config_refuses_extra_env_that_would_override_the_pool() -> None:
    with pytest.raises(errors.ConfigError):
        AppServerPool(PoolConfig(root="/tmp/x", extra_env={"CODEX_HOME": "/y"}))
    with pytest.raises(errors.ConfigError):
        PoolConfig(root="/tmp/x", ready_timeout=0)


async def test_closed_pool_refuses_new_spawns(pool_root: Path, launcher: FakeLauncher) -> None:
    pool = make_pool(pool_root, launcher)
    await pool.ensure("k", plain_build)
    await pool.aclose()
    assert pool.keys() == []
    assert launcher.processes[0].signals == [signal.SIGTERM]
    with pytest.raises(errors.SpawnError, match="closed"):
        await pool.ensure("k", plain_build)


async def test_shutdown_all_is_bounded_in_parallel(pool_root: Path, launcher: FakeLauncher) -> None:
    running = 0
    peak = 0

    class CountingStore(LocalDirHomeStore):
        async def put(self, key: str, source: Path, *, version: int) -> None:
            nonlocal running, peak
            running += 1
            peak = max(peak, running)
            await asyncio.sleep(0.01)
            running -= 1
            await super().put(key, source, version=version)

    config = {"store": CountingStore(pool_root / "a"), "shutdown_parallelism": 3}
    pool = make_pool(pool_root, launcher, config=config)
    await asyncio.gather(*(pool.ensure(f"k{i}", plain_build) for i in range(12)))
    await pool.shutdown_all()
    assert pool.keys() == []
    assert peak == 3
    assert all(p.returncode is not None for p in launcher.processes)


async def test_shutdown_of_a_missing_key_is_a_no_op(
    pool_root: Path, launcher: FakeLauncher
) -> None:
    async with make_pool(pool_root, launcher) as pool:
        await pool.shutdown("nothing")
        assert launcher.requests == []


async def test_shutdown_waits_for_a_spawn_in_flight(
    pool_root: Path, launcher: FakeLauncher
) -> None:
    launcher.delay = 0.03
    async with make_pool(pool_root, launcher) as pool:
        ensuring = asyncio.create_task(pool.ensure("k", plain_build))
        await asyncio.sleep(0.005)
        await pool.shutdown("k")
        handle = await ensuring
        assert not handle.is_alive()
        assert pool.state("k") is None


async def test_archive_failure_keeps_the_home(pool_root: Path, launcher: FakeLauncher) -> None:
    class BrokenStore(LocalDirHomeStore):
        async def put(self, key: str, source: Path, *, version: int) -> None:
            raise errors.HomeStoreError("disk full")

    async with make_pool(
        pool_root, launcher, config={"store": BrokenStore(pool_root / "a")}
    ) as pool:
        handle = await pool.ensure("k", plain_build)
        await pool.shutdown("k")
        assert handle.home.exists(), "a home that could not be archived must not be deleted"


async def test_an_unsafe_archive_fails_the_spawn_clearly(
    pool_root: Path, launcher: FakeLauncher
) -> None:
    import io
    import tarfile

    store = LocalDirHomeStore(pool_root / "archives")
    async with make_pool(pool_root, launcher, config={"store": store}) as pool:
        await pool.ensure("k", plain_build)
        await pool.shutdown("k")
        [archive] = list((pool_root / "archives").rglob("*.tar.gz"))
        with tarfile.open(archive, "w:gz") as tar:
            info = tarfile.TarInfo("../escape")
            info.size = 1
            tar.addfile(info, io.BytesIO(b"x"))
        with pytest.raises(errors.UnsafeArchive):
            await pool.ensure("k", plain_build)
        assert not (pool_root / "homes" / "escape").exists()
        assert list((pool_root / "homes").iterdir()) == []


# -- the idle reaper ------------------------------------------------------------------------------


async def test_reaper_shuts_idle_entries_keeps_touched_and_probed_ones(
    pool_root: Path, launcher: FakeLauncher
) -> None:
    clock = FakeClock()
    active = {"probed"}
    probe_calls: list[str] = []

    async def probe(key: str) -> bool:
        probe_calls.append(key)
        return key in active

    async with make_pool(pool_root, launcher, clock=clock) as pool:
        for key in ("idle", "touched", "probed"):
            await pool.ensure(key, plain_build)
        clock.advance(50)
        pool.touch("touched")
        clock.advance(20)
        reaper = IdleReaper(pool, interval=1, idle_after=60, activity_probe=probe)
        assert sorted(await reaper.sweep()) == ["idle"]
        assert sorted(probe_calls) == ["idle", "probed"]
        assert pool.state("idle") is None
        assert pool.state("touched") is EntryState.RUNNING
        assert pool.state("probed") is EntryState.RUNNING
        # The probe's "active" counted as activity: not idle again until 60 s later.
        clock.advance(45)
        assert await reaper.sweep() == ["touched"]
        active.clear()
        clock.advance(30)
        assert await reaper.sweep() == ["probed"]


async def test_reaper_keeps_an_entry_whose_probe_fails(
    pool_root: Path, launcher: FakeLauncher, caplog: pytest.LogCaptureFixture
) -> None:
    clock = FakeClock()

    def probe(key: str) -> bool:
        raise RuntimeError(f"broker for {key} unreachable")

    async with make_pool(pool_root, launcher, clock=clock) as pool:
        await pool.ensure("k", plain_build)
        clock.advance(100)
        assert await IdleReaper(pool, 1, 60, probe).sweep() == []
        assert pool.state("k") is EntryState.RUNNING
        assert "treating it as active" in caplog.text


async def test_reaper_run_loop_reaps_and_stops_on_cancel(
    pool_root: Path, launcher: FakeLauncher
) -> None:
    async with make_pool(pool_root, launcher) as pool:
        await pool.ensure("k", plain_build)
        task = asyncio.create_task(IdleReaper(pool, interval=0.01, idle_after=0.0).run())
        for _ in range(200):
            if pool.state("k") is None:
                break
            await asyncio.sleep(0.01)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert pool.state("k") is None


async def test_an_ensure_between_idle_check_and_stop_keeps_the_entry(
    pool_root: Path, launcher: FakeLauncher
) -> None:
    clock = FakeClock()
    async with make_pool(pool_root, launcher, clock=clock) as pool:
        await pool.ensure("k", plain_build)
        clock.advance(100)
        assert pool.idle_keys(60) == ["k"]
        await pool.ensure("k", plain_build)  # a hit counts as activity
        assert await pool.shutdown_if_idle("k", 60) is False
        assert pool.state("k") is EntryState.RUNNING


# -- accounts --------------------------------------------------------------------------------------


class Accounts:
    def __init__(self, root: Path, backend: FakeCodexBackend) -> None:
        self.root = root
        self.backend = backend
        base = root / "base"
        backend.write_codex_home(base)
        self.pool = AccountPool(root=root / "accounts", base_codex_home=base)

    def add(self, name: str, **quota: Any) -> None:
        self.backend.add_account(f"id-{name}", **quota)
        src = self.backend.write_auth(self.root / f"login-{name}", f"id-{name}")
        self.pool.import_auth(name, src)


@pytest.fixture
def accounts(tmp_path: Path, backend: FakeCodexBackend) -> Accounts:
    return Accounts(tmp_path, backend)


async def test_spawn_runs_on_the_policys_account_under_an_occupancy_lease(
    pool_root: Path, launcher: FakeLauncher, accounts: Accounts
) -> None:
    accounts.add("alpha", five_hour_used=80)
    accounts.add("beta", five_hour_used=10)
    async with make_pool(pool_root, launcher, accounts=accounts.pool) as pool:
        handle = await pool.ensure("k", plain_build)
        assert handle.account == "beta"
        [occupant] = await accounts.pool.occupants("beta")
        assert occupant.purpose == "app-server k"
        link = handle.home / "auth.json"
        assert link.is_symlink()
        assert link.resolve() == (accounts.pool.account_home("beta") / "auth.json").resolve()
        assert (handle.home / "auth.lock").is_symlink()
        [request] = launcher.requests
        assert "cli_resume_account_check" in request.argv
        token = json.loads(link.read_text())["tokens"]["access_token"]
        assert all(token not in v for v in request.env.values())
        assert all(token not in a for a in request.argv)
        await pool.shutdown("k")
        assert await accounts.pool.occupants("beta") == []
        [archive] = list((pool_root / "archives").rglob("*.tar.gz"))
        with tarfile.open(archive, "r:gz") as tar:
            assert tar.getnames()
            assert not PRIVATE_ENTRIES & set(tar.getnames())
        assert token.encode() not in gzip.decompress(archive.read_bytes())


async def test_rotate_moves_the_key_to_another_account_with_its_files(
    pool_root: Path, launcher: FakeLauncher, accounts: Accounts
) -> None:
    accounts.add("alpha", five_hour_used=10)
    accounts.add("beta", five_hour_used=30)
    async with make_pool(pool_root, launcher, accounts=accounts.pool) as pool:
        first = await pool.ensure("k", plain_build)
        assert first.account == "alpha"
        (first.home / "thread.jsonl").write_text("history")
        second = await pool.rotate("k", exhausted=True, reason="usageLimitExceeded")
        assert second.account == "beta"
        assert (second.home / "thread.jsonl").read_text() == "history"
        assert not first.is_alive()
        [alpha] = [a for a in accounts.pool.accounts() if a.name == "alpha"]
        assert alpha.cooldowns, "an exhausted account is cooled down"
        assert await accounts.pool.occupants("alpha") == []
        # Nowhere better to go (alpha is cooled down): the running server stays.
        third = await pool.rotate("k")
        assert third is second
        assert third.is_alive()


async def test_rotate_with_one_account_keeps_the_server_or_fails_without_stopping_it(
    pool_root: Path, launcher: FakeLauncher, accounts: Accounts
) -> None:
    accounts.add("solo")
    async with make_pool(pool_root, launcher, accounts=accounts.pool) as pool:
        handle = await pool.ensure("k", plain_build)
        assert await pool.rotate("k") is handle
        with pytest.raises(errors.QuotaUnavailable):
            await pool.rotate("k", exhausted=True)
        assert handle.is_alive(), "no successor: the old server keeps running"
        assert len(launcher.requests) == 1
        with pytest.raises(errors.ConfigError):
            await pool.rotate("missing")


async def test_rebalance_rotates_an_idle_key_under_pressure_but_not_a_busy_one(
    pool_root: Path, launcher: FakeLauncher, accounts: Accounts
) -> None:
    accounts.add("alpha", five_hour_used=10)
    accounts.add("beta", five_hour_used=20)
    async with make_pool(pool_root, launcher, accounts=accounts.pool) as pool:
        idle = await pool.ensure("idle", plain_build)
        busy = await pool.ensure("busy", plain_build)
        assert idle.account == busy.account == "alpha"
        accounts.backend.set_quota("id-alpha", five_hour=97)
        assert pool.quota is not None
        await pool.quota.get("alpha", max_age=0)
        rotated = await pool.rebalance(lambda key: key == "busy")
        assert rotated == ["idle"]
        idle_handle = pool.handle("idle")
        busy_handle = pool.handle("busy")
        assert idle_handle is not None
        assert idle_handle.account == "beta"
        assert busy_handle is busy


async def test_a_spawn_with_every_account_blocked_fails_with_quota_unavailable(
    pool_root: Path, launcher: FakeLauncher, accounts: Accounts
) -> None:
    accounts.add("alpha", five_hour_used=100)
    async with make_pool(pool_root, launcher, accounts=accounts.pool) as pool:
        with pytest.raises(errors.QuotaUnavailable):
            await pool.ensure("k", plain_build)
        assert launcher.requests == []
        assert await accounts.pool.occupants("alpha") == []


@pytest.mark.parametrize(("refreshed", "taken"), [("2099-01-01", True), ("2001-01-01", False)])
async def test_an_auth_json_codex_wrote_as_a_file_is_taken_back_only_if_newer(
    pool_root: Path, launcher: FakeLauncher, accounts: Accounts, refreshed: str, taken: bool
) -> None:
    """A link Codex replaced by a file: a newer login comes back, an older never overwrites."""
    accounts.add("alpha")
    auth_path = accounts.pool.account_home("alpha") / "auth.json"
    before = auth_path.read_bytes()
    async with make_pool(pool_root, launcher, accounts=accounts.pool) as pool:
        handle = await pool.ensure("k", plain_build)
        link = handle.home / "auth.json"
        data = json.loads(link.read_text())
        data["last_refresh"] = f"{refreshed}T00:00:00Z"
        data["tokens"]["refresh_token"] = "rt-written-by-codex"
        link.unlink()
        link.write_text(json.dumps(data))
        link.chmod(0o600)
        await pool.shutdown("k")
    after = json.loads(auth_path.read_text())["tokens"]["refresh_token"]
    if taken:
        assert after == "rt-written-by-codex"
    else:
        assert auth_path.read_bytes() == before


# -- relocating the thread index ---------------------------------------------------------------


def _thread_index(home: Path, rows: list[tuple[str, str]]) -> Path:
    import sqlite3

    database = home / "state_5.sqlite"
    with sqlite3.connect(database) as db:
        db.execute("CREATE TABLE threads (id TEXT PRIMARY KEY, rollout_path TEXT NOT NULL)")
        db.executemany("INSERT INTO threads VALUES (?, ?)", rows)
    return database


def _paths(database: Path) -> dict[str, str]:
    import sqlite3

    with sqlite3.connect(database) as db:
        return dict(db.execute("SELECT id, rollout_path FROM threads"))


def test_relocate_threads_points_moved_rollouts_at_the_new_home(tmp_path: Path) -> None:
    from codex_supervisor.appserver.pool import relocate_threads

    home = tmp_path / "new-home"
    day = home / "sessions" / "2026" / "11" / "22"
    day.mkdir(parents=True)
    (day / "rollout-2026-11-22T01-02-03-t1.jsonl").write_text("{}\n")
    (home / "archived_sessions").mkdir()
    (home / "archived_sessions" / "rollout-2026-11-20T01-02-03-t3.jsonl").write_text("{}\n")
    old = "/old/home"
    database = _thread_index(
        home,
        [
            ("t1", f"{old}/sessions/2026/11/22/rollout-2026-11-22T01-02-03-t1.jsonl"),
            ("t2", f"{old}/sessions/2026/11/22/rollout-2026-11-22T09-09-09-t2.jsonl"),
            ("t3", f"{old}/archived_sessions/rollout-2026-11-20T01-02-03-t3.jsonl"),
            ("t4", "/somewhere/else/notes.txt"),
        ],
    )
    assert relocate_threads(home) == 2
    paths = _paths(database)
    assert paths["t1"] == str(day / "rollout-2026-11-22T01-02-03-t1.jsonl")
    assert paths["t2"].startswith(old), "a rollout that is not in the new home stays as it was"
    assert paths["t3"] == str(home / "archived_sessions" / "rollout-2026-11-20T01-02-03-t3.jsonl")
    assert paths["t4"] == "/somewhere/else/notes.txt"
    assert relocate_threads(home) == 0  # idempotent


def test_relocate_threads_leaves_an_unreadable_index_alone(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from codex_supervisor.appserver.pool import relocate_threads

    (tmp_path / "state_5.sqlite").write_bytes(b"not a database at all" * 100)
    assert relocate_threads(tmp_path) == 0
    assert "could not relocate" in caplog.text
    assert relocate_threads(tmp_path / "missing") == 0


# -- races found in review ----------------------------------------------------------------------


def _hold_choose(pool: AppServerPool, during: Callable[[], Awaitable[None]]) -> None:
    """Make rotate's successor lookup (quota I/O in real life) run ``during`` first."""
    original = pool._choose

    async def choose(avoid: str | None) -> str:
        if avoid is not None:
            await during()
        return await original(avoid)

    pool._choose = choose  # type: ignore[method-assign]


async def test_rotate_does_not_respawn_a_key_shut_down_meanwhile(
    pool_root: Path, launcher: FakeLauncher, accounts: Accounts
) -> None:
    accounts.add("alpha", five_hour_used=10)
    accounts.add("beta", five_hour_used=30)
    async with make_pool(pool_root, launcher, accounts=accounts.pool) as pool:
        await pool.ensure("k", plain_build)

        async def gateway_closes_the_workspace() -> None:
            await pool.shutdown("k")

        _hold_choose(pool, gateway_closes_the_workspace)
        with pytest.raises(errors.ConfigError, match="no app-server"):
            await pool.rotate("k")
        assert pool.state("k") is None
        assert len(launcher.requests) == 1


async def test_two_exhausted_rotations_of_one_account_move_the_key_once(
    pool_root: Path, launcher: FakeLauncher, accounts: Accounts
) -> None:
    """Two turns fail on alpha at once: one move to beta; beta is never cooled down."""
    accounts.add("alpha", five_hour_used=10)
    accounts.add("beta", five_hour_used=30)
    accounts.add("gamma", five_hour_used=50)
    store = SlowStore(pool_root / "archives")
    async with make_pool(
        pool_root, launcher, accounts=accounts.pool, config={"store": store}
    ) as pool:
        first = await pool.ensure("k", plain_build)
        assert first.account == "alpha"
        a = asyncio.create_task(pool.rotate("k", exhausted=True, reason="turn 1"))
        for _ in range(400):
            if pool.state("k") is EntryState.STOPPING:
                break
            await asyncio.sleep(0.005)
        b = asyncio.create_task(pool.rotate("k", exhausted=True, reason="turn 2"))
        moved_a, moved_b = await asyncio.gather(a, b)
        assert moved_a is moved_b
        assert moved_a.account == "beta"
        [beta] = [x for x in accounts.pool.accounts() if x.name == "beta"]
        assert not beta.cooldowns
        assert len(launcher.requests) == 2
        # A caller that saw alpha fail after the move changes nothing either.
        assert await pool.rotate("k", exhausted=True, from_account="alpha") is moved_a


async def test_a_failed_spawn_keeps_a_login_codex_refreshed_meanwhile(
    pool_root: Path, accounts: Accounts
) -> None:
    accounts.add("alpha")

    class RefreshThenFail(FakeAppServerLauncher):
        async def __call__(self, request: LaunchRequest) -> Launched:
            link = request.home / "auth.json"
            data = json.loads(link.read_text())
            data["last_refresh"] = "2099-01-01T00:00:00Z"
            data["tokens"]["refresh_token"] = "rt-newer"
            link.unlink()
            link.write_text(json.dumps(data))
            link.chmod(0o600)
            raise errors.SpawnError(request.key, "was not ready within 30s", -9, "")

    async with make_pool(pool_root, RefreshThenFail(), accounts=accounts.pool) as pool:
        with pytest.raises(errors.SpawnError):
            await pool.ensure("k", plain_build)
    auth = json.loads((accounts.pool.account_home("alpha") / "auth.json").read_text())
    assert auth["tokens"]["refresh_token"] == "rt-newer"


# -- logins that cannot be taken back ------------------------------------------------------------


def codex_wrote_auth(
    home: Path, refresh_token: str, *, refreshed: str = "2099-01-01", mode: int = 0o600
) -> None:
    """Replace a spawn home's auth.json link by a file, as a Codex writing by rename would."""
    link = home / "auth.json"
    data = json.loads(link.read_text())
    data["last_refresh"] = f"{refreshed}T00:00:00Z"
    data["tokens"]["refresh_token"] = refresh_token
    link.unlink()
    link.write_text(json.dumps(data))
    link.chmod(mode)


def refresh_token_in(path: Path) -> str:
    token: str = json.loads(path.read_text())["tokens"]["refresh_token"]
    return token


def account_refresh_token(accounts: AccountPool, name: str) -> str:
    return refresh_token_in(accounts.account_home(name) / "auth.json")


@contextlib.contextmanager
def pool_lock_held(accounts: AccountPool) -> Iterator[None]:
    """The pool lock held by someone else: every adopt_auth times out at once."""
    timeout, accounts.lock_timeout = accounts.lock_timeout, 0.0
    try:
        with FileLock(accounts.root / "pool.lock"):
            yield
    finally:
        accounts.lock_timeout = timeout


def assert_private(item: QuarantinedAuth, accounts: AccountPool) -> None:
    assert stat.S_IMODE(item.path.lstat().st_mode) == 0o600
    assert stat.S_ISREG(item.path.lstat().st_mode)
    assert stat.S_IMODE(item.path.parent.stat().st_mode) == 0o700
    assert stat.S_IMODE(accounts.quarantine_path.stat().st_mode) == 0o700
    assert item.path.parent == accounts.quarantine_path / item.account


async def test_a_login_not_taken_back_for_a_busy_pool_lock_is_quarantined_then_adopted(
    pool_root: Path, launcher: FakeLauncher, accounts: Accounts, caplog: pytest.LogCaptureFixture
) -> None:
    """Pool lock busy at shutdown: the newer login goes to quarantine, the next spawn adopts it."""
    accounts.add("alpha")
    spent = account_refresh_token(accounts.pool, "alpha")
    async with make_pool(pool_root, launcher, accounts=accounts.pool) as pool:
        handle = await pool.ensure("k", plain_build)
        codex_wrote_auth(handle.home, "rt-only-live-copy")
        with pool_lock_held(accounts.pool):
            await pool.shutdown("k")
        [item] = accounts.pool.quarantined()
        assert item.account == "alpha"
        assert "could not acquire" in item.reason
        assert refresh_token_in(item.path) == "rt-only-live-copy"
        assert_private(item, accounts.pool)
        assert not handle.home.exists(), "the login is safe: the home may go"
        assert account_refresh_token(accounts.pool, "alpha") == spent
        errors_logged = [r for r in caplog.records if r.levelname == "ERROR"]
        assert any(str(item.path) in r.getMessage() for r in errors_logged)
        # The next spawn on the account takes it back before Codex reads it.
        again = await pool.ensure("k", plain_build)
        assert again.account == "alpha"
        assert account_refresh_token(accounts.pool, "alpha") == "rt-only-live-copy"
        assert accounts.pool.quarantined() == []
        assert not item.path.exists()
    assert "rt-only-live-copy" not in caplog.text


async def test_a_failed_spawn_whose_login_cannot_be_taken_back_quarantines_it(
    pool_root: Path, accounts: Accounts
) -> None:
    """A spawn that refreshed, then failed with the pool lock busy: the login is quarantined."""
    accounts.add("alpha")

    held = contextlib.ExitStack()

    class RefreshThenFail(FakeAppServerLauncher):
        async def __call__(self, request: LaunchRequest) -> Launched:
            codex_wrote_auth(request.home, "rt-newer")
            held.enter_context(pool_lock_held(accounts.pool))
            raise errors.SpawnError(request.key, "was not ready within 30s", -9, "")

    async with make_pool(pool_root, RefreshThenFail(), accounts=accounts.pool) as pool:
        with held, pytest.raises(errors.SpawnError):
            await pool.ensure("k", plain_build)
        assert list((pool_root / "homes").iterdir()) == []
        [item] = accounts.pool.quarantined()
        assert refresh_token_in(item.path) == "rt-newer"
        assert await pool.retry_quarantined() == []
    assert account_refresh_token(accounts.pool, "alpha") == "rt-newer"


async def test_a_login_of_a_removed_account_stays_in_quarantine_until_it_is_imported(
    pool_root: Path, launcher: FakeLauncher, accounts: Accounts
) -> None:
    """Account removed while its server ran: its newer login is kept, not deleted with the home."""
    accounts.add("alpha")
    async with make_pool(pool_root, launcher, accounts=accounts.pool) as pool:
        handle = await pool.ensure("k", plain_build)
        codex_wrote_auth(handle.home, "rt-newer")
        accounts.pool.remove("alpha", force=True)
        await pool.shutdown("k")
        [item] = accounts.pool.quarantined()
        assert item.account == "alpha"
        assert "no account of the pool has its account id id-alpha" in item.reason
        assert_private(item, accounts.pool)
        # Retries keep it while the account is gone...
        [still] = await pool.retry_quarantined()
        assert still.path == item.path
        assert refresh_token_in(item.path) == "rt-newer"
    # ...and it is a whole auth.json: re-adding the account from it works.
    accounts.pool.import_auth("alpha", item.path)
    assert account_refresh_token(accounts.pool, "alpha") == "rt-newer"
    assert accounts.pool.adopt_quarantined() == []
    assert list(item.path.parent.iterdir()) == [], "its reason goes with it"


def test_a_quarantined_login_is_never_written_over_another_file(tmp_path: Path) -> None:
    """The quarantine writes a new file whole, or fails and leaves the one there alone."""
    from codex_supervisor.accounts import _write_new_private

    target = tmp_path / "20990101T000000.000000Z-00000000-auth.json"
    target.write_bytes(b"first")
    with pytest.raises(FileExistsError):
        _write_new_private(target, b"second")
    assert target.read_bytes() == b"first"
    assert list(tmp_path.iterdir()) == [target], "no temporary file is left behind"
    fresh = tmp_path / "new-auth.json"
    _write_new_private(fresh, b"{}")
    assert fresh.read_bytes() == b"{}"
    assert stat.S_IMODE(fresh.stat().st_mode) == 0o600


async def test_a_login_refused_for_its_mode_is_quarantined_0600_and_taken_back_by_the_reaper(
    pool_root: Path, launcher: FakeLauncher, accounts: Accounts
) -> None:
    """A world-readable auth.json is refused by adopt_auth: kept 0600, then adopted on a sweep."""
    accounts.add("alpha")
    async with make_pool(pool_root, launcher, accounts=accounts.pool) as pool:
        handle = await pool.ensure("k", plain_build)
        codex_wrote_auth(handle.home, "rt-newer", mode=0o644)
        await pool.shutdown("k")
        [item] = accounts.pool.quarantined()
        assert "readable or writable by other users" in item.reason
        assert_private(item, accounts.pool)
        assert await IdleReaper(pool, interval=1, idle_after=1000).sweep() == []
        assert accounts.pool.quarantined() == []
    assert account_refresh_token(accounts.pool, "alpha") == "rt-newer"


async def test_a_home_whose_login_cannot_even_be_quarantined_is_kept_until_it_is_safe(
    pool_root: Path, launcher: FakeLauncher, accounts: Accounts, caplog: pytest.LogCaptureFixture
) -> None:
    """No adopt, no quarantine: the home and its auth.json stay (ERROR logged), retried later."""
    accounts.add("alpha")
    blocker = accounts.pool.quarantine_path
    async with make_pool(pool_root, launcher, accounts=accounts.pool) as pool:
        handle = await pool.ensure("k", plain_build)
        codex_wrote_auth(handle.home, "rt-newer")
        blocker.write_text("not a folder")
        with pool_lock_held(accounts.pool):
            await pool.shutdown("k")
        assert refresh_token_in(handle.home / "auth.json") == "rt-newer"
        assert "could neither take back nor quarantine" in caplog.text
        assert await pool.store.version("k") == 1, "the rest of the home is archived"
        with pool_lock_held(accounts.pool):
            await pool.retry_quarantined()
        assert handle.home.exists(), "still neither adoptable nor quarantinable"
        blocker.unlink()
        assert await pool.retry_quarantined() == []
        assert not handle.home.exists()
    assert account_refresh_token(accounts.pool, "alpha") == "rt-newer"
    assert "rt-newer" not in caplog.text


async def test_a_pool_closing_with_a_login_it_could_not_save_keeps_the_home_and_says_so(
    pool_root: Path, launcher: FakeLauncher, accounts: Accounts, caplog: pytest.LogCaptureFixture
) -> None:
    """Closed while the login can be neither adopted nor quarantined: the home stays, logged."""
    accounts.add("alpha")
    pool = make_pool(pool_root, launcher, accounts=accounts.pool)
    handle = await pool.ensure("k", plain_build)
    codex_wrote_auth(handle.home, "rt-newer")
    accounts.pool.quarantine_path.write_text("not a folder")
    with pool_lock_held(accounts.pool):
        await pool.aclose()
    assert refresh_token_in(handle.home / "auth.json") == "rt-newer"
    [record] = [r for r in caplog.records if f"the home {handle.home} stays" in r.getMessage()]
    assert record.levelname == "ERROR"


async def test_a_quarantined_login_the_account_has_outgrown_is_dropped_never_written_back(
    pool_root: Path, launcher: FakeLauncher, accounts: Accounts
) -> None:
    """The account's auth.json became newer meanwhile: the quarantined copy goes, unused."""
    accounts.add("alpha")
    async with make_pool(pool_root, launcher, accounts=accounts.pool) as pool:
        handle = await pool.ensure("k", plain_build)
        codex_wrote_auth(handle.home, "rt-2099")
        with pool_lock_held(accounts.pool):
            await pool.shutdown("k")
        [item] = accounts.pool.quarantined()
        account_auth = accounts.pool.account_home("alpha") / "auth.json"
        data = json.loads(account_auth.read_text())
        data["last_refresh"] = "2100-01-01T00:00:00Z"
        data["tokens"]["refresh_token"] = "rt-2100"
        account_auth.write_text(json.dumps(data))
        newest = account_auth.read_bytes()
        assert await pool.retry_quarantined() == []
        assert not item.path.exists()
        assert account_auth.read_bytes() == newest


def login_copy(
    accounts: AccountPool, name: str, where: Path, refresh_token: str, refreshed: str | None
) -> Path:
    """A copy of ``name``'s login with a new refresh token, refreshed on day ``refreshed``."""
    data = json.loads((accounts.account_home(name) / "auth.json").read_text())
    data.pop("last_refresh", None)
    if refreshed is not None:
        data["last_refresh"] = f"{refreshed}T00:00:00Z"
    data["tokens"]["refresh_token"] = refresh_token
    where.mkdir(parents=True, exist_ok=True)
    path = where / "auth.json"
    path.write_text(json.dumps(data))
    path.chmod(0o600)
    return path


def undated_login(accounts: AccountPool, name: str, where: Path, refresh_token: str) -> Path:
    """A newer login of ``name`` that says nothing of when it was refreshed.

    Nothing says it is newer than the account's own, so it is never adopted
    by itself: in quarantine it stays, and keeps holding the account back.
    """
    return login_copy(accounts, name, where, refresh_token, None)


async def test_no_server_starts_on_an_account_whose_login_waits_in_quarantine(
    pool_root: Path, launcher: FakeLauncher, accounts: Accounts, tmp_path: Path
) -> None:
    """A login of alpha that cannot be adopted: spawns go to beta, or fail when none can run."""
    accounts.add("alpha", five_hour_used=10)
    accounts.add("beta", five_hour_used=40)
    stray = undated_login(accounts.pool, "alpha", tmp_path / "stray", "rt-undated")
    item = accounts.pool.take_back_auth("alpha", stray)
    assert item is not None
    assert "no last_refresh" in item.reason
    assert stray.exists(), "the caller removes the source"
    async with make_pool(pool_root, launcher, accounts=accounts.pool) as pool:
        handle = await pool.ensure("k", plain_build)
        assert handle.account == "beta"
        assert pool.selector is not None
        assert str(item.path) in str(pool.selector.held_back["alpha"])
        await pool.shutdown("k")
        accounts.pool.remove("beta")
        with pytest.raises(errors.LoginQuarantined, match="quarantine") as raised:
            await pool.ensure("k", plain_build)
        assert raised.value.account == "alpha"
        assert raised.value.path == str(item.path)
        assert len(launcher.requests) == 1


async def test_a_login_left_in_a_home_goes_to_the_account_of_its_account_id(
    pool_root: Path, launcher: FakeLauncher, accounts: Accounts, tmp_path: Path
) -> None:
    """Not alpha's login at all, but beta's (newer): it goes into beta, not to quarantine."""
    accounts.add("alpha")
    accounts.add("beta")
    newer = accounts.backend.write_auth(tmp_path / "stray", "id-beta")
    data = json.loads(newer.read_text())
    data["last_refresh"] = "2099-01-01T00:00:00Z"
    data["tokens"]["refresh_token"] = "rt-beta-newer"
    newer.write_text(json.dumps(data))
    assert accounts.pool.take_back_auth("alpha", newer) is None
    assert account_refresh_token(accounts.pool, "beta") == "rt-beta-newer"
    assert account_refresh_token(accounts.pool, "alpha") != "rt-beta-newer"
    assert accounts.pool.quarantined() == []


async def test_a_safe_quarantined_login_that_cannot_be_deleted_stops_no_spawn(
    pool_root: Path,
    launcher: FakeLauncher,
    accounts: Accounts,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Deleting a quarantined copy fails (a read-only folder): logged, the others go on."""
    from codex_supervisor import accounts as accounts_module

    accounts.add("alpha")
    older = login_copy(accounts.pool, "alpha", pool_root.parent / "h1", "rt-older", "2000-01-01")
    newer = login_copy(accounts.pool, "alpha", pool_root.parent / "h2", "rt-newer", "2099-01-01")
    with pool_lock_held(accounts.pool):
        first = accounts.pool.take_back_auth("alpha", older)
        second = accounts.pool.take_back_auth("alpha", newer)
    assert first is not None
    assert second is not None
    async with make_pool(pool_root, launcher, accounts=accounts.pool) as pool:
        release = accounts_module._release_quarantined

        def read_only(path: Path) -> None:
            if path == first.path:
                raise PermissionError(1, "Operation not permitted", str(path))
            release(path)

        monkeypatch.setattr(accounts_module, "_release_quarantined", read_only)
        handle = await pool.ensure("k", plain_build)  # neither raises nor skips the second
        assert handle.account == "alpha"
        assert account_refresh_token(accounts.pool, "alpha") == "rt-newer"
        assert [i.path for i in accounts.pool.quarantined()] == [first.path]
        assert await pool.retry_quarantined() == []
        assert await pool.retry_quarantined() == []
    said = [r for r in caplog.records if "cannot be deleted" in r.getMessage()]
    assert len(said) == 1, "said once, not on every sweep"
    assert said[0].exc_info is None


async def test_a_home_whose_login_could_not_be_saved_holds_its_account_back(
    pool_root: Path, accounts: Accounts
) -> None:
    """No adopt, no quarantine after a failed spawn: the next spawn is not on that account."""
    accounts.add("alpha", five_hour_used=10)
    accounts.add("beta", five_hour_used=50)
    accounts.pool.quarantine_path.write_text("not a folder")  # the quarantine cannot be written
    seen: list[tuple[str, str]] = []
    held = contextlib.ExitStack()

    class RefreshThenFail(FakeAppServerLauncher):
        async def __call__(self, request: LaunchRequest) -> Launched:
            seen.append((request.key, refresh_token_in(request.home / "auth.json")))
            if len(seen) == 1:
                codex_wrote_auth(request.home, "rt-only-copy")
                held.enter_context(pool_lock_held(accounts.pool))
                raise errors.SpawnError(request.key, "died", -9, "")
            return await super().__call__(request)

    async with make_pool(pool_root, RefreshThenFail(), accounts=accounts.pool) as pool:
        with held, pytest.raises(errors.SpawnError):
            await pool.ensure("k1", plain_build)
        [kept] = pool.kept_homes()
        assert pool.kept_homes() == {kept: "alpha"}
        assert refresh_token_in(kept / "auth.json") == "rt-only-copy"
        with pool_lock_held(accounts.pool):  # still neither adoptable nor quarantinable
            second = await pool.ensure("k2", plain_build)
        assert second.account == "beta", "never alpha: its home holds a spent token"
        assert seen[1][0] == "k2"
        assert seen[1][1] != "rt-only-copy"
        accounts.pool.quarantine_path.unlink()
        assert await pool.retry_quarantined() == []
        assert pool.kept_homes() == {}
        assert not kept.exists(), "nothing was served from it: it goes once the login is safe"
    assert account_refresh_token(accounts.pool, "alpha") == "rt-only-copy"


async def test_a_home_neither_archived_nor_rescued_is_kept_and_holds_its_account_back(
    pool_root: Path, launcher: FakeLauncher, accounts: Accounts, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Archiving fails and the login cannot be saved: the home stays, alpha is held back;
    once the login is safe alpha runs again, and the home (never archived) still stays."""
    accounts.add("alpha")

    async def broken_put(*args: Any, **kwargs: Any) -> None:
        raise errors.HomeStoreError("the store is down")

    async with make_pool(pool_root, launcher, accounts=accounts.pool) as pool:
        handle = await pool.ensure("k", plain_build)
        codex_wrote_auth(handle.home, "rt-newer")
        accounts.pool.quarantine_path.write_text("not a folder")
        with monkeypatch.context() as patch, pool_lock_held(accounts.pool):
            patch.setattr(LocalDirHomeStore, "put", broken_put)
            await pool.shutdown("k")
        assert pool.kept_homes() == {handle.home: "alpha"}
        with pool_lock_held(accounts.pool), pytest.raises(errors.LoginQuarantined, match="kept"):
            await pool.ensure("k", plain_build)
        assert len(launcher.requests) == 1
        accounts.pool.quarantine_path.unlink()
        again = await pool.ensure("k", plain_build)
        assert again.account == "alpha"
        assert account_refresh_token(accounts.pool, "alpha") == "rt-newer"
        assert handle.home.exists(), "its state was never archived: it is not deleted"


async def test_a_kept_home_is_found_again_by_the_next_pool(
    pool_root: Path,
    launcher: FakeLauncher,
    accounts: Accounts,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A pool closed with a home it could not save: the next pool holds alpha back from
    its first spawn, takes the login back when it can, and leaves the home alone."""
    accounts.add("alpha", five_hour_used=10)
    accounts.add("beta", five_hour_used=50)
    accounts.pool.quarantine_path.write_text("not a folder")
    first = make_pool(pool_root, launcher, accounts=accounts.pool)
    handle = await first.ensure("k", plain_build)
    assert handle.account == "alpha"
    codex_wrote_auth(handle.home, "rt-newer")
    with pool_lock_held(accounts.pool):
        await first.aclose()
    assert handle.home.exists()
    async with make_pool(pool_root, launcher, accounts=accounts.pool) as second:
        with pool_lock_held(accounts.pool):
            other = await second.ensure("k2", plain_build)
        assert other.account == "beta"
        assert second.kept_homes() == {handle.home: "alpha"}
        assert any("found the spawn home" in r.getMessage() for r in caplog.records)
        await second.shutdown("k2")
        assert await second.retry_quarantined() == []  # the lock is free now
        assert second.kept_homes() == {}
        assert account_refresh_token(accounts.pool, "alpha") == "rt-newer"
        assert handle.home.exists(), "a home found on disk is never deleted"
        assert (await second.ensure("k3", plain_build)).account == "alpha"
        await second.retry_quarantined()  # the same home is not taken again
        assert second.kept_homes() == {}


async def test_a_cancelled_aclose_leaves_no_server_running(
    pool_root: Path, launcher: FakeLauncher
) -> None:
    launcher.gate = asyncio.Event()
    pool = make_pool(pool_root, launcher)
    ensuring = asyncio.create_task(pool.ensure("k", plain_build))
    await asyncio.sleep(0.01)
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(0.05):
            await pool.aclose()
    launcher.gate.set()
    [outcome] = await asyncio.gather(ensuring, return_exceptions=True)
    assert isinstance(outcome, errors.SpawnError)
    assert launcher.processes
    assert all(not p.running for p in launcher.processes)
    assert pool.keys() == []


async def test_rebalance_does_not_stop_a_key_that_became_active(
    pool_root: Path, launcher: FakeLauncher, accounts: Accounts
) -> None:
    accounts.add("alpha", five_hour_used=10)
    accounts.add("beta", five_hour_used=20)
    async with make_pool(pool_root, launcher, accounts=accounts.pool) as pool:
        handle = await pool.ensure("k", plain_build)
        accounts.backend.set_quota("id-alpha", five_hour=97)
        assert pool.quota is not None
        await pool.quota.get("alpha", max_age=0)
        busy = False

        async def a_turn_starts() -> None:
            nonlocal busy
            await asyncio.sleep(0.01)
            busy = True
            pool.touch("k")

        _hold_choose(pool, a_turn_starts)
        assert await pool.rebalance(lambda _: busy) == []
        assert handle.is_alive()
        assert pool.handle("k") is handle


# A stand-in for `codex app-server --listen ws://127.0.0.1:0`: announces its
# port on stderr as the real one does (after a 200 KiB line with
# --long-first), serves /readyz, then writes a 200 KiB stderr line and more
# lines after it.
_CHATTY_APP_SERVER = r"""
import http.server, sys, threading

class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200 if self.path == "/readyz" else 404)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args):
        pass

server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
if "--long-first" in sys.argv:
    sys.stderr.write("z" * (200 * 1024) + "\n")
sys.stderr.write(f"codex app-server listening on: ws://127.0.0.1:{server.server_address[1]}\n")
sys.stderr.flush()

def chatter():
    sys.stderr.write("x" * (200 * 1024) + "\n")
    for number in range(100):
        sys.stderr.write(f"line {number} " + "y" * 100 + "\n")
    sys.stderr.write("END-OF-CHATTER\n")
    sys.stderr.flush()

threading.Thread(target=chatter, daemon=True).start()
server.serve_forever()
"""


@pytest.mark.parametrize("extra", [(), ("--long-first",)], ids=["after-port", "before-port"])
async def test_a_stderr_line_over_64_kib_does_not_wedge_the_stderr_drain(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, extra: tuple[str, ...]
) -> None:
    """A 200 KiB stderr line is truncated with a logged reason; the lines after it still drain."""
    script = tmp_path / "chatty_app_server.py"
    script.write_text(_CHATTY_APP_SERVER)
    request = LaunchRequest(
        key="chatty",
        argv=(sys.executable, str(script), *extra),
        env=dict(os.environ),
        cwd=tmp_path,
        home=tmp_path,
        ready_timeout=20.0,
        ready_interval=0.05,
    )
    launched = await launch_app_server(request)
    try:
        async with asyncio.timeout(10):
            while "END-OF-CHATTER" not in launched.stderr_tail():
                assert not any(task.done() for task in launched.background)
                await asyncio.sleep(0.02)
        tail = launched.stderr_tail()
        assert "line 99 " in tail
        assert "[truncated" in tail
        assert "x" * (200 * 1024) not in tail
        assert "truncated" in caplog.text
    finally:
        await launched.process.stop(StopPolicy(interrupt_grace=0.0, terminate_grace=1.0))
        for task in launched.background:
            task.cancel()
        await asyncio.gather(*launched.background, return_exceptions=True)


def test_line_splitter_bounds_lines_across_any_chunking() -> None:
    """Lines split the same whatever the chunking; an over-long one is cut once, then resynced."""
    from codex_supervisor.appserver.launcher import _LineSplitter

    data = b"short\n" + b"a" * 100 + b"\nnext\n" + b"b" * 10 + b"\ntail"
    for size in (1, 3, 7, 64, len(data)):
        dropped: list[int] = []
        splitter = _LineSplitter(16, dropped.append)
        lines = [
            line
            for start in range(0, len(data), size)
            for line in splitter.feed(data[start : start + size])
        ]
        lines += splitter.flush()
        assert lines == [
            b"short\n",
            b"a" * 16 + b" ...[truncated]\n",
            b"next\n",
            b"b" * 10 + b"\n",
            b"tail",
        ], size
        assert dropped == [101]


async def test_the_app_server_quota_probe_never_boots_codex_on_a_spent_login(
    accounts: Accounts, tmp_path: Path
) -> None:
    """A newer login of alpha waits in quarantine: the probe refuses before Codex starts."""
    from codex_supervisor.appserver.quota_source import AppServerRateLimitsSource

    accounts.add("alpha")
    item = accounts.pool.take_back_auth(
        "alpha", undated_login(accounts.pool, "alpha", tmp_path / "stray", "rt-undated")
    )
    assert item is not None
    marker = tmp_path / "codex-started"
    codex = tmp_path / "codex"
    codex.write_text(f"#!/bin/sh\ntouch {marker}\nexit 1\n")
    codex.chmod(0o755)
    source = AppServerRateLimitsSource(accounts.pool, codex=str(codex), timeout=5)
    with pytest.raises(errors.QuotaUnavailable, match="quarantine") as raised:
        await source.fetch("alpha")
    assert str(item.path) in str(raised.value)
    assert not marker.exists()
    assert await accounts.pool.occupants("alpha") == [], "the probe's lease is let go"


async def test_a_login_quarantined_while_a_spawn_waits_stops_it_before_codex_starts(
    pool_root: Path, launcher: FakeLauncher, accounts: Accounts, tmp_path: Path
) -> None:
    """Quarantined after the choice (during the config builder): checked again before launch."""
    accounts.add("alpha")

    def build(context: SpawnContext) -> SpawnConfig:
        stray = undated_login(accounts.pool, "alpha", tmp_path / "stray", "rt-undated")
        assert accounts.pool.take_back_auth("alpha", stray) is not None
        return SpawnConfig(config={"model": "m"})

    async with make_pool(pool_root, launcher, accounts=accounts.pool) as pool:
        with pytest.raises(errors.LoginQuarantined):
            await pool.ensure("k", build)
        assert launcher.requests == []
        assert pool.state("k") is None
