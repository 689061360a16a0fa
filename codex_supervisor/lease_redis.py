"""Leases in Redis, for a pool shared by several machines (``codex-supervisor[redis]``).

:class:`RedisLeaseBackend` implements :class:`~codex_supervisor.lease.LeaseBackend`
with the same rules as the file backend, so :func:`~codex_supervisor.lease.acquire_lease`,
the heartbeat, loss reporting and shared retakes work unchanged:

* every read-modify-write of a name is one server-side Lua script, so it is
  atomic without a lock: acquire (with expiry), renew and release act only
  on the caller's own claim (its owner *and* its grant time);
* time is the Redis server's (``TIME``), never a machine's own clock, so
  machines whose clocks disagree still agree on who holds what;
* every grant — a retake included — takes the next value of the name's
  counter as the record's :attr:`~codex_supervisor.lease.LeaseRecord.fence`,
  a fencing token that only grows;
* a lapsed record is removed by the next acquire only when its holder is
  known to be gone (:func:`~codex_supervisor.lease.claim_alive`: a process of
  this machine that no longer runs, or a holder on another machine, which
  cannot be asked). Such records are sent back to the client, judged there
  (``/proc`` is not the server's to read) and the acquire is run again with
  the verdicts: one round trip when nothing has lapsed.

Keys, under ``prefix`` (default ``codex-supervisor:``): ``lease:{name}``, a
hash of owner to record (JSON with times in server milliseconds), and
``fence:{name}``, the counter (``{name}`` is a hash tag: one Cluster slot). A
hash lives a day past the latest expiry written to it, so names nobody uses
any more go away by themselves; the counter stays, and is seeded from the
server's clock, so fences keep growing even across a server that restarted
empty.

Every call runs the synchronous client in a worker thread: one connection
pool for every event loop (the library runs some calls under their own
``asyncio.run``). A holder suspended for longer than a day past its TTL loses
its record with the hash (the file backend would keep it).
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import secrets
import socket
import threading
from datetime import UTC, datetime
from typing import Any, Final, final

import attrs

from . import errors
from ._redis import connect, masked_url
from .lease import (
    LeaseMode,
    LeaseRecord,
    RenewOutcome,
    _check_acquire,
    _check_id,
    _check_ttl,
    _pid_start,
    claim_alive,
)

__all__ = ["RedisLeaseBackend", "masked_url"]

logger = logging.getLogger(__name__)

#: How long a name's hash outlives its last write (milliseconds).
_IDLE_KEEP_MS: Final = 24 * 3600 * 1000

_NOW: Final = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
"""

# Keep a name's hash at least `keep` past the latest expiry written to it: its
# life only ever grows, so no holder's record can vanish with the key.
_KEEP: Final = """
local function keep(key, expires_ms, keep_ms)
  local want = expires_ms - now + keep_ms
  local left = redis.call('PTTL', key)
  if left < want then redis.call('PEXPIRE', key, want) end
end
"""

# KEYS: hash, counter. ARGV: owner, mode, ttl_ms, pid, host, purpose, has_purpose,
# pid_start ('' none), replaces_acquired_ms ('' none), dead fields (JSON list), alive
# fields (JSON list), keep_ms, attempt token, adoptable token ('' none), site ('' none:
# shared holders anywhere).
# Returns {1, record} granted (or adopted); {0, why} refused; {2, {field, record, ...}}
# lapsed records to judge.
_ACQUIRE: Final = (
    _NOW
    + _KEEP
    + """
local owner, mode, ttl = ARGV[1], ARGV[2], tonumber(ARGV[3])
local replaces, adopt, site = ARGV[9], ARGV[14], ARGV[15]
local dead, alive = {}, {}
for _, o in ipairs(cjson.decode(ARGV[10])) do dead[o] = true end
for _, o in ipairs(cjson.decode(ARGV[11])) do alive[o] = true end
local mine = redis.call('HGET', KEYS[1], owner)
if mine then
  local ok, rec = pcall(cjson.decode, mine)
  -- An earlier attempt of this caller that was applied although its reply was lost.
  if adopt ~= '' and ok and type(rec) == 'table' and rec.attempt == adopt
      and type(rec.expires_ms) == 'number' and rec.expires_ms > now then
    return {1, mine}
  end
end
if replaces ~= '' then
  if not mine then return {0, 'its record is gone'} end
  local ok, rec = pcall(cjson.decode, mine)
  if not ok or type(rec) ~= 'table' or rec.acquired_ms ~= tonumber(replaces) then
    return {0, 'its record was replaced'}
  end
end
local all = redis.call('HGETALL', KEYS[1])
local blocked, unjudged = nil, {}
for i = 1, #all, 2 do
  local o, raw = all[i], all[i + 1]
  local ok, rec = pcall(cjson.decode, raw)
  if not ok or type(rec) ~= 'table' then
    -- Not JSON: only whole values are ever written, so no writer made this.
    redis.call('HDEL', KEYS[1], o)
  elseif type(rec.expires_ms) ~= 'number' then
    blocked = blocked or ('an unreadable record of ' .. o)  -- perhaps a newer version's claim
  elseif o == owner then
    if replaces == '' and rec.expires_ms > now then blocked = blocked or 'held by this owner' end
  elseif rec.expires_ms <= now and dead[o] then
    redis.call('HDEL', KEYS[1], o)
  elseif rec.expires_ms <= now and not alive[o] then
    table.insert(unjudged, o)
    table.insert(unjudged, raw)
  elseif not (rec.mode == 'shared' and mode == 'shared') then
    blocked = blocked or ('held by ' .. o)
  elseif site ~= '' and (rec.site or '') ~= site then
    blocked = blocked or ('held by ' .. o .. ' on site ' .. (rec.site or '?'))
  end
end
if #unjudged > 0 then return {2, unjudged} end
if blocked then return {0, blocked} end
-- The fence only grows: seeded from the server's clock, it survives the
-- counter's loss (a server that restarted empty) as long as that clock does.
local fence = redis.call('INCR', KEYS[2])
if fence <= now then
  fence = now + 1
  redis.call('SET', KEYS[2], fence)
end
local rec = {
  owner = owner, mode = mode, pid = tonumber(ARGV[4]), host = ARGV[5],
  acquired_ms = now, expires_ms = now + ttl, fence = fence, attempt = ARGV[13],
}
if ARGV[7] == '1' then rec.purpose = ARGV[6] end
if ARGV[8] ~= '' then rec.pid_start = ARGV[8] end
if site ~= '' then rec.site = site end
local value = cjson.encode(rec)
redis.call('HSET', KEYS[1], owner, value)
keep(KEYS[1], now + ttl, tonumber(ARGV[12]))
return {1, value}
"""
)

# KEYS: hash. ARGV: owner, acquired_ms, ttl_ms, purpose, has_purpose, keep_ms.
# Returns {1, record} renewed; {0, why} lost.
_RENEW: Final = (
    _NOW
    + _KEEP
    + """
local raw = redis.call('HGET', KEYS[1], ARGV[1])
if not raw then return {0, 'record is gone'} end
local ok, rec = pcall(cjson.decode, raw)
if not ok or type(rec) ~= 'table' or type(rec.expires_ms) ~= 'number' then
  return {0, 'record is unreadable'}
end
if rec.acquired_ms ~= tonumber(ARGV[2]) then return {0, 'record was replaced'} end
if rec.expires_ms <= now then return {0, 'record expired'} end
local ttl = tonumber(ARGV[3])
rec.expires_ms = now + ttl
if ARGV[5] == '1' then rec.purpose = ARGV[4] end
local value = cjson.encode(rec)
redis.call('HSET', KEYS[1], ARGV[1], value)
keep(KEYS[1], now + ttl, tonumber(ARGV[6]))
return {1, value}
"""
)

# KEYS: hash. ARGV: owner, field ('acquired_ms' or 'attempt'), value.
# Drops the owner's record when that field still has that value; 1 if it did.
_RELEASE: Final = """
local raw = redis.call('HGET', KEYS[1], ARGV[1])
if not raw then return 0 end
local ok, rec = pcall(cjson.decode, raw)
if not ok or type(rec) ~= 'table' then return 0 end
local same
if ARGV[2] == 'attempt' then same = rec.attempt == ARGV[3]
else same = rec.acquired_ms == tonumber(ARGV[3]) end
if not same then return 0 end
redis.call('HDEL', KEYS[1], ARGV[1])
return 1
"""

# KEYS: hash. Returns {now_ms, {owner, record, owner, record, ...}}.
_READ: Final = _NOW + "return {now, redis.call('HGETALL', KEYS[1])}"


def _millis(when: datetime) -> int:
    return round(when.timestamp() * 1000)


def _from_millis(ms: float) -> datetime:
    return datetime.fromtimestamp(ms / 1000, UTC)


def _text(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


_masked = masked_url


@final
@attrs.define
class RedisLeaseBackend:
    """Lease records in Redis at ``url`` (``redis://host:6379/0``, ``rediss://`` for TLS).

    See the module notes. Redis being unreachable makes an acquire, a release
    or a listing raise :class:`~codex_supervisor.errors.LeaseError` and a
    renewal answer TRANSIENT (the heartbeat retries, and reports the lease
    lost once its TTL has passed without one), as a full disk does for the
    file backend. Needs Redis 5 or newer (scripts that read ``TIME``).

    An acquire whose reply never came (a timeout, a cancelled caller) may
    still have been applied: each attempt carries a token in its record, the
    next attempt of the same owner adopts such a record instead of being
    refused by it, and a failed or cancelled acquire undoes it when the server
    answers (best effort, in the background).

    Calls run the synchronous client in a worker thread: one connection pool
    serves every event loop, so no connection outlives the loop it was made in.
    """

    url: str = attrs.field(repr=_masked)
    prefix: str = attrs.field(default="codex-supervisor:", kw_only=True)
    socket_timeout: float = attrs.field(default=5.0, kw_only=True)
    #: When set, shared holders must all be of this one site (a machine and its
    #: pool folder): a shared claim from another site waits like an exclusive
    #: one. An account's occupancy spans machines this way: its login is used
    #: at one site at a time.
    site: str | None = attrs.field(default=None, kw_only=True)
    _redis: Any = attrs.field(default=None, init=False, repr=False)
    # The token of an owner's last acquire whose outcome is unknown: adoptable.
    _unsure: dict[tuple[str, str], str] = attrs.field(factory=dict, init=False, repr=False)

    def __attrs_post_init__(self) -> None:
        self._redis = connect(
            self.url,
            socket_timeout=self.socket_timeout,
            who="RedisLeaseBackend",
            error=errors.ConfigError,
        )

    # -- the protocol --------------------------------------------------------

    async def try_acquire(
        self,
        name: str,
        *,
        owner: str,
        mode: LeaseMode,
        ttl: float,
        purpose: str | None = None,
        replaces: LeaseRecord | None = None,
    ) -> LeaseRecord | None:
        """Claim ``name`` for ``owner`` now, or None if it is held incompatibly (see the module)."""
        mode = _check_acquire(name, owner, mode, ttl, replaces)
        attempt = secrets.token_hex(8)
        adopt = self._unsure.pop((name, owner), "")
        self._unsure[(name, owner)] = attempt  # until its answer is known
        try:
            record = await self._acquire(name, owner, mode, ttl, purpose, replaces, attempt, adopt)
        except BaseException:
            # Applied or not, nobody will use it: undo it once the server answers.
            self._undo_later(name, owner, attempt)
            raise
        self._unsure.pop((name, owner), None)
        return record

    async def _acquire(  # noqa: PLR0917 - the acquire's own arguments
        self,
        name: str,
        owner: str,
        mode: LeaseMode,
        ttl: float,
        purpose: str | None,
        replaces: LeaseRecord | None,
        attempt: str,
        adopt: str,
    ) -> LeaseRecord | None:
        pid = os.getpid()
        dead: list[str] = []
        alive: list[str] = []
        for _ in range(8):  # each pass judges the lapsed records the last one found
            answer = await self._script(
                _ACQUIRE,
                name,
                owner,
                mode.value,
                _ttl_ms(ttl),
                pid,
                socket.gethostname(),
                purpose or "",
                "0" if purpose is None else "1",
                _pid_start(pid) or "",
                "" if replaces is None else str(_millis(replaces.acquired_at)),
                json.dumps(dead),
                json.dumps(alive),
                _IDLE_KEEP_MS,
                attempt,
                adopt,
                self.site or "",
                what=f"acquire lease {name!r}",
            )
            status, payload = int(answer[0]), answer[1]
            if status == 1:
                record = self._record(name, _text(payload))
                logger.debug("lease.record_written name=%s owner=%s fence=%s", name, owner,
                             record.fence)  # fmt: skip
                return record
            if status == 0:
                logger.debug("lease.acquire_refused name=%s owner=%s why=%s", name, owner,
                             _text(payload))  # fmt: skip
                return None
            for index in range(0, len(payload) - 1, 2):
                field = _text(payload[index])
                try:
                    lapsed = self._record(name, _text(payload[index + 1]))
                except errors.StateError as exc:
                    # Not ours to read (a newer version's?): it keeps its claim.
                    logger.warning("lease.unreadable name=%s owner=%s: %s", name, field, exc)
                    alive.append(field)
                    continue
                if lapsed.owner == field and not claim_alive(lapsed):
                    dead.append(field)
                    logger.info(
                        "lease.expired_removed name=%s owner=%s pid=%s host=%s expired_at=%s",
                        name,
                        field,
                        lapsed.pid,
                        lapsed.host,
                        lapsed.expires_at.isoformat(),
                    )
                else:
                    alive.append(field)
        raise errors.LeaseError(f"cannot acquire lease {name!r}: its records keep lapsing")

    def _undo_later(self, name: str, owner: str, attempt: str) -> None:
        def undo() -> None:
            try:
                self._call(_RELEASE, self._keys(name)[:1], owner, "attempt", attempt)
            except Exception:  # best effort; the next attempt of the owner adopts it
                logger.debug("lease.undo_failed name=%s owner=%s", name, owner, exc_info=True)
            else:
                if self._unsure.get((name, owner)) == attempt:
                    del self._unsure[(name, owner)]

        threading.Thread(target=undo, name=f"lease-undo:{name}", daemon=True).start()

    async def renew(
        self, record: LeaseRecord, ttl: float, *, purpose: str | None = None
    ) -> tuple[RenewOutcome, LeaseRecord]:
        """Extend ``record`` by ``ttl`` from now (server time): OK, LOST or TRANSIENT."""
        _check_id("name", record.name)
        _check_id("owner", record.owner)
        _check_ttl(ttl)
        try:
            answer = await self._script(
                _RENEW,
                record.name,
                record.owner,
                _millis(record.acquired_at),
                _ttl_ms(ttl),
                purpose or "",
                "0" if purpose is None else "1",
                _IDLE_KEEP_MS,
                what=f"renew lease {record.name!r}",
            )
        except errors.LeaseError as exc:
            logger.info(
                "lease.renew_transient name=%s owner=%s error=%s", record.name, record.owner, exc
            )
            return RenewOutcome.TRANSIENT, record
        if int(answer[0]) != 1:
            logger.info(
                "lease.renew_lost name=%s owner=%s reason=%s",
                record.name,
                record.owner,
                _text(answer[1]),
            )
            return RenewOutcome.LOST, record
        return RenewOutcome.OK, self._record(record.name, _text(answer[1]))

    async def release(self, record: LeaseRecord) -> None:
        """Drop ``record`` if it is still this claim; idempotent, never touches another's."""
        _check_id("name", record.name)
        _check_id("owner", record.owner)
        await self._script(
            _RELEASE,
            record.name,
            record.owner,
            "acquired_ms",
            _millis(record.acquired_at),
            what=f"release lease {record.name!r}",
            counter=False,
        )

    async def holders(self, name: str) -> list[LeaseRecord]:
        """The live records of ``name`` (by the server's clock), oldest first."""
        now, records = await self._read(name)
        return [r for r in records if not r.expired(now)]

    async def records(self, name: str) -> list[LeaseRecord]:
        """Every readable record of ``name``, lapsed ones included, oldest first."""
        return (await self._read(name))[1]

    async def aclose(self) -> None:
        """Close the connections (a later call opens new ones)."""
        await asyncio.to_thread(self._redis.close)

    # -- Redis ---------------------------------------------------------------

    def _keys(self, name: str) -> tuple[str, str]:
        # One hash tag for both keys: one slot, so a Redis Cluster can run the scripts.
        return f"{self.prefix}lease:{{{name}}}", f"{self.prefix}fence:{{{name}}}"

    def _call(self, script: str, keys: tuple[str, ...], *args: str | int) -> Any:
        return self._redis.eval(script, len(keys), *keys, *args)

    async def _script(
        self, script: str, name: str, *args: str | int, what: str, counter: bool = True
    ) -> Any:
        from redis.exceptions import RedisError  # noqa: PLC0415 - the optional dependency

        keys = self._keys(name) if counter else self._keys(name)[:1]
        try:
            return await asyncio.to_thread(self._call, script, keys, *args)
        except (RedisError, OSError) as exc:
            raise errors.LeaseError(
                f"cannot {what} in Redis at {_masked(self.url)}: {_masked(str(exc))}"
            ) from None

    async def _read(self, name: str) -> tuple[datetime, list[LeaseRecord]]:
        _check_id("name", name)
        answer = await self._script(
            _READ, name, what=f"list the records of {name!r}", counter=False
        )
        now, fields = _from_millis(int(answer[0])), answer[1]
        records = []
        for index in range(0, len(fields) - 1, 2):
            try:
                records.append(self._record(name, _text(fields[index + 1])))
            except errors.StateError as exc:
                logger.warning(
                    "lease.unreadable name=%s owner=%s: %s", name, _text(fields[index]), exc
                )
        return now, sorted(records, key=lambda r: (r.acquired_at, r.owner))

    def _record(self, name: str, raw: str) -> LeaseRecord:
        try:
            data = json.loads(raw)
            return LeaseRecord(
                name=name,
                owner=str(data["owner"]),
                mode=LeaseMode(data["mode"]),
                pid=int(data["pid"]),
                host=str(data["host"]),
                acquired_at=_from_millis(data["acquired_ms"]),
                expires_at=_from_millis(data["expires_ms"]),
                purpose=data.get("purpose"),
                pid_start=data.get("pid_start"),
                fence=int(data["fence"]),
                site=data.get("site"),
            )
        except (ValueError, KeyError, TypeError, OverflowError, OSError) as exc:
            raise errors.StateError(f"malformed lease record of {name!r} in Redis: {exc}") from exc


def _ttl_ms(ttl: float) -> int:
    return max(1, round(ttl * 1000))
