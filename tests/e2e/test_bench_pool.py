"""The pool benchmark runs and prints its figures (no timing asserted)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.real_codex

BENCH = Path(__file__).resolve().parents[2] / "benchmarks" / "bench_pool.py"


def test_bench_pool_prints_its_figures(codex_bin: Path) -> None:
    """bench_pool.py measures hits, cold single-flight spawns and an idle sweep."""
    result = subprocess.run(
        [
            sys.executable,
            str(BENCH),
            "--codex",
            str(codex_bin),
            "--hits",
            "200",
            "--runs",
            "2",
            "--concurrency",
            "10",
            "--keys",
            "2",
            "--entries",
            "200",
        ],
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    figures = {f["benchmark"]: f for f in map(json.loads, result.stdout.splitlines())}
    assert figures["pool_ensure_hit"]["hits"] == 200
    assert figures["pool_cold_concurrent"]["spawns_per_run"] == [1]
    assert figures["pool_cold_keys"]["spawns"] == 2
    assert figures["pool_reaper_sweep"]["reaped"] == 100
    assert figures["pool_archive_cycle"]["archive_bytes"] > 0
