"""The pool state's stores: the file store, and the Redis store against a real redis-server."""

from __future__ import annotations

import threading
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from codex_supervisor import AccountPool, WindowKind, errors
from codex_supervisor.lease_redis import RedisLeaseBackend
from codex_supervisor.state_store import FileStateStore, RedisStateStore, StateStore
from codex_supervisor.testing import FakeCodexBackend, RedisServer


@pytest.fixture
def store(redis_server: RedisServer) -> RedisStateStore:
    """A store of its own pool name on the session's server."""
    return RedisStateStore(redis_server.url, pool=uuid.uuid4().hex, lock_timeout=2.0)


def test_both_stores_keep_the_document_its_backup_and_a_changing_token(
    tmp_path: Path, store: RedisStateStore
) -> None:
    for each in (FileStateStore(tmp_path / "pool"), store):
        assert isinstance(each, StateStore)
        assert each.read() is None
        assert each.token() is None
        assert each.backup() is None
        with each.locked():
            each.write(b'{"version": 1}\n')
        first = each.token()
        assert first is not None
        with each.locked():
            each.write(b'{"version": 2}\n')
        assert each.read() == b'{"version": 2}\n'
        assert each.token() != first
        assert each.backup() is not None


def test_the_redis_lock_keeps_read_change_write_whole_across_threads(
    store: RedisStateStore,
) -> None:
    with store.locked():
        store.write(b"0")

    def bump() -> None:
        for _ in range(25):
            with store.locked():
                value = int(store.read() or b"0")
                store.write(str(value + 1).encode())

    workers = [threading.Thread(target=bump) for _ in range(4)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    assert store.read() == b"100"  # no lost update


def test_a_held_lock_times_out_and_a_dead_holders_lock_frees_itself(
    redis_server: RedisServer,
) -> None:
    pool = uuid.uuid4().hex
    holder = RedisStateStore(redis_server.url, pool=pool, lock_ttl=0.5)
    waiter = RedisStateStore(redis_server.url, pool=pool, lock_timeout=0.2)
    lock = holder.locked()
    lock.__enter__()  # taken, and never given back: as by a holder that died
    with pytest.raises(errors.LeaseTimeout), waiter.locked():
        pass
    patient = RedisStateStore(redis_server.url, pool=pool, lock_timeout=5.0)
    with patient.locked():  # taken once the dead holder's lock_ttl passed
        patient.write(b"mine")
    lock.__exit__(None, None, None)  # a late give-back: not its lock any more, so nothing
    assert patient.read() == b"mine"
    with patient.locked():
        pass


def _pool_on(root: Path, backend: FakeCodexBackend, url: str, name: str) -> AccountPool:
    return AccountPool(
        root=root,
        base_codex_home=backend.write_codex_home(root.parent / f"{root.name}-home"),
        state=RedisStateStore(url, pool=name),
        leases=RedisLeaseBackend(url, prefix=f"{name}:"),
    )


def test_two_pool_roots_share_one_state_in_redis_with_its_merge_rules(
    tmp_path: Path, backend: FakeCodexBackend, redis_server: RedisServer
) -> None:
    """Two hosts (two roots) on one Redis: what one records, the other reads; a block is
    never shortened by the other's write."""
    name = uuid.uuid4().hex
    host_a = _pool_on(tmp_path / "a", backend, redis_server.url, name)
    host_b = _pool_on(tmp_path / "b", backend, redis_server.url, name)
    backend.add_account("id-alpha")
    host_a.import_auth("alpha", backend.write_auth(tmp_path / "login", "id-alpha"))
    assert [a.name for a in host_b.accounts()] == ["alpha"]
    now = datetime.now(UTC)
    later, sooner = now + timedelta(hours=5), now + timedelta(hours=1)
    host_a.set_cooldown("alpha", window=WindowKind.FIVE_HOUR, blocked_until=later, reason="a")
    kept = host_b.set_cooldown(
        "alpha", window=WindowKind.FIVE_HOUR, blocked_until=sooner, reason="b"
    )
    assert kept.blocked_until == later  # never shortened
    assert host_a.get("alpha").blocked_until(now) == later
    token = host_a.state_token()
    host_b.clear_cooldowns("alpha")
    assert host_a.state_token() != token  # the other host's write is seen
    assert host_a.get("alpha").blocked_until(now) is None


def test_a_corrupt_document_is_named_and_left_alone(tmp_path: Path, store: RedisStateStore) -> None:
    with store.locked():
        store.write(b"{not json")
    pool = AccountPool(root=tmp_path / "pool", base_codex_home=tmp_path / "home", state=store)
    with pytest.raises(errors.StateError) as caught:
        pool.accounts()
    assert "is corrupt (not valid JSON); left untouched" in str(caught.value)
    assert store.where in str(caught.value)
    assert store.read() == b"{not json"


def test_an_unreachable_redis_is_a_state_error_without_the_password() -> None:
    store = RedisStateStore("redis://u:s3cret@127.0.0.1:1/0", socket_timeout=0.5)
    with pytest.raises(errors.StateError) as caught:
        store.read()
    assert "s3cret" not in str(caught.value)
    assert "s3cret" not in repr(store)


def test_a_holder_that_stalled_past_the_lock_ttl_cannot_overwrite_the_next_one(
    redis_server: RedisServer,
) -> None:
    pool = uuid.uuid4().hex
    slow = RedisStateStore(redis_server.url, pool=pool, lock_ttl=0.2)
    quick = RedisStateStore(redis_server.url, pool=pool, lock_timeout=5.0)
    with slow.locked():
        with quick.locked():  # the slow holder's lock expired meanwhile
            quick.write(b"quick")
        with pytest.raises(errors.StateError, match="expired before the write"):
            slow.write(b"slow")
    assert quick.read() == b"quick"
    with pytest.raises(errors.StateError, match="needs the lock"):
        quick.write(b"outside")


def test_the_pools_lock_timeout_is_read_when_the_lock_is_taken(
    tmp_path: Path, backend: FakeCodexBackend
) -> None:
    """Made with lock_timeout 0, then given 30: the pool waits for a lock let go soon."""
    pool = AccountPool(root=tmp_path / "pool", base_codex_home=tmp_path / "home", lock_timeout=0)
    backend.add_account("id-alpha")
    pool.import_auth("alpha", backend.write_auth(tmp_path / "login", "id-alpha"))
    pool.lock_timeout = 30.0
    other = FileStateStore(tmp_path / "pool").locked()
    other.__enter__()
    letting_go = threading.Timer(0.3, other.__exit__, args=(None, None, None))
    letting_go.start()
    try:
        kept = pool.set_cooldown(
            "alpha",
            window=WindowKind.FIVE_HOUR,
            blocked_until=datetime.now(UTC) + timedelta(hours=1),
            reason="r",
        )
    finally:
        letting_go.join()
    assert kept.reason == "r"


def test_bad_redis_settings_are_config_or_state_errors(redis_server: RedisServer) -> None:
    with pytest.raises(errors.ConfigError, match="bad Redis URL"):
        RedisStateStore("redis://127.0.0.1:notaport/0")
    with pytest.raises(errors.ConfigError, match="decode_responses"):
        RedisStateStore(f"{redis_server.url}?decode_responses=True")
    store = RedisStateStore(redis_server.url, pool=uuid.uuid4().hex)
    store._redis.set(store._key("state-version"), b"twelve")
    with pytest.raises(errors.StateError, match="is no number"):
        store.token()
