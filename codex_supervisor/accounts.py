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

import contextlib
import enum
import errno
import hashlib
import json
import logging
import os
import re
import secrets
import shutil
import stat
import subprocess
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import AbstractAsyncContextManager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, final

import attrs

from . import _convert
from ._fs import write_atomic
from ._jwt import decode_jwt_claims
from .clock import Clock, SystemClock
from .config import child_environment, default_base_codex_home, default_pool_root
from .errors import AuthError, ConfigError, QuotaUnavailable, StateError
from .lease import (
    FileLeaseBackend,
    FileLock,
    Lease,
    LeaseBackend,
    LeaseMode,
    LeaseRecord,
    acquire_lease,
)
from .quota import QuotaSnapshot, UsageCredentials, WindowKind, read_chatgpt_base_url

__all__ = [
    "ACCOUNT_NAME_PATTERN",
    "STATE_VERSION",
    "Account",
    "AccountPool",
    "AccountStatus",
    "AuthMode",
    "Cooldown",
    "Identity",
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


@attrs.frozen(kw_only=True)
class _PoolState:
    version: int = STATE_VERSION
    accounts: dict[str, Account] = attrs.field(factory=dict)


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


def _last_refresh(data: bytes) -> datetime | None:
    """The ``last_refresh`` of an auth.json, aware (UTC if naive); None if unreadable."""
    try:
        value = json.loads(data).get("last_refresh")
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00")) if value else None
    except (ValueError, AttributeError, TypeError, RecursionError):
        return None
    # A naive time compared with an aware one would raise TypeError.
    return parsed.replace(tzinfo=UTC) if parsed and parsed.tzinfo is None else parsed


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
    except FileNotFoundError as exc:
        raise ConfigError(f"cannot run {argv[0]!r}: not found") from exc
    return result.returncode


@final
@attrs.define
class AccountPool:
    """The accounts the supervisor may run Codex under, and their shared state.

    ``root`` defaults to ``$CODEX_SUPERVISOR_HOME`` or ``~/.codex-supervisor``;
    ``base_codex_home`` to ``$CODEX_HOME`` or ``~/.codex``. State methods are
    synchronous (short file operations under the pool lock); occupancy is
    async because leases heartbeat.
    """

    root: Path = attrs.field(factory=default_pool_root, converter=Path)
    base_codex_home: Path = attrs.field(factory=default_base_codex_home, converter=Path)
    clock: Clock = attrs.field(factory=SystemClock)
    lock_timeout: float = 10.0
    leases: LeaseBackend = attrs.field(
        default=attrs.Factory(
            lambda self: FileLeaseBackend(self.root / "leases", clock=self.clock), takes_self=True
        )
    )

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **kwargs: Any) -> AccountPool:
        """A pool at the folders the environment names (see :mod:`.config`)."""
        return cls(
            root=default_pool_root(environ),
            base_codex_home=default_base_codex_home(environ),
            **kwargs,
        )

    # -- paths -----------------------------------------------------------------

    @property
    def state_path(self) -> Path:
        """The pool state file."""
        return self.root / "state.json"

    @property
    def backup_path(self) -> Path:
        """The previous good version of the state file."""
        return self.root / "state.json.bak"

    def account_home(self, name: str) -> Path:
        """The CODEX_HOME of account ``name``."""
        return self.root / "accounts" / _check_name(name) / "home"

    # -- state -----------------------------------------------------------------

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        _mkdir_private(self.root)
        with FileLock(self.root / "pool.lock", timeout=self.lock_timeout):
            yield

    def _load(self) -> _PoolState:
        try:
            raw = self.state_path.read_bytes()
        except FileNotFoundError:
            return _PoolState()
        except OSError as exc:
            raise StateError(f"cannot read {self.state_path}: {exc}") from exc
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
                f"{self.state_path} was written by a newer codex_supervisor "
                f"(state version {version}; this one reads {STATE_VERSION})"
            )
        try:
            return _convert.structure(data, _PoolState, what="pool state")
        except StateError as exc:
            raise StateError(self._corrupt_message(str(exc))) from exc

    def _corrupt_message(self, why: str) -> str:
        backup = (
            f"; the previous version is {self.backup_path}" if self.backup_path.exists() else ""
        )
        return f"pool state {self.state_path} is corrupt ({why}); left untouched{backup}"

    def _save(self, state: _PoolState) -> None:
        data = json.dumps(_convert.unstructure(state), indent=2, sort_keys=True).encode()
        with contextlib.suppress(FileNotFoundError):
            # The backup is the last state that loaded cleanly: _save only runs
            # after _load succeeded on the current file.
            write_atomic(self.backup_path, self.state_path.read_bytes())
        write_atomic(self.state_path, data + b"\n")

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

    def state_token(self) -> tuple[int, int, int] | None:
        """A cheap fingerprint of the state file (inode, size, mtime), ``None`` if absent.

        It changes whenever another process rewrites the state (writes are
        whole-file renames), so a waiter can poll it instead of re-reading.
        """
        try:
            info = self.state_path.stat()
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise StateError(f"cannot read {self.state_path}: {exc}") from exc
        return (info.st_ino, info.st_size, info.st_mtime_ns)

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
        """Create or refresh ``name``'s account home and return it.

        Links every entry of the base CODEX_HOME not yet linked (entries that
        appeared since the last launch included), drops links whose target
        is gone, and leaves real files of the account home alone.
        """
        home = self.account_home(name)
        _mkdir_private(home.parent)
        _mkdir_private(home)
        self._link_base_entries(home)
        _warn_if_exposed(home / "auth.json")
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
        """
        _check_name(name)
        src = Path(source)
        data = _read_private_file(src)
        identity = identity_from_auth(data)
        with self._locked():
            state = self._load()
            _check_new(state, name, identity)
            account_dir = self.root / "accounts" / name
            if account_dir.exists():
                raise ConfigError(
                    f"{account_dir} exists but is not in the pool state; move it away first"
                )
            home = self.prepare_home(name)
            dest = home / "auth.json"
            if copy:
                write_atomic(dest, data)
                log.warning(
                    "copied %s into account %r: two copies of one single-use refresh token "
                    "now exist; use only one of them from now on",
                    src,
                    name,
                )
            else:
                _move_file(src, dest, data)
                log.info("moved %s into account %r (%s)", src, name, dest)
            account = Account(name=name, identity=identity, added_at=self.clock.now())
            self._save(_with_account(state, account))
        return account

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
        changes nothing. A re-login must be the same account, and its
        auth.json replaces the old one only if it is newer.
        """
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
                if existing is None:
                    _check_new(state, name, identity)
                    account_dir = accounts_dir / name
                    if account_dir.exists():
                        raise ConfigError(f"{account_dir} exists but is not in the pool state")
                    staging.rename(account_dir)
                    account = Account(name=name, identity=identity, added_at=self.clock.now())
                else:
                    if existing.identity.account_id != identity.account_id:
                        raise AuthError(
                            f"that login is a different account than {name!r}; nothing changed"
                        )
                    self._replace_if_newer(self.prepare_home(name) / "auth.json", new_auth, data)
                    account = attrs.evolve(existing, identity=identity)
                self._save(_with_account(state, account))
            return account
        finally:
            shutil.rmtree(staging, ignore_errors=True)

    @staticmethod
    def _replace_if_newer(dest: Path, new: Path, data: bytes) -> None:
        try:
            current = dest.read_bytes()
        except FileNotFoundError:
            current = b""
        old_time, new_time = _last_refresh(current), _last_refresh(data)
        if old_time is not None and new_time is not None and new_time <= old_time:
            log.warning("kept %s: it is newer than the login just made", dest)
            return
        new.chmod(0o600)
        new.replace(dest)

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
            old_time, new_time = _last_refresh(current), _last_refresh(data)
            if current and (new_time is None or (old_time is not None and new_time <= old_time)):
                return False
            write_atomic(dest, data, mode=0o600)
        log.warning("adopted a newer auth.json of %r written outside its home", name)
        return True

    def remove(self, name: str) -> Path:
        """Take ``name`` out of the pool; its folder is kept aside, not deleted.

        Returns where the folder went (its auth.json is still a live login).
        """

        def change(state: _PoolState) -> _PoolState:
            _existing(state, name)
            return attrs.evolve(
                state, accounts={k: v for k, v in state.accounts.items() if k != name}
            )

        with self._locked():
            state = change(self._load())
            stamp = self.clock.now().strftime("%Y%m%dT%H%M%S")
            aside = self.root / "accounts" / f".removed-{name}-{stamp}-{secrets.token_hex(2)}"
            account_dir = self.root / "accounts" / name
            if account_dir.exists():
                account_dir.rename(aside)
            self._save(state)
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
            auth = json.loads(auth_path.read_bytes())
        except (OSError, ValueError) as exc:
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
            base_url=read_chatgpt_base_url(home),
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
        """A shared lease saying "a Codex child runs on ``name``" (who, pid, since)."""
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
        such probes hold this while no child occupies the account.
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
        return acquire_lease(
            self.leases,
            self.lease_name(name),
            mode=mode,
            ttl=ttl,
            timeout=timeout,
            purpose=purpose,
            on_lost=on_lost,
            clock=self.clock,
        )

    async def occupants(self, name: str) -> list[LeaseRecord]:
        """The live leases on ``name``."""
        return await self.leases.holders(self.lease_name(name))

    async def status(self) -> list[AccountStatus]:
        """Every account with its cooldown and current occupants."""
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


def _move_file(src: Path, dest: Path, data: bytes) -> None:
    """Move an auth.json so that exactly one copy remains."""
    try:
        # Same filesystem: one atomic rename, and whatever Codex may have just
        # written to the source moves with it.
        src.rename(dest)
    except OSError as exc:
        if exc.errno != errno.EXDEV:  # another filesystem: copy, then remove
            raise AuthError(f"cannot move {src} to {dest}: {exc}") from exc
        write_atomic(dest, data)
        src.unlink()
    dest.chmod(0o600)
