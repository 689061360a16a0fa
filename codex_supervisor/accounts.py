"""The account pool: account homes, identities, pool state and occupancy.

Each account lives in an *account home* ``<root>/accounts/<name>/home`` (0700)
holding its own ``auth.json`` (0600) and a link to every other entry of the
user's base CODEX_HOME — config.toml, AGENTS.md, prompts/, skills/, rules/ and
above all ``sessions/``, so a rollout written under one account can be resumed
under every other. The account home's ``auth.json`` *is* the token store:
Codex refreshes it in place; the library reads it (identity, and the access
token when a usage probe needs it), never writes it after import, and never
refreshes a token itself.

Pool metadata — identities, the last quota snapshot and cooldowns of every
account — sits in one versioned JSON file, ``<root>/state.json``, rewritten
whole under the pool lock. A corrupt state file raises
:class:`~codex_supervisor.errors.StateError` and is left as it is, with the
previous good version beside it as ``state.json.bak``; it is never silently
reset.

Account names match :data:`ACCOUNT_NAME_PATTERN`: a letter or digit, then up
to 63 letters, digits, ``.``, ``_`` or ``-``.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import enum
import errno
import functools
import hashlib
import json
import logging
import os
import re
import secrets
import shutil
import socket
import stat
import subprocess
import time
from collections.abc import (
    AsyncIterator,
    Awaitable,
    Callable,
    Coroutine,
    Iterator,
    Mapping,
    Sequence,
)
from contextlib import AbstractAsyncContextManager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Literal, TypeVar, final

import attrs

from . import _convert
from ._fs import fsync_dir, write_atomic
from ._jwt import decode_jwt_claims
from ._redis import masked_url as _masked
from .clock import Clock, SystemClock
from .config import (
    child_environment,
    default_backend,
    default_base_codex_home,
    default_pool_root,
)
from .credentials import CredentialCustody, CredentialKey, RedisCredentialStore, last_refresh
from .errors import (
    AccountBusy,
    AccountGone,
    AccountInUse,
    AuthError,
    CodexNotFoundError,
    ConfigError,
    CredentialError,
    CredentialsHeld,
    LeaseTimeout,
    LoginQuarantined,
    QuotaUnavailable,
    StateError,
    SupervisorError,
)
from .lease import (
    FileLeaseBackend,
    Lease,
    LeaseBackend,
    LeaseMode,
    LeaseRecord,
    acquire_lease,
    claim_alive,
    holder_alive,
)
from .quota import QuotaSnapshot, UsageCredentials, WindowKind, read_chatgpt_base_url
from .state_store import FileStateStore, StateStore

__all__ = [
    "ACCOUNT_NAME_PATTERN",
    "STATE_VERSION",
    "Account",
    "AccountInUse",
    "AccountPool",
    "AccountStatus",
    "AuthMode",
    "Cooldown",
    "Identity",
    "LeftoverFolder",
    "LoginQuarantined",
    "QuarantinedAuth",
    "identity_from_auth",
]

log = logging.getLogger(__name__)

#: What an account name may look like (it becomes a folder and a lease name).
ACCOUNT_NAME_PATTERN = r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}"
_NAME_RE = re.compile(ACCOUNT_NAME_PATTERN)
#: The state file format this version reads and writes.
STATE_VERSION = 1
_AUTH_CLAIMS = "https://api.openai.com/auth"
# Per-account files of a CODEX_HOME that are never linked from the base home.
_PRIVATE_ENTRIES = frozenset({"auth.json", "auth.json.lock", "auth.lock", ".credentials.json"})
# Created in the base home when missing, so that every account links to one
# shared folder instead of Codex creating a private one in an account home.
# The writer locks are shared too: Codex's guard against two processes
# writing one thread must hold across accounts.
_SHARED_DIRS = ("sessions", "archived_sessions", "thread-writer-locks")
_MAX_AUTH_BYTES = 1024 * 1024
_JITTER = timedelta(seconds=60)
# A quarantined login is "<UTC time>-<random>-auth.json", its reason beside it.
_QUARANTINE_SUFFIX = "-auth.json"
_REASON_SUFFIX = ".reason"
# ... and what login it is: {"account": name, "account_id": id} (JSON).
_META_SUFFIX = ".meta"
# A leftover temporary copy of a login (a process died halfway) is deleted only
# when it is provably a duplicate, and no sooner than this after it was written.
_STALE_TEMP_AGE = timedelta(minutes=10)
# In the folder of an account removed while in use (it stays where the running
# Codex expects its home until the last occupant leaves, then is set aside).
_REMOVED_MARKER = "removed.json"
# Where a removal sets a folder aside: ".removed-<name>-<time>-<hex>".
_ASIDE_RE = re.compile(rf"\.removed-({ACCOUNT_NAME_PATTERN})-\d{{8}}T\d{{6}}-[0-9a-f]+")
# An exclusive claim held for a few file operations (no heartbeat): ample.
_CLAIM_TTL = 60.0
_T = TypeVar("_T")


class AuthMode(enum.Enum):
    """How an account signs in to Codex."""

    CHATGPT = "chatgpt"
    API_KEY = "apikey"


@attrs.frozen(kw_only=True)
class Identity:
    """Who an auth.json belongs to, read from its id_token without verifying it.

    For API-key logins ``account_id`` is a fingerprint of the key
    (``apikey-`` + 16 hex digits of its SHA-256), never the key.
    """

    auth_mode: AuthMode
    account_id: str
    email: str | None = None
    plan_type: str | None = None
    user_id: str | None = None


@attrs.frozen(kw_only=True)
class Cooldown:
    """An account blocked until a window resets."""

    window: WindowKind
    blocked_until: datetime
    reason: str
    recorded_at: datetime


@attrs.frozen(kw_only=True)
class Account:
    """One account of the pool, as the state file records it."""

    name: str
    identity: Identity
    added_at: datetime
    last_snapshot: QuotaSnapshot | None = None
    cooldowns: tuple[Cooldown, ...] = ()

    def blocked_until(self, now: datetime) -> datetime | None:
        """When the last cooldown still in force ends, or None if none is."""
        ends = [c.blocked_until for c in self.cooldowns if c.blocked_until > now]
        return max(ends) if ends else None


@attrs.frozen(kw_only=True)
class AccountStatus:
    """An account with what concurrent supervisors need to know about it now."""

    account: Account
    home: Path
    blocked_until: datetime | None
    occupants: tuple[LeaseRecord, ...]


@final
@attrs.frozen(kw_only=True)
class QuarantinedAuth:
    """An auth.json that could not be taken back into its account, kept aside.

    It may hold the only live refresh token of its account, so it stays (0600,
    in ``<root>/quarantine/<account>/``) until
    :meth:`AccountPool.adopt_quarantined` takes it back or finds the
    account's own auth.json at least as new. ``account`` is the name it was
    quarantined under; ``account_id`` the account id of the login (from its
    tokens; ``None`` when it cannot be read), which decides the account it
    belongs to (:meth:`AccountPool.owner_of`). ``reason`` says why the last
    attempt failed; ``since`` is when it was put aside.
    """

    account: str
    path: Path
    reason: str
    since: datetime
    account_id: str | None = None


@final
@attrs.frozen(kw_only=True)
class LeftoverFolder:
    """A folder under ``<root>/accounts`` of no account in the pool; it holds a login.

    ``kind``: ``"in_use"`` — removed while in use, set aside once its last
    session ends; ``"outside"`` — ``<root>/accounts/<name>`` outside the pool
    (a removal or import interrupted), adopted by an import or login of the
    same account, set aside by ``remove``; ``"set_aside"`` — set aside by a
    removal (``.removed-<name>-...``), the user's to keep or delete.
    """

    name: str
    path: Path
    kind: Literal["in_use", "outside", "set_aside"]


@attrs.frozen(kw_only=True)
class _PoolState:
    version: int = STATE_VERSION
    accounts: dict[str, Account] = attrs.field(factory=dict)


def _masked_or_none(url: str | None) -> str:
    return repr(None if url is None else _masked(url))


def _str_or_none(value: object) -> str | None:
    return value if isinstance(value, str) and value else None


def identity_from_auth(data: bytes | str | Mapping[str, Any]) -> Identity:
    """Read the identity of an auth.json (its bytes, text or parsed object).

    Raises :class:`~codex_supervisor.errors.AuthError` when it holds neither a
    ChatGPT login with an account id nor an API key.
    """
    if isinstance(data, Mapping):
        auth: Any = data
    else:
        try:
            auth = json.loads(data)
        except ValueError as exc:
            raise AuthError("auth.json is not valid JSON") from exc
        except RecursionError as exc:
            raise AuthError("auth.json is nested too deeply") from exc
    if not isinstance(auth, Mapping):
        raise AuthError("auth.json is not a JSON object")
    tokens = auth.get("tokens")
    mode = auth.get("auth_mode")
    if isinstance(tokens, Mapping) and mode in (None, "chatgpt", "chatgptAuthTokens"):
        claims = decode_jwt_claims(tokens.get("id_token"))
        auth_claims = claims.get(_AUTH_CLAIMS)
        auth_claims = auth_claims if isinstance(auth_claims, Mapping) else {}
        account_id = _str_or_none(tokens.get("account_id")) or _str_or_none(
            auth_claims.get("chatgpt_account_id")
        )
        if not account_id or not _str_or_none(tokens.get("refresh_token")):
            raise AuthError("auth.json has ChatGPT tokens but no account id or refresh token")
        return Identity(
            auth_mode=AuthMode.CHATGPT,
            account_id=account_id,
            email=_str_or_none(claims.get("email")),
            plan_type=_str_or_none(auth_claims.get("chatgpt_plan_type")),
            user_id=_str_or_none(auth_claims.get("chatgpt_user_id"))
            or _str_or_none(auth_claims.get("user_id")),
        )
    key = _str_or_none(auth.get("OPENAI_API_KEY"))
    if key:
        digest = hashlib.sha256(key.encode()).hexdigest()[:16]
        return Identity(auth_mode=AuthMode.API_KEY, account_id=f"apikey-{digest}")
    raise AuthError("auth.json holds neither a ChatGPT login nor an API key")


def _read_private_file(path: Path) -> bytes:
    """Read an auth.json we are about to take over, refusing unsafe sources."""
    try:
        info = path.lstat()
    except FileNotFoundError as exc:
        raise AuthError(f"no auth.json at {path}") from exc
    except OSError as exc:  # a parent that is a file, no permission, a name too long
        raise AuthError(f"cannot read {path}: {exc}") from exc
    if stat.S_ISLNK(info.st_mode):
        raise AuthError(f"refusing {path}: it is a symbolic link; pass the real file")
    if not stat.S_ISREG(info.st_mode):
        raise AuthError(f"refusing {path}: not a regular file")
    if info.st_mode & 0o007:
        raise AuthError(
            f"refusing {path}: readable or writable by other users "
            f"(mode {stat.S_IMODE(info.st_mode):o}); chmod 600 it first"
        )
    if info.st_size > _MAX_AUTH_BYTES:
        raise AuthError(f"refusing {path}: {info.st_size} bytes is not an auth.json")
    try:
        # O_NOFOLLOW: a link swapped in since lstat fails here (ELOOP).
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
        with os.fdopen(fd, "rb") as fh:
            return fh.read(_MAX_AUTH_BYTES + 1)
    except OSError as exc:
        raise AuthError(f"cannot read {path}: {exc}") from exc


def _warn_if_exposed(auth_path: Path) -> None:
    """Tighten an account's auth.json that became readable by others, saying so."""
    try:
        mode = stat.S_IMODE(auth_path.lstat().st_mode)
    except FileNotFoundError:
        return
    if mode & 0o077:
        log.warning(
            "%s was readable or writable by others (mode %o): set back to 600", auth_path, mode
        )
        auth_path.chmod(0o600)


def _mkdir_private(path: Path) -> None:
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    path.chmod(0o700)


#: Runs ``codex login``: (argv, env, stdin text or None) -> exit code.
LoginRunner = Callable[[Sequence[str], Mapping[str, str], "str | None"], int]


def _run_login(argv: Sequence[str], env: Mapping[str, str], stdin_text: str | None) -> int:
    # The login flow is interactive (browser or device code): it keeps the
    # caller's terminal. An API key goes in on stdin, never in argv.
    try:
        result = subprocess.run(  # noqa: S603 - argv built by us, no shell
            list(argv),
            env=dict(env),
            input=stdin_text,
            text=True,
            check=False,
        )
    except (FileNotFoundError, PermissionError, NotADirectoryError) as exc:
        raise CodexNotFoundError(f"cannot run Codex at {argv[0]!r}: {exc.strerror}") from exc
    return result.returncode


def _absolute(path: str | os.PathLike[str]) -> Path:
    """``path`` made absolute against the working folder now (Codex runs elsewhere)."""
    return Path(path).absolute()


@final
@attrs.define
class AccountPool:
    """The accounts the supervisor may run Codex under, and their shared state.

    ``root`` defaults to ``$CODEX_SUPERVISOR_HOME`` or ``~/.codex-supervisor``;
    ``base_codex_home`` to ``$CODEX_HOME`` or ``~/.codex``. State methods are
    synchronous (short file operations under the pool lock); occupancy is
    async because leases heartbeat.
    """

    root: Path = attrs.field(factory=default_pool_root, converter=_absolute)
    base_codex_home: Path = attrs.field(factory=default_base_codex_home, converter=_absolute)
    clock: Clock = attrs.field(factory=SystemClock)
    lock_timeout: float = 10.0
    #: A Redis URL (``redis://host:6379/0``) for a pool shared by several
    #: machines: leases, state and logins live there (see
    #: :mod:`.credentials`); None keeps them in the pool folder.
    backend: str | None = attrs.field(default=None, kw_only=True, repr=_masked_or_none)
    #: The pool's name in a shared backend (several pools may share a server).
    pool_name: str = attrs.field(default="default", kw_only=True)
    #: This machine and pool folder as a shared backend knows them.
    site: str = attrs.field(
        default=attrs.Factory(
            lambda self: f"{socket.gethostname()}:{self.root.resolve()}", takes_self=True
        ),
        kw_only=True,
    )
    #: Seals the logins of a shared pool; by default from the environment.
    credential_key: CredentialKey | None = attrs.field(default=None, kw_only=True, repr=False)
    leases: LeaseBackend = attrs.field(
        default=attrs.Factory(lambda self: self._default_leases(), takes_self=True)
    )
    #: Where the pool state document lives (``<root>/state.json`` by default).
    state: StateStore = attrs.field(
        default=attrs.Factory(lambda self: self._default_state(), takes_self=True)
    )
    #: The logins shared between the machines of a pool (None: one machine).
    credentials: RedisCredentialStore | None = attrs.field(
        default=attrs.Factory(lambda self: self._default_credentials(), takes_self=True),
        kw_only=True,
    )
    # Quarantined copies of safe logins that could not be deleted (said once).
    _undeletable: set[Path] = attrs.field(factory=set, init=False, repr=False, eq=False)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **kwargs: Any) -> AccountPool:
        """A pool at the folders and backend the environment names (see :mod:`.config`)."""
        kwargs.setdefault("backend", default_backend(environ))
        if kwargs["backend"] is not None and kwargs.get("credential_key") is None:
            kwargs["credential_key"] = CredentialKey.from_env(environ)
        return cls(
            root=default_pool_root(environ),
            base_codex_home=default_base_codex_home(environ),
            **kwargs,
        )

    def _redis_url(self) -> str | None:
        if self.backend is None:
            return None
        if not self.backend.startswith(("redis://", "rediss://", "unix://")):
            raise ConfigError(
                "a pool backend is a Redis URL (redis://host:6379/0, rediss:// for TLS), "
                f"got {_masked(self.backend)!r}"
            )
        return self.backend

    def _default_leases(self) -> LeaseBackend:
        url = self._redis_url()
        if url is None:
            return FileLeaseBackend(self.root / "leases", clock=self.clock)
        from .lease_redis import RedisLeaseBackend  # noqa: PLC0415 - the optional extra

        return RedisLeaseBackend(url, prefix=f"codex-supervisor:{self.pool_name}:", site=self.site)

    def _default_state(self) -> StateStore:
        url = self._redis_url()
        if url is None:
            return FileStateStore(self.root, lock_timeout=self.lock_timeout)
        from .state_store import RedisStateStore  # noqa: PLC0415

        return RedisStateStore(url, pool=self.pool_name, lock_timeout=self.lock_timeout)

    def _default_credentials(self) -> RedisCredentialStore | None:
        url = self._redis_url()
        if url is None:
            return None
        key = self.credential_key or CredentialKey.from_env()
        if key is None:
            raise CredentialError(
                "a pool shared in Redis seals its logins with a key of yours: make one with "
                "`head -c 32 /dev/urandom | base64 > KEYFILE` (chmod 600), give the same "
                "file to every machine and set CODEX_SUPERVISOR_CREDENTIAL_KEY_FILE=KEYFILE"
            )
        return RedisCredentialStore(url, key, pool=self.pool_name)

    # -- paths -----------------------------------------------------------------

    @property
    def state_path(self) -> Path:
        """The pool state file of a file store (``<root>/state.json`` otherwise: none)."""
        return (
            self.state.path if isinstance(self.state, FileStateStore) else self.root / "state.json"
        )

    @property
    def backup_path(self) -> Path:
        """The previous good version of a file store's state file."""
        if isinstance(self.state, FileStateStore):
            return self.state.backup_path
        return self.root / "state.json.bak"

    def account_home(self, name: str) -> Path:
        """The CODEX_HOME of account ``name``."""
        return self.root / "accounts" / _check_name(name) / "home"

    # -- state -----------------------------------------------------------------

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        _mkdir_private(self.root)
        with self.state.locked(timeout=self.lock_timeout):
            yield

    def _load(self) -> _PoolState:
        raw = self.state.read()
        if raw is None:
            return _PoolState()
        try:
            data = json.loads(raw)
        except ValueError as exc:
            raise StateError(self._corrupt_message("not valid JSON")) from exc
        except RecursionError as exc:
            raise StateError(self._corrupt_message("nested too deeply")) from exc
        version = data.get("version") if isinstance(data, dict) else None
        if not isinstance(version, int):
            raise StateError(self._corrupt_message("no version"))
        if version > STATE_VERSION:
            raise StateError(
                f"{self.state.where} was written by a newer codex_supervisor "
                f"(state version {version}; this one reads {STATE_VERSION})"
            )
        try:
            return _convert.structure(data, _PoolState, what="pool state")
        except StateError as exc:
            raise StateError(self._corrupt_message(str(exc))) from exc

    def _corrupt_message(self, why: str) -> str:
        backup = self.state.backup()
        where = f"; the previous version is {backup}" if backup else ""
        return f"pool state {self.state.where} is corrupt ({why}); left untouched{where}"

    def _save(self, state: _PoolState) -> None:
        data = json.dumps(_convert.unstructure(state), indent=2, sort_keys=True).encode()
        self.state.write(data + b"\n")

    def _update(self, change: Callable[[_PoolState], _PoolState]) -> _PoolState:
        with self._locked():
            state = change(self._load())
            self._save(state)
            return state

    def accounts(self) -> list[Account]:
        """Every account, sorted by name."""
        state = self._load()
        return [state.accounts[name] for name in sorted(state.accounts)]

    def get(self, name: str) -> Account:
        """The account called ``name``; ConfigError if there is none."""
        account = self._load().accounts.get(_check_name(name))
        if account is None:
            raise ConfigError(f"no account named {name!r} in {self.root}")
        return account

    def state_token(self) -> object | None:
        """A cheap fingerprint of the pool state, ``None`` while there is none.

        It changes whenever another process rewrites the state (the file
        store: inode, size and mtime of a whole-file rename; Redis: a version
        counter), so a waiter can poll it instead of re-reading.
        """
        return self.state.token()

    def record_snapshot(self, snapshot: QuotaSnapshot) -> bool:
        """Keep ``snapshot`` as the account's last one unless a newer one is stored.

        A cooldown recorded before ``snapshot`` was observed is lifted when the
        snapshot shows that its window has room again (the window reset, or a
        guessed block turned out wrong): a block must not outlive the evidence.
        """
        kept = False

        def change(state: _PoolState) -> _PoolState:
            nonlocal kept
            account = _existing(state, snapshot.account)
            cooldowns = tuple(c for c in account.cooldowns if not _lifted_by(c, snapshot))
            if len(cooldowns) != len(account.cooldowns):
                log.info(
                    "%s: quota observed at %s shows room again; cooldown lifted",
                    account.name,
                    snapshot.observed_at.isoformat(),
                )
            old = account.last_snapshot
            if old is not None and old.observed_at > snapshot.observed_at:
                if cooldowns == account.cooldowns:
                    return state
                return _with_account(state, attrs.evolve(account, cooldowns=cooldowns))
            kept = True
            return _with_account(
                state, attrs.evolve(account, last_snapshot=snapshot, cooldowns=cooldowns)
            )

        self._update(change)
        return kept

    def set_cooldown(
        self, name: str, *, window: WindowKind, blocked_until: datetime, reason: str
    ) -> Cooldown:
        """Block ``name`` until ``blocked_until`` for ``window``; never shortens a block.

        At most one cooldown per window is kept: the later of the existing and
        the new one (concurrent writers merge under the pool lock). A block
        for a known window replaces any block of kind ``OTHER``: that one was
        only a backoff guessed while the reset time was unknown, and the
        known reset is the truth it stood in for. Cooldowns already over are
        dropped. ``reason`` should state absolute times: it is shown long
        after it was written. Returns the cooldown in force for ``window``
        afterwards.
        """
        now = self.clock.now()
        result: Cooldown | None = None

        def change(state: _PoolState) -> _PoolState:
            nonlocal result
            account = _existing(state, name)
            live = [c for c in account.cooldowns if c.blocked_until > now]
            same = [c for c in live if c.window is window]
            others = [c for c in live if c.window is not window]
            if window is not WindowKind.OTHER:
                others = [
                    c for c in others if not (c.window is WindowKind.OTHER and c.recorded_at <= now)
                ]
            new = Cooldown(
                window=window, blocked_until=blocked_until, reason=reason, recorded_at=now
            )
            result = max([*same, new], key=lambda c: c.blocked_until)
            cooldowns = tuple(sorted([*others, result], key=lambda c: c.window.value))
            return _with_account(state, attrs.evolve(account, cooldowns=cooldowns))

        self._update(change)
        assert result is not None
        return result

    def clear_cooldowns(self, name: str, *, window: WindowKind | None = None) -> list[Cooldown]:
        """Lift the cooldowns of ``name`` (all, or ``window``'s); an explicit user decision.

        Returns the cooldowns that were lifted (still in force or not).
        """
        lifted: list[Cooldown] = []

        def change(state: _PoolState) -> _PoolState:
            account = _existing(state, name)
            keep = tuple(
                c for c in account.cooldowns if window is not None and c.window is not window
            )
            lifted.extend(c for c in account.cooldowns if c not in keep)
            return _with_account(state, attrs.evolve(account, cooldowns=keep))

        self._update(change)
        return lifted

    # -- account homes -----------------------------------------------------------

    def prepare_home(self, name: str) -> Path:
        """Refresh the account home of ``name``, an account of the pool, and return it.

        Links every entry of the base CODEX_HOME not yet linked (entries that
        appeared since the last launch included), drops links whose target
        is gone, and leaves real files of the account home alone. A copy of
        an older login left by an import or login that died halfway is
        deleted once provably redundant.

        It never creates a home for an account outside the pool state, nor
        the account's folder itself (only an import or a login makes that):
        for an account removed meanwhile it raises
        :class:`~codex_supervisor.errors.AccountGone`, so no Codex starts in
        an empty home without a login. A file operation that fails raises
        :class:`~codex_supervisor.errors.StateError`.
        """
        account_dir = self.account_home(name).parent
        if name not in self._load().accounts:
            raise AccountGone(name, "it was removed, or never added")
        try:
            return self._prepare_home(name, create=False)
        except FileNotFoundError as exc:
            if _lexists(account_dir):
                raise StateError(f"cannot prepare the home of account {name!r}: {exc}") from exc
            if name not in self._load().accounts:  # set aside meanwhile
                raise AccountGone(name, "it was removed meanwhile") from exc
            raise StateError(
                f"account {name!r} has no folder at {account_dir} (deleted by hand?), so no "
                f"login either: `accounts remove {name}`, then add it again ({exc})"
            ) from exc
        except OSError as exc:
            raise StateError(f"cannot prepare the home of account {name!r}: {exc}") from exc

    def _prepare_home(self, name: str, *, create: bool = True) -> Path:
        """:meth:`prepare_home` without its checks; ``create`` makes the account folder too."""
        home = self.account_home(name)
        if create:
            _mkdir_private(home.parent)
            _mkdir_private(home)
        else:
            # Not the folder itself: one set aside meanwhile must not come back empty.
            home.mkdir(mode=0o700, exist_ok=True)
            home.chmod(0o700)
        self._link_base_entries(home)
        _warn_if_exposed(home / "auth.json")
        _drop_stale_held(home)
        return home

    def _link_base_entries(self, home: Path) -> None:
        base = self.base_codex_home
        if not base.exists():
            _mkdir_private(base)
        for shared in _SHARED_DIRS:
            (base / shared).mkdir(mode=0o700, exist_ok=True)
        for entry in sorted(base.iterdir()):
            if entry.name in _PRIVATE_ENTRIES:
                continue
            target = home / entry.name
            if target.is_symlink():
                if target.readlink() == entry:
                    continue
                # Another process may relink it at the same moment.
                target.unlink(missing_ok=True)
            elif target.exists():
                # Never replace a real file or folder of the account home: it
                # may hold data. A private sessions/ would hide rollouts from
                # the other accounts, so say so loudly.
                level = logging.WARNING if entry.name in _SHARED_DIRS else logging.DEBUG
                log.log(level, "account home %s has its own %s; not linking it", home, entry.name)
                continue
            try:
                target.symlink_to(entry)
            except FileExistsError:
                # Another process preparing the same home linked it first:
                # fine if it is the same link, else leave what is there.
                if not (target.is_symlink() and target.readlink() == entry):
                    log.warning("%s appeared while linking it; left as it is", target)
        for link in home.iterdir():
            try:
                if link.is_symlink() and not link.exists() and link.readlink().parent == base:
                    link.unlink(missing_ok=True)
            except OSError:  # removed by another process meanwhile
                continue

    def import_auth(self, name: str, source: Path | str, *, copy: bool = False) -> Account:
        """Add account ``name`` from an existing auth.json, which is **moved**.

        A refresh token is single-use: a copy would leave two holders of one
        token family, and whichever refreshes second is refused (or gets the
        family revoked). ``copy=True`` allows it anyway, with a warning.
        Symlinked, world-readable and duplicate (same account id) sources are
        refused.

        It is all or nothing: when the pool state cannot be saved, the file
        goes back where it was (with its mode) and a folder made for it is
        removed again; the error propagates.

        A folder ``<root>/accounts/<name>`` outside the pool state (an import
        interrupted by an older version, an account removed while in use) is
        adopted when it holds no auth.json or a login of the same account id,
        and refused when it holds another. Of its login and ``source`` the
        newer is kept, as by a re-login: an older or equal ``source`` — or
        the folder's own auth.json given as ``source`` — is left where it is.

        A file operation that fails raises
        :class:`~codex_supervisor.errors.StateError` (after the undo).
        """
        try:
            account = self._import_auth(name, Path(source), copy=copy)
        except OSError as exc:
            if isinstance(exc, SupervisorError):  # LeaseTimeout: the pool lock is busy
                raise
            raise StateError(f"could not import {source} as account {name!r}: {exc}") from exc
        self._publish_quietly(name)
        return account

    def _import_auth(self, name: str, src: Path, *, copy: bool) -> Account:
        _check_name(name)
        data = _read_private_file(src)
        identity = identity_from_auth(data)
        src_mode = stat.S_IMODE(src.lstat().st_mode)
        with self._locked():
            state = self._load()
            _check_new(state, name, identity)
            account_dir = self.root / "accounts" / name
            existed = _lexists(account_dir)
            current = self._leftover_login(account_dir, identity) if existed else None
            dest = self.account_home(name) / "auth.json"
            account = Account(name=name, identity=identity, added_at=self.clock.now())
            if current is not None and (_same_file(src, dest) or not _replaces(data, current)):
                kept = attrs.evolve(account, identity=identity_from_auth(current))
                self._adopt_as_it_is(state, kept, src)
                return kept
            held: Path | None = None  # the folder's older login, until the save succeeds
            placed: str | None = None  # how the source got to dest: "copied" or "moved"
            try:
                self._prepare_home(name)
                if current is not None:
                    held = _hold_aside(dest)
                if copy:
                    write_atomic(dest, data)
                    placed = "copied"
                elif _rename_into(src, dest):
                    # One atomic rename: whatever Codex may have just written
                    # to the source moves with it.
                    placed = "moved"
                else:  # another filesystem: copy, then remove the source
                    write_atomic(dest, data)
                    placed = "copied"
                    src.unlink()
                    placed = "moved"
                dest.chmod(0o600)
                self._save(_with_account(state, account))
            except BaseException:
                try:
                    _undo_import(
                        account_dir,
                        src,
                        dest,
                        data,
                        placed=placed,
                        held=held,
                        existed=existed,
                        mode=src_mode,
                    )
                except Exception:
                    log.exception("could not undo the failed import of %s into %r", src, name)
                raise
            if held is not None:
                held.unlink(missing_ok=True)
            _unmark_removed(account_dir)
        if copy:
            log.warning(
                "copied %s into account %r: two copies of one single-use refresh token "
                "now exist; use only one of them from now on",
                src,
                name,
            )
        else:
            log.info("moved %s into account %r (%s)", src, name, dest)
        return account

    def _adopt_as_it_is(self, state: _PoolState, account: Account, src: Path) -> None:
        """Put a folder outside the pool state back in it with its own (newer) login."""
        home = self._prepare_home(account.name)
        self._save(_with_account(state, account))
        _unmark_removed(home.parent)
        if not _same_file(src, home / "auth.json"):
            log.warning(
                "kept %s: it is as new as %s or newer; %s was left where it is",
                home / "auth.json",
                src,
                src,
            )
        log.info("adopted the folder %s as account %r", home.parent, account.name)

    def login(
        self,
        name: str,
        *,
        codex: Path | str = "codex",
        device_auth: bool = False,
        api_key: str | None = None,
        environ: Mapping[str, str] | None = None,
        runner: LoginRunner = _run_login,
    ) -> Account:
        """Run ``codex login`` for account ``name`` (new, or a re-login of it).

        The login runs in a staging home, so a failed or cancelled login
        changes nothing, and neither does one whose pool state cannot be
        saved (the new login is then discarded). A re-login must be the same
        account, and its auth.json replaces the old one only if it is newer.
        A folder ``<root>/accounts/<name>`` outside the pool state is adopted
        as by :meth:`import_auth`.
        """
        account = self._login(
            name,
            codex=codex,
            device_auth=device_auth,
            api_key=api_key,
            environ=environ,
            runner=runner,
        )
        self._publish_quietly(name)
        return account

    def _login(
        self,
        name: str,
        *,
        codex: Path | str,
        device_auth: bool,
        api_key: str | None,
        environ: Mapping[str, str] | None,
        runner: LoginRunner,
    ) -> Account:
        _check_name(name)
        accounts_dir = self.root / "accounts"
        _mkdir_private(accounts_dir)
        staging = accounts_dir / f".login-{name}-{secrets.token_hex(4)}"
        try:
            home = staging / "home"
            _mkdir_private(staging)
            _mkdir_private(home)
            self._link_base_entries(home)
            argv = [os.fspath(codex), "-c", 'cli_auth_credentials_store="file"', "login"]
            if device_auth:
                argv.append("--device-auth")
            if api_key is not None:
                argv.append("--with-api-key")
            code = runner(argv, child_environment(home, environ), api_key)
            if code != 0:
                raise AuthError(f"codex login exited with status {code}; nothing changed")
            new_auth = home / "auth.json"
            if not new_auth.is_file():
                raise AuthError("codex login succeeded but wrote no auth.json (credential store?)")
            data = new_auth.read_bytes()
            identity = identity_from_auth(data)
            with self._locked():
                state = self._load()
                existing = state.accounts.get(name)
                account_dir = accounts_dir / name
                if existing is not None:
                    if existing.identity.account_id != identity.account_id:
                        raise AuthError(
                            f"that login is a different account than {name!r}; nothing changed"
                        )
                    account = attrs.evolve(existing, identity=identity)
                    self._commit_login(state, account, new_auth, data)
                elif _lexists(account_dir):
                    _check_new(state, name, identity)
                    self._leftover_login(account_dir, identity)
                    account = Account(name=name, identity=identity, added_at=self.clock.now())
                    self._commit_login(state, account, new_auth, data)
                    _unmark_removed(account_dir)
                else:
                    _check_new(state, name, identity)
                    account = Account(name=name, identity=identity, added_at=self.clock.now())
                    staging.rename(account_dir)
                    try:
                        self._save(_with_account(state, account))
                    except BaseException:
                        # Back to staging, which goes below: nothing changed.
                        account_dir.rename(staging)
                        raise
            return account
        finally:
            shutil.rmtree(staging, ignore_errors=True)

    def _commit_login(self, state: _PoolState, account: Account, new: Path, data: bytes) -> None:
        """Put the login ``new`` in ``account``'s home if it is newer, and save the account.

        All or nothing: when the save fails, the home's auth.json is what it
        was. The home's auth.json is replaced in one rename, never missing
        for a Codex that may be running on it.
        """
        dest = self._prepare_home(account.name) / "auth.json"
        try:
            current: bytes | None = dest.read_bytes()
        except FileNotFoundError:
            current = None
        if current is not None and not _replaces(data, current):
            log.warning("kept %s: it is newer than the login just made", dest)
            self._save(_with_account(state, account))
            return
        held = _hold_aside(dest) if current is not None else None
        try:
            new.chmod(0o600)
            new.replace(dest)
            self._save(_with_account(state, account))
        except BaseException:
            if _holds(dest, data):  # else nothing was replaced, or Codex wrote since
                if held is not None:
                    held.replace(dest)
                else:
                    dest.unlink(missing_ok=True)
            raise
        finally:
            if held is not None:
                held.unlink(missing_ok=True)

    def _leftover_login(self, account_dir: Path, identity: Identity) -> bytes | None:
        """The auth.json of a folder outside the pool state, if it may be adopted for ``identity``.

        ``None`` when it has none; :class:`~codex_supervisor.errors.ConfigError`
        when it is no folder or holds another (or an unreadable) login.
        """
        if account_dir.is_symlink() or not account_dir.is_dir():
            raise ConfigError(
                f"{account_dir} exists but is not an account folder; move it away first"
            )
        auth = account_dir / "home" / "auth.json"
        if not _lexists(auth):
            return None
        try:
            current = _read_private_file(auth)
            theirs = identity_from_auth(current).account_id
        except AuthError as exc:
            raise ConfigError(
                f"{account_dir} exists but is not in the pool state, and its auth.json "
                f"cannot be read ({exc}); move it away first"
            ) from exc
        if theirs != identity.account_id:
            raise ConfigError(
                f"{account_dir} exists but is not in the pool state and holds another "
                f"login (account id {theirs}); remove it (it is set aside) or move it away first"
            )
        return current

    def adopt_auth(self, name: str, source: Path | str) -> bool:
        """Take an auth.json Codex wrote outside ``name``'s home, if it is newer.

        A pooled app-server reads its account's auth.json through a link; if
        Codex ever replaced that link with a file (a refresh written by
        rename), the file holds the only live refresh token and must come
        back. It replaces the account's auth.json only when it belongs to the
        same account and its ``last_refresh`` is strictly newer; otherwise the
        account's file is kept. Returns whether it was taken. ``source`` is
        left in place.
        """
        data = _read_private_file(Path(source))
        with self._locked():
            account = _existing(self._load(), name)
            if identity_from_auth(data).account_id != account.identity.account_id:
                log.warning("not adopting %s: it is not %r's login", source, name)
                return False
            dest = self.account_home(name) / "auth.json"
            try:
                current = dest.read_bytes()
            except FileNotFoundError:
                current = b""
            old_time, new_time = last_refresh(current), last_refresh(data)
            if current and (new_time is None or (old_time is not None and new_time <= old_time)):
                return False
            write_atomic(dest, data, mode=0o600)
        log.warning("adopted a newer auth.json of %r written outside its home", name)
        return True

    # -- logins that could not be taken back --------------------------------------

    @property
    def quarantine_path(self) -> Path:
        """Where logins that could not be taken back wait: ``<root>/quarantine/<account>/``."""
        return self.root / "quarantine"

    def take_back_auth(self, name: str, source: Path | str) -> QuarantinedAuth | None:
        """Adopt an auth.json Codex left outside ``name``'s home, or quarantine it.

        The login goes to the pool account of its own account id (read from
        its tokens, as :meth:`import_auth` identifies a login) — ``name``'s,
        unless the file says otherwise. Returns ``None`` when ``source`` holds
        nothing that needs keeping: it was adopted (:meth:`adopt_auth`), or
        that account's own auth.json is at least as new. Otherwise — the pool
        lock was busy, no account of the pool has its account id any more,
        the file's mode was unsafe, or it cannot be compared — a copy goes
        into quarantine (0600, never over another file, its account id
        recorded beside it), the failure is logged at ERROR and the record
        returned; :meth:`adopt_quarantined` tries again. ``source`` is left
        in place: only once this returns may the caller delete it. Raises
        :class:`~codex_supervisor.errors.AuthError` or :class:`OSError` when
        not even the quarantine could be written; ``source`` is then the only
        copy and must be kept.
        """
        src = Path(source)
        data = _read_auth_file(src)
        account_id = _login_account_id(data)
        reason: str | None
        try:
            owner = _owner_in(self._load(), account_id, name)
            if owner is None:
                reason = _no_owner_reason(account_id, name)
            else:
                taken = self.adopt_auth(owner, src)
                reason = None if taken else self._kept_because(owner, data)
        except (SupervisorError, OSError) as exc:
            reason = f"could not take it back: {exc}"
        if reason is None:
            return None
        if account_id is None:
            # Unreadable as a login: it stays tied to the account it came from.
            with contextlib.suppress(SupervisorError, OSError):
                account_id = self.get(name).identity.account_id
        return self._quarantine(name, data, reason, account_id)

    def quarantine_listing(self) -> tuple[str, ...]:
        """The logins waiting in quarantine as ``"<folder>/<file>"`` names, sorted.

        Directory reads only, no file is opened: cheap enough to ask before
        every choice of account, and it changes whenever a login is put in
        quarantine or leaves it. Raises
        :class:`~codex_supervisor.errors.StateError` when the quarantine
        cannot be read.
        """
        return tuple(f"{folder.name}/{path.name}" for folder, path in self._quarantine_files())

    def _quarantine_files(self) -> list[tuple[Path, Path]]:
        base = self.quarantine_path
        try:
            folders = [p for p in base.iterdir() if _NAME_RE.fullmatch(p.name) and p.is_dir()]
        except (FileNotFoundError, NotADirectoryError):
            return []
        except OSError as exc:
            raise StateError(f"cannot read the quarantine {base}: {exc}") from exc
        found: list[tuple[Path, Path]] = []
        for folder in sorted(folders):
            try:
                paths = [p for p in folder.iterdir() if _is_quarantined_name(p.name)]
            except (FileNotFoundError, NotADirectoryError):
                continue
            except OSError as exc:
                raise StateError(f"cannot read the quarantine {folder}: {exc}") from exc
            found.extend((folder, path) for path in sorted(paths))
        return found

    def quarantined(self, name: str | None = None) -> list[QuarantinedAuth]:
        """The logins waiting in quarantine, oldest first.

        With ``name``, only those of that account: the ones whose account id
        is ``name``'s (whatever name they were quarantined under), or — when
        ``name`` is no account of the pool — the ones quarantined under
        ``name`` that no account of the pool owns.
        """
        items = self._quarantined_items()
        if name is None:
            return items
        _check_name(name)
        state = self._load()
        return [i for i in items if _belongs(state, i, name)]

    def _quarantined_items(self) -> list[QuarantinedAuth]:
        found: list[QuarantinedAuth] = []
        for folder, path in self._quarantine_files():
            try:
                reason_path = path.with_name(path.name + _REASON_SUFFIX)
                reason = reason_path.read_text(errors="replace").strip()
            except OSError:
                reason = ""
            found.append(
                QuarantinedAuth(
                    account=folder.name,
                    path=path,
                    reason=reason or "unknown (no reason was recorded)",
                    since=_quarantined_at(path),
                    account_id=_quarantined_account_id(path),
                )
            )
        return sorted(found, key=lambda item: (item.since, item.account, item.path.name))

    def owner_of(self, item: QuarantinedAuth) -> str | None:
        """The account of the pool a quarantined login belongs to now, or ``None``.

        The account with its account id (whatever its name); for a login
        whose account id cannot be read, the account it was quarantined
        under, if that name is still in the pool.
        """
        return _owner_in(self._load(), item.account_id, item.account)

    def adopt_quarantined(self, name: str | None = None) -> list[QuarantinedAuth]:
        """Try again to take back every quarantined login (only ``name``'s account's if given).

        Each login goes to the account of its account id, whatever name it
        was quarantined under. A quarantined file is deleted only once its
        login is in that account's home (adopted now, or the account's own
        auth.json is at least as new); otherwise its reason is brought up to
        date (logged at ERROR when it changes). A login no account of the
        pool owns stays until it is imported (``accounts import NAME
        --auth-json PATH``). Returns what is still in quarantine (of
        ``name``'s account: what must keep Codex off it). One item's failure
        never stops the others, and a file whose login is safe but that
        cannot be deleted is logged, not returned.
        """
        self._drop_orphaned_notes()
        self._drop_stale_temp_files()
        state = self._load()
        if name is not None:
            _check_name(name)
        left: list[QuarantinedAuth] = []
        for item in self._quarantined_items():
            if name is not None and not _belongs(state, item, name):
                continue
            owner = _owner_in(state, item.account_id, item.account)
            try:
                reason = self._retry_quarantined(item, owner)
            except Exception as exc:  # one item never stops the others
                log.exception("retrying the quarantined login %s failed", item.path)
                reason = f"could not take it back: {exc}"
            if reason is None:
                continue
            if reason != item.reason:
                _note_reason(item.path, reason)
                log.error(
                    "the quarantined login %s of %r still cannot be taken back: %s",
                    item.path,
                    owner or item.account,
                    reason,
                )
            left.append(attrs.evolve(item, reason=reason))
        return left

    def _retry_quarantined(self, item: QuarantinedAuth, owner: str | None) -> str | None:
        """Take ``item`` back into ``owner``; None once its login is safe, else why not."""
        if owner is None:
            return _no_owner_reason(item.account_id, item.account)
        taken = False
        reason: str | None
        try:
            data = _read_private_file(item.path)
            taken = self.adopt_auth(owner, item.path)
        except (SupervisorError, OSError) as exc:
            if not _lexists(item.path):
                return None  # taken back (or imported) by another process meanwhile
            reason = f"could not take it back: {exc}"
        else:
            reason = None if taken else self._kept_because(owner, data)
        if reason is not None:
            return reason
        if not taken:
            log.info(
                "dropped the quarantined %s: %r's own auth.json is at least as new",
                item.path,
                owner,
            )
        try:
            _release_quarantined(item.path)
        except OSError as exc:
            # The login is safe in the account: the file holds nothing that
            # is not there too, so it keeps nobody off the account.
            if item.path not in self._undeletable:
                self._undeletable.add(item.path)
                log.warning(
                    "the login %s is safe in %r now, but the quarantined copy cannot be "
                    "deleted (%s); delete it by hand",
                    item.path,
                    owner,
                    exc,
                )
        return None

    def _drop_orphaned_notes(self) -> None:
        """Delete the notes of logins that left the quarantine by other means (an import)."""
        for suffix in (_REASON_SUFFIX, _META_SUFFIX):
            with contextlib.suppress(OSError):
                for note in self.quarantine_path.glob(f"*/*{_QUARANTINE_SUFFIX}{suffix}"):
                    if not _lexists(note.with_name(note.name.removesuffix(suffix))):
                        note.unlink(missing_ok=True)

    def _drop_stale_temp_files(self) -> None:
        """Delete temporary files a process that died while quarantining a login left behind.

        Only provably redundant ones, and only when older than
        ``_STALE_TEMP_AGE``: the temporary copy of a login that made it into
        the quarantine (it is linked there, or the same bytes are); never the
        only copy of a login.
        """
        with contextlib.suppress(OSError):
            for temp in self.quarantine_path.glob(f"*/.*{_QUARANTINE_SUFFIX}.*.tmp"):
                final = temp.with_name(temp.name[1:].rsplit(".", 2)[0])
                if _is_stale_copy(temp, final):
                    log.info("deleting %s, a leftover copy of %s", temp, final)
                    temp.unlink(missing_ok=True)

    def ensure_no_quarantine(self, name: str) -> None:
        """Raise :class:`~codex_supervisor.errors.LoginQuarantined` if ``name`` must not run now.

        The safety net before Codex starts in ``name``'s home (a supervised
        run, an app-server spawn, an app-server quota probe): a newer login of
        the account waiting in quarantine means its own auth.json holds a
        spent refresh token. Such logins are first tried again
        (:meth:`adopt_quarantined`); only those still waiting raise. Cheap
        when the quarantine is empty (one directory read).
        """
        _check_name(name)
        if not self._quarantine_files():
            return
        waiting = self.adopt_quarantined(name)
        if waiting:
            raise LoginQuarantined(name, str(waiting[0].path), waiting[0].reason)

    def _kept_because(self, name: str, data: bytes) -> str | None:
        """Why ``data``, which :meth:`adopt_auth` did not take, must be kept; None if stale."""
        try:
            account = self.get(name)
            identity = identity_from_auth(data)
        except SupervisorError as exc:
            return f"could not take it back: {exc}"
        if identity.account_id != account.identity.account_id:
            return f"it is another login than {name!r}'s (another account id)"
        try:
            current = (self.account_home(name) / "auth.json").read_bytes()
        except OSError as exc:
            return f"could not compare it with {name!r}'s auth.json: {exc}"
        old_time, new_time = last_refresh(current), last_refresh(data)
        stale = old_time is not None and new_time is not None and new_time <= old_time
        if current == data or stale:
            return None
        return f"it has no last_refresh: nothing says whether it is newer than {name!r}'s"

    def _quarantine(
        self, name: str, data: bytes, reason: str, account_id: str | None
    ) -> QuarantinedAuth:
        folder = self.quarantine_path / _check_name(name)
        _mkdir_private(self.quarantine_path)
        _mkdir_private(folder)
        since = self.clock.now()
        stamp = since.astimezone(UTC).strftime("%Y%m%dT%H%M%S.%fZ")
        path = folder / f"{stamp}-{secrets.token_hex(4)}{_QUARANTINE_SUFFIX}"
        _write_new_private(path, data)
        _note_meta(path, name=name, account_id=account_id)
        _note_reason(path, reason)
        log.error(
            "an auth.json Codex wrote for %r is not in its home: %s. It may hold the "
            "account's only live refresh token: kept in quarantine at %s and retried later",
            name,
            reason,
            path,
        )
        return QuarantinedAuth(
            account=name, path=path, reason=reason, since=since, account_id=account_id
        )

    def remove(self, name: str, *, force: bool = False) -> Path:
        """Take ``name`` out of the pool; its folder is kept aside, not deleted.

        An account in use — a live occupancy lease: a Codex child, a probe;
        or a lapsed one whose process still runs on this machine: a Codex
        suspended past its lease's TTL, which takes its lease again as it
        resumes — is refused with :class:`AccountInUse`, which names its
        occupants.
        With ``force=True`` it leaves the pool state at once, but its folder
        stays where the running Codex expects its home, which may still
        refresh the auth.json there; it is set aside when the last occupant
        lets go (or by a later ``remove``). Meanwhile the folder is outside
        the pool: a re-import or login of the same account adopts it.

        While removing, the account's occupancy lease is held exclusively,
        so no launch can start on it halfway. A folder
        ``<root>/accounts/<name>`` outside the pool state is set aside the
        same way.

        All or nothing: the state is saved first, then the folder is set
        aside (or marked); when a file operation fails the account goes back
        into the state and :class:`~codex_supervisor.errors.StateError` says
        what failed. Only a crash in between can leave the folder in place
        outside the state — which a re-import or login adopts and a later
        ``remove`` sets aside — never an account listed without its folder.

        Returns where the folder is now: set aside (its auth.json is still a
        live login), or ``<root>/accounts/<name>`` itself when it was in use.
        """
        _check_name(name)
        if name not in self._load().accounts and not _lexists(self.root / "accounts" / name):
            raise ConfigError(f"no account named {name!r}")
        where = _run_blocking(lambda: self._remove(name, force=force))
        if self.credentials is not None and where != self.account_home(name).parent:
            self._forget_shared_login(name, where)
        return where

    def _forget_shared_login(self, name: str, aside: Path) -> None:
        """A removed account's shared login: kept with its folder set aside, then dropped.

        The newest login may be only in the store (another machine refreshed
        it): it is written into the set-aside folder first, so nothing live
        is lost. A store out of reach keeps its record (said, not raised).
        """
        assert self.credentials is not None
        try:
            stored = self.credentials.fetch(name)
            local = aside / "home" / "auth.json"
            if stored is not None and (not local.exists() or local.read_bytes() != stored.data):
                if aside.exists():
                    kept = aside / "kept"
                    kept.mkdir(mode=0o700, exist_ok=True)
                    write_atomic(kept / "auth-from-the-shared-store.json", stored.data)
                else:
                    log.warning("the shared login of %r is kept in the store", name)
                    return
            self.credentials.forget(name)
        except (CredentialError, OSError) as exc:
            log.warning("the shared login of removed account %r stays in the store: %s", name, exc)

    async def _remove(self, name: str, *, force: bool) -> Path:
        occupants: list[LeaseRecord] = []
        for _ in range(3):  # an occupant that just left is no reason to refuse
            record = await self._claim_alone(name, purpose="accounts remove")
            if record is not None or (occupants := await self.occupants(name)):
                break
        try:
            if record is None:
                if not force:
                    raise AccountInUse(name, _describe_occupants(occupants, self.clock.now()))
                log.info(
                    "removing %r while it is in use (%s): its folder stays in place "
                    "until the last session on it ends",
                    name,
                    _describe_occupants(occupants, self.clock.now()),
                )
            where = self._remove_locked(name, in_use=record is None)
        finally:
            if record is not None:
                await self.leases.release(record)
        if record is None:
            # The occupants may have left while it was being marked, none of
            # them seeing the mark: then it goes aside now.
            where = await self._set_aside_if_removed(name) or where
        return where

    async def _claim_alone(self, name: str, *, purpose: str) -> LeaseRecord | None:
        """The exclusive occupancy of ``name`` now, without waiting; None if occupied.

        Occupied is what :meth:`occupants` reports, judged by the lease
        backend itself under its lock, in the same step as the claim: a live
        record, or a lapsed one whose holder still runs (suspended), refuses
        it; only records of holders that are gone are taken over. Held for a
        few file operations only, so it has no heartbeat.
        """
        return await self.leases.try_acquire(
            self.lease_name(name),
            owner=f"{purpose.replace(' ', '-')}-{os.getpid()}-{secrets.token_hex(4)}",
            mode=LeaseMode.EXCLUSIVE,
            ttl=_CLAIM_TTL,
            purpose=purpose,
        )

    def _remove_locked(self, name: str, *, in_use: bool) -> Path:
        """Save the state without ``name``, then mark (in use) or set aside its folder.

        The state goes first, so a crash in between leaves an adoptable folder
        outside the state, never an account listed without its folder. A
        failure puts the account back in the state and raises StateError.
        """
        account_dir = self.root / "accounts" / name
        with self._locked():
            state = self._load()
            kept = {k: v for k, v in state.accounts.items() if k != name}
            listed = len(kept) != len(state.accounts)
            if not listed and not _lexists(account_dir):
                raise ConfigError(f"no account named {name!r}")
            if listed:
                try:
                    self._save(attrs.evolve(state, accounts=kept))
                except (OSError, StateError) as exc:
                    raise StateError(
                        f"cannot remove account {name!r}: the pool state {self.state.where} "
                        f"cannot be saved ({exc}); nothing changed"
                    ) from exc
            aside = self._aside_path(name)
            try:
                if not _lexists(account_dir):
                    return account_dir if in_use else aside
                if in_use:
                    # The running Codex keeps its home (and may refresh its
                    # auth.json there): the folder is marked and stays.
                    _mark_removed(account_dir, self.clock.now())
                    return account_dir
                account_dir.rename(aside)
            except OSError as exc:
                what = "mark" if in_use else "set aside"
                problem = f"cannot {what} its folder {account_dir} ({exc})"
                raise self._undo_removal(name, state, problem, listed=listed) from exc
        _forget_mark(aside)
        return aside

    def _undo_removal(
        self, name: str, state: _PoolState, problem: str, *, listed: bool
    ) -> StateError:
        """Put ``name`` back in the state after its folder could not be moved; what to raise."""
        if not listed:
            return StateError(f"cannot remove {name!r}: {problem}; nothing changed")
        try:
            self._save(state)
        except (OSError, StateError) as exc:
            account_dir = self.root / "accounts" / name
            log.exception("could not put account %r back in the pool state", name)
            return StateError(
                f"removing account {name!r} failed: {problem}, and the pool state could not "
                f"be restored ({exc}). It is out of the pool with its folder left at "
                f"{account_dir}: `accounts import` or `accounts login` of the same account "
                f"adopts it, `accounts remove {name}` sets it aside"
            )
        return StateError(f"cannot remove account {name!r}: {problem}; it stays in the pool")

    def _aside_path(self, name: str) -> Path:
        stamp = self.clock.now().strftime("%Y%m%dT%H%M%S")
        return self.root / "accounts" / f".removed-{name}-{stamp}-{secrets.token_hex(2)}"

    async def _set_aside_if_removed(self, name: str) -> Path | None:
        """Set aside the folder of an account removed while in use, once nobody occupies it.

        Runs as an occupant leaves. Returns where the folder went, or None;
        never raises (a failure is logged, and a later :meth:`remove` sets
        the folder aside).
        """
        account_dir = self.root / "accounts" / name
        if not (account_dir / _REMOVED_MARKER).exists():
            return None
        try:
            record = await self._claim_alone(name, purpose="set aside")
            if record is None:
                return None  # another occupant: the last one sets it aside
            try:
                return await asyncio.to_thread(self._set_aside_locked, name)
            finally:
                await self.leases.release(record)
        except Exception:
            log.warning("could not set aside the folder of removed account %r", name, exc_info=True)
            return None

    def _set_aside_locked(self, name: str) -> Path | None:
        account_dir = self.root / "accounts" / name
        with self._locked():
            if not (account_dir / _REMOVED_MARKER).exists():
                return None  # set aside or adopted meanwhile
            if name in self._load().accounts:
                _unmark_removed(account_dir)  # back in the pool
                return None
            aside = self._aside_path(name)
            account_dir.rename(aside)
        _forget_mark(aside)
        log.info("the folder of removed account %r was set aside at %s", name, aside)
        return aside

    # -- credentials for probes ---------------------------------------------------

    async def usage_credentials(self, name: str) -> UsageCredentials:
        """What the usage endpoint needs for ``name``, read fresh from its auth.json.

        The access token is read only here, when a probe needs it, and is
        never cached: Codex may have refreshed it since.
        """
        # Link what the base home gained since the last launch (a config.toml
        # added later names the base URL: never send the token elsewhere).
        home = self.account_home(name)
        if home.is_dir():  # never recreate the home of an account removed meanwhile
            self._link_base_entries(home)
        auth_path = home / "auth.json"
        try:
            _warn_if_exposed(auth_path)
            raw: bytes | None = auth_path.read_bytes()
        except OSError as exc:
            if self.credentials is None:
                raise QuotaUnavailable(f"cannot read the auth.json of {name!r}: {exc}") from exc
            raw = None
        if self.credentials is not None:
            # Another machine may have refreshed it since this one last ran it.
            try:
                stored = await asyncio.to_thread(self.credentials.fetch, name)
            except CredentialError as exc:
                if raw is None:
                    raise QuotaUnavailable(f"no login of {name!r} to probe with: {exc}") from exc
                stored = None
            if stored is not None and (raw is None or _replaces(stored.data, raw)):
                raw = stored.data
            if raw is None:
                raise QuotaUnavailable(f"no login of {name!r} here or in the shared store")
        try:
            auth = json.loads(raw or b"")
        except ValueError as exc:
            raise QuotaUnavailable(f"cannot read the auth.json of {name!r}: {exc}") from exc
        except RecursionError as exc:
            raise QuotaUnavailable(f"the auth.json of {name!r} is nested too deeply") from exc
        tokens = auth.get("tokens") if isinstance(auth, dict) else None
        access = tokens.get("access_token") if isinstance(tokens, dict) else None
        if not isinstance(access, str) or not access:
            raise QuotaUnavailable(f"{name!r} has no ChatGPT access token (API-key login?)")
        account_id = tokens.get("account_id") if isinstance(tokens, dict) else None
        return UsageCredentials(
            account=name,
            account_id=account_id if isinstance(account_id, str) else None,
            access_token=access,
            base_url=read_chatgpt_base_url(home if home.is_dir() else self.base_codex_home),
        )

    # -- occupancy --------------------------------------------------------------------

    @staticmethod
    def lease_name(name: str) -> str:
        """The lease that records who occupies account ``name``."""
        return f"account.{_check_name(name)}"

    def occupy(
        self,
        name: str,
        *,
        purpose: str = "codex",
        ttl: float = 30.0,
        timeout: float = 10.0,
        on_lost: Callable[[Lease], None] | None = None,
    ) -> AbstractAsyncContextManager[Lease]:
        """A shared lease saying "a Codex child runs on ``name``" (who, pid, since).

        Entering it raises :class:`~codex_supervisor.errors.AccountGone` (the
        lease given back) when ``name`` is not in the pool state once the
        lease is held — removed before a launch could occupy it — so the
        caller chooses another account; ``LeaseTimeout`` when an exclusive
        holder (a probe, a ``remove``) keeps it past ``timeout``. A lease that
        lapses (this process suspended past ``ttl``) keeps counting as an
        occupant meanwhile and is taken again as it resumes (see
        :mod:`.lease`); if the account left the pool or was marked removed
        meanwhile, the lease is reported lost (``on_lost``) instead.
        """
        return self._lease(
            name, LeaseMode.SHARED, purpose=purpose, ttl=ttl, timeout=timeout, on_lost=on_lost
        )

    def occupy_exclusively(
        self,
        name: str,
        *,
        purpose: str,
        ttl: float = 30.0,
        timeout: float = 10.0,
        on_lost: Callable[[Lease], None] | None = None,
    ) -> AbstractAsyncContextManager[Lease]:
        """An exclusive lease on ``name``, for operations that must run alone.

        Booting an app-server in the account home may refresh its tokens, so
        such probes hold this while no child occupies the account. Raises
        :class:`~codex_supervisor.errors.AccountGone` as :meth:`occupy` does.
        """
        return self._lease(
            name, LeaseMode.EXCLUSIVE, purpose=purpose, ttl=ttl, timeout=timeout, on_lost=on_lost
        )

    def _lease(
        self,
        name: str,
        mode: LeaseMode,
        *,
        purpose: str,
        ttl: float,
        timeout: float,
        on_lost: Callable[[Lease], None] | None,
    ) -> AbstractAsyncContextManager[Lease]:
        async def recheck(_lease: Lease) -> str | None:
            # A lapsed occupancy taken again: the account may have left the pool
            # in the gap (its lease held, a forced remove only marks it).
            return await asyncio.to_thread(self._out_of_pool, name)

        claim = acquire_lease(
            self.leases,
            self.lease_name(name),
            mode=mode,
            ttl=ttl,
            timeout=timeout,
            purpose=purpose,
            on_lost=on_lost,
            recheck=recheck,
            clock=self.clock,
        )
        return self._occupancy(name, claim)

    def _out_of_pool(self, name: str) -> str | None:
        """Why ``name`` no longer counts as an account of the pool, or None."""
        if name not in self._load().accounts:
            return f"account {name!r} is no longer in the pool"
        if (self.root / "accounts" / name / _REMOVED_MARKER).exists():
            return f"account {name!r} was removed while in use"
        return None

    @contextlib.asynccontextmanager
    async def _occupancy(
        self, name: str, claim: AbstractAsyncContextManager[Lease]
    ) -> AsyncIterator[Lease]:
        held = False
        if self.credentials is not None:
            # A shared pool: an account another site runs is not to be waited for.
            elsewhere = self.elsewhere(await self.occupants(name))
            if elsewhere is not None:
                raise AccountBusy(name, elsewhere)
        try:
            async with claim as lease:
                held = True
                # Checked under the lease: a remove (which claims it
                # exclusively) is either over, and seen here, or waits.
                if name not in (await asyncio.to_thread(self._load)).accounts:
                    raise AccountGone(name, "it was removed before it could be occupied")
                if self.credentials is None:
                    yield lease
                else:
                    custody = self._custody(name, lease.owner)
                    await _finished(asyncio.to_thread(self._take_custody, custody), custody)
                    async with custody.keep_pushed():
                        yield lease
        except LeaseTimeout:
            if held or self.credentials is None:
                raise
            # Taken by another site between the look above and the claim.
            elsewhere = self.elsewhere(await self.occupants(name))
            if elsewhere is None:
                raise
            raise AccountBusy(name, elsewhere) from None
        finally:
            if held:
                # The last occupant of an account removed while in use sets
                # its folder aside.
                await self._set_aside_if_removed(name)

    def _custody(self, name: str, owner: str | None) -> CredentialCustody:
        """The handoff side of one occupancy (``owner``: its lease's, None: none held)."""
        assert self.credentials is not None
        account = self._load().accounts.get(name)

        def identify(data: bytes) -> str | None:
            try:
                return identity_from_auth(data).account_id
            except AuthError:
                return None

        return CredentialCustody(
            self.credentials,
            name,
            self.account_home(name),
            self.site,
            owner=owner or "",
            account_id=None if account is None else account.identity.account_id,
            identify=identify,
            live=functools.partial(self._live_owners, name),
            stray=functools.partial(_codex_on, self.account_home(name) / "auth.json"),
        )

    def _live_owners(self, name: str, *, here: bool = False) -> set[str]:
        """The owners whose occupancy of ``name`` still counts (``here``: of this site)."""
        records = _run_blocking(functools.partial(self.leases.records, self.lease_name(name)))
        now = self.clock.now()
        return {
            r.owner
            for r in records
            if (not here or r.site == self.site)
            and holder_alive(r) is not False
            and (not r.expired(now) or claim_alive(r))
        }

    def _take_custody(self, custody: CredentialCustody) -> None:
        """Make this site the account's custody: its home holds the newest login after.

        What keeps the store from being used (unreachable, a login that does
        not open with the key, none anywhere) is a CredentialError: a run
        chooses another account.
        """
        home = custody.home
        if not home.parent.is_dir():
            # An account added on another machine: its folder here is new.
            _mkdir_private(home.parent)
        _mkdir_private(home)
        custody.take()
        if not (home / "auth.json").exists():
            custody.leave()
            raise CredentialError(
                f"account {custody.name!r} has no login here and none in "
                f"{custody.store.where}: add it again on the machine that has it"
            )

    # -- shared logins ------------------------------------------------------------------

    def credential_holds(self, names: Sequence[str]) -> dict[str, CredentialsHeld]:
        """The accounts of ``names`` the shared store holds back (none for a one-machine pool).

        Held back too: an account whose last site did not give it back
        cleanly and no longer runs it (taking it would hold it back).

        On the way, a hold this very site caused (a process of it died, or
        lost Redis, holding the account) is lifted when its login here is
        the newest: pushed if newer, vouched for if it is the stored one.
        """
        if self.credentials is None:
            return {}
        holds = self.credentials.holds(names)
        others = [name for name in names if name not in holds]
        for name, held in self.credentials.unpushed(others, self.site).items():
            # Held back once taken, unless its site still runs it (and pushes soon).
            if not _run_blocking(functools.partial(self.leases.holders, self.lease_name(name))):
                holds[name] = held
        # What this site left unsettled (a process of it died holding the
        # account, or lost Redis), once it runs none of them: settled now.
        for name in self.credentials.unsettled(names, self.site):
            if self._live_owners(name, here=True):
                continue  # it still runs here: that run settles it as it leaves
            try:
                if self._custody(name, None).settle():
                    holds.pop(name, None)
            except CredentialError as exc:
                log.warning("cannot settle the shared login of %r: %s", name, exc)
        return holds

    def unhold(self, name: str) -> bool:
        """Take the shared store's login of ``name`` as its newest, lifting its hold.

        For when the machine that saw a newer login is gone for good; that
        login's refresh token may then be spent (a fresh ``login`` is the
        safer way). False when ``name`` was not held back.
        """
        self.get(name)
        if self.credentials is None:
            return False
        return self.credentials.unhold(name)

    def _publish(self, name: str) -> None:
        """Store a fresh login of ``name`` (import, login) in the shared store, if any."""
        if self.credentials is None:
            return
        data = (self.account_home(name) / "auth.json").read_bytes()
        version = self.credentials.publish(name, data, site=self.site)
        log.info("credentials.published account=%s version=%s", name, version)

    def _publish_quietly(self, name: str) -> None:
        try:
            self._publish(name)
        except (CredentialError, OSError) as exc:
            log.warning(
                "the login of %r is not in the shared store yet (%s); the next run of it on "
                "this machine pushes it",
                name,
                exc,
            )

    def elsewhere(self, records: Sequence[LeaseRecord]) -> str | None:
        """The other site among the occupants ``records`` of an account, or None.

        Only a shared pool's occupants name a site; an account that runs on
        another site cannot be occupied here until it is given back.
        """
        for record in records:
            if record.site is not None and record.site != self.site:
                return record.site
        return None

    async def occupants(self, name: str) -> list[LeaseRecord]:
        """Who occupies ``name``: its live leases, and lapsed ones whose process still runs.

        A lapsed record whose process still runs on this machine (see
        :func:`~codex_supervisor.lease.claim_alive`) is a holder suspended
        past its lease's TTL — SIGSTOP, a laptop asleep — that takes its
        lease again as it resumes: it still occupies the account, and the
        lease backend keeps its record and refuses exclusive claims alike.
        """
        now = self.clock.now()
        return [
            record
            for record in await self.leases.records(self.lease_name(name))
            if not record.expired(now) or claim_alive(record)
        ]

    async def status(self) -> list[AccountStatus]:
        """Every account with its cooldown and current occupants.

        On the way it sets aside the folders of accounts removed while in
        use whose last occupant is provably gone without having done so (it
        crashed); what stays outside the pool is listed by :meth:`leftovers`.
        """
        await self._sweep_removed()
        now = self.clock.now()
        return [
            AccountStatus(
                account=account,
                home=self.account_home(account.name),
                blocked_until=account.blocked_until(now),
                occupants=tuple(await self.occupants(account.name)),
            )
            for account in self.accounts()
        ]

    async def _sweep_removed(self) -> None:
        """Set aside each marked folder nobody occupies any more (unmark one back in the pool)."""
        try:
            marks = list((self.root / "accounts").glob(f"*/{_REMOVED_MARKER}"))
        except OSError:
            return
        for mark in marks:
            if _NAME_RE.fullmatch(mark.parent.name):
                await self._set_aside_if_removed(mark.parent.name)

    def leftovers(self) -> list[LeftoverFolder]:
        """The folders under ``<root>/accounts`` of no account in the pool state, by name.

        Each still holds a login. ``in_use`` ones were removed while in use
        and wait for their last session to end; the other ``<name>`` folders
        are outside the pool (an interrupted removal or import: an import or
        login of the same account adopts one, ``remove`` sets it aside);
        ``set_aside`` ones (``.removed-<name>-<time>-<hex>``) were set aside by
        a removal and are the user's to keep or delete. One directory read.
        """
        accounts = self._load().accounts
        try:
            entries = sorted((self.root / "accounts").iterdir())
        except (FileNotFoundError, NotADirectoryError):
            return []
        except OSError as exc:
            raise StateError(f"cannot read {self.root / 'accounts'}: {exc}") from exc
        found: list[LeftoverFolder] = []
        for entry in entries:
            aside = _ASIDE_RE.fullmatch(entry.name)
            if aside is not None:
                found.append(LeftoverFolder(name=aside[1], path=entry, kind="set_aside"))
            elif _NAME_RE.fullmatch(entry.name) and entry.name not in accounts:
                marked = _lexists(entry / _REMOVED_MARKER)
                found.append(
                    LeftoverFolder(
                        name=entry.name, path=entry, kind="in_use" if marked else "outside"
                    )
                )
        return found


def _check_name(name: str) -> str:
    if not isinstance(name, str) or not _NAME_RE.fullmatch(name):
        raise ConfigError(
            f"invalid account name {name!r}: use a letter or digit, then up to 63 "
            "letters, digits, '.', '_' or '-'"
        )
    return name


def _existing(state: _PoolState, name: str) -> Account:
    account = state.accounts.get(name)
    if account is None:
        raise ConfigError(f"no account named {name!r}")
    return account


def _check_new(state: _PoolState, name: str, identity: Identity) -> None:
    if name in state.accounts:
        raise ConfigError(f"an account named {name!r} already exists")
    for other in state.accounts.values():
        if other.identity.account_id == identity.account_id:
            raise AuthError(f"that login is already in the pool as {other.name!r}")


def _lifted_by(cooldown: Cooldown, snapshot: QuotaSnapshot) -> bool:
    """Whether ``snapshot`` shows that ``cooldown``'s window has started afresh.

    Only an observation made after the block was recorded counts, and only a
    window that has rolled over since: the same period showing room is
    lagging data, not a reset (the usage endpoint can trail a 429). A block
    of a known window lifts when that window now resets after the block ends
    and has room. A guessed block (kind ``OTHER``: no data could say which
    window ran out) is never lifted by an observation — a probe showing room
    is exactly what failed to explain the 429, and an unused window's reset
    time can move with the clock — it ends by itself (its backoff doubles
    with each failure), or is replaced by a known block, or is lifted by a
    person (``clear_cooldowns``).
    """
    if cooldown.window is WindowKind.OTHER:
        return False
    if snapshot.observed_at <= cooldown.recorded_at or snapshot.limit_reached:
        return False
    window = snapshot.window(cooldown.window)
    if window is None or window.used_percent >= 100.0:
        return False
    # Reset times derived from "seconds until reset" jitter by a second or two.
    return window.resets_at is not None and window.resets_at > cooldown.blocked_until + _JITTER


def _with_account(state: _PoolState, account: Account) -> _PoolState:
    return attrs.evolve(state, accounts={**state.accounts, account.name: account})


def _rename_into(src: Path, dest: Path) -> bool:
    """Rename ``src`` over ``dest``; False, with nothing done, across filesystems."""
    try:
        src.rename(dest)
    except OSError as exc:
        if exc.errno == errno.EXDEV:
            return False
        raise AuthError(f"cannot move {src} to {dest}: {exc}") from exc
    return True


def _lexists(path: Path) -> bool:
    """Whether anything is at ``path``, a dangling link included."""
    return os.path.lexists(path)


def _same_file(a: Path, b: Path) -> bool:
    try:
        return a.samefile(b)
    except OSError:
        return False


def _holds(path: Path, data: bytes) -> bool:
    try:
        return path.read_bytes() == data
    except OSError:
        return False


def _replaces(new: bytes, current: bytes) -> bool:
    """Whether login ``new`` may replace ``current`` of the same account: unless not newer."""
    if new == current:
        return False
    old_time, new_time = last_refresh(current), last_refresh(new)
    return not (old_time is not None and new_time is not None and new_time <= old_time)


def _hold_aside(path: Path) -> Path:
    """A second name for the login at ``path``, in its folder, while ``path`` is replaced.

    A hard link (a private copy where the filesystem has none); ``path``
    itself never goes missing for a Codex that may be reading it. Neither
    possible: :class:`~codex_supervisor.errors.StateError`, nothing changed.
    """
    held = path.with_name(f".{path.name}.{secrets.token_hex(4)}.held")
    try:
        os.link(path, held)
    except OSError:
        try:
            write_atomic(held, path.read_bytes())
        except OSError as exc:
            raise StateError(f"cannot keep a copy of {path} while replacing it: {exc}") from exc
    return held


def _put_back(dest: Path, src: Path, mode: int) -> bool:
    """Give the file at ``dest`` its old name ``src`` again, never over another file.

    ``dest`` stays (the caller removes or replaces it). False when ``src``
    exists again or cannot be written.
    """
    try:
        os.link(dest, src)
    except FileExistsError:
        return False
    except OSError:  # another filesystem, or one without hard links: the same bytes anew
        try:
            data = dest.read_bytes()
            fd = os.open(src, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, mode)
        except OSError:
            return False
        try:
            with os.fdopen(fd, "wb") as fh:
                fh.write(data)
                fh.flush()
                os.fsync(fh.fileno())
        except OSError:
            src.unlink(missing_ok=True)
            return False
    with contextlib.suppress(OSError):
        src.chmod(mode)
    fsync_dir(src.parent)
    return True


def _undo_import(
    account_dir: Path,
    src: Path,
    dest: Path,
    data: bytes,
    *,
    placed: str | None,
    held: Path | None,
    existed: bool,
    mode: int,
) -> None:
    """Put back what a failed import changed: the source where it was, the folder as it was."""
    if placed is not None and not _holds(dest, data):
        # Written since (a Codex running on an adopted folder refreshed it):
        # the newest login of all, so nothing is undone over it.
        log.error("%s changed during the failed import of %s; left as it is", dest, src)
        return
    if placed == "moved" and not _put_back(dest, src, mode):
        log.error("could not move %s back after a failed import: the login is at %s", src, dest)
        return
    if held is not None:
        if placed is not None:
            held.replace(dest)
        else:
            held.unlink(missing_ok=True)
    elif placed is not None:
        dest.unlink(missing_ok=True)
    if not existed:
        shutil.rmtree(account_dir, ignore_errors=True)


def _mark_removed(account_dir: Path, now: datetime) -> bool:
    """Mark the folder of an account removed while in use; False if it already was."""
    marker = account_dir / _REMOVED_MARKER
    if marker.exists():
        return False
    stamp = now.astimezone(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")
    write_atomic(marker, json.dumps({"removed_at": stamp, "pid": os.getpid()}).encode() + b"\n")
    return True


def _unmark_removed(account_dir: Path) -> None:
    (account_dir / _REMOVED_MARKER).unlink(missing_ok=True)


def _forget_mark(aside: Path) -> None:
    """Drop the mark a folder just set aside carried; best effort (it no longer counts there)."""
    try:
        _unmark_removed(aside)
    except OSError as exc:
        log.debug("could not delete %s: %s", aside / _REMOVED_MARKER, exc)


def _describe_occupants(records: Sequence[LeaseRecord], now: datetime) -> str:
    if not records:
        return "a holder whose lease record cannot be read"
    return ", ".join(
        f"pid {r.pid} on {r.host} ({r.purpose or r.mode.value}, since {_utc(r.acquired_at)}"
        + (
            f"; its lease lapsed at {_utc(r.expires_at)} but the process still runs: suspended?"
            if r.expired(now)
            else ""
        )
        + ")"
        for r in records
    )


def _utc(when: datetime) -> str:
    return when.astimezone(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def _codex_on(auth: Path) -> str | None:
    """Why a Codex may be running on login ``auth`` here, or None when none is.

    A process whose ``CODEX_HOME`` holds that very file (an account home, or
    a spawn home linking to it) is one. Only ``/proc`` shows other processes'
    environments: without it (macOS) nobody can say, and that is the answer.
    """
    proc = Path("/proc")
    if not (proc / "self" / "environ").exists():
        return "this system does not show which processes run Codex"
    try:
        wanted = auth.stat()
    except OSError:
        return None
    for entry in proc.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            environ = (entry / "environ").read_bytes()
            state = (entry / "stat").read_bytes().rsplit(b")", 1)[1].split()[0]
        except (OSError, IndexError):
            continue
        if state in (b"Z", b"X"):
            continue
        for item in environ.split(b"\0"):
            if item.startswith(b"CODEX_HOME="):
                try:
                    found = (Path(os.fsdecode(item[11:])) / "auth.json").stat()
                except OSError:
                    break
                if (found.st_dev, found.st_ino) == (wanted.st_dev, wanted.st_ino):
                    return f"pid {entry.name} runs on it"
                break
    return None


async def _finished(work: Awaitable[None], custody: CredentialCustody) -> None:
    """Await ``work`` (a custody's take in a thread) to its end even when cancelled.

    A cancelled wait would let the lease go while the take goes on in its
    thread, and take the custody after another site got the account: on a
    cancel the take is waited for, then given back, and the cancel goes on.
    """
    task = asyncio.ensure_future(work)
    try:
        await asyncio.shield(task)
    except asyncio.CancelledError:
        with contextlib.suppress(Exception):
            await task
        if custody.taken:
            with contextlib.suppress(Exception):
                await asyncio.to_thread(custody.leave)
        raise


def _run_blocking(factory: Callable[[], Coroutine[Any, Any, _T]]) -> _T:
    """Run a coroutine to the end from synchronous code, inside a running loop or not."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(factory())
    # Called from a coroutine: a private loop in a worker thread, while the
    # caller's loop waits (as it does for every synchronous state method).
    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as executor:
        return executor.submit(lambda: asyncio.run(factory())).result()


def _read_auth_file(path: Path) -> bytes:
    """Read an auth.json to keep it safe: a regular file, not a link; any mode.

    Unlike :func:`_read_private_file` a file readable by others is read too:
    it is about to be kept aside (0600), not taken into an account.
    """
    try:
        info = path.lstat()
        if not stat.S_ISREG(info.st_mode):
            raise AuthError(f"{path} is not a regular file")
        if info.st_size > _MAX_AUTH_BYTES:
            raise AuthError(f"{path}: {info.st_size} bytes is not an auth.json")
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        with os.fdopen(fd, "rb") as fh:
            return fh.read(_MAX_AUTH_BYTES + 1)
    except OSError as exc:
        raise AuthError(f"cannot read {path}: {exc}") from exc


def _write_new_private(path: Path, data: bytes) -> None:
    """Write ``data`` as a new file ``path`` (0600), whole or not at all, never over another."""
    temp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    try:
        try:
            os.fchmod(fd, 0o600)
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            os.fsync(fd)
        finally:
            os.close(fd)
        # A hard link appears whole and fails if the name is taken (a rename
        # would silently replace it).
        os.link(temp, path)
    finally:
        with contextlib.suppress(OSError):
            temp.unlink()
    fsync_dir(path.parent)


def _note_reason(path: Path, reason: str) -> None:
    """Record beside a quarantined login why it is there (best effort: the login is safe)."""
    try:
        write_atomic(path.with_name(path.name + _REASON_SUFFIX), reason.encode() + b"\n")
    except OSError as exc:
        log.warning("could not record why %s is in quarantine: %s", path, exc)


def _note_meta(path: Path, *, name: str, account_id: str | None) -> None:
    """Record beside a quarantined login whose it is (best effort: the file says it too)."""
    meta = {"account": name, "account_id": account_id}
    try:
        write_atomic(path.with_name(path.name + _META_SUFFIX), json.dumps(meta).encode() + b"\n")
    except OSError as exc:
        log.warning("could not record whose login %s is: %s", path, exc)


def _release_quarantined(path: Path) -> None:
    path.unlink(missing_ok=True)
    for suffix in (_REASON_SUFFIX, _META_SUFFIX):
        path.with_name(path.name + suffix).unlink(missing_ok=True)


def _login_account_id(data: bytes) -> str | None:
    """The account id of an auth.json, or None when it cannot be read as a login."""
    try:
        return identity_from_auth(data).account_id
    except AuthError:
        return None


def _quarantined_account_id(path: Path) -> str | None:
    """The account id recorded beside a quarantined login, else read from the login itself."""
    with contextlib.suppress(OSError, ValueError, RecursionError, AttributeError):
        meta = json.loads(path.with_name(path.name + _META_SUFFIX).read_bytes())
        recorded = meta.get("account_id")
        if isinstance(recorded, str) and recorded:
            return recorded
    try:
        return _login_account_id(_read_auth_file(path))
    except AuthError:
        return None


def _owner_in(state: _PoolState, account_id: str | None, folder: str) -> str | None:
    """The account of ``state`` owning a login of ``account_id`` quarantined under ``folder``."""
    if account_id is None:
        return folder if folder in state.accounts else None
    for account in state.accounts.values():
        if account.identity.account_id == account_id:
            return account.name
    return None


def _belongs(state: _PoolState, item: QuarantinedAuth, name: str) -> bool:
    """Whether ``item`` is ``name``'s: its account's, or (no such account) filed under it."""
    owner = _owner_in(state, item.account_id, item.account)
    if name in state.accounts:
        return owner == name
    return owner is None and item.account == name


def _no_owner_reason(account_id: str | None, name: str) -> str:
    if account_id is None:
        return f"no account named {name!r} is in the pool, and it cannot be read as a login"
    return f"no account of the pool has its account id {account_id} (was {name!r} removed?)"


def _drop_stale_held(home: Path) -> None:
    """Delete the ``.auth.json.*.held`` copies in ``home`` that are provably redundant."""
    auth = home / "auth.json"
    with contextlib.suppress(OSError):
        for held in home.glob(".auth.json.*.held"):
            if _is_stale_copy(held, auth):
                log.info("deleting %s, a leftover copy of an older login of %s", held, auth)
                held.unlink(missing_ok=True)


def _is_stale_copy(copy: Path, kept: Path) -> bool:
    """Whether ``copy`` is an old, redundant duplicate of the login at ``kept``.

    True only when ``copy`` is a regular file older than ``_STALE_TEMP_AGE``
    and ``kept`` is the same file, or holds the same login or a newer one of
    the same account: deleting ``copy`` then never loses a login.
    """
    try:
        info = copy.lstat()
        if not stat.S_ISREG(info.st_mode):
            return False
        # A hard link changes the ctime: a copy just made of an old file is new.
        if time.time() - max(info.st_mtime, info.st_ctime) < _STALE_TEMP_AGE.total_seconds():
            return False
        if _same_file(copy, kept):
            return True
        mine = _read_auth_file(copy)
        theirs = _read_auth_file(kept)
    except (OSError, AuthError):
        return False
    if mine == theirs:
        return True
    mine_id, theirs_id = _login_account_id(mine), _login_account_id(theirs)
    return mine_id is not None and mine_id == theirs_id and not _replaces(mine, theirs)


def _is_quarantined_name(name: str) -> bool:
    return name.endswith(_QUARANTINE_SUFFIX) and not name.startswith(".")


def _quarantined_at(path: Path) -> datetime:
    """When a login was put in quarantine, from its name (else its file's time)."""
    try:
        return datetime.fromisoformat(path.name.split("-", 1)[0]).astimezone(UTC)
    except (ValueError, OverflowError):  # OverflowError: a year-1 time east of UTC
        pass
    try:
        return datetime.fromtimestamp(path.stat().st_mtime, UTC)
    except OSError:
        return datetime.fromtimestamp(0, UTC)
