"""Shell completion of the reference CLI, run by a real bash and a real zsh."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from codex_supervisor_cli import completion
from codex_supervisor_cli.cli import build_parser

from codex_supervisor import AccountPool
from codex_supervisor.testing import FakeCodexBackend

CLI = Path(__file__).resolve().parents[1] / "examples" / "cli.py"


def _script(tmp_path: Path, shell: str) -> Path:
    result = subprocess.run(
        [sys.executable, str(CLI), "completion", shell],
        env={"PATH": "/usr/bin:/bin", "HOME": str(tmp_path)},
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    path = tmp_path / f"completion.{shell}"
    path.write_text(result.stdout)
    return path


@pytest.fixture
def shim(tmp_path: Path) -> Path:
    """A `codex-supervisor` command on PATH (the script asks it for account names)."""
    folder = tmp_path / "bin"
    folder.mkdir()
    command = folder / "codex-supervisor"
    command.write_text(f'#!/bin/sh\nexec {sys.executable} {CLI} "$@"\n')
    command.chmod(0o755)
    return folder


@pytest.fixture
def pool(tmp_path: Path, backend: FakeCodexBackend) -> Path:
    pool = AccountPool(root=tmp_path / "pool", base_codex_home=tmp_path / "codex-home")
    for name in ("alpha", "beta"):
        backend.add_account(f"id-{name}")
        pool.import_auth(name, backend.write_auth(tmp_path / f"login-{name}", f"id-{name}"))
    return pool.root


def _bash(tmp_path: Path, shim: Path, line: str) -> list[str]:
    """What bash offers for the last word of ``line`` (an empty last word after a space)."""
    words = line.split(" ")
    program = (
        f"source {_script(tmp_path, 'bash')}\n"
        f"COMP_WORDS=({' '.join(repr(w) for w in words)})\n"
        f"COMP_CWORD={len(words) - 1}\n"
        "_codex_supervisor\n"
        'printf "%s\\n" "${COMPREPLY[@]}"\n'
    )
    result = subprocess.run(
        ["bash", "--norc", "--noprofile", "-c", program],
        env={"PATH": f"{shim}:/usr/bin:/bin", "HOME": str(tmp_path)},
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return sorted(w for w in result.stdout.splitlines() if w)


def _zsh(tmp_path: Path, shim: Path, line: str) -> list[str]:
    """What zsh's completion function offers: compadd, _describe and _files stubbed to print."""
    zsh = shutil.which("zsh")
    assert zsh is not None, "zsh is missing: scripts/system-packages installs it"
    words = line.split(" ")
    program = (
        "compdef() { :; }\n"
        'compadd() { [[ $1 == -- ]] && shift; print -rl -- "$@"; }\n'
        '_files() { print -r -- "FILES $*"; }\n'
        '_describe() { print -rl -- "${(@P)4}"; }\n'
        f"source {_script(tmp_path, 'zsh')}\n"
        f"words=({' '.join(repr(w) for w in words)})\n"
        f"CURRENT={len(words)}\n"
        "_codex_supervisor\n"
    )
    result = subprocess.run(
        [zsh, "-f", "-c", program],
        env={"PATH": f"{shim}:/usr/bin:/bin", "HOME": str(tmp_path)},
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.stderr == "", result.stderr
    return sorted(w for w in result.stdout.splitlines() if w)


def test_bash_completes_commands_options_values_and_account_names(
    tmp_path: Path, shim: Path, pool: Path
) -> None:
    (tmp_path / "notes.txt").write_text("x")
    (tmp_path / "somedir").mkdir()
    assert _bash(tmp_path, shim, "codex-supervisor ") == sorted(
        ["accounts", "status", "run", "demo", "config", "completion"]
    )
    assert _bash(tmp_path, shim, "codex-supervisor acc") == ["accounts"]
    assert _bash(tmp_path, shim, "codex-supervisor accounts ") == sorted(
        ["login", "import", "list", "remove", "unblock", "unhold"]
    )
    assert _bash(tmp_path, shim, "codex-supervisor --po") == ["--pool"]
    assert _bash(tmp_path, shim, "codex-supervisor status --w") == ["--watch"]
    assert _bash(tmp_path, shim, "codex-supervisor status --strategy ") == [
        "drain",
        "headroom",
        "soonest_reset",
    ]
    assert _bash(tmp_path, shim, "codex-supervisor --pool so") == ["somedir"]  # folders only
    assert _bash(tmp_path, shim, "codex-supervisor completion ") == ["bash", "zsh"]
    # Account names, from the pool the line names (after a value-taking option).
    line = f"codex-supervisor --pool {pool} --utc accounts remove "
    assert _bash(tmp_path, shim, line) == ["alpha", "beta"]
    assert _bash(tmp_path, shim, f"codex-supervisor --pool {pool} accounts unblock b") == ["beta"]
    # After `run`'s own options, the words are Codex's: files.
    assert _bash(tmp_path, shim, "codex-supervisor run --no-wait -- exec no") == ["notes.txt"]
    assert _bash(tmp_path, shim, "codex-supervisor run --no") == ["--no-title", "--no-wait"]


def test_zsh_completes_with_descriptions_values_and_account_names(
    tmp_path: Path, shim: Path, pool: Path
) -> None:
    commands = _zsh(tmp_path, shim, "codex-supervisor ")
    assert "accounts:add, list and remove accounts" in commands
    assert len(commands) == 6
    options = _zsh(tmp_path, shim, "codex-supervisor status --")
    assert any(o.startswith("--watch:keep the view up to date until Ctrl-C") for o in options)
    assert _zsh(tmp_path, shim, "codex-supervisor run --strategy ") == [
        "drain",
        "headroom",
        "soonest_reset",
    ]
    assert _zsh(tmp_path, shim, "codex-supervisor --codex-home ") == ["FILES -/"]
    assert _zsh(tmp_path, shim, f"codex-supervisor --pool {pool} accounts remove ") == [
        "alpha",
        "beta",
    ]
    assert _zsh(tmp_path, shim, "codex-supervisor run -- exec ") == ["FILES "]
    assert _zsh(tmp_path, shim, "codex-supervisor completion ") == ["bash", "zsh"]


def test_every_option_and_command_of_the_parser_is_in_both_scripts() -> None:
    """Generated, not written by hand: what the parser has, the scripts complete."""
    parser = build_parser()
    scripts = {
        "bash": completion.bash(parser, "codex-supervisor"),
        "zsh": completion.zsh(parser, "codex-supervisor"),
    }
    levels = list(completion._levels(parser))
    assert {level.path for level in levels} >= {"", "accounts remove", "status", "config show"}
    for shell, script in scripts.items():
        for level in levels:
            for option in level.options:
                for flag in option.flags:
                    assert flag in script, (shell, level.path, flag)
            for name, _ in level.commands:
                assert f'"{level.path}:{name}"' in script, (shell, level.path, name)


def test_the_pool_as_typed_quoted_with_a_tilde_or_with_an_equals_sign(
    tmp_path: Path, shim: Path, pool: Path
) -> None:
    home_relative = "~/" + str(pool.relative_to(tmp_path))  # HOME is tmp_path
    for typed in (f'"{pool}"', f"'{pool}'", home_relative):
        line = f"codex-supervisor --pool {typed} accounts remove "
        assert _bash(tmp_path, shim, line) == ["alpha", "beta"], typed
        assert _zsh(tmp_path, shim, line) == ["alpha", "beta"], typed
    # bash splits `--pool=DIR` at the `=`; zsh keeps one word.
    assert _bash(tmp_path, shim, f"codex-supervisor --pool = {pool} accounts remove ") == [
        "alpha",
        "beta",
    ]
    assert _zsh(tmp_path, shim, f"codex-supervisor --pool={pool} accounts remove ") == [
        "alpha",
        "beta",
    ]


def test_bash_keeps_a_file_name_with_spaces_whole(tmp_path: Path, shim: Path) -> None:
    (tmp_path / "my auth.json").write_text("{}")
    line = "codex-supervisor accounts import x --auth-json my"
    assert _bash(tmp_path, shim, line) == ["my auth.json"]


def test_zsh_descriptions_have_no_empty_default() -> None:
    script = completion.zsh(build_parser(), "codex-supervisor")
    assert "(default: )" not in script
    assert "(default: %(default)s)" not in script
