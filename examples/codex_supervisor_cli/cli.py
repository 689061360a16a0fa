"""Reference command-line interface for codex_supervisor.

This is one consumer of the library's public API, and the only place that
configures logging. Commands (examples/CLI.md documents every option, exit
code and ``--json`` shape):

    accounts login NAME     run ``codex login`` for a new (or the same) account
    accounts import NAME    adopt an existing auth.json (it is moved, not copied)
    accounts list           the accounts of the pool
    accounts remove NAME    take an account out of the pool (its folder is kept;
                            refused while in use unless --force)
    accounts unblock NAME   lift an account's cooldowns (``--window W`` for one)
    accounts unhold NAME    a shared pool: take the stored login of NAME as its newest
    status                  quota, cooldowns and occupancy of every account
                            (``--watch``: kept up to date until Ctrl-C)
    run [--] ARGS           a supervised Codex session (exit code = Codex's)
    demo                    a self-contained supervised session against the
                            bundled fake backend that pre-warms, rotates and
                            resumes (the simulator, or --codex BIN)
    config show             every setting, its value and where it came from
    completion bash|zsh     a shell completion script made from this parser
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import getpass
import importlib.metadata
import json
import logging
import math
import os
import shutil
import signal
import sys
import tempfile
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, NoReturn

import attrs

import codex_supervisor
from codex_supervisor import (
    Account,
    AccountPool,
    ConfigError,
    Cooldown,
    Event,
    EventSink,
    QuotaSnapshot,
    QuotaWindow,
    RotationPolicy,
    RunResult,
    Strategy,
    Supervisor,
    SupervisorConfig,
    SupervisorError,
    WindowKind,
)
from codex_supervisor.accounts import (
    AccountInUse,
    AccountStatus,
    AuthMode,
    QuarantinedAuth,
)
from codex_supervisor.codex_cli import detect_version, parse_argv
from codex_supervisor.config import child_environment, default_base_codex_home, default_pool_root
from codex_supervisor.credentials import CredentialKey
from codex_supervisor.errors import CodexNotFoundError, QuotaAuthExpired
from codex_supervisor.events import (
    AccountSelected,
    ChildExited,
    PrewarmReady,
    PrewarmStarted,
    Resumed,
    Rotating,
    RotationBlocked,
    WaitingForReset,
)
from codex_supervisor.lease import LeaseRecord
from codex_supervisor.lease_redis import masked_url as _masked_url
from codex_supervisor.policy import WaitUntil
from codex_supervisor.selection import AccountSelector
from codex_supervisor.testing import (
    Behaviour,
    FakeCodexBackend,
    hermetic_env,
    install_simulator,
    offline_flags,
)
from codex_supervisor_cli import completion
from codex_supervisor_cli import settings as _settings
from codex_supervisor_cli.watch import LiveScreen

log = logging.getLogger("codex_supervisor.cli")

PROG = "codex-supervisor"
ENV_CODEX_BIN = _settings.ENV_CODEX_BIN

EXIT_OK = 0
EXIT_ERROR = 1  # a library error (SupervisorError) or an OS error
EXIT_USAGE = 2  # bad arguments, ConfigError, or a command not available yet
EXIT_INTERRUPTED = 130  # Ctrl-C
EXIT_NO_CODEX = 127  # the Codex CLI cannot be run (as a shell says "command not found")
EXIT_PIPE = 128 + 13  # the reader of our output went away (SIGPIPE), e.g. `| head`
#: How to get Codex, said wherever it cannot be run.
CODEX_HINT = (
    "install it with `npm install -g @openai/codex`, "
    f"or name it with --codex BIN or ${ENV_CODEX_BIN}"
)

_BAR_WIDTH = 20
_WINDOW_LABELS = {WindowKind.FIVE_HOUR: "five-hour", WindowKind.WEEKLY: "weekly"}


#: Whether the reader of our stdout went away (``| head``) while a command ran on.
_PIPE = {"gone": False}


def _say(text: str = "") -> None:
    # Also from the demo's threads and event sink: a reader gone (`demo | head`)
    # ends the output quietly, and the command's exit code says so (141).
    if _PIPE["gone"]:
        return
    try:
        print(text, flush=True)
    except BrokenPipeError:
        _PIPE["gone"] = True
        _reader_gone()


def _warn(text: str) -> None:
    print(f"{PROG}: warning: {text}", file=sys.stderr, flush=True)


# -- formatting -------------------------------------------------------------------


def _iso(value: datetime | None) -> str | None:
    """ISO-8601 in UTC with a ``Z``, to the second (the --json time format)."""
    if value is None:
        return None
    return value.astimezone(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def _duration(delta: timedelta) -> str:
    """A short human duration, as the library's messages write one.

    The two largest units, a space between: ``45s``, ``13m``, ``2h 5m``,
    ``6d 23h``.
    """
    seconds = max(0, int(delta.total_seconds()))
    if seconds < 60:
        return f"{seconds}s"
    days, rest = divmod(seconds, 86400)
    hours, rest = divmod(rest, 3600)
    minutes = rest // 60
    parts = [f"{n}{unit}" for n, unit in ((days, "d"), (hours, "h"), (minutes, "m")) if n]
    return " ".join(parts[:2])


#: The zone times are shown in: the local one, or UTC with the global --utc.
_ZONE: dict[str, bool] = {"utc": False}


def _clock_time(value: datetime, now: datetime, *, seconds: bool = False) -> str:
    """``14:05 EST`` for today, ``2026-11-29 14:05 EST`` otherwise (local time; --utc: UTC)."""
    value = value.astimezone(UTC) if _ZONE["utc"] else value.astimezone()
    today = (now.astimezone(UTC) if _ZONE["utc"] else now.astimezone()).date()
    clock = "%H:%M:%S" if seconds else "%H:%M"
    shown = value.strftime(clock if value.date() == today else f"%Y-%m-%d {clock}")
    return f"{shown} {value.tzname() or value.strftime('%z')}"


def _relative(value: datetime, now: datetime) -> str:
    """``in 2h05m`` for the future, ``3m ago`` for the past."""
    if value >= now:
        return f"in {_duration(value - now)}"
    return f"{_duration(now - value)} ago"


def _percent(value: float) -> str:
    return f"{value:.0f}" if float(value).is_integer() else f"{value:.1f}"


def _bar(used_percent: float) -> str:
    filled = min(_BAR_WIDTH, max(0, round(used_percent / 100 * _BAR_WIDTH)))
    return "[" + "#" * filled + "." * (_BAR_WIDTH - filled) + "]"


def _window_label(window: QuotaWindow) -> str:
    label = _WINDOW_LABELS.get(window.kind)
    if label is not None:
        return label
    return f"{window.window_minutes}-minute" if window.window_minutes else "other"


def _window_line(window: QuotaWindow, now: datetime) -> str:
    text = f"{_window_label(window):<9} {_bar(window.used_percent)} "
    text += f"{_percent(window.used_percent)}% used"
    if window.resets_at is None:
        return f"{text}, reset time unknown"
    when = _clock_time(window.resets_at, now)
    if window.resets_at > now:
        return f"{text}, resets {_relative(window.resets_at, now)} ({when})"
    # The window has reset since the data was taken, so the figure is stale.
    return f"{text}, reset {_relative(window.resets_at, now)} ({when}); figure predates it"


def _dash(value: str | None) -> str:
    return _printable(value) if value else "-"


def _printable(text: str) -> str:
    """``text`` with control characters (an escape sequence, a newline) shown as ``?``.

    For text read from files others may write (a lease's purpose): printed
    as it is, it could retitle the terminal or break the layout.
    """
    return "".join(c if c.isprintable() else "?" for c in text)


def _cooldown_text(cooldown: Cooldown, now: datetime) -> str:
    window = _WINDOW_LABELS.get(cooldown.window, cooldown.window.value)
    return (
        f"blocked until {_clock_time(cooldown.blocked_until, now)} "
        f"({_relative(cooldown.blocked_until, now)}), {window} window: {cooldown.reason}"
    )


def _active_cooldowns(account: Account, now: datetime) -> list[Cooldown]:
    return sorted(
        (c for c in account.cooldowns if c.blocked_until > now), key=lambda c: c.blocked_until
    )


# -- --json shapes (documented in examples/CLI.md; keep them stable) -------------


def _cooldown_json(cooldown: Cooldown, now: datetime) -> dict[str, Any]:
    return {
        "window": cooldown.window.value,
        "blocked_until": _iso(cooldown.blocked_until),
        "reason": cooldown.reason,
        "recorded_at": _iso(cooldown.recorded_at),
        "active": cooldown.blocked_until > now,
    }


def _account_json(account: Account, now: datetime) -> dict[str, Any]:
    identity = account.identity
    return {
        "name": account.name,
        "email": identity.email,
        "account_id": identity.account_id,
        "plan": identity.plan_type,
        "auth_mode": identity.auth_mode.value,
        "added_at": _iso(account.added_at),
        "blocked_until": _iso(account.blocked_until(now)),
        "cooldowns": [_cooldown_json(c, now) for c in account.cooldowns],
    }


def _window_json(window: QuotaWindow) -> dict[str, Any]:
    return {
        "kind": window.kind.value,
        "used_percent": window.used_percent,
        "window_minutes": window.window_minutes,
        "resets_at": _iso(window.resets_at),
    }


def _snapshot_json(snapshot: QuotaSnapshot, now: datetime) -> dict[str, Any]:
    purchased = snapshot.credits
    return {
        "source": snapshot.source.value,
        "observed_at": _iso(snapshot.observed_at),
        "age_seconds": round(max(0.0, snapshot.age(now).total_seconds()), 1),
        "plan_type": snapshot.plan_type,
        "limit_id": snapshot.limit_id,
        "limit_reached": snapshot.limit_reached,
        "windows": [_window_json(w) for w in snapshot.windows],
        "credits": None
        if purchased is None
        else {
            "has_credits": purchased.has_credits,
            "unlimited": purchased.unlimited,
            "balance": purchased.balance,
        },
    }


def _occupant_json(record: LeaseRecord) -> dict[str, Any]:
    return {
        "pid": record.pid,
        "host": record.host,
        "site": record.site,
        "owner": record.owner,
        "mode": record.mode.value,
        "purpose": record.purpose,
        "since": _iso(record.acquired_at),
        "expires_at": _iso(record.expires_at),
    }


def _refresh_json(outcome: QuotaSnapshot | SupervisorError | None) -> dict[str, Any] | None:
    if outcome is None:
        return None
    if isinstance(outcome, QuotaSnapshot):
        return {"ok": True, "error": None, "message": None}
    return {"ok": False, "error": type(outcome).__name__, "message": str(outcome)}


def _print_json(data: object) -> None:
    _say(json.dumps(data, indent=2, ensure_ascii=False))


# -- the pool -----------------------------------------------------------------------


def _pool(args: argparse.Namespace) -> AccountPool:
    for option, folder in (("--pool", args.pool), ("--codex-home", args.codex_home)):
        if folder.exists() and not folder.is_dir():
            raise ConfigError(f"{option} {folder} is not a folder")
    settings: _settings.Settings | None = getattr(args, "settings", None)
    if settings is None or settings["backend"] is None:
        return AccountPool(root=args.pool, base_codex_home=args.codex_home)
    # A pool several machines share: leases, state and sealed logins in Redis.
    key_file = settings["credential_key_file"]
    key = CredentialKey.from_file(key_file) if key_file is not None else CredentialKey.from_env()
    if key is None:
        raise ConfigError(
            "a pool shared in Redis seals its logins with a key of yours: make one with "
            "`head -c 32 /dev/urandom | base64 > KEYFILE; chmod 600 KEYFILE`, copy it to every "
            "machine of the pool and name it in config.toml (credential_key_file = "
            f'"KEYFILE") or in ${_settings.ENV_KEY_FILE}'
        )
    return AccountPool(
        root=args.pool,
        base_codex_home=args.codex_home,
        backend=settings["backend"],
        pool_name=settings["pool_name"],
        credential_key=key,
    )


def _describe_account(account: Account) -> str:
    identity = account.identity
    parts = [
        identity.email,
        identity.plan_type,
        f"auth {identity.auth_mode.value}",
        f"account id {identity.account_id}",
    ]
    return ", ".join(p for p in parts if p)


def _read_api_key() -> str:
    """The API key from stdin (a prompt without echo on a terminal); never from argv."""
    if sys.stdin is None:
        raise ConfigError("--with-api-key reads the key from stdin, but there is no stdin")
    key = getpass.getpass("API key: ") if sys.stdin.isatty() else sys.stdin.read()
    key = key.strip()
    if not key:
        raise ConfigError("--with-api-key: no API key on stdin")
    return key


def cmd_accounts_login(args: argparse.Namespace) -> int:
    """``accounts login NAME``: run ``codex login`` into the pool."""
    pool = _pool(args)
    api_key = _read_api_key() if args.with_api_key else None
    account = pool.login(args.name, codex=args.codex, device_auth=args.device_auth, api_key=api_key)
    _say(f"logged in: account {account.name!r} ({_describe_account(account)})")
    _say(f"account home: {pool.account_home(account.name)}")
    return EXIT_OK


def cmd_accounts_import(args: argparse.Namespace) -> int:
    """``accounts import NAME --auth-json FILE``: adopt an existing login."""
    pool = _pool(args)
    source = Path(args.auth_json).absolute()
    folder = pool.account_home(args.name).parent
    adopting = folder.exists()  # a folder outside the pool: adopted if it is this login's
    dest = pool.account_home(args.name) / "auth.json"
    before = _read_bytes(dest) if adopting else None
    account = pool.import_auth(args.name, source, copy=args.copy)
    if adopting:
        _say(f"ADOPTED the existing folder {folder} (it was not in the pool)")
    if source.exists() and source.samefile(dest):
        _say(f"KEPT {dest} (the file given)")
    elif before is not None and _read_bytes(dest) == before:
        # The folder's own login was as new or newer: nothing was copied or moved.
        _say(f"KEPT {dest}: it is as new as {source} or newer; nothing was copied")
        _warn(
            f"{source} was left where it is: delete it or never run Codex with it again, "
            "or whichever copy refreshes its single-use token second will be refused"
        )
    elif not args.copy and source.exists():
        _say(f"KEPT {dest}: it is as new as {source} or newer")
        _warn(
            f"{source} was left where it is: delete it or never run Codex with it again, "
            "or whichever copy refreshes its single-use token second will be refused"
        )
    elif args.copy:
        # (The library's WARNING says what two copies of one login mean: once is enough.)
        _say(f"COPIED {source} to {dest}")
    else:
        _say(f"MOVED {source} to {dest} (the original path no longer exists)")
    _say(f"added account {account.name!r} ({_describe_account(account)})")
    return EXIT_OK


def _read_bytes(path: Path) -> bytes | None:
    try:
        return path.read_bytes()
    except OSError:
        return None


def cmd_accounts_list(args: argparse.Namespace) -> int:
    """``accounts list``: every account of the pool."""
    pool = _pool(args)
    accounts = pool.accounts()
    now = datetime.now(UTC)
    if args.names:
        for account in accounts:
            _say(account.name)
        return EXIT_OK
    if args.json:
        _print_json({"pool": str(pool.root), "accounts": [_account_json(a, now) for a in accounts]})
        return EXIT_OK
    if not accounts:
        _say(f"no accounts in {pool.root}")
        return EXIT_OK
    rows = [("NAME", "EMAIL", "ACCOUNT ID", "PLAN", "AUTH", "COOLDOWN")]
    for account in accounts:
        identity = account.identity
        blocked = account.blocked_until(now)
        rows.append(
            (
                account.name,
                _dash(identity.email),
                identity.account_id,
                _dash(identity.plan_type),
                identity.auth_mode.value,
                f"until {_clock_time(blocked, now)}" if blocked else "-",
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        _say("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip())
    return EXIT_OK


def cmd_accounts_remove(args: argparse.Namespace) -> int:
    """``accounts remove NAME [--force]``: out of the pool; the folder is set aside, not deleted."""
    pool = _pool(args)
    try:
        aside = pool.remove(args.name, force=args.force)
    except AccountInUse as exc:
        print(
            f"{PROG}: error: {exc} (--force takes it out of the pool anyway; "
            "the running session is left alone)",
            file=sys.stderr,
        )
        return EXIT_ERROR
    if not aside.exists():
        _say(f"removed account {args.name!r} from the pool (it had no folder)")
    elif aside == pool.account_home(args.name).parent:
        _say(f"removed account {args.name!r} from the pool while it is in use")
        _say(
            f"its folder stays at {aside} until the last session on it ends (Codex may still "
            f"refresh its auth.json there); then it is set aside as "
            f"{aside.parent}/.removed-{args.name}-<time>-<hex>"
        )
    else:
        _say(f"removed account {args.name!r} from the pool; its folder was set aside at {aside}")
        _say("its auth.json is still a live login: delete that folder to discard it")
    return EXIT_OK


def cmd_accounts_unhold(args: argparse.Namespace) -> int:
    """``accounts unhold NAME``: take a shared pool's stored login of NAME as its newest."""
    pool = _pool(args)
    if pool.credentials is None:
        raise ConfigError("accounts unhold is for a pool several machines share (backend)")
    if not pool.unhold(args.name):
        _say(f"{args.name} was not held back; nothing to do")
        return EXIT_OK
    _say(f"{args.name}: the shared login is taken as its newest; runs may choose it again")
    _say(
        "if the machine that held it had refreshed it since, that refresh is lost and the "
        f"login may be refused: then `{PROG} accounts login {args.name}` again"
    )
    return EXIT_OK


def _add_unhold_parser(accounts_sub: Any) -> None:
    unhold = accounts_sub.add_parser(
        "unhold",
        help="a shared pool: take the stored login of an account held back as its newest",
    )
    unhold.add_argument(
        "name",
        metavar="NAME",
        help="the account; better: run `status` on the machine that held it, which pushes "
        "its newer login",
    )
    unhold.set_defaults(handler=cmd_accounts_unhold)


def cmd_accounts_unblock(args: argparse.Namespace) -> int:
    """``accounts unblock NAME [--window W]``: lift cooldowns (the user knows better)."""
    window = None if args.window is None else WindowKind(args.window)
    lifted = _pool(args).clear_cooldowns(args.name, window=window)
    now = datetime.now(UTC)
    live = [c for c in lifted if c.blocked_until > now]
    which = "" if window is None else f" {_WINDOW_LABELS.get(window, window.value)}"
    if not live:
        _say(f"{args.name} had no{which} cooldown in force; nothing to lift")
    for cooldown in live:
        _say(f"{args.name}: lifted the cooldown {_cooldown_text(cooldown, now)}")
    snapshot = _pool(args).get(args.name).last_snapshot
    full = [] if snapshot is None else [w for w in snapshot.windows if w.used_percent >= 100]
    for window in full:
        if window.resets_at is None or window.resets_at > now:
            resets = (
                "reset time unknown"
                if window.resets_at is None
                else f"resets {_relative(window.resets_at, now)}"
            )
            _say(
                f"note: its last known quota shows the {_window_label(window)} window full "
                f"({resets}); runs keep passing it over until fresher data says otherwise "
                "(`status --refresh` asks, free)"
            )
    return EXIT_OK


# -- status -------------------------------------------------------------------------

_Outcome = QuotaSnapshot | SupervisorError


async def _gather_status(
    pool: AccountPool,
    *,
    refresh: bool | list[str],
    policy: RotationPolicy,
    selector: AccountSelector | None = None,
) -> tuple[list[AccountStatus], dict[str, _Outcome], str | WaitUntil | None, dict[str, str]]:
    """The pool as the supervisor sees it, through the same selector it chooses with.

    Choosing retries the logins in quarantine, as a run would; the accounts
    it still holds back come last, with why. A ``selector`` given is kept
    open (a live view reuses one: making one loads the CA bundle, ~60 ms).
    """
    own = selector is None
    if selector is None:
        selector = AccountSelector(pool, policy=policy, probe_budget=60.0)
    outcomes: dict[str, _Outcome] = {}
    try:
        if refresh:
            chatgpt = [a.name for a in pool.accounts() if a.identity.auth_mode is AuthMode.CHATGPT]
            names = chatgpt if refresh is True else [n for n in chatgpt if n in refresh]
            probed = await selector.refresh(names) if names else {}
            for name in names:
                error = selector.probe_errors.get(name)
                found = probed.get(name)
                if error is not None:
                    outcomes[name] = error
                elif found is not None:
                    outcomes[name] = found
        # What a run would do now (no further probes: status stays free and fast).
        choice: str | WaitUntil | None = None
        if pool.accounts():
            choice = await selector.choose(probe=False)
        held = {name: str(why) for name, why in selector.held_back.items()}
    finally:
        if own:
            await selector.aclose()
    # Read after recording, so what is shown is what the pool now holds.
    return await pool.status(), outcomes, choice, held


def _refresh_hint(error: SupervisorError) -> str:
    text = f"refresh failed: {type(error).__name__}: {error}"
    if isinstance(error, QuotaAuthExpired):
        text += " (Codex renews the token on its next run; showing the last stored data)"
    return text


def _status_account_lines(
    entry: AccountStatus, outcome: _Outcome | None, now: datetime, held: str | None
) -> list[str]:
    lines: list[str] = []
    account = entry.account
    lines.append(f"{account.name} ({_describe_account(account)})")
    if held is not None:
        lines.append(f"  HELD BACK: {held}")
    if isinstance(outcome, SupervisorError):
        lines.append(f"  {_refresh_hint(outcome)}")
    snapshot = account.last_snapshot
    if account.identity.auth_mode is AuthMode.API_KEY and snapshot is None:
        lines.append("  quota: none to show (an API-key login has no ChatGPT usage windows)")
    elif snapshot is None:
        lines.append("  quota: no data yet (`status --refresh` probes the usage endpoint)")
    else:
        lines += [f"  {_window_line(window, now)}" for window in snapshot.windows]
        if not snapshot.windows:
            lines.append("  quota: the last snapshot reported no windows")
        reached = ", LIMIT REACHED" if snapshot.limit_reached else ""
        lines.append(
            f"  data: {snapshot.source.value}, {_relative(snapshot.observed_at, now)} "
            f"({_iso(snapshot.observed_at)}){reached}"
        )
    cooldowns = _active_cooldowns(account, now)
    if not cooldowns:
        lines.append("  cooldown: none")
    lines += [f"  cooldown: {_cooldown_text(cooldown, now)}" for cooldown in cooldowns]
    if not entry.occupants:
        lines.append("  occupancy: idle")
    lines += [
        f"  occupancy: pid {record.pid} on {_printable(record.site or record.host)}, "
        f"{_dash(record.purpose)}, "
        f"since {_clock_time(record.acquired_at, now)} ({_relative(record.acquired_at, now)})"
        for record in entry.occupants
    ]
    return lines


def _quarantine_owner(item: QuarantinedAuth, accounts: dict[str, Account]) -> str | None:
    """The account of the pool the quarantined login belongs to: the one of its account id."""
    if item.account_id is None:
        return item.account if item.account in accounts else None
    owners = [a.name for a in accounts.values() if a.identity.account_id == item.account_id]
    return owners[0] if owners else None


def _quarantine_action(item: QuarantinedAuth, accounts: dict[str, Account]) -> str:
    """What to do about a login in quarantine (never by printing it)."""
    owner = _quarantine_owner(item, accounts)
    if owner is None and item.account_id is None:
        return (
            "it cannot be read as a login; look at it, and delete it if it holds none "
            "(nothing takes it back by itself)"
        )
    if owner is None:
        name = item.account if item.account not in accounts else "NEWNAME"
        return (
            f"no account of the pool has its account id {item.account_id}: add it from this "
            f"file with `{PROG} accounts import {name} --auth-json {item.path}` (any free "
            "name), or delete it if that login is not wanted"
        )
    return (
        f"it is {owner!r}'s login (account id {item.account_id or 'unknown'}): taken back "
        f"into {owner!r} by itself (on every run, spawn, `status` or idle sweep) once the "
        f"cause is gone, and {owner!r} is not used until then; do not delete it: it may be "
        "the account's only live login"
    )


def _quarantined_json(item: QuarantinedAuth, accounts: dict[str, Account]) -> dict[str, Any]:
    owner = _quarantine_owner(item, accounts)
    return {
        "account": item.account,
        "account_id": item.account_id,
        "owner": owner,
        "path": str(item.path),
        "reason": item.reason,
        "since": _iso(item.since),
        "in_pool": owner is not None,
        "action": _quarantine_action(item, accounts),
    }


def _quarantined_lines(
    items: list[QuarantinedAuth], accounts: dict[str, Account], now: datetime
) -> list[str]:
    lines: list[str] = []
    if not items:
        return lines
    lines.append("")
    lines.append(
        f"QUARANTINED LOGINS: {len(items)} auth.json file(s) Codex wrote that could not be "
        "taken back into their account; each may hold the account's only live refresh token"
    )
    for item in items:
        lines.append(f"{item.account}: {item.path}")
        lines.append(f"  since: {_clock_time(item.since, now)} ({_relative(item.since, now)})")
        lines.append(f"  why: {item.reason}")
        lines.append(f"  to do: {_quarantine_action(item, accounts)}")
    return lines


def cmd_status(args: argparse.Namespace) -> int:
    """``status``: usage windows, cooldowns and occupancy of every account."""
    live = [o for o, v in (("--interval", args.interval), ("--refresh-every", args.refresh_every),
            ("--count", args.count)) if v is not None]  # fmt: skip
    if live and not args.watch:
        raise ConfigError(f"{live[0]} goes with --watch (status --watch {live[0]} ...)")
    pool = _pool(args)
    if args.watch:
        args.interval = 2.0 if args.interval is None else args.interval
        args.refresh_every = 300.0 if args.refresh_every is None else args.refresh_every
        args.count = args.count or 0
        return _watch_status(args, pool)
    view = asyncio.run(_status_view(pool, refresh=args.refresh, policy=args.settings.policy()))
    if args.json:
        _print_json(_status_json(view, refreshed=bool(args.refresh)))
    else:
        for line in _status_lines(view):
            _say(line)
    return EXIT_OK


@attrs.frozen
class _StatusView:
    """What `status` shows, read at one moment."""

    pool: Path
    now: datetime
    entries: list[AccountStatus]
    outcomes: dict[str, _Outcome]
    choice: str | WaitUntil | None
    held: dict[str, str]
    quarantined: list[QuarantinedAuth]


async def _status_view(
    pool: AccountPool,
    *,
    refresh: bool | list[str],
    policy: RotationPolicy,
    selector: AccountSelector | None = None,
) -> _StatusView:
    entries, outcomes, choice, held = await _gather_status(
        pool, refresh=refresh, policy=policy, selector=selector
    )
    quarantined = await asyncio.to_thread(pool.quarantined)
    return _StatusView(pool.root, datetime.now(UTC), entries, outcomes, choice, held, quarantined)


def _status_json(view: _StatusView, *, refreshed: bool) -> dict[str, Any]:
    now = view.now
    by_name = {entry.account.name: entry.account for entry in view.entries}
    accounts = []
    for entry in view.entries:
        snapshot = entry.account.last_snapshot
        accounts.append(
            {
                **_account_json(entry.account, now),
                "home": str(entry.home),
                "occupants": [_occupant_json(r) for r in entry.occupants],
                "quota": None if snapshot is None else _snapshot_json(snapshot, now),
                "refresh": _refresh_json(view.outcomes.get(entry.account.name)),
                "held_back": view.held.get(entry.account.name),
            }
        )
    return {
        "pool": str(view.pool),
        "generated_at": _iso(now),
        "refreshed": refreshed,
        "accounts": accounts,
        "next": _choice_json(view.choice),
        "quarantined": [_quarantined_json(q, by_name) for q in view.quarantined],
    }


def _status_lines(view: _StatusView) -> list[str]:
    now = view.now
    by_name = {entry.account.name: entry.account for entry in view.entries}
    if not view.entries:
        empty = (
            f"no accounts in {view.pool}; add one with `{PROG} accounts login NAME` "
            f"or `{PROG} accounts import NAME --auth-json FILE`"
        )
        return [empty, *_quarantined_lines(view.quarantined, by_name, now)]
    lines: list[str] = []
    for index, entry in enumerate(view.entries):
        if index:
            lines.append("")
        name = entry.account.name
        lines += _status_account_lines(entry, view.outcomes.get(name), now, view.held.get(name))
    lines.append("")
    if isinstance(view.choice, str):
        lines.append(f"next run: {view.choice}")
    elif view.choice is not None:
        lines.append(
            f"next run: waits until {_clock_time(view.choice.until, now)} ({view.choice.reason})"
        )
    return lines + _quarantined_lines(view.quarantined, by_name, now)


def _probe_due(
    pool: AccountPool, probed: dict[str, float], every: float, *, now: float
) -> list[str]:
    """The ChatGPT accounts whose stored quota is older than ``every`` and not probed since."""
    if every <= 0:
        return []
    wall = datetime.now(UTC)
    due = []
    for account in pool.accounts():
        if account.identity.auth_mode is not AuthMode.CHATGPT:
            continue
        snapshot = account.last_snapshot
        stale = snapshot is None or snapshot.age(wall).total_seconds() >= every
        if stale and now - probed.get(account.name, -math.inf) >= every:
            due.append(account.name)
    return due


def _watch_status(args: argparse.Namespace, pool: AccountPool) -> int:
    """``status --watch``: the status view kept up to date (see the watch module)."""
    if args.json:
        raise ConfigError(
            "--watch draws text; for machine-readable output run `status --json` when needed"
        )
    screen = LiveScreen(sys.stdout, tty=sys.stdout.isatty())
    terminated: list[int] = []

    def on_sigterm(signum: int, frame: object) -> None:  # noqa: ARG001 - a signal handler
        # KeyboardInterrupt, which asyncio and every `except Exception` let through.
        terminated.append(signum)
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, on_sigterm)
    try:
        with screen.suspendable():
            asyncio.run(_watch_views(args, pool, screen))
    except KeyboardInterrupt:
        # Ctrl-C is how a live view ends; SIGTERM ends it as a signal does.
        return 128 + terminated[0] if terminated else EXIT_OK
    else:
        return EXIT_OK
    finally:
        signal.signal(signal.SIGTERM, previous)
        screen.close()


async def _watch_views(args: argparse.Namespace, pool: AccountPool, screen: LiveScreen) -> None:
    """The views of ``status --watch``, one every ``--interval``, through one selector."""
    policy = args.settings.policy()
    probed: dict[str, float] = {}
    outcomes: dict[str, _Outcome] = {}  # each account's last probe, shown until its next one
    views = 0
    selector = AccountSelector(pool, policy=policy, probe_budget=60.0)
    try:
        while True:
            now = time.monotonic()
            everyone = [a.name for a in pool.accounts()] if args.refresh and not views else []
            due = everyone or _probe_due(pool, probed, args.refresh_every, now=now)
            probed.update(dict.fromkeys(due, now))
            view = await _status_view(pool, refresh=due, policy=policy, selector=selector)
            outcomes.update(view.outcomes)
            view = attrs.evolve(view, outcomes=dict(outcomes))
            clock = _clock_time(view.now, view.now, seconds=True)
            header = (
                f"{PROG} status: {view.pool}, {clock}; every {args.interval:g}s, Ctrl-C to stop"
            )
            screen.draw(_status_lines(view), header=header)
            views += 1
            if args.count and views >= args.count:
                return
            await asyncio.sleep(args.interval)
    finally:
        await selector.aclose()


def _folder(text: str) -> Path:
    """A folder option's value; ``~`` expanded (a shell does not expand ``--pool=~/x``)."""
    return Path(text).expanduser()


def _count(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 (no limit) or more: {text!r}")
    return value


def _seconds(*, minimum: float) -> Any:
    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
        if not math.isfinite(value) or value < minimum:
            raise argparse.ArgumentTypeError(f"must be at least {minimum:g} seconds: {text!r}")
        return value

    return parse


def _choice_json(choice: str | WaitUntil | None) -> dict[str, Any] | None:
    if choice is None:
        return None
    if isinstance(choice, str):
        return {"account": choice, "wait_until": None, "reason": None}
    return {"account": None, "wait_until": _iso(choice.until), "reason": choice.reason}


# -- run ---------------------------------------------------------------------------------


class _Notices:
    """Rotations and blocked rotations as one line on stderr; waits as a live countdown.

    With -v every event is in the DEBUG log already (the library logs each
    one it emits): said once there, not again here.

    On a terminal the wait is one line rewritten every second; elsewhere
    (logs, pipes) its first line comes at once, then one every 30 seconds or
    when what it waits for changes.

    With ``title`` (a TUI on a terminal) the terminal's title names the
    account Codex runs on, and after a rotation where it came from: the
    resumed TUI repaints the screen, but not the title (it is told to leave
    the title alone, see :func:`_title_flags`). :meth:`close` gives the title
    back.
    """

    def __init__(self, verbosity: int, stream: Any = None, *, title: bool = False) -> None:
        self.out = stream or sys.stderr
        self.verbosity = verbosity
        self.rotations: list[Rotating] = []  # for the summary at the end
        self.tty = bool(getattr(self.out, "isatty", lambda: False)())
        self.live = self.tty and not verbosity
        self.title = title and self.tty
        self._titled = False
        self._until: datetime | None = None
        self._printed: float | None = None
        self._open = False

    def _end_line(self) -> None:
        """End a countdown line still open."""
        if self._open:
            print(file=self.out, flush=True)
        self._until, self._printed, self._open = None, None, False

    def close(self) -> None:
        """The run is over: end an open countdown line; give the terminal its title back."""
        self._end_line()
        if self._titled:
            # Clear ours, then pop the title saved at the start (terminals without
            # a title stack keep the empty one, as Codex itself leaves it).
            print("\033]0;\007\033[23;0t", end="", file=self.out, flush=True)
            self._titled = False

    def _set_title(self, text: str) -> None:
        if not self.title:
            return
        if not self._titled:
            print("\033[22;0t", end="", file=self.out)  # save the user's title
            self._titled = True
        shown = "".join(c for c in text if c.isprintable())
        print(f"\033]0;{shown}\007", end="", file=self.out, flush=True)

    def __call__(self, event: Event) -> None:
        if isinstance(event, WaitingForReset):
            self._waiting(event)
            return
        self._end_line()
        if isinstance(event, AccountSelected) and not self.rotations:
            self._set_title(f"{PROG}: {event.account}")
        elif isinstance(event, Rotating):
            self.rotations.append(event)
            at = _clock_time(event.at, datetime.now(UTC))
            self._set_title(f"{PROG}: {event.to_account} (from {event.from_account} at {at})")
            text = (
                f"{PROG}: rotating {event.from_account} -> {event.to_account}"
                f" ({event.reason}); session {event.session_id}"
            )
            # The stopped TUI may leave the cursor anywhere on its last line.
            print(f"\r\n{text}" if self.tty else text, file=self.out, flush=True)
        elif isinstance(event, RotationBlocked):
            # Said once per reason, while the TUI runs: a user who never sees
            # it would watch the account run out with no rotation and no word
            # why. The TUI keeps the terminal raw ("\n" alone does not return).
            text = f"{PROG}: rotation is off for this session because {event.reason}"
            if self.tty:
                print(f"\r\033[K{text}", end="\r\n", file=self.out, flush=True)
            else:
                print(text, file=self.out, flush=True)

    def _waiting(self, event: WaitingForReset) -> None:
        left = _duration(timedelta(seconds=event.seconds_left))
        until = _clock_time(event.until, datetime.now(UTC), seconds=True)
        if self.live:
            text = (
                f"{PROG}: every account is blocked; waiting {left}, until {until} (Ctrl-C to stop)"
            )
            print(f"\r\033[K{text}", end="", file=self.out, flush=True)
            self._open = True
            return
        now = time.monotonic()
        due = self._printed is None or now - self._printed >= 30
        moved = self._until is None or abs((event.until - self._until).total_seconds()) > 60
        if self.verbosity:
            return  # the DEBUG log says each one already
        if due or moved:
            print(
                f"{PROG}: every account is blocked; waiting {left}, until {until} ({event.reason})",
                file=self.out,
                flush=True,
            )
            self._until, self._printed = event.until, now


def cmd_run(args: argparse.Namespace) -> int:
    """``run [--] ARGS``: a supervised Codex session; the exit code is Codex's."""
    argv = list(args.argv)
    if argv[:1] == ["--"]:
        argv = argv[1:]
    else:
        _check_run_argv(argv)
    config = SupervisorConfig(codex=args.codex, wait_for_reset=not args.no_wait)
    title = (
        not args.no_title
        and sys.stderr.isatty()  # (where the title is written)
        and parse_argv(argv).is_interactive
        and not _sets_title(argv)
    )
    if title:
        argv = [*_title_flags(), *argv]
    notices = _Notices(args.verbose, title=title)
    supervisor = Supervisor(
        _pool(args),
        config=config,
        policy=args.settings.policy(),
        sink=notices,
    )
    try:
        result = supervisor.run_sync(argv)
    finally:
        notices.close()
    _run_summary(result, argv, notices.rotations)
    return result.exit_code


def _title_flags() -> list[str]:
    """Codex told to leave the terminal title alone, for the account shown there."""
    return ["-c", "tui.terminal_title=[]"]


def _sets_title(argv: list[str]) -> bool:
    """Whether the user's own Codex command line sets the terminal title's items."""
    return any("terminal_title" in word for word in argv)


def _run_summary(result: RunResult, argv: list[str], rotations: list[Rotating]) -> None:
    """When a supervised run ends: its accounts, rotations, and how to resume it supervised."""
    if result.session_id is None:
        return
    accounts = ", ".join(dict.fromkeys(result.accounts)) or "-"
    count = f"{len(rotations)} rotation{'' if len(rotations) == 1 else 's'}"
    print(
        f"{PROG}: session {result.session_id} ran on {accounts}; {count}",
        file=sys.stderr,
    )
    now = datetime.now(UTC)
    for rotation in rotations:
        print(
            f"  {_clock_time(rotation.at, now)} {rotation.from_account} -> "
            f"{rotation.to_account}: {rotation.reason}",
            file=sys.stderr,
        )
    again = (
        f"exec resume {result.session_id} PROMPT"
        if parse_argv(argv).is_exec
        else f"resume {result.session_id}"
    )
    print(f"{PROG}: to go on supervised: {PROG} run -- {again}", file=sys.stderr, flush=True)


# -- completion ---------------------------------------------------------------------------


def cmd_completion(args: argparse.Namespace) -> int:
    """``completion bash|zsh``: the shell completion script, generated from the parser."""
    script = completion.bash if args.shell == "bash" else completion.zsh
    _say(script(build_parser(), PROG).rstrip("\n"))
    return EXIT_OK


# -- config ------------------------------------------------------------------------------


def _setting_json(value: object) -> object:
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, dict):
        return {str(k): v for k, v in value.items()}
    return value


def _setting_text(value: object) -> str:
    if value is None:
        return "(not set)"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, dict):
        return ", ".join(f"{k} {_percent(v)}" for k, v in value.items())
    if isinstance(value, float):
        return _percent(value)
    return str(value)


def cmd_config_show(args: argparse.Namespace) -> int:
    """``config show``: every setting's effective value and where it came from."""
    settings: _settings.Settings = args.settings
    policy = settings.policy()
    effective = {  # the file's window settings merged over the defaults, as runs use them
        "rotate_at": {k.value: v for k, v in policy.rotate_at.items()},
        "prewarm_margin": {k.value: v for k, v in policy.prewarm_margin.items()},
        "hysteresis": policy.hysteresis,
    }
    shown = {
        key: (effective.get(key, setting.value), setting.source)
        for key, setting in settings.values.items()
    }
    if shown["backend"][0] is not None:  # never its password
        shown["backend"] = (_masked_url(shown["backend"][0]), shown["backend"][1])
    if args.json:
        _print_json(
            {
                "file": str(settings.file),
                "file_found": settings.file_found,
                "settings": {
                    key: {"value": _setting_json(value), "source": source}
                    for key, (value, source) in shown.items()
                },
            }
        )
        return EXIT_OK
    found = "read" if settings.file_found else "not there: every key is optional"
    _say(f"config file: {settings.file} ({found})")
    width = max(len(key) for key in shown)
    values = {key: _setting_text(value) for key, (value, _) in shown.items()}
    value_width = max(len(v) for v in values.values())
    for key, (_, source) in shown.items():
        _say(f"  {key:<{width}}  {values[key]:<{value_width}}  {source}")
    _say("precedence: flag > environment > config file > default")
    return EXIT_OK


# -- demo ----------------------------------------------------------------------------------

_DEMO_ACCOUNTS = (
    # name, backend quota: alpha is nearly spent, beta has room, gamma is a
    # weekly-only plan close to its weekly limit.
    ("alpha", {"five_hour_used": 90.0, "per_request_percent": 3.0}),
    ("beta", {"five_hour_used": 35.0, "weekly_used": 20.0, "per_request_percent": 1.0}),
    ("gamma", {"weekly_only": True, "weekly_used": 97.0, "per_request_percent": 1.0}),
)
_DEMO_PROMPTS = (
    "Sketch a plan for the refactor.",
    "Write the first step.",
    "Review what we have so far.",
)


def _demo_pool(backend: FakeCodexBackend, root: Path) -> AccountPool:
    base = backend.write_codex_home(root / "codex-home")
    pool = AccountPool(root=root / "pool", base_codex_home=base)
    for name, quota in _DEMO_ACCOUNTS:
        backend.add_account(f"id-{name}", email=f"{name}@example.test", **quota)  # type: ignore[arg-type]
        pool.import_auth(name, backend.write_auth(root / f"login-{name}", f"id-{name}"))
    return pool


def _demo_sink(events: list[Event], resumed: threading.Event) -> EventSink:
    def sink(event: Event) -> None:
        events.append(event)
        shown = (AccountSelected, PrewarmStarted, PrewarmReady, Rotating, Resumed, ChildExited)
        if isinstance(event, shown):
            _say(f"  [{event.name}] {event.message}")
        if isinstance(event, Resumed):
            resumed.set()

    return sink


def _interactive_demo(
    pool: AccountPool,
    backend: FakeCodexBackend,
    *,
    codex: str,
    work: Path,
    environ: dict[str, str],
    sink: EventSink,
    resumed: threading.Event,
) -> int:
    """A supervised interactive session fed through a pipe (the simulator reads lines)."""
    read_end, write_end = os.pipe()
    saved_stdin = os.dup(0)
    os.dup2(read_end, 0)
    os.close(read_end)

    def typist() -> None:
        try:
            for index, prompt in enumerate(_DEMO_PROMPTS):
                if index == len(_DEMO_PROMPTS) - 1:
                    resumed.wait(60)  # the last prompt goes to the resumed session
                _say(f"> {prompt}")
                os.write(write_end, (prompt + "\n").encode())
                deadline = time.monotonic() + 60
                while len(backend.responses_requests()) <= index and time.monotonic() < deadline:
                    time.sleep(0.05)
                time.sleep(0.6)  # let the supervisor read the turn's end
        finally:
            os.close(write_end)  # EOF: the session ends on its own

    thread = threading.Thread(target=typist, daemon=True)
    thread.start()
    try:
        supervisor = Supervisor(
            pool,
            config=SupervisorConfig(codex=codex, poll_interval=0.1),
            policy=RotationPolicy(strategy="drain", hysteresis=0),
            sink=sink,
            environ=environ,
        )
        return supervisor.run_sync([], cwd=work).exit_code
    finally:
        thread.join(5)
        os.dup2(saved_stdin, 0)
        os.close(saved_stdin)


def _exec_demo(
    pool: AccountPool,
    *,
    codex: str,
    work: Path,
    environ: dict[str, str],
    sink: EventSink,
) -> int:
    """Headless turns with the real binary: exec, then exec resume on one session."""
    supervisor = Supervisor(
        pool,
        config=SupervisorConfig(codex=codex, poll_interval=0.1),
        policy=RotationPolicy(strategy="drain", hysteresis=0),
        sink=sink,
        environ=environ,
    )
    session: str | None = None
    for prompt in _DEMO_PROMPTS:
        _say(f"> {prompt}")
        rest = ["resume", session, prompt] if session else [prompt]
        result = supervisor.run_sync(
            ["exec", "--skip-git-repo-check", *offline_flags(), *rest], cwd=work
        )
        if result.exit_code != 0:
            return result.exit_code
        session = session or result.session_id
        if session is None:
            _say("the session was never identified")
            return 1
    return 0


def demo(codex: str | None) -> int:
    """A self-contained supervised session: pre-warm, rotate and resume, offline."""
    binary: str | None = None
    if codex is not None:
        found = shutil.which(codex) if "/" not in codex else codex
        if not found or not Path(found).is_file():
            raise CodexNotFoundError(f"cannot run Codex at {codex!r}: not found")
        binary = str(Path(found).resolve())
    events: list[Event] = []
    resumed = threading.Event()
    with (
        tempfile.TemporaryDirectory(prefix="codex-supervisor-demo-") as tmp,
        FakeCodexBackend(reply_text="Done. (an answer from the local fake backend)") as backend,
    ):
        root = Path(tmp)
        work = root / "work"
        work.mkdir()
        pool = _demo_pool(backend, root)
        if binary is not None:
            # Headless turns: alpha's second request hits the usage limit
            # although its usage endpoint still shows room; the supervisor
            # cuts over to beta and resumes the same session there.
            backend.set_quota("id-alpha", five_hour=80)
            backend.script(
                Behaviour.reply("Here is the plan."), Behaviour.usage_limit(), account_id="id-alpha"
            )
        environ = hermetic_env(pool.base_codex_home, root, backend)
        mode = (
            "the real Codex CLI, headless" if binary else "the bundled Codex simulator, interactive"
        )
        _say(f"fake backend on {backend.url}; three accounts; {mode}")
        for name, _ in _DEMO_ACCOUNTS:
            window = backend.account(f"id-{name}").windows
            used = ", ".join(
                f"{'weekly' if w.window_minutes == 10080 else 'five-hour'} {w.used_percent:.0f}%"
                for w in window
            )
            _say(f"  {name}: {used}")
        sink = _demo_sink(events, resumed)
        if binary is None:
            sim = str(install_simulator(root / "bin"))
            code = _interactive_demo(
                pool, backend, codex=sim, work=work, environ=environ, sink=sink, resumed=resumed
            )
        else:
            code = _exec_demo(pool, codex=binary, work=work, environ=environ, sink=sink)
        _demo_summary(backend, events)
        backend.assert_no_replay()
    return code


def _demo_summary(backend: FakeCodexBackend, events: list[Event]) -> None:
    _say("\nsummary")
    _say(f"  {'account':<8} {'turns':>5}  {'five-hour':>9}  {'weekly':>7}")
    for name, _ in _DEMO_ACCOUNTS:
        account = backend.account(f"id-{name}")
        served = [r for r in backend.responses_requests(f"id-{name}") if r.status == 200]
        windows = {w.window_minutes: w.used_percent for w in account.windows}
        five = f"{windows[300]:.0f}%" if 300 in windows else "-"
        _say(f"  {name:<8} {len(served):>5}  {five:>9}  {windows[10080]:>6.0f}%")
    sessions = {r.session_id for r in backend.responses_requests() if r.session_id}
    rotations = [e for e in events if isinstance(e, Rotating)]
    _say(f"  sessions: {len(sessions)} ({', '.join(sorted(s for s in sessions if s))})")
    _say(f"  rotations: {len(rotations)}; refresh-token replays: {len(backend.replays)}")


def cmd_demo(args: argparse.Namespace) -> int:
    """``demo``: a supervised session against the bundled fake backend."""
    # `--codex BIN demo` and `demo --codex BIN` alike; without either, the simulator.
    return demo(args.demo_codex or args.codex_given)


# -- arguments and the entry point ---------------------------------------------------------


def _cli_version() -> str:
    try:
        return importlib.metadata.version("codex-supervisor-cli")
    except importlib.metadata.PackageNotFoundError:
        return "not installed (run from the source tree)"


def _codex_version(codex: str) -> str:
    env = child_environment(default_base_codex_home())
    try:
        return f"{asyncio.run(detect_version(codex, env=env, timeout=10.0))} ({codex})"
    except (SupervisorError, OSError, TimeoutError) as exc:
        return f"not found ({exc}); {CODEX_HINT}"


class _VersionAction(argparse.Action):
    """``--version``: the CLI, the library and the Codex CLI it would run."""

    def __init__(self, option_strings: list[str], dest: str, **kwargs: Any) -> None:
        super().__init__(option_strings, dest, nargs=0, default=argparse.SUPPRESS, **kwargs)

    def __call__(
        self,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        values: object,  # noqa: ARG002 - argparse's signature
        option_string: str | None = None,  # noqa: ARG002
    ) -> None:
        try:
            codex = _resolve(namespace)["codex"]
        except ConfigError:  # (the command says so; the version line names the fallback)
            codex = getattr(namespace, "codex_given", None) or "codex"
        _say(f"{PROG} {_cli_version()}")
        _say(f"codex_supervisor {codex_supervisor.__version__}")
        _say(f"codex {_codex_version(codex)}")
        parser.exit(EXIT_OK)


#: The global options, which come before the command; how many values each takes.
_GLOBAL_OPTIONS = {
    "-v": 0,
    "--verbose": 0,
    "-vv": 0,
    "--utc": 0,
    "--pool": 1,
    "--codex-home": 1,
    "--codex": 1,
}
_RUN_OPTIONS = {"--strategy": 1, "--no-wait": 0, "--no-title": 0}


class _Parser(argparse.ArgumentParser):
    """argparse, with a hint naming the fix for the order mistakes people make."""

    def error(self, message: str) -> NoReturn:
        hint = _order_hint(message, sys.argv[1:] if self._argv is None else self._argv)
        super().error(f"{message}{hint}")

    _argv: list[str] | None = None


_COMMANDS = frozenset({"accounts", "status", "run", "demo", "config", "completion"})


def _command_of(argv: list[str]) -> str | None:
    """The command word of ``argv``: the first word past the global options and their values."""
    i = 0
    while i < len(argv):
        word = argv[i]
        option = word.split("=", 1)[0]
        if option in _GLOBAL_OPTIONS:
            i += 1 if "=" in word else 1 + _GLOBAL_OPTIONS[option]
            continue
        return word if word in _COMMANDS else None
    return None


def _order_hint(message: str, argv: list[str]) -> str:
    if "unrecognized arguments:" not in message:
        return ""
    unknown = message.split("unrecognized arguments:", 1)[1].split()
    misplaced = [w.split("=", 1)[0] for w in unknown if w.split("=", 1)[0] in _GLOBAL_OPTIONS]
    command = _command_of(argv) or "COMMAND"
    if misplaced:
        return (
            f"\nhint: global options ({', '.join(misplaced)}) come before the command, "
            f"e.g. `{PROG} {misplaced[0]} ... {command} ...`"
        )
    if command == "run":
        return (
            f"\nhint: options for Codex go after `--`, e.g. `{PROG} run -- {' '.join(unknown)} ...`"
        )
    return ""


def _check_run_argv(argv: list[str]) -> None:
    """``run exec hi --no-wait``: the supervisor's own options must come before Codex's argv.

    Only up to Codex's own ``--`` (after it, words are Codex's positionals).
    """
    words = argv[: argv.index("--")] if "--" in argv else argv
    options = [w.split("=", 1)[0] for w in words]
    run_own = [o for o in options if o in _RUN_OPTIONS]
    global_ = [o for o in options if o in _GLOBAL_OPTIONS and o.startswith("--")]
    if not run_own and not global_:
        return
    fixes = []
    if global_:
        fixes.append(f"`{PROG} {global_[0]} ... run ...` (global options before the command)")
    if run_own:
        fixes.append(f"`{PROG} run {run_own[0]} ... -- CODEX ARGS`")
    raise ConfigError(
        f"{', '.join(global_ + run_own)} after the Codex command line would go to Codex; "
        f"put it before it: {' or '.join(fixes)}; or write `run -- ...` to give Codex "
        "every word as it is"
    )


def _add_status_parser(sub: Any) -> None:
    status = sub.add_parser("status", help="quota, cooldowns and occupancy of every account")
    status.add_argument("--json", action="store_true", help="machine-readable output")
    status.add_argument(
        "--refresh",
        action="store_true",
        help="probe the usage endpoint for every ChatGPT account first (spends no quota)",
    )
    status.add_argument(
        "--strategy",
        choices=[s.value for s in Strategy],
        default=None,
        help="the strategy `next run` is judged by, as `run --strategy`",
    )
    live = status.add_argument_group("live view")
    live.add_argument(
        "--watch",
        action="store_true",
        help="keep the view up to date until Ctrl-C: in place on a terminal (only the lines "
        "that changed are redrawn), as plain lines whenever something changed elsewhere",
    )
    live.add_argument(
        "--interval",
        type=_seconds(minimum=0.1),
        default=None,
        metavar="SECONDS",
        help="how often --watch reads the pool (default: 2)",
    )
    live.add_argument(
        "--refresh-every",
        type=_seconds(minimum=0.0),
        default=None,
        metavar="SECONDS",
        help="--watch probes the usage endpoint (free) for an account whose data is older "
        "than this, at most this often; 0: never, stored data only (default: 300)",
    )
    live.add_argument(
        "--count",
        type=_count,
        default=None,
        metavar="N",
        help="--watch stops after N views (default: until Ctrl-C)",
    )
    status.set_defaults(handler=cmd_status)


def _add_config_parser(sub: Any) -> None:
    config = sub.add_parser("config", help="the settings in effect and where each came from")
    config_sub = config.add_subparsers(dest="config_command", required=True, metavar="ACTION")
    show = config_sub.add_parser(
        "show", help="print every setting, its value and its source (flag, environment, file)"
    )
    show.add_argument("--json", action="store_true", help="machine-readable output")
    show.set_defaults(handler=cmd_config_show)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser (global options, then a command)."""
    parser = _Parser(prog=PROG, description=__doc__.splitlines()[0])
    parser.add_argument(
        "--utc",
        action="store_true",
        help="show times in UTC instead of the local time zone",
    )
    parser.add_argument(
        "--version",
        action=_VersionAction,
        help="show the CLI's, the library's and the Codex CLI's versions, and exit",
    )
    parser.add_argument(
        "-v",
        "--verbose",
        action="count",
        default=0,
        help="debug logging on stderr (-vv: httpx too)",
    )
    parser.add_argument(
        "--pool",
        type=_folder,
        default=None,
        metavar="DIR",
        help="the pool folder, which holds config.toml (default: $CODEX_SUPERVISOR_HOME or "
        f"~/.codex-supervisor; now {default_pool_root()})",
    )
    parser.add_argument(
        "--codex-home",
        type=_folder,
        default=None,
        metavar="DIR",
        help="your base CODEX_HOME that account homes link to "
        "(default: $CODEX_HOME, codex_home in config.toml, or ~/.codex)",
    )
    parser.add_argument(
        "--codex",
        default=None,
        dest="codex_given",
        metavar="BIN",
        help=f"the Codex CLI binary (default: ${ENV_CODEX_BIN}, codex in config.toml, or "
        "`codex` on PATH); `demo` runs it instead of the "
        "bundled simulator",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    accounts = sub.add_parser("accounts", help="add, list and remove accounts")
    accounts_sub = accounts.add_subparsers(dest="accounts_command", required=True, metavar="ACTION")

    login = accounts_sub.add_parser("login", help="run `codex login` for an account")
    login.add_argument("name", metavar="NAME", help="the account's name in the pool")
    how = login.add_mutually_exclusive_group()
    how.add_argument("--device-auth", action="store_true", help="sign in with a device code")
    how.add_argument(
        "--with-api-key",
        action="store_true",
        help="read an API key from stdin (prompted without echo on a terminal)",
    )
    login.set_defaults(handler=cmd_accounts_login)

    imp = accounts_sub.add_parser("import", help="adopt an existing auth.json (it is MOVED)")
    imp.add_argument("name", metavar="NAME", help="the account's name in the pool")
    imp.add_argument("--auth-json", required=True, metavar="FILE", help="the auth.json to adopt")
    imp.add_argument(
        "--copy",
        action="store_true",
        help="copy instead of moving (two holders of one single-use refresh token: risky)",
    )
    imp.set_defaults(handler=cmd_accounts_import)

    lst = accounts_sub.add_parser("list", help="the accounts of the pool")
    listing = lst.add_mutually_exclusive_group()
    listing.add_argument("--json", action="store_true", help="machine-readable output")
    listing.add_argument(
        "--names", action="store_true", help="only the names, one per line (for scripts)"
    )
    lst.set_defaults(handler=cmd_accounts_list)

    rm = accounts_sub.add_parser("remove", help="take an account out of the pool")
    rm.add_argument(
        "name",
        metavar="NAME",
        help="the account to remove; its folder is set aside in the pool, never deleted",
    )
    rm.add_argument(
        "--force",
        action="store_true",
        help="remove it even while in use (its folder stays until that session ends)",
    )
    rm.set_defaults(handler=cmd_accounts_remove)

    _add_unhold_parser(accounts_sub)

    unblock = accounts_sub.add_parser("unblock", help="lift an account's cooldowns")
    unblock.add_argument("name", metavar="NAME")
    unblock.add_argument(
        "--window",
        choices=[k.value for k in WindowKind],
        default=None,
        help="only this window's cooldown (default: every cooldown)",
    )
    unblock.set_defaults(handler=cmd_accounts_unblock)

    _add_status_parser(sub)

    run = sub.add_parser("run", help="a supervised Codex session (exit code = Codex's)")
    run.add_argument(
        "--strategy",
        choices=[s.value for s in Strategy],
        default=None,
        help="how the next account is chosen: headroom (the most quota left, the weekly "
        "window weighing more), drain (one account after another, in the pool's order), "
        "soonest_reset (the account whose weekly window resets first, so none is wasted) "
        f"(default: ${_settings.ENV_STRATEGY}, strategy in config.toml, or headroom)",
    )
    run.add_argument(
        "--no-wait",
        action="store_true",
        help="fail instead of waiting when every account is blocked",
    )
    run.add_argument(
        "--no-title",
        action="store_true",
        help="leave the terminal title to Codex (by default it names the account a TUI "
        "runs on, and where a rotation came from)",
    )
    run.add_argument("argv", nargs=argparse.REMAINDER, help="arguments for codex (after --)")
    run.set_defaults(handler=cmd_run)

    demo_parser = sub.add_parser(
        "demo", help="a self-contained supervised session that pre-warms, rotates and resumes"
    )
    demo_parser.add_argument(
        "--codex",
        dest="demo_codex",
        default=None,
        metavar="BIN",
        help="use this real Codex binary (headless turns) instead of the bundled simulator",
    )
    demo_parser.set_defaults(handler=cmd_demo)
    _add_config_parser(sub)

    completion = sub.add_parser(
        "completion", help="print a shell completion script (bash or zsh), made from this parser"
    )
    completion.add_argument(
        "shell",
        choices=["bash", "zsh"],
        help='the shell; load the script with eval "$(codex-supervisor completion SHELL)"',
    )
    completion.set_defaults(handler=cmd_completion)
    return parser


def _resolve(args: argparse.Namespace) -> _settings.Settings:
    """The settings of this invocation: flag > environment > config.toml > default."""
    return _settings.resolve(
        pool=getattr(args, "pool", None),
        codex_home=getattr(args, "codex_home", None),
        codex=getattr(args, "codex_given", None),
        strategy=getattr(args, "strategy", None),
        utc=bool(getattr(args, "utc", False)),
    )


def _configure_logging(verbosity: int) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbosity else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    if verbosity < 2:
        # httpx/httpcore log every request and connection step; asyncio its selector.
        for name in ("httpx", "httpcore", "asyncio"):
            logging.getLogger(name).setLevel(logging.WARNING)


def main(argv: list[str] | None = None) -> int:  # noqa: PLR0911 - one exit code per kind of error
    """Parse arguments and run a command; returns the exit code."""
    parser = build_parser()
    parser._argv = list(sys.argv[1:] if argv is None else argv)  # noqa: SLF001 - for its hints
    args = parser.parse_args(argv)
    _configure_logging(args.verbose)
    try:
        Path.cwd()
    except OSError as exc:  # e.g. a folder removed under the shell
        print(
            f"{PROG}: error: the current folder is gone or cannot be read ({exc.strerror}); "
            "cd to another one",
            file=sys.stderr,
        )
        return EXIT_ERROR
    try:
        args.settings = _resolve(args)
        args.pool = args.settings["pool"]
        args.codex_home = args.settings["codex_home"]
        args.codex = args.settings["codex"]
        _ZONE["utc"] = args.settings["utc"]
        code: int = args.handler(args)
    except CodexNotFoundError as exc:
        print(f"{PROG}: error: {exc}; {CODEX_HINT}", file=sys.stderr)
        return EXIT_NO_CODEX
    except ConfigError as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except SupervisorError as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return EXIT_ERROR
    except BrokenPipeError:
        return _reader_gone()
    except OSError as exc:  # e.g. a pool folder we may not write
        log.debug("os error", exc_info=True)
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    return EXIT_PIPE if _PIPE["gone"] else code


def _reader_gone() -> int:
    """Our output's reader went away (``| head``): end quietly, as a shell expects."""
    with contextlib.suppress(OSError):
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())  # the exit's flush must not fail again
    return EXIT_PIPE


def entry_point() -> None:
    """The ``codex-supervisor`` console script (and ``python examples/cli.py``)."""
    try:
        code = main()
        if sys.stdout is not None:  # (started with stdout closed)
            sys.stdout.flush()
    except BrokenPipeError:
        code = _reader_gone()
    sys.exit(code)
