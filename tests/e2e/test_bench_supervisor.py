"""The supervisor benchmarks run on the simulator and print their figures (no timing asserted)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

from codex_supervisor.testing import install_simulator

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"


def _run(script: str, *args: str) -> dict[str, dict[str, Any]]:
    result = subprocess.run(
        [sys.executable, str(BENCHMARKS / script), *args],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=90,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return {f["benchmark"]: f for f in map(json.loads, result.stdout.splitlines())}


def test_bench_cutover_prints_both_modes_and_the_bare_resume(tmp_path: Path) -> None:
    """bench_cutover.py: cutover with and without pre-warm, and a bare exec resume start."""
    codex = install_simulator(tmp_path / "bin")
    figures = _run("bench_cutover.py", "--codex", str(codex), "--runs", "1")
    assert figures["cutover_setup"]["simulator"] is True
    for mode in ("cutover_prewarmed", "cutover_cold"):
        line = figures[mode]
        assert line["runs"] == 1
        for key in ("exited_to_resumed", "rotating_to_resumed", "spawn_to_first_request"):
            assert set(line[key]) == {"median_ms", "max_ms"}
        assert len(line["usage_requests"]) == 1
        assert len(line["successor_usage_requests"]) == 1
    # Pre-warmed: nothing to ask on the critical path; cold: the successor is probed there.
    assert figures["cutover_prewarmed"]["usage_requests"] == [0]
    assert figures["cutover_cold"]["successor_usage_requests"] == [1]
    assert set(figures["bare_exec_resume_start"]["spawn_to_first_request"]) == {
        "median_ms",
        "max_ms",
    }
    assert "peak_rss_mib" in figures["benchmark_process"]


def test_bench_overhead_reports_an_idle_session_without_model_requests(tmp_path: Path) -> None:
    """bench_overhead.py: one line of idle figures; no model request while idle; exit 143."""
    codex = install_simulator(tmp_path / "bin")
    figures = _run("bench_overhead.py", "--codex", str(codex), "--seconds", "3")
    assert list(figures) == ["supervisor_idle_overhead"]
    line = figures["supervisor_idle_overhead"]
    assert set(line) >= {
        "seconds",
        "cpu_s",
        "cpu_percent",
        "peak_rss_mib",
        "wakeups_per_s",
        "usage_requests",
        "usage_requests_per_hour",
        "idle_model_requests",
        "exit_code",
    }
    assert line["idle_model_requests"] == 0
    assert line["exit_code"] == 143
    assert line["peak_rss_mib"] > 0


def test_bench_follow_reports_both_modes() -> None:
    """bench_follow.py: a turn end written to the rollout is seen, woken and polled."""
    figures = _run("bench_follow.py", "--turns", "2")
    assert figures["hook_run"]["runs"] == 2
    assert set(figures["hook_run"]["hook_run"]) == {"median_ms", "max_ms"}
    for mode in ("follow_watch", "follow_poll"):
        line = figures[mode]
        assert line["turns"] == 2
        assert set(line["task_complete_to_seen"]) == {"median_ms", "max_ms"}
