"""The turn-settle benchmark runs and prints its figures (no timing asserted)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.real_codex

BENCH = Path(__file__).resolve().parents[2] / "benchmarks" / "bench_turn_settle.py"


def test_bench_turn_settle_prints_its_figures(codex_bin: Path) -> None:
    """bench_turn_settle.py settles killed turns and measures the client per message."""
    result = subprocess.run(
        [sys.executable, str(BENCH), "--codex", str(codex_bin), "--runs", "2", "--messages", "500"],
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    figures = {f["benchmark"]: f for f in map(json.loads, result.stdout.splitlines())}
    assert figures["turn_settle_after_death"]["runs"] == 2
    assert figures["turn_settle_after_death"]["max_ms"] > 0
    assert figures["client_per_message"]["messages"] == 500
    assert "transport closed" not in result.stderr  # expected deaths are not shouted about
