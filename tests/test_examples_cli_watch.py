"""The live view of `status --watch`: what a terminal shows, and what a log gets."""

from __future__ import annotations

import io
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pyte
from codex_supervisor_cli.watch import LiveScreen

from codex_supervisor import AccountPool
from codex_supervisor.testing import FakeCodexBackend

CLI = Path(__file__).resolve().parents[1] / "examples" / "cli.py"


class Tty:
    """A terminal of ``rows`` x ``columns`` fed by a LiveScreen, rendered by pyte."""

    def __init__(self, rows: int = 10, columns: int = 40) -> None:
        self.size = (rows, columns)
        self.out = io.StringIO()
        self.live = LiveScreen(self.out, tty=True, size=lambda: self.size)

    def rows(self) -> list[str]:
        rows, columns = self.size
        screen = pyte.Screen(columns, rows)
        pyte.Stream(screen).feed(self.out.getvalue())
        return [line.rstrip() for line in screen.display]


def test_a_terminal_shows_the_frame_and_rewrites_only_the_rows_that_changed() -> None:
    tty = Tty()
    tty.live.draw(["alpha 10%", "beta 20%", "gamma 30%"], header="at 10:00:00")
    assert tty.rows()[:5] == ["at 10:00:00", "", "alpha 10%", "beta 20%", "gamma 30%"]
    assert tty.out.getvalue().startswith("\033[?1049h")  # the alternate screen
    tty.live.draw(["alpha 10%", "beta 25%", "gamma 30%"], header="at 10:00:02")
    assert tty.live.rewritten == 2  # the header and beta's row
    assert tty.rows()[:5] == ["at 10:00:02", "", "alpha 10%", "beta 25%", "gamma 30%"]
    tty.live.draw(["alpha 10%"], header="at 10:00:02")  # shorter: old rows cleared
    assert tty.live.rewritten == 2
    assert tty.rows()[:5] == ["at 10:00:02", "", "alpha 10%", "", ""]
    tty.live.draw(["alpha 10%"], header="at 10:00:02")
    assert tty.live.rewritten == 0


def test_long_lines_are_cut_and_a_tall_frame_says_what_did_not_fit() -> None:
    tty = Tty(rows=4, columns=12)
    tty.live.draw(["x" * 30, "b", "c", "d", "e", "f"])
    assert tty.rows() == ["x" * 11, "b", "c", "... 3 more"]  # (cut, never wrapped)


def test_a_resize_redraws_everything_at_the_new_size() -> None:
    tty = Tty(rows=5, columns=20)
    tty.live.draw(["one", "two"])
    tty.size = (6, 30)
    tty.live.draw(["one", "two"])
    assert tty.live.rewritten == 2
    assert tty.out.getvalue().count("\033[2J") == 2
    assert tty.rows()[:2] == ["one", "two"]


def test_close_gives_the_screen_back_with_the_last_frame_on_it() -> None:
    tty = Tty()
    tty.live.draw(["first"])
    tty.live.draw(["last"], header="h")
    tty.live.close()
    assert tty.out.getvalue().endswith("\033[?25h\033[?1049l" + "h\n\nlast\n")
    tty.live.close()  # once
    assert tty.out.getvalue().count("\033[?1049l") == 1


def test_elsewhere_a_frame_is_printed_whole_and_only_when_it_changed() -> None:
    out = io.StringIO()
    live = LiveScreen(out, tty=False)
    live.draw(["alpha 10%"], header="at 10:00:00")
    live.draw(["alpha 10%"], header="at 10:00:02")  # the same state: nothing
    live.draw(["alpha 12%"], header="at 10:00:04")
    live.close()
    assert out.getvalue() == "at 10:00:00\n\nalpha 10%\n\nat 10:00:04\n\nalpha 12%\n"
    assert "\033" not in out.getvalue()


def _cli(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(CLI), "--pool", str(tmp_path / "pool"), *args],
        env={"PATH": "/usr/bin:/bin", "HOME": str(tmp_path)},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_watch_refuses_json_and_bad_numbers_with_exit_2(tmp_path: Path) -> None:
    refused = _cli(tmp_path, "status", "--watch", "--json")
    assert refused.returncode == 2
    assert refused.stderr.startswith("codex-supervisor: error: --watch draws text;")
    for bad in (["--interval", "0"], ["--interval", "soon"], ["--count", "-1"]):
        result = _cli(tmp_path, "status", "--watch", *bad)
        assert result.returncode == 2
        assert "Traceback" not in result.stderr
        assert "error: argument" in result.stderr


def test_watch_without_a_terminal_prints_plain_views_and_stops_after_count(tmp_path: Path) -> None:
    result = _cli(tmp_path, "status", "--watch", "--count", "3", "--interval", "0.1")
    assert result.returncode == 0, result.stderr
    assert "\033" not in result.stdout
    # Three views of the same (empty) pool: printed once.
    assert result.stdout.count("no accounts in") == 1
    assert result.stdout.startswith(f"codex-supervisor status: {tmp_path / 'pool'}, ")


def test_wide_and_control_characters_never_make_a_row_wrap() -> None:
    tty = Tty(rows=4, columns=12)
    tty.live.draw(["名前名前名前名前", "a\x1b]0;x\x07b", "ok"])
    rows = tty.rows()
    assert rows[0] == "名前名前名"  # 10 cells of 11: the next wide character would not fit
    assert rows[1] == "a?]0;x?b"  # an escape sequence is shown, never run
    assert rows[2] == "ok"


def _pool_with(tmp_path: Path, backend: FakeCodexBackend, **accounts: dict[str, Any]) -> Path:
    pool = AccountPool(root=tmp_path / "pool", base_codex_home=backend.write_codex_home(
        tmp_path / "codex-home"))  # fmt: skip
    for name, quota in accounts.items():
        backend.add_account(f"id-{name}", **quota)
        pool.import_auth(name, backend.write_auth(tmp_path / f"login-{name}", f"id-{name}"))
    return pool.root


def test_a_failed_probe_stays_shown_until_the_next_probe(
    tmp_path: Path, backend: FakeCodexBackend
) -> None:
    """Refused once: every later view still says so (a log gets that view once)."""
    pool = _pool_with(tmp_path, backend, alpha={"access_token_expired": True})
    result = subprocess.run(
        [sys.executable, str(CLI), "--pool", str(pool), "--codex-home",
         str(tmp_path / "codex-home"), "status", "--watch", "--count", "4", "--interval", "0.1",
         "--refresh-every", "60"],
        env={"PATH": "/usr/bin:/bin", "HOME": str(tmp_path)},
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert result.stdout.count("refresh failed: QuotaAuthExpired") == 1
    assert result.stdout.count("codex-supervisor status: ") == 1  # no view without it
    usage = [r for r in backend.requests if "usage" in r.path]
    assert len(usage) == 1  # probed once in the period, failure or not


def test_sigterm_ends_the_watch_with_143(tmp_path: Path) -> None:
    proc = subprocess.Popen(
        [sys.executable, str(CLI), "--pool", str(tmp_path / "pool"), "status", "--watch",
         "--interval", "0.1"],
        env={"PATH": "/usr/bin:/bin", "HOME": str(tmp_path)},
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert proc.stdout is not None
    assert proc.stdout.readline().startswith("codex-supervisor status: ")
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 143
    assert "Traceback" not in err


def test_live_options_go_with_watch(tmp_path: Path) -> None:
    for option in (["--count", "2"], ["--interval", "1"], ["--refresh-every", "0"]):
        result = _cli(tmp_path, "status", *option)
        assert result.returncode == 2
        assert result.stderr == (
            f"codex-supervisor: error: {option[0]} goes with --watch "
            f"(status --watch {option[0]} ...)\n"
        )
