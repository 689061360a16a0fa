"""The quota single-flight benchmark runs and reports its figures (no timing asserted)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

BENCHMARK = Path(__file__).resolve().parents[2] / "benchmarks" / "bench_quota_singleflight.py"


def test_bench_quota_singleflight_prints_its_figures() -> None:
    """A tiny run prints both bursts; each costs one usage request per account."""
    result = subprocess.run(
        [sys.executable, str(BENCHMARK), "--gets", "30", "--accounts", "3"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    figures = {f["benchmark"]: f for f in map(json.loads, result.stdout.splitlines())}
    keys = {"gets", "accounts", "http_requests", "client_requests", "p50_ms", "p99_ms", "wall_ms"}
    one = figures["quota_singleflight_one_account"]
    many = figures["quota_singleflight_many_accounts"]
    assert keys <= one.keys()
    assert keys <= many.keys()
    assert one["http_requests"] == 1
    assert one["accounts"] == 1
    assert many["http_requests"] == 3
    assert many["gets"] == 30
    assert figures["benchmark_process"]["peak_rss_mib"] > 0
