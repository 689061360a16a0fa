"""The exception tree of codex_supervisor.

Every error the library raises derives from :class:`SupervisorError`; foreign
exceptions (httpx, portalocker, cattrs, OSError) are translated at the boundary
with ``raise ... from exc`` so callers need to catch only our tree. Where a
builtin fits, the error also inherits it, so ``except TimeoutError`` works::

    SupervisorError
    ├── ConfigError (ValueError)           bad configuration or arguments
    │   └── AccountGone                    an account not (or no longer) in the pool
    ├── CodexCLIError                      the Codex binary itself
    │   ├── CodexNotFoundError (FileNotFoundError)
    │   └── UnsupportedCodexVersion        a version the feature table does not know
    ├── AuthError                          an auth.json we cannot use
    │   ├── LoginQuarantined               an account's newest login is not in its home
    │   │   └── CredentialsHeld            a shared store cannot vouch for its login
    │   └── CredentialError                the shared credential store: key, reach
    ├── StateError                         a malformed or unreadable state file
    ├── LeaseError
    │   ├── LeaseTimeout (TimeoutError)    could not acquire in time
    │   ├── LeaseLost                      a held lease was taken or expired (ensure_held)
    │   ├── AccountBusy                    a shared pool's account runs on another machine
    │   └── AccountInUse                   an occupied account cannot be removed now
    ├── QuotaError
    │   ├── QuotaUnavailable               no source could produce a snapshot
    │   ├── QuotaParseError (ValueError)   a usage payload / rate-limit object we cannot read
    │   └── QuotaAuthExpired               the usage endpoint refused the token (401/403)
    ├── SessionError                       a Codex session (rollout) we cannot find or bind
    ├── ProcessError                       launching or stopping a child failed
    ├── AppServerError                     the app-server protocol layer
    │   ├── TransportClosed (ConnectionError)  EOF / exit; carries exit code and stderr tail
    │   ├── RequestFailed                      a JSON-RPC error response
    │   ├── SpawnError                         a pooled app-server did not start or get ready
    │   ├── KeyHeldElsewhere                   a pooled key's app-server runs on another replica
    │   └── BrokerAlreadyRunning (FileExistsError)  a live broker owns the socket path
    └── HomeStoreError                     archiving or restoring a Codex home
        ├── HomeNotFound (LookupError)     no archive for that key
        ├── UnsafeArchive (ValueError)     a member that escapes or is no plain file/folder
        └── StaleArchive                   an older archive would overwrite a newer one

Errors carry structured attributes and pickle cleanly (``args`` holds every
constructor argument), so they can cross process boundaries in tests and tools.
"""

from __future__ import annotations

__all__ = [
    "AccountBusy",
    "AccountGone",
    "AccountInUse",
    "AppServerError",
    "AuthError",
    "BrokerAlreadyRunning",
    "CodexCLIError",
    "CodexNotFoundError",
    "ConfigError",
    "CredentialError",
    "CredentialsHeld",
    "HomeNotFound",
    "HomeStoreError",
    "KeyHeldElsewhere",
    "LeaseError",
    "LeaseLost",
    "LeaseTimeout",
    "LoginQuarantined",
    "ProcessError",
    "QuotaAuthExpired",
    "QuotaError",
    "QuotaParseError",
    "QuotaUnavailable",
    "RequestFailed",
    "SessionError",
    "SpawnError",
    "StaleArchive",
    "StateError",
    "SupervisorError",
    "TransportClosed",
    "UnsafeArchive",
    "UnsupportedCodexVersion",
]


class SupervisorError(Exception):
    """Root of every exception codex_supervisor raises."""


class ConfigError(SupervisorError, ValueError):
    """Configuration or arguments that cannot be used."""


class AccountGone(ConfigError):
    """An account that is not (or no longer) in the pool: removed, or never added.

    Raised where work was about to start on it (occupying it, preparing its
    home), so the caller can choose another account. ``reason`` says more.
    """

    def __init__(self, name: str, reason: str) -> None:
        super().__init__(name, reason)
        self.name = name
        self.reason = reason

    def __str__(self) -> str:
        return f"account {self.name!r} is not in the pool: {self.reason}"


class CodexCLIError(SupervisorError):
    """A problem with the Codex CLI binary itself."""


class CodexNotFoundError(CodexCLIError, FileNotFoundError):
    """The Codex binary could not be found or executed."""


class UnsupportedCodexVersion(CodexCLIError):
    """The installed Codex version is not one the library knows how to drive."""

    def __init__(self, version: str, minimum: str) -> None:
        super().__init__(version, minimum)
        self.version = version
        self.minimum = minimum

    def __str__(self) -> str:
        return f"Codex CLI {self.version} is not supported (need {self.minimum} or newer)"


class AuthError(SupervisorError):
    """An auth.json that is missing, malformed or unsafe to use."""


class LoginQuarantined(AuthError):
    """Codex must not start on ``account``: a newer login of it waits outside its home.

    A pooled app-server refreshed the login into a file of its own that could
    not be taken back into the account (it waits in quarantine at ``path``,
    or in the kept spawn home ``path``). The account's own auth.json then
    holds a spent refresh token: Codex started there would replay it, which
    can revoke the whole login. ``reason`` says why it could not be taken
    back; the library retries it on every choice of account.
    """

    def __init__(self, account: str, path: str, reason: str) -> None:
        super().__init__(account, path, reason)
        self.account = account
        self.path = path
        self.reason = reason

    def __str__(self) -> str:
        return (
            f"account {self.account!r} is not used: a newer login of it waits at {self.path} "
            f"({self.reason}); Codex there would refresh with a spent refresh token"
        )


class CredentialsHeld(LoginQuarantined):
    """Codex must not start on ``account``: the shared store cannot vouch for its login.

    A pool shared by several machines (see :mod:`codex_supervisor.credentials`)
    hands an account to another machine only when the last machine that held
    it pushed every change it saw of its auth.json. ``site`` saw a change it
    never pushed (it died or lost the store first): the shared copy may hold
    a spent refresh token. ``path`` is where the store lives.
    """

    def __init__(self, account: str, path: str, reason: str, site: str | None = None) -> None:
        super().__init__(account, path, reason)
        self.site = site

    def __str__(self) -> str:
        where = f"on {self.site}" if self.site else "on the machine that held it"
        return (
            f"account {self.account!r} is held back: {self.reason}. To do: {where}, run "
            f"`codex-supervisor status` (it pushes that machine's newer auth.json); or "
            f"`codex-supervisor accounts login {self.account}` again; or "
            f"`codex-supervisor accounts unhold {self.account}` to take the shared copy as it is"
        )


class CredentialError(AuthError):
    """The shared credential store cannot be used: no key, a wrong key, unreachable."""


class StateError(SupervisorError):
    """A state or lease file that is malformed or cannot be read."""


class LeaseError(SupervisorError):
    """Base for lease and lock failures."""


class LeaseTimeout(LeaseError, TimeoutError):
    """A lock or lease could not be acquired before the deadline."""

    def __init__(self, name: str, timeout: float, holder: str | None = None) -> None:
        super().__init__(name, timeout, holder)
        self.name = name
        self.timeout = timeout
        self.holder = holder

    def __str__(self) -> str:
        held = f" (held by {self.holder})" if self.holder else ""
        return f"could not acquire {self.name!r} within {self.timeout:g}s{held}"


class LeaseLost(LeaseError):
    """A lease this process held was taken over, removed or expired.

    Raised only in the foreground, by :meth:`~codex_supervisor.lease.Lease.ensure_held`
    when the caller asks before acting on its claim; the heartbeat reports a
    loss through ``on_lost`` and never raises.
    """

    def __init__(self, name: str, owner: str, reason: str) -> None:
        super().__init__(name, owner, reason)
        self.name = name
        self.owner = owner
        self.reason = reason

    def __str__(self) -> str:
        return f"lease {self.name!r} of {self.owner} was lost: {self.reason}"


class AccountInUse(LeaseError):
    """An account that cannot be removed now: something occupies it (a Codex child, a probe).

    ``occupants`` describes them (pid, host, purpose, since).
    """

    def __init__(self, name: str, occupants: str) -> None:
        super().__init__(name, occupants)
        self.name = name
        self.occupants = occupants

    def __str__(self) -> str:
        return f"account {self.name!r} is in use by {self.occupants}; not removed"


class AccountBusy(LeaseError):
    """An account of a shared pool that runs on another site (machine) now.

    Its login is used at one site at a time, so the caller chooses another
    account or waits. ``site`` is where it runs.
    """

    def __init__(self, name: str, site: str) -> None:
        super().__init__(name, site)
        self.name = name
        self.site = site

    def __str__(self) -> str:
        return f"account {self.name!r} is in use on {self.site}"


class QuotaError(SupervisorError):
    """Base for quota reading failures."""


class QuotaUnavailable(QuotaError):
    """No quota source could produce a snapshot for an account."""


class QuotaParseError(QuotaError, ValueError):
    """A usage payload or rate-limit object that cannot be read."""


class QuotaAuthExpired(QuotaError):
    """The usage endpoint refused the access token (401/403).

    Not a failure of the account: Codex refreshes its token on next use, and
    the library never refreshes tokens itself.
    """

    def __init__(self, account: str, status: int) -> None:
        super().__init__(account, status)
        self.account = account
        self.status = status

    def __str__(self) -> str:
        return f"usage endpoint refused the access token of {self.account!r} ({self.status})"


class SessionError(SupervisorError):
    """A Codex session that cannot be found, or a new one that cannot be bound."""


class ProcessError(SupervisorError):
    """A child process could not be launched or stopped."""


class AppServerError(SupervisorError):
    """Base for ``codex app-server`` protocol failures."""


class TransportClosed(AppServerError, ConnectionError):
    """The app-server transport closed (EOF, process exit or socket error)."""

    def __init__(self, message: str, returncode: int | None = None, stderr_tail: str = "") -> None:
        super().__init__(message, returncode, stderr_tail)
        self.message = message
        self.returncode = returncode
        self.stderr_tail = stderr_tail

    def __str__(self) -> str:
        code = "" if self.returncode is None else f" (exit code {self.returncode})"
        return f"{self.message}{code}"


class RequestFailed(AppServerError):
    """The app-server answered a request with a JSON-RPC error."""

    def __init__(self, method: str, code: int, message: str, data: object = None) -> None:
        super().__init__(method, code, message, data)
        self.method = method
        self.code = code
        self.message = message
        self.data = data

    def __str__(self) -> str:
        return f"{self.method} failed with {self.code}: {self.message}"


class SpawnError(AppServerError):
    """A pooled ``codex app-server`` did not start, announce its port or get ready in time."""

    def __init__(
        self, key: str, message: str, returncode: int | None = None, stderr_tail: str = ""
    ) -> None:
        super().__init__(key, message, returncode, stderr_tail)
        self.key = key
        self.message = message
        self.returncode = returncode
        self.stderr_tail = stderr_tail

    def __str__(self) -> str:
        code = "" if self.returncode is None else f" (exit code {self.returncode})"
        return f"app-server for {self.key!r}: {self.message}{code}"


class KeyHeldElsewhere(AppServerError):
    """A pooled key whose app-server runs on another replica (it holds the key's lease).

    ``replica`` names the holder and ``address`` is where it said clients
    reach it (None when it published none, or its record could not be read);
    ``expires_at`` is when its claim lapses unless renewed (ISO 8601, or None).
    """

    def __init__(
        self,
        key: str,
        replica: str | None,
        address: str | None = None,
        expires_at: str | None = None,
    ) -> None:
        super().__init__(key, replica, address, expires_at)
        self.key = key
        self.replica = replica
        self.address = address
        self.expires_at = expires_at

    def __str__(self) -> str:
        where = f"replica {self.replica}" if self.replica else "another replica"
        if self.address:
            where += f" at {self.address}"
        return f"app-server for {self.key!r} runs on {where}"


class BrokerAlreadyRunning(AppServerError, FileExistsError):
    """A live broker already answers on the socket path, so another may not take it."""

    def __init__(self, socket_path: str) -> None:
        # One argument, so OSError leaves errno/strerror unset and args holds
        # exactly what __init__ takes: the error pickles like the others.
        super().__init__(socket_path)
        self.socket_path = socket_path

    def __str__(self) -> str:
        return f"a live broker already listens on {self.socket_path}"


class HomeStoreError(SupervisorError):
    """Base for failures to archive or restore a Codex home."""


class HomeNotFound(HomeStoreError, LookupError):
    """The store holds no archive for that key."""

    def __init__(self, key: str) -> None:
        super().__init__(key)
        self.key = key

    def __str__(self) -> str:
        return f"no home archive for {self.key!r}"


class UnsafeArchive(HomeStoreError, ValueError):
    """An archive member that is not a plain file or folder inside the destination."""

    def __init__(self, member: str, why: str) -> None:
        super().__init__(member, why)
        self.member = member
        self.why = why

    def __str__(self) -> str:
        return f"refused archive member {self.member!r}: {self.why}"


class StaleArchive(HomeStoreError):
    """An archive would overwrite one of the same or a newer version."""

    def __init__(self, key: str, version: int, stored: int) -> None:
        super().__init__(key, version, stored)
        self.key = key
        self.version = version
        self.stored = stored

    def __str__(self) -> str:
        return (
            f"home archive {self.key!r} version {self.version} is not newer than "
            f"the stored version {self.stored}"
        )
