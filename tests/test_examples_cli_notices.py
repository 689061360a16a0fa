"""The reference CLI's notices during a run: the terminal title and the rotation line."""

from __future__ import annotations

import io
from datetime import UTC, datetime

from codex_supervisor_cli import cli

from codex_supervisor.events import AccountSelected, Rotating

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
