"""The session benchmarks run and print their figures (no timing asserted)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"


def _run(script: str, *args: str) -> list[dict[str, object]]:
    result = subprocess.run(
        [sys.executable, str(BENCHMARKS / script), *args],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    return [json.loads(line) for line in result.stdout.splitlines()]


def test_bench_binding_reports_cost_per_history_size() -> None:
    """bench_binding.py prints a line per history size and the large/small ratio."""
    lines = _run("bench_binding.py", "--sizes", "200,600", "--repeat", "2")
    sizes = [line["history_files"] for line in lines if line["benchmark"] == "session_binding"]
    assert sizes == [200, 600]
    [ratio] = [line for line in lines if line["benchmark"] == "session_binding_ratio"]
    assert ratio["sizes"] == [200, 600]
    for line in lines[:2]:
        counts = line["bind_new_counts"]
        assert isinstance(counts, dict)
        assert counts["entries_listed"] == 1  # only today's folder, holding the new rollout


def test_bench_rollout_tail_reports_throughput() -> None:
    """bench_rollout_tail.py reads the same records whole and in appended pieces."""
    [line] = _run("bench_rollout_tail.py", "--megabytes", "2")
    assert line["benchmark"] == "rollout_tail"
    assert isinstance(line["records"], int)
    assert line["records"] > 0
    for key in ("plain_lines_mb_s", "json_every_line_mb_s", "reader_full_mb_s"):
        assert isinstance(line[key], float)
