"""What the app-server pool costs: cache hits, cold spawns under contention, idle sweeps.

- ``pool_ensure_hit``: ``ensure`` on a key whose real ``codex app-server`` is
  already running (``--hits`` calls): p50/p99 in microseconds.
- ``pool_cold_concurrent``: ``--concurrency`` concurrent ``ensure`` calls on a
  cold key, ``--runs`` times: processes spawned per run and the time until
  every caller holds the ready handle (median/max, ms).
- ``pool_cold_keys``: ``--keys`` cold keys at once: spawns and time until all
  are ready.
- ``pool_archive_cycle``: a workspace after one turn: its shutdown (SIGTERM,
  archive, remove) and the next ``ensure`` (restore, spawn, ready), in ms, and
  the archive's size; the thread then resumes on the new server.
- ``pool_reaper_sweep``: an idle sweep over ``--entries`` running entries
  (fake processes, no I/O but the archives of the reaped ones), half of them
  idle: sweep time of a pass that reaps nothing and of one that reaps half,
  with the local home store and with a store that archives nothing.

One JSON line per figure; only 127.0.0.1 and local processes.

    python benchmarks/bench_pool.py [--codex PATH] [--hits 10000] [--runs 5]
        [--concurrency 50] [--keys 4] [--entries 10000]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import statistics
import sys
import tempfile
import time
from pathlib import Path

from codex_supervisor.appserver import AppServerClient, run_turn
from codex_supervisor.appserver.homestore import HomeStore, LocalDirHomeStore
from codex_supervisor.appserver.pool import (
    AppServerPool,
    ConfigBuilder,
    IdleReaper,
    Launched,
    LaunchRequest,
    PoolConfig,
    SpawnConfig,
    SpawnContext,
    launch_app_server,
)
from codex_supervisor.errors import HomeNotFound
from codex_supervisor.testing import (
    FakeAppServerLauncher,
    FakeCodexBackend,
    OffsetClock,
    codex_config,
    hermetic_env,
)

DEFAULT_CODEX = (
    Path(__file__).resolve().parents[1]
    / ".cache/codex/0.169.0/node_modules/@openai/codex-linux-x64"
    / "vendor/x86_64-unknown-linux-musl/bin/codex"
)


def _emit(figure: dict[str, object]) -> None:
    print(json.dumps(figure), flush=True)


def _pct(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


class _Counting:
    def __init__(self) -> None:
        self.spawns = 0

    async def __call__(self, request: LaunchRequest) -> Launched:
        self.spawns += 1
        return await launch_app_server(request)


async def real_figures(codex: Path, args: argparse.Namespace) -> None:
    with FakeCodexBackend() as backend, tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        (root / "home").mkdir()
        env = hermetic_env(root / "unused", root / "home", backend)

        def build(_: SpawnContext) -> SpawnConfig:
            # API-key mode: the bench measures the pool, not account selection.
            return SpawnConfig(
                config=codex_config(backend, auth="apikey"), env={"FAKE_CODEX_API_KEY": "sk-x"}
            )

        backend.add_account("bench", api_key="sk-x")
        counting = _Counting()
        config = PoolConfig(root=root / "pool", codex=str(codex), stop_grace=2.0)
        async with AppServerPool(config, launcher=counting, environ=env) as pool:
            await pool.ensure("hot", build)
            samples = []
            for _ in range(args.hits):
                started = time.perf_counter()
                await pool.ensure("hot", build)
                samples.append((time.perf_counter() - started) * 1e6)
            _emit(
                {
                    "benchmark": "pool_ensure_hit",
                    "hits": args.hits,
                    "p50_us": round(_pct(samples, 0.5), 2),
                    "p99_us": round(_pct(samples, 0.99), 2),
                }
            )
            await pool.shutdown("hot")
            await _archive_cycle(pool, build, root)

            ready_ms: list[float] = []
            spawns: list[int] = []
            for run in range(args.runs):
                before = counting.spawns
                started = time.perf_counter()
                await asyncio.gather(
                    *(pool.ensure(f"cold-{run}", build) for _ in range(args.concurrency))
                )
                ready_ms.append((time.perf_counter() - started) * 1e3)
                spawns.append(counting.spawns - before)
                await pool.shutdown(f"cold-{run}")
            _emit(
                {
                    "benchmark": "pool_cold_concurrent",
                    "runs": args.runs,
                    "concurrency": args.concurrency,
                    "spawns_per_run": sorted(set(spawns)),
                    "ready_median_ms": round(statistics.median(ready_ms), 1),
                    "ready_max_ms": round(max(ready_ms), 1),
                }
            )

            before = counting.spawns
            started = time.perf_counter()
            await asyncio.gather(
                *(pool.ensure(f"many-{k}", build) for k in range(args.keys) for _ in range(5))
            )
            elapsed = (time.perf_counter() - started) * 1e3
            _emit(
                {
                    "benchmark": "pool_cold_keys",
                    "keys": args.keys,
                    "callers_per_key": 5,
                    "spawns": counting.spawns - before,
                    "all_ready_ms": round(elapsed, 1),
                }
            )


async def _archive_cycle(pool: AppServerPool, build: ConfigBuilder, root: Path) -> None:
    """A workspace with one finished turn: shut down (stop + archive), then restore + spawn."""
    handle = await pool.ensure("cycle", build)
    client = await AppServerClient.connect_ws(handle.ws_url)
    async with client:
        thread = await client.thread_start({"cwd": str(root)})
        result = await run_turn(client, thread.id, "hello", stall_timeout=30)
    assert result.ok, result
    before = set((root / "pool" / "archives").rglob("*.tar.gz"))
    started = time.perf_counter()
    await pool.shutdown("cycle")
    shutdown_ms = (time.perf_counter() - started) * 1e3
    [archive] = set((root / "pool" / "archives").rglob("*.tar.gz")) - before
    archive_bytes = archive.stat().st_size
    started = time.perf_counter()
    restored = await pool.ensure("cycle", build)
    ensure_ms = (time.perf_counter() - started) * 1e3
    client = await AppServerClient.connect_ws(restored.ws_url)
    async with client:
        await client.thread_resume(thread.id)
    await pool.shutdown("cycle")
    _emit(
        {
            "benchmark": "pool_archive_cycle",
            "archive_bytes": archive_bytes,
            "shutdown_with_archive_ms": round(shutdown_ms, 1),
            "ensure_with_restore_ms": round(ensure_ms, 1),
        }
    )


class _NullStore:
    """Archives nothing: isolates the pool's own cost from the store's."""

    async def put(self, key: str, source: Path, *, version: int) -> None:
        del key, source, version

    async def get(self, key: str, dest: Path) -> int:
        del dest
        raise HomeNotFound(key)

    async def delete(self, key: str) -> None:
        raise HomeNotFound(key)

    async def version(self, key: str) -> int | None:
        del key
        return None


async def _sweeps(entries: int, root: Path, store: HomeStore) -> tuple[float, float, int]:
    """(ms of a sweep reaping nothing, ms of one reaping half, entries reaped)."""
    clock = OffsetClock()
    config = PoolConfig(root=root, store=store, shutdown_parallelism=16)
    pool = AppServerPool(config, launcher=FakeAppServerLauncher(), clock=clock, environ={})
    build = lambda _: SpawnConfig()  # noqa: E731
    for start in range(0, entries, 500):
        await asyncio.gather(
            *(pool.ensure(f"k{i}", build) for i in range(start, min(entries, start + 500)))
        )
    reaper = IdleReaper(pool, interval=60, idle_after=600)
    started = time.perf_counter()
    reaped = await reaper.sweep()
    nothing_ms = (time.perf_counter() - started) * 1e3
    assert reaped == []
    clock.offset = 700.0
    for i in range(0, entries, 2):
        pool.touch(f"k{i}")
    started = time.perf_counter()
    reaped = await reaper.sweep()
    half_ms = (time.perf_counter() - started) * 1e3
    await pool.aclose()
    return nothing_ms, half_ms, len(reaped)


async def reaper_figures(entries: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        nothing_ms, half_ms, reaped = await _sweeps(
            entries, root / "local", LocalDirHomeStore(root / "archives")
        )
        _, null_half_ms, _ = await _sweeps(entries, root / "null", _NullStore())
    _emit(
        {
            "benchmark": "pool_reaper_sweep",
            "entries": entries,
            "sweep_nothing_idle_ms": round(nothing_ms, 2),
            "reaped": reaped,
            "sweep_reaping_half_ms": round(half_ms, 1),
            "per_reaped_entry_ms": round(half_ms / max(1, reaped), 3),
            "sweep_reaping_half_no_archive_ms": round(null_half_ms, 1),
        }
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--codex", type=Path, default=DEFAULT_CODEX)
    parser.add_argument("--hits", type=int, default=10_000)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--concurrency", type=int, default=50)
    parser.add_argument("--keys", type=int, default=4)
    parser.add_argument("--entries", type=int, default=10_000)
    args = parser.parse_args()
    logging.basicConfig(level=logging.ERROR)
    if not args.codex.exists():
        print(f"no Codex binary at {args.codex}; run scripts/fetch-codex", file=sys.stderr)
        return 2
    asyncio.run(real_figures(args.codex, args))
    asyncio.run(reaper_figures(args.entries))
    return 0


if __name__ == "__main__":
    sys.exit(main())
