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


@pytest.mark.timeout(300)
def test_bench_chaos_quick_holds_every_invariant(codex_bin: Path) -> None:
    """bench_chaos.py --quick: no double holder or replay, clean exits, every waiter settled."""
    result = subprocess.run(
        [sys.executable, str(BENCHMARKS / "bench_chaos.py"), "--quick", "--codex", str(codex_bin)],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    figures = {f.get("case", f["benchmark"]): f for f in lines}
    seed = figures["setup"]["seed"]  # a failure reproduces with --seed
    lease = figures["lease_sigkill"]
    assert lease["kills"] > 0, seed
    assert lease["holder_kills"] > 0, seed
    assert lease["double_holders"] == 0, (seed, lease)
    assert lease["unrecovered"] == 0, (seed, lease)
    rotations = figures["refresh_rotations"]
    assert rotations["rotations"] == rotations["runs"] > 0, (seed, rotations)
    assert rotations["refreshes"] == rotations["forced_refreshes"] == 2 * rotations["runs"]
    assert rotations["replays"] == 0, (seed, rotations)
    assert rotations["other_sessions"] == 0, (seed, rotations)
    exits = figures["exit_paths"]
    assert len(exits["paths"]) == 14
    assert exits["clean_percent"] == 100.0, (seed, exits["problems"])
    assert exits["exit_codes_right"] == exits["runs"], (seed, exits["problems"])
    appserver = figures["appserver_sigkill"]
    assert appserver["waiters"] > 0
    assert appserver["settled_percent"] == 100.0, (seed, appserver)
    broker = figures["broker"]
    assert broker["settled_percent"] == 100.0, (seed, broker)
    assert broker["exit_codes_right_percent"] == 100.0, (seed, broker)
    assert broker["files_left"] == broker["upstreams_left"] == 0, (seed, broker)


def test_bench_cli_watch_prints_its_figures() -> None:
    """bench_cli_watch.py reports the cost of a view and the bytes a redraw sends."""
    result = subprocess.run(
        [sys.executable, str(BENCHMARKS / "bench_cli_watch.py"), "--runs", "3", "--sizes", "2"],
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    figures = {f["benchmark"]: f for f in map(json.loads, result.stdout.splitlines())}
    assert figures["watch_view"]["median_ms"] > 0
    assert figures["status_view"]["lines"] == figures["watch_view"]["lines"] > 0
    redraw = figures["watch_redraw"]
    assert redraw["clock_only_rows"] == 1  # only the header's clock moved
    assert 0 < redraw["one_account_rows"] < redraw["full_frame_rows"]


def test_bench_redis_prints_its_figures() -> None:
    """bench_redis.py: lease latencies on a real redis-server and on files, SIGKILL chaos on
    two sites (no double holder), 100 handoffs with forced refreshes (no replay)."""
    result = subprocess.run(
        [sys.executable, str(BENCHMARKS / "bench_redis.py"), "--ops", "20",
         "--processes", "4", "--kills", "3", "--ttl", "1", "--handoffs", "100"],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    figures = [json.loads(line) for line in result.stdout.splitlines()]
    latencies = [f for f in figures if f["benchmark"] in ("redis_lease", "file_lease")]
    seen = {(f["benchmark"], f["op"]) for f in latencies}
    assert seen == {
        (backend, op)
        for backend in ("redis_lease", "file_lease")
        for op in ("acquire", "renew", "release")
    }
    assert all(0 < f["p50_ms"] <= f["p99_ms"] <= f["max_ms"] for f in latencies)
    chaos = {f["mode"]: f for f in figures if f["benchmark"] == "redis_sigkill"}
    assert set(chaos) == {"exclusive", "shared"}
    for case in chaos.values():
        assert case["kills"] == 3
        assert case["double_holders"] == 0
        assert case["recovery"] is not None
    [handoffs] = [f for f in figures if f["benchmark"] == "redis_handoffs"]
    assert handoffs["handoffs"] == 100
    assert handoffs["refreshes"] == 100  # one forced refresh per handoff, each accepted
    assert handoffs["replays"] == 0
