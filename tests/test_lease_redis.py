"""RedisLeaseBackend against a real redis-server on 127.0.0.1."""

from __future__ import annotations

import asyncio
import json
import socket
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from codex_supervisor import errors
from codex_supervisor.lease import (
    LeaseMode,
    LeaseRecord,
    RenewOutcome,
    _pid_start,
    acquire_lease,
)
from codex_supervisor.lease_redis import RedisLeaseBackend
from codex_supervisor.testing import RedisServer

pytestmark = pytest.mark.anyio

EXCLUSIVE, SHARED = LeaseMode.EXCLUSIVE, LeaseMode.SHARED


@pytest.fixture
async def backend(redis_server: RedisServer) -> AsyncIterator[RedisLeaseBackend]:
    """A backend of its own key prefix on the session's server."""
    leases = RedisLeaseBackend(redis_server.url, prefix=f"test-{uuid.uuid4().hex}:")
    yield leases
    await leases.aclose()


async def _raw(backend: RedisLeaseBackend, *command: str | int) -> object:
    return await asyncio.to_thread(backend._redis.execute_command, *command)


def _hash(backend: RedisLeaseBackend, name: str) -> str:
    return backend._keys(name)[0]


async def test_exclusive_excludes_and_shared_coexist(backend: RedisLeaseBackend) -> None:
    one = await backend.try_acquire("a", owner="one", mode=EXCLUSIVE, ttl=30)
    assert one is not None
    assert await backend.try_acquire("a", owner="two", mode=EXCLUSIVE, ttl=30) is None
    assert await backend.try_acquire("a", owner="two", mode=SHARED, ttl=30) is None
    await backend.release(one)
    first = await backend.try_acquire("a", owner="s1", mode=SHARED, ttl=30)
    second = await backend.try_acquire("a", owner="s2", mode=SHARED, ttl=30)
    assert first is not None
    assert second is not None
    assert await backend.try_acquire("a", owner="x", mode=EXCLUSIVE, ttl=30) is None
    assert [r.owner for r in await backend.holders("a")] == ["s1", "s2"]
    # One owner, one claim: a second acquire of a live owner is refused.
    assert await backend.try_acquire("a", owner="s1", mode=SHARED, ttl=30) is None


async def test_every_grant_takes_a_larger_fence(backend: RedisLeaseBackend) -> None:
    fences = []
    for owner in ("a1", "a2", "a3"):
        record = await backend.try_acquire("n", owner=owner, mode=EXCLUSIVE, ttl=30)
        assert record is not None
        fences.append(record.fence)
        await backend.release(record)
    shared = await backend.try_acquire("n", owner="s", mode=SHARED, ttl=0.05)
    assert shared is not None
    await asyncio.sleep(0.1)
    retaken = await backend.try_acquire("n", owner="s", mode=SHARED, ttl=30, replaces=shared)
    assert retaken is not None
    fences += [shared.fence, retaken.fence]
    assert fences == sorted(fences)
    assert len(set(fences)) == 5
    assert all(isinstance(f, int) for f in fences)


async def test_renew_and_release_act_only_on_the_callers_own_claim(
    backend: RedisLeaseBackend,
) -> None:
    old = await backend.try_acquire("c", owner="o", mode=SHARED, ttl=0.05)
    assert old is not None
    await asyncio.sleep(0.1)
    # The lapsed claim is taken again: a new record of the same owner.
    new = await backend.try_acquire("c", owner="o", mode=SHARED, ttl=30, replaces=old)
    assert new is not None
    assert new.acquired_at > old.acquired_at
    outcome, same = await backend.renew(old, 30)
    assert (outcome, same) == (RenewOutcome.LOST, old)
    await backend.release(old)  # not this claim: nothing happens
    assert await backend.holders("c") == [new]
    # A retake is refused once the record it names was replaced.
    assert await backend.try_acquire("c", owner="o", mode=SHARED, ttl=30, replaces=old) is None
    outcome, renewed = await backend.renew(new, 30, purpose="now this")
    assert outcome is RenewOutcome.OK
    assert renewed.expires_at >= new.expires_at
    assert renewed.purpose == "now this"
    assert renewed.fence == new.fence  # a renewal is no new grant
    await backend.release(new)
    await backend.release(new)  # idempotent
    assert await backend.records("c") == []


async def test_an_expired_claim_is_lost_and_taken_over(backend: RedisLeaseBackend) -> None:
    short = await backend.try_acquire("e", owner="gone", mode=EXCLUSIVE, ttl=0.05)
    assert short is not None
    await asyncio.sleep(0.1)
    assert await backend.holders("e") == []
    assert [r.owner for r in await backend.records("e")] == ["gone"]  # lapsed, still stored
    outcome, _ = await backend.renew(short, 30)
    assert outcome is RenewOutcome.LOST  # never resurrected
    # Its holder (this process, with no Lease open) is no claim: it is removed.
    taker = await backend.try_acquire("e", owner="taker", mode=EXCLUSIVE, ttl=30)
    assert taker is not None
    assert [r.owner for r in await backend.records("e")] == ["taker"]


async def _plant(backend: RedisLeaseBackend, name: str, **fields: object) -> None:
    """A lapsed record written as another process would have left it."""
    record = {
        "owner": "planted",
        "mode": "exclusive",
        "pid": 1,
        "host": "elsewhere",
        "acquired_ms": 1_000,
        "expires_ms": 2_000,
        "fence": 1,
        **fields,
    }
    await _raw(backend, "HSET", _hash(backend, name), str(record["owner"]), json.dumps(record))


async def test_a_lapsed_claim_whose_process_still_runs_here_is_kept(
    backend: RedisLeaseBackend,
) -> None:
    """A holder suspended past its TTL on this machine keeps its record; a dead one does not."""
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        start = _pid_start(sleeper.pid)
        await _plant(backend, "k", pid=sleeper.pid, host=socket.gethostname(), pid_start=start)
        assert await backend.try_acquire("k", owner="me", mode=EXCLUSIVE, ttl=30) is None
        assert [r.owner for r in await backend.records("k")] == ["planted"]
        # Shared beside a lapsed shared claim: allowed, and the claim stays.
        await _plant(backend, "s", pid=sleeper.pid, host=socket.gethostname(), pid_start=start,
                     mode="shared")  # fmt: skip
        mine = await backend.try_acquire("s", owner="me", mode=SHARED, ttl=30)
        assert mine is not None
        assert {r.owner for r in await backend.records("s")} == {"planted", "me"}
    finally:
        sleeper.kill()
        sleeper.wait()
    # Its process gone: the next acquire removes it.
    assert await backend.try_acquire("k", owner="me", mode=EXCLUSIVE, ttl=30) is not None
    assert [r.owner for r in await backend.records("k")] == ["me"]


async def test_a_lapsed_claim_of_another_machine_is_taken_over(
    backend: RedisLeaseBackend,
) -> None:
    await _plant(backend, "m", host="another-machine", pid_start="other-boot/1")
    record = await backend.try_acquire("m", owner="me", mode=EXCLUSIVE, ttl=30)
    assert record is not None
    assert [r.owner for r in await backend.records("m")] == ["me"]


async def test_junk_is_dropped_and_a_record_it_cannot_read_blocks(
    backend: RedisLeaseBackend,
) -> None:
    await _raw(backend, "HSET", _hash(backend, "j"), "junk", "not json {")
    assert await backend.try_acquire("j", owner="me", mode=EXCLUSIVE, ttl=30) is not None
    assert [r.owner for r in await backend.records("j")] == ["me"]
    # JSON without an expiry: perhaps a newer version's claim, so it blocks.
    await _raw(backend, "HSET", _hash(backend, "f"), "future", json.dumps({"v": 2}))
    assert await backend.try_acquire("f", owner="me", mode=SHARED, ttl=30) is None
    assert await backend.records("f") == []  # (and is no record to list)


async def test_contenders_never_hold_an_exclusive_lease_together(
    backend: RedisLeaseBackend,
) -> None:
    async def contend(owner: str) -> LeaseRecord | None:
        return await backend.try_acquire("x", owner=owner, mode=EXCLUSIVE, ttl=30)

    won = [r for r in await asyncio.gather(*(contend(f"c{i}") for i in range(40))) if r]
    assert len(won) == 1
    assert len(await backend.holders("x")) == 1


async def test_acquire_lease_heartbeat_and_describe_work_on_redis(
    backend: RedisLeaseBackend,
) -> None:
    async with acquire_lease(backend, "h", ttl=0.3, purpose="codex exec in /w") as lease:
        first = lease.record
        lease.describe("codex exec in /w, session s-1")
        for _ in range(3):
            renewed = lease.record.expires_at
            await _until(lambda: lease.record.expires_at > renewed)  # noqa: B023
        assert not lease.lost
        [stored] = await backend.holders("h")
        assert stored.purpose == "codex exec in /w, session s-1"
        assert stored.acquired_at == first.acquired_at
        assert stored.fence == first.fence
    assert await backend.records("h") == []


async def test_an_unreachable_server_is_a_lease_error_without_the_password() -> None:
    backend = RedisLeaseBackend(
        "redis://user:s3cret@127.0.0.1:1/0", prefix="x:", socket_timeout=1.0
    )
    with pytest.raises(errors.LeaseError) as caught:
        await backend.try_acquire("a", owner="o", mode=EXCLUSIVE, ttl=30)
    assert "s3cret" not in str(caught.value)
    assert "redis://user:***@127.0.0.1:1/0" in str(caught.value)
    record = LeaseRecord(
        name="a",
        owner="o",
        mode=EXCLUSIVE,
        pid=1,
        host="h",
        acquired_at=_epoch(),
        expires_at=_epoch() + timedelta(seconds=30),
    )
    outcome, same = await backend.renew(record, 30)
    assert (outcome, same) == (RenewOutcome.TRANSIENT, record)
    await backend.aclose()


def _epoch() -> datetime:
    return datetime(2026, 1, 1, tzinfo=UTC)


async def test_a_server_silent_past_the_ttl_loses_an_exclusive_lease_and_a_shared_one_returns() -> (
    None
):
    """The heartbeat's loss report, as with the file backend: exclusive is lost for good;
    shared is taken again once the server answers (it kept the lapsed record)."""
    with RedisServer() as server:
        backend = RedisLeaseBackend(server.url, prefix="gone:", socket_timeout=0.3)
        lost: list[str] = []
        async with (
            acquire_lease(
                backend, "ex", ttl=0.6, on_lost=lambda lease: lost.append(lease.name)
            ) as ex,
            acquire_lease(backend, "sh", ttl=0.6, mode=SHARED) as sh,
        ):
            server.pause()
            await _until(lambda: ex.lost)
            assert lost == ["ex"]
            await asyncio.sleep(0.7)  # the shared claim lapses on the server too
            server.resume()
            await _until(lambda: sh.reacquired > 0)
            assert not sh.lost
            assert [r.owner for r in await backend.holders("sh")] == [sh.owner]
        await backend.aclose()


async def _until(predicate: Callable[[], bool], limit: float = 30.0) -> None:
    deadline = asyncio.get_running_loop().time() + limit
    while not predicate():
        assert asyncio.get_running_loop().time() < deadline, "timed out"
        await asyncio.sleep(0.02)


def test_a_redis_url_is_checked() -> None:
    with pytest.raises(errors.ConfigError, match="starts with redis://"):
        RedisLeaseBackend("http://127.0.0.1:6379")


async def test_an_acquire_without_an_answer_is_undone_or_adopted(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A reply that never came: the server applied the acquire anyway. A failed attempt
    undoes it once the server answers; the same owner's next attempt adopts it."""
    with RedisServer() as server:
        backend = RedisLeaseBackend(server.url, prefix="lost:", socket_timeout=0.3)
        server.pause()
        with pytest.raises(errors.LeaseError):
            await backend.try_acquire("u", owner="me", mode=EXCLUSIVE, ttl=30)
        server.resume()
        await _until_async(lambda: backend.records("u"), [])  # undone in the background
        # Now with the undo failing too: the next attempt of the owner adopts the record.
        monkeypatch.setattr(RedisLeaseBackend, "_undo_later", lambda *_: None)
        server.pause()
        with pytest.raises(errors.LeaseError):
            await backend.try_acquire("a", owner="me", mode=EXCLUSIVE, ttl=30)
        server.resume()
        [left] = await _wait_for_records(backend, "a")
        adopted = await backend.try_acquire("a", owner="me", mode=EXCLUSIVE, ttl=30)
        assert adopted == left
        # Anyone else is refused, as the claim is live.
        assert await backend.try_acquire("a", owner="other", mode=EXCLUSIVE, ttl=30) is None
        await backend.aclose()


async def _until_async(read: Callable[[], Any], expected: object, limit: float = 30.0) -> None:
    deadline = asyncio.get_running_loop().time() + limit
    while (await read()) != expected:
        assert asyncio.get_running_loop().time() < deadline, "timed out"
        await asyncio.sleep(0.05)


async def _wait_for_records(backend: RedisLeaseBackend, name: str) -> list[LeaseRecord]:
    deadline = asyncio.get_running_loop().time() + 30
    while not (found := await backend.records(name)):
        assert asyncio.get_running_loop().time() < deadline, "timed out"
        await asyncio.sleep(0.05)
    return found


async def test_fences_keep_growing_when_the_counter_is_lost(backend: RedisLeaseBackend) -> None:
    first = await backend.try_acquire("g", owner="a", mode=EXCLUSIVE, ttl=30)
    assert first is not None
    assert first.fence is not None
    await backend.release(first)
    await _raw(backend, "DEL", backend._keys("g")[1])  # as a server restarted empty
    second = await backend.try_acquire("g", owner="b", mode=EXCLUSIVE, ttl=30)
    assert second is not None
    assert second.fence is not None
    assert second.fence > first.fence


async def test_the_hash_lives_past_every_holders_expiry(backend: RedisLeaseBackend) -> None:
    """A short-TTL write after a long-TTL one never shortens the key's life."""
    long = await backend.try_acquire("p", owner="long", mode=SHARED, ttl=3600)
    assert long is not None
    life = await _raw(backend, "PTTL", _hash(backend, "p"))
    short = await backend.try_acquire("p", owner="short", mode=SHARED, ttl=1)
    assert short is not None
    await backend.renew(short, 1)
    after = await _raw(backend, "PTTL", _hash(backend, "p"))
    assert isinstance(life, int)
    assert isinstance(after, int)
    assert after >= life - 1000  # (a second of slack for the time between the reads)
    assert after > 3600 * 1000


async def test_thousands_of_records_can_be_listed(backend: RedisLeaseBackend) -> None:
    fields: list[str | int] = []
    for index in range(5000):
        record = {"owner": f"o{index}", "mode": "shared", "pid": 1, "host": "h",
                  "acquired_ms": 1000, "expires_ms": 2000, "fence": index + 1}  # fmt: skip
        fields += [f"o{index}", json.dumps(record)]
    await _raw(backend, "HSET", _hash(backend, "big"), *fields)
    assert len(await backend.records("big")) == 5000


async def test_a_lapsed_record_it_cannot_read_blocks_without_an_error(
    backend: RedisLeaseBackend,
) -> None:
    await _plant(backend, "v2", mode="exclusive-v2")  # a newer version's mode
    assert await backend.try_acquire("v2", owner="me", mode=EXCLUSIVE, ttl=30) is None
    # A record whose owner is not its field: never taken for another's, no endless loop.
    record = {"owner": "someone", "mode": "exclusive", "pid": 1, "host": "elsewhere",
              "acquired_ms": 1000, "expires_ms": 2000, "fence": 1}  # fmt: skip
    await _raw(backend, "HSET", _hash(backend, "odd"), "field", json.dumps(record))
    assert await backend.try_acquire("odd", owner="me", mode=EXCLUSIVE, ttl=30) is None


def test_the_password_is_never_shown() -> None:
    for url in ("redis://user:s3cret@h:1/0", "redis://h:1/0?password=s3cret&db=1"):
        backend = RedisLeaseBackend(url)
        assert "s3cret" not in repr(backend)
    with pytest.raises(errors.ConfigError) as caught:
        RedisLeaseBackend("http://u:s3cret@h")
    assert "s3cret" not in str(caught.value)


async def test_a_site_keeps_shared_holders_to_one_site(redis_server: RedisServer) -> None:
    """With ``site``, shared claims coexist within the site and wait across sites."""
    prefix = f"test-{uuid.uuid4().hex}:"
    here = RedisLeaseBackend(redis_server.url, prefix=prefix, site="host-a:/pool")
    twin = RedisLeaseBackend(redis_server.url, prefix=prefix, site="host-a:/pool")
    there = RedisLeaseBackend(redis_server.url, prefix=prefix, site="host-b:/pool")
    anywhere = RedisLeaseBackend(redis_server.url, prefix=prefix)
    one = await here.try_acquire("acct", owner="one", mode=SHARED, ttl=30)
    assert one is not None
    assert one.site == "host-a:/pool"
    assert await twin.try_acquire("acct", owner="two", mode=SHARED, ttl=30) is not None
    assert await there.try_acquire("acct", owner="three", mode=SHARED, ttl=30) is None
    # A backend without a site shares as before, and its claims name none.
    free = await anywhere.try_acquire("other", owner="four", mode=SHARED, ttl=30)
    assert free is not None
    assert free.site is None
    assert await anywhere.try_acquire("other", owner="five", mode=SHARED, ttl=30) is not None
    for record in await here.holders("acct"):
        await here.release(record)
    assert await there.try_acquire("acct", owner="three", mode=SHARED, ttl=30) is not None
    for each in (here, twin, there, anywhere):
        await each.aclose()
