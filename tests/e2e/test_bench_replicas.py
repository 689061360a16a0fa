"""The replicas benchmark runs and prints its figures (no timing asserted)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.real_codex

BENCH = Path(__file__).resolve().parents[2] / "benchmarks" / "bench_replicas.py"


def test_bench_replicas_prints_its_figures_and_never_spawns_twice(codex_bin: Path) -> None:
    """Archives to S3 after 1 and 10 turns, double spawns under SIGKILLs (0), takeovers."""
    result = subprocess.run(
        [sys.executable, str(BENCH), "--codex", str(codex_bin), "--turns", "10",
         "--repeats", "2", "--processes", "3", "--seconds", "3", "--kills", "2",
         "--takeovers", "2", "--ttl", "1"],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    figures = [json.loads(line) for line in result.stdout.splitlines()]
    archives = {f["turns"]: f for f in figures if f["benchmark"] == "replica_archive"}
    assert sorted(archives) == [1, 10]
    assert 0 < archives[1]["archive_bytes"] < archives[10]["archive_bytes"]
    assert archives[10]["home_bytes"] > archives[10]["archive_bytes"]
    for figure in archives.values():
        assert figure["upload"]["median_ms"] > 0
        assert figure["restore"]["median_ms"] > 0
    spawns = {f["backend"]: f for f in figures if f["benchmark"] == "replica_double_spawns"}
    assert sorted(spawns) == ["file", "redis"]
    for figure in spawns.values():
        assert figure["double_spawns"] == 0, figure
        assert figure["spawns_by_survivors"] > 0
        assert figure["kills"] == 2
    takeovers = {f["backend"]: f for f in figures if f["benchmark"] == "replica_takeover"}
    assert sorted(takeovers) == ["file", "redis"]
    for figure in takeovers.values():
        assert figure["takeovers"] == 2
        assert figure["kill_to_ready"]["median_ms"] > 0
