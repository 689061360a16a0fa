"""A stand-in for the ``codex`` binary (Codex CLI 0.169.0 and 0.171.0) for fast tests and demos.

Run it as ``python -m codex_supervisor.testing.simulator ARGS``, or let
:func:`install_simulator` write a ``codex`` script that does. It follows the
real argv grammar (``codex [OPTS] [PROMPT]``, ``codex resume``, ``codex exec``,
``codex exec resume``), talks to a model provider on 127.0.0.1 the way Codex
does (auth.json tokens or an API key, single-use refresh tokens, the Responses
SSE stream and its ``x-codex-*`` quota headers) and writes rollout files in the
real format, so code that drives Codex can be tested in milliseconds.

It impersonates 0.169.0 by default and any release in
:data:`SIMULATED_VERSIONS` when ``$CODEX_SIMULATOR_VERSION`` names it
(``install_simulator(version=...)`` writes that into the script): ``--version``,
``session_meta.cli_version``, the banner, the user agent and the version's
command-line differences follow. What it mirrors from the real binaries
(checked against each tested version, see ``tests/e2e/test_simulator_drift.py``):

- the rollout path, the line envelope (``timestamp``, ``ordinal``, ``type``,
  ``payload``, plus ``metadata`` on ``response_item`` lines) and the payload
  keys of ``session_meta``, ``task_started``, ``token_count`` and
  ``task_complete``;
- ``token_count`` is written when a response ends (after
  ``response.completed``, or when a 429 or a dropped stream fails the turn),
  from the quota headers that response carried; 0.169.0 writes nothing while
  a stream is still open, so a turn killed mid-stream has no ``token_count``;
- the error shapes: ``usage_limit_exceeded`` for a 429, ``internal_server_error``
  for a 5xx, ``other`` for a dropped stream; ``codex exec`` then exits 1;
- the thread writer lock ``$CODEX_HOME/thread-writer-locks/<id>.lock``: held
  with ``flock`` while the thread is loaded, deleted on a clean exit, left
  unlocked by a kill; a second writer is refused;
- SIGINT, SIGTERM and SIGHUP end it by their default action, without cleanup;
- command hooks given with ``-c hooks.SessionStart=…`` / ``-c hooks.Stop=…``
  (the session-flags layer) run when trusted by a ``-c hooks.state={…}`` entry
  with Codex's hash, through ``sh -c`` with the JSON payload on stdin:
  SessionStart once, when the process's first turn starts (``source``
  ``startup`` or ``resume``), Stop at the end of each turn that did not
  fail, before ``task_complete``. Hooks in config files are not run.

What it does not do: tools, sandboxing, compaction, the TUI screen (the
interactive mode reads one prompt per stdin line and prints each reply on
stdout), the TUI's extra "thread title" request, and any network access off
127.0.0.1 — a non-loopback URL is refused.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import ipaddress
import itertools
import json
import os
import re
import signal
import ssl
import subprocess
import sys
import tempfile
import time
import tomllib
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn
from urllib.parse import urlsplit

import httpx

from ._tokens import AUTH_CLAIMS_KEY, decode_jwt_claims

if TYPE_CHECKING:
    from collections.abc import Iterable, Iterator, Sequence

__all__ = ["CLI_VERSION", "SIMULATED_VERSIONS", "VERSION_ENV", "main"]

#: The Codex CLI version the simulator imitates by default (``codex --version``).
CLI_VERSION = "0.169.0"
#: The environment variable that makes the simulator impersonate another
#: release (``install_simulator(version=...)`` sets it in the script).
VERSION_ENV = "CODEX_SIMULATOR_VERSION"


@dataclass(frozen=True)
class _Release:
    """What differs, for the simulator, between the releases it impersonates."""

    # `codex exec` and `exec resume` accept --remote / --remote-auth-token-env (0.171.0).
    exec_remote: bool
    # The hidden `stdio-to-uds` subcommand exists (gone in 0.171.0).
    stdio_to_uds: bool


_RELEASES: dict[tuple[int, int, int], _Release] = {
    (0, 169, 0): _Release(exec_remote=False, stdio_to_uds=True),
    (0, 171, 0): _Release(exec_remote=True, stdio_to_uds=False),
}
#: The releases whose command line the simulator follows exactly (each tested
#: against the real binary of that version). Any other ``X.Y.Z`` is accepted and
#: behaves like the newest of these at or below it (or the oldest).
SIMULATED_VERSIONS: tuple[str, ...] = tuple(".".join(map(str, v)) for v in sorted(_RELEASES))
_VERSION_TEXT = re.compile(r"(\d{1,9})\.(\d{1,9})\.(\d{1,9})")


def _version() -> str:
    """The version to impersonate: ``$CODEX_SIMULATOR_VERSION`` or :data:`CLI_VERSION`."""
    return os.environ.get(VERSION_ENV) or CLI_VERSION


def _release() -> _Release:
    found = _VERSION_TEXT.fullmatch(_version())
    if found is None:
        raise _Exit(2, f"codex simulator: {VERSION_ENV} is not a version: {_version()!r}")
    wanted = tuple(int(part) for part in found.groups())
    known = [v for v in sorted(_RELEASES) if v <= wanted] or [min(_RELEASES)]
    return _RELEASES[known[-1]]


_CLIENT_ID = "app_EMoamEEZ73f0CkXaXp7hrann"
# What 0.169.0 reports for a model it has no metadata for (any fake model).
_CONTEXT_WINDOW = 258400
# Codex refreshes ChatGPT tokens that were last refreshed this long ago.
_REFRESH_INTERVAL = timedelta(days=8)
_DEFAULT_IDLE_TIMEOUT = 300.0  # Codex's default stream_idle_timeout_ms, in seconds
_CONNECT_TIMEOUT = 10.0
_REFRESH_TIMEOUT = 30.0
_UUID_RE = re.compile(
    r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}"
)
_HIGH_DEMAND = "We\u2019re currently experiencing high demand, which may cause temporary errors."

# -- argv grammar ---------------------------------------------------------------

# Options that take a value, by spelling → canonical name. The union of the
# root, ``exec``, ``exec resume`` and ``resume`` options of 0.169.0 (plus
# ``--full-auto`` from older versions): accepted everywhere, since being lenient
# about where an option goes costs nothing in a test double.
_VALUE_OPTIONS = {
    "-c": "config",
    "--config": "config",
    "--enable": "enable",
    "--disable": "disable",
    "--remote": "remote",
    "--remote-auth-token-env": "remote_auth_token_env",
    "-i": "image",
    "--image": "image",
    "-m": "model",
    "--model": "model",
    "--local-provider": "local_provider",
    "-p": "profile",
    "--profile": "profile",
    "-s": "sandbox",
    "--sandbox": "sandbox",
    "-C": "cd",
    "--cd": "cd",
    "--add-dir": "add_dir",
    "-a": "approval",
    "--ask-for-approval": "approval",
    "--thread-source": "thread_source",
    "--cyber-access-program": "cyber_access_program",
    "--output-schema": "output_schema",
    "--color": "color",
    "-o": "output_last_message",
    "--output-last-message": "output_last_message",
}
_FLAG_OPTIONS = {
    "--strict-config": "strict_config",
    "--oss": "oss",
    "--approve-for-me": "approve_for_me",
    "--dangerously-bypass-approvals-and-sandbox": "bypass",
    "--dangerously-bypass-hook-trust": "bypass_hook_trust",
    "--full-auto": "full_auto",
    "--worktree": "worktree",
    "--search": "search",
    "--no-alt-screen": "no_alt_screen",
    "--no-daemon": "no_daemon",
    "--skip-git-repo-check": "skip_git_repo_check",
    "--trust": "trust",
    "--ephemeral": "ephemeral",
    "--ignore-user-config": "ignore_user_config",
    "--ignore-rules": "ignore_rules",
    "--json": "json",
    "--last": "last",
    "--all": "all",
    "--include-non-interactive": "include_non_interactive",
    "-h": "help",
    "--help": "help",
    "-V": "version",
    "--version": "version",
}
# Root-only options until 0.171.0, then accepted by `exec` and `exec resume` too.
_EXEC_REMOTE = frozenset({"--remote", "--remote-auth-token-env"})
_CHOICES = {
    "sandbox": ("read-only", "workspace-write", "danger-full-access"),
    "approval": ("untrusted", "on-failure", "on-request", "never"),
    "color": ("always", "never", "auto"),
    "cyber_access_program": ("standard", "daybreak_blue", "daybreak_red"),
}
# Subcommands the simulator only acknowledges (stderr note, exit 0).
_OTHER_COMMANDS = frozenset(
    [
        "agents",
        "review",
        "login",
        "logout",
        "mcp",
        "mcp-server",
        "plugin",
        "app-server",
        "remote-control",
        "completion",
        "update",
        "doctor",
        "sandbox",
        "debug",
        "apply",
        "a",
        "queue",
        "archive",
        "delete",
        "migrate-rollouts",
        "migrate-nfs-db",
        "unarchive",
        "fork",
        "cloud",
        "exec-server",
        "features",
    ]
)
_USAGE = """\
Codex CLI simulator (codex_supervisor.testing) imitating codex-cli {version}

Usage: codex [OPTIONS] [PROMPT]
       codex resume [OPTIONS] [SESSION_ID|--last] [PROMPT]
       codex exec [OPTIONS] PROMPT
       codex exec resume [OPTIONS] [SESSION_ID|--last] [PROMPT]

Interactive mode reads one prompt per stdin line and exits 0 at end of input.
"""


class _Exit(Exception):
    """Stop with ``code`` after printing ``message`` on stderr."""

    def __init__(self, code: int, message: str = "") -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def _usage_error(message: str) -> NoReturn:
    # clap's exit status for bad argv; the real binary prints the same shape.
    raise _Exit(2, f"error: {message}\n\nFor more information, try '--help'.")


@dataclass
class _Invocation:
    """One parsed command line."""

    command: tuple[str, ...] = ()
    values: dict[str, list[str]] = field(default_factory=dict)
    flags: set[str] = field(default_factory=set)
    positionals: list[str] = field(default_factory=list)
    rest: list[str] = field(default_factory=list)  # argv of an acknowledged subcommand

    def value(self, name: str) -> str | None:
        """The last value given for option ``name``."""
        given = self.values.get(name)
        return given[-1] if given else None


def _parse_argv(argv: Sequence[str]) -> _Invocation:
    """Parse ``argv`` (without the program name) like clap would, leniently."""
    inv = _Invocation()
    args = list(argv)
    i = 0
    while i < len(args):
        arg = args[i]
        i += 1
        if arg == "--":
            inv.positionals.extend(args[i:])
            break
        if arg.startswith("-") and arg != "-":
            i = _parse_option(inv, arg, args, i)
            continue
        if not inv.positionals and _enters_subcommand(inv, arg):
            if inv.command[0] in _other_commands() or inv.command == ("help",):
                inv.rest = args[i:]
                break
            continue
        inv.positionals.append(arg)
    return inv


def _other_commands() -> frozenset[str]:
    return _OTHER_COMMANDS | ({"stdio-to-uds"} if _release().stdio_to_uds else set())


def _enters_subcommand(inv: _Invocation, arg: str) -> bool:
    if not inv.command and (arg in _other_commands() or arg in ("exec", "e", "resume", "help")):
        inv.command = ("exec",) if arg == "e" else (arg,)
        return True
    if inv.command == ("exec",) and arg == "resume":
        inv.command = ("exec", "resume")
        return True
    return False


def _parse_option(inv: _Invocation, arg: str, args: list[str], i: int) -> int:
    """Record one option; returns the index of the next unread argument."""
    if arg.startswith("--"):
        name, eq, inline = arg.partition("=")
        attached: str | None = inline if eq else None
    else:
        name, rest = arg[:2], arg[2:]
        attached = (rest.removeprefix("=") or None) if rest else None
    if name in _EXEC_REMOTE and inv.command[:1] == ("exec",) and not _release().exec_remote:
        _usage_error(f"unexpected argument '{name}' found")
    if name in _VALUE_OPTIONS:
        canonical = _VALUE_OPTIONS[name]
        if attached is None:
            if i >= len(args):
                _usage_error(f"a value is required for '{name}' but none was supplied")
            attached = args[i]
            i += 1
        choices = _CHOICES.get(canonical)
        if choices is not None and attached not in choices:
            _usage_error(
                f"invalid value '{attached}' for '{name}'\n"
                f"  [possible values: {', '.join(choices)}]"
            )
        inv.values.setdefault(canonical, []).append(attached)
    elif name in _FLAG_OPTIONS and attached is None:
        inv.flags.add(_FLAG_OPTIONS[name])
    elif name.startswith("--") and name not in _FLAG_OPTIONS:
        # Unknown long options are tolerated so that a supervisor passing a
        # flag from a newer Codex still gets a working stand-in.
        _note(f"ignoring unknown option {name}")
    else:
        _usage_error(f"unexpected argument '{arg}' found")
    return i


# -- small helpers -------------------------------------------------------------------


def _write(stream: Any, text: str) -> None:
    # A reader that went away must not turn a finished turn into a traceback.
    with contextlib.suppress(BrokenPipeError, ValueError):
        stream.write(text)
        stream.flush()


def _out(text: str) -> None:
    _write(sys.stdout, text)


def _err(text: str) -> None:
    _write(sys.stderr, text if text.endswith("\n") else text + "\n")


def _note(text: str) -> None:
    _err(f"codex simulator: {text}")


def _utc_stamp(moment: datetime) -> str:
    """ISO-8601 UTC with milliseconds and ``Z``, as Codex writes timestamps."""
    utc = moment.astimezone(UTC)
    return utc.strftime("%Y-%m-%dT%H:%M:%S.") + f"{utc.microsecond // 1000:03d}Z"


def _now() -> datetime:
    return datetime.now(UTC)


def _uuid7() -> str:
    """A UUIDv7 (48-bit millisecond clock, then random bits), like Codex's ids."""
    millis = time.time_ns() // 1_000_000
    rand = int.from_bytes(os.urandom(10), "big")
    value = (millis & ((1 << 48) - 1)) << 80
    value |= 0x7 << 76  # version
    value |= (rand >> 68) << 64  # 12 random bits
    value |= 0b10 << 62  # RFC 4122 variant
    value |= rand & ((1 << 62) - 1)
    return str(uuid.UUID(int=value))


def _require_loopback(url: str, what: str) -> str:
    """Refuse any URL off this machine: the simulator must never reach a real service."""
    host = urlsplit(url).hostname or ""
    try:
        loopback = host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = False
    if not loopback or urlsplit(url).scheme not in ("http", "https"):
        raise _Exit(1, f"Error: the Codex simulator only talks to 127.0.0.1; {what} is {url!r}")
    return url


@contextlib.contextmanager
def _flocked(path: Path) -> Iterator[None]:
    """Hold an exclusive ``flock`` on ``path`` (created if needed) for the block."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing drops the lock


# -- configuration -------------------------------------------------------------------


def _codex_home() -> Path:
    home = os.environ.get("CODEX_HOME")
    return Path(home) if home else Path.home() / ".codex"


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as fh:
            return tomllib.load(fh)
    except FileNotFoundError:
        return {}
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise _Exit(1, f"Error loading {path}: {exc}") from exc


def _merge(base: dict[str, Any], extra: dict[str, Any]) -> None:
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            _merge(base[key], value)
        else:
            base[key] = value


def _set_dotted(config: dict[str, Any], dotted: str, value: Any) -> None:
    *parents, leaf = [part.strip() for part in dotted.split(".")]
    node = config
    for part in parents:
        child = node.get(part)
        if not isinstance(child, dict):
            child = node[part] = {}
        node = child
    node[leaf] = value


def _load_config(home: Path, inv: _Invocation) -> dict[str, Any]:
    """config.toml, then the profile, then ``-c``/``--enable``/``--disable``/``-m``."""
    config = _read_toml(home / "config.toml")
    profile = inv.value("profile")
    if profile:
        legacy = config.get("profiles", {}).get(profile)
        if isinstance(legacy, dict):
            _merge(config, legacy)
        # 0.169.0 keeps a profile in its own file beside config.toml.
        _merge(config, _read_toml(home / f"{profile}.config.toml"))
    for override in inv.values.get("config", []):
        key, eq, raw = override.partition("=")
        if not eq:
            raise _Exit(
                1, f"Error parsing -c overrides: Invalid override (missing '='): {override}"
            )
        try:
            value: Any = tomllib.loads(f"v = {raw}")["v"]
        except tomllib.TOMLDecodeError:
            value = raw  # Codex falls back to the raw string too
        _set_dotted(config, key, value)
    for name, enabled in (("enable", True), ("disable", False)):
        for feature in inv.values.get(name, []):
            _set_dotted(config, f"features.{feature}", enabled)
    if inv.value("model"):
        config["model"] = inv.value("model")
    return config


@dataclass(frozen=True)
class _Provider:
    """The model provider a session talks to."""

    provider_id: str
    base_url: str
    requires_openai_auth: bool
    env_key: str | None
    idle_timeout: float


def _provider(config: dict[str, Any]) -> _Provider:
    provider_id = str(config.get("model_provider") or "openai")
    table = (config.get("model_providers") or {}).get(provider_id)
    if not isinstance(table, dict) or not table.get("base_url"):
        raise _Exit(
            1,
            f"Error: model provider {provider_id!r} has no base_url in config.toml; the Codex "
            "simulator only talks to a local provider ([model_providers.<id>] base_url).",
        )
    base_url = _require_loopback(str(table["base_url"]), "the model provider base_url")
    idle_ms = table.get("stream_idle_timeout_ms")
    return _Provider(
        provider_id=provider_id,
        base_url=base_url.rstrip("/"),
        requires_openai_auth=bool(table.get("requires_openai_auth")),
        env_key=str(table["env_key"]) if table.get("env_key") else None,
        idle_timeout=float(idle_ms) / 1000 if isinstance(idle_ms, int) else _DEFAULT_IDLE_TIMEOUT,
    )


def _ssl_context() -> ssl.SSLContext:
    # Codex adds CODEX_CA_CERTIFICATE (or SSL_CERT_FILE) to its roots; httpx
    # runs with trust_env=False so that no proxy variable can route us away.
    ctx = ssl.create_default_context()
    for variable in ("CODEX_CA_CERTIFICATE", "SSL_CERT_FILE"):
        cafile = os.environ.get(variable)
        if cafile:
            try:
                ctx.load_verify_locations(cafile=cafile)
            except (OSError, ssl.SSLError) as exc:
                raise _Exit(1, f"Error: cannot load {variable}={cafile}: {exc}") from exc
    return ctx


# -- authentication --------------------------------------------------------------------

_REFRESH_ERRORS = {
    "refresh_token_expired": "your refresh token has expired",
    "refresh_token_reused": "your refresh token was already used",
    "refresh_token_invalidated": "your refresh token was revoked",
}


class _Auth:
    """Credentials for the provider: ChatGPT tokens from auth.json, or an API key."""

    def __init__(self, home: Path, provider: _Provider) -> None:
        self.path = home / "auth.json"
        self.api_key: str | None = None
        self.tokens: dict[str, Any] | None = None
        self.last_refresh: datetime | None = None
        if provider.env_key:
            self.api_key = os.environ.get(provider.env_key)
            if not self.api_key:
                raise _Exit(1, f"Error: Missing environment variable: `{provider.env_key}`.")
        elif provider.requires_openai_auth:
            self._load(self._read())

    def _read(self) -> dict[str, Any]:
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
        except FileNotFoundError as exc:
            raise _Exit(1, "Error: Not logged in (no auth.json in CODEX_HOME).") from exc
        except (OSError, ValueError) as exc:
            raise _Exit(1, f"Error: cannot read {self.path}: {exc}") from exc
        if not isinstance(data, dict):
            raise _Exit(1, f"Error: {self.path} is not a JSON object")
        return data

    def _load(self, data: dict[str, Any]) -> None:
        tokens = data.get("tokens")
        if isinstance(tokens, dict) and tokens.get("access_token"):
            self.tokens = tokens
            self.last_refresh = _parse_time(data.get("last_refresh"))
        elif data.get("OPENAI_API_KEY"):
            self.api_key = str(data["OPENAI_API_KEY"])
        else:
            raise _Exit(1, "Error: Not logged in (auth.json has no tokens).")

    @property
    def account_id(self) -> str | None:
        """The ChatGPT account id (``chatgpt-account-id`` header), if any."""
        if self.tokens is None:
            return None
        account = self.tokens.get("account_id") or self._auth_claims().get("chatgpt_account_id")
        return str(account) if account else None

    @property
    def user_id(self) -> str | None:
        """The ChatGPT user id from the id_token claims, if any."""
        claims = self._auth_claims()
        user = claims.get("chatgpt_user_id") or claims.get("user_id")
        return str(user) if user else None

    def _auth_claims(self) -> dict[str, Any]:
        claims = decode_jwt_claims(str((self.tokens or {}).get("id_token") or "")).get(
            AUTH_CLAIMS_KEY
        )
        return claims if isinstance(claims, dict) else {}

    def headers(self) -> dict[str, str]:
        """Authorization headers for a model request."""
        if self.tokens is not None:
            headers = {"authorization": f"Bearer {self.tokens['access_token']}"}
            if self.account_id:
                headers["chatgpt-account-id"] = self.account_id
            return headers
        if self.api_key:
            return {"authorization": f"Bearer {self.api_key}"}
        return {}

    def refresh_if_stale(self) -> None:
        """Refresh before the first request, as Codex does, when the tokens are old."""
        if self.tokens is None:
            return
        if self._expired(self.tokens):
            self.refresh("proactive_expiry")
        elif self.last_refresh is not None and _now() - self.last_refresh > _REFRESH_INTERVAL:
            self.refresh("scheduled")

    @staticmethod
    def _expired(tokens: dict[str, Any]) -> bool:
        exp = decode_jwt_claims(str(tokens.get("access_token") or "")).get("exp")
        return isinstance(exp, (int, float)) and exp <= time.time()

    def refresh(self, reason: str) -> None:
        """Trade the refresh token for new tokens and rewrite auth.json.

        Refresh tokens are single-use, so the read-refresh-write cycle runs
        under ``auth.json.lock`` and starts by re-reading auth.json: when
        another process already rotated the tokens we adopt them instead of
        presenting the spent refresh token again.
        """
        if self.tokens is None:
            return
        url = os.environ.get("CODEX_REFRESH_TOKEN_URL_OVERRIDE")
        if not url:
            raise _Exit(
                1,
                "Error: the Codex simulator refreshes tokens only against "
                "CODEX_REFRESH_TOKEN_URL_OVERRIDE, which is not set.",
            )
        _require_loopback(url, "CODEX_REFRESH_TOKEN_URL_OVERRIDE")
        with _flocked(self.path.with_name("auth.json.lock")):
            data = self._read()
            on_disk = data.get("tokens")
            if (
                isinstance(on_disk, dict)
                and on_disk.get("access_token") != self.tokens.get("access_token")
                and not self._expired(on_disk)
            ):
                self._load(data)
                return
            self._load(data)  # present the newest refresh token on disk, never an older one
            fresh = self._exchange(url, reason)
            tokens = dict(self.tokens or {})
            for key in ("id_token", "access_token", "refresh_token"):
                if isinstance(fresh.get(key), str) and fresh[key]:
                    tokens[key] = fresh[key]
            data["tokens"] = tokens
            data["last_refresh"] = _now().isoformat().replace("+00:00", "Z")
            _write_private_json(self.path, data)
            self._load(data)

    def _exchange(self, url: str, reason: str) -> dict[str, Any]:
        assert self.tokens is not None
        body = {
            "client_id": _CLIENT_ID,
            "grant_type": "refresh_token",
            "refresh_token": self.tokens.get("refresh_token"),
            "refresh_reason": reason,
        }
        try:
            with httpx.Client(
                verify=_ssl_context(), trust_env=False, timeout=_REFRESH_TIMEOUT
            ) as client:
                response = client.post(url, json=body)
        except httpx.HTTPError as exc:
            raise _Exit(1, f"Error: token refresh failed: {type(exc).__name__}") from exc
        try:
            payload = response.json()
        except ValueError:
            payload = None
        if response.status_code == 200 and isinstance(payload, dict):
            return payload
        error = payload.get("error") if isinstance(payload, dict) else None
        code = error.get("code") if isinstance(error, dict) else error
        why = _REFRESH_ERRORS.get(str(code))
        if why is not None:
            message = (
                f"Your access token could not be refreshed because {why}. "
                "Please log out and sign in again."
            )
        else:
            message = f"Failed to refresh token: HTTP {response.status_code}"
        raise _Exit(1, f"ERROR: {message}")


def _parse_time(value: Any) -> datetime | None:
    if not isinstance(value, str):
        return None
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def _write_private_json(path: Path, data: dict[str, Any]) -> None:
    """Replace ``path`` atomically with mode 0600 (temp file, fsync, rename)."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".auth.json.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            json.dump(data, fh, indent=2)
            fh.flush()
            os.fsync(fh.fileno())
        Path(tmp).chmod(0o600)
        Path(tmp).replace(path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    # The rename is durable only once the directory entry is.
    dir_fd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


# -- rollout files and the writer lock ------------------------------------------------


class _Rollout:
    """An append-only session rollout: one JSON object per line, written at once."""

    def __init__(self, path: Path, next_ordinal: int) -> None:
        self.path = path
        self.ordinal = next_ordinal
        self._fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o644)

    @classmethod
    def create(cls, home: Path, session_id: str, started: datetime) -> _Rollout:
        """A new rollout under ``sessions/YYYY/MM/DD`` named in local time."""
        local = started.astimezone()
        folder = home / "sessions" / local.strftime("%Y/%m/%d")
        folder.mkdir(parents=True, exist_ok=True)
        name = f"rollout-{local.strftime('%Y-%m-%dT%H-%M-%S')}-{session_id}.jsonl"
        return cls(folder / name, 0)

    def write(
        self, line_type: str, payload: dict[str, Any], metadata: dict[str, Any] | None = None
    ) -> None:
        """Append one line with one ``write`` so an outside reader sees it at once."""
        line: dict[str, Any] = {
            "timestamp": _utc_stamp(_now()),
            "ordinal": self.ordinal,
            "type": line_type,
            "payload": payload,
        }
        if metadata is not None:
            line["metadata"] = metadata
        data = (json.dumps(line, ensure_ascii=False, separators=(",", ":")) + "\n").encode()
        while data:
            written = os.write(self._fd, data)
            data = data[written:]
        self.ordinal += 1

    def end_partial_line(self) -> None:
        """Terminate a last line that a killed writer left without its newline."""
        os.write(self._fd, b"\n")

    def event(self, payload: dict[str, Any]) -> None:
        """Append an ``event_msg`` line."""
        self.write("event_msg", payload)

    def close(self) -> None:
        """Close the file (every line is already written)."""
        os.close(self._fd)


@dataclass
class _History:
    """What a resumed session needs from its rollout."""

    items: list[dict[str, Any]] = field(default_factory=list)
    total_usage: dict[str, int] | None = None
    next_ordinal: int = 0
    needs_newline: bool = False
    history_sequence: int = 0  # response_item lines so far
    sampled_through: int = 0  # the history_sequence the model last answered


def _read_history(path: Path) -> _History:
    """The conversation and counters recorded in an existing rollout."""
    raw = path.read_bytes()
    history = _History(needs_newline=bool(raw) and not raw.endswith(b"\n"))
    count = 0
    for line in raw.splitlines():
        try:
            obj = json.loads(line)
        except ValueError:
            continue  # a line cut short by a kill
        if not isinstance(obj, dict):
            continue
        count += 1
        if isinstance(obj.get("ordinal"), int):
            history.next_ordinal = max(history.next_ordinal, obj["ordinal"] + 1)
        payload = obj.get("payload")
        if not isinstance(payload, dict):
            continue
        if obj.get("type") == "response_item":
            history.history_sequence += 1
            if payload.get("role") == "assistant":
                history.sampled_through = history.history_sequence - 1
            item = _history_item(payload)
            if item is not None:
                history.items.append(item)
        elif obj.get("type") == "event_msg" and payload.get("type") == "token_count":
            info = payload.get("info")
            if isinstance(info, dict) and isinstance(info.get("total_token_usage"), dict):
                history.total_usage = info["total_token_usage"]
    history.next_ordinal = max(history.next_ordinal, count)
    return history


def _history_item(payload: dict[str, Any]) -> dict[str, Any] | None:
    role = payload.get("role")
    if payload.get("type") != "message" or role not in ("user", "assistant"):
        return None
    part_type = "input_text" if role == "user" else "output_text"
    texts = [
        part["text"]
        for part in payload.get("content") or []
        if isinstance(part, dict) and isinstance(part.get("text"), str)
    ]
    content = [{"type": part_type, "text": text} for text in texts]
    return {"type": "message", "role": role, "content": content}


def _session_meta(path: Path) -> dict[str, Any] | None:
    try:
        with path.open("rb") as fh:
            first = json.loads(fh.readline())
    except (OSError, ValueError):
        return None
    if not isinstance(first, dict):
        return None
    payload = first.get("payload")
    if first.get("type") == "session_meta" and isinstance(payload, dict):
        return payload
    legacy = first.get("session_meta")  # the pre-envelope format
    if isinstance(legacy, dict) and isinstance(legacy.get("payload"), dict):
        return dict(legacy["payload"])
    return None


def _rollouts(home: Path) -> Iterable[Path]:
    return (home / "sessions").glob("*/*/*/rollout-*.jsonl")


def _find_by_id(home: Path, session_id: str) -> Path:
    if _UUID_RE.fullmatch(session_id):
        suffix = f"-{session_id.lower()}.jsonl"
        for path in _rollouts(home):
            if path.name.lower().endswith(suffix):
                return path
    raise _Exit(
        1,
        f"Error: thread/resume: thread/resume failed: no rollout found for thread id "
        f"{session_id} (code -32600)",
    )


def _find_last(
    home: Path, cwd: Path, *, any_cwd: bool, interactive_only: bool
) -> tuple[Path, str] | None:
    """The most recently written session for ``cwd`` (``--last``)."""
    best: tuple[float, Path, str] | None = None
    for path in _rollouts(home):
        meta = _session_meta(path)
        if meta is None or not isinstance(meta.get("id"), str):
            continue
        if not any_cwd and Path(str(meta.get("cwd"))).resolve() != cwd.resolve():
            continue
        if interactive_only and meta.get("source") not in ("cli", "vscode"):
            continue
        mtime = path.stat().st_mtime
        if best is None or mtime > best[0]:
            best = (mtime, path, meta["id"])
    return None if best is None else (best[1], best[2])


class _WriterLock:
    """``thread-writer-locks/<id>.lock``, flocked while this process has the thread.

    As in Codex, the lock file is deleted on a clean exit and left, unlocked,
    when the process is killed (the kernel drops a dead process's flock).
    Creating and deleting it happens under ``.coordination.lock`` so that a
    deletion cannot race another process that has just opened the same path.
    """

    def __init__(self, home: Path, session_id: str) -> None:
        self.folder = home / "thread-writer-locks"
        self.path = self.folder / f"{session_id}.lock"
        self.session_id = session_id
        self._fd: int | None = None

    def acquire(self) -> None:
        """Take the lock or stop as Codex does when another writer has the thread."""
        self.folder.mkdir(parents=True, exist_ok=True)
        with _flocked(self.folder / ".coordination.lock"):
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                raise _Exit(
                    1,
                    f"Error: thread/resume: thread/resume failed: thread {self.session_id} "
                    "already has an active writer (code -32600)",
                ) from None
            self._fd = fd

    def release(self) -> None:
        """Delete the lock file, then drop the lock."""
        if self._fd is None:
            return
        with _flocked(self.folder / ".coordination.lock"):
            self.path.unlink(missing_ok=True)
            os.close(self._fd)
            self._fd = None


# -- talking to the model ----------------------------------------------------------------


@dataclass
class _Outcome:
    """How one model request ended."""

    text: str | None = None
    usage: dict[str, int] | None = None
    response_id: str | None = None
    rate_limits: dict[str, Any] | None = None
    error: str | None = None
    error_info: str | None = None
    first_token_at: float | None = None


def _rate_limits(headers: httpx.Headers) -> dict[str, Any] | None:
    """The ``token_count.rate_limits`` snapshot Codex builds from ``x-codex-*`` headers."""
    primary = _window(headers, "primary")
    secondary = _window(headers, "secondary")
    credits_ = _credits(headers)
    if primary is None and secondary is None and credits_ is None:
        return None
    return {
        "limit_id": "codex",
        "limit_name": None,
        "primary": primary,
        "secondary": secondary,
        "credits": credits_,
        "individual_limit": None,
        "spend_control_reached": None,
        "plan_type": None,  # no header carries it; 0.169.0 writes null as well
        "rate_limit_reached_type": headers.get("x-codex-rate-limit-reached-type"),
    }


def _number(value: str | None) -> float | None:
    try:
        return float(value) if value is not None else None
    except ValueError:
        return None


def _window(headers: httpx.Headers, name: str) -> dict[str, Any] | None:
    used = _number(headers.get(f"x-codex-{name}-used-percent"))
    if used is None:
        return None
    minutes = _number(headers.get(f"x-codex-{name}-window-minutes"))
    resets_at = _number(headers.get(f"x-codex-{name}-reset-at"))
    if resets_at is None:
        # Older servers send only the relative form.
        after = _number(headers.get(f"x-codex-{name}-reset-after-seconds"))
        resets_at = time.time() + after if after is not None else None
    return {
        "used_percent": used,
        "window_minutes": int(minutes) if minutes is not None else None,
        "resets_at": int(resets_at) if resets_at is not None else None,
    }


def _credits(headers: httpx.Headers) -> dict[str, Any] | None:
    has = headers.get("x-codex-credits-has-credits")
    if has is None:
        return None
    return {
        "has_credits": has.lower() == "true",
        "unlimited": (headers.get("x-codex-credits-unlimited") or "").lower() == "true",
        "balance": headers.get("x-codex-credits-balance"),
    }


def _sse_events(lines: Iterable[str]) -> Iterator[dict[str, Any]]:
    """Decode ``event:``/``data:`` frames into their JSON payloads."""
    data: list[str] = []
    # The extra blank line ends a last frame that the server did not terminate.
    for line in itertools.chain(lines, [""]):
        if line.startswith("data:"):
            data.append(line[5:].removeprefix(" "))
        elif not line and data:
            try:
                payload = json.loads("\n".join(data))
            except ValueError:
                payload = None
            data = []
            if isinstance(payload, dict):
                yield payload


def _usage(raw: Any) -> dict[str, int] | None:
    if not isinstance(raw, dict):
        return None

    def num(value: Any) -> int:
        return int(value) if isinstance(value, (int, float)) else 0

    input_details = raw.get("input_tokens_details") or {}
    output_details = raw.get("output_tokens_details") or {}
    return {
        "input_tokens": num(raw.get("input_tokens")),
        "cached_input_tokens": num(input_details.get("cached_tokens")),
        "cache_write_input_tokens": 0,
        "output_tokens": num(raw.get("output_tokens")),
        "reasoning_output_tokens": num(output_details.get("reasoning_tokens")),
        "total_tokens": num(raw.get("total_tokens")),
    }


def _message_text(item: Any) -> str | None:
    if not isinstance(item, dict) or item.get("type") != "message":
        return None
    if item.get("role") != "assistant":
        return None
    parts = [
        part.get("text", "")
        for part in item.get("content") or []
        if isinstance(part, dict) and part.get("type") == "output_text"
    ]
    return "".join(parts)


def _usage_limit_message(error: dict[str, Any]) -> str:
    resets_at = _number(str(error.get("resets_at"))) if error.get("resets_at") else None
    if resets_at is None:
        when = "later"
    else:
        local = datetime.fromtimestamp(resets_at, UTC).astimezone()
        when = local.strftime("%I:%M %p").lstrip("0")
        if local.date() != datetime.now(UTC).astimezone().date():
            when = f"{local.strftime('%b')} {local.day}, {when}"
    upgrade = (
        "Upgrade to Pro (https://chatgpt.com/explore/pro), visit "
        "https://chatgpt.com/settings/usage to purchase more credits or try again"
        if error.get("plan_type") == "plus"
        else "Visit https://chatgpt.com/settings/usage to purchase more credits or try again"
    )
    return f"You\u2019ve hit your usage limit. {upgrade} at {when}."


def _http_error(status: int, body: bytes) -> tuple[str, str]:
    """The (message, codex_error_info) Codex reports for a non-200 answer."""
    try:
        payload = json.loads(body)
    except ValueError:
        payload = None
    error = payload.get("error") if isinstance(payload, dict) else None
    error = error if isinstance(error, dict) else {}
    if status == 429 and error.get("type") == "usage_limit_reached":
        return _usage_limit_message(error), "usage_limit_exceeded"
    if status >= 500:
        return _HIGH_DEMAND, "internal_server_error"
    message = str(error.get("message") or f"unexpected status {status}")
    return message, "bad_request" if status == 400 else "other"


class _ModelClient:
    """POSTs ``<base_url>/responses`` and reads the SSE stream, like Codex."""

    def __init__(self, provider: _Provider, auth: _Auth, originator: str) -> None:
        self.provider = provider
        self.auth = auth
        self.originator = originator
        self._client = httpx.Client(
            verify=_ssl_context(),
            trust_env=False,
            timeout=httpx.Timeout(
                connect=_CONNECT_TIMEOUT, read=provider.idle_timeout, write=30.0, pool=10.0
            ),
        )

    def close(self) -> None:
        """Close the connection pool."""
        self._client.close()

    def request(self, session_id: str, body: dict[str, Any]) -> _Outcome:
        """One model request; a 401 gets one token refresh and one retry."""
        outcome, unauthorized = self._attempt(session_id, body)
        if unauthorized and self.auth.tokens is not None:
            try:
                self.auth.refresh("unauthorized_recovery")
            except _Exit as exc:
                # A failed refresh fails the turn (recorded in task_complete);
                # it does not abandon the rollout mid-turn.
                outcome.error, outcome.error_info = exc.message.removeprefix("ERROR: "), "other"
                return outcome
            outcome, _ = self._attempt(session_id, body)
        return outcome

    def _headers(self, session_id: str) -> dict[str, str]:
        return {
            **self.auth.headers(),
            "session-id": session_id,
            "thread-id": session_id,
            "x-client-request-id": session_id,
            "originator": self.originator,
            "user-agent": f"{self.originator}/{_version()} (codex_supervisor simulator)",
            "accept": "text/event-stream",
        }

    def _attempt(self, session_id: str, body: dict[str, Any]) -> tuple[_Outcome, bool]:
        outcome = _Outcome()
        url = f"{self.provider.base_url}/responses"
        try:
            with self._client.stream(
                "POST", url, headers=self._headers(session_id), json=body
            ) as response:
                outcome.rate_limits = _rate_limits(response.headers)
                if response.status_code == 401:
                    response.read()
                    outcome.error, outcome.error_info = _http_error(401, response.content)
                    return outcome, True
                if response.status_code != 200:
                    outcome.error, outcome.error_info = _http_error(
                        response.status_code, response.read()
                    )
                    return outcome, False
                self._read_stream(response, outcome)
        except httpx.TimeoutException:
            outcome.error = "stream disconnected before completion: idle timeout waiting for SSE"
            outcome.error_info = "other"
        except httpx.ConnectError as exc:
            outcome.error = f"stream disconnected before completion: error sending request: {exc}"
            outcome.error_info = "other"
        except httpx.TransportError:
            # The wording of 0.169.0 when the server resets the stream.
            outcome.error = (
                "stream disconnected before completion: "
                "Transport error: network error: error decoding response body"
            )
            outcome.error_info = "other"
        return outcome, False

    @staticmethod
    def _read_stream(response: httpx.Response, outcome: _Outcome) -> None:
        deltas: list[str] = []
        for event in _sse_events(response.iter_lines()):
            kind = event.get("type")
            if kind == "response.output_text.delta" and isinstance(event.get("delta"), str):
                deltas.append(event["delta"])
                outcome.first_token_at = outcome.first_token_at or time.monotonic()
            elif kind == "response.output_item.done":
                text = _message_text(event.get("item"))
                if text is not None:
                    outcome.text = text
                    outcome.first_token_at = outcome.first_token_at or time.monotonic()
            elif kind == "response.completed":
                completed = event.get("response") or {}
                outcome.usage = _usage(completed.get("usage"))
                outcome.response_id = completed.get("id")
                if outcome.text is None and deltas:
                    outcome.text = "".join(deltas)
                return
            elif kind == "response.failed":
                failed = (event.get("response") or {}).get("error") or {}
                outcome.error = str(failed.get("message") or "response failed")
                outcome.error_info = "other"
                return
        outcome.error = (
            "stream disconnected before completion: stream closed before response.completed"
        )
        outcome.error_info = "other"


# -- sessions and turns ----------------------------------------------------------------


@dataclass
class _Settings:
    """Per-run facts recorded in the rollout."""

    cwd: Path
    model: str
    originator: str
    source: str
    turn_trigger: str
    approval: str
    sandbox: str
    #: Trusted session-flags hooks: event name -> [(command, timeout seconds)].
    hooks: dict[str, list[tuple[str, int]]] = field(default_factory=dict)


class _Session:
    """A loaded thread: its rollout, conversation, lock and model client."""

    def __init__(
        self,
        *,
        session_id: str,
        settings: _Settings,
        rollout: _Rollout,
        history: _History,
        client: _ModelClient,
    ) -> None:
        self.session_id = session_id
        self.settings = settings
        self.rollout = rollout
        self.items = history.items
        self.total_usage = history.total_usage
        self.client = client
        self.history_sequence = history.history_sequence
        self.sampled_through = history.sampled_through
        self.hook_source = "resume" if history.next_ordinal else "startup"
        self.hooks_started = False

    def _hook(self, event: str, **fields: Any) -> None:
        """Run the trusted command hooks of ``event`` as Codex does (sh -c, JSON on stdin)."""
        payload = {
            "session_id": self.session_id,
            "transcript_path": str(self.rollout.path),
            "cwd": str(self.settings.cwd),
            "hook_event_name": event,
            "model": self.settings.model,
            "permission_mode": "default",
            **fields,
        }
        for command, timeout in self.settings.hooks.get(event, []):
            with contextlib.suppress(OSError, subprocess.SubprocessError):
                subprocess.run(
                    ["/bin/sh", "-c", command],
                    input=json.dumps(payload).encode(),
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                    cwd=self.settings.cwd,
                    timeout=timeout,
                    check=False,
                )

    def _write_item(self, payload: dict[str, Any]) -> None:
        # 0.169.0 puts history bookkeeping in a top-level "metadata" key of
        # response_item lines; readers see the same envelope keys either way.
        self.history_sequence += 1
        if payload.get("role") == "assistant":
            self.sampled_through = self.history_sequence - 1
        metadata = {
            "history_sequence": self.history_sequence,
            "sampled_through_sequence": self.sampled_through,
            "client_authored": False,
        }
        self.rollout.write("response_item", payload, metadata)

    def write_meta(self, provider: _Provider, auth: _Auth, started: datetime) -> None:
        """The first line of a new rollout."""
        meta: dict[str, Any] = {}
        if auth.account_id:
            meta["account_scoped"] = True
            if auth.user_id:
                meta["creator_user_id"] = auth.user_id
            meta["creator_account_id"] = auth.account_id
        meta.update(
            session_id=self.session_id,
            id=self.session_id,
            timestamp=_utc_stamp(started),
            cwd=str(self.settings.cwd),
            originator=self.settings.originator,
            cli_version=_version(),
            source=self.settings.source,
            thread_source="user",
            model_provider=provider.provider_id,
        )
        self.rollout.write("session_meta", meta)

    def run_turn(self, prompt: str) -> _Outcome:
        """One turn: the markers and items Codex writes around one model request."""
        turn_id = _uuid7()
        started_wall = int(time.time())
        started = time.monotonic()
        attribution = {
            "turn_id": turn_id,
            "turn_trigger": self.settings.turn_trigger,
            "parent_turn_id": None,
            "initiating_agent_path": None,
            "root_turn_id": turn_id,
        }
        self.rollout.event(
            {
                "type": "task_started",
                "turn_attribution": attribution,
                "turn_id": turn_id,
                "root_turn_id": turn_id,
                "started_at": started_wall,
                "model_context_window": _CONTEXT_WINDOW,
                "collaboration_mode_kind": "default",
            }
        )
        self.rollout.write(
            "turn_context",
            {
                "turn_id": turn_id,
                "root_turn_id": turn_id,
                "cwd": str(self.settings.cwd),
                "approval_policy": self.settings.approval,
                "sandbox_policy": {"type": self.settings.sandbox},
                "model": self.settings.model,
                "summary": "none",
            },
        )
        user_item: dict[str, Any] = {
            "type": "message",
            "role": "user",
            "content": [{"type": "input_text", "text": prompt}],
        }
        self._write_item({**user_item, "id": f"msg_{_uuid7()}"})
        self._item_completed(turn_id, "UserMessage", _uuid7(), [{"type": "text", "text": prompt}])
        self.items.append(user_item)
        if not self.hooks_started:
            self.hooks_started = True
            self._hook("SessionStart", source=self.hook_source)
        outcome = self.client.request(self.session_id, self._body(turn_id))
        if outcome.error is None:
            self._record_reply(turn_id, outcome)
        elif outcome.rate_limits is not None:
            self.rollout.event(
                {"type": "token_count", "info": None, "rate_limits": outcome.rate_limits}
            )
        if outcome.error is None:  # Codex runs no Stop hook for a failed turn
            self._hook(
                "Stop", turn_id=turn_id, stop_hook_active=False, last_assistant_message=outcome.text
            )
        complete: dict[str, Any] = {
            "type": "task_complete",
            "root_turn_id": turn_id,
            "turn_id": turn_id,
            "last_agent_message": outcome.text if outcome.error is None else None,
        }
        if outcome.error is not None:
            complete["error"] = {"message": outcome.error, "codex_error_info": outcome.error_info}
        complete.update(
            started_at=started_wall,
            completed_at=int(time.time()),
            duration_ms=int((time.monotonic() - started) * 1000),
        )
        if outcome.error is None and outcome.first_token_at is not None:
            complete["time_to_first_token_ms"] = int((outcome.first_token_at - started) * 1000)
        self.rollout.event(complete)
        return outcome

    def _body(self, turn_id: str) -> dict[str, Any]:
        return {
            "model": self.settings.model,
            "stream": True,
            "input": list(self.items),
            "tools": [],
            "tool_choice": "auto",
            "parallel_tool_calls": False,
            "store": False,
            "include": [],
            "prompt_cache_key": self.session_id,
            "client_metadata": {
                "session_id": self.session_id,
                "thread_id": self.session_id,
                "turn_id": turn_id,
            },
        }

    def _item_completed(
        self, turn_id: str, item_type: str, item_id: str, content: list[dict[str, Any]]
    ) -> None:
        now_ms = time.time_ns() // 1_000_000
        self.rollout.event(
            {
                "type": "item_completed",
                "thread_id": self.session_id,
                "turn_id": turn_id,
                "item": {"type": item_type, "id": item_id, "content": content},
                "started_at_ms": now_ms,
                "completed_at_ms": now_ms,
            }
        )

    def _record_reply(self, turn_id: str, outcome: _Outcome) -> None:
        text = outcome.text or ""
        item_id = f"msg_{uuid.uuid4().hex[:16]}"
        self._item_completed(turn_id, "AgentMessage", item_id, [{"type": "Text", "text": text}])
        self._write_item(
            {
                "type": "message",
                "status": "completed",
                "id": item_id,
                "role": "assistant",
                "content": [{"type": "output_text", "text": text, "annotations": []}],
            },
        )
        self.items.append(
            {
                "type": "message",
                "role": "assistant",
                "content": [{"type": "output_text", "text": text}],
            }
        )
        last = outcome.usage or _usage({})
        assert last is not None
        total = dict(self.total_usage or {})
        self.total_usage = {key: int(total.get(key, 0)) + value for key, value in last.items()}
        self.rollout.write(
            "token_usage_record",
            {
                "thread_id": self.session_id,
                "turn_id": turn_id,
                "session_id": self.session_id,
                "root_turn_id": turn_id,
                "response_id": outcome.response_id,
                "usage": last,
                "turn_token_usage": last,
                "thread_token_usage": self.total_usage,
            },
        )
        self.rollout.event(
            {
                "type": "token_count",
                "info": {
                    "total_token_usage": self.total_usage,
                    "last_token_usage": last,
                    "last_usage_includes_reasoning": False,
                    "model_context_window": _CONTEXT_WINDOW,
                },
                "rate_limits": outcome.rate_limits,
            }
        )


@dataclass
class _Target:
    """Which thread a run works on: a new one or an existing rollout."""

    session_id: str
    path: Path | None  # None: a new session


def _resolve_target(inv: _Invocation, home: Path, cwd: Path, *, interactive: bool) -> _Target:
    resuming = inv.command in (("resume",), ("exec", "resume"))
    if not resuming:
        return _Target(_uuid7(), None)
    if "last" in inv.flags:
        found = _find_last(
            home,
            cwd,
            any_cwd="all" in inv.flags,
            interactive_only=interactive and "include_non_interactive" not in inv.flags,
        )
        # With nothing to resume, 0.169.0 starts a new session instead.
        return _Target(_uuid7(), None) if found is None else _Target(found[1], found[0])
    session_id = inv.positionals[0]
    return _Target(session_id.lower(), _find_by_id(home, session_id))


def _prompt_args(inv: _Invocation) -> list[str]:
    """The PROMPT positionals (SESSION_ID removed), validated like clap."""
    positionals = list(inv.positionals)
    resuming = inv.command in (("resume",), ("exec", "resume"))
    if resuming and "last" not in inv.flags:
        if not positionals:
            _usage_error("the simulator has no session picker: pass SESSION_ID or --last")
        positionals = positionals[1:]
    if len(positionals) > 1:
        _usage_error(f"unexpected argument '{positionals[1]}' found")
    return positionals


def _read_stdin() -> str:
    return sys.stdin.buffer.read().decode("utf-8", errors="replace")


def _exec_prompt(inv: _Invocation) -> str:
    """The exec prompt: the argument, ``-`` for stdin, plus piped stdin like Codex."""
    args = _prompt_args(inv)
    if not args or args[0] == "-":
        if sys.stdin.isatty():
            raise _Exit(1, "No prompt provided. Pass a PROMPT or pipe one on stdin.")
        _err("Reading prompt from stdin...")
        prompt = _read_stdin()
        if not prompt.strip():
            raise _Exit(1, "No prompt provided via stdin.")
        return prompt
    prompt = args[0]
    if not sys.stdin.isatty():
        _err("Reading additional input from stdin...")
        extra = _read_stdin()
        if extra:
            # 0.169.0 appends piped input in a <stdin> block.
            prompt += (
                f"\n\n<stdin>\n{extra if extra.endswith(chr(10)) else extra + chr(10)}</stdin>"
            )
    return prompt


@dataclass
class _Run:
    """Everything a front-end needs once argv and config are understood."""

    home: Path
    provider: _Provider
    auth: _Auth
    settings: _Settings


def _prepare(inv: _Invocation, *, interactive: bool) -> _Run:
    home = _codex_home()
    config = _load_config(home, inv)
    provider = _provider(config)
    cd = inv.value("cd")
    cwd = (Path.cwd() / cd).resolve() if cd else Path.cwd()
    bypass = "bypass" in inv.flags
    settings = _Settings(
        cwd=cwd,
        model=str(config.get("model") or "gpt-5-codex"),
        originator="codex-tui" if interactive else "codex_exec",
        source="cli" if interactive else "exec",
        turn_trigger="user" if interactive else "exec",
        approval=inv.value("approval")
        or ("never" if bypass else str(config.get("approval_policy") or ""))
        or ("on-request" if interactive else "never"),
        sandbox=inv.value("sandbox")
        or ("danger-full-access" if bypass else str(config.get("sandbox_mode") or ""))
        or "read-only",
    )
    settings.hooks = _flag_hooks(inv)
    auth = _Auth(home, provider)
    auth.refresh_if_stale()
    return _Run(home=home, provider=provider, auth=auth, settings=settings)


_FLAG_SOURCE = "/<session-flags>/config.toml"
_HOOK_EVENTS = {"SessionStart": "session_start", "Stop": "stop"}


def _hook_hash(label: str, command: str, timeout: int) -> str:
    """Codex's trust hash of one command handler in a matcher-less group."""
    identity = {
        "event_name": label,
        "hooks": [{"type": "command", "command": command, "timeout": timeout, "async": False}],
    }
    text = json.dumps(identity, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return "sha256:" + hashlib.sha256(text.encode()).hexdigest()


def _flag_hooks(inv: _Invocation) -> dict[str, list[tuple[str, int]]]:
    """The command hooks ``-c hooks.<Event>=…`` gives that ``-c hooks.state`` trusts."""
    given: dict[str, Any] = {}
    state: dict[str, Any] = {}
    for override in inv.values.get("config", []):
        key, _, raw = override.partition("=")
        key = key.strip()
        with contextlib.suppress(tomllib.TOMLDecodeError):
            if key == "hooks.state":
                value = tomllib.loads(f"v = {raw}")["v"]  # the last one wins, as in Codex
                state = value if isinstance(value, dict) else {}
            elif key.removeprefix("hooks.") in _HOOK_EVENTS:
                given[key.removeprefix("hooks.")] = tomllib.loads(f"v = {raw}")["v"]
    trusted: dict[str, list[tuple[str, int]]] = {}
    for event, groups in given.items():
        label = _HOOK_EVENTS[event]
        for g, group in enumerate(groups if isinstance(groups, list) else []):
            handlers = group.get("hooks") if isinstance(group, dict) else None
            for h, handler in enumerate(handlers if isinstance(handlers, list) else []):
                if not isinstance(handler, dict) or handler.get("type") != "command":
                    continue
                command, timeout = handler.get("command"), handler.get("timeout", 600)
                if not isinstance(command, str) or not isinstance(timeout, int):
                    continue
                entry = state.get(f"{_FLAG_SOURCE}:{label}:{g}:{h}")
                digest = entry.get("trusted_hash") if isinstance(entry, dict) else None
                if digest == _hook_hash(label, command, timeout):
                    trusted.setdefault(event, []).append((command, timeout))
    return trusted


@contextlib.contextmanager
def _open_session(run: _Run, target: _Target) -> Iterator[_Session]:
    """Load the thread: take its writer lock, open its rollout, start a client."""
    lock = _WriterLock(run.home, target.session_id)
    lock.acquire()
    try:
        if target.path is None:
            started = _now()
            rollout = _Rollout.create(run.home, target.session_id, started)
            history = _History()
        else:
            history = _read_history(target.path)
            rollout = _Rollout(target.path, history.next_ordinal)
            if history.needs_newline:
                rollout.end_partial_line()
        client = _ModelClient(run.provider, run.auth, run.settings.originator)
        try:
            session = _Session(
                session_id=target.session_id,
                settings=run.settings,
                rollout=rollout,
                history=history,
                client=client,
            )
            if target.path is None:
                session.write_meta(run.provider, run.auth, started)
            yield session
        finally:
            client.close()
            rollout.close()
    finally:
        lock.release()


# -- front-ends ------------------------------------------------------------------------


def _run_exec(inv: _Invocation) -> int:
    """``codex exec``: one turn, the final message on stdout, exit 1 if it failed."""
    prompt = _exec_prompt(inv)
    run = _prepare(inv, interactive=False)
    target = _resolve_target(inv, run.home, run.settings.cwd, interactive=False)
    as_json = "json" in inv.flags
    with _open_session(run, target) as session:
        if as_json:
            _emit({"type": "thread.started", "thread_id": session.session_id})
            _emit({"type": "turn.started"})
        else:
            _err(_banner(run, session.session_id, prompt))
        outcome = session.run_turn(prompt)
        total = (session.total_usage or {}).get("total_tokens", 0)
    if outcome.error is not None:
        if as_json:
            _emit({"type": "error", "message": outcome.error})
            _emit({"type": "turn.failed", "error": {"message": outcome.error}})
        else:
            _err(f"ERROR: {outcome.error}")
        return 1
    text = outcome.text or ""
    if as_json:
        _emit(
            {
                "type": "item.completed",
                "item": {"id": "item_0", "type": "agent_message", "text": text},
            }
        )
        usage = {k: v for k, v in (outcome.usage or {}).items() if k != "total_tokens"}
        _emit({"type": "turn.completed", "usage": usage})
    else:
        _err(f"codex\n{text}\ntokens used\n{total}")
        _out(text + "\n")
    last_message = inv.value("output_last_message")
    if last_message:
        Path(last_message).write_text(text, encoding="utf-8")
    return 0


def _emit(event: dict[str, Any]) -> None:
    _out(json.dumps(event, ensure_ascii=False, separators=(",", ":")) + "\n")


def _banner(run: _Run, session_id: str, prompt: str) -> str:
    settings = run.settings
    return "\n".join(
        [
            f"OpenAI Codex v{_version()} (codex_supervisor simulator)",
            "--------",
            f"workdir: {settings.cwd}",
            f"model: {settings.model}",
            f"provider: {run.provider.provider_id}",
            f"approval: {settings.approval}",
            f"sandbox: {settings.sandbox}",
            "reasoning effort: none",
            "reasoning summaries: none",
            f"session id: {session_id}",
            "--------",
            "user",
            prompt,
        ]
    )


def _run_interactive(inv: _Invocation) -> int:
    """``codex [PROMPT]`` / ``codex resume``: one turn per stdin line until EOF."""
    args = _prompt_args(inv)
    run = _prepare(inv, interactive=True)
    target = _resolve_target(inv, run.home, run.settings.cwd, interactive=True)
    with _open_session(run, target) as session:
        _err(f"session id: {session.session_id}")
        if args and args[0].strip():
            _reply(session.run_turn(args[0]))
        while True:
            raw = sys.stdin.buffer.readline()
            if not raw:
                return 0
            prompt = raw.decode("utf-8", errors="replace").strip()
            if prompt:
                _reply(session.run_turn(prompt))


def _reply(outcome: _Outcome) -> None:
    # The TUI shows errors in its transcript and waits for the next prompt.
    if outcome.error is not None:
        _out(f"ERROR: {outcome.error}\n")
    else:
        _out(f"{outcome.text or ''}\n")


def _run_other(inv: _Invocation) -> int:
    name = inv.command[0]
    if name == "help":
        _out(_USAGE.format(version=_version()))
        return 0
    if name == "login":
        _err("codex login is not supported by the simulator")
        return 1
    _note(f"`codex {' '.join([name, *inv.rest])}` is not simulated; nothing to do")
    return 0


def _dispatch(inv: _Invocation) -> int:
    if "version" in inv.flags:
        _out(f"codex-cli {_version()}\n")
        return 0
    if "help" in inv.flags:
        _out(_USAGE.format(version=_version()))
        return 0
    if inv.command and inv.command[0] in (*_other_commands(), "help"):
        return _run_other(inv)
    if inv.command and inv.command[0] == "exec":
        return _run_exec(inv)
    return _run_interactive(inv)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the simulator on ``argv`` (default: ``sys.argv[1:]``); returns the exit status."""
    try:
        _release()  # a bad $CODEX_SIMULATOR_VERSION stops it before anything runs
        return _dispatch(_parse_argv(sys.argv[1:] if argv is None else argv))
    except _Exit as exc:
        if exc.message:
            _err(exc.message)
        return exc.code


def _cli() -> NoReturn:
    # Like the real TUI, stop by the default action: no cleanup, so a kill
    # mid-turn leaves a dangling task_started and an unlocked writer lock.
    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, signal.SIG_DFL)
    # Codex writes UTF-8 whatever the locale says.
    for stream in (sys.stdout, sys.stderr):
        reconfigure = getattr(stream, "reconfigure", None)
        if reconfigure is not None:
            reconfigure(encoding="utf-8", errors="replace")
    raise SystemExit(main())


if __name__ == "__main__":
    _cli()
