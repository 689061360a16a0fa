"""Benchmark scripts run and print their figures as JSON lines (no timing asserted)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.real_codex

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"


def test_bench_test_world_prints_its_figures(codex_bin: Path) -> None:
    """bench_test_world.py reports backend latency, throughput and a real exec turn."""
    result = subprocess.run(
        [
            sys.executable,
            str(BENCHMARKS / "bench_test_world.py"),
            "--codex",
            str(codex_bin),
            "--requests",
            "5",
            "--turns",
            "1",
        ],
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    figures = {f["benchmark"]: f for f in map(json.loads, result.stdout.splitlines())}
    assert figures["fake_backend_responses_sequential"]["p50_ms"] > 0
    assert figures["fake_backend_responses_parallel8"]["requests_per_s"] > 0
    assert figures["real_codex_exec_turn"]["new_session_median_s"] > 0
    assert figures["benchmark_process"]["peak_rss_mib"] > 0
