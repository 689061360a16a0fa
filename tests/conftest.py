"""Shared fixtures: the real Codex binary, fake backends and hermetic homes."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from hypothesis import settings

from codex_supervisor.codex_cli import TESTED_CODEX_VERSIONS, CodexVersion
from codex_supervisor.sessions import ENV_NO_PROC
from codex_supervisor.testing import FakeCodexBackend, RedisServer, S3Server, hermetic_env

REPO = Path(__file__).resolve().parent.parent
#: The version the suite runs against unless CODEX_SUPERVISOR_TEST_CODEX_BIN
#: names another binary: the oldest tested one (scripts/fetch-codex's default).
PINNED_CODEX_VERSION = TESTED_CODEX_VERSIONS[0]
#: Set (to 1) to run against a binary of a version that is not tested yet:
#: scripts/new-codex-version does, to show a new release's drift.
UNTESTED_OK_ENV = "CODEX_SUPERVISOR_TEST_UNTESTED_CODEX"
_DEFAULT_BIN = (
    REPO
    / ".cache/codex"
    / PINNED_CODEX_VERSION
    / "node_modules/@openai/codex-linux-x64/vendor/x86_64-unknown-linux-musl/bin/codex"
)


# Every property test draws the same examples on every run, without a local
# example database and without per-example deadlines: CI must be deterministic,
# on a loaded machine too. Files choose their own example counts.
settings.register_profile("deterministic", derandomize=True, database=None, deadline=None)
settings.load_profile("deterministic")


@pytest.fixture(scope="session")
def anyio_backend() -> str:
    """Async tests run on asyncio only (the library is asyncio-based)."""
    return "asyncio"


@pytest.fixture(scope="session")
def codex_bin() -> Path:
    """The real Codex CLI binary of a tested version; a missing binary fails, never skips.

    By default the first of TESTED_CODEX_VERSIONS; CODEX_SUPERVISOR_TEST_CODEX_BIN
    names another (scripts/test runs the real-binary tests once per tested version).
    """
    override = os.environ.get("CODEX_SUPERVISOR_TEST_CODEX_BIN")
    path = Path(override) if override else _DEFAULT_BIN
    if not (path.is_file() and os.access(path, os.X_OK)):
        pytest.fail(
            f"the real Codex CLI binary is missing at {path}: run scripts/fetch-codex "
            "(the README's test command does) or set CODEX_SUPERVISOR_TEST_CODEX_BIN",
            pytrace=False,
        )
    out = subprocess.run(
        [str(path), "--version"], capture_output=True, text=True, timeout=30, check=False
    ).stdout.strip()
    version = out.removeprefix("codex-cli ")
    if version not in TESTED_CODEX_VERSIONS and not os.environ.get(UNTESTED_OK_ENV):
        pytest.fail(
            f"{path} is {out!r}, not one of the tested versions {', '.join(TESTED_CODEX_VERSIONS)}"
            " (codex_supervisor.codex_cli.TESTED_CODEX_VERSIONS). To try a new release run"
            f" scripts/new-codex-version VERSION, or set {UNTESTED_OK_ENV}=1.",
            pytrace=False,
        )
    return path


@pytest.fixture(scope="session")
def codex_version(codex_bin: Path) -> str:
    """The version of :func:`codex_bin`, e.g. ``"0.171.0"``."""
    out = subprocess.run(
        [str(codex_bin), "--version"], capture_output=True, text=True, timeout=30, check=True
    ).stdout
    return str(CodexVersion.parse(out))


@pytest.fixture
def backend() -> Iterator[FakeCodexBackend]:
    """A plain-HTTP fake backend, stopped after the test."""
    with FakeCodexBackend() as b:
        yield b


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    """A real redis-server on 127.0.0.1 for the session; tests keep apart by key prefix.

    A missing redis-server fails (scripts/system-packages installs it), never skips.
    """
    with RedisServer() as server:
        yield server


@pytest.fixture(scope="session")
def s3_server() -> Iterator[S3Server]:
    """An S3-compatible server (moto's) on 127.0.0.1 for the session; tests use own buckets."""
    with S3Server() as server:
        yield server


@pytest.fixture
def tls_backend() -> Iterator[FakeCodexBackend]:
    """An HTTPS fake backend with a throwaway CA (for the interactive TUI)."""
    with FakeCodexBackend(tls=True) as b:
        yield b


class CodexWorld:
    """Hermetic folders for one test: a HOME, CODEX_HOMEs and a work folder."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.home = root / "home"
        self.work = root / "work"
        self.home.mkdir()
        self.work.mkdir()

    def codex_home(self, name: str = "codex-home") -> Path:
        """A fresh CODEX_HOME folder (0700) under the test's root."""
        path = self.root / name
        path.mkdir(mode=0o700, exist_ok=True)
        return path

    def env(
        self, codex_home: Path, backend: FakeCodexBackend | None, **extra: str
    ) -> dict[str, str]:
        """The hermetic environment for one Codex run."""
        return hermetic_env(codex_home, self.home, backend, extra=extra)


@pytest.fixture
def world(tmp_path: Path) -> CodexWorld:
    """Hermetic folders for running Codex (or the simulator) in this test."""
    return CodexWorld(tmp_path)


@pytest.fixture
def run_codex(
    codex_bin: Path, world: CodexWorld
) -> Callable[..., subprocess.CompletedProcess[str]]:
    """Run the real Codex binary hermetically, stdin from /dev/null, bounded."""

    def run(
        args: list[str],
        *,
        codex_home: Path,
        backend: FakeCodexBackend | None,
        timeout: float = 60.0,
        cwd: Path | None = None,
        env: dict[str, str] | None = None,
    ) -> subprocess.CompletedProcess[str]:
        full_env = world.env(codex_home, backend)
        full_env.update(env or {})
        return subprocess.run(
            [str(codex_bin), *args],
            cwd=cwd or world.work,
            env=full_env,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )

    return run


@pytest.fixture(params=["proc", "no-proc"])
def proc_mode(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Each test that takes it runs twice: with /proc, and as on macOS without it.

    "no-proc" sets :data:`~codex_supervisor.sessions.ENV_NO_PROC` for this
    process (and so for a driver process started with its environment): the
    session code then reads nothing from /proc and only Codex's hooks tell
    which session a child writes.
    """
    if request.param == "no-proc":
        monkeypatch.setenv(ENV_NO_PROC, "1")
    else:
        monkeypatch.delenv(ENV_NO_PROC, raising=False)
    return str(request.param)
