"""What a user of the reference CLI sees: the real Codex TUI rendered by a terminal emulator.

The CLI runs the real TUI under a pseudo-terminal; ``pyte`` renders the bytes
as a terminal would (screen, scrollback, title), so the assertions are about
what is on the user's screen, not about bytes that a repaint may hide.
"""

from __future__ import annotations

import contextlib
import re
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pyte
import pytest

from codex_supervisor import AccountPool
from codex_supervisor.testing import (
    Behaviour,
    FakeCodexBackend,
    PtyProcess,
    hermetic_env,
    offline_flags,
)

pytestmark = [pytest.mark.real_codex]

CLI = Path(__file__).resolve().parents[2] / "examples" / "cli.py"
ROWS, COLS = 50, 120


#: The kitty keyboard protocol's sequences, which pyte would print as text;
#: a terminal without the protocol ignores them.
_KITTY_KEYBOARD = re.compile(rb"\x1b\[[<>=?][0-9;]*u")


def _render(raw: bytes, columns: int = COLS) -> pyte.Screen:
    screen = pyte.Screen(columns, ROWS)
    pyte.ByteStream(screen).feed(_KITTY_KEYBOARD.sub(b"", raw))
    return screen


def _cursor(raw: bytes) -> tuple[int, int]:
    """Where a terminal's cursor is after ``raw`` (1-based): the TUI's answer to CSI 6 n."""
    cursor = _render(raw).cursor
    return cursor.y + 1, cursor.x + 1


class Terminal:
    """The CLI's pty output rendered: the visible rows and the title."""

    def __init__(self, tui: PtyProcess, columns: int = COLS) -> None:
        self.tui = tui
        self.columns = columns

    def render(self) -> pyte.Screen:
        return _render(self.tui.raw_output, self.columns)

    def rows(self) -> list[str]:
        return [line.rstrip() for line in self.render().display]

    def title(self) -> str:
        return str(self.render().title)

    def wait(self, predicate: Callable[[], bool], what: str, timeout: float = 90) -> None:
        deadline = time.monotonic() + timeout
        while not predicate():
            assert time.monotonic() < deadline, f"timed out waiting for {what}:\n" + "\n".join(
                self.rows()
            )
            time.sleep(0.1)


def test_a_rotation_is_on_the_screen_and_in_the_title_while_the_resumed_tui_runs(
    tmp_path: Path, tls_backend: FakeCodexBackend, codex_bin: Path
) -> None:
    """The notice line stays above the resumed TUI, the title names the new account,
    and after Codex exits the summary says how to go on supervised."""
    backend = tls_backend
    base = backend.write_codex_home(tmp_path / "codex-home")
    pool = AccountPool(root=tmp_path / "pool", base_codex_home=base)
    # Turn 1 and the TUI's title request take alpha to 90 %, turn 2 to 95 %:
    # past its mark, so the session moves to beta once turn 2 ends.
    for name, quota in (
        ("alpha", {"five_hour_used": 80, "per_request_percent": 5}),
        ("beta", {"five_hour_used": 10, "per_request_percent": 1}),
    ):
        backend.add_account(f"id-{name}", **quota)  # type: ignore[arg-type]
        pool.import_auth(name, backend.write_auth(tmp_path / f"login-{name}", f"id-{name}"))
    work = tmp_path / "work"
    work.mkdir()
    env = dict(hermetic_env(base, tmp_path, backend), TERM="xterm-256color")
    argv = [
        sys.executable,
        str(CLI),
        "--pool",
        str(pool.root),
        "--codex-home",
        str(base),
        "--codex",
        str(codex_bin),
        "run",
        "--strategy",
        "drain",
        "--",
        "--no-alt-screen",
        *offline_flags(),
        "first prompt",
    ]
    with PtyProcess(argv, env=env, cwd=work, rows=ROWS, cols=COLS, cursor_position=_cursor) as tui:
        term = Terminal(tui)
        term.wait(lambda: term.title() == "codex-supervisor: alpha", "the title on alpha")
        term.wait(
            lambda: any("first prompt" in r.input_texts for r in backend.responses_requests()),
            "the first turn",
        )
        tui.submit("second prompt", received=lambda: backend.received("second prompt"))
        notice = re.compile(r"^codex-supervisor: rotating alpha -> beta \(")
        term.wait(lambda: any(notice.match(row) for row in term.rows()), "the notice")
        # The resumed TUI answers on beta, and the notice is still on the screen.
        tui.submit("third prompt", received=lambda: backend.received("third prompt"))
        third = next(r for r in backend.responses_requests() if "third prompt" in r.input_texts)
        assert third.account_id == "id-beta"
        term.wait(
            lambda: sum("Hello from the fake backend." in row for row in term.rows()) >= 3,
            "the third answer on the screen",
        )
        rows = term.rows()
        [at] = [i for i, row in enumerate(rows) if notice.match(row)]
        assert any("third prompt" in row for row in rows[at:])  # the resumed TUI is below it
        title = term.title()
        assert re.fullmatch(r"codex-supervisor: beta \(from alpha at \d\d:\d\d \S+\)", title), title
        # Codex was told to leave the title alone: every title set is ours.
        titles = re.findall(rb"\x1b\][012];([^\x07\x1b]*)", tui.raw_output)
        assert titles
        assert all(t.startswith(b"codex-supervisor: ") for t in titles), titles
        # Ctrl-C as a user types it (twice: Codex asks for a second one to quit).
        deadline = time.monotonic() + 60
        while tui.proc.poll() is None:
            assert time.monotonic() < deadline, "\n".join(term.rows())
            tui.write(b"\x03")
            with contextlib.suppress(subprocess.TimeoutExpired):
                tui.proc.wait(timeout=1)
        code = tui.wait(timeout=10)
    assert code in (0, 130), tui.text[-3000:]
    assert tui.cursor_errors == []
    session = third.session_id
    rows = term.rows()
    summary = f"codex-supervisor: session {session} ran on alpha, beta; 1 rotation"
    assert summary in rows, "\n".join(rows)
    again = f"codex-supervisor: to go on supervised: codex-supervisor run -- resume {session}"
    assert again in rows
    assert term.title() == ""  # the title given back (pyte has no title stack)


def test_status_watch_shows_which_session_runs_where_reads_quota_free_and_ends_on_ctrl_c(
    tmp_path: Path, backend: FakeCodexBackend, codex_bin: Path
) -> None:
    """`status --watch` in a terminal while a supervised exec runs: the session on its
    account, the other idle, fresh quota from the usage endpoint only; Ctrl-C ends it
    with exit 0 and leaves the last view on the screen."""
    base = backend.write_codex_home(tmp_path / "codex-home")
    pool = AccountPool(root=tmp_path / "pool", base_codex_home=base)
    for name, used in (("alpha", 30), ("beta", 10)):
        backend.add_account(f"id-{name}", five_hour_used=used)
        pool.import_auth(name, backend.write_auth(tmp_path / f"login-{name}", f"id-{name}"))
    backend.script(Behaviour.stall(), account_id="id-alpha")  # a turn that goes on
    work = tmp_path / "work"
    work.mkdir()
    env = dict(hermetic_env(base, tmp_path, backend), TERM="xterm-256color")
    where = ["--pool", str(pool.root), "--codex-home", str(base)]
    run = subprocess.Popen(
        [sys.executable, str(CLI), *where, "--codex", str(codex_bin), "run", "--strategy",
         "drain", "--", "exec", "--skip-git-repo-check", *offline_flags(), "a long task"],
        env=env, cwd=work, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        argv = [sys.executable, str(CLI), *where, "status", "--watch", "--interval", "0.3"]
        argv += ["--refresh-every", "1"]
        with PtyProcess(argv, env=env, rows=ROWS, cols=220, cursor_position=_cursor) as watch:
            term = Terminal(watch, columns=220)
            term.wait(lambda: bool(backend.responses_requests()), "the exec's turn")
            session = backend.responses_requests()[0].session_id
            running = re.compile(
                rf"  occupancy: pid \d+ on \S+, codex exec in {re.escape(str(work))}, "
                rf"session {session}, since "
            )
            term.wait(lambda: any(running.match(r) for r in term.rows()), "the session shown")
            rows = term.rows()
            assert rows[0].startswith(f"codex-supervisor status: {pool.root}, ")
            beta = rows.index(next(r for r in rows if r.startswith("beta ")))
            assert "  occupancy: idle" in rows[beta:]
            # Quota read for free: the usage endpoint, again and again; no model request.
            term.wait(
                lambda: (
                    sum("usage" in r.path for r in backend.requests if r.account_id == "id-beta")
                    >= 2
                ),
                "beta's quota read twice",
            )
            backend.release_stalls()  # (the turn fails; the run ends either way)
            run.wait(timeout=90)
            term.wait(
                lambda: sum(r == "  occupancy: idle" for r in term.rows()) == 2,
                "both idle once the run ended",
            )
            watch.write(b"\x03")  # Ctrl-C
            code = watch.wait(timeout=30)
        assert code == 0
        # The user's own screen again (pyte has no alternate screen: render what came
        # after leaving it), with the last view printed on it.
        after = watch.raw_output.rsplit(b"\x1b[?1049l", 1)[1]
        rows = [line.rstrip() for line in _render(after, 220).display]
        assert rows[0].startswith(f"codex-supervisor status: {pool.root}, ")
        assert sum(r == "  occupancy: idle" for r in rows) == 2
        assert watch.raw_output.count(b"\x1b[?1049h") == watch.raw_output.count(b"\x1b[?1049l") == 1
        # Every model request was the run's, on alpha: the view spent no quota.
        assert {r.account_id for r in backend.responses_requests()} == {"id-alpha"}
    finally:
        if run.poll() is None:
            run.kill()
            run.wait()


def test_a_wait_counts_down_on_one_line_in_place(
    tmp_path: Path, backend: FakeCodexBackend, codex_bin: Path
) -> None:
    """Every account blocked: the countdown rewrites one line of the screen; Ctrl-C: 130."""
    base = backend.write_codex_home(tmp_path / "codex-home")
    pool = AccountPool(root=tmp_path / "pool", base_codex_home=base)
    backend.add_account("id-alpha", five_hour_used=100)
    backend.set_quota("id-alpha", five_hour_resets_at=int(time.time()) + 600)
    pool.import_auth("alpha", backend.write_auth(tmp_path / "login-alpha", "id-alpha"))
    work = tmp_path / "work"
    work.mkdir()
    env = dict(hermetic_env(base, tmp_path, backend), TERM="xterm-256color")
    argv = [
        sys.executable, str(CLI), "--pool", str(pool.root), "--codex-home", str(base),
        "--codex", str(codex_bin), "run", "--", "exec", "--skip-git-repo-check", "waits",
    ]  # fmt: skip
    with PtyProcess(argv, env=env, cwd=work, rows=ROWS, cols=COLS, cursor_position=_cursor) as tui:
        term = Terminal(tui)
        term.wait(
            lambda: tui.raw_output.count(b"every account is blocked") >= 3,
            "three ticks of the countdown",
        )
        rows = [r for r in term.rows() if "every account is blocked" in r]
        assert len(rows) == 1, term.rows()
        assert re.fullmatch(
            r"codex-supervisor: every account is blocked; waiting (9m|10m)( \d+s)?, "
            r"until \d\d:\d\d:\d\d \S+ \(Ctrl-C to stop\)",
            rows[0],
        ), rows[0]
        tui.write(b"\x03")
        assert tui.wait(timeout=30) == 130
    assert backend.responses_requests() == []
