"""Configuration from the environment, read in this one place.

The library reads these variables (and no others):

``CODEX_SUPERVISOR_HOME``
    The pool folder (default ``~/.codex-supervisor``).
``CODEX_HOME``
    The user's base Codex home (default ``~/.codex``), whose config, prompts,
    skills and sessions every account home links to.

Every child the library starts gets :func:`child_environment`: the caller's
environment minus every variable that could carry one of the library's
secrets, plus ``CODEX_HOME`` set to the account home.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

__all__ = [
    "ENV_BASE_CODEX_HOME",
    "ENV_POOL_HOME",
    "child_environment",
    "default_base_codex_home",
    "default_pool_root",
]

ENV_POOL_HOME = "CODEX_SUPERVISOR_HOME"
ENV_BASE_CODEX_HOME = "CODEX_HOME"

# Variables a child must never inherit: ours may carry secrets and configure a
# supervisor, which a child has no business seeing. CODEX_HOME is replaced by
# the account home. The user's own provider variables are left alone: they
# belong to the user's config, not to an account of the pool.
_DROPPED_PREFIXES = ("CODEX_SUPERVISOR_",)
_DROPPED_NAMES = frozenset({"CODEX_HOME"})


def _env(environ: Mapping[str, str] | None) -> Mapping[str, str]:
    return os.environ if environ is None else environ


def _home_dir(environ: Mapping[str, str]) -> Path:
    home = environ.get("HOME")
    return Path(home) if home else Path.home()


def default_pool_root(environ: Mapping[str, str] | None = None) -> Path:
    """``$CODEX_SUPERVISOR_HOME`` or ``~/.codex-supervisor``."""
    env = _env(environ)
    value = env.get(ENV_POOL_HOME)
    return Path(value).expanduser() if value else _home_dir(env) / ".codex-supervisor"


def default_base_codex_home(environ: Mapping[str, str] | None = None) -> Path:
    """``$CODEX_HOME`` or ``~/.codex``, as Codex itself resolves it."""
    env = _env(environ)
    value = env.get(ENV_BASE_CODEX_HOME)
    return Path(value).expanduser() if value else _home_dir(env) / ".codex"


def child_environment(codex_home: Path, environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment for a Codex child running in ``codex_home``."""
    env = {
        key: value
        for key, value in _env(environ).items()
        if key not in _DROPPED_NAMES and not key.startswith(_DROPPED_PREFIXES)
    }
    env[ENV_BASE_CODEX_HOME] = str(codex_home)
    return env
