"""Configuration from the environment, read in this one place.

The library reads these variables (and no others):

``CODEX_SUPERVISOR_HOME``
    The pool folder (default ``~/.codex-supervisor``).
``CODEX_HOME``
    The user's base Codex home (default ``~/.codex``), whose config, prompts,
    skills and sessions every account home links to.
``CODEX_SUPERVISOR_BACKEND``
    Where a pool shared by several machines keeps its leases, state and
    logins: a Redis URL (``redis://host:6379/0``); unset, the pool folder.
``CODEX_SUPERVISOR_CREDENTIAL_KEY``, ``CODEX_SUPERVISOR_CREDENTIAL_KEY_FILE``
    The key that seals the logins of such a pool (see :mod:`.credentials`).
``CODEX_CA_CERTIFICATE``, ``SSL_CERT_FILE``
    The PEM bundle Codex adds to the roots it trusts; the first one set (and
    not empty) wins, as in Codex. The usage probe trusts the same bundle.
``HTTPS_PROXY``, ``HTTP_PROXY``, ``ALL_PROXY``, ``NO_PROXY`` (either case)
    The proxies Codex's HTTP clients use; the usage probe uses them too.

Every child the library starts gets :func:`child_environment`: the caller's
environment minus every variable that could carry one of the library's
secrets, plus ``CODEX_HOME`` set to the account home.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

__all__ = [
    "ENV_BACKEND",
    "ENV_BASE_CODEX_HOME",
    "ENV_CA_CERTIFICATE",
    "ENV_POOL_HOME",
    "ENV_SSL_CERT_FILE",
    "ca_bundle",
    "child_environment",
    "default_backend",
    "default_base_codex_home",
    "default_pool_root",
    "proxy_environment",
]

ENV_POOL_HOME = "CODEX_SUPERVISOR_HOME"
ENV_BACKEND = "CODEX_SUPERVISOR_BACKEND"
ENV_BASE_CODEX_HOME = "CODEX_HOME"
ENV_CA_CERTIFICATE = "CODEX_CA_CERTIFICATE"
ENV_SSL_CERT_FILE = "SSL_CERT_FILE"

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


def default_backend(environ: Mapping[str, str] | None = None) -> str | None:
    """``$CODEX_SUPERVISOR_BACKEND`` (a Redis URL), or None: the pool folder."""
    return _env(environ).get(ENV_BACKEND) or None


def child_environment(codex_home: Path, environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment for a Codex child running in ``codex_home``."""
    env = {
        key: value
        for key, value in _env(environ).items()
        if key not in _DROPPED_NAMES and not key.startswith(_DROPPED_PREFIXES)
    }
    env[ENV_BASE_CODEX_HOME] = str(codex_home)
    return env


def ca_bundle(environ: Mapping[str, str] | None = None) -> tuple[str, Path] | None:
    """The CA bundle Codex trusts in ``environ``: ``(variable, path)``, or None.

    ``CODEX_CA_CERTIFICATE`` wins over ``SSL_CERT_FILE``; an empty value counts
    as unset (Codex does the same, so ``VAR=""`` never names the current folder).
    """
    env = _env(environ)
    for name in (ENV_CA_CERTIFICATE, ENV_SSL_CERT_FILE):
        value = env.get(name)
        if value:
            return name, Path(value)
    return None


def proxy_environment(environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """The proxy variables of ``environ``, keyed ``http``, ``https``, ``all``, ``no``.

    The lowercase spelling wins over the uppercase one, as in :mod:`urllib`
    (and so in httpx); empty values count as unset.
    """
    env = _env(environ)
    found: dict[str, str] = {}
    for scheme in ("http", "https", "all", "no"):
        name = f"{scheme}_proxy"
        value = env.get(name) or env.get(name.upper())
        if value:
            found[scheme] = value
    return found
