"""The reference CLI's demo runs the real Codex against the fake backend."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.real_codex

CLI = Path(__file__).resolve().parents[2] / "examples" / "cli.py"


def test_demo_completes_a_real_turn_per_account(codex_bin: Path, tmp_path: Path) -> None:
    """`cli.py demo` exits 0 and reports each account's reply, rollout and quota."""
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(tmp_path)}
    result = subprocess.run(
        [sys.executable, str(CLI), "demo", "--codex", str(codex_bin)],
        capture_output=True,
        text=True,
        timeout=180,
        env=env,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    assert out.count("exit code 0") == 2
    assert re.search(r"primary five-hour 40\.0% used, secondary weekly 65\.0% used", out)
    assert re.search(r"primary weekly 12\.0% used, secondary -", out)
    assert len(re.findall(r"rollout: sessions/\d{4}/\d{2}/\d{2}/rollout-", out)) == 2
    assert "requests served: 2" in out


def test_demo_reports_a_missing_binary(tmp_path: Path) -> None:
    """A missing Codex binary is a clear message and exit 2, not a traceback."""
    result = subprocess.run(
        [sys.executable, str(CLI), "demo", "--codex", str(tmp_path / "nope")],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 2
    assert "codex binary not found" in result.stdout
    assert "Traceback" not in result.stderr
