"""Logins that move between machines: the key, the sealed store, custody, holds (real Redis)."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import subprocess
import threading
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import redis

from codex_supervisor import AccountPool, AccountSelector, WaitUntil, errors
from codex_supervisor.credentials import CredentialCustody, CredentialKey, RedisCredentialStore
from codex_supervisor.lease import LeaseMode
from codex_supervisor.testing import FakeCodexBackend, RedisServer
from codex_supervisor.testing._tokens import write_auth_json

pytestmark = pytest.mark.anyio

KEY = CredentialKey(bytes(range(32)))


def _login(account_id: str, refresh: str, *, at: datetime) -> bytes:
    return json.dumps(
        {
            "auth_mode": "chatgpt",
            "OPENAI_API_KEY": None,
            "tokens": {
                "id_token": "id." + refresh,
                "access_token": "access." + refresh,
                "refresh_token": refresh,
                "account_id": account_id,
            },
            "last_refresh": at.isoformat().replace("+00:00", "Z"),
        }
    ).encode()


T0 = datetime(2026, 11, 1, tzinfo=UTC)


# -- the key ---------------------------------------------------------------------------------


def test_a_key_reads_as_base64_or_hex_and_hides_itself(tmp_path: Path) -> None:
    raw = os.urandom(32)
    for text in (base64.b64encode(raw).decode(), base64.urlsafe_b64encode(raw).decode().rstrip("="),
                 raw.hex(), f"  {raw.hex()}\n"):  # fmt: skip
        assert CredentialKey.from_text(text).secret == raw
    assert raw.hex() not in repr(CredentialKey(raw))
    with pytest.raises(errors.CredentialError, match="32 bytes"):
        CredentialKey.from_text("c2hvcnQ=")
    generated = CredentialKey.generate()
    assert len(CredentialKey.from_text(generated).secret) == 32
    path = tmp_path / "key"
    path.write_text(generated)
    path.chmod(0o644)
    with pytest.raises(errors.CredentialError, match="chmod 600"):
        CredentialKey.from_file(path)
    path.chmod(0o600)
    assert CredentialKey.from_env({"CODEX_SUPERVISOR_CREDENTIAL_KEY_FILE": str(path)}) == (
        CredentialKey.from_text(generated)
    )
    assert CredentialKey.from_env({}) is None
    with pytest.raises(errors.CredentialError, match="cannot read"):
        CredentialKey.from_file(tmp_path / "nope")


def test_a_sealed_login_opens_only_with_its_key_name_and_version() -> None:
    data = _login("id-a", "rt-secret", at=T0)
    blob = KEY.seal("alpha", 3, data)
    assert b"rt-secret" not in blob
    assert KEY.open("alpha", 3, blob) == data
    other = CredentialKey(bytes(32))
    for key, name, version in ((other, "alpha", 3), (KEY, "beta", 3), (KEY, "alpha", 2)):
        with pytest.raises(errors.CredentialError, match="does not open"):
            key.open(name, version, blob)
    assert "rt-secret" not in KEY.fingerprint(data)
    assert KEY.fingerprint(data) == KEY.fingerprint(data) != other.fingerprint(data)


# -- the store -------------------------------------------------------------------------------


@pytest.fixture
def store(redis_server: RedisServer) -> RedisCredentialStore:
    return RedisCredentialStore(redis_server.url, KEY, pool=uuid.uuid4().hex)


def test_push_is_compare_and_set_never_older_and_only_from_the_custody_site(
    store: RedisCredentialStore, redis_server: RedisServer
) -> None:
    first, newer, older = (_login("id-a", f"rt-{n}", at=T0 + timedelta(hours=h))
                           for n, h in ((1, 1), (2, 2), (0, 0)))  # fmt: skip
    assert store.push("alpha", first, site="a", expected=0) == (1, 1)
    assert store.push("alpha", newer, site="a", expected=0) == (2, 1)  # a stale version
    assert store.push("alpha", older, site="a", expected=1)[0] == 3  # never older over newer
    assert store.push("alpha", newer, site="b", expected=1) == (0, "a")  # not b's to push
    assert store.push("alpha", newer, site="a", expected=1) == (1, 2)
    assert store.push("alpha", newer, site="a", expected=2) == (1, 2)  # the same: nothing new
    stored = store.fetch("alpha")
    assert stored is not None
    assert (stored.version, stored.data, stored.site) == (2, newer, "a")
    # Encrypted at rest: no token in any value the server holds.
    with redis.Redis.from_url(redis_server.url) as client:
        for key in client.keys("*"):
            if client.type(key) == b"hash":
                assert all(b"rt-2" not in v and b"access." not in v
                           for v in client.hgetall(key).values())  # fmt: skip


def test_a_site_that_saw_a_change_it_never_pushed_holds_the_account_back(
    store: RedisCredentialStore,
) -> None:
    pushed, unpushed = _login("id-a", "rt-1", at=T0), _login("id-a", "rt-2", at=T0 + timedelta(1))
    store.push("alpha", pushed, site="a", expected=0)
    assert store.seen("alpha", "a", unpushed)
    assert not store.seen("alpha", "b", unpushed)  # only the custody site notes changes
    with pytest.raises(errors.CredentialsHeld) as held:
        store.take("alpha", "b", "dead-owner")
    assert held.value.site == "a"
    assert "never pushed" in str(held.value)
    assert "accounts unhold alpha" in str(held.value)
    assert set(store.holds(["alpha", "beta"])) == {"alpha"}
    with pytest.raises(errors.CredentialsHeld):  # the hold stays, even for its own site
        store.take("alpha", "a", "dead-owner")
    # Site a comes back and pushes what it saw: the hold is over, b takes the newest.
    assert store.push("alpha", unpushed, site="a", expected=1) == (1, 2)
    taken = store.take("alpha", "b", "dead-owner")
    assert taken is not None
    assert taken.data == unpushed


def test_unhold_takes_the_stored_login_and_a_fresh_login_lifts_a_hold(
    store: RedisCredentialStore,
) -> None:
    store.push("alpha", _login("id-a", "rt-1", at=T0), site="a", expected=0)
    store.seen("alpha", "a", _login("id-a", "rt-2", at=T0 + timedelta(1)))
    with pytest.raises(errors.CredentialsHeld):
        store.take("alpha", "b", "dead-owner")
    assert store.unhold("alpha")
    assert not store.unhold("alpha")
    assert store.take("alpha", "b", "dead-owner") is not None
    store.seen("alpha", "b", _login("id-a", "rt-3", at=T0 + timedelta(2)))
    with pytest.raises(errors.CredentialsHeld):
        store.take("alpha", "c", "dead-owner")
    fresh = _login("id-a", "rt-new", at=T0)  # a new login: older time, still taken
    assert store.publish("alpha", fresh, site="c") == 2
    taken = store.take("alpha", "c", "dead-owner")
    assert taken is not None
    assert taken.data == fresh


def test_an_unreachable_store_is_a_credential_error_without_the_password() -> None:
    store = RedisCredentialStore("redis://user:hunter2@127.0.0.1:1/0", KEY, socket_timeout=0.5)
    with pytest.raises(errors.CredentialError) as caught:
        store.fetch("alpha")
    assert "hunter2" not in str(caught.value)
    assert "hunter2" not in repr(store)
    with pytest.raises(errors.CredentialError, match="Redis URL"):
        RedisCredentialStore("http://127.0.0.1:1", KEY)


# -- two sites, one pool ---------------------------------------------------------------------


def _site(root: Path, backend: FakeCodexBackend, url: str, name: str) -> AccountPool:
    return AccountPool(
        root=root,
        base_codex_home=backend.write_codex_home(root.parent / f"{root.name}-home"),
        backend=url,
        pool_name=name,
        credential_key=KEY,
    )


@pytest.fixture
def sites(
    tmp_path: Path, backend: FakeCodexBackend, redis_server: RedisServer
) -> tuple[AccountPool, AccountPool]:
    name = uuid.uuid4().hex
    a = _site(tmp_path / "a", backend, redis_server.url, name)
    b = _site(tmp_path / "b", backend, redis_server.url, name)
    backend.add_account("id-alpha")
    a.import_auth("alpha", backend.write_auth(tmp_path / "login", "id-alpha"))
    return a, b


def _auth(pool: AccountPool) -> bytes:
    return (pool.account_home("alpha") / "auth.json").read_bytes()


def _refresh(pool: AccountPool, token: str, at: datetime) -> bytes:
    """What Codex does on a refresh: a new auth.json, newer last_refresh."""
    write_auth_json(pool.account_home("alpha"), id_token="i", access_token="x",
                    refresh_token=token, account_id="id-alpha", last_refresh=at)  # fmt: skip
    return _auth(pool)


async def _until(check: object, what: str) -> None:
    for _ in range(600):
        if check():  # type: ignore[operator]
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"never happened: {what}")


async def test_a_login_moves_to_the_other_site_and_every_change_comes_back(
    sites: tuple[AccountPool, AccountPool],
) -> None:
    a, b = sites
    imported = _auth(a)
    assert not b.account_home("alpha").exists()  # added on a: b has no folder yet
    async with b.occupy("alpha", purpose="run on b"):
        assert _auth(b) == imported
        assert (b.account_home("alpha") / "auth.json").stat().st_mode & 0o777 == 0o600
        refreshed = _refresh(b, "rt-b1", datetime.now(UTC) + timedelta(seconds=1))
        store = b.credentials
        assert store is not None
        await _until(lambda: store.fetch("alpha").data == refreshed, "b's refresh pushed")
        # a cannot occupy it meanwhile: a shared occupancy spans one site only.
        with pytest.raises(errors.AccountBusy) as busy:
            async with a.occupy("alpha", purpose="run on a"):
                pass
        assert busy.value.site == b.site
        # Nor can the lease itself be shared across sites, looked at or not.
        claim = a.leases.try_acquire(a.lease_name("alpha"), owner="a-1", mode=LeaseMode.SHARED,
                                     ttl=5)  # fmt: skip
        assert await claim is None
        selector = AccountSelector(a)
        choice = await selector.choose(probe=False)
        assert isinstance(choice, WaitUntil)
        assert f"alpha runs on {b.site}" in choice.reason
        final = _refresh(b, "rt-b2", datetime.now(UTC) + timedelta(seconds=2))
    assert store.fetch("alpha").data == final  # pushed at release at the latest
    async with a.occupy("alpha", purpose="run on a"):
        assert _auth(a) == final  # b's refreshed login, not a's older copy


async def test_two_runs_on_one_site_share_the_account(
    sites: tuple[AccountPool, AccountPool], tmp_path: Path
) -> None:
    a, _ = sites
    twin = AccountPool(root=a.root, base_codex_home=a.base_codex_home, backend=a.backend,
                       pool_name=a.pool_name, credential_key=KEY)  # fmt: skip
    async with a.occupy("alpha", purpose="one"), twin.occupy("alpha", purpose="two", timeout=2):
        assert len(await a.occupants("alpha")) == 2


async def test_a_newer_local_login_is_pushed_never_overwritten(
    sites: tuple[AccountPool, AccountPool],
) -> None:
    a, _ = sites
    store = a.credentials
    assert store is not None
    newer = _refresh(a, "rt-local", datetime.now(UTC) + timedelta(hours=1))
    async with a.occupy("alpha", purpose="run"):
        assert _auth(a) == newer
        assert store.fetch("alpha").data == newer  # type: ignore[union-attr]


async def test_a_dead_sites_unpushed_change_holds_the_account_until_it_is_pushed(
    sites: tuple[AccountPool, AccountPool],
) -> None:
    a, b = sites
    store = b.credentials
    assert store is not None
    async with b.occupy("alpha", purpose="run on b"):
        pass
    # b "dies" after Codex refreshed and b noted the change, before its push.
    unpushed = _refresh(b, "rt-unpushed", datetime.now(UTC) + timedelta(hours=1))
    store.seen("alpha", b.site, unpushed)
    with pytest.raises(errors.CredentialsHeld) as held:
        async with a.occupy("alpha", purpose="run on a"):
            pass
    assert held.value.site == b.site
    assert set(a.credential_holds(["alpha"])) == {"alpha"}  # a cannot lift it
    # b comes back: any choice of account there (a `status`) pushes it.
    assert b.credential_holds(["alpha"]) == {}
    async with a.occupy("alpha", purpose="run on a"):
        assert _auth(a) == unpushed


async def test_unhold_lets_the_shared_copy_go_on(sites: tuple[AccountPool, AccountPool]) -> None:
    a, b = sites
    store = b.credentials
    assert store is not None
    async with b.occupy("alpha", purpose="run on b"):
        pass
    store.seen("alpha", b.site, _login("id-alpha", "rt-lost", at=datetime.now(UTC) + timedelta(1)))
    assert set(a.credential_holds(["alpha"])) == {"alpha"}
    assert a.unhold("alpha")
    async with a.occupy("alpha", purpose="run on a"):
        assert _auth(a) == _auth(b)


async def test_a_probe_on_a_site_without_the_login_reads_the_shared_one(
    sites: tuple[AccountPool, AccountPool],
) -> None:
    a, b = sites
    creds = await b.usage_credentials("alpha")
    assert creds.account_id == "id-alpha"
    assert creds.access_token == json.loads(_auth(a))["tokens"]["access_token"]


def test_a_shared_pool_without_a_key_says_how_to_make_one(
    tmp_path: Path, redis_server: RedisServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("CODEX_SUPERVISOR_CREDENTIAL_KEY", raising=False)
    monkeypatch.delenv("CODEX_SUPERVISOR_CREDENTIAL_KEY_FILE", raising=False)
    with pytest.raises(errors.CredentialError, match="urandom"):
        AccountPool(root=tmp_path / "p", base_codex_home=tmp_path / "h", backend=redis_server.url)
    with pytest.raises(errors.ConfigError, match="Redis URL"):
        AccountPool(root=tmp_path / "p", base_codex_home=tmp_path / "h", backend="s3://x")
    pool = AccountPool.from_env(
        {
            "CODEX_SUPERVISOR_HOME": str(tmp_path / "p"),
            "CODEX_HOME": str(tmp_path / "h"),
            "CODEX_SUPERVISOR_BACKEND": redis_server.url,
            "CODEX_SUPERVISOR_CREDENTIAL_KEY": CredentialKey.generate(),
        }
    )
    assert pool.credentials is not None
    assert pool.backend == redis_server.url


# -- the review's cases ----------------------------------------------------------------------


async def test_a_site_that_never_gave_the_account_back_holds_it_until_it_vouches(
    sites: tuple[AccountPool, AccountPool],
) -> None:
    """A holder that died (or lost Redis) without its last push: the other site is held back
    until that site says its login is the newest (here: unchanged)."""
    a, b = sites
    store = b.credentials
    assert store is not None
    async with b.occupy("alpha", purpose="run on b"):
        pass
    store.take("alpha", b.site, "dead-owner")  # b takes it again ... and dies: never leaves
    assert set(a.credential_holds(["alpha"])) == {"alpha"}  # would be held: no surprise
    with pytest.raises(errors.CredentialsHeld, match="without giving the account back"):
        async with a.occupy("alpha", purpose="run on a"):
            pass
    assert b.credential_holds(["alpha"]) == {}  # b comes back: its login is the stored one
    async with a.occupy("alpha", purpose="run on a"):
        assert _auth(a) == _auth(b)


async def test_a_site_cut_off_from_redis_pushes_its_refresh_when_it_comes_back(
    sites: tuple[AccountPool, AccountPool],
) -> None:
    """Its Codex refreshed while nothing reached Redis (not even `seen`): the account is held,
    and the site's newer login is the one handed on once it is back."""
    a, b = sites
    store = b.credentials
    assert store is not None
    async with b.occupy("alpha", purpose="run on b"):
        pass
    store.take("alpha", b.site, "dead-owner")
    newer = _refresh(b, "rt-offline", datetime.now(UTC) + timedelta(hours=1))
    with pytest.raises(errors.CredentialsHeld):
        async with a.occupy("alpha", purpose="run on a"):
            pass
    assert b.credential_holds(["alpha"]) == {}
    async with a.occupy("alpha", purpose="run on a"):
        assert _auth(a) == newer


async def test_a_change_not_newer_by_last_refresh_is_never_lost(
    sites: tuple[AccountPool, AccountPool],
) -> None:
    """Clocks apart: the custody site's own change looks older. Not pushed over the store,
    so other sites are held back, and the file stays where Codex wrote it."""
    a, b = sites
    store = b.credentials
    assert store is not None
    async with b.occupy("alpha", purpose="run on b"):
        skewed = _refresh(b, "rt-skewed", datetime.now(UTC) - timedelta(days=3))
        await _until(lambda: not store.holds(["alpha"]) and _unpushed(store, b), "seen noted")
    assert _auth(b) == skewed
    with pytest.raises(errors.CredentialsHeld, match="never pushed"):
        async with a.occupy("alpha", purpose="run on a"):
            pass


def _unpushed(store: RedisCredentialStore, site: AccountPool) -> bool:
    seen, fp = store._redis.hmget(store._key("alpha"), "seen", "fp")
    return bool(seen != fp)


async def test_a_local_login_neither_older_nor_newer_is_kept_aside_before_it_is_replaced(
    sites: tuple[AccountPool, AccountPool],
) -> None:
    a, b = sites
    async with b.occupy("alpha", purpose="run on b"):
        pass
    # An API-key style login: no last_refresh, so neither provably older nor newer.
    odd = b"{}"
    (b.account_home("alpha") / "auth.json").write_bytes(odd)
    shared = _auth(a)
    async with b.occupy("alpha", purpose="run on b"):
        assert _auth(b) == shared  # the store's wins, never the unknown one pushed
    [kept] = (b.account_home("alpha").parent / "kept").iterdir()
    assert kept.read_bytes() == odd
    assert kept.stat().st_mode & 0o777 == 0o600
    assert b.credentials is not None
    assert b.credentials.fetch("alpha").data == shared  # type: ignore[union-attr]


async def test_a_shared_login_of_another_account_is_refused(
    sites: tuple[AccountPool, AccountPool], backend: FakeCodexBackend, tmp_path: Path
) -> None:
    a, b = sites
    backend.add_account("id-other")
    other = backend.write_auth(tmp_path / "other", "id-other").read_bytes()
    assert a.credentials is not None
    a.credentials.publish("alpha", other, site=a.site)
    with pytest.raises(errors.CredentialsHeld, match="another account"):
        async with b.occupy("alpha", purpose="run on b"):
            pass
    assert not (b.account_home("alpha") / "auth.json").exists()


async def test_a_removed_account_leaves_no_record_and_loses_no_login(
    sites: tuple[AccountPool, AccountPool],
) -> None:
    a, b = sites
    async with b.occupy("alpha", purpose="run on b"):
        newest = _refresh(b, "rt-b", datetime.now(UTC) + timedelta(hours=1))
    aside = a.remove("alpha")
    assert a.credentials is not None
    assert a.credentials.fetch("alpha") is None
    assert (aside / "kept" / "auth-from-the-shared-store.json").read_bytes() == newest


async def test_a_cancelled_take_gives_the_custody_back_once_it_is_done(
    sites: tuple[AccountPool, AccountPool],
) -> None:
    """The take runs in a thread: cancelled while it runs, it is waited for, then left."""
    from codex_supervisor.accounts import _finished

    a, _ = sites
    store = a.credentials
    assert store is not None
    custody = a._custody("alpha", None)
    gate, done = threading.Event(), threading.Event()

    def slow_take() -> None:
        gate.wait(10)
        try:
            custody.take()
        finally:
            done.set()

    task = asyncio.ensure_future(_finished(asyncio.to_thread(slow_take), custody))
    await asyncio.sleep(0.05)
    task.cancel()
    await asyncio.sleep(0.05)
    gate.set()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert await asyncio.to_thread(done.wait, 10)
    assert not custody.taken
    assert store.users("alpha") == set()


async def test_a_run_chooses_another_account_when_a_shared_login_cannot_be_used(
    tmp_path: Path, backend: FakeCodexBackend, redis_server: RedisServer
) -> None:
    """alpha's record does not open with the key (changed by hand): the run goes on beta."""
    from codex_supervisor.supervisor import Supervisor, SupervisorConfig
    from codex_supervisor.testing import install_simulator

    pool = _site(tmp_path / "a", backend, redis_server.url, uuid.uuid4().hex)
    for name, used in (("alpha", 10), ("beta", 50)):
        backend.add_account(f"id-{name}", five_hour_used=used)
        pool.import_auth(name, backend.write_auth(tmp_path / f"login-{name}", f"id-{name}"))
    store = pool.credentials
    assert store is not None
    store._redis.hset(store._key("alpha"), "blob", b"\0" * 40)
    (tmp_path / "work").mkdir()
    config = SupervisorConfig(codex=str(install_simulator(tmp_path / "bin")), poll_interval=0.05)
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), **backend.codex_env()}
    result = await Supervisor(pool, config=config, environ=env).run(
        ["exec", "--skip-git-repo-check", "hello"], cwd=tmp_path / "work"
    )
    assert result.exit_code == 0
    assert [r.account_id for r in backend.responses_requests()] == ["id-beta"]


async def test_leaving_never_hangs_when_the_pusher_is_cancelled_as_it_wakes(
    sites: tuple[AccountPool, AccountPool],
) -> None:
    """A cancel that meets the pusher's wake-up (a write seen just as the occupancy ends)
    must still end it: one swallowed there kept the occupancy from ever ending."""
    a, _ = sites
    for index in range(150):
        async with a.occupy("alpha", purpose="churn"):
            _refresh(a, f"rt-{index}", datetime.now(UTC) + timedelta(seconds=index + 1))
            await asyncio.sleep(0.001 * (index % 7))


async def test_a_site_back_settles_what_it_left_but_not_while_a_stray_codex_runs_there(
    sites: tuple[AccountPool, AccountPool],
) -> None:
    """Its supervisor died, its Codex ran on: no vouching for the login until it is gone."""
    a, b = sites
    store = b.credentials
    assert store is not None
    async with b.occupy("alpha", purpose="run on b"):
        pass
    store.take("alpha", b.site, "dead-owner")  # ... and its supervisor is SIGKILLed
    env = {"PATH": "/usr/bin:/bin", "CODEX_HOME": str(b.account_home("alpha"))}
    stray = subprocess.Popen(["sleep", "60"], env=env)  # its Codex, orphaned
    try:
        assert b.credential_holds(["alpha"]) == {}
        assert store.unsettled(["alpha"], b.site) == ["alpha"]  # not settled meanwhile
        assert set(a.credential_holds(["alpha"])) == {"alpha"}
    finally:
        stray.kill()
        stray.wait()
    assert b.credential_holds(["alpha"]) == {}  # b's next look settles it
    assert store.unsettled(["alpha"], b.site) == []
    async with a.occupy("alpha", purpose="run on a"):
        assert _auth(a) == _auth(b)


async def test_this_sites_own_unpushed_change_is_never_overwritten_by_its_next_run(
    sites: tuple[AccountPool, AccountPool],
) -> None:
    """Clocks apart: the change was refused as not newer. The next run here keeps it (the
    live login), never the spent shared one."""
    _, b = sites
    store = b.credentials
    assert store is not None
    async with b.occupy("alpha", purpose="run on b"):
        skewed = _refresh(b, "rt-skewed", datetime.now(UTC) - timedelta(days=3))
        await _until(lambda: _unpushed(store, b), "the change noted")
    async with b.occupy("alpha", purpose="run on b again"):
        assert _auth(b) == skewed
    assert not (b.account_home("alpha").parent / "kept").exists()


async def test_users_are_lease_owners_two_runs_of_a_site_leave_none_behind(
    sites: tuple[AccountPool, AccountPool],
) -> None:
    a, b = sites
    store = b.credentials
    assert store is not None
    twin = AccountPool(root=b.root, base_codex_home=b.base_codex_home, backend=b.backend,
                       pool_name=b.pool_name, credential_key=KEY)  # fmt: skip
    async with b.occupy("alpha", purpose="one") as one, twin.occupy("alpha", purpose="two") as two:
        assert store.users("alpha") == {one.owner, two.owner}
        # A settle from this site (a `status`) drops only users whose lease is gone.
        store.take("alpha", b.site, "dead-owner")
        assert b._custody("alpha", None).settle()
        assert store.users("alpha") == {one.owner, two.owner}
    assert store.users("alpha") == set()
    async with a.occupy("alpha", purpose="run on a"):  # no hold: both left cleanly
        pass


async def test_a_stray_codex_of_a_spawn_home_linking_the_login_is_seen(
    sites: tuple[AccountPool, AccountPool], tmp_path: Path
) -> None:
    _, b = sites
    async with b.occupy("alpha", purpose="run on b"):
        pass
    spawn_home = tmp_path / "spawn-home"
    spawn_home.mkdir()
    (spawn_home / "auth.json").symlink_to(b.account_home("alpha") / "auth.json")
    custody = b._custody("alpha", None)
    assert custody.stray() is None
    env = {"PATH": "/usr/bin:/bin", "CODEX_HOME": str(spawn_home)}
    stray = subprocess.Popen(["sleep", "60"], env=env)
    try:
        await _until(lambda: custody.stray() is not None, "the stray seen")
        assert f"pid {stray.pid}" in (custody.stray() or "")
    finally:
        stray.kill()
        stray.wait()


async def test_a_file_error_at_the_last_push_never_escapes_the_occupancy(
    sites: tuple[AccountPool, AccountPool],
) -> None:
    _, b = sites
    assert b.credentials is not None

    class Broken(CredentialCustody):
        def _sync_now(self) -> None:
            raise PermissionError("kept/ is not writable")

    custody = Broken(b.credentials, "alpha", b.account_home("alpha"), b.site)
    async with custody.keep_pushed():
        pass  # no exception: logged, and the account stays held for other sites
