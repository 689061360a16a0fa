"""Codex lifecycle hooks that tell the supervisor which session its child runs.

Codex runs command hooks at lifecycle events (CODEX_FACTS.md §9): at a
thread's first turn (``SessionStart``: its ``session_id`` and the exact
``transcript_path``) and at each turn's end (``Stop``). That is exact evidence
of which session a child writes, on every platform, where ``/proc`` is the
Linux-only alternative. This module

- gives one child its own hooks with ``-c`` flags (:func:`hook_flags`) — the
  session-flags config layer, so no file of the user's is touched — and trusts
  them in the same way (``-c hooks.state={…}`` with their hashes, as Codex
  computes them): an untrusted hook is skipped by ``codex exec`` and stops the
  TUI on a review dialog. The user's own hooks still run: layers add up, and
  the trust the user gave them in the base home is passed on re-keyed to the
  account home, where Codex looks for it (it keys trust by the path it read a
  hook from, and an account home's ``hooks.json`` is a link into the base);
- receives what the hooks report in a private folder (:class:`HookInbox`): the
  hook command (``_hook.py``) appends one line per event and keeps nothing of
  the payload but the event, the session and its rollout;
- checks once per untested Codex version that the binary agrees with the
  trust hashes (:func:`hooks_trusted`, through ``app-server hooks/list``), so a
  release that hashes differently never leaves a TUI waiting on a dialog.

``--dangerously-bypass-hook-trust`` is never used: it would also run hooks the
user never trusted.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import hashlib
import json
import logging
import os
import shlex
import shutil
import sys
import tempfile
import time
import tomllib
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, Final, final

import attrs

from . import _toml
from .errors import ConfigError

__all__ = [
    "HOOK_TIMEOUT",
    "SESSION_FLAGS_SOURCE",
    "HookEvent",
    "HookInbox",
    "hook_command",
    "hook_flags",
    "hooks_trusted",
    "overridden_by",
    "switched_off_in_config",
    "trust_flags",
    "trust_hash",
    "user_trust",
]

log = logging.getLogger(__name__)

#: Seconds Codex lets our hook run before it kills it (and goes on). The hook
#: appends a line; a stuck disk must not hold a turn for Codex's default 600 s.
HOOK_TIMEOUT: Final = 10
#: The source path Codex gives the ``-c`` (session flags) layer in hook keys.
SESSION_FLAGS_SOURCE: Final = "/<session-flags>/config.toml"
# (config key, key label in hooks.state): the events our hooks listen to.
_EVENTS: Final = (("SessionStart", "session_start"), ("Stop", "stop"))
_HOOK_SCRIPT: Final = Path(__file__).with_name("_hook.py")
_MAX_LINE: Final = 16 * 1024
_MAX_INBOX: Final = 8 * 1024 * 1024


@final
@attrs.frozen(kw_only=True)
class HookEvent:
    """One hook Codex ran in a supervised child: which event, in which session."""

    event: str
    session_id: str
    transcript_path: str | None = None
    #: SessionStart's ``startup``, ``resume``, ``clear`` or ``compact``.
    source: str | None = None
    turn_id: str | None = None


def trust_hash(event: str, command: str, *, timeout: int = HOOK_TIMEOUT) -> str:
    """The ``trusted_hash`` Codex expects for one command handler in a matcher-less group.

    ``event`` is the key label (``session_start``, ``stop``). Codex hashes the
    canonical JSON of the group's identity (sorted keys, no spaces); checked
    against each tested release's ``hooks/list`` in the real-binary suite.
    """
    identity = {
        "event_name": event,
        "hooks": [{"type": "command", "command": command, "timeout": timeout, "async": False}],
    }
    text = json.dumps(identity, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return "sha256:" + hashlib.sha256(text.encode()).hexdigest()


def _toml_string(value: str) -> str | None:
    """``value`` as a TOML basic string, or None when argv cannot carry it as UTF-8."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:  # a path with undecodable bytes (surrogate escapes)
        return None
    # JSON's escapes are TOML's; TOML also wants DEL escaped.
    return json.dumps(value, ensure_ascii=False).replace("\x7f", "\\u007f")


def hook_command(inbox: Path, *, python: str | None = None) -> str | None:
    """The shell command our hooks run, or None when there is no Python to run it with.

    Codex runs it with the user's shell (``bash -c``, ``zsh -c``), whose
    startup files (``BASH_ENV``, ``~/.zshenv``) run first, as for every hook.
    ``python -I -S`` imports nothing from the session's folder or the
    environment; ``|| :; exit 0`` keeps a missing interpreter or script from
    ever reaching Codex as exit code 2 (which makes a Stop continue the turn),
    ``set -e`` in a startup file included, and stdout goes nowhere (a
    SessionStart's stdout reaches the model).
    """
    interpreter = python if python is not None else sys.executable
    if not interpreter or getattr(sys, "frozen", False) or not _HOOK_SCRIPT.is_file():
        return None
    words = [interpreter, "-I", "-S", str(_HOOK_SCRIPT), str(inbox)]
    return f"{shlex.join(words)} >/dev/null 2>&1 || :; exit 0"


_Entry = dict[str, str | bool]


def user_trust(base_home: Path, account_home: Path) -> dict[str, _Entry]:
    """The user's hook trust from the base ``config.toml``, re-keyed to ``account_home``.

    Codex keys trust by the path it found a hook at: a hook the user trusted
    as ``<base>/hooks.json:stop:0:0`` is found in an account home as
    ``<account home>/hooks.json:stop:0:0`` and would be untrusted there. Each
    entry keeps what the user set (``trusted_hash``, ``enabled``: a hook
    switched off stays off), and is passed on only for a file the account
    home shows as the same file as the base home (its links), under both the
    account home's path and its real one (Codex resolves CODEX_HOME). An
    unreadable or invalid config gives no entries (logged): Codex itself will
    say what is wrong with it.
    """
    config = _base_config(base_home)
    hooks = config.get("hooks")
    state = hooks.get("state") if isinstance(hooks, dict) else None
    if not isinstance(state, dict):
        return {}
    prefixes = {str(base_home) + os.sep}
    with contextlib.suppress(OSError):
        prefixes.add(str(base_home.resolve()) + os.sep)
    homes = {str(account_home)}
    with contextlib.suppress(OSError):
        homes.add(str(account_home.resolve()))
    trusted: dict[str, _Entry] = {}
    for key, raw in state.items():
        entry = _kept_fields(raw)
        parts = key.rsplit(":", 3)
        if entry is None or len(parts) != 4:
            continue
        prefix = next((p for p in prefixes if parts[0].startswith(p)), None)
        if prefix is None:
            continue
        relative = parts[0][len(prefix) :]
        if not _same_file(base_home / relative, account_home / relative):
            continue
        for home in homes:
            trusted[":".join([str(Path(home) / relative), *parts[1:]])] = entry
    return trusted


def _base_config(base_home: Path) -> dict[str, Any]:
    """The base ``config.toml``, or ``{}`` when it is missing or unreadable (logged)."""
    path = base_home / "config.toml"
    try:
        return _toml.loads(path.read_text(encoding="utf-8"), source=str(path))
    except FileNotFoundError:
        return {}
    except (OSError, UnicodeDecodeError, ConfigError) as exc:
        log.warning("the hook settings in %s cannot be read: %s", path, exc)
        return {}


def switched_off_in_config(base_home: Path) -> bool:
    """Whether the base ``config.toml`` says ``[features] hooks = false``."""
    features = _base_config(base_home).get("features")
    return isinstance(features, dict) and features.get("hooks") is False


def _kept_fields(raw: object) -> _Entry | None:
    """The fields of one trust entry passed on: a string ``trusted_hash``, a bool ``enabled``."""
    if not isinstance(raw, dict):
        return None
    entry: _Entry = {}
    if isinstance(raw.get("trusted_hash"), str):
        entry["trusted_hash"] = raw["trusted_hash"]
    if isinstance(raw.get("enabled"), bool):
        entry["enabled"] = raw["enabled"]
    return entry or None


def _same_file(base: Path, account: Path) -> bool:
    """Whether the account home shows ``base`` itself (a link to it, or a parent's link)."""
    try:
        return base.resolve(strict=True) == account.resolve(strict=True)
    except (OSError, RuntimeError):  # missing, or a link loop
        return False


def _inline(table: Mapping[str, _Entry]) -> str:
    parts = []
    for key, entry in table.items():
        fields = []
        for name, value in entry.items():
            if isinstance(value, bool):
                fields.append(f"{name}={'true' if value else 'false'}")
            elif (quoted := _toml_string(value)) is not None:
                fields.append(f"{name}={quoted}")
        quoted_key = _toml_string(key)
        if quoted_key is None or len(fields) != len(entry):
            continue  # an entry argv cannot carry is left out, never mangled
        parts.append(f"{quoted_key}={{{','.join(fields)}}}")
    return "{" + ",".join(parts) + "}"


#: One argument may be at most 128 KiB on Linux (MAX_ARG_STRLEN): a trust
#: table longer than this is not passed on (logged), so Codex still starts.
_MAX_STATE_FLAG: Final = 64 * 1024


def _state_flag(trust: Mapping[str, _Entry], ours: Mapping[str, _Entry]) -> str:
    flag = f"hooks.state={_inline({**trust, **ours})}"
    if len(flag) > _MAX_STATE_FLAG:
        log.warning(
            "the hook trust in the base config.toml is too large to pass on (%d entries); "
            "your own hooks are untrusted in the account homes",
            len(trust),
        )
        flag = f"hooks.state={_inline(ours)}"
    return flag


def trust_flags(base_home: Path, account_home: Path) -> list[str]:
    """The ``-c hooks.state`` flag that passes the user's hook trust on to ``account_home``.

    For a child that gets none of our hooks: the user's own still run. Empty
    when the user trusted no hook in the base home.
    """
    trust = user_trust(base_home, account_home)
    if not trust:
        return []
    flag = _state_flag(trust, {})
    return ["-c", flag] if flag != "hooks.state={}" else []


def hook_flags(
    inbox: Path,
    *,
    base_home: Path,
    account_home: Path,
    python: str | None = None,
) -> list[str] | None:
    """The ``-c`` flags that give one child our hooks, trusted; None when they cannot.

    Three flags: ``hooks.SessionStart``, ``hooks.Stop`` and one
    ``hooks.state`` (a second ``-c hooks.state`` would replace the first)
    holding our hashes and the user's own trust re-keyed to ``account_home``.
    """
    command = hook_command(inbox, python=python)
    quoted = None if command is None else _toml_string(command)
    if command is None or quoted is None:
        return None
    flags: list[str] = []
    ours: dict[str, _Entry] = {}
    for event, label in _EVENTS:
        handler = f"{{type={json.dumps('command')},command={quoted},timeout={HOOK_TIMEOUT}}}"
        flags += ["-c", f"hooks.{event}=[{{hooks=[{handler}]}}]"]
        ours[f"{SESSION_FLAGS_SOURCE}:{label}:0:0"] = {"trusted_hash": trust_hash(label, command)}
    flags += ["-c", _state_flag(user_trust(base_home, account_home), ours)]
    return flags


_CONFIG_OPTIONS: Final = ("-c", "--config")
#: Config keys a user's ``-c`` may set that take our hooks' place: the whole
#: hooks table, its trust state (Codex keeps the last ``-c hooks.state``) or
#: one of the events we listen to.
_OUR_KEYS: Final = frozenset({"hooks", "hooks.state", "hooks.SessionStart", "hooks.Stop"})


def _config_values(argv: Sequence[str]) -> Iterator[str]:
    """The ``KEY=VALUE`` of every ``-c``/``--config`` in ``argv``, spelled any way Codex takes."""
    for i, word in enumerate(argv):
        if word == "--":
            return  # the rest are positionals (a prompt)
        if word in _CONFIG_OPTIONS:
            if i + 1 < len(argv):
                yield argv[i + 1]
        elif word.startswith("--config="):
            yield word.removeprefix("--config=")
        elif word.startswith("-c") and not word.startswith("--"):
            yield word[2:].removeprefix("=")


def _dotted(key: str) -> str:
    """A config key without quotes or spaces around its parts: ``hooks.state``."""
    return ".".join(part.strip().strip("\"'") for part in key.split("."))


def _switched_off(key: str, raw: str) -> bool:
    """Whether ``key=raw`` sets ``features.hooks`` to false (also as ``features={hooks=false}``)."""
    if key == "features.hooks":
        return raw.strip() == "false"
    if key != "features":
        return False
    try:
        value = tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        return False
    return isinstance(value, dict) and value.get("hooks") is False


def overridden_by(argv: Sequence[str]) -> str | None:
    """Why the user's own argv leaves no room for our hooks, or None.

    A ``-c`` of the user's that sets the hooks table, its trust state or one
    of our events would replace ours (Codex keeps the last); ``hooks``
    switched off (``--disable hooks``, ``-c features.hooks=false``) means no
    hook runs at all.
    """
    words = list(argv)
    for i, word in enumerate(words):
        if (word == "--disable" and words[i + 1 : i + 2] == ["hooks"]) or word == "--disable=hooks":
            return "hooks are disabled on the command line (--disable hooks)"
    for value in _config_values(words):
        key, _, raw = value.partition("=")
        key = _dotted(key)
        if key in _OUR_KEYS or key.startswith("hooks.state."):
            return f"the command line sets {key} itself"
        if _switched_off(key, raw):
            return "hooks are switched off on the command line"
    return None


_PREFIX: Final = "hooks-"


_ALIVE: Final = ".alive"
#: An inbox folder without its lock file (a process killed while making it) is
#: left this long (seconds) before it is swept.
_UNFINISHED_AGE: Final = 24 * 3600


def _sweep(parent: Path) -> None:
    """Remove the inbox folders nobody holds any more (processes killed before closing them).

    A live inbox holds an exclusive ``flock`` on its ``.alive`` file: that,
    not a pid, says whether its owner lives (a pid means nothing in another
    pid namespace or on another machine sharing the pool).
    """
    with contextlib.suppress(OSError):
        for entry in os.scandir(parent):
            ours = entry.name.startswith(_PREFIX) and entry.is_dir(follow_symlinks=False)
            if ours and _abandoned(Path(entry.path)):
                shutil.rmtree(entry.path, ignore_errors=True)


def _abandoned(folder: Path) -> bool:
    try:
        fd = os.open(folder / _ALIVE, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except FileNotFoundError:
        with contextlib.suppress(OSError):
            return time.time() - folder.stat().st_mtime > _UNFINISHED_AGE
        return False
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        return False  # held: its owner lives
    finally:
        os.close(fd)  # (releases the lock just taken)
    return True


@final
class HookInbox:
    """The private folder one child's hooks write to, and a reader of what they wrote.

    The folder is made in ``parent`` (the pool's own private folder; the
    system's temporary folder by default) only for its owner (0700), and
    removed by :meth:`close`; it holds a lock while it is open, and folders
    whose lock nobody holds (a process that died without closing them) are
    removed by the next inbox made there. :meth:`read` returns the events
    appended since the last read, in the order the hooks ran; a half-written
    last line waits for the next read, and malformed or over-long lines are
    skipped (logged).
    """

    def __init__(self, parent: Path | str | None = None) -> None:
        if parent is not None:
            Path(parent).mkdir(mode=0o700, parents=True, exist_ok=True)
            _sweep(Path(parent))
        prefix = f"{_PREFIX}{os.getpid()}-"
        if parent is None:
            prefix = f"codex-supervisor-{prefix}"
        self.folder = Path(tempfile.mkdtemp(prefix=prefix, dir=parent))
        self._alive = -1
        try:
            self.path = self.folder / "events.jsonl"
            fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
            os.close(fd)
            # Locked before it gets the name a sweep looks at: never swept half made.
            unnamed = self.folder / f"{_ALIVE}-new"
            self._alive = os.open(unnamed, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
            try:
                fcntl.flock(self._alive, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as exc:  # no flock here (some network filesystems): never swept
                log.debug("hook inbox %s not locked: %s", self.folder, exc)
            unnamed.rename(self.folder / _ALIVE)
        except BaseException:
            if self._alive >= 0:
                os.close(self._alive)
            shutil.rmtree(self.folder, ignore_errors=True)
            raise
        self._offset = 0
        self._partial = b""

    def read(self) -> list[HookEvent]:
        """The events the hooks reported since the last read."""
        try:
            with self.path.open("rb") as handle:
                handle.seek(self._offset)
                data = handle.read(_MAX_INBOX)
        except OSError:
            return []
        self._offset += len(data)
        lines = (self._partial + data).split(b"\n")
        self._partial = lines.pop()
        if len(self._partial) > _MAX_LINE:
            log.warning("hook inbox: a line over %d bytes skipped", _MAX_LINE)
            self._partial = b""
        return [e for e in (_event(line) for line in lines if line.strip()) if e is not None]

    def close(self) -> None:
        """Remove the folder (a hook that runs later writes nowhere: it never creates files)."""
        shutil.rmtree(self.folder, ignore_errors=True)
        if self._alive >= 0:
            os.close(self._alive)
            self._alive = -1


def _event(line: bytes) -> HookEvent | None:
    try:
        record = json.loads(line)
    except (ValueError, RecursionError):
        log.warning("hook inbox: a line that is not JSON skipped")
        return None
    if not isinstance(record, dict):
        return None
    event, session = record.get("event"), record.get("session_id")
    if not isinstance(event, str) or not isinstance(session, str):
        log.warning("hook inbox: a record without event or session skipped")
        return None

    def text(name: str) -> str | None:
        value = record.get(name)
        return value if isinstance(value, str) else None

    return HookEvent(
        event=event,
        session_id=session,
        transcript_path=text("transcript_path"),
        source=text("source"),
        turn_id=text("turn_id"),
    )


# -- does this Codex trust our hooks? ---------------------------------------------------------

_verified: dict[tuple[str, str], bool] = {}


async def hooks_trusted(
    codex: str,
    version: str,
    *,
    environ: Mapping[str, str] | None = None,
    timeout: float = 20.0,  # noqa: ASYNC109 - bounds the whole check
) -> bool:
    """Whether ``codex`` (of ``version``) lists our hooks as trusted: asked once per process.

    Runs ``codex app-server`` with our flags in an empty, throwaway
    CODEX_HOME and asks ``hooks/list``: the binary's own word on the hashes.
    Any failure counts as "no" (logged): without trusted hooks a TUI would stop
    on Codex's review dialog.
    """
    key = (codex, version)
    if key in _verified:
        return _verified[key]
    try:
        async with asyncio.timeout(timeout):
            trusted = await _ask_hooks_list(codex, environ)
    except Exception as exc:  # noqa: BLE001 - the binary, its transport or its answer failed
        # Not remembered: a loaded machine's timeout must not cost the whole process.
        log.warning("could not check whether codex %s trusts our hooks: %s", version, exc)
        return False
    _verified[key] = trusted
    if not trusted:
        log.warning(
            "codex %s does not trust the supervisor's session hooks; "
            "sessions are tracked through /proc only",
            version,
        )
    return trusted


async def _ask_hooks_list(codex: str, environ: Mapping[str, str] | None) -> bool:
    from .appserver.client import AppServerClient  # noqa: PLC0415 - only for this check

    with tempfile.TemporaryDirectory(prefix="codex-supervisor-hookcheck-") as scratch:
        home = Path(scratch) / "home"
        home.mkdir()
        inbox = Path(scratch) / "events.jsonl"
        flags = hook_flags(inbox, base_home=home, account_home=home)
        if flags is None:
            return False
        client = await AppServerClient.spawn(
            codex, codex_home=home, environ=environ, args=flags, cwd=scratch
        )
        try:
            result = await client.request("hooks/list", {"cwds": [scratch]}, timeout=10.0)
        finally:
            await client.aclose(grace=1.0)
    return _ours_trusted(result)


def _ours_trusted(result: Any) -> bool:
    """Whether a ``hooks/list`` result shows both our hooks trusted."""
    wanted = {f"{SESSION_FLAGS_SOURCE}:{label}:0:0" for _, label in _EVENTS}
    seen = {
        str(hook.get("key")): hook.get("trustStatus")
        for hook in _hooks_in(result)
        if isinstance(hook, dict)
    }
    return all(seen.get(key) == "trusted" for key in wanted)


def _hooks_in(result: Any) -> Iterable[Any]:
    """Every hook entry of a ``hooks/list`` result, whatever its nesting (per cwd or flat)."""
    if isinstance(result, dict):
        if "key" in result and "trustStatus" in result:
            yield result
            return
        for value in result.values():
            yield from _hooks_in(value)
    elif isinstance(result, list):
        for value in result:
            yield from _hooks_in(value)
