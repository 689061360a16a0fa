"""A pool of ``codex app-server`` processes, one per key, for gateways.

A gateway serves many workspaces; each gets its own ``codex app-server
--listen ws://127.0.0.1:0`` in a Codex home of its own. :class:`AppServerPool`
keeps them:

- **Single-flight.** ``await pool.ensure(key, build)`` returns a live
  :class:`AppServerHandle`. The first caller for a cold key starts one spawn
  task; every concurrent caller awaits that same task (a cancelled caller
  does not cancel it). Nothing is spawned and then thrown away.
- **A unique home per spawn.** Each spawn gets a fresh folder
  ``<root>/homes/<key>-<generation>-<random>``, restored from the home store
  when an archive of the key exists. No two processes ever share a home, so
  no cleanup can delete a live one.
- **An explicit stopping state.** Shutdown, crash eviction, idle reaping and
  rotation all move the entry to ``stopping`` first (its loopback token is
  revoked at that instant); a concurrent ``ensure`` waits until the process
  group is stopped and the home archived, then spawns fresh from that
  archive. Archives carry a version one above the one restored, and the store
  refuses an archive that is not newer than the stored one.
- **Process groups.** Every app-server leads its own process group; stop is
  SIGTERM to the group, a grace, SIGKILL; a crashed server's leftovers (MCP
  servers, tools) are killed as soon as its exit is seen.
- **Quota-aware.** With an :class:`~codex_supervisor.accounts.AccountPool`,
  each spawn runs on the account the rotation policy picks, under a shared
  occupancy lease; the spawn home reads the account's ``auth.json`` through a
  link (Codex rewrites it in place, so a refresh lands in the account's own
  file, and no copy of a token ever exists). :meth:`AppServerPool.rotate`
  moves a key to another account: archive, respawn, same threads.
- **No login is ever lost.** Should Codex have replaced that link with a file,
  the file is taken back into the account when the home is given up; when
  that fails (pool lock busy, account removed, unsafe mode) it is kept in the
  account pool's quarantine (:meth:`AccountPool.quarantined
  <codex_supervisor.accounts.AccountPool.quarantined>`) and retried on every
  choice of account and every idle sweep; a home whose file could not even
  be quarantined is kept, and found again by a later pool (a scan of
  ``<root>/homes/*/auth.json`` on the first spawn and every sweep). No server
  starts on an account whose newest login waits in quarantine or in a kept
  home: it would refresh with a spent token.
- **One server per key across replicas.** With :attr:`PoolConfig.leases`
  (shared by every gateway replica on the same store), each spawn first takes
  the key's exclusive lease and holds it until its home is archived; a
  replica that finds the key held raises
  :class:`~codex_supervisor.errors.KeyHeldElsewhere` naming the holder. A lost
  lease stops the server. :meth:`AppServerPool.checkpoint` archives a live
  home, so a replica that dies loses at most its turns in flight; its keys
  free when its leases expire.
- **Loopback tokens.** 32 random bytes (hex) per spawn, minted before
  ``build`` runs and given to the child's environment, so tools the server
  starts can call the gateway back; :meth:`AppServerPool.lookup_key_for_token`
  compares against every live entry in constant time.

Starting a process, reading its port and polling ``/readyz`` is one injectable
step (:class:`Launcher`), so the bookkeeping can be exercised with fakes.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import hashlib
import hmac
import inspect
import itertools
import json
import logging
import os
import re
import secrets
import shutil
import signal
import socket
import sqlite3
import stat
import time
from collections.abc import Awaitable, Callable, Collection, Mapping, Sequence
from pathlib import Path
from typing import Any, final

import attrs

from .. import _toml
from .._fs import write_atomic
from ..accounts import Account, AccountPool, QuarantinedAuth, identity_from_auth
from ..clock import Clock, SystemClock
from ..config import ENV_BASE_CODEX_HOME, child_environment
from ..errors import (
    AccountBusy,
    AccountGone,
    AuthError,
    ConfigError,
    CredentialError,
    HomeNotFound,
    KeyHeldElsewhere,
    LeaseError,
    LeaseTimeout,
    LoginQuarantined,
    SpawnError,
    StaleArchive,
    SupervisorError,
)
from ..lease import Lease, LeaseBackend, LeaseMode, LeaseRecord, acquire_lease, claim_alive
from ..policy import Candidate, RotateAtBoundary, RotateNow, RotationPolicy
from ..process import StopPolicy
from ..quota import QuotaService
from ..selection import AccountSelector
from .checkpoint import snapshot_home
from .homestore import HomeStore, LocalDirHomeStore
from .launcher import Launched, Launcher, LaunchRequest, ServerProcess, launch_app_server

__all__ = [
    "DEFAULT_LOOPBACK_ENV",
    "AppServerHandle",
    "AppServerPool",
    "ConfigBuilder",
    "EntryState",
    "IdleReaper",
    "LaunchRequest",
    "Launched",
    "Launcher",
    "PoolConfig",
    "ServerProcess",
    "SpawnConfig",
    "SpawnContext",
    "default_replica",
    "key_lease_name",
    "launch_app_server",
    "relocate_threads",
]

log = logging.getLogger(__name__)

#: The variable that carries a spawn's loopback token to the app-server.
DEFAULT_LOOPBACK_ENV = "CODEX_LOOPBACK_TOKEN"

_KEY_SLUG = re.compile(r"[^A-Za-z0-9_.-]+")
_STALE_SNAPSHOT_AGE = 3600.0
_REPLICA = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.@:+-]{0,99}")
_ROLLOUT_TAIL = re.compile(r"/((?:archived_)?sessions/(?:[^/]+/)*rollout-[^/]+\.jsonl)$")


class EntryState(enum.Enum):
    """Where a key's entry is in its life."""

    STARTING = "starting"
    RUNNING = "running"
    STOPPING = "stopping"


@final
@attrs.frozen(kw_only=True)
class SpawnContext:
    """What a :data:`ConfigBuilder` learns about the spawn it configures."""

    key: str
    generation: int
    home: Path
    account: str | None
    loopback_token: str = attrs.field(repr=False)


@final
@attrs.frozen(kw_only=True)
class SpawnConfig:
    """What a :data:`ConfigBuilder` returns for one spawn.

    ``config``: the home's ``config.toml``, as a mapping (written as TOML) or
    as TOML text; ``None`` keeps the one restored from the archive, if any.
    ``env``: extra environment for this child (after the pool's
    ``extra_env``); it may not set ``CODEX_HOME`` or the loopback variable.
    ``args``: extra arguments after ``codex app-server --listen ...``.
    ``cwd``: the child's working folder (default: its home).
    """

    config: Mapping[str, Any] | str | None = None
    env: Mapping[str, str] = attrs.field(factory=dict)
    args: tuple[str, ...] = attrs.field(default=(), converter=tuple)
    cwd: Path | None = None


#: Builds a spawn's configuration; may be sync or async and may do I/O. Its
#: errors propagate out of :meth:`AppServerPool.ensure`.
ConfigBuilder = Callable[[SpawnContext], "SpawnConfig | Awaitable[SpawnConfig]"]


@final
class AppServerHandle:
    """A live app-server of the pool: where it listens, its home and account."""

    __slots__ = (
        "_exited",
        "_process",
        "account",
        "generation",
        "home",
        "http_url",
        "key",
        "ws_url",
    )

    def __init__(
        self,
        *,
        key: str,
        generation: int,
        ws_url: str,
        http_url: str,
        home: Path,
        account: str | None,
        process: ServerProcess,
        exited: asyncio.Future[int],
    ) -> None:
        self.key = key
        self.generation = generation
        self.ws_url = ws_url
        self.http_url = http_url
        self.home = home
        self.account = account
        self._process = process
        self._exited = exited

    @property
    def pid(self) -> int:
        """The app-server's pid (and process group id)."""
        return self._process.pid

    @property
    def returncode(self) -> int | None:
        """The exit code once the process has exited."""
        return self._exited.result() if self._exited.done() else None

    def is_alive(self) -> bool:
        """Whether the process is still running. Cheap: no system call."""
        return not self._exited.done() and self._process.running

    def done(self) -> Awaitable[int]:
        """An awaitable of the exit code, completing when the process exits."""
        return asyncio.shield(self._exited)

    def __repr__(self) -> str:
        return (
            f"AppServerHandle(key={self.key!r}, generation={self.generation}, "
            f"ws_url={self.ws_url!r}, account={self.account!r}, alive={self.is_alive()})"
        )


def _positive(_: object, attribute: attrs.Attribute[Any], value: float) -> None:
    if not value > 0:
        raise ConfigError(f"{attribute.name} must be positive, got {value!r}")


def _non_negative(_: object, attribute: attrs.Attribute[Any], value: float) -> None:
    if not value >= 0:
        raise ConfigError(f"{attribute.name} must be >= 0, got {value!r}")


def _absolute(path: str | os.PathLike[str]) -> Path:
    return Path(path).absolute()


def _replica_name(_: object, attribute: attrs.Attribute[Any], value: object) -> None:
    if not isinstance(value, str) or not _REPLICA.fullmatch(value):
        raise ConfigError(
            f"{attribute.name} {value!r} must match {_REPLICA.pattern} "
            "(letters, digits and _.@:+- ; at most 100 characters)"
        )


def default_replica() -> str:
    """This process's replica name by default: ``<host>-<pid>-<random hex>``."""
    host = re.sub(r"[^A-Za-z0-9.-]+", "-", socket.gethostname()).strip(".-")[:60] or "host"
    return f"{host}-{os.getpid()}-{secrets.token_hex(4)}"


def key_lease_name(key: str) -> str:
    """The name of ``key``'s lease in :attr:`PoolConfig.leases` (a hash of the key)."""
    return f"appserver.{hashlib.sha256(key.encode('utf-8', 'surrogatepass')).hexdigest()[:40]}"


@final
@attrs.frozen(kw_only=True)
class PoolConfig:
    """How an :class:`AppServerPool` runs its servers; only ``root`` is required.

    ``root``: spawn homes go in ``root/homes``; the default home store keeps
    archives in ``root/archives``. A relative root is made absolute (against
    the working folder now): a spawn runs in a folder of its own. ``codex``: the Codex binary.
    ``store``: where homes are archived between spawns.
    ``extra_env``: added to every child's environment.
    ``ready_timeout``: seconds for a spawn to announce its port and answer
    ``/readyz`` (30). ``ready_interval``: between ``/readyz`` polls (0.05).
    ``stop_grace``: seconds between SIGTERM and SIGKILL (5).
    ``loopback_env``: the variable carrying the loopback token.
    ``lease_ttl`` / ``lease_timeout``: the occupancy lease on the account.
    ``shutdown_parallelism``: stops run at once in :meth:`AppServerPool.shutdown_all`.
    ``quota_stale_after``: quota older than this (seconds) is re-read from
    the usage endpoint before choosing an account (it spends no quota).
    ``disable_resume_account_check``: pass ``--disable
    cli_resume_account_check`` so threads resume on another account.

    Replicas (several gateway processes, on one machine or many, serving the
    same keys from one home store) share ``leases``: a lease backend
    (:class:`~codex_supervisor.lease.FileLeaseBackend` on a folder all of
    them reach on one machine,
    :class:`~codex_supervisor.lease_redis.RedisLeaseBackend` across
    machines). Each spawn then first takes the key's exclusive lease
    (:func:`key_lease_name`) and holds it until its home is archived, so a
    key runs on one replica at a time; the other replicas raise
    :class:`~codex_supervisor.errors.KeyHeldElsewhere` naming ``replica``
    and ``address`` (where clients reach this one, published in the lease).
    ``key_lease_ttl``: seconds a dead replica's keys stay held (15).
    ``key_lease_timeout``: seconds a spawn waits for a key held elsewhere
    before raising (0: at once). Without ``leases`` nothing is leased.
    """

    root: Path = attrs.field(converter=_absolute)
    codex: str = "codex"
    store: HomeStore | None = None
    extra_env: Mapping[str, str] = attrs.field(factory=dict)
    ready_timeout: float = attrs.field(default=30.0, validator=_positive)
    ready_interval: float = attrs.field(default=0.05, validator=_positive)
    stop_grace: float = attrs.field(default=5.0, validator=_non_negative)
    loopback_env: str = DEFAULT_LOOPBACK_ENV
    lease_ttl: float = attrs.field(default=30.0, validator=_positive)
    lease_timeout: float = attrs.field(default=10.0, validator=_non_negative)
    shutdown_parallelism: int = attrs.field(default=8, validator=_positive)
    quota_stale_after: float = attrs.field(default=120.0, validator=_positive)
    disable_resume_account_check: bool = True
    leases: LeaseBackend | None = None
    replica: str = attrs.field(factory=default_replica, validator=_replica_name)
    address: str | None = None
    key_lease_ttl: float = attrs.field(default=15.0, validator=_positive)
    key_lease_timeout: float = attrs.field(default=0.0, validator=_non_negative)


@attrs.define(eq=False)
class _Entry:
    key: str
    generation: int
    build: ConfigBuilder
    token: str | None = attrs.field(repr=False)
    last_active: float
    avoid: str | None = None
    state: EntryState = EntryState.STARTING
    account: str | None = None
    home: Path | None = None
    version: int = 1
    process: ServerProcess | None = None
    launched: Launched | None = None
    handle: AppServerHandle | None = None
    spawn_task: asyncio.Task[AppServerHandle] | None = None
    stop_task: asyncio.Task[None] | None = None
    watch_task: asyncio.Task[None] | None = None
    resources: contextlib.AsyncExitStack = attrs.field(factory=contextlib.AsyncExitStack)
    #: Why it was stopped ("exited": its server died on its own), once stopping.
    stop_reason: str | None = None
    #: The key's lease (with :attr:`PoolConfig.leases`), held until archived.
    key_lease: Lease | None = None
    #: Serialises archiving the home (checkpoints and the last archive).
    archiving: asyncio.Lock = attrs.field(factory=asyncio.Lock)
    #: The versions of the key this entry restored (0: none) or put: with key
    #: leases, the store must hold one of them before the next put.
    written: set[int] = attrs.field(factory=set)


@attrs.define(eq=False)
class _Kept:
    """A spawn home kept because its auth.json could be neither taken back nor quarantined."""

    #: The account it was spawned for (None: found on disk, no account owns it).
    account: str | None
    #: The account id of the login in it (None when it cannot be read).
    account_id: str | None
    #: Whether the home goes once its login is safe: only one this pool
    #: archived (or that served nothing); a home found on disk may hold
    #: state never archived, and one whose archiving failed does.
    remove: bool


def _held_by(key: str, record: LeaseRecord) -> KeyHeldElsewhere:
    """The error naming the replica of a key lease ``record`` (from its purpose)."""
    replica: str | None = record.owner
    address = None
    try:
        published = json.loads(record.purpose or "")
    except ValueError:
        published = None
    if isinstance(published, dict):
        if isinstance(published.get("replica"), str):
            replica = published["replica"]
        if isinstance(published.get("address"), str):
            address = published["address"]
    return KeyHeldElsewhere(key, replica, address, record.expires_at.isoformat())


def _login_id(auth: Path) -> str | None:
    """The account id of the login at ``auth`` (a regular file), or None."""
    try:
        info = auth.lstat()
        if not stat.S_ISREG(info.st_mode) or info.st_size > 1024 * 1024:
            return None
        return identity_from_auth(auth.read_bytes()).account_id
    except (OSError, SupervisorError):
        return None


def _retrieve(task: asyncio.Task[Any]) -> None:
    # Waiters see the outcome through shield(); this only keeps asyncio from
    # warning about an exception nobody awaited (every waiter cancelled).
    if not task.cancelled():
        task.exception()


def _slug(key: str) -> str:
    slug = _KEY_SLUG.sub("_", key)[:40].strip("._") or "key"
    return f"{slug}-{hashlib.sha256(key.encode()).hexdigest()[:8]}"


def _check_key(key: object) -> str:
    if not isinstance(key, str) or not key:
        raise ConfigError(f"a pool key is a non-empty string, not {key!r}")
    return key


class AppServerPool:
    """Keeps one ``codex app-server`` per key; see the module documentation.

    Use it as an async context manager (``async with AppServerPool(...)``):
    leaving it shuts every server down, archiving its home. ``accounts``
    makes it quota-aware; ``policy`` and ``quota`` default like the
    :class:`~codex_supervisor.supervisor.Supervisor`'s. ``environ`` is the
    environment children start from (the library's own variables removed).
    """

    def __init__(
        self,
        config: PoolConfig,
        *,
        accounts: AccountPool | None = None,
        policy: RotationPolicy | None = None,
        quota: QuotaService | None = None,
        launcher: Launcher | None = None,
        clock: Clock | None = None,
        environ: Mapping[str, str] | None = None,
        logger: logging.Logger | None = None,
    ) -> None:
        self.config = config
        self.accounts = accounts
        self.policy = policy or RotationPolicy()
        self.clock = clock or SystemClock()
        self.store: HomeStore = config.store or LocalDirHomeStore(config.root / "archives")
        self.environ = dict(os.environ if environ is None else environ)
        self.log = logger or log
        #: The one place accounts are chosen (shared with the Supervisor); ``None``
        #: without an account pool.
        self.selector: AccountSelector | None = None
        if accounts is not None:
            self.selector = AccountSelector(
                accounts,
                policy=self.policy,
                quota=quota,
                clock=self.clock,
                stale_after=config.quota_stale_after,
                hold_back=self._kept_holds,
            )
        self._failures: dict[str, tuple[int, float]] = {}
        self._launcher: Launcher = launcher or launch_app_server
        self._entries: dict[str, _Entry] = {}
        self._generations = itertools.count(1)
        self._avoid: dict[str, str] = {}
        #: Homes kept because their auth.json could not even be quarantined.
        self._stranded: dict[Path, _Kept] = {}
        # Homes found on disk whose login was found safe: (inode, size, mtime)
        # of their auth.json then, so a later scan does not take it again.
        self._safe_homes: dict[Path, tuple[int, int, int]] = {}
        self._scanned = False
        self._closed = False
        for name in (ENV_BASE_CODEX_HOME, config.loopback_env):
            if name in config.extra_env:
                raise ConfigError(f"extra_env may not set {name}: the pool sets it per spawn")

    # -- context manager -------------------------------------------------------------

    async def __aenter__(self) -> AppServerPool:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Shut every server down (archiving homes) and refuse new spawns."""
        self._closed = True
        try:
            while self._entries:  # entries still starting stop once started
                await self.shutdown_all()
            await self._retry_stranded()
        finally:
            for home, kept in self._stranded.items():
                self.log.error(
                    "the home %s stays: its auth.json may hold the only live refresh token "
                    "of %s, and could neither be taken back nor quarantined",
                    home,
                    kept.account or f"account id {kept.account_id}",
                )
            if self.selector is not None:
                await self.selector.aclose()

    # -- queries ------------------------------------------------------------------------

    def keys(self) -> list[str]:
        """Every key with an entry (starting, running or stopping)."""
        return list(self._entries)

    def kept_homes(self) -> dict[Path, str | None]:
        """Spawn homes kept because their login could be neither taken back nor quarantined.

        Each with the account it belongs to (``None``: none of the pool).
        Their accounts are held back until the login is safe
        (:meth:`retry_quarantined`).
        """
        return {home: kept.account for home, kept in self._stranded.items()}

    def state(self, key: str) -> EntryState | None:
        """The state of ``key``'s entry, or ``None`` when it has none."""
        entry = self._entries.get(key)
        return None if entry is None else entry.state

    def handle(self, key: str) -> AppServerHandle | None:
        """``key``'s running handle, if any (alive or not), without spawning."""
        entry = self._entries.get(key)
        return entry.handle if entry is not None and entry.state is EntryState.RUNNING else None

    def touch(self, key: str) -> None:
        """Record activity on ``key`` (call it on every proxied frame)."""
        entry = self._entries.get(key)
        if entry is not None:
            entry.last_active = self.clock.monotonic()

    def idle_keys(self, idle_after: float) -> list[str]:
        """Running keys with no activity for more than ``idle_after`` seconds."""
        cutoff = self.clock.monotonic() - idle_after
        return [
            e.key
            for e in self._entries.values()
            if e.state is EntryState.RUNNING and e.last_active < cutoff
        ]

    def lookup_key_for_token(self, token: str) -> str | None:
        """The key whose live spawn holds loopback ``token``, else ``None``.

        Compares against every live entry with :func:`hmac.compare_digest`
        and never stops early, so the time taken does not depend on which
        entry (if any) matches. Stopping entries' tokens are revoked.
        """
        if not isinstance(token, str) or not token:
            return None
        offered = token.encode("utf-8", "surrogateescape")
        found: str | None = None
        for entry in list(self._entries.values()):
            held = entry.token
            if held is None:
                continue
            if hmac.compare_digest(offered, held.encode()) and found is None:
                found = entry.key
        return found

    # -- ensure --------------------------------------------------------------------------

    async def ensure(self, key: str, build: ConfigBuilder) -> AppServerHandle:
        """A live handle for ``key``, spawning (single-flight) when needed.

        A cached handle whose process died is evicted (stopped, archived) and a
        fresh one spawned from the archive; an entry being stopped is waited
        for. Raises :class:`SpawnError` when the server cannot start,
        :class:`~codex_supervisor.errors.QuotaUnavailable` when every account
        is blocked, :class:`~codex_supervisor.errors.LoginQuarantined` (an
        :class:`~codex_supervisor.errors.AuthError`) when every account is
        held back because its newest login waits in quarantine or in a kept
        home, :class:`~codex_supervisor.errors.KeyHeldElsewhere` when another
        replica runs ``key`` (with :attr:`PoolConfig.leases`; a
        :class:`~codex_supervisor.errors.LeaseError` when the lease backend
        cannot be reached), and whatever ``build`` or the home store raise.
        """
        _check_key(key)
        died = 0  # servers this call spawned that exited on their own
        mine: _Entry | None = None
        while True:
            if self._closed:
                raise SpawnError(key, "the pool is closed")
            entry = self._entries.get(key)
            if entry is None:
                # A server stopped on purpose meanwhile (a concurrent shutdown)
                # is no failure: only one that died twice ends the retries.
                if mine is not None and mine.stop_reason == "exited":
                    died += 1
                if died >= 2:
                    raise SpawnError(key, "the app-server exited right after it became ready")
                entry = mine = self._begin_spawn(key, build)
            if entry.state is EntryState.STARTING:
                assert entry.spawn_task is not None
                await asyncio.shield(entry.spawn_task)
                continue
            if entry.state is EntryState.RUNNING:
                assert entry.handle is not None
                if entry.handle.is_alive():
                    entry.last_active = self.clock.monotonic()
                    return entry.handle
                self._begin_stop(entry, "exited")
            assert entry.stop_task is not None
            # A failed stop was logged and its entry dropped: spawn afresh.
            with contextlib.suppress(Exception):
                await asyncio.shield(entry.stop_task)

    def _begin_spawn(self, key: str, build: ConfigBuilder) -> _Entry:
        entry = _Entry(
            key=key,
            generation=next(self._generations),
            build=build,
            token=secrets.token_hex(32),
            last_active=self.clock.monotonic(),
            avoid=self._avoid.pop(key, None),
        )
        self._entries[key] = entry
        task = asyncio.create_task(self._spawn(entry), name=f"app-server-pool:spawn:{key}")
        task.add_done_callback(_retrieve)
        entry.spawn_task = task
        return entry

    async def _spawn(self, entry: _Entry) -> AppServerHandle:
        try:
            return await self._start(entry)
        except BaseException:
            await self._abandon(entry)
            raise

    async def _start(self, entry: _Entry) -> AppServerHandle:
        key = entry.key
        if self.config.leases is not None:
            # First of all, and released last: no other replica restores or
            # runs the key until this spawn's home is archived (or given up).
            entry.key_lease = await self._hold_key(entry)
        if self.accounts is not None:
            await self._occupy_account(entry)
        entry.home = home = await asyncio.to_thread(self._new_home, entry)
        try:
            restored = await self.store.get(key, home)
        except HomeNotFound:
            restored = 0
        else:
            await asyncio.to_thread(relocate_threads, home, self.log)
        entry.version = restored + 1
        entry.written.add(restored)
        assert entry.token is not None
        context = SpawnContext(
            key=key,
            generation=entry.generation,
            home=home,
            account=entry.account,
            loopback_token=entry.token,
        )
        built = entry.build(context)
        spawn = await built if inspect.isawaitable(built) else built
        if not isinstance(spawn, SpawnConfig):
            raise ConfigError(f"the config builder returned {spawn!r}, not a SpawnConfig")
        self._write_config(home, spawn.config)
        if entry.account is not None:
            self._link_auth(home, entry.account)
        argv = [self.config.codex, "app-server", "--listen", "ws://127.0.0.1:0"]
        if entry.account is not None and self.config.disable_resume_account_check:
            argv += ["--disable", "cli_resume_account_check"]
        request = LaunchRequest(
            key=key,
            argv=(*argv, *spawn.args),
            env=self._environment(home, spawn.env, entry.token),
            cwd=spawn.cwd or home,
            home=home,
            ready_timeout=self.config.ready_timeout,
            ready_interval=self.config.ready_interval,
        )
        accounts = self.accounts
        if entry.account is not None and accounts is not None and accounts.quarantine_listing():
            # Once more with the occupancy lease held, right before Codex
            # starts: a newer login may have been quarantined while the lease,
            # the store or the config builder kept this spawn waiting.
            await asyncio.to_thread(accounts.ensure_no_quarantine, entry.account)
        if entry.key_lease is not None:
            entry.key_lease.ensure_held()  # the fencing check: LeaseLost if it lapsed
        launched = await self._launcher(request)
        entry.process = launched.process
        entry.launched = launched
        if self._closed:  # closed (perhaps by a cancelled aclose) while it started
            raise SpawnError(key, "the pool was closed while the app-server started")
        if entry.key_lease is not None and entry.key_lease.lost:
            raise SpawnError(key, "the key's lease was lost while the app-server started")
        exited: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        handle = AppServerHandle(
            key=key,
            generation=entry.generation,
            ws_url=launched.ws_url,
            http_url=launched.http_url,
            home=home,
            account=entry.account,
            process=launched.process,
            exited=exited,
        )
        entry.handle = handle
        entry.watch_task = asyncio.create_task(
            self._watch(entry, exited), name=f"app-server-pool:watch:{key}"
        )
        entry.state = EntryState.RUNNING
        entry.last_active = self.clock.monotonic()
        self.log.info(
            "app-server for %r ready at %s (pid %d, account %s, generation %d)",
            key,
            launched.ws_url,
            launched.process.pid,
            entry.account,
            entry.generation,
        )
        return handle

    async def _hold_key(self, entry: _Entry) -> Lease:
        """Take ``entry``'s key lease into its resources, or raise KeyHeldElsewhere."""
        backend = self.config.leases
        assert backend is not None
        name = key_lease_name(entry.key)
        purpose = json.dumps(
            {"replica": self.config.replica, "address": self.config.address},
            separators=(",", ":"),
        )
        holder: KeyHeldElsewhere | None = None
        for _ in range(3):  # a holder that left between the refusal and the read: again
            try:
                return await entry.resources.enter_async_context(
                    acquire_lease(
                        backend,
                        name,
                        mode=LeaseMode.EXCLUSIVE,
                        ttl=self.config.key_lease_ttl,
                        timeout=self.config.key_lease_timeout,
                        owner=f"{self.config.replica}.{entry.generation}",
                        purpose=purpose,
                        on_lost=lambda lease: self._key_lost(entry, lease),
                        clock=self.clock,
                    )
                )
            except LeaseTimeout:
                holder = await self._key_holder(entry.key, name)
                if holder.replica is not None:
                    raise holder from None
        assert holder is not None
        raise holder

    async def _key_holder(self, key: str, name: str) -> KeyHeldElsewhere:
        """Who holds ``key``'s lease, read from its record (replica None: nobody now)."""
        backend = self.config.leases
        assert backend is not None
        records = await backend.records(name)  # LeaseError: the backend is out of reach
        now = self.clock.now()
        live = [r for r in records if not r.expired(now) or claim_alive(r)]
        if not live:
            return KeyHeldElsewhere(key, None)
        return _held_by(key, live[0])

    def _key_lost(self, entry: _Entry, lease: Lease) -> None:
        """The key's lease was lost: another replica may run the key now, so ours stops."""
        self.log.error(
            "lost the lease on %r (%s): stopping its app-server on this replica",
            entry.key,
            lease.lost_reason,
        )
        if entry.state is EntryState.RUNNING and self._entries.get(entry.key) is entry:
            self._begin_stop(entry, "its key lease was lost")

    async def _abandon(self, entry: _Entry) -> None:
        """Undo a spawn that failed or was cancelled: nothing of it may survive but a login."""
        entry.token = None
        try:
            if entry.process is not None and entry.process.running:
                await entry.process.stop(
                    StopPolicy(interrupt_grace=0.0, terminate_grace=0.0),
                    first_signal=signal.SIGKILL,
                )
            if entry.home is not None:
                # Codex may have refreshed the login before it failed: a home
                # whose login cannot be saved stays. Nothing was served from
                # it: the archive it was restored from is still the newest
                # state of the key.
                if await self._rescue_auth(entry.home, entry.account):
                    await asyncio.to_thread(shutil.rmtree, entry.home, ignore_errors=True)
                else:
                    self._strand(entry.home, entry.account, remove=True)
        finally:
            await entry.resources.aclose()
            if self._entries.get(entry.key) is entry:
                del self._entries[entry.key]

    async def _watch(self, entry: _Entry, exited: asyncio.Future[int]) -> None:
        assert entry.process is not None
        code = await entry.process.wait_group()
        exited.set_result(code)
        if entry.state is EntryState.RUNNING:
            self.log.warning(
                "app-server for %r (pid %d) exited with code %d; evicting it",
                entry.key,
                entry.process.pid,
                code,
            )
            if entry.launched is not None:
                self.log.debug("its stderr ended with: %s", entry.launched.stderr_tail()[-2000:])
            self._begin_stop(entry, "exited")

    # -- accounts --------------------------------------------------------------------------

    @property
    def quota(self) -> QuotaService | None:
        """The quota service the pool's selector reads through (``None`` without accounts)."""
        return None if self.selector is None else self.selector.quota

    async def _candidates(self) -> list[Candidate]:
        assert self.selector is not None
        return await self.selector.candidates(probe=True)

    async def _occupy_account(self, entry: _Entry) -> None:
        """Choose ``entry``'s account and occupy it; another if it turns out unusable.

        Between the choice and the occupancy another machine may take the
        account (AccountBusy), a newer login may be held back
        (LoginQuarantined, CredentialsHeld), the shared store may fail
        (CredentialError) or the account may be removed (AccountGone):
        each makes the spawn choose again among the accounts not refused
        yet. When none is left, the choice raises
        :class:`~codex_supervisor.errors.QuotaUnavailable` naming them (from
        the last refusal).
        """
        assert self.accounts is not None
        assert self.selector is not None
        key = entry.key
        refused: set[str] = set()
        refusal: SupervisorError | None = None
        for _ in range(len(await self.selector.accounts()) + 1):
            try:
                entry.account = await self._choose_account(entry.avoid, exclude=refused)
            except SupervisorError as exc:
                if refusal is None:
                    raise
                raise exc from refusal
            try:
                await entry.resources.enter_async_context(
                    self.accounts.occupy(
                        entry.account,
                        purpose=f"app-server {key}",
                        ttl=self.config.lease_ttl,
                        timeout=self.config.lease_timeout,
                        on_lost=lambda lease: self.log.warning(
                            "occupancy lease of %r on %s lost (%s); the server keeps running",
                            key,
                            lease.name,
                            lease.lost_reason,
                        ),
                    )
                )
            except (AccountBusy, AccountGone, LoginQuarantined, CredentialError) as exc:
                refusal = exc
                self.log.warning("not starting %r on %s: %s", key, entry.account, exc)
                if isinstance(exc, (LoginQuarantined, CredentialError)):
                    self.selector.recheck_held_back()
                refused.add(entry.account)
                continue
            return
        assert refusal is not None
        raise refusal

    async def _choose_account(self, avoid: str | None, exclude: Collection[str] = ()) -> str:
        """The account to spawn on: the policy's, never one whose newest login is elsewhere.

        The selector holds back every account with a login waiting in
        quarantine or in a kept home; Codex there would refresh with a spent
        refresh token (a replay can revoke the whole login). The account
        chosen is checked once more right before it is used
        (:meth:`AccountPool.ensure_no_quarantine
        <codex_supervisor.accounts.AccountPool.ensure_no_quarantine>`): one
        that fails is held back and another chosen.
        """
        assert self.accounts is not None
        assert self.selector is not None
        if not self._scanned:
            # Homes an earlier pool had to keep: held back from the first spawn on.
            self._scanned = True
            await self._scan_kept_homes()
        if self._stranded:  # each spawn tries them again first
            await self._retry_stranded()
        refused: LoginQuarantined | None = None
        for _ in range(len(await self.selector.accounts()) + 1):
            choice = await self._choose(avoid, exclude)
            if not self.accounts.quarantine_listing():  # the rule: nothing waits
                return choice
            try:
                await asyncio.to_thread(self.accounts.ensure_no_quarantine, choice)
            except LoginQuarantined as exc:
                refused = exc
            else:
                return choice
            self.log.error("not starting on %s: %s", choice, refused)
            self.selector.recheck_held_back()
        assert refused is not None
        raise refused

    async def _choose(self, avoid: str | None, exclude: Collection[str] = ()) -> str:
        assert self.selector is not None
        # The account being left is taken back only when nothing else can run.
        choice = await self.selector.choose(avoid=avoid, exclude=exclude)
        if not isinstance(choice, str):
            raise self.selector.unavailable(choice, what="no account can run an app-server now")
        return choice

    def _kept_holds(self, accounts: Sequence[Account]) -> dict[str, LoginQuarantined]:
        """The accounts whose newest login is in a kept home (the selector's ``hold_back``)."""
        by_id = {a.identity.account_id: a.name for a in accounts}
        names = {a.name for a in accounts}
        holds: dict[str, LoginQuarantined] = {}
        for home, kept in self._stranded.items():
            if kept.account_id is not None:
                owner = by_id.get(kept.account_id)
            else:
                owner = kept.account if kept.account in names else None
            if owner is not None and owner not in holds:
                holds[owner] = LoginQuarantined(
                    owner,
                    str(home / "auth.json"),
                    "in a spawn home kept because it could be neither taken back nor quarantined",
                )
        return holds

    def _link_auth(self, home: Path, account: str) -> None:
        assert self.accounts is not None
        account_home = self.accounts.prepare_home(account)
        auth = account_home / "auth.json"
        if not auth.is_file():
            raise AuthError(f"account {account!r} has no auth.json at {auth}")
        lock = account_home / "auth.lock"
        if not lock.exists():
            fd = os.open(lock, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o600)
            os.close(fd)
        # Links, not copies: Codex rewrites auth.json in place, so a refresh
        # made by this server lands in the account's own file, and its
        # refresh lock is the one every other user of the account takes.
        for name, target in (("auth.json", auth), ("auth.lock", lock)):
            link = home / name
            if link.is_symlink() or link.exists():
                link.unlink()
            link.symlink_to(target)

    # -- homes and environment ------------------------------------------------------------------

    def _new_home(self, entry: _Entry) -> Path:
        homes = self.config.root / "homes"
        homes.mkdir(mode=0o700, parents=True, exist_ok=True)
        home = homes / f"{_slug(entry.key)}-{entry.generation}-{secrets.token_hex(4)}"
        home.mkdir(mode=0o700)  # never exist_ok: a home belongs to one spawn
        return home

    @staticmethod
    def _write_config(home: Path, config: Mapping[str, Any] | str | None) -> None:
        if config is None:
            return
        if isinstance(config, str):
            _toml.loads(config, source="the config builder's TOML")
            text = config
        else:
            try:
                text = _toml.dumps(config)
            except TypeError as exc:
                raise ConfigError(
                    f"the config builder returned an unwritable config: {exc}"
                ) from exc
        write_atomic(home / "config.toml", text.encode(), mode=0o600)

    def _environment(self, home: Path, extra: Mapping[str, str], token: str) -> dict[str, str]:
        env = child_environment(home, self.environ)
        env.update(self.config.extra_env)
        for name, value in extra.items():
            if name in (ENV_BASE_CODEX_HOME, self.config.loopback_env):
                raise ConfigError(f"a spawn's env may not set {name}: the pool sets it")
            env[name] = value
        env[self.config.loopback_env] = token
        return env

    # -- stopping --------------------------------------------------------------------------------

    def _begin_stop(self, entry: _Entry, reason: str) -> None:
        if entry.state is EntryState.STOPPING:
            return
        entry.state = EntryState.STOPPING
        entry.stop_reason = reason
        entry.token = None  # revoked the instant the entry stops serving
        task = asyncio.create_task(
            self._stop(entry, reason), name=f"app-server-pool:stop:{entry.key}"
        )
        task.add_done_callback(_retrieve)
        entry.stop_task = task

    async def _stop(self, entry: _Entry, reason: str) -> None:
        try:
            await self._stop_and_archive(entry, reason)
        except Exception:
            self.log.exception("stopping the app-server for %r failed", entry.key)
            raise
        finally:
            await entry.resources.aclose()
            if self._entries.get(entry.key) is entry:
                del self._entries[entry.key]

    async def _stop_and_archive(self, entry: _Entry, reason: str) -> None:
        process = entry.process
        if process is not None:
            code = await process.stop(
                StopPolicy(interrupt_grace=self.config.stop_grace, terminate_grace=0.0),
                first_signal=signal.SIGTERM,
            )
            self.log.info("app-server for %r stopped (%s, exit code %d)", entry.key, reason, code)
        if entry.watch_task is not None:
            await asyncio.gather(entry.watch_task, return_exceptions=True)
        if entry.launched is not None:
            for task in entry.launched.background:
                task.cancel()
            await asyncio.gather(*entry.launched.background, return_exceptions=True)
        if entry.home is not None and await self._archive(entry):
            await asyncio.to_thread(shutil.rmtree, entry.home, ignore_errors=True)

    async def _archive(self, entry: _Entry) -> bool:
        """Archive the stopped entry's home; False keeps the home on disk."""
        assert entry.home is not None
        rescued = await self._rescue_auth(entry.home, entry.account)
        try:
            async with entry.archiving:  # after a checkpoint in flight
                await self._put_held(entry, entry.home, entry.version)
        except StaleArchive as exc:
            self.log.warning("%s; keeping the home at %s instead", exc, entry.home)
            archived = False
        except KeyHeldElsewhere as exc:
            self.log.error(  # noqa: TRY400 - expected, said in full
                "not archiving the home of %r (%s); the home stays at %s",
                entry.key,
                exc,
                entry.home,
            )
            archived = False
        except Exception:
            self.log.exception(
                "archiving the home of %r failed; it stays at %s", entry.key, entry.home
            )
            archived = False
        else:
            archived = True
        if not rescued:
            # Kept, and its account held back, until the login is safe; a
            # home not archived stays even then (its state is nowhere else).
            self._strand(entry.home, entry.account, remove=archived)
        return archived and rescued

    async def _put_held(self, entry: _Entry, source: Path, version: int) -> None:
        """Archive ``source`` as ``version`` of the key, only while this replica holds it.

        The backend confirms the key lease first (:meth:`Lease.confirm
        <codex_supervisor.lease.Lease.confirm>`, a round trip, retried while
        the lease's TTL lasts: the put then runs inside a fresh TTL). A lease
        that lapsed or was lost (this process was suspended, the record was
        removed, the backend was out of reach too long) is taken again if
        nobody else holds it, and given back after the put; else
        KeyHeldElsewhere. Either way the store must still hold what this
        entry restored or last wrote: another replica that ran the key in
        the gap wrote newer state, and nothing of ours may replace it
        (KeyHeldElsewhere again; the caller keeps the home on disk).
        """
        lease = entry.key_lease
        if lease is None:
            await self.store.put(entry.key, source, version=version)
            return
        async with contextlib.AsyncExitStack() as held:
            if not await self._confirm_key(lease):
                await self._retake_key(entry, lease, held)
            await self._check_unmoved(entry)
            await self._put_tracked(entry, source, version)

    async def _confirm_key(self, lease: Lease) -> bool:
        """Whether the backend confirms ``lease``; a backend out of reach is asked again."""
        while True:
            try:
                await lease.confirm()
            except LeaseError:
                if lease.lost:
                    return False
                try:
                    lease.ensure_held()  # unanswered, but not past its TTL yet
                except LeaseError:
                    return False
                await self.clock.sleep(min(0.25, self.config.key_lease_ttl / 10))
            else:
                return True

    async def _retake_key(
        self, entry: _Entry, lease: Lease, held: contextlib.AsyncExitStack
    ) -> None:
        """Take ``entry``'s lapsed key lease again, renewed until ``held`` closes, or raise."""
        backend = self.config.leases
        assert backend is not None
        # The lapsed claim itself, if nobody judged it dead; else a fresh one
        # if nobody holds the key (the store check then tells whether anybody
        # ran it meanwhile).
        for replaces in (lease.record, None):
            try:
                await held.enter_async_context(
                    acquire_lease(
                        backend,
                        lease.name,
                        mode=LeaseMode.EXCLUSIVE,
                        ttl=self.config.key_lease_ttl,
                        timeout=0,
                        owner=lease.owner,
                        purpose=lease.record.purpose,
                        replaces=replaces,
                        clock=self.clock,
                    )
                )
            except LeaseTimeout:
                continue
            except LeaseError as exc:
                self.log.warning("cannot take the lease on %r again: %s", entry.key, exc)
                break
            self.log.warning("took the lapsed lease on %r again to archive it", entry.key)
            return
        raise await self._key_holder(entry.key, lease.name)

    async def _put_tracked(self, entry: _Entry, source: Path, version: int) -> None:
        """Put ``version`` and remember it as this entry's once the put succeeded.

        Shielded: a cancelled caller leaves the put to finish (a local
        store's worker thread would anyway), and it still counts as ours
        when it lands. A put that failed counts as nobody's: should it have
        landed nonetheless, the next archive of this entry is refused and
        its home kept, never the other way round.
        """

        await asyncio.shield(self._start_put(entry, source, version))

    def _start_put(self, entry: _Entry, source: Path, version: int) -> asyncio.Future[None]:
        """The put of ``version`` as a task; it is this entry's once it succeeded."""

        def settled(put: asyncio.Future[None]) -> None:
            if not put.cancelled() and put.exception() is None:
                entry.written.add(version)

        put = asyncio.ensure_future(self.store.put(entry.key, source, version=version))
        put.add_done_callback(settled)
        return put

    async def _check_unmoved(self, entry: _Entry) -> None:
        """Raise KeyHeldElsewhere when the store holds a version this entry did not write."""
        stored = await self.store.version(entry.key)
        if (stored or 0) not in entry.written:
            self.log.error(
                "the store holds version %s of %r, which this replica did not write: "
                "another one ran it meanwhile",
                stored,
                entry.key,
            )
            raise KeyHeldElsewhere(entry.key, None)

    async def checkpoint(self, key: str) -> int:
        """Archive ``key``'s home while its server runs on; returns the version written.

        Call it at a turn boundary (no turn in flight), e.g. after each
        turn: a replica that dies then loses no more than what happened
        since. The live home is first copied consistently
        (:func:`~codex_supervisor.appserver.checkpoint.snapshot_home`: its
        SQLite databases by online backup, rollouts up to their last
        complete line, other files linked) under
        ``root/checkpoints``, then archived as the next version; the server
        is not disturbed. Raises :class:`~codex_supervisor.errors.ConfigError`
        when ``key`` has no running server,
        :class:`~codex_supervisor.errors.LeaseLost` when the lease backend
        does not confirm the key lease right before the upload,
        :class:`~codex_supervisor.errors.KeyHeldElsewhere` when another
        replica archived the key meanwhile, and the store's errors.
        """
        entry = self._entries.get(key)
        if entry is None or entry.state is not EntryState.RUNNING:
            raise ConfigError(f"no running app-server for {key!r} to checkpoint")
        async with entry.archiving:
            if entry.state is not EntryState.RUNNING or self._entries.get(key) is not entry:
                raise ConfigError(f"the app-server for {key!r} stopped before its checkpoint")
            assert entry.home is not None
            # Taken before the put: a put whose outcome is unknown (an error,
            # a cancel) may have landed, so the next archive must be newer.
            version = entry.version
            entry.version = version + 1
            copy = await asyncio.to_thread(self._snapshot_folder, entry)
            # Shielded: a cancelled caller must not leave the copy half made
            # and then removed under the worker thread still writing it.
            snapshot = asyncio.ensure_future(asyncio.to_thread(snapshot_home, entry.home, copy))
            put: asyncio.Future[None] | None = None
            try:
                await asyncio.shield(snapshot)
                if entry.key_lease is not None:
                    # Right before the upload. A lease found lost stops the
                    # server (on_lost); so does a store another replica wrote.
                    await entry.key_lease.confirm()
                    try:
                        await self._check_unmoved(entry)
                    except KeyHeldElsewhere:
                        self._begin_stop(entry, "another replica archived its key meanwhile")
                        raise
                put = self._start_put(entry, copy, version)
                await asyncio.shield(put)
            finally:
                # The copy goes once nothing reads it: a cancelled caller leaves
                # the copy or the upload to finish in the background.
                busy = put if put is not None else snapshot
                if busy.done():
                    await asyncio.to_thread(shutil.rmtree, copy, ignore_errors=True)
                else:
                    busy.add_done_callback(lambda _: shutil.rmtree(copy, ignore_errors=True))
        self.log.debug("checkpointed %r as version %d", key, version)
        return version

    def _snapshot_folder(self, entry: _Entry) -> Path:
        """A new folder name for a checkpoint's copy; copies older than an hour are removed."""
        scratch = self.config.root / "checkpoints"
        scratch.mkdir(mode=0o700, parents=True, exist_ok=True)
        cutoff = time.time() - _STALE_SNAPSHOT_AGE
        with os.scandir(scratch) as found:
            for copy in found:  # left by a pool that died mid-checkpoint
                with contextlib.suppress(OSError):
                    if copy.stat(follow_symlinks=False).st_mtime < cutoff:
                        shutil.rmtree(copy.path, ignore_errors=True)
        return scratch / f"{_slug(entry.key)}-{entry.generation}-{secrets.token_hex(4)}"

    async def _rescue_auth(self, home: Path, account: str | None) -> bool:
        """Save a login Codex left as a file in ``home``; False when the home must stay."""
        if account is None or self.accounts is None:
            return True
        return await asyncio.to_thread(self._take_back_auth, home, account)

    def _strand(self, home: Path, account: str | None, *, remove: bool) -> None:
        """Keep ``home``, which was to go, until its login is safe (:meth:`retry_quarantined`).

        Its account is held back meanwhile (by the login's account id).
        """
        assert account is not None
        self._stranded[home] = _Kept(
            account=account, account_id=_login_id(home / "auth.json"), remove=remove
        )

    def _take_back_auth(self, home: Path, account: str) -> bool:
        assert self.accounts is not None
        auth = home / "auth.json"
        try:
            if auth.is_symlink() or not auth.exists():
                return True
            # Codex replaced the link with a file: it may hold the only live
            # refresh token of the account. Adopted, or else quarantined.
            self.accounts.take_back_auth(account, auth)
        except (SupervisorError, OSError) as exc:
            failure = exc
        else:
            return True
        self.log.error(
            "could neither take back nor quarantine the auth.json in %s (%s): it may hold "
            "the only live refresh token of %s, so the home is kept and retried later",
            home,
            failure,
            account,
        )
        return False

    async def retry_quarantined(self) -> list[QuarantinedAuth]:
        """Try again to take back the logins that could not be; returns those still waiting.

        Retries every quarantined login of the account pool
        (:meth:`~codex_supervisor.accounts.AccountPool.adopt_quarantined`)
        and every home kept because its auth.json could not even be
        quarantined (removed once its login is safe). The
        :class:`IdleReaper` calls it after every sweep; each spawn retries
        its own account's first. Never raises: a failure is logged.
        """
        if self.accounts is None:
            return []
        await self._scan_kept_homes()
        await self._retry_stranded()
        try:
            return await asyncio.to_thread(self.accounts.adopt_quarantined)
        except (SupervisorError, OSError):
            self.log.exception("retrying the quarantined logins failed")
            return []

    async def _retry_stranded(self) -> None:
        for home, kept in list(self._stranded.items()):
            if self._stranded.get(home) is not kept:
                continue  # released by a concurrent retry
            if kept.account is None and kept.account_id is not None and self.selector:
                # Found on disk for an account id the pool had not: imported since?
                try:
                    accounts = await self.selector.accounts()
                except SupervisorError:
                    self.log.exception("cannot read the accounts to retry %s", home)
                    continue
                owners = [a.name for a in accounts if a.identity.account_id == kept.account_id]
                kept.account = owners[0] if owners else None
            if kept.account is None:
                continue  # no account of the pool owns it (yet): nothing to take it into
            saved = await asyncio.to_thread(self._take_back_auth, home, kept.account)
            if not saved or self._stranded.get(home) is not kept:
                continue
            del self._stranded[home]
            if kept.remove:
                self.log.info("the login in the kept home %s is safe now; removing it", home)
                await asyncio.to_thread(shutil.rmtree, home, ignore_errors=True)
                continue
            with contextlib.suppress(OSError):
                info = (home / "auth.json").lstat()
                self._safe_homes[home] = (info.st_ino, info.st_size, info.st_mtime_ns)
            self.log.warning(
                "the login in the kept home %s is safe in %s now; the home stays (it may hold "
                "state that was never archived): delete it when it is no longer needed",
                home,
                kept.account,
            )

    async def _scan_kept_homes(self) -> None:
        """Find spawn homes with a login of their own that no live entry of this pool owns.

        Left by an earlier pool (killed, or closed while a login could not
        be saved) or kept when archiving failed: each may hold the only live
        refresh token of its account, which is held back until the login is
        taken back (:meth:`_retry_stranded`). Such a home is never removed.
        """
        assert self.accounts is not None
        skip = {e.home for e in self._entries.values() if e.home is not None}
        skip.update(self._stranded)
        safe = dict(self._safe_homes)
        accounts = self.accounts
        homes = self.config.root / "homes"

        def scan() -> list[tuple[Path, _Kept]]:
            try:
                candidates = sorted(homes.iterdir())
            except (FileNotFoundError, NotADirectoryError):
                return []
            by_id = {a.identity.account_id: a.name for a in accounts.accounts()}
            found: list[tuple[Path, _Kept]] = []
            for home in candidates:
                if home in skip:
                    continue
                auth = home / "auth.json"
                try:
                    info = auth.lstat()
                except OSError:
                    continue
                if not stat.S_ISREG(info.st_mode):
                    continue  # a link into the account (or nothing to save)
                if safe.get(home) == (info.st_ino, info.st_size, info.st_mtime_ns):
                    continue
                account_id = _login_id(auth)
                owner = None if account_id is None else by_id.get(account_id)
                found.append((home, _Kept(account=owner, account_id=account_id, remove=False)))
            return found

        try:
            found = await asyncio.to_thread(scan)
        except (SupervisorError, OSError):
            self.log.exception("looking for kept spawn homes in %s failed", homes)
            return
        for home, kept in found:
            if home in self._stranded or any(e.home == home for e in self._entries.values()):
                continue  # taken by a spawn or a strand meanwhile
            self._stranded[home] = kept
            self.log.error(
                "found the spawn home %s with a login of its own (%s): it may hold the only "
                "live refresh token, so %s until it is taken back",
                home,
                f"account {kept.account!r}" if kept.account else f"account id {kept.account_id}",
                "that account is not used" if kept.account else "the home is kept",
            )

    async def shutdown(self, key: str) -> None:
        """Stop ``key``'s server (SIGTERM to its group, grace, SIGKILL), archive its home.

        Safe on a missing key. A spawn in flight is let finish first. A
        concurrent :meth:`ensure` waits until the archive is written, then
        spawns fresh.
        """
        while True:
            entry = self._entries.get(key)
            if entry is None:
                return
            if entry.state is EntryState.STARTING:
                assert entry.spawn_task is not None
                with contextlib.suppress(Exception):
                    await asyncio.shield(entry.spawn_task)
                continue
            self._begin_stop(entry, "shutdown")
            assert entry.stop_task is not None
            await asyncio.shield(entry.stop_task)
            return

    async def shutdown_if_idle(self, key: str, idle_after: float) -> bool:
        """Shut ``key`` down only if it is still running and idle; True if it was."""
        entry = self._entries.get(key)
        if entry is None or entry.state is not EntryState.RUNNING:
            return False
        if entry.last_active >= self.clock.monotonic() - idle_after:
            return False
        self._begin_stop(entry, f"idle for more than {idle_after:g}s")
        assert entry.stop_task is not None
        await asyncio.shield(entry.stop_task)
        return True

    async def shutdown_all(self) -> None:
        """Shut down every server the pool has now, ``shutdown_parallelism`` at a time.

        Servers spawned while it runs are not included (:meth:`aclose`, which
        refuses new spawns first, leaves none).
        """
        gate = asyncio.Semaphore(self.config.shutdown_parallelism)

        async def one(key: str) -> None:
            async with gate:
                try:
                    await self.shutdown(key)
                except Exception:
                    self.log.exception("shutting down %r failed", key)

        await asyncio.gather(*(one(key) for key in list(self._entries)))

    # -- rotation -------------------------------------------------------------------------------

    async def rotate(
        self,
        key: str,
        *,
        exhausted: bool = False,
        reason: str = "rotate",
        from_account: str | None = None,
    ) -> AppServerHandle:
        """Move ``key`` to another account: stop, archive, respawn on the successor.

        Threads of the key live in its home, so they resume on the new server
        (``thread/resume``). With ``exhausted`` (a turn failed with
        ``usageLimitExceeded``) the old account is first cooled down until its
        window resets. ``from_account`` names the account the caller saw
        failing (default: the key's account when called); if the key has
        moved off it meanwhile (another rotation), the current handle is
        returned and nothing else changes. The successor is chosen before
        anything is stopped: if it would be the same account (nothing better
        can run), the running handle is returned unchanged; if no account can
        run at all, :class:`~codex_supervisor.errors.QuotaUnavailable` is
        raised and the old server keeps running. A key shut down meanwhile
        raises :class:`~codex_supervisor.errors.ConfigError` and is not
        respawned. With :attr:`PoolConfig.leases` the key is given back while
        its home is archived: should another replica take it in that moment,
        :class:`~codex_supervisor.errors.KeyHeldElsewhere` is raised (the
        key runs there, from the same archive).
        """
        return await self._rotate(
            key, exhausted=exhausted, reason=reason, from_account=from_account, idle_since=None
        )

    async def _settled(self, key: str) -> _Entry:
        """``key``'s running entry, after any spawn or stop in flight; ConfigError if none."""
        while True:
            entry = self._entries.get(key)
            if entry is None:
                raise ConfigError(f"no app-server for {key!r} to rotate")
            task: asyncio.Task[Any] | None = entry.spawn_task
            if entry.state is EntryState.STOPPING:
                task = entry.stop_task
            elif entry.state is EntryState.RUNNING:
                return entry
            assert task is not None
            with contextlib.suppress(Exception):
                await asyncio.shield(task)

    async def _rotate(
        self,
        key: str,
        *,
        exhausted: bool,
        reason: str,
        from_account: str | None,
        idle_since: float | None,
    ) -> AppServerHandle:
        if self.accounts is None:
            raise ConfigError("rotate needs an account pool")
        called_on = self._entries.get(key)
        old = from_account if from_account is not None else getattr(called_on, "account", None)
        cooled = False
        while True:
            entry = await self._settled(key)
            assert entry.handle is not None
            if old is None:
                old = entry.account
            if old is None:  # a pool entry without an account cannot move
                return entry.handle
            if exhausted and not cooled:
                await self._cool_down(old, reason)
                cooled = True
                continue  # the key may have changed while cooling down
            if entry.account != old:
                return entry.handle  # already moved off that account
            successor = await self._choose(old)
            if self._entries.get(key) is not entry or entry.state is not EntryState.RUNNING:
                continue  # stopped, crashed or replaced while choosing: look again
            if idle_since is not None and entry.last_active != idle_since:
                return entry.handle  # activity resumed: not idle any more
            if successor == old and entry.handle.is_alive():
                self.log.info("%r stays on %s: no other account can take it (%s)", key, old, reason)
                return entry.handle
            # Checked and stopped in one step: nothing can slip in between.
            self._begin_stop(entry, reason)
            break
        assert entry.stop_task is not None
        await asyncio.shield(entry.stop_task)
        self._avoid[key] = old
        handle = await self.ensure(key, entry.build)
        self.log.info("rotated %r from %s to %s (%s)", key, old, handle.account, reason)
        return handle

    async def _cool_down(self, account: str, reason: str) -> None:
        assert self.selector is not None
        # Repeated exhaustion without a known reset backs off (doubling); a
        # streak is forgotten once the longest backoff has passed quietly.
        count, last = self._failures.get(account, (0, float("-inf")))
        now = self.clock.monotonic()
        if now - last > self.policy.max_unknown_reset_backoff.total_seconds():
            count = 0
        self._failures[account] = (count + 1, now)
        await self.selector.cool_down(account, failures=count, cause=reason)

    async def rebalance(
        self, activity_probe: Callable[[str], bool | Awaitable[bool]] | None = None
    ) -> list[str]:
        """Rotate keys whose account the policy says to leave, if idle; returns them.

        For each running key, asks the rotation policy about its account (with
        fresh quota where stale); on rotate-now or rotate-at-boundary, and
        when ``activity_probe`` does not report a turn in flight, rotates it.
        """
        if self.accounts is None:
            return []
        rotated: list[str] = []
        candidates: list[Candidate] | None = None
        for entry in list(self._entries.values()):
            if entry.state is not EntryState.RUNNING or entry.account is None:
                continue
            if candidates is None:  # read once, and again after each rotation
                candidates = await self._candidates()
            current = next((c for c in candidates if c.name == entry.account), None)
            if current is None:
                continue
            others = [c for c in candidates if c.name != entry.account]
            decision = self.policy.decide(current, others, self.clock.now())
            if not isinstance(decision, (RotateNow, RotateAtBoundary)):
                continue
            seen = entry.last_active
            if await _is_active(activity_probe, entry.key, self.log):
                continue
            if self._entries.get(entry.key) is not entry or entry.state is not EntryState.RUNNING:
                continue
            handle = await self._rotate(
                entry.key,
                exhausted=isinstance(decision, RotateNow),
                reason=f"policy: {decision.reason}",
                from_account=entry.account,
                idle_since=seen,
            )
            if handle is not entry.handle:
                rotated.append(entry.key)
                candidates = None
        return rotated


async def _is_active(
    probe: Callable[[str], bool | Awaitable[bool]] | None, key: str, logger: logging.Logger
) -> bool:
    if probe is None:
        return False
    try:
        answer = probe(key)
        return bool(await answer if inspect.isawaitable(answer) else answer)
    except Exception:
        # An unanswerable probe must not lose someone's turn.
        logger.exception("activity probe failed for %r; treating it as active", key)
        return True


@final
class IdleReaper:
    """Shuts down entries of a pool idle for longer than ``idle_after`` seconds.

    ``activity_probe(key)`` (sync or async) is asked before reaping: a broker
    with a turn in flight answers True, and the entry is kept and touched. A
    probe that raises counts as active. Run :meth:`run` as a task (cancel it
    to stop) or call :meth:`sweep` yourself.
    """

    def __init__(
        self,
        pool: AppServerPool,
        interval: float,
        idle_after: float,
        activity_probe: Callable[[str], bool | Awaitable[bool]] | None = None,
    ) -> None:
        if not interval > 0 or not idle_after >= 0:
            raise ConfigError("interval must be positive and idle_after >= 0")
        self.pool = pool
        self.interval = interval
        self.idle_after = idle_after
        self.activity_probe = activity_probe

    async def sweep(self) -> list[str]:
        """One pass: reap every idle entry the probe does not vouch for; returns them."""
        reaped: list[str] = []
        gate = asyncio.Semaphore(self.pool.config.shutdown_parallelism)

        async def one(key: str) -> None:
            if await _is_active(self.activity_probe, key, self.pool.log):
                self.pool.touch(key)
                return
            async with gate:
                if await self.pool.shutdown_if_idle(key, self.idle_after):
                    reaped.append(key)

        keys = self.pool.idle_keys(self.idle_after)
        outcomes = await asyncio.gather(*(one(key) for key in keys), return_exceptions=True)
        for key, outcome in zip(keys, outcomes, strict=True):
            if isinstance(outcome, BaseException):
                self.pool.log.error("reaping %r failed: %s", key, outcome)
        # Logins that could not be taken back earlier (pool lock busy, ...).
        await self.pool.retry_quarantined()
        return reaped

    async def run(self) -> None:
        """Sweep every ``interval`` seconds until cancelled."""
        while True:
            await asyncio.sleep(self.interval)
            try:
                reaped = await self.sweep()
            except Exception:
                self.pool.log.exception("idle sweep failed")
                continue
            if reaped:
                self.pool.log.info("reaped idle app-servers: %s", ", ".join(reaped))


def relocate_threads(home: Path, logger: logging.Logger = log) -> int:
    """Point the thread index of a restored home at the rollouts in ``home``.

    Codex keeps an index of threads (``state_<n>.sqlite``, table ``threads``)
    with each rollout's absolute path, and ``thread/resume`` trusts it: after
    a restore into a new folder every path names the old, deleted home and
    resume fails with "no rollout found". Rows whose rollout now lies in
    ``home`` (same ``sessions/…`` or ``archived_sessions/…`` tail) get that
    path; nothing else is touched. A database this cannot read or update is
    left as it is (logged); Codex then reports the thread missing rather
    than reading a wrong file. Returns the rows updated.
    """
    updated = 0
    for database in sorted(home.glob("state_*.sqlite")):
        try:
            with contextlib.closing(sqlite3.connect(database, timeout=5.0)) as db, db:
                rows = db.execute("SELECT id, rollout_path FROM threads").fetchall()
                for thread_id, path in rows:
                    found = _ROLLOUT_TAIL.search(path) if isinstance(path, str) else None
                    if found is None:
                        continue
                    moved = home / found.group(1)
                    if str(moved) == path or not moved.is_file():
                        continue
                    db.execute(
                        "UPDATE threads SET rollout_path = ? WHERE id = ?", (str(moved), thread_id)
                    )
                    updated += 1
        except sqlite3.Error as exc:
            logger.warning("could not relocate the thread index %s: %s", database, exc)
    if updated:
        logger.debug("relocated %d thread(s) into %s", updated, home)
    return updated
