"""How fast is a cutover? A headless exec hits the usage limit on A and resumes on B.

Prints one JSON line per figure. Talks only to 127.0.0.1 (a fake backend).

For each run a fresh pool of two accounts, alpha and beta, runs
``codex exec`` supervised; alpha's first model request is answered
``429 usage_limit_reached``, so the supervisor stops there and resumes the
same session on beta. Two modes:

- ``cutover_prewarmed``: beta's quota was probed moments before the run and
  ``quota_stale_after`` is an hour, so the cutover needs no usage request;
- ``cutover_cold``: ``quota_stale_after=0``, so the accounts are probed on
  the critical path between stopping alpha and starting beta.

Figures per mode: ``exited_to_resumed`` (alpha's ChildExited event to beta's
Resumed event: decision to running successor), ``rotating_to_resumed`` (the
Rotating event, emitted once the successor is chosen, to Resumed), the usage
requests the backend logged between ChildExited and Resumed (per run, all
accounts and beta's alone), and ``spawn_to_first_request`` (beta's
ChildLaunched event to beta's first ``/v1/responses`` request in the backend
log). ``bare_exec_resume_start`` is the same spawn-to-first-request time for
an unsupervised ``codex exec resume <id> "x"``. Every account home has run
Codex once before the measured run, as the bare resume's home has: Codex's
first launch in a home costs ~0.3 s more.

    python benchmarks/bench_cutover.py [--codex PATH] [--runs N] [--poll-interval S]

``--codex`` defaults to the pinned real binary when it is present, else to
the Codex simulator.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import attrs
from _bench import DEFAULT_CODEX, emit, exec_argv, ms, quiet_stdio, warm_up

from codex_supervisor.accounts import AccountPool
from codex_supervisor.config import child_environment
from codex_supervisor.events import ChildExited, ChildLaunched, CollectingSink, Resumed, Rotating
from codex_supervisor.supervisor import Supervisor, SupervisorConfig
from codex_supervisor.testing import (
    Behaviour,
    FakeCodexBackend,
    hermetic_env,
    install_simulator,
)

USAGE_PATHS = frozenset({"/backend-api/wham/usage", "/api/codex/usage"})
RESPONSES_PATHS = frozenset({"/v1/responses", "/responses"})


@attrs.frozen
class _Pool:
    """One run's pool of alpha and beta on the shared backend."""

    pool: AccountPool
    ids: dict[str, str]
    env: dict[str, str]
    work: Path


def _new_pool(backend: FakeCodexBackend, codex: Path, root: Path, tag: str) -> _Pool:
    base = backend.write_codex_home(root / "codex-home")
    pool = AccountPool(root=root / "pool", base_codex_home=base)
    work = root / "work"
    warm = root / "warm"
    work.mkdir()
    warm.mkdir()
    env = hermetic_env(base, root, backend)
    ids = {}
    for name, used in (("alpha", 20.0), ("beta", 40.0)):
        ids[name] = f"id-{name}-{tag}"
        backend.add_account(ids[name], five_hour_used=used, per_request_percent=1)
        pool.import_auth(name, backend.write_auth(root / f"login-{name}", ids[name]))
        # Codex's first launch in a home sets up its state there (~0.3 s more
        # to the first request): run it once per account home (in another
        # folder), so the supervised resume meets a home Codex has used, as
        # the bare resume does.
        subprocess.run(
            [str(codex), *exec_argv("warm up")],
            cwd=warm,
            env=child_environment(pool.prepare_home(name), env),
            stdin=subprocess.DEVNULL,
            capture_output=True,
            timeout=120,
            check=True,
        )
    backend.script(Behaviour.usage_limit(), account_id=ids["alpha"])
    return _Pool(pool=pool, ids=ids, env=env, work=work)


async def _one_cutover(
    backend: FakeCodexBackend, codex: Path, world: _Pool, *, prewarm: bool, poll: float
) -> dict[str, float]:
    if prewarm:
        await warm_up(world.pool, ["alpha", "beta"])
    sink = CollectingSink()
    config = SupervisorConfig(
        codex=str(codex), poll_interval=poll, quota_stale_after=3600.0 if prewarm else 0.0
    )
    result = await Supervisor(world.pool, config=config, sink=sink, environ=world.env).run(
        exec_argv("do the work"), cwd=world.work
    )
    code = result.exit_code
    if code != 0:
        raise RuntimeError(f"supervised exec exited {code}; events: {sink.names}")
    exited = next(e for e in sink.of(ChildExited) if e.account == "alpha")  # type: ignore[attr-defined]
    [rotating] = sink.of(Rotating)
    launched = next(e for e in sink.of(ChildLaunched) if e.account == "beta")  # type: ignore[attr-defined]
    [resumed] = sink.of(Resumed)
    start, end = exited.at.timestamp(), resumed.at.timestamp()
    log = backend.requests
    beta = world.ids["beta"]
    usage = [r for r in log if r.path in USAGE_PATHS and start <= r.at <= end]
    first_b = min(
        r.at for r in log if r.path in RESPONSES_PATHS and r.account_id == beta and r.at >= start
    )
    return {
        "exited_to_resumed": end - start,
        "rotating_to_resumed": end - rotating.at.timestamp(),
        "usage_requests": len(usage),
        "successor_usage_requests": sum(r.account_id == beta for r in usage),
        "spawn_to_first_request": first_b - launched.at.timestamp(),
    }


def bench_cutover(
    out: Any, backend: FakeCodexBackend, codex: Path, tmp: Path, runs: int, *, poll: float
) -> None:
    """Supervised exec cutovers, with and without a pre-warmed successor."""
    for mode, prewarm in (("cutover_prewarmed", True), ("cutover_cold", False)):
        results = []
        for i in range(runs):
            root = tmp / f"{mode}-{i}"
            root.mkdir()
            world = _new_pool(backend, codex, root, f"{mode}-{i}")
            results.append(
                asyncio.run(_one_cutover(backend, codex, world, prewarm=prewarm, poll=poll))
            )
        usage = [int(r["usage_requests"]) for r in results]
        successor = [int(r["successor_usage_requests"]) for r in results]
        emit(
            out,
            mode,
            runs=runs,
            quota_stale_after_s=3600.0 if prewarm else 0.0,
            exited_to_resumed=ms([r["exited_to_resumed"] for r in results]),
            rotating_to_resumed=ms([r["rotating_to_resumed"] for r in results]),
            spawn_to_first_request=ms([r["spawn_to_first_request"] for r in results]),
            usage_requests=usage,
            successor_usage_requests=successor,
        )


def bench_bare_resume(
    out: Any, backend: FakeCodexBackend, codex: Path, tmp: Path, runs: int
) -> None:
    """Spawn of an unsupervised ``codex exec resume <id> "x"`` to its first model request."""
    root = tmp / "bare"
    root.mkdir()
    backend.add_account("id-bare", per_request_percent=0)
    home = backend.write_codex_home(root / "codex-home", "id-bare")
    work = root / "work"
    work.mkdir()
    env = hermetic_env(home, root, backend)

    def run(argv: list[str]) -> None:
        subprocess.run(
            [str(codex), *argv],
            cwd=work,
            env=env,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            timeout=120,
            check=True,
        )

    run(exec_argv("hi"))
    session = backend.responses_requests("id-bare")[-1].session_id
    if session is None:
        raise RuntimeError("the first exec sent no session id")
    samples = []
    for _ in range(runs):
        spawned = time.time()
        run(exec_argv("resume", session, "x"))
        first = min(r.at for r in backend.responses_requests("id-bare") if r.at >= spawned)
        samples.append(first - spawned)
    emit(out, "bare_exec_resume_start", runs=runs, spawn_to_first_request=ms(samples))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--codex", type=Path, default=None, help="real binary if present, else the simulator"
    )
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument(
        "--poll-interval", type=float, default=SupervisorConfig().poll_interval, dest="poll"
    )
    args = parser.parse_args()
    # The JSON lines go to a copy of stdout: fd 1 itself goes to the children's log.
    sys.stdout.flush()
    out = os.fdopen(os.dup(1), "w", encoding="utf-8")
    with FakeCodexBackend() as backend, tempfile.TemporaryDirectory() as name:
        tmp = Path(name)
        codex = args.codex
        if codex is None:
            codex = DEFAULT_CODEX if DEFAULT_CODEX.is_file() else install_simulator(tmp / "bin")
        with codex.open("rb") as binary:
            simulated = binary.read(2) == b"#!"
        emit(out, "cutover_setup", codex=str(codex), simulator=simulated, runs=args.runs)
        log = tmp / "children.log"
        try:
            with quiet_stdio(log):
                bench_cutover(out, backend, codex, tmp, args.runs, poll=args.poll)
                bench_bare_resume(out, backend, codex, tmp, args.runs)
        except BaseException:
            if log.exists():
                sys.stderr.write(log.read_text(errors="replace")[-4000:])
            raise
    peak_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    emit(out, "benchmark_process", peak_rss_mib=round(peak_kib / 1024, 1))
    out.close()


if __name__ == "__main__":
    main()
