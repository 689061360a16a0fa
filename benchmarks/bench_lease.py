"""How fast are leases? Uncontended acquire/release, and processes contending for one lease.

Prints one JSON line per figure. Local files only (a temporary folder); every
worker process stops on its own after ``--seconds`` and is killed if it overruns.

    python benchmarks/bench_lease.py [--iterations N] [--seconds S] [--processes P]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from codex_supervisor.lease import FileLeaseBackend, LeaseMode, acquire_lease


def _emit(name: str, **figures: object) -> None:
    print(json.dumps({"benchmark": name, **figures}), flush=True)


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def bench_uncontended(iterations: int) -> None:
    """try_acquire + release on one backend, and a whole acquire_lease block, back to back."""

    async def run(root: Path) -> tuple[list[float], float]:
        backend = FileLeaseBackend(root)
        samples = []
        for _ in range(iterations):
            started = time.perf_counter()
            record = await backend.try_acquire(
                "bench", owner="bench", mode=LeaseMode.EXCLUSIVE, ttl=30.0
            )
            assert record is not None
            await backend.release(record)
            samples.append((time.perf_counter() - started) * 1000)
        started = time.perf_counter()
        for _ in range(iterations):
            async with acquire_lease(backend, "bench-context", ttl=30.0):
                pass
        return samples, time.perf_counter() - started

    with tempfile.TemporaryDirectory() as tmp:
        samples, context_elapsed = asyncio.run(run(Path(tmp)))
    _emit(
        "lease_uncontended",
        iterations=iterations,
        acquire_release_per_s=round(iterations / (sum(samples) / 1000), 1),
        p50_ms=round(statistics.median(samples), 3),
        p99_ms=round(_percentile(samples, 0.99), 3),
    )
    _emit(
        "lease_context_uncontended",
        iterations=iterations,
        blocks_per_s=round(iterations / context_elapsed, 1),
    )


async def _worker(root: Path, start_at: float, seconds: float, poll: float) -> dict[str, float]:
    backend = FileLeaseBackend(root)
    # A common start time, so no worker gets the lease to itself while the others import.
    await asyncio.sleep(max(0.0, start_at - time.monotonic()))
    stop_at = start_at + seconds
    acquisitions, max_wait = 0, 0.0
    while time.monotonic() < stop_at:
        started = time.monotonic()
        async with acquire_lease(backend, "contended", ttl=10.0, timeout=seconds + 30, poll=poll):
            max_wait = max(max_wait, time.monotonic() - started)
            acquisitions += 1
        # Yield once so this process does not re-take the lease before others poll.
        await asyncio.sleep(0)
    return {"acquisitions": acquisitions, "max_wait_ms": max_wait * 1000}


def bench_contended(processes: int, seconds: float, poll: float) -> None:
    """``processes`` processes take one exclusive lease in a loop for ``seconds``."""
    with tempfile.TemporaryDirectory() as tmp:
        start_at = time.monotonic() + 1.0 + 0.2 * processes  # time to start and import
        argv = [sys.executable, __file__, "--worker", tmp, str(start_at), str(seconds), str(poll)]
        procs = [
            subprocess.Popen(argv, stdout=subprocess.PIPE, text=True) for _ in range(processes)
        ]
        results = []
        try:
            for proc in procs:
                out, _ = proc.communicate(timeout=seconds + 60)
                if proc.returncode != 0:
                    raise RuntimeError(f"worker exited with {proc.returncode}")
                results.append(json.loads(out))
        finally:
            for proc in procs:
                if proc.poll() is None:
                    proc.kill()
                    proc.wait()
    counts = [int(r["acquisitions"]) for r in results]
    _emit(
        "lease_contended",
        processes=processes,
        seconds=seconds,
        poll_ms=poll * 1000,
        acquisitions_per_s=round(sum(counts) / seconds, 1),
        longest_wait_ms=round(max(r["max_wait_ms"] for r in results), 1),
        min_per_process=min(counts),
        max_per_process=max(counts),
    )


def main() -> None:
    if len(sys.argv) == 6 and sys.argv[1] == "--worker":
        root, start_at, seconds, poll = sys.argv[2:]
        result = asyncio.run(_worker(Path(root), float(start_at), float(seconds), float(poll)))
        print(json.dumps(result), flush=True)
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iterations", type=int, default=500)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--processes", type=int, default=4)
    parser.add_argument("--poll", type=float, default=0.005, help="seconds between attempts")
    args = parser.parse_args()
    bench_uncontended(args.iterations)
    bench_contended(args.processes, args.seconds, args.poll)
    peak_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    _emit("benchmark_process", peak_rss_mib=round(peak_kib / 1024, 1))


if __name__ == "__main__":
    main()
