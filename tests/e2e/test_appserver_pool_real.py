"""AppServerPool against the real Codex 0.169.0 app-server and the fake backend.

Every server here is a real ``codex app-server --listen ws://127.0.0.1:0`` in a
home of its own; the model is the fake backend on 127.0.0.1.
"""

from __future__ import annotations

import asyncio
import gzip
import json
import os
import random
import signal
import tarfile
import uuid
from pathlib import Path
from typing import Any

import pytest

from codex_supervisor.accounts import AccountPool
from codex_supervisor.appserver import AppServerClient, run_turn
from codex_supervisor.appserver.homestore import PRIVATE_ENTRIES
from codex_supervisor.appserver.objectstore import ObjectStoreHomeStore
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
from codex_supervisor.testing import FakeCodexBackend, S3Server, codex_config, hermetic_env

pytestmark = [pytest.mark.anyio, pytest.mark.real_codex]


class RealPool:
    """A pool of real app-servers on one fake backend, with a counting launcher."""

    def __init__(self, root: Path, backend: FakeCodexBackend, codex: Path) -> None:
        self.root = root
        self.backend = backend
        self.codex = codex
        self.home = root / "home"
        self.home.mkdir()
        self.work = root / "work"
        self.work.mkdir()
        self.launches: list[LaunchRequest] = []
        self.base = root / "base"
        backend.write_codex_home(self.base)
        self.accounts = AccountPool(root=root / "accounts", base_codex_home=self.base)

    async def launcher(self, request: LaunchRequest) -> Launched:
        self.launches.append(request)
        return await launch_app_server(request)

    def build(self, context: SpawnContext) -> SpawnConfig:
        return SpawnConfig(config=codex_config(self.backend), cwd=self.work)

    def add(self, name: str, **quota: Any) -> None:
        self.backend.add_account(f"id-{name}", **quota)
        self.accounts.import_auth(
            name, self.backend.write_auth(self.root / f"login-{name}", f"id-{name}")
        )

    def pool(self, **config: Any) -> AppServerPool:
        return AppServerPool(
            PoolConfig(root=self.root / "pool", codex=str(self.codex), **config),
            accounts=self.accounts,
            launcher=self.launcher,
            environ=hermetic_env(self.base, self.home, self.backend),
        )


@pytest.fixture
def real(tmp_path: Path, backend: FakeCodexBackend, codex_bin: Path) -> RealPool:
    return RealPool(tmp_path, backend, codex_bin)


def live_app_servers(root: Path) -> dict[int, str]:
    """Live ``codex app-server`` processes whose CODEX_HOME lies under ``root``: pid → home.

    Only the servers themselves: the shells and tools they start inherit
    CODEX_HOME but are not app-servers, and a child a server has just forked
    shows the server's own command line until it execs, so a process whose
    parent is one of the servers is left out.
    """
    found = {}
    parents = {}
    prefix = b"CODEX_HOME=" + bytes(root)
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
            environ = (entry / "environ").read_bytes().split(b"\0")
            status = (entry / "status").read_text()
        except OSError:
            continue
        if "State:\tZ" in status or argv[1:2] != [b"app-server"]:
            continue
        for item in environ:
            if item.startswith(prefix):
                found[int(entry.name)] = item.removeprefix(b"CODEX_HOME=").decode()
                parents[int(entry.name)] = int(status.split("PPid:\t", 1)[1].split()[0])
    return {pid: home for pid, home in found.items() if parents[pid] not in found}


def app_servers_under(root: Path) -> list[int]:
    """Pids of the live app-servers whose CODEX_HOME lies under ``root``."""
    return sorted(live_app_servers(root))


async def complete_turn(handle_url: str, work: Path, prompt: str) -> tuple[str, str]:
    client = await AppServerClient.connect_ws(handle_url)
    async with client:
        thread = await client.thread_start({"cwd": str(work)})
        result = await run_turn(client, thread.id, prompt, stall_timeout=30)
    assert result.status == "completed", result
    assert result.final_message is not None
    return thread.id, result.final_message


async def test_ensure_gives_a_ready_server_that_completes_a_turn(real: RealPool) -> None:
    """1. ensure → a ready handle; a client completes a turn through its ws URL."""
    real.add("alpha")
    async with real.pool() as pool:
        handle = await pool.ensure("ws-1", real.build)
        assert handle.is_alive()
        assert handle.ws_url.startswith("ws://127.0.0.1:")
        assert handle.http_url == handle.ws_url.replace("ws://", "http://")
        assert handle.account == "alpha"
        _, reply = await complete_turn(handle.ws_url, real.work, "hello pool")
        assert reply == real.backend.reply_text
        [request] = real.backend.responses_requests()
        assert request.account_id == "id-alpha"
        assert app_servers_under(real.root / "pool") == [handle.pid]
    assert app_servers_under(real.root / "pool") == []
    assert not handle.is_alive()


async def test_fifty_concurrent_ensures_spawn_exactly_one_process(real: RealPool) -> None:
    """2. 50 concurrent ensure on one cold key → one process."""
    real.add("alpha")
    async with real.pool() as pool:
        handles = await asyncio.gather(*(pool.ensure("cold", real.build) for _ in range(50)))
        assert len(real.launches) == 1
        assert {h.pid for h in handles} == {handles[0].pid}
        assert app_servers_under(real.root / "pool") == [handles[0].pid]


async def test_ensure_racing_shutdown_never_shares_a_home_nor_regresses_the_archive(
    real: RealPool,
) -> None:
    """3. ensure against shutdown on one key: unique homes, archives only move forward."""
    real.add("alpha")
    rng = random.Random(3)
    versions: list[int] = []
    async with real.pool() as pool:

        async def ensure() -> None:
            await pool.ensure("k", real.build)
            # No two live servers ever share a home.
            homes = list(live_app_servers(real.root / "pool").values())
            assert len(homes) == len(set(homes))
            assert len(homes) <= 1, "one key, at most one live server"

        async def shutdown() -> None:
            await asyncio.sleep(rng.random() * 0.3)
            await pool.shutdown("k")
            version = await pool.store.version("k")
            if version is not None:
                versions.append(version)

        for _ in range(4):
            await asyncio.gather(
                *(ensure() if rng.random() < 0.5 else shutdown() for _ in range(6))
            )
        await pool.shutdown("k")
        final = await pool.store.version("k")
    homes = [r.home for r in real.launches]
    assert len(homes) >= 2
    assert len(set(homes)) == len(homes)
    assert versions == sorted(versions)
    assert final == len(real.launches)
    assert app_servers_under(real.root / "pool") == []


async def test_sigkilled_child_is_evicted_archived_and_respawned_with_its_files(
    real: RealPool,
) -> None:
    """4. SIGKILL → the next ensure evicts, archives, respawns; a marker file comes back."""
    real.add("alpha")
    async with real.pool() as pool:
        first = await pool.ensure("k", real.build)
        thread_id, _ = await complete_turn(first.ws_url, real.work, "before the crash")
        (first.home / "marker.txt").write_text("still here")
        os.killpg(first.pid, signal.SIGKILL)
        assert await first.done() == -signal.SIGKILL
        second = await pool.ensure("k", real.build)
        assert second.pid != first.pid
        assert second.home != first.home
        assert not first.home.exists()
        assert (second.home / "marker.txt").read_text() == "still here"
        assert list((second.home / "sessions").rglob(f"*{thread_id}.jsonl"))
        client = await AppServerClient.connect_ws(second.ws_url)
        async with client:
            resumed = await client.thread_resume(thread_id)
            assert resumed.id == thread_id
        assert app_servers_under(real.root / "pool") == [second.pid]


async def test_reaper_reaps_idle_keeps_touched_and_probed(real: RealPool) -> None:
    """5. Idle entry shut down; a touched one kept; a probe reporting activity keeps one."""
    real.add("alpha")
    async with real.pool() as pool:
        for key in ("idle", "touched", "busy"):
            await pool.ensure(key, real.build)
        await asyncio.sleep(0.6)
        pool.touch("touched")
        reaper = IdleReaper(
            pool, interval=0.1, idle_after=0.5, activity_probe={"busy"}.__contains__
        )
        assert await reaper.sweep() == ["idle"]
        assert pool.state("idle") is None
        assert pool.state("touched") is EntryState.RUNNING
        assert pool.state("busy") is EntryState.RUNNING
        assert len(app_servers_under(real.root / "pool")) == 2


async def test_loopback_tokens_reach_the_child_and_die_with_the_entry(real: RealPool) -> None:
    """6. Tokens: the right key, unknown and empty refused, a reaped entry's token dead."""
    real.add("alpha")
    tokens: dict[str, str] = {}

    def build(context: SpawnContext) -> SpawnConfig:
        tokens[context.key] = context.loopback_token
        return real.build(context)

    async with real.pool() as pool:
        a = await pool.ensure("a", build)
        await pool.ensure("b", build)
        environ = Path(f"/proc/{a.pid}/environ").read_bytes().split(b"\0")  # noqa: ASYNC240
        assert f"CODEX_LOOPBACK_TOKEN={tokens['a']}".encode() in environ
        cmdline = Path(f"/proc/{a.pid}/cmdline").read_bytes()  # noqa: ASYNC240
        assert tokens["a"].encode() not in cmdline
        assert pool.lookup_key_for_token(tokens["a"]) == "a"
        assert pool.lookup_key_for_token(tokens["b"]) == "b"
        assert pool.lookup_key_for_token("") is None
        assert pool.lookup_key_for_token("f" * 64) is None
        await asyncio.sleep(0.3)
        pool.touch("b")
        assert await IdleReaper(pool, interval=1, idle_after=0.2).sweep() == ["a"]
        assert pool.lookup_key_for_token(tokens["a"]) is None
        assert pool.lookup_key_for_token(tokens["b"]) == "b"


async def test_rotate_moves_a_workspace_and_its_thread_to_another_account(
    real: RealPool,
) -> None:
    """7. rotate(key) → another account; a thread started before is resumed after."""
    real.add("alpha", five_hour_used=10)
    real.add("beta", five_hour_used=40)
    async with real.pool() as pool:
        first = await pool.ensure("k", real.build)
        assert first.account == "alpha"
        thread_id, _ = await complete_turn(first.ws_url, real.work, "remember the word kiwi")
        second = await pool.rotate("k", exhausted=True, reason="usageLimitExceeded")
        assert second.account == "beta"
        assert not first.is_alive()
        client = await AppServerClient.connect_ws(second.ws_url)
        async with client:
            resumed = await client.thread_resume(thread_id)
            assert resumed.id == thread_id
            result = await run_turn(client, thread_id, "what was the word?", stall_timeout=30)
        assert result.status == "completed"
        first_request, second_request = real.backend.responses_requests()
        assert first_request.account_id == "id-alpha"
        assert second_request.account_id == "id-beta"
        assert second_request.session_id == first_request.session_id == thread_id
        assert "remember the word kiwi" in second_request.input_texts
        [alpha] = [a for a in real.accounts.accounts() if a.name == "alpha"]
        assert alpha.cooldowns
        real.backend.assert_no_replay()


async def test_a_refresh_by_a_pooled_server_lands_in_the_accounts_auth_json(
    real: RealPool,
) -> None:
    """The spawn home links auth.json: Codex's refresh updates the account's own file."""
    real.add("alpha", access_token_expired=True)
    account_auth = real.accounts.account_home("alpha") / "auth.json"
    before = account_auth.read_bytes()
    async with real.pool() as pool:
        handle = await pool.ensure("k", real.build)
        await complete_turn(handle.ws_url, real.work, "refresh please")
        assert (handle.home / "auth.json").is_symlink()
    assert account_auth.read_bytes() != before
    assert not account_auth.is_symlink()
    real.backend.assert_no_replay()
    [request] = real.backend.responses_requests()
    assert request.account_id == "id-alpha"
    # The archive never carries the account's tokens.
    [archive] = list((real.root / "pool" / "archives").rglob("*.tar.gz"))
    with tarfile.open(archive, "r:gz") as tar:
        names = tar.getnames()
    assert "sessions" in names
    assert not PRIVATE_ENTRIES & set(names)
    content = gzip.decompress(archive.read_bytes())
    assert b"refresh_token" not in content
    for token in json.loads(account_auth.read_text())["tokens"].values():
        if isinstance(token, str) and len(token) > 16:
            assert token.encode() not in content


async def test_a_login_codex_refreshed_in_a_home_survives_a_busy_pool_lock(
    real: RealPool,
) -> None:
    """Codex refreshes into a home's own auth.json; the pool lock is busy at shutdown.

    The refreshed login (the only live refresh token) is quarantined, not
    deleted with the home; the next spawn adopts it, and a later refresh
    uses it without a replay.
    """
    real.add("alpha", access_token_expired=True)
    account_auth = real.accounts.account_home("alpha") / "auth.json"
    spent = json.loads(account_auth.read_text())["tokens"]["refresh_token"]
    detached: list[Path] = []

    async def detaching_launcher(request: LaunchRequest) -> Launched:
        if not detached:
            # The home's auth.json is a file of its own, as if Codex had
            # replaced the link: its refresh lands there, not in the account.
            link = request.home / "auth.json"
            data = link.read_bytes()
            link.unlink()
            link.write_bytes(data)
            link.chmod(0o600)
            detached.append(link)
        return await real.launcher(request)

    async with AppServerPool(
        PoolConfig(root=real.root / "pool", codex=str(real.codex)),
        accounts=real.accounts,
        launcher=detaching_launcher,
        environ=hermetic_env(real.base, real.home, real.backend),
    ) as pool:
        first = await pool.ensure("k", real.build)
        await complete_turn(first.ws_url, real.work, "refresh into the home")
        live = real.backend.account("id-alpha").refresh_token
        assert live != spent
        assert json.loads(detached[0].read_text())["tokens"]["refresh_token"] == live
        assert json.loads(account_auth.read_text())["tokens"]["refresh_token"] == spent
        timeout, real.accounts.lock_timeout = real.accounts.lock_timeout, 0.0
        try:
            with FileLock(real.accounts.root / "pool.lock"):
                await pool.shutdown("k")
        finally:
            real.accounts.lock_timeout = timeout
        assert not first.home.exists()
        [item] = real.accounts.quarantined("alpha")
        assert json.loads(item.path.read_text())["tokens"]["refresh_token"] == live
        assert item.path.stat().st_mode & 0o777 == 0o600
        second = await pool.ensure("k", real.build)
        assert (second.home / "auth.json").is_symlink()
        assert json.loads(account_auth.read_text())["tokens"]["refresh_token"] == live
        assert real.accounts.quarantined() == []
        real.backend.expire_access_token("id-alpha")
        await complete_turn(second.ws_url, real.work, "refresh again, from the adopted login")
    assert json.loads(account_auth.read_text())["tokens"]["refresh_token"] != live
    real.backend.assert_no_replay()
    assert app_servers_under(real.root / "pool") == []


async def test_a_replica_restores_a_workspace_another_archived_in_object_storage(
    real: RealPool, s3_server: S3Server
) -> None:
    """Two pool roots (two replicas) on one S3 bucket: the second resumes the first's thread."""
    real.add("alpha")
    store = ObjectStoreHomeStore(s3_server.store(f"homes-{uuid.uuid4().hex[:12]}"))
    async with real.pool(store=store) as first:
        handle = await first.ensure("k", real.build)
        thread_id, _ = await complete_turn(handle.ws_url, real.work, "before the move")
        (handle.home / "marker.txt").write_text("moved")
        await first.shutdown("k")
    assert await store.version("k") is not None
    (real.root / "replica-2").mkdir()
    other = RealPool(real.root / "replica-2", real.backend, real.codex)
    other.add("beta")
    async with other.pool(store=store) as second:
        handle = await second.ensure("k", other.build)
        assert (handle.home / "marker.txt").read_text() == "moved"
        # The login is the new replica's account's, never one out of the archive.
        assert (handle.home / "auth.json").resolve() == (
            other.accounts.account_home("beta") / "auth.json"
        ).resolve()
        client = await AppServerClient.connect_ws(handle.ws_url)
        async with client:
            resumed = await client.thread_resume(thread_id)
            assert resumed.id == thread_id
