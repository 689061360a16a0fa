"""A pool shared through a real redis-server on 127.0.0.1: leases, SIGKILL chaos, handoffs.

Prints one JSON line per figure:

- ``redis_lease`` / ``file_lease``: the latency of ``try_acquire``, ``renew``
  and ``release`` (p50, p99 and max, in milliseconds, over ``--ops`` each) for
  :class:`~codex_supervisor.lease_redis.RedisLeaseBackend` on loopback and for
  :class:`~codex_supervisor.lease.FileLeaseBackend` in a temp folder. Goal for
  Redis: at most 2 ms p50 for each.
- ``redis_sigkill``: ``--processes`` worker processes on two sites (two
  "machines": ``RedisLeaseBackend(site=...)``) take one account's lease in a
  loop (``acquire_lease``: heartbeat, TTL ``--ttl``, short holds), once
  exclusive and once shared (an occupancy: shared within a site only);
  ``--kills`` times a holder is SIGKILLed at a random moment and a
  replacement forked. ``double_holders`` (goal 0): holds that began while
  another had not ended — any other for exclusive, another site's for shared
  (a killed holder's hold ends at its kill; a holder told its lease was lost
  stops counting). ``recovery``: from a SIGKILL to the next hold of another
  process (goal: at most the TTL plus one heartbeat, ``bound_ms``; in shared
  mode the victim's site-mates may share at once).
- ``redis_handoffs``: ``--handoffs`` times the account goes from one site to
  the other; each holder refreshes its login on the fake backend's
  single-use refresh tokens (what Codex does when its access token expired:
  POST the refresh token, write the new auth.json) and every other handoff
  waits for the watcher's push before giving the account back. ``replays``
  (goal 0): refresh tokens presented twice, as the backend counts them;
  ``take``: how long occupying (lease, custody, pulling the newest login)
  took; ``push``: from the write to the store holding it.

    python benchmarks/bench_redis.py [--ops N] [--processes N] [--kills N] [--handoffs N]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import signal
import statistics
import sys
import tempfile
import threading
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
from _bench import emit, ms

from codex_supervisor.accounts import AccountPool
from codex_supervisor.credentials import CredentialKey
from codex_supervisor.errors import LeaseLost, LeaseTimeout
from codex_supervisor.lease import FileLeaseBackend, LeaseBackend, LeaseMode, acquire_lease
from codex_supervisor.lease_redis import RedisLeaseBackend
from codex_supervisor.testing import FakeCodexBackend, RedisServer
from codex_supervisor.testing._tokens import write_auth_json

KEY = CredentialKey(bytes(range(32)))


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


# -- two sites, SIGKILL -------------------------------------------------------------------


def _site(root: Path, url: str, pool_name: str) -> AccountPool:
    return AccountPool(
        root=root / "pool",
        base_codex_home=root / "codex-home",
        backend=url,
        pool_name=pool_name,
        credential_key=KEY,
    )


async def _occupier(url: str, prefix: str, site: str, journal: Path, args: Any) -> None:
    """Take the account's lease, hold it briefly, let go; again, until killed."""
    backend = RedisLeaseBackend(url, prefix=prefix, site=site)
    fd = os.open(journal, os.O_WRONLY | os.O_APPEND)
    pid = os.getpid()
    rng = random.Random(pid)
    mode = LeaseMode(args.mode)

    def note(kind: str) -> None:
        os.write(fd, f"{kind} {pid} {site} {time.time():.6f}\n".encode())  # one write: whole

    note("S")
    while True:
        try:
            async with acquire_lease(backend, "account.alpha", mode=mode, ttl=args.ttl,
                                     timeout=args.ttl * 4, poll=0.01) as lease:  # fmt: skip
                note("A")
                await asyncio.sleep(rng.uniform(0, args.hold))
                try:
                    lease.ensure_held()  # the fencing check a careful holder makes
                except LeaseLost:
                    note("L")
                else:
                    note("R")
        except LeaseTimeout:
            pass
        await asyncio.sleep(rng.uniform(0, 0.01))


def _read_journal(path: Path) -> list[tuple[str, int, str, float]]:
    rows = []
    for line in path.read_text().splitlines():
        kind, pid, site, at = line.split()
        rows.append((kind, int(pid), site, float(at)))
    return rows


def _sigkill_figures(
    rows: list[tuple[str, int, str, float]],
    kills: list[tuple[int, str, float]],
    *,
    exclusive: bool,
) -> dict[str, Any]:
    """Double holders (holds that began inside another's: any for exclusive, another
    site's for shared; a killed holder's hold ends at its kill) and recovery times."""
    killed = {pid: at for pid, _, at in kills}
    holds: list[tuple[float, float, str]] = []
    open_: dict[int, tuple[float, str]] = {}
    for kind, pid, site, at in rows:
        if kind == "A":
            open_[pid] = (at, site)
        elif kind == "R" and pid in open_:
            start, where = open_.pop(pid)
            holds.append((start, at, where))
        elif kind == "L":
            open_.pop(pid, None)  # told it lost the lease: it stopped acting on it
    holds += [(start, killed[pid], site) for pid, (start, site) in open_.items() if pid in killed]
    double = sum(
        1
        for start, _, site in holds
        for other_start, other_end, other_site in holds
        if (exclusive or other_site != site) and other_start < start < other_end
    )
    recoveries = [
        min(later) - at
        for victim, _, at in kills
        if (later := [a for k, p, _, a in rows if k == "A" and p != victim and a > at])
    ]
    return {
        "acquisitions": sum(1 for k, *_ in rows if k == "A"),
        "double_holders": double,
        "leases_lost": sum(1 for k, *_ in rows if k == "L"),
        "recovery": ms(recoveries) if recoveries else None,
    }


def bench_sigkill(url: str, args: Any, rng: random.Random) -> None:
    """Workers of two sites take one account's lease; a holder is SIGKILLed at random."""
    assert threading.active_count() == 1, "forking needs a process without threads"
    with tempfile.TemporaryDirectory(prefix="bench-redis-") as tmp:
        prefix = f"bench-{uuid.uuid4().hex}:"
        journal = Path(tmp) / "journal"
        journal.touch()
        pids: dict[int, str] = {}

        def spawn(site: str) -> None:
            sys.stdout.flush()
            pid = os.fork()
            if pid == 0:  # the worker: never returns into the benchmark
                try:
                    asyncio.run(_occupier(url, prefix, site, journal, args))
                finally:
                    os._exit(0)
            pids[pid] = site

        for index in range(args.processes):
            spawn(("site-a", "site-b")[index % 2])
        kills: list[tuple[int, str, float]] = []
        deadline = time.monotonic() + 30 + args.kills * (args.ttl * 2 + 1)
        try:
            while len(kills) < args.kills and time.monotonic() < deadline:
                time.sleep(rng.uniform(0.05, args.hold))
                last = {pid: kind for kind, pid, _, _ in _read_journal(journal)}
                holders = [p for p in pids if last.get(p) == "A"]
                if not holders:
                    continue
                victim = rng.choice(holders)
                at = time.time()
                os.kill(victim, signal.SIGKILL)
                os.waitpid(victim, 0)
                site = pids.pop(victim)
                kills.append((victim, site, at))
                spawn(site)
                # Let another take it over before the next kill: one recovery at a time.
                waited = time.monotonic() + args.ttl * 2 + 5
                while time.monotonic() < waited and not any(
                    k == "A" and p != victim and a > at for k, p, _, a in _read_journal(journal)
                ):
                    time.sleep(0.005)
        finally:
            for pid in list(pids):
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
        figures = _sigkill_figures(
            _read_journal(journal), kills, exclusive=args.mode == "exclusive"
        )
    emit(sys.stdout, "redis_sigkill", mode=args.mode, processes=args.processes,
         kills=len(kills), ttl_ms=round(args.ttl * 1000),
         bound_ms=round(args.ttl * 4 / 3 * 1000), **figures)  # fmt: skip


# -- handoffs with refreshes ---------------------------------------------------------------


def _refresh(pool: AccountPool, backend: FakeCodexBackend) -> None:
    """What Codex does with an expired access token: refresh once, write the new login."""
    home = pool.account_home("alpha")
    current = json.loads((home / "auth.json").read_text())
    answer = httpx.post(
        backend.token_url,
        json={"grant_type": "refresh_token", "refresh_token": current["tokens"]["refresh_token"],
              "client_id": "bench"},
        timeout=10,
    )  # fmt: skip
    if answer.status_code != 200:  # a replay: the backend counts it
        return
    tokens = answer.json()
    write_auth_json(home, id_token=tokens["id_token"], access_token=tokens["access_token"],
                    refresh_token=tokens["refresh_token"], account_id="id-alpha",
                    last_refresh=datetime.now(UTC))  # fmt: skip


async def bench_handoffs(url: str, args: Any) -> None:
    with tempfile.TemporaryDirectory(prefix="bench-redis-") as tmp, FakeCodexBackend() as backend:
        pool_name = uuid.uuid4().hex
        sites = []
        for name in ("site-a", "site-b"):
            (Path(tmp) / name / "codex-home").mkdir(parents=True)
            sites.append(_site(Path(tmp) / name, url, pool_name))
        backend.add_account("id-alpha")
        sites[0].import_auth("alpha", backend.write_auth(Path(tmp), "id-alpha"))
        store = sites[0].credentials
        assert store is not None
        takes, pushes = [], []
        for index in range(args.handoffs):
            pool = sites[index % 2]
            started = time.perf_counter()
            async with pool.occupy("alpha", purpose="handoff", ttl=10):
                takes.append(time.perf_counter() - started)
                await asyncio.to_thread(_refresh, pool, backend)
                if index % 2 == 0:  # the watcher's push, while the account is held
                    written = time.perf_counter()
                    data = (pool.account_home("alpha") / "auth.json").read_bytes()
                    while True:
                        stored = await asyncio.to_thread(store.fetch, "alpha")
                        if stored is not None and stored.data == data:
                            break
                        await asyncio.sleep(0.001)
                    pushes.append(time.perf_counter() - written)
        emit(
            sys.stdout,
            "redis_handoffs",
            handoffs=args.handoffs,
            refreshes=backend.account("id-alpha").refresh_count,
            replays=len(backend.replays),
            take=ms(takes),
            push=ms(pushes),
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ops", type=int, default=1000)
    parser.add_argument("--processes", type=int, default=6)
    parser.add_argument("--kills", type=int, default=10)
    parser.add_argument("--ttl", type=float, default=1.5, help="lease TTL of the chaos workers")
    parser.add_argument("--hold", type=float, default=0.3, help="longest hold, seconds")
    parser.add_argument("--handoffs", type=int, default=120)
    parser.add_argument("--seed", type=int, default=None)
    args = parser.parse_args()
    rng = random.Random(args.seed)
    with RedisServer() as server:
        for mode in ("exclusive", "shared"):  # first: they fork, so no thread may run yet
            bench_sigkill(server.url, argparse.Namespace(**{**vars(args), "mode": mode}), rng)
    asyncio.run(_run(args.ops))
    with RedisServer() as server:
        asyncio.run(bench_handoffs(server.url, args))


if __name__ == "__main__":
    main()
