"""The CLI's settings and where each comes from: flag > environment > config file > default.

The config file is ``<pool>/config.toml`` (TOML, read with :mod:`tomllib`). The
pool folder itself comes from ``--pool`` or ``$CODEX_SUPERVISOR_HOME`` only,
as the file lives in it. Every key is optional::

    codex = "/opt/codex/bin/codex"   # the Codex CLI binary
    codex_home = "~/.codex"          # the base CODEX_HOME account homes link to
    strategy = "drain"               # headroom | drain | soonest_reset
    utc = true                       # times in UTC instead of the local zone
    hysteresis = 5                   # percent a successor must have above its floor
    backend = "redis://build-1:6379/0"   # a pool several machines share (see below)
    pool_name = "team"               # its name on that server (default "default")
    credential_key_file = "~/.config/codex-supervisor/key"  # seals the shared logins

    [rotate_at]                      # remaining percent at or below which to rotate
    five_hour = 5
    weekly = 10

    [prewarm_margin]                 # pre-warm this much above the rotation mark
    five_hour = 5
    weekly = 3

``backend`` (or ``$CODEX_SUPERVISOR_BACKEND``) moves leases, state and logins
to Redis; the key file (or ``$CODEX_SUPERVISOR_CREDENTIAL_KEY_FILE``, or the
key itself in ``$CODEX_SUPERVISOR_CREDENTIAL_KEY``) is then required.

A path may start with ``~``; a relative one is read from the file's folder.
An unknown key, a wrong type or a value out of range is an error naming the
file and the key: a typo never silently falls back to a default.
"""

from __future__ import annotations

import os
import re
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import attrs

from codex_supervisor import ConfigError, RotationPolicy, Strategy
from codex_supervisor.config import (
    ENV_BACKEND,
    ENV_BASE_CODEX_HOME,
    ENV_POOL_HOME,
    default_base_codex_home,
    default_pool_root,
)

CONFIG_NAME = "config.toml"
#: The CLI's own variables (the library never reads them).
ENV_CODEX_BIN = "CODEX_SUPERVISOR_CODEX_BIN"
ENV_STRATEGY = "CODEX_SUPERVISOR_STRATEGY"

#: The file's keys, each with what it holds (for errors and ``config show``).
KEYS = {
    "codex": "the Codex CLI binary",
    "codex_home": "the base CODEX_HOME account homes link to",
    "strategy": "how the next account is chosen",
    "utc": "show times in UTC",
    "rotate_at": "remaining percent at or below which a window rotates",
    "prewarm_margin": "percent above the rotation mark at which a successor is pre-warmed",
    "hysteresis": "percent a successor needs above its rotation floor",
    "backend": "a Redis URL for a pool several machines share (unset: this folder only)",
    "pool_name": "the pool's name in that Redis",
    "credential_key_file": "the key file that seals the logins of a shared pool",
}
#: Where a key file may also come from (the key itself only from the environment).
ENV_KEY_FILE = "CODEX_SUPERVISOR_CREDENTIAL_KEY_FILE"
_WINDOW_KEYS = ("five_hour", "weekly", "other")
#: The file's settings that shape the rotation policy (RotationPolicy's arguments).
POLICY_KEYS = ("rotate_at", "prewarm_margin", "hysteresis")

DEFAULT = "default"
FILE = "config file"


@attrs.frozen
class Setting:
    """One effective value and where it came from (``flag --codex``, ``config file``, ...)."""

    value: Any
    source: str


@attrs.frozen
class Settings:
    """Every setting of one invocation, resolved."""

    file: Path
    file_found: bool
    values: Mapping[str, Setting]

    def __getitem__(self, key: str) -> Any:
        return self.values[key].value

    def policy(self, strategy: str | None = None) -> RotationPolicy:
        """The rotation policy these settings describe (``strategy`` overrides theirs)."""
        kwargs = {key: self[key] for key in POLICY_KEYS if self[key] is not None}
        return RotationPolicy(strategy=strategy or self["strategy"], **kwargs)


def _read_file(path: Path) -> dict[str, Any]:
    """The file's table; {} when there is no file."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return {}
    except IsADirectoryError:
        raise ConfigError(f"{path} is a folder, not a config file") from None
    except OSError as exc:
        raise ConfigError(f"cannot read {path}: {exc.strerror or exc}") from None
    try:
        return tomllib.loads(data.decode("utf-8"))
    except UnicodeDecodeError:
        raise ConfigError(f"{path} is not UTF-8 text") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path} is not valid TOML: {exc}") from None


def _path(value: object, key: str, file: Path, home: Path) -> Path:
    if not isinstance(value, str) or not value.strip():
        raise ConfigError(f"{file}: {key} must be a path (a non-empty string), got {value!r}")
    mine = value == "~" or value.startswith("~/")  # the given HOME's; ~user as the system says
    try:
        path = home / value[2:] if mine else Path(value).expanduser()
    except RuntimeError as exc:  # ~nosuchuser
        raise ConfigError(f"{file}: {key}: {exc}") from None
    return path if path.is_absolute() else file.parent / path


def _checked(table: dict[str, Any], file: Path, home: Path) -> dict[str, Any]:
    """The file's values, validated and converted; an error names the key."""
    unknown = sorted(set(table) - set(KEYS))
    if unknown:
        raise ConfigError(f"{file}: unknown key {unknown[0]!r} (the keys are: {', '.join(KEYS)})")
    out: dict[str, Any] = {}
    if "codex" in table:
        codex = table["codex"]
        if not isinstance(codex, str) or not codex.strip():
            raise ConfigError(f"{file}: codex must be a command or a path, got {codex!r}")
        out["codex"] = str(_path(codex, "codex", file, home)) if "/" in codex else codex
    if "codex_home" in table:
        out["codex_home"] = _path(table["codex_home"], "codex_home", file, home)
    if "strategy" in table:
        out["strategy"] = _strategy(table["strategy"], f"{file}: strategy")
    if "utc" in table:
        if not isinstance(table["utc"], bool):
            raise ConfigError(f"{file}: utc must be true or false, got {table['utc']!r}")
        out["utc"] = table["utc"]
    for key in POLICY_KEYS:
        if key in table:
            out[key] = _policy_value(key, table[key], file)
    out.update(_checked_shared(table, file, home))
    return out


def _checked_shared(table: dict[str, Any], file: Path, home: Path) -> dict[str, Any]:
    """The keys of a pool several machines share."""
    out: dict[str, Any] = {}
    if "backend" in table:
        out["backend"] = _backend(table["backend"], f"{file}: backend")
    if "pool_name" in table:
        name = table["pool_name"]
        if not isinstance(name, str) or not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}", name):
            raise ConfigError(f"{file}: pool_name must be a name such as team-1, got {name!r}")
        out["pool_name"] = name
    if "credential_key_file" in table:
        out["credential_key_file"] = _path(
            table["credential_key_file"], "credential_key_file", file, home
        )
    return out


def _backend(value: object, where: str) -> str:
    if not isinstance(value, str) or not value.startswith(("redis://", "rediss://", "unix://")):
        shown = value if not isinstance(value, str) else value.split("@")[-1]
        raise ConfigError(
            f"{where} must be a Redis URL (redis://host:6379/0, rediss:// for TLS), got {shown!r}"
        )
    return value


def _policy_value(key: str, value: object, file: Path) -> Any:
    """A rotation-policy setting of the file, checked by the policy itself."""
    if key == "hysteresis":
        numbers = [value]
    elif not isinstance(value, dict):
        raise ConfigError(
            f"{file}: {key} must be a table such as [{key}] with five_hour = 5, got {value!r}"
        )
    else:
        wrong = [name for name in value if name not in _WINDOW_KEYS]
        if wrong:
            raise ConfigError(
                f"{file}: {key}.{wrong[0]} is not a window (the windows are: "
                f"{', '.join(_WINDOW_KEYS)})"
            )
        numbers = list(value.values())
    if any(isinstance(n, bool) or not isinstance(n, int | float) for n in numbers):
        raise ConfigError(f"{file}: {key} takes numbers (percent), got {value!r}")
    try:
        RotationPolicy(**{key: value})
    except ConfigError as exc:
        raise ConfigError(f"{file}: {key}: {exc}") from None
    return dict(value) if isinstance(value, dict) else value


def _strategy(value: object, where: str) -> str:
    names = [s.value for s in Strategy]
    if value not in names:
        raise ConfigError(f"{where} must be one of {', '.join(names)}, got {value!r}")
    return str(value)


def resolve(
    *,
    pool: Path | None,
    codex_home: Path | None,
    codex: str | None,
    strategy: str | None,
    utc: bool,
    environ: Mapping[str, str] | None = None,
) -> Settings:
    """The effective settings: the flags given (None: not given), then the environment,
    then ``<pool>/config.toml``, then the defaults."""
    env = os.environ if environ is None else environ
    values: dict[str, Setting] = {}
    if pool is not None:
        values["pool"] = Setting(pool, "flag --pool")
    elif env.get(ENV_POOL_HOME):
        values["pool"] = Setting(default_pool_root(env), f"environment ${ENV_POOL_HOME}")
    else:
        values["pool"] = Setting(default_pool_root(env), DEFAULT)
    root: Path = values["pool"].value
    if root.exists() and not root.is_dir():
        raise ConfigError(f"--pool {root} is not a folder")
    file = root.absolute() / CONFIG_NAME
    table = _read_file(file)
    found = bool(table) or file.is_file()
    filed = _checked(table, file, Path(env["HOME"]) if env.get("HOME") else Path.home())

    def pick(key: str, flag: tuple[Any, str] | None, variable: str | None, default: Any) -> None:
        if flag is not None and flag[0] is not None:
            values[key] = Setting(flag[0], f"flag {flag[1]}")
        elif variable is not None and env.get(variable):
            values[key] = Setting(env[variable], f"environment ${variable}")
        elif key in filed:
            values[key] = Setting(filed[key], FILE)
        else:
            values[key] = Setting(default, DEFAULT)

    pick("codex", (codex, "--codex"), ENV_CODEX_BIN, "codex")
    home_default = default_base_codex_home(
        {k: v for k, v in env.items() if k != ENV_BASE_CODEX_HOME}
    )
    pick("codex_home", (codex_home, "--codex-home"), ENV_BASE_CODEX_HOME, home_default)
    if values["codex_home"].source.startswith("environment"):
        values["codex_home"] = Setting(default_base_codex_home(env), values["codex_home"].source)
    pick("strategy", (strategy, "--strategy"), ENV_STRATEGY, Strategy.HEADROOM.value)
    if values["strategy"].source.startswith("environment"):
        _strategy(values["strategy"].value, f"${ENV_STRATEGY}")
    pick("utc", (True if utc else None, "--utc"), None, default=False)
    for key in POLICY_KEYS:
        pick(key, None, None, None)
    pick("backend", None, ENV_BACKEND, None)
    if values["backend"].source.startswith("environment"):
        _backend(values["backend"].value, f"${ENV_BACKEND}")
    pick("pool_name", None, None, "default")
    pick("credential_key_file", None, ENV_KEY_FILE, None)
    if values["credential_key_file"].source.startswith("environment"):
        values["credential_key_file"] = Setting(
            Path(values["credential_key_file"].value).expanduser(),
            values["credential_key_file"].source,
        )
    return Settings(file=file, file_found=found, values=values)
