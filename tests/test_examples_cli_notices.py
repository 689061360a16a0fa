"""The reference CLI's notices during a run: the terminal title and the rotation line."""

from __future__ import annotations

import io
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

from codex_supervisor_cli import cli

from codex_supervisor import AccountPool
from codex_supervisor.events import AccountSelected, Rotating
from codex_supervisor.testing import FakeCodexBackend, PtyProcess, hermetic_env

CLI = Path(__file__).resolve().parents[1] / "examples" / "cli.py"

NOW = datetime(2026, 11, 30, 16, 30, tzinfo=UTC)


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def _rotating() -> Rotating:
    return Rotating(
        at=NOW,
        from_account="alpha",
        to_account="beta",
        session_id="s-1",
        reason="alpha ran low",
        immediate=False,
    )


def test_on_a_terminal_the_title_names_the_account_and_is_given_back() -> None:
    cli._ZONE["utc"] = True
    try:
        out = Terminal()
        notices = cli._Notices(0, out, title=True)
        notices(AccountSelected(at=NOW, account="alpha", reason="first"))
        assert out.getvalue() == "\033[22;0t\033]0;codex-supervisor: alpha\007"
        out.truncate(0)
        out.seek(0)
        notices(_rotating())
        at = cli._clock_time(NOW, datetime.now(UTC))  # (with the date unless it is today)
        assert at.endswith("16:30 UTC")
        assert out.getvalue() == (
            f"\033]0;codex-supervisor: beta (from alpha at {at})\007"
            "\r\ncodex-supervisor: rotating alpha -> beta (alpha ran low); session s-1\n"
        )
        out.truncate(0)
        out.seek(0)
        notices(AccountSelected(at=NOW, account="beta", reason="resumed"))  # after a rotation
        assert out.getvalue() == ""
        notices.close()
        assert out.getvalue() == "\033]0;\007\033[23;0t"
        notices.close()  # once
        assert out.getvalue() == "\033]0;\007\033[23;0t"
    finally:
        cli._ZONE["utc"] = False


def test_no_title_without_a_terminal_or_when_not_asked() -> None:
    for out, title in ((io.StringIO(), True), (Terminal(), False)):
        notices = cli._Notices(0, out, title=title)
        notices(AccountSelected(at=NOW, account="alpha", reason="first"))
        notices.close()
        assert "\033]" not in out.getvalue()
    plain = io.StringIO()
    cli._Notices(0, plain, title=True)(_rotating())
    assert plain.getvalue() == (
        "codex-supervisor: rotating alpha -> beta (alpha ran low); session s-1\n"
    )


def test_a_command_line_that_sets_the_title_itself_is_left_alone() -> None:
    assert cli._sets_title(["-c", 'tui.terminal_title=["project-name"]', "hi"])
    assert cli._sets_title(["--config=tui.terminal_title=[]"])
    assert not cli._sets_title(["-c", "model=o3", "hi"])
    assert cli._title_flags() == ["-c", "tui.terminal_title=[]"]


def test_codex_keeps_its_own_title_unless_ours_is_shown(
    tmp_path: Path, backend: FakeCodexBackend
) -> None:
    """`-c tui.terminal_title=[]` goes to Codex only when the title will be set: an
    interactive run whose stderr is a terminal, without --no-title."""
    base = backend.write_codex_home(tmp_path / "codex-home")
    pool = AccountPool(root=tmp_path / "pool", base_codex_home=base)
    backend.add_account("id-alpha")
    pool.import_auth("alpha", backend.write_auth(tmp_path / "login-alpha", "id-alpha"))
    argv_file = tmp_path / "argv"
    codex = tmp_path / "codex"
    codex.write_text(
        "#!/bin/sh\n"
        'if [ "$1" = --version ]; then echo "codex-cli 0.169.0"; exit 0; fi\n'
        f'printf "%s\\n" "$@" >> {argv_file}\n'
        "echo --- >> " + str(argv_file) + "\n"
    )
    codex.chmod(0o755)
    env = dict(hermetic_env(base, tmp_path, backend), TERM="xterm-256color")
    cli_argv = [sys.executable, str(CLI), "--pool", str(pool.root), "--codex-home", str(base),
                "--codex", str(codex), "run"]  # fmt: skip

    def codex_argv(*, terminal: bool, extra: tuple[str, ...] = ()) -> list[str]:
        argv_file.unlink(missing_ok=True)
        if terminal:
            with PtyProcess([*cli_argv, *extra, "--", "hello"], env=env, cwd=tmp_path) as tui:
                tui.wait(timeout=60)
        else:
            subprocess.run(
                [*cli_argv, *extra, "--", "hello"], env=env, cwd=tmp_path, stdin=subprocess.DEVNULL,
                capture_output=True, timeout=60, check=False,
            )  # fmt: skip
        return argv_file.read_text().split("---\n")[0].splitlines()

    assert "tui.terminal_title=[]" in codex_argv(terminal=True)
    assert "tui.terminal_title=[]" not in codex_argv(terminal=False)
    assert "tui.terminal_title=[]" not in codex_argv(terminal=True, extra=("--no-title",))


def test_text_others_wrote_is_shown_without_its_control_characters() -> None:
    """A lease's purpose is printed by `status`: an escape sequence in it is never run."""
    assert cli._dash("codex exec in /w\x1b]0;owned\x07\nnext") == "codex exec in /w?]0;owned??next"
    assert cli._dash(None) == "-"
