"""Credentials that move between machines: each account's auth.json in a shared store.

A pool shared by several machines (``AccountPool(backend="redis://…")``)
keeps one copy of each account's login per machine, in that machine's
account home, and the newest one in Redis, encrypted. The rules:

* **One machine at a time.** The occupancy lease of an account is shared
  only by the processes of one *site* (a machine and its pool folder): a
  second site waits until the first gave the account back (see
  ``RedisLeaseBackend(site=…)``). Only the site that holds the account —
  its *custody* — may push a change of the login.
* **Take the newest on acquire.** :meth:`CredentialCustody.take` runs once the
  lease is held: the store's copy replaces an older local auth.json; a local
  copy newer than the store's (by ``last_refresh``, the rule "never an older
  auth.json over a newer one") is pushed instead.
* **Push every change.** While Codex runs, the account's auth.json is
  watched (and looked at every few seconds besides); each change is pushed
  at once, and once more on release. A push is a compare-and-set on the
  record's version, refused when the store's login is newer, and refused
  when another site took the account meanwhile.
* **A site that dies.** Before pushing a change, the site records that it
  *saw* it. A site that takes the account after another one finds the
  record clean (the last change seen was pushed) or holds the account back
  (:class:`~codex_supervisor.errors.CredentialsHeld`): the shared copy may
  carry a refresh token the dead site already spent. The hold is lifted
  when that site comes back and pushes what it saw (any ``status`` there
  does), by a fresh login of the account, or by hand
  (:meth:`RedisCredentialStore.unhold`). A change the dead site never
  noticed (it died within the moment between Codex's write and the watch
  waking) cannot be known to anybody.
* **Encrypted at rest.** Each login is sealed with AES-256-GCM under the
  user's :class:`CredentialKey`, the account name and the record version as
  associated data (a sealed login cannot be replayed under another name or
  an older version); fingerprints are keyed HMACs. No token is ever logged.

Redis keys: ``{prefix}credentials:{pool}:{name}``, one hash per account
(``{pool}`` is a hash tag: one Cluster slot per pool).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import hashlib
import hmac
import json
import logging
import os
import secrets
import stat
import threading
from collections.abc import AsyncIterator, Callable, Iterable, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final, final

import attrs

from ._fs import write_atomic
from ._redis import connect
from ._redis import masked_url as _masked
from ._watch import ChangeWatcher
from .errors import CredentialError, CredentialsHeld

__all__ = [
    "CredentialCustody",
    "CredentialKey",
    "RedisCredentialStore",
    "StoredCredentials",
    "last_refresh",
]

log = logging.getLogger(__name__)

#: The environment variables a key is read from (the text itself, or a file holding it).
KEY_ENV: Final = "CODEX_SUPERVISOR_CREDENTIAL_KEY"
KEY_FILE_ENV: Final = "CODEX_SUPERVISOR_CREDENTIAL_KEY_FILE"

_MAX_AUTH_BYTES: Final = 1 << 20
_NONCE: Final = 12
_HOW_TO_MAKE: Final = (
    "make one with `head -c 32 /dev/urandom | base64 > key` and give the same key to every "
    f"machine of the pool: {KEY_FILE_ENV}=PATH or {KEY_ENV}=TEXT"
)


def last_refresh(data: bytes) -> datetime | None:
    """The ``last_refresh`` of an auth.json, aware (UTC if naive); None if unreadable."""
    try:
        value = json.loads(data).get("last_refresh")
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00")) if value else None
    except (ValueError, AttributeError, TypeError, RecursionError):
        return None
    # A naive time compared with an aware one would raise TypeError.
    return parsed.replace(tzinfo=UTC) if parsed and parsed.tzinfo is None else parsed


def _refreshed_ms(data: bytes) -> str:
    when = last_refresh(data)
    return "" if when is None else str(round(when.timestamp() * 1000))


@final
@attrs.frozen
class CredentialKey:
    """The user's 32-byte key: seals logins (AES-256-GCM) and keys fingerprints (HMAC).

    Written as base64 (standard or URL-safe, padding optional) or 64 hex
    digits. Every machine of a pool needs the same key; it never leaves the
    process (not in argv, logs, a child's environment or the store).
    """

    secret: bytes = attrs.field(repr=False)

    def __attrs_post_init__(self) -> None:
        if len(self.secret) != 32:
            raise CredentialError(f"a credential key is 32 bytes, got {len(self.secret)}")

    @classmethod
    def from_text(cls, text: str, *, where: str = "the credential key") -> CredentialKey:
        """The key written as base64 or hex; CredentialError naming ``where`` otherwise."""
        text = text.strip()
        candidates: list[bytes] = []
        with contextlib.suppress(ValueError):
            candidates.append(bytes.fromhex(text))
        for decode in (base64.b64decode, base64.urlsafe_b64decode):
            with contextlib.suppress(binascii.Error, ValueError):
                candidates.append(decode(text + "=" * (-len(text) % 4)))
        for raw in candidates:
            if len(raw) == 32:
                return cls(raw)
        raise CredentialError(f"{where} is not 32 bytes in base64 or hex; {_HOW_TO_MAKE}")

    @classmethod
    def from_file(cls, path: Path | str) -> CredentialKey:
        """The key in file ``path``; a file others can read is refused (chmod 600 it)."""
        path = Path(path).expanduser()
        try:
            info = path.stat()
            if info.st_mode & 0o077:
                raise CredentialError(
                    f"refusing the credential key {path}: readable by other users "
                    f"(mode {stat.S_IMODE(info.st_mode):o}); chmod 600 it"
                )
            text = path.read_text(encoding="ascii")
        except (OSError, UnicodeDecodeError) as exc:
            raise CredentialError(f"cannot read the credential key {path}: {exc}") from None
        return cls.from_text(text, where=f"the credential key {path}")

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> CredentialKey | None:
        """The key ``$CODEX_SUPERVISOR_CREDENTIAL_KEY(_FILE)`` names; None when neither is set."""
        env = os.environ if environ is None else environ
        if env.get(KEY_ENV):
            return cls.from_text(env[KEY_ENV], where=f"${KEY_ENV}")
        if env.get(KEY_FILE_ENV):
            return cls.from_file(env[KEY_FILE_ENV])
        return None

    @staticmethod
    def generate() -> str:
        """A new random key, as base64 text."""
        return base64.b64encode(secrets.token_bytes(32)).decode()

    def _aad(self, name: str, version: int) -> bytes:
        return f"codex-supervisor auth.json\0{name}\0{version}".encode()

    def seal(self, name: str, version: int, data: bytes) -> bytes:
        """``data`` encrypted and authenticated for account ``name`` at ``version``."""
        from cryptography.hazmat.primitives.ciphers.aead import AESGCM  # noqa: PLC0415

        nonce = secrets.token_bytes(_NONCE)
        return nonce + AESGCM(self.secret).encrypt(nonce, data, self._aad(name, version))

    def open(self, name: str, version: int, blob: bytes) -> bytes:
        """The login :meth:`seal` sealed; CredentialError if the key or the record differ."""
        from cryptography.exceptions import InvalidTag  # noqa: PLC0415
        from cryptography.hazmat.primitives.ciphers.aead import AESGCM  # noqa: PLC0415

        try:
            return AESGCM(self.secret).decrypt(
                blob[:_NONCE], blob[_NONCE:], self._aad(name, version)
            )
        except (InvalidTag, ValueError):
            raise CredentialError(
                f"the shared login of {name!r} (version {version}) does not open with this "
                "key: another key, or a record changed by hand"
            ) from None

    def fingerprint(self, data: bytes) -> str:
        """A keyed digest of ``data``: equal logins match, and it tells nothing of the tokens."""
        sub = hmac.new(self.secret, b"codex-supervisor fingerprint", hashlib.sha256).digest()
        return hmac.new(sub, data, hashlib.sha256).hexdigest()[:32]


@final
@attrs.frozen(kw_only=True)
class StoredCredentials:
    """An account's record in the shared store (``data`` is the opened login)."""

    name: str
    version: int
    data: bytes = attrs.field(repr=False)
    fingerprint: str
    site: str | None
    refreshed: datetime | None
    #: The fingerprint of the last change its custody site saw (taken records only).
    seen: str | None = None


_NOW: Final = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
"""

# The record's fields, in the order the scripts read them: cur[1] .. cur[9].
_FIELDS: Final = "'version', 'refreshed_ms', 'fp', 'site', 'seen', 'held', 'blob', 'pushed_ms'"

# KEYS: record, users. ARGV: site, expected version, refreshed_ms ('' unknown), fp, blob,
# force.
# {1, version} stored (or already there); {0, site} custody elsewhere; {2, version}
# another version; {3, refreshed_ms} the store's login is not older.
_PUSH: Final = (
    _NOW
    + f"local cur = redis.call('HMGET', KEYS[1], {_FIELDS})"
    + """
local version = tonumber(cur[1]) or 0
local force = ARGV[6] == '1'
if not force and cur[4] and cur[4] ~= ARGV[1] then return {0, cur[4]} end
if version ~= tonumber(ARGV[2]) then return {2, version} end
if cur[3] == ARGV[4] and not force then return {1, version} end
if not force and cur[2] and cur[2] ~= '' and ARGV[3] ~= ''
    and tonumber(ARGV[3]) <= tonumber(cur[2]) then
  return {3, cur[2]}
end
redis.call('HSET', KEYS[1], 'version', version + 1, 'refreshed_ms', ARGV[3], 'fp', ARGV[4],
  'blob', ARGV[5], 'site', ARGV[1], 'seen', ARGV[4], 'pushed_ms', now, 'seen_ms', now)
if force then
  -- A fresh login: nobody runs it yet, and no hold applies to it.
  redis.call('DEL', KEYS[2])
  redis.call('HDEL', KEYS[1], 'held', 'held_ms')
elseif cur[6] and cur[5] == ARGV[4] then
  redis.call('HDEL', KEYS[1], 'held', 'held_ms')  -- the change the hold waited for
end
return {1, version + 1}
"""
)

# KEYS: record, users (a set of lease owners). ARGV: site, owner. Takes the custody
# (the owner one more user at that site): {1} nothing stored yet; {1, version, fp,
# blob, last site, seen} taken; {0, why, site, seen} held back. Another site's custody
# is handed on only when that site gave the account back cleanly (no user left) and
# pushed every change it saw.
_TAKE: Final = (
    _NOW
    + f"local cur = redis.call('HMGET', KEYS[1], {_FIELDS})"
    + """
local users = redis.call('SCARD', KEYS[2])
if not cur[1] then
  if cur[4] ~= ARGV[1] then redis.call('DEL', KEYS[2]) end
  redis.call('HSET', KEYS[1], 'site', ARGV[1])
  redis.call('SADD', KEYS[2], ARGV[2])
  return {1}
end
if not cur[6] and cur[4] and cur[4] ~= ARGV[1] then
  local why = nil
  if cur[5] and cur[5] ~= cur[3] then
    why = 'site ' .. cur[4] .. ' saw a change of its auth.json it never pushed'
  elseif users > 0 then
    why = 'site ' .. cur[4] .. ' stopped without giving the account back (a process of it'
      .. ' died or lost Redis): its Codex may have refreshed the login after its last push'
  end
  if why then
    redis.call('HSET', KEYS[1], 'held', why, 'held_ms', now)
    cur[6] = why
  end
end
if cur[6] then return {0, cur[6], cur[4] or '', cur[5] or ''} end
if cur[4] ~= ARGV[1] then redis.call('DEL', KEYS[2]) end
redis.call('HSET', KEYS[1], 'site', ARGV[1])
redis.call('SADD', KEYS[2], ARGV[2])
return {1, cur[1], cur[3], cur[7], cur[4] or '', cur[5] or ''}
"""
)

# KEYS: record, users. ARGV: owner. The owner gave the account back cleanly (its last
# push done); idempotent. Returns the users left.
_LEAVE: Final = """
redis.call('SREM', KEYS[2], ARGV[1])
return redis.call('SCARD', KEYS[2])
"""

# KEYS: record, users. ARGV: site, fp, gone owners (JSON list). The custody site vouches
# that its login is the stored one (fp) and that those owners are gone: they stop
# counting and a hold on it is over (1); 0 (nothing changed) when it cannot vouch.
_CONFIRM: Final = """
local cur = redis.call('HMGET', KEYS[1], 'site', 'fp')
if cur[1] ~= ARGV[1] or cur[2] ~= ARGV[2] then return 0 end
for _, owner in ipairs(cjson.decode(ARGV[3])) do redis.call('SREM', KEYS[2], owner) end
redis.call('HSET', KEYS[1], 'seen', cur[2])
redis.call('HDEL', KEYS[1], 'held', 'held_ms')
return 1
"""

# KEYS: record. ARGV: site, fp. Notes that the custody site saw login fp (1), or 0.
_SEEN: Final = (
    _NOW
    + """
local site = redis.call('HGET', KEYS[1], 'site')
if not site or site ~= ARGV[1] then return 0 end
redis.call('HSET', KEYS[1], 'seen', ARGV[2], 'seen_ms', now)
return 1
"""
)

# KEYS: record, users. Lifts a hold (or the one taking the account would make), taking the
# stored login as the newest and the last site as gone: 1 if there was one.
_UNHOLD: Final = """
local cur = redis.call('HMGET', KEYS[1], 'held', 'seen', 'fp')
if not cur[1] and cur[2] == cur[3] and redis.call('SCARD', KEYS[2]) == 0 then return 0 end
redis.call('HSET', KEYS[1], 'seen', cur[3] or '')
redis.call('DEL', KEYS[2])
redis.call('HDEL', KEYS[1], 'held', 'held_ms')
return 1
"""


def _text(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


@attrs.define
class RedisCredentialStore:
    """Each account's newest login, sealed, in Redis at ``url`` (extra ``redis``).

    ``pool`` names the pool (several pools may share one server). Every
    method is synchronous (run it in a worker thread from a loop); Redis
    unreachable raises :class:`~codex_supervisor.errors.CredentialError`.
    """

    url: str = attrs.field(repr=_masked)
    key: CredentialKey = attrs.field(repr=False)
    pool: str = "default"
    prefix: str = attrs.field(default="codex-supervisor:", kw_only=True)
    socket_timeout: float = attrs.field(default=5.0, kw_only=True)
    _redis: Any = attrs.field(default=None, init=False, repr=False)

    def __attrs_post_init__(self) -> None:
        self._redis = connect(
            self.url,
            socket_timeout=self.socket_timeout,
            who="RedisCredentialStore",
            error=CredentialError,
        )

    @property
    def where(self) -> str:
        """The masked URL of the store."""
        return f"the credential store at {_masked(self.url)}"

    def _key(self, name: str) -> str:
        return f"{self.prefix}credentials:{{{self.pool}}}:{name}"

    def _keys(self, name: str) -> tuple[str, str]:
        """The record and its users (lease owners of the custody site), one hash tag."""
        return self._key(name), f"{self._key(name)}:users"

    def _call(self, what: str, call: Any, *args: Any) -> Any:
        from redis.exceptions import RedisError  # noqa: PLC0415 - the optional dependency

        try:
            return call(*args)
        except (RedisError, OSError) as exc:
            raise CredentialError(f"cannot {what} in {self.where}: {_masked(str(exc))}") from None

    def fetch(self, name: str) -> StoredCredentials | None:
        """The stored login of ``name``, opened; None when none was ever pushed."""
        raw = self._call(
            f"read the login of {name!r}",
            self._redis.hmget,
            self._key(name),
            "version",
            "refreshed_ms",
            "fp",
            "blob",
            "site",
        )
        if raw[0] is None:
            return None
        return self._stored(name, raw[0], raw[2], raw[3], raw[4])

    def _stored(self, name: str, version: Any, fp: Any, blob: Any, site: Any) -> StoredCredentials:
        number = int(version)
        data = self.key.open(name, number, bytes(blob or b""))
        return StoredCredentials(
            name=name,
            version=number,
            data=data,
            fingerprint=_text(fp),
            site=_text(site) if site else None,
            refreshed=last_refresh(data),
        )

    def take(self, name: str, site: str, owner: str) -> StoredCredentials | None:
        """Make ``site`` the account's custody (one more user there); the stored login.

        None when none was pushed yet. :attr:`StoredCredentials.site` is the
        site that had it. Raises :class:`~codex_supervisor.errors.CredentialsHeld`
        when the account is held back: another site had it and did not give it
        back cleanly, or saw a change it never pushed. Call it only under the
        account's occupancy lease, and :meth:`leave` once the work is over.
        """
        answer = self._call(f"take the login of {name!r}", self._redis.eval, _TAKE, 2,
                            *self._keys(name), site, owner)  # fmt: skip
        if int(answer[0]) == 0:
            raise CredentialsHeld(name, self.where, _text(answer[1]), _text(answer[2]) or None)
        if len(answer) == 1:
            return None
        stored = self._stored(name, answer[1], answer[2], answer[3], answer[4])
        return attrs.evolve(stored, seen=_text(answer[5]) or None)

    def leave(self, name: str, owner: str) -> int:
        """User ``owner`` is done, its last push made (idempotent): the users left."""
        return int(self._call(f"give back {name!r}", self._redis.eval, _LEAVE, 2,
                              *self._keys(name), owner))  # fmt: skip

    def users(self, name: str) -> set[str]:
        """The lease owners that took the account and did not give it back."""
        found = self._call(f"read the users of {name!r}", self._redis.smembers,
                           self._keys(name)[1])  # fmt: skip
        return {_text(owner) for owner in found}

    def confirm(self, name: str, site: str, data: bytes, gone: Iterable[str]) -> bool:
        """Custody ``site`` vouches its login ``data`` is the stored one and ``gone`` are gone.

        Those users stop counting and a hold on the account is over; False
        (nothing changed) when ``site`` is not its custody or ``data`` is not
        the stored login.
        """
        fp = self.key.fingerprint(data)
        return bool(self._call(f"confirm the login of {name!r}", self._redis.eval, _CONFIRM, 2,
                               *self._keys(name), site, fp, json.dumps(sorted(gone))))  # fmt: skip

    def holds(self, names: Iterable[str]) -> dict[str, CredentialsHeld]:
        """The accounts of ``names`` held back, each with its error (one round trip)."""
        names = list(names)
        if not names:
            return {}
        pipe = self._redis.pipeline(transaction=False)
        for name in names:
            pipe.hmget(self._key(name), "held", "site")
        rows = self._call("read the holds", pipe.execute)
        return {
            name: CredentialsHeld(
                name, self.where, _text(row[0]), _text(row[1]) if row[1] else None
            )
            for name, row in zip(names, rows, strict=True)
            if row[0] is not None
        }

    def unpushed(self, names: Iterable[str], site: str) -> dict[str, CredentialsHeld]:
        """The accounts of ``names`` that taking from ``site`` now would hold back.

        Their custody is another site that has users left or saw a change it
        has not pushed: while that site still runs them, that is its work in
        progress; once it is gone, taking the account holds it back.
        """
        names = list(names)
        if not names:
            return {}
        pipe = self._redis.pipeline(transaction=False)
        for name in names:
            pipe.hmget(self._key(name), "site", "seen", "fp", "version")
            pipe.scard(self._keys(name)[1])
        replies = self._call("read the holds", pipe.execute)
        found = {}
        for name, (custody, seen, fp, version), users in zip(
            names, replies[::2], replies[1::2], strict=True
        ):
            if custody is None or version is None or _text(custody) == site:
                continue
            other = _text(custody)
            if seen != fp:
                reason = f"site {other} saw a change of its auth.json it never pushed"
            elif int(users or 0) > 0:
                reason = (
                    f"site {other} stopped without giving the account back (a process of it "
                    "died or lost Redis): its Codex may have refreshed the login after its "
                    "last push"
                )
            else:
                continue
            found[name] = CredentialsHeld(name, self.where, reason, other)
        return found

    def unsettled(self, names: Iterable[str], site: str) -> list[str]:
        """The accounts of ``names`` whose custody is ``site`` and not given back cleanly.

        Users left, a change seen but not pushed, or a hold: what
        :meth:`CredentialCustody.settle` settles once that site runs none of them.
        """
        names = list(names)
        if not names:
            return []
        pipe = self._redis.pipeline(transaction=False)
        for name in names:
            pipe.hmget(self._key(name), "site", "seen", "fp", "held")
            pipe.scard(self._keys(name)[1])
        replies = self._call("read the custody", pipe.execute)
        return [
            name
            for name, (custody, seen, fp, held), users in zip(
                names, replies[::2], replies[1::2], strict=True
            )
            if custody is not None
            and _text(custody) == site
            and (int(users or 0) > 0 or seen != fp or held is not None)
        ]

    def push(
        self, name: str, data: bytes, *, site: str, expected: int, force: bool = False
    ) -> tuple[int, Any]:
        """Compare-and-set ``data`` as version ``expected + 1``: ``(code, detail)``.

        Codes: 1 stored (detail: the version now), 0 another site holds the
        account (detail: that site), 2 the version moved (detail: it), 3 the
        store's login is as new or newer (detail: its ``last_refresh`` ms).
        ``force`` (a fresh login) skips the custody and age checks and
        lifts a hold.
        """
        blob = self.key.seal(name, expected + 1, data)
        answer = self._call(
            f"push the login of {name!r}",
            self._redis.eval,
            _PUSH,
            2,
            *self._keys(name),
            site,
            expected,
            _refreshed_ms(data),
            self.key.fingerprint(data),
            blob,
            "1" if force else "0",
        )
        code, detail = int(answer[0]), answer[1]
        return code, (int(detail) if code in {1, 2} else _text(detail))

    def publish(self, name: str, data: bytes, *, site: str) -> int:
        """Store a fresh login of ``name`` (an import, a login) whatever was there: its version."""
        for _ in range(8):
            current = self._call(f"read the login of {name!r}", self._redis.hget,
                                 self._key(name), "version")  # fmt: skip
            expected = int(current) if current is not None else 0
            code, detail = self.push(name, data, site=site, expected=expected, force=True)
            if code == 1:
                return int(detail)
        raise CredentialError(f"the login of {name!r} in {self.where} keeps changing")

    def seen(self, name: str, site: str, data: bytes) -> bool:
        """Record that custody ``site`` saw login ``data`` (before pushing it)."""
        fp = self.key.fingerprint(data)
        return bool(self._call(f"note a change of {name!r}", self._redis.eval, _SEEN, 1,
                               self._key(name), site, fp))  # fmt: skip

    def unhold(self, name: str) -> bool:
        """Lift ``name``'s hold, taking the stored login as the newest; False if none."""
        return bool(self._call(f"lift the hold of {name!r}", self._redis.eval, _UNHOLD, 2,
                               *self._keys(name)))  # fmt: skip

    def forget(self, name: str) -> None:
        """Drop the record of ``name`` (its account left the pool)."""
        self._call(f"drop the login of {name!r}", self._redis.delete, *self._keys(name))

    def close(self) -> None:
        """Close the connections (a later call opens new ones)."""
        self._redis.close()


def _read_local(path: Path) -> bytes | None:
    """The account home's auth.json, or None when there is none (or it is no file)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except FileNotFoundError:
        return None
    except OSError as exc:
        log.warning("cannot read %s: %s", path, exc)
        return None
    with os.fdopen(fd, "rb") as fh:
        data = fh.read(_MAX_AUTH_BYTES + 1)
    if len(data) > _MAX_AUTH_BYTES:
        log.warning("%s is larger than any auth.json: left alone", path)
        return None
    return data


@attrs.define
class CredentialCustody:
    """One occupancy's side of the handoff: take the newest login, push every change.

    :meth:`take` once the occupancy lease is held; then :meth:`keep_pushed`
    around the work (watches ``home/auth.json``, pushes each change, once
    more at the end, then gives the custody back). ``owner`` is the
    occupancy lease's owner, the user this custody counts as. ``account_id``
    is the account's (a stored login of another account is refused);
    ``identify`` reads the account id of a login; ``live`` gives the owners
    whose leases of the account still count (the others, for settling what
    a dead process of this site left); ``stray`` says why a Codex may still
    run on the login without a supervisor (a pid, or that it cannot be known),
    or None.
    """

    store: RedisCredentialStore
    name: str
    home: Path
    site: str
    owner: str = ""
    account_id: str | None = None
    identify: Callable[[bytes], str | None] = attrs.field(default=lambda _data: None)
    live: Callable[[], set[str]] = attrs.field(factory=lambda: set)
    stray: Callable[[], str | None] = attrs.field(default=lambda: None)
    poll: float = 2.0
    _version: int = attrs.field(default=0, init=False)
    _pushed: bytes | None = attrs.field(default=None, init=False, repr=False)
    _taken: bool = attrs.field(default=False, init=False)
    # One sync at a time: a cancelled worker thread may still be running one.
    _lock: threading.Lock = attrs.field(factory=threading.Lock, init=False, repr=False)

    @property
    def auth_path(self) -> Path:
        """The login this custody keeps pushed."""
        return self.home / "auth.json"

    @property
    def taken(self) -> bool:
        """Whether :meth:`take` made this a user of the account (then :meth:`leave`)."""
        return self._taken

    def take(self) -> None:
        """Take the account's custody: the newer of the store's and the local login wins.

        A local login that is neither the stored one nor provably older (by
        ``last_refresh``) is kept aside in ``<account>/kept/`` before the
        stored one replaces it; a provably newer one is pushed instead.
        """
        try:
            stored = self._take()
        except CredentialsHeld as held:
            if held.site != self.site or not self.settle():
                raise
            stored = self._take()
        try:
            self._take_login(stored)
        except BaseException:
            with contextlib.suppress(CredentialError):  # (then it counts on: the safe side)
                self.leave()
            raise

    def _take(self) -> StoredCredentials | None:
        self._taken = True  # from the call on: a lost reply may have counted it
        try:
            return self.store.take(self.name, self.site, self.owner)
        except CredentialsHeld:
            self._taken = False  # refused: nothing counted
            raise
        except CredentialError:
            with contextlib.suppress(CredentialError):
                self.leave()  # (the store may still be out of reach: then it stays)
            raise

    def _take_login(self, stored: StoredCredentials | None) -> None:
        local = _read_local(self.auth_path)
        if stored is None:
            if local is not None:
                self._version = 0
                self.sync()
            return
        if self.account_id is not None and self.identify(stored.data) != self.account_id:
            raise CredentialsHeld(
                self.name,
                self.store.where,
                f"the shared login is of another account than {self.name!r} "
                f"({self.account_id}): `accounts login {self.name}` again",
            )
        self._version = stored.version
        if local is not None and local != stored.data:
            if (
                stored.site == self.site
                and stored.seen not in (None, stored.fingerprint)
                and self.store.key.fingerprint(local) == stored.seen
            ):
                # This site's own change, never pushed: not newer by its
                # last_refresh (clocks apart). The live login: it stays, is
                # pushed when it can be, and other sites are held meanwhile.
                log.warning("credentials.unpushed_kept account=%s: this site's login is newer "
                            "than the shared one but not by last_refresh", self.name)  # fmt: skip
                self._pushed = stored.data
                return
            if _strictly_newer(local, stored.data):
                log.info("credentials.local_newer account=%s: pushing this site's", self.name)
                self._pushed = stored.data
                self.sync()
                return
            if not _strictly_newer(stored.data, local):
                self._keep_aside(local, "neither older nor newer than the shared login")
            write_atomic(self.auth_path, stored.data, mode=0o600)
            log.info("credentials.taken account=%s version=%s from=%s", self.name,
                     stored.version, stored.site)  # fmt: skip
        elif local is None:
            write_atomic(self.auth_path, stored.data, mode=0o600)
        self._pushed = stored.data

    def _keep_aside(self, data: bytes, why: str) -> Path:
        """Keep a login the store's replaces, 0600, beside the account home."""
        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
        kept = self.home.parent / "kept"
        kept.mkdir(mode=0o700, exist_ok=True)
        path = kept / f"auth-{stamp}-{secrets.token_hex(4)}.json"
        write_atomic(path, data, mode=0o600)
        log.warning("credentials.kept account=%s path=%s: %s", self.name, path, why)
        return path

    def settle(self) -> bool:
        """Settle what this site left unsettled, if its login here is the newest: True if so.

        This site had the account and gave it back uncleanly (a process died,
        Redis was out of reach): its login here is what its Codex left. It is
        pushed when newer than the stored one; when it is the stored one, the
        site vouches for it. Either way the site's users are counted afresh
        and a hold is over. Nothing is settled while a Codex still runs in
        the home without its supervisor.
        """
        local = self._settleable()
        if local is None:
            return False
        # The users first, then who is alive: a user counted now took its lease
        # before, so a live one is seen alive below.
        gone = self.store.users(self.name)
        gone -= self.live() | {self.owner}
        stored = self.store.fetch(self.name)
        if stored is not None and local != stored.data:
            if not _strictly_newer(local, stored.data):
                return False  # not provably newer: the user decides (login, or unhold)
            code, _ = self.store.push(self.name, local, site=self.site, expected=stored.version)
            if code != 1:
                return False
        lifted = self.store.confirm(self.name, self.site, local, gone)
        if lifted:
            log.warning("credentials.settled account=%s: this site's login is the newest; other "
                        "machines may take the account again", self.name)  # fmt: skip
        return lifted

    def _settleable(self) -> bytes | None:
        """The login here, when this site left the account unsettled and may settle it now."""
        if self.name not in self.store.unsettled([self.name], self.site):
            return None
        local = _read_local(self.auth_path)
        if local is None or (
            self.account_id is not None and self.identify(local) != self.account_id
        ):
            return None
        stray = self.stray()
        if stray is not None:
            # Its supervisor died; it runs on and may still refresh the login.
            log.warning("credentials.stray_codex account=%s (%s): not vouching for the login "
                        "while a Codex may run on it", self.name, stray)  # fmt: skip
            return None
        return local

    def sync(self) -> bool:
        """Push the local login if it changed; True when nothing is left to push."""
        local = _read_local(self.auth_path)
        if local is None or local == self._pushed:
            return True
        for _ in range(8):
            code, detail = self.store.push(self.name, local, site=self.site, expected=self._version)
            if code == 1:
                self._version = int(detail)
                log.info("credentials.pushed account=%s version=%s", self.name, detail)
            elif code == 2 and not self._settled(local):  # the version moved
                continue
            elif code == 3:
                # Our own successor of the stored login, yet not newer by its
                # last_refresh (clocks apart?): never pushed over it, so the
                # change counts as unpushed, and other sites hold the account.
                self.store.seen(self.name, self.site, local)
                log.warning(
                    "credentials.not_newer account=%s: this site's auth.json changed but is "
                    "not newer than the shared login by last_refresh; not pushed, and other "
                    "machines hold the account back",
                    self.name,
                )
            elif code == 0:
                self._pushed = local
                path = self._keep_aside(local, f"site {detail} took the account meanwhile")
                log.error(
                    "credentials.custody_lost account=%s: site %s holds the account now; this "
                    "site's changed login is kept at %s",
                    self.name,
                    detail,
                    path,
                )
                return True
            self._pushed = local
            return True
        return False

    def _settled(self, local: bytes) -> bool:
        """After a version conflict (another process of this site pushed): nothing left?"""
        stored = self.store.fetch(self.name)
        self._version = 0 if stored is None else stored.version
        if stored is not None and (local == stored.data or _strictly_newer(stored.data, local)):
            return True
        self.store.seen(self.name, self.site, local)
        return False

    def leave(self) -> None:
        """Give the custody back: this user no longer counts (after the last push).

        Idempotent; when the store cannot be reached it raises and the user
        keeps counting (other sites hold the account back meanwhile).
        """
        if self._taken:
            self.store.leave(self.name, self.owner)
            self._taken = False

    def _sync_now(self) -> None:
        with self._lock:
            local = _read_local(self.auth_path)
            if local is not None and local != self._pushed:
                # Seen before pushed: a site that dies between the two leaves a hold.
                self.store.seen(self.name, self.site, local)
            self.sync()

    @contextlib.asynccontextmanager
    async def keep_pushed(self) -> AsyncIterator[None]:
        """Watch the login while the block runs; push each change, and at the end leave."""
        loop = asyncio.get_running_loop()
        changed = asyncio.Event()

        def wake() -> None:
            loop.call_soon_threadsafe(changed.set)

        watcher = ChangeWatcher(wake)
        watcher.track([self.auth_path])

        async def pusher() -> None:
            while True:
                # A timer sets the event too: a plain await, which a cancel always
                # ends (3.11's wait_for can swallow a cancel that meets its timeout).
                timer = loop.call_later(self.poll, changed.set)
                try:
                    await changed.wait()
                finally:
                    timer.cancel()
                changed.clear()
                watcher.rearm()
                try:
                    await asyncio.to_thread(self._sync_now)
                except (CredentialError, OSError) as exc:
                    log.warning("credentials.push_failed account=%s: %s", self.name, exc)

        task = asyncio.create_task(pusher(), name=f"credentials:{self.name}")
        try:
            yield
        finally:
            task.cancel()
            await asyncio.wait([task])  # (a cancel aimed at the caller is not swallowed)
            if not task.cancelled() and task.exception() is not None:
                log.error("credentials.pusher_failed account=%s", self.name,
                          exc_info=task.exception())  # fmt: skip
            watcher.close()
            await self._finish()

    async def _finish(self) -> None:
        """The last push, then leave; a failure leaves the account held for other sites."""
        try:
            await asyncio.to_thread(self._sync_now)
            await asyncio.to_thread(self.leave)
        except (CredentialError, OSError) as exc:
            log.error(  # noqa: TRY400 - the message says it all; no traceback
                "credentials.final_push_failed account=%s: %s (other machines hold the "
                "account back until this one pushes it: any `status` here does)",
                self.name,
                exc,
            )


def _strictly_newer(a: bytes, b: bytes) -> bool:
    """Whether login ``a`` is provably newer than ``b``: both ``last_refresh`` known, a's later."""
    ta, tb = last_refresh(a), last_refresh(b)
    return ta is not None and tb is not None and ta > tb
