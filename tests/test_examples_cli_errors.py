"""The reference CLI's version line and its end when the reader of its output goes away."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from codex_supervisor import __version__

CLI = Path(__file__).resolve().parents[1] / "examples" / "cli.py"


def _env(tmp_path: Path) -> dict[str, str]:
    return {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "LANG": "C.UTF-8"}


def test_version_names_the_cli_the_library_and_how_to_get_codex(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, str(CLI), "--codex", str(tmp_path / "nope"), "--version"],
        env=_env(tmp_path),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0
    cli, library, codex = done.stdout.splitlines()
    assert cli == "codex-supervisor not installed (run from the source tree)"
    assert library == f"codex_supervisor {__version__}"
    assert codex.startswith("codex not found (")
    assert "npm install -g @openai/codex" in codex
    assert "--codex BIN" in codex


def _into_closed_pipe(tmp_path: Path, *args: str, timeout: float = 60) -> tuple[int, bytes]:
    """Run the CLI whose stdout's reader is gone before a byte is written: (exit code, stderr)."""
    proc = subprocess.Popen(
        [sys.executable, str(CLI), *args],
        env=_env(tmp_path),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert proc.stdout is not None
    assert proc.stderr is not None
    proc.stdout.close()
    err = proc.stderr.read()
    proc.stderr.close()
    return proc.wait(timeout=timeout), err


def test_a_reader_that_goes_away_ends_the_cli_quietly_with_141(tmp_path: Path) -> None:
    """`status --json | head -c0`: no traceback, no "Broken pipe" error, SIGPIPE's code."""
    code, err = _into_closed_pipe(tmp_path, "--pool", str(tmp_path / "pool"), "status", "--json")
    assert (code, err) == (141, b"")


def _cli(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    where = ["--pool", str(tmp_path / "pool"), "--codex-home", str(tmp_path / "home")]
    return subprocess.run(
        [sys.executable, str(CLI), *where, *args],
        env=_env(tmp_path),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_a_global_option_after_the_command_gets_a_hint(tmp_path: Path) -> None:
    done = _cli(tmp_path, "status", "--pool", str(tmp_path))
    assert done.returncode == 2
    assert "unrecognized arguments: --pool" in done.stderr
    assert "hint: global options (--pool) come before the command" in done.stderr


def test_a_codex_option_before_the_separator_gets_a_hint(tmp_path: Path) -> None:
    done = _cli(tmp_path, "run", "-m", "fake-model", "exec", "hi")
    assert done.returncode == 2
    assert "hint: options for Codex go after `--`, e.g. `codex-supervisor run -- -m" in done.stderr


def test_a_run_option_after_codex_s_argv_is_caught_not_passed_on(tmp_path: Path) -> None:
    done = _cli(tmp_path, "run", "exec", "hi", "--no-wait")
    assert done.returncode == 2
    assert done.stderr == (
        "codex-supervisor: error: --no-wait after the Codex command line would go to Codex; "
        "put it before it: `codex-supervisor run --no-wait ... -- CODEX ARGS`; "
        "or write `run -- ...` to give Codex every word as it is\n"
    )


def test_help_explains_remove_and_every_strategy(tmp_path: Path) -> None:
    remove = " ".join(_cli(tmp_path, "accounts", "remove", "--help").stdout.split())
    assert "set aside in the pool, never deleted" in remove
    run = " ".join(_cli(tmp_path, "run", "--help").stdout.split())
    for strategy in ("headroom (", "drain (", "soonest_reset ("):
        assert strategy in run


def test_demo_into_a_closed_pipe_ends_quietly(tmp_path: Path) -> None:
    """`demo | head -c0`: the demo's threads and event sink write too; no traceback, 141."""
    code, err = _into_closed_pipe(tmp_path, "demo", timeout=120)
    assert code == 141
    assert b"Traceback" not in err
    assert b"event sink failed" not in err


def test_a_closed_stdout_is_no_traceback(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, str(CLI), "--pool", str(tmp_path / "p"), "accounts", "list"],
        env=_env(tmp_path),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        timeout=60,
        check=False,
        close_fds=True,
        pass_fds=(),
        preexec_fn=lambda: os.close(1),
    )
    assert "Traceback" not in done.stderr


@pytest.mark.parametrize("kind", ["folder", "not-executable"])
def test_login_with_a_codex_that_cannot_run_says_how_to_get_one(tmp_path: Path, kind: str) -> None:
    codex = tmp_path / "bin"
    if kind == "folder":
        codex.mkdir()
    else:
        codex.write_text("#!/bin/sh\n")
    done = _cli(tmp_path, "--codex", str(codex), "accounts", "login", "a")
    assert done.returncode == 127, done.stderr
    assert "npm install -g @openai/codex" in done.stderr


def test_codex_s_own_separator_lets_any_word_through(tmp_path: Path) -> None:
    """`run exec -- --no-wait`: after Codex's `--` the words are a prompt, not our options."""
    done = _cli(tmp_path, "run", "exec", "--", "--no-wait")
    assert "would go to Codex" not in done.stderr
    misplaced = _cli(tmp_path, "run", "exec", "hi", "--pool", "x")
    assert "`codex-supervisor --pool ... run ...` (global options before the command)" in (
        misplaced.stderr
    )
    assert "or write `run -- ...` to give Codex every word as it is" in misplaced.stderr


def test_the_hint_follows_the_command_given(tmp_path: Path) -> None:
    done = _cli(tmp_path, "accounts", "list", "--verbose", "--bogus")
    assert "e.g. `codex-supervisor --verbose ... accounts ...`" in done.stderr
    other = _cli(tmp_path, "accounts", "login", "run", "--bogus")
    assert "options for Codex" not in other.stderr


def test_a_current_folder_that_is_gone_is_named_not_an_errno(tmp_path: Path) -> None:
    gone = tmp_path / "gone"
    gone.mkdir()
    # The folder goes away under the process, as under a shell whose folder was removed.
    remove_then_run = "import os, sys; os.rmdir(sys.argv[1]); os.execv(sys.argv[2], sys.argv[3:])"
    proc = subprocess.Popen(
        [sys.executable, "-c", remove_then_run,
         str(gone), sys.executable, sys.executable, str(CLI), "--pool", str(tmp_path / "p"),
         "status"],
        cwd=gone, env=_env(tmp_path), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 1
    assert err == (
        "codex-supervisor: error: the current folder is gone or cannot be read "
        "(No such file or directory); cd to another one\n"
    )
