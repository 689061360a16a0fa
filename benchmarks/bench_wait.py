"""How quickly does a wait for a reset start, end, and stop? Every account blocked.

Prints one JSON line per figure. Talks only to 127.0.0.1 (a fake backend).

Each repetition uses a fresh pool of two accounts, alpha and beta, both held
by ten-minute cooldowns that the backend's quota agrees with (so no probe
lifts them). Figures, each as the median and maximum over ``--runs``:

- ``wait_first_event``: from calling ``Supervisor.run(["exec", ...])`` to its
  first WaitingForReset event. ``cold``: the pool holds no quota yet, so both
  accounts are probed (free) on the way; ``warm``: fresh snapshots are stored,
  so nothing is probed. Includes ``codex --version``.
- ``lift_to_launch``: another process lifts beta's cooldown
  (``AccountPool.clear_cooldowns``) during the wait; from the moment that call
  returned (its own clock reading) to the supervisor's ChildLaunched on beta,
  and to beta's first ``/v1/responses`` request in the backend log. Goal for
  the launch: under 2 s.
- ``signal_to_exit``: ``examples/cli.py run -- exec ...`` in its own process,
  stopped with SIGINT (and SIGTERM) once it prints the wait line; from the
  signal to the process's exit (exit codes 130 and 143 are checked). Goal
  for SIGINT: under 1 s.

    python benchmarks/bench_wait.py [--codex PATH] [--runs N]

``--codex`` defaults to ``$CODEX_SUPERVISOR_TEST_CODEX_BIN``, then to the
pinned real binary (``scripts/fetch-codex`` installs it).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import resource
import signal
import subprocess
import sys
import tempfile
import threading
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import attrs
from _bench import DEFAULT_CODEX, emit, exec_argv, ms, quiet_stdio

from codex_supervisor.accounts import AccountPool
from codex_supervisor.events import ChildLaunched, Event, WaitingForReset
from codex_supervisor.quota import UsageEndpointSource
from codex_supervisor.snapshots import WindowKind
from codex_supervisor.supervisor import Supervisor, SupervisorConfig
from codex_supervisor.testing import FakeCodexBackend, hermetic_env

REPO = Path(__file__).resolve().parents[1]
CLI = REPO / "examples" / "cli.py"
BLOCK_SECONDS = 600
LIFT_GOAL_S = 2.0
SIGINT_GOAL_S = 1.0

_CLEAR = r"""
import sys, time
from pathlib import Path
from codex_supervisor.accounts import AccountPool

pool = AccountPool(root=Path(sys.argv[1]), base_codex_home=Path(sys.argv[2]))
pool.clear_cooldowns(sys.argv[3])
print(repr(time.time()), flush=True)
"""


@attrs.frozen
class _World:
    """One repetition's pool of alpha and beta, both blocked, on the shared backend."""

    pool: AccountPool
    env: dict[str, str]
    work: Path


def _blocked_pool(backend: FakeCodexBackend, root: Path, tag: str) -> _World:
    base = backend.write_codex_home(root / "codex-home")
    pool = AccountPool(root=root / "pool", base_codex_home=base)
    work = root / "work"
    work.mkdir()
    until = int(time.time()) + BLOCK_SECONDS
    for name, used in (("alpha", 10.0), ("beta", 20.0)):
        account_id = f"id-{name}-{tag}"
        backend.add_account(account_id, five_hour_used=used, per_request_percent=1)
        # The window resets when the block ends: a probe sees the same period
        # (room, but not a new one), which does not lift the block.
        backend.set_quota(account_id, five_hour_resets_at=until)
        pool.import_auth(name, backend.write_auth(root / f"login-{name}", account_id))
        pool.set_cooldown(
            name,
            window=WindowKind.FIVE_HOUR,
            blocked_until=datetime.fromtimestamp(until, UTC),
            reason=f"benchmark: blocked until {until}",
        )
    return _World(pool=pool, env=hermetic_env(base, root, backend), work=work)


async def _store_fresh_quota(pool: AccountPool) -> None:
    source = UsageEndpointSource(pool.usage_credentials)
    try:
        for account in pool.accounts():
            pool.record_snapshot(await source.fetch(account.name))
    finally:
        await source.aclose()


# -- (1) start to the first WaitingForReset ------------------------------------------------


async def _first_wait(world: _World, codex: Path) -> float:
    waited: list[float] = []
    supervisor: Supervisor | None = None

    def sink(event: Event) -> None:
        if isinstance(event, WaitingForReset) and not waited:
            waited.append(time.perf_counter())
            assert supervisor is not None
            supervisor.request_stop(signal.SIGINT)

    supervisor = Supervisor(
        world.pool,
        config=SupervisorConfig(codex=str(codex)),
        sink=sink,
        environ=world.env,
    )
    started = time.perf_counter()
    result = await asyncio.wait_for(supervisor.run(exec_argv("wait"), cwd=world.work), 120)
    if not waited or result.exit_code != 130:
        raise RuntimeError(f"expected a wait stopped with 130, got {result}")
    return waited[0] - started


def bench_first_wait(
    out: Any, backend: FakeCodexBackend, codex: Path, tmp: Path, runs: int
) -> None:
    """Start of a run to its first WaitingForReset, with and without probes on the way."""
    for mode in ("cold", "warm"):
        samples = []
        for i in range(runs):
            root = tmp / f"first-{mode}-{i}"
            root.mkdir()
            world = _blocked_pool(backend, root, f"first-{mode}-{i}")
            if mode == "warm":
                asyncio.run(_store_fresh_quota(world.pool))
            samples.append(asyncio.run(_first_wait(world, codex)))
        emit(out, f"wait_first_event_{mode}", runs=runs, start_to_first_wait=ms(samples))


# -- (2) another process lifts a cooldown during the wait --------------------------------


async def _lift(backend: FakeCodexBackend, world: _World, codex: Path) -> tuple[float, float]:
    waiting = asyncio.Event()
    launched: list[ChildLaunched] = []

    def sink(event: Event) -> None:
        if isinstance(event, WaitingForReset):
            waiting.set()
        elif isinstance(event, ChildLaunched):
            launched.append(event)

    supervisor = Supervisor(
        world.pool,
        config=SupervisorConfig(codex=str(codex)),
        sink=sink,
        environ=world.env,
    )
    task = asyncio.create_task(supervisor.run(exec_argv("go"), cwd=world.work))
    try:
        await asyncio.wait_for(waiting.wait(), 60)
        cleared = await asyncio.to_thread(
            subprocess.run,
            [
                sys.executable,
                "-c",
                _CLEAR,
                str(world.pool.root),
                str(world.pool.base_codex_home),
                "beta",
            ],
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        )
        lifted = float(cleared.stdout.strip())
        result = await asyncio.wait_for(task, 120)
    finally:
        task.cancel()
    if result.exit_code != 0 or result.accounts != ("beta",):
        raise RuntimeError(f"expected one run on beta, exit 0; got {result}")
    beta = world.pool.get("beta").identity.account_id
    first = min(r.at for r in backend.responses_requests(beta))
    return launched[0].at.timestamp() - lifted, first - lifted


def bench_lift(out: Any, backend: FakeCodexBackend, codex: Path, tmp: Path, runs: int) -> None:
    """Another process's lift of a cooldown to the launch on that account."""
    to_launch, to_request = [], []
    for i in range(runs):
        root = tmp / f"lift-{i}"
        root.mkdir()
        world = _blocked_pool(backend, root, f"lift-{i}")
        launch, request = asyncio.run(_lift(backend, world, codex))
        to_launch.append(launch)
        to_request.append(request)
    emit(
        out,
        "lift_to_launch",
        runs=runs,
        lift_to_child_launched=ms(to_launch),
        lift_to_first_request=ms(to_request),
        goal_ms=LIFT_GOAL_S * 1000,
        within_goal=max(to_launch) < LIFT_GOAL_S,
    )


# -- (3) a signal during the wait to the process exit --------------------------------------


def _signal_to_exit(world: _World, codex: Path, sig: signal.Signals) -> float:
    argv = [
        sys.executable,
        str(CLI),
        "--pool",
        str(world.pool.root),
        "--codex-home",
        str(world.pool.base_codex_home),
        "--codex",
        str(codex),
        "run",
        "--",
        *exec_argv("-C", str(world.work), "wait"),
    ]
    proc = subprocess.Popen(
        argv,
        env=world.env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    seen = threading.Event()
    lines: list[str] = []

    def read() -> None:
        assert proc.stderr is not None
        for line in proc.stderr:  # drained to the end: the pipe never fills
            lines.append(line)
            if "every account is blocked" in line:
                seen.set()

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        if not seen.wait(60):
            raise RuntimeError("no wait line within 60 s:\n" + "".join(lines)[-2000:])
        sent = time.perf_counter()
        proc.send_signal(sig)
        code = proc.wait(60)
        elapsed = time.perf_counter() - sent
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        reader.join(5)
    if code != 128 + int(sig):
        raise RuntimeError(f"{sig.name}: exit {code}, expected {128 + int(sig)}")
    return elapsed


def bench_signal(out: Any, backend: FakeCodexBackend, codex: Path, tmp: Path, runs: int) -> None:
    """SIGINT and SIGTERM to the reference CLI while it waits, to its exit."""
    for sig in (signal.SIGINT, signal.SIGTERM):
        samples = []
        for i in range(runs):
            root = tmp / f"{sig.name.lower()}-{i}"
            root.mkdir()
            world = _blocked_pool(backend, root, f"{sig.name.lower()}-{i}")
            samples.append(_signal_to_exit(world, codex, sig))
        figures: dict[str, object] = {"runs": runs, "signal_to_exit": ms(samples)}
        if sig is signal.SIGINT:
            figures.update(goal_ms=SIGINT_GOAL_S * 1000, within_goal=max(samples) < SIGINT_GOAL_S)
        emit(out, f"signal_to_exit_{sig.name.lower()}", **figures)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--codex", type=Path, default=None, help="the real Codex binary")
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    codex = args.codex or Path(os.environ.get("CODEX_SUPERVISOR_TEST_CODEX_BIN") or DEFAULT_CODEX)
    if not codex.is_file():
        parser.error(f"no Codex binary at {codex}: run scripts/fetch-codex or pass --codex")
    # The JSON lines go to a copy of stdout: fd 1 itself goes to the children's log.
    sys.stdout.flush()
    out = os.fdopen(os.dup(1), "w", encoding="utf-8")
    with FakeCodexBackend() as backend, tempfile.TemporaryDirectory() as name:
        tmp = Path(name)
        emit(out, "wait_setup", codex=str(codex), runs=args.runs, block_s=BLOCK_SECONDS)
        log = tmp / "children.log"
        try:
            with quiet_stdio(log):
                bench_first_wait(out, backend, codex, tmp, args.runs)
                bench_lift(out, backend, codex, tmp, args.runs)
                bench_signal(out, backend, codex, tmp, args.runs)
        except BaseException:
            if log.exists():
                sys.stderr.write(log.read_text(errors="replace")[-4000:])
            raise
    peak_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    emit(out, "benchmark_process", peak_rss_mib=round(peak_kib / 1024, 1))
    out.close()


if __name__ == "__main__":
    main()
