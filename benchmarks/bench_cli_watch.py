"""What one view of `codex-supervisor status --watch` costs, and what a terminal receives.

Prints one JSON line per figure. Talks only to 127.0.0.1 (a fake backend that
only hands out logins: the views read the pool, nothing is probed).

For pools of 2, 10 and 50 accounts (``--sizes``), each with a stored quota
snapshot:

- ``status_view``: reading the pool and laying out one view as a plain
  ``status`` does (a selector made for it, which loads the CA bundle);
- ``watch_view``: the same as each ``--interval`` tick of ``--watch`` does it
  (``--refresh-every 0``; one selector kept for every tick). Median and
  maximum of ``--runs``. Goal: under 10 ms for 10 accounts, so a 2 s interval
  costs the machine nothing worth seeing.
- ``watch_redraw``: the bytes a terminal receives — the first, full frame;
  a tick where only the clock in the header moved; a tick where one account's
  quota changed — and how many rows each rewrote. Goal: a tick rewrites the
  rows that changed, not the frame.

    python benchmarks/bench_cli_watch.py [--runs N] [--sizes 2,10,50]
"""

from __future__ import annotations

import argparse
import asyncio
import io
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

from _bench import emit, ms

from codex_supervisor import AccountPool, QuotaSnapshot, QuotaWindow
from codex_supervisor.snapshots import SnapshotSource
from codex_supervisor.testing import FakeCodexBackend

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples"))
from codex_supervisor_cli import cli
from codex_supervisor_cli.watch import LiveScreen


def _snapshot(name: str, used: float, now: datetime) -> QuotaSnapshot:
    return QuotaSnapshot(
        account=name,
        observed_at=now,
        source=SnapshotSource.USAGE_ENDPOINT,
        windows=(
            QuotaWindow(used_percent=used, window_minutes=300, resets_at=now + timedelta(hours=4)),
            QuotaWindow(
                used_percent=used / 2, window_minutes=10080, resets_at=now + timedelta(days=6)
            ),
        ),
    )


def _pool(root: Path, backend: FakeCodexBackend, size: int) -> AccountPool:
    pool = AccountPool(root=root / "pool", base_codex_home=backend.write_codex_home(root / "home"))
    now = datetime.now(UTC)
    for index in range(size):
        name = f"n{size}-{index:02d}"
        backend.add_account(f"id-{name}")
        pool.import_auth(name, backend.write_auth(root / f"login-{name}", f"id-{name}"))
        pool.record_snapshot(_snapshot(name, 10.0 + index % 80, now))
    return pool


def _view(pool: AccountPool) -> list[str]:
    """One view as a plain `status` lays it out (a selector made for it)."""
    view = asyncio.run(cli._status_view(pool, refresh=False, policy=cli.RotationPolicy()))  # noqa: SLF001
    return cli._status_lines(view)  # noqa: SLF001 - what the CLI's view runs


async def _ticks(pool: AccountPool, runs: int) -> list[float]:
    """Views as `status --watch` lays them out: one selector kept for every tick."""
    selector = cli.AccountSelector(pool, policy=cli.RotationPolicy(), probe_budget=60.0)
    timings = []
    try:
        for _ in range(runs):
            started = time.perf_counter()
            view = await cli._status_view(  # noqa: SLF001
                pool, refresh=False, policy=cli.RotationPolicy(), selector=selector
            )
            cli._status_lines(view)  # noqa: SLF001
            timings.append(time.perf_counter() - started)
    finally:
        await selector.aclose()
    return timings


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--sizes", default="2,10,50")
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    with FakeCodexBackend() as backend, tempfile.TemporaryDirectory() as tmp:
        for size in sizes:
            pool = _pool(Path(tmp) / f"n{size}", backend, size)
            timings = []
            for _ in range(args.runs):
                started = time.perf_counter()
                lines = _view(pool)
                timings.append(time.perf_counter() - started)
            emit(sys.stdout, "status_view", accounts=size, lines=len(lines), **ms(timings))
            ticks = asyncio.run(_ticks(pool, args.runs))
            emit(sys.stdout, "watch_view", accounts=size, lines=len(lines), **ms(ticks))

            out = io.StringIO()
            screen = LiveScreen(out, tty=True, size=lambda: (400, 200))
            figures: dict[str, object] = {"accounts": size}
            screen.draw(lines, header="header 10:00:00")
            figures["full_frame_bytes"] = len(out.getvalue())
            figures["full_frame_rows"] = screen.rewritten
            for tick, change in (("clock_only", False), ("one_account", True)):
                if change:
                    name = pool.accounts()[0].name
                    later = datetime.now(UTC) + timedelta(seconds=1)
                    pool.record_snapshot(_snapshot(name, 55.0, later))
                    lines = _view(pool)
                before = len(out.getvalue())
                screen.draw(lines, header=f"header 10:00:0{2 if change else 1}")
                figures[f"{tick}_bytes"] = len(out.getvalue()) - before
                figures[f"{tick}_rows"] = screen.rewritten
            emit(sys.stdout, "watch_redraw", **figures)


if __name__ == "__main__":
    main()
