"""`pip install ./examples` in a fresh virtual environment gives a working `codex-supervisor`."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from codex_supervisor import __version__
from codex_supervisor.testing import FakeCodexBackend, hermetic_env, offline_flags

REPO = Path(__file__).resolve().parents[2]
WHEELHOUSE = REPO / ".cache" / "wheelhouse"


def test_pip_install_examples_puts_a_working_command_on_path(
    tmp_path: Path, codex_bin: Path, codex_version: str, backend: FakeCodexBackend
) -> None:
    if not (WHEELHOUSE / ".complete").is_file():
        pytest.fail(f"no wheels in {WHEELHOUSE}: run scripts/bootstrap dev", pytrace=False)
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    env = {
        "PATH": f"{venv / 'bin'}:/usr/bin:/bin",
        "HOME": str(tmp_path),
        "LANG": "C.UTF-8",
        # Offline: the wheels scripts/bootstrap gathered, and the source tree.
        "PIP_NO_INDEX": "1",
        "PIP_FIND_LINKS": str(WHEELHOUSE),
        "PIP_DISABLE_PIP_VERSION_CHECK": "1",
        "PIP_CONFIG_FILE": os.devnull,
    }
    install = subprocess.run(
        [str(venv / "bin" / "pip"), "install", "--quiet", str(REPO / "examples")],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert install.returncode == 0, install.stderr[-3000:]
    command = venv / "bin" / "codex-supervisor"
    assert command.is_file()

    def run(
        *args: str, real: bool = True, world: dict[str, str] | None = None
    ) -> subprocess.CompletedProcess[str]:
        where = ["--pool", str(tmp_path / "pool"), "--codex-home", str(tmp_path / "codex-home")]
        if real:
            where += ["--codex", str(codex_bin)]
        return subprocess.run(
            ["codex-supervisor", *where, *args],
            env=env if world is None else {**world, "PATH": env["PATH"]},
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )

    version = run("--version")
    assert version.returncode == 0, version.stderr
    assert version.stdout.splitlines() == [
        "codex-supervisor 0.1.0.dev0",
        f"codex_supervisor {__version__}",
        f"codex {codex_version} ({codex_bin})",
    ]
    listed = run("accounts", "list")
    assert (listed.returncode, listed.stderr) == (0, "")
    status = run("status", "--json")
    assert (status.returncode, status.stderr) == (0, "")
    watched = run("status", "--watch", "--count", "2", "--interval", "0.1")
    assert (watched.returncode, watched.stderr) == (0, "")
    assert watched.stdout.startswith(f"codex-supervisor status: {tmp_path / 'pool'}, ")
    shown = run("config", "show")
    assert shown.returncode == 0, shown.stderr
    assert ["codex", str(codex_bin)] in [line.split()[:2] for line in shown.stdout.splitlines()]
    completion = run("completion", "bash", real=False)
    assert completion.returncode == 0, completion.stderr
    assert "complete -F _codex_supervisor codex-supervisor" in completion.stdout
    empty = run("run", "--", "exec", "hello")
    assert empty.returncode == 2
    assert "has no accounts; add one first" in empty.stderr
    # A real account on the local fake backend: a supervised exec with the real binary.
    base = backend.write_codex_home(tmp_path / "codex-home")
    backend.add_account("id-alpha", five_hour_used=20)
    world = hermetic_env(base, tmp_path, backend)
    login = backend.write_auth(tmp_path / "login-alpha", "id-alpha")
    imported = run("accounts", "import", "alpha", "--auth-json", str(login))
    assert imported.returncode == 0, imported.stderr
    work = tmp_path / "work"
    work.mkdir()
    done = run(
        "run", "--", "exec", "--skip-git-repo-check", *offline_flags(), "-C", str(work), "hello",
        world=world,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    assert "Hello from the fake backend." in done.stdout
    assert "codex-supervisor: session " in done.stderr
    assert [r.account_id for r in backend.responses_requests()] == ["id-alpha"]
    seen = run("status", "--watch", "--count", "1", "--refresh-every", "0", world=world)
    assert seen.returncode == 0, seen.stderr
    assert "alpha (id-alpha@example.test" in seen.stdout
    assert "  occupancy: idle" in seen.stdout
    demo = run("demo", real=False)  # the bundled simulator and fake backend
    assert demo.returncode == 0, demo.stdout[-2000:] + demo.stderr[-2000:]
    assert "rotations: 1" in demo.stdout
