"""The lease benchmark runs with tiny parameters and prints its figures (no timing asserted)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"


def test_bench_lease_prints_its_figures() -> None:
    """bench_lease.py reports uncontended and contended lease figures as JSON lines."""
    result = subprocess.run(
        [
            sys.executable,
            str(BENCHMARKS / "bench_lease.py"),
            "--iterations",
            "10",
            "--seconds",
            "0.3",
            "--processes",
            "2",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    figures = {f["benchmark"]: f for f in map(json.loads, result.stdout.splitlines())}
    assert set(figures["lease_uncontended"]) >= {
        "iterations",
        "acquire_release_per_s",
        "p50_ms",
        "p99_ms",
    }
    assert set(figures["lease_context_uncontended"]) >= {"iterations", "blocks_per_s"}
    assert set(figures["lease_contended"]) >= {
        "processes",
        "seconds",
        "acquisitions_per_s",
        "longest_wait_ms",
        "min_per_process",
        "max_per_process",
    }
    assert figures["lease_contended"]["processes"] == 2
    assert "peak_rss_mib" in figures["benchmark_process"]
