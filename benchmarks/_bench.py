"""Helpers the benchmark scripts share: output, the pinned binary, quiet children, pools."""

from __future__ import annotations

import contextlib
import json
import os
import statistics
import sys
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

from codex_supervisor.accounts import AccountPool
from codex_supervisor.quota import UsageEndpointSource
from codex_supervisor.testing import FakeCodexBackend, offline_flags

#: The pinned real Codex binary, where scripts/fetch-codex puts it.
DEFAULT_CODEX = (
    Path(__file__).resolve().parents[1]
    / ".cache/codex/0.169.0/node_modules/@openai/codex-linux-x64"
    / "vendor/x86_64-unknown-linux-musl/bin/codex"
)


def emit(out: Any, name: str, **figures: object) -> None:
    """Print one JSON line of figures."""
    out.write(json.dumps({"benchmark": name, **figures}) + "\n")
    out.flush()


def ms(values: list[float]) -> dict[str, float]:
    """Median and maximum of seconds, in milliseconds."""
    return {
        "median_ms": round(statistics.median(values) * 1000, 1),
        "max_ms": round(max(values) * 1000, 1),
    }


@contextlib.contextmanager
def quiet_stdio(log: Path) -> Iterator[None]:
    """Give in-process children /dev/null as stdin and a log file as stdout/stderr.

    An in-process Supervisor's children inherit fds 0-2: Codex exec must not
    wait on our stdin, and its answer must not mix with the JSON lines.
    """
    sys.stdout.flush()
    sys.stderr.flush()
    saved = [os.dup(fd) for fd in (0, 1, 2)]
    devnull = os.open(os.devnull, os.O_RDONLY)
    sink = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    try:
        os.dup2(devnull, 0)
        os.dup2(sink, 1)
        os.dup2(sink, 2)
        yield
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        for fd, copy in zip((0, 1, 2), saved, strict=True):
            os.dup2(copy, fd)
            os.close(copy)
        os.close(devnull)
        os.close(sink)


def exec_argv(*rest: str) -> list[str]:
    """``codex exec`` offline, outside a git repository, with ``rest``."""
    return ["exec", "--skip-git-repo-check", *offline_flags(), *rest]


def account_pool(
    backend: FakeCodexBackend, root: Path, accounts: Mapping[str, Mapping[str, Any]]
) -> tuple[AccountPool, dict[str, str]]:
    """A pool under ``root`` of accounts on ``backend`` (name -> ``add_account`` options).

    Each account's backend id is ``<root name>-<name>``, so pools under
    different folders never share an account; returns the pool and the ids.
    """
    base = backend.write_codex_home(root / "codex-home")
    pool = AccountPool(root=root / "pool", base_codex_home=base)
    ids = {}
    for name, options in accounts.items():
        ids[name] = f"{root.name}-{name}"
        backend.add_account(ids[name], **options)
        pool.import_auth(name, backend.write_auth(root / f"login-{name}", ids[name]))
    return pool, ids


async def warm_up(pool: AccountPool, names: Iterable[str]) -> None:
    """Probe the usage endpoint now (it spends no quota) and keep the snapshots in the pool."""
    source = UsageEndpointSource(pool.usage_credentials)
    try:
        for name in names:
            pool.record_snapshot(await source.fetch(name))
    finally:
        await source.aclose()
