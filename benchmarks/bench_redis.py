"""Lease operations against a real redis-server on 127.0.0.1, beside the file backend.

Prints one JSON line per figure: the latency of ``try_acquire``, ``renew`` and
``release`` (p50, p99 and max, in milliseconds, over ``--ops`` each) for
:class:`~codex_supervisor.lease_redis.RedisLeaseBackend` on loopback and for
:class:`~codex_supervisor.lease.FileLeaseBackend` in a temp folder. Goal for
Redis: at most 2 ms p50 for each.

    python benchmarks/bench_redis.py [--ops N]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from pathlib import Path

from _bench import emit

from codex_supervisor.lease import FileLeaseBackend, LeaseBackend, LeaseMode
from codex_supervisor.lease_redis import RedisLeaseBackend
from codex_supervisor.testing import RedisServer


def _figures(seconds: list[float]) -> dict[str, float]:
    ordered = sorted(seconds)
    p99 = ordered[min(len(ordered) - 1, round(0.99 * (len(ordered) - 1)))]
    return {
        "p50_ms": round(statistics.median(ordered) * 1000, 3),
        "p99_ms": round(p99 * 1000, 3),
        "max_ms": round(ordered[-1] * 1000, 3),
    }


async def _measure(backend: LeaseBackend, ops: int) -> dict[str, list[float]]:
    timings: dict[str, list[float]] = {"acquire": [], "renew": [], "release": []}
    for index in range(ops):
        name = f"bench-{index % 16}"
        started = time.perf_counter()
        record = await backend.try_acquire(name, owner=f"o{index}", mode=LeaseMode.EXCLUSIVE,
                                           ttl=30)  # fmt: skip
        timings["acquire"].append(time.perf_counter() - started)
        assert record is not None
        started = time.perf_counter()
        _, record = await backend.renew(record, 30)
        timings["renew"].append(time.perf_counter() - started)
        started = time.perf_counter()
        await backend.release(record)
        timings["release"].append(time.perf_counter() - started)
    return timings


async def _run(ops: int) -> None:
    with RedisServer() as server, tempfile.TemporaryDirectory() as tmp:
        redis = RedisLeaseBackend(server.url, prefix="bench:")
        await _measure(redis, 20)  # connect, load the scripts
        for op, seconds in (await _measure(redis, ops)).items():
            emit(sys.stdout, "redis_lease", op=op, ops=ops, **_figures(seconds))
        await redis.aclose()
        files = FileLeaseBackend(Path(tmp))
        for op, seconds in (await _measure(files, ops)).items():
            emit(sys.stdout, "file_lease", op=op, ops=ops, **_figures(seconds))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ops", type=int, default=1000)
    asyncio.run(_run(parser.parse_args().ops))


if __name__ == "__main__":
    main()
