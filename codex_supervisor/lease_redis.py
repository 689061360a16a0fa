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
``fence:{name}``, the counter. A hash lives a day past its last write, so
names nobody uses any more go away by themselves.

The client is made per event loop (the library runs some calls under their
own ``asyncio.run``): :meth:`aclose` closes the one of the running loop.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import socket
import weakref
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Final, final

import attrs

from . import errors
from .lease import (
    LeaseMode,
    LeaseRecord,
    RenewOutcome,
    _check_id,
    _check_ttl,
    _pid_start,
    claim_alive,
)

if TYPE_CHECKING:  # pragma: no cover - the optional dependency, for types only
    from redis.asyncio import Redis

__all__ = ["RedisLeaseBackend"]

logger = logging.getLogger(__name__)

#: How long a name's hash outlives its last write (milliseconds).
_IDLE_KEEP_MS: Final = 24 * 3600 * 1000

_NOW: Final = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
"""

# KEYS: hash, counter. ARGV: owner, mode, ttl_ms, pid, host, purpose ('' none),
# has_purpose, pid_start ('' none), replaces_acquired_ms ('' none), dead owners
# (JSON list), alive owners (JSON list), keep_ms.
# Returns {1, record} granted; {0, why} refused; {2, [records]} lapsed records to judge.
_ACQUIRE: Final = (
    _NOW
    + """
local owner, mode, ttl = ARGV[1], ARGV[2], tonumber(ARGV[3])
local replaces = ARGV[9]
local dead, alive = {}, {}
for _, o in ipairs(cjson.decode(ARGV[10])) do dead[o] = true end
for _, o in ipairs(cjson.decode(ARGV[11])) do alive[o] = true end
if replaces ~= '' then
  local mine = redis.call('HGET', KEYS[1], owner)
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
    table.insert(unjudged, raw)
  elseif not (rec.mode == 'shared' and mode == 'shared') then
    blocked = blocked or ('held by ' .. o)
  end
end
if #unjudged > 0 then return {2, unjudged} end
if blocked then return {0, blocked} end
local rec = {
  owner = owner, mode = mode, pid = tonumber(ARGV[4]), host = ARGV[5],
  acquired_ms = now, expires_ms = now + ttl,
  fence = redis.call('INCR', KEYS[2]),
}
if ARGV[7] == '1' then rec.purpose = ARGV[6] end
if ARGV[8] ~= '' then rec.pid_start = ARGV[8] end
local value = cjson.encode(rec)
redis.call('HSET', KEYS[1], owner, value)
redis.call('PEXPIRE', KEYS[1], ttl + tonumber(ARGV[12]))
redis.call('PEXPIRE', KEYS[2], ttl + tonumber(ARGV[12]))
return {1, value}
"""
)

# KEYS: hash, counter. ARGV: owner, acquired_ms, ttl_ms, purpose, has_purpose, keep_ms.
# Returns {1, record} renewed; {0, why} lost.
_RENEW: Final = (
    _NOW
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
redis.call('PEXPIRE', KEYS[1], ttl + tonumber(ARGV[6]))
redis.call('PEXPIRE', KEYS[2], ttl + tonumber(ARGV[6]))
return {1, value}
"""
)

# KEYS: hash. ARGV: owner, acquired_ms. Returns 1 when the claim was dropped.
_RELEASE: Final = """
local raw = redis.call('HGET', KEYS[1], ARGV[1])
if not raw then return 0 end
local ok, rec = pcall(cjson.decode, raw)
if ok and type(rec) == 'table' and rec.acquired_ms == tonumber(ARGV[2]) then
  redis.call('HDEL', KEYS[1], ARGV[1])
  return 1
end
return 0
"""

# KEYS: hash. Returns {now_ms, owner, record, owner, record, ...}.
_READ: Final = _NOW + "return {now, unpack(redis.call('HGETALL', KEYS[1]))}"


def _millis(when: datetime) -> int:
    return round(when.timestamp() * 1000)


def _from_millis(ms: float) -> datetime:
    return datetime.fromtimestamp(ms / 1000, UTC)


def _text(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


@final
@attrs.define
class RedisLeaseBackend:
    """Lease records in Redis at ``url`` (``redis://host:6379/0``, ``rediss://`` for TLS).

    See the module notes. Redis being unreachable makes an acquire, a release
    or a listing raise :class:`~codex_supervisor.errors.LeaseError` and a
    renewal answer TRANSIENT (the heartbeat retries, and reports the lease
    lost once its TTL has passed without one), as a full disk does for the
    file backend.
    """

    url: str
    prefix: str = attrs.field(default="codex-supervisor:", kw_only=True)
    socket_timeout: float = attrs.field(default=5.0, kw_only=True)
    _clients: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, Redis] = attrs.field(
        factory=weakref.WeakKeyDictionary, init=False, repr=False
    )

    def __attrs_post_init__(self) -> None:
        try:
            import redis.asyncio  # noqa: F401, PLC0415 - the optional dependency
        except ImportError as exc:
            raise errors.ConfigError(
                "RedisLeaseBackend needs the redis client: pip install 'codex-supervisor[redis]'"
            ) from exc
        if not self.url.startswith(("redis://", "rediss://", "unix://")):
            raise errors.ConfigError(
                f"a Redis URL starts with redis://, rediss:// or unix://, got {self.url!r}"
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
        _check_id("name", name)
        _check_id("owner", owner)
        _check_ttl(ttl)
        try:
            mode = LeaseMode(mode)
        except ValueError as exc:
            raise errors.ConfigError(f"unknown lease mode {mode!r}") from exc
        if replaces is not None and (replaces.name, replaces.owner) != (name, owner):
            raise errors.ConfigError("replaces must be a record of the same name and owner")
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
            for raw in payload:
                lapsed = self._record(name, _text(raw))
                if claim_alive(lapsed):
                    alive.append(lapsed.owner)
                else:
                    dead.append(lapsed.owner)
                    logger.info(
                        "lease.expired_removed name=%s owner=%s pid=%s host=%s expired_at=%s",
                        name,
                        lapsed.owner,
                        lapsed.pid,
                        lapsed.host,
                        lapsed.expires_at.isoformat(),
                    )
        raise errors.LeaseError(f"cannot acquire lease {name!r}: its records keep lapsing")

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
        """Close the connection of the running event loop (others close with their loop)."""
        client = self._clients.pop(asyncio.get_running_loop(), None)
        if client is not None:
            await client.aclose()

    # -- Redis ---------------------------------------------------------------

    def _client(self) -> Redis:
        loop = asyncio.get_running_loop()
        client = self._clients.get(loop)
        if client is None:
            from redis.asyncio import Redis  # noqa: PLC0415 - the optional dependency

            client = Redis.from_url(
                self.url,
                socket_timeout=self.socket_timeout,
                socket_connect_timeout=self.socket_timeout,
            )
            self._clients[loop] = client
        return client

    def _keys(self, name: str) -> tuple[str, str]:
        return f"{self.prefix}lease:{name}", f"{self.prefix}fence:{name}"

    async def _script(
        self, script: str, name: str, *args: str | int, what: str, counter: bool = True
    ) -> Any:
        from redis.exceptions import RedisError  # noqa: PLC0415 - the optional dependency

        keys = self._keys(name) if counter else self._keys(name)[:1]
        try:
            return await self._client().eval(script, len(keys), *keys, *args)
        except (RedisError, OSError) as exc:
            raise errors.LeaseError(f"cannot {what} in Redis at {self._where()}: {exc}") from exc

    async def _read(self, name: str) -> tuple[datetime, list[LeaseRecord]]:
        _check_id("name", name)
        answer = await self._script(
            _READ, name, what=f"list the records of {name!r}", counter=False
        )
        now = _from_millis(int(answer[0]))
        records = []
        for index in range(1, len(answer) - 1, 2):
            try:
                records.append(self._record(name, _text(answer[index + 1])))
            except errors.StateError as exc:
                logger.warning(
                    "lease.unreadable name=%s owner=%s: %s", name, _text(answer[index]), exc
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
            )
        except (ValueError, KeyError, TypeError) as exc:
            raise errors.StateError(f"malformed lease record of {name!r} in Redis: {exc}") from exc

    def _where(self) -> str:
        # The URL without a password (redis://user:secret@host -> redis://user:***@host).
        scheme, sep, rest = self.url.partition("://")
        credentials, at, host = rest.rpartition("@")
        if not at:
            return self.url
        user = credentials.partition(":")[0]
        return f"{scheme}{sep}{user}:***@{host}" if user else f"{scheme}{sep}***@{host}"


def _ttl_ms(ttl: float) -> int:
    return max(1, round(ttl * 1000))
