"""Chaos: kill things at random moments and count what must still hold.

Prints one JSON line per case (``{"benchmark": "chaos", "case": ...}``), every
figure from a real run. Talks only to 127.0.0.1 (fake backends) and local
processes; every loop is bounded in count and in time.

- ``lease_sigkill``: ``--processes`` worker processes take one exclusive file
  lease in a loop (short holds, ``--ttl``); ``--kills`` times the script
  SIGKILLs one of them at a random moment (aimed at the current holder three
  times in four), then forks a replacement. The workers journal every claim
  the lease backend grants (its record's ``acquired_at``, and each
  ``expires_at`` a renewal sets) and, at the end of each hold, whether the
  holder's fencing check (``Lease.ensure_held``) still passed.
  ``double_holders`` (goal 0): claims granted while an earlier claim had not
  ended — a released claim ends at its passed check, a killed holder's at
  its kill or its expiry, whichever is first; claims whose holder was told
  they were lost do not count. ``recovery``: from the SIGKILL of a holder
  to the next claim granted to another worker (a dead holder's lease lapses
  within its TTL).
- ``refresh_rotations``: ``--rotations`` supervised ``codex exec`` turns,
  shared by ``--conversations`` conversations that run at once (each one
  session on its own pool of two accounts). Before each turn both accounts'
  access tokens are expired on the fake backend, so every child refreshes on
  the backend's single-use refresh tokens before its request goes through,
  and the first account's request is answered 429 ``usage_limit_reached``,
  so the run rotates to the other account and resumes the same session
  there. ``replays`` (goal 0): refresh tokens presented twice, as the
  backend counts them; ``other_sessions`` (goal 0): turns that did not
  continue their conversation's session. The Codex simulator, and
  ``--real-rotations`` more on the real binary.
- ``exit_paths``: a supervised run in a child process (this script with
  ``--driver``), under a real pseudo-terminal, ended each way — normal exit,
  rotation, an exception (the policy raises), SIGTERM and SIGHUP to the
  supervisor, Ctrl-C typed at the terminal, SIGKILL of the Codex child — both
  as an interactive session (a TUI stand-in: the simulator, started after
  switching echo off and the alternate screen on, and never switching them
  back) and as ``codex exec``. Signals and the exception come at a random
  moment, from before an account is chosen to mid-turn (a signal that comes
  before the run has its own handlers goes through ``request_stop``).
  ``clean`` (goal 100 %): no child of the supervisor left running or
  unreaped, no lease record left, the terminal's termios attributes as
  before and no alternate screen left on; ``exit_codes_right``: 0, 0, the
  exception, 143, 129, 130 (or, for a TUI that got the Ctrl-C itself, its
  own end, 130 as well), and the killed child's 137 (128 + 9, as a shell
  reports it).
- ``appserver_sigkill``: a real ``codex app-server`` with ``--waiters`` turns
  in flight on a stalled backend is SIGKILLed at a random moment after the
  turns were started; ``settled`` (goal 100 %): turn waiters that returned a
  result within 30 s.
- ``broker``: the broker (``python -m codex_supervisor.appserver.broker``,
  real upstream) with one client mid-turn and two idle ones, ended each way:
  the upstream SIGKILLed (exit 1), ``broker/shutdown``, SIGTERM, SIGINT,
  SIGHUP (exit 0), or no client until the idle timeout (exit 0). Waiters
  settled, exit codes right, socket and pid file removed, upstream gone.

    python benchmarks/bench_chaos.py [--quick] [--seed N] [--codex PATH] ...

``--codex`` is the real binary for the app-server, broker and
``--real-rotations`` cases (default: the pinned one); without it those cases
print ``"skipped"``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import itertools
import json
import logging
import math
import os
import random
import resource
import signal
import subprocess
import sys
import tempfile
import termios
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from pathlib import Path
from typing import Any

import attrs
from _bench import DEFAULT_CODEX, account_pool, emit, exec_argv, ms, quiet_stdio, warm_up

from codex_supervisor.accounts import AccountPool
from codex_supervisor.appserver import AppServerClient, run_turn
from codex_supervisor.errors import LeaseLost, LeaseTimeout, SupervisorError, TransportClosed
from codex_supervisor.events import ChildLaunched, Event
from codex_supervisor.lease import (
    FileLeaseBackend,
    LeaseMode,
    LeaseRecord,
    RenewOutcome,
    acquire_lease,
)
from codex_supervisor.policy import Candidate, Decision, RotationPolicy
from codex_supervisor.supervisor import Supervisor, SupervisorConfig
from codex_supervisor.testing import (
    Behaviour,
    FakeCodexBackend,
    PtyProcess,
    hermetic_env,
    install_simulator,
    offline_flags,
)

REPO = Path(__file__).resolve().parents[1]
LEASE = "chaos"
#: How long any one wait for a process or a result may take.
PATIENCE = 60.0

# -- lease_sigkill ------------------------------------------------------------------------


@attrs.define
class _JournaledLeases:
    """A file lease backend that journals every claim it grants: start and expiry.

    The backend judges expiry on the wall clock, so the journal does too: a
    claim lasts from its record's ``acquired_at`` until it is released or
    its latest ``expires_at`` passes; the backend may hand the lease to
    another only after that.
    """

    inner: FileLeaseBackend
    note: Callable[..., None]

    async def try_acquire(
        self, name: str, *, owner: str, mode: LeaseMode, ttl: float, purpose: str | None = None
    ) -> LeaseRecord | None:
        record = await self.inner.try_acquire(
            name, owner=owner, mode=mode, ttl=ttl, purpose=purpose
        )
        if record is not None:
            self.note("A", record.acquired_at.timestamp(), record.expires_at.timestamp())
        return record

    async def renew(self, record: LeaseRecord, ttl: float) -> tuple[RenewOutcome, LeaseRecord]:
        outcome, renewed = await self.inner.renew(record, ttl)
        if outcome is RenewOutcome.OK:
            self.note("E", renewed.expires_at.timestamp())
        return outcome, renewed

    async def release(self, record: LeaseRecord) -> None:
        await self.inner.release(record)

    async def holders(self, name: str) -> list[LeaseRecord]:
        return await self.inner.holders(name)


async def _lease_worker(root: Path, journal: Path, ttl: float, hold: float, stop_at: float) -> None:
    """Take the lease, hold it briefly, let go; again, until ``stop_at`` (monotonic)."""
    fd = os.open(journal, os.O_WRONLY | os.O_APPEND)
    pid = os.getpid()
    rng = random.Random(pid)

    def note(kind: str, at: float | None = None, expires: float | None = None) -> None:
        line = f"{kind} {pid} {time.time() if at is None else at:.6f}\n"
        if expires is not None:
            line += f"E {pid} {expires:.6f}\n"
        # One O_APPEND write: lines of several writers never interleave.
        os.write(fd, line.encode())

    backend = _JournaledLeases(FileLeaseBackend(root), note)
    note("S")  # started: ready to contend
    while (left := stop_at - time.monotonic()) > 0:
        try:
            async with acquire_lease(
                backend, LEASE, ttl=ttl, timeout=left, poll=0.01, on_lost=lambda _: note("L")
            ) as lease:
                await asyncio.sleep(rng.uniform(0, hold))
                try:
                    lease.ensure_held()  # the fencing check a careful holder makes
                except LeaseLost:
                    note("L")
                else:
                    note("R")
        except LeaseTimeout:
            return
        note("X")
        await asyncio.sleep(rng.uniform(0, 0.01))


class _Journal:
    """The workers' journal, read as it grows: ``(kind, pid, wall-clock time)`` per line."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.events: list[tuple[str, int, float]] = []
        self.last: dict[int, str] = {}
        self._offset = 0
        self._rest = b""

    def poll(self) -> None:
        with self.path.open("rb") as fh:
            fh.seek(self._offset)
            data = fh.read()
        self._offset += len(data)
        *lines, self._rest = (self._rest + data).split(b"\n")
        for line in lines:
            kind, pid, at = line.decode().split()
            self.events.append((kind, int(pid), float(at)))
            if kind != "E":
                self.last[int(pid)] = kind

    def wait(self, found: Callable[[], Any], timeout: float) -> Any:
        """Poll until ``found()`` is truthy (returned) or ``timeout`` passes (None)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.poll()
            if result := found():
                return result
            time.sleep(0.002)
        return None


def _holds(
    events: list[tuple[str, int, float]], killed_at: dict[int, float]
) -> list[tuple[float, float, bool]]:
    """Every claim as (start, end, reported lost).

    A released claim ends when its holder, having checked it still held the
    lease, was about to release it; a killed holder's claim at its kill or
    at its last expiry, whichever came first.
    """
    open_: dict[int, list[Any]] = {}
    holds = []
    for kind, pid, at in events:
        if kind == "A":
            open_[pid] = [at, math.inf]
        elif kind == "E" and pid in open_:
            open_[pid][1] = at
        elif kind in ("L", "R") and pid in open_:
            start, _ = open_.pop(pid)
            holds.append((start, at, kind == "L"))
    holds += [
        (start, min(expires, killed_at.get(pid, math.inf)), False)
        for pid, (start, expires) in open_.items()
    ]
    return holds


def _double_holders(holds: list[tuple[float, float, bool]]) -> int:
    """Claims granted before an earlier one (not reported lost to its holder) had ended."""
    count, reach = 0, -math.inf
    for start, end, lost in sorted(holds):
        if start < reach:
            count += 1
        if not lost:
            reach = max(reach, end)
    return count


@attrs.define
class _Workers:
    """Forked lease workers, the journal they write, and when each was killed."""

    args: argparse.Namespace
    root: Path
    journal: _Journal
    stop_at: float
    pids: set[int] = attrs.field(factory=set)
    killed_at: dict[int, float] = attrs.field(factory=dict)

    def spawn(self) -> None:
        # Forked: a new interpreter would take longer to start than a lease
        # takes to lapse. Nothing else may run in this process meanwhile.
        assert threading.active_count() == 1, "the lease case must run before any thread starts"
        sys.stdout.flush()
        sys.stderr.flush()
        pid = os.fork()
        if pid == 0:  # the worker: never returns into the benchmark
            code = 1
            try:
                args = self.args
                asyncio.run(
                    _lease_worker(self.root, self.journal.path, args.ttl, args.hold, self.stop_at)
                )
                code = 0
            finally:
                os._exit(code)
        self.pids.add(pid)
        # A recovery needs a waiter: do not go on before this one contends.
        self.journal.wait(lambda: pid in self.journal.last, 30)

    def kill(self, pid: int) -> float:
        at = time.time()  # the victim holds what it holds at least until now
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        self.pids.discard(pid)
        self.killed_at[pid] = at
        return at

    def holders(self) -> list[int]:
        return sorted(p for p in self.pids if self.journal.last.get(p) in ("A", "R"))

    def recovered(self, victim: int, at: float, seen: int) -> bool:
        return any(k == "A" and p != victim and a > at for k, p, a in self.journal.events[seen:])


def bench_lease(out: Any, args: argparse.Namespace, rng: random.Random) -> None:
    """Random SIGKILLs among processes contending for one exclusive lease."""
    kills: list[tuple[int, float]] = []
    with tempfile.TemporaryDirectory(prefix="chaos-lease-") as name:
        journal = _Journal(Path(name) / "journal")
        journal.path.touch()
        budget = time.monotonic() + args.lease_seconds
        workers = _Workers(args, Path(name) / "leases", journal, budget + 30)
        try:
            for _ in range(args.processes):
                workers.spawn()
            while len(kills) < args.kills and time.monotonic() < budget:
                holders = journal.wait(workers.holders, 10)
                victim = rng.choice(holders or sorted(workers.pids))
                if holders and rng.random() < 0.25:
                    victim = rng.choice(sorted(workers.pids))
                time.sleep(rng.uniform(0, args.hold / 2))
                seen = len(journal.events)
                at = workers.kill(victim)
                kills.append((victim, at))
                workers.spawn()
                if journal.last.get(victim) in ("A", "R"):
                    # Let the lease be recovered before the next kill, so
                    # each recovery is measured on its own.
                    journal.wait(functools.partial(workers.recovered, victim, at, seen), 7)
                time.sleep(rng.uniform(0, 0.05))
        finally:
            for pid in sorted(workers.pids):
                workers.kill(pid)
        journal.poll()
    emit(
        out,
        "chaos",
        case="lease_sigkill",
        processes=args.processes,
        kills=len(kills),
        ttl_ms=round(args.ttl * 1000),
        **_lease_figures(journal.events, kills, workers.killed_at),
    )


def _lease_figures(
    events: list[tuple[str, int, float]],
    kills: list[tuple[int, float]],
    killed_at: dict[int, float],
) -> dict[str, Any]:
    """Double holders, losses and recovery times, from the journal and the kill times."""
    recoveries, unrecovered = [], 0
    for victim, at in kills:
        steps = [k for k, p, _ in events if p == victim and k != "E"]
        if not steps or steps[-1] not in ("A", "R"):
            continue  # it held nothing when it died
        first = min((a for k, p, a in events if k == "A" and p != victim and a > at), default=None)
        if first is None:
            unrecovered += 1
        else:
            recoveries.append(first - at)
    holds = _holds(events, killed_at)
    return {
        "holder_kills": len(recoveries) + unrecovered,
        "acquisitions": sum(1 for k, _, _ in events if k == "A"),
        "double_holders": _double_holders(holds),
        "leases_lost": sum(1 for _, _, lost in holds if lost),
        "unrecovered": unrecovered,
        "recovery": ms(recoveries) if recoveries else None,
    }


# -- refresh_rotations -----------------------------------------------------------------------


def _conversation(backend: FakeCodexBackend, codex: Path, root: Path, count: int) -> Counter[str]:
    """``count`` supervised exec turns of one session, each rotated after forced refreshes.

    Runs in a thread of its own (its own event loop, no signal handlers), so
    several conversations run at once on the one backend.
    """
    names = ("alpha", "beta")
    pool, ids = account_pool(backend, root, {n: {"per_request_percent": 0.0} for n in names})
    work = root / "work"
    work.mkdir()
    env = hermetic_env(pool.base_codex_home, root, backend)
    config = SupervisorConfig(
        codex=str(codex), poll_interval=0.05, quota_stale_after=3600.0, wait_for_reset=False
    )
    session: str | None = None
    tally = Counter[str]()
    for turn in range(count):
        # The account that starts alternates; it always runs out mid-turn.
        first = names[turn % 2]
        for name in names:
            backend.set_quota(ids[name], five_hour=10.0 if name == first else 30.0)
            pool.clear_cooldowns(name)
        asyncio.run(warm_up(pool, names))
        for name in names:
            backend.expire_access_token(ids[name])
        backend.script(Behaviour.usage_limit(), account_id=ids[first])
        prompt = f"turn {turn}"
        argv = exec_argv("resume", session, prompt) if session else exec_argv(prompt)
        tally["runs"] += 1
        try:
            result = Supervisor(pool, config=config, environ=env).run_sync(argv, cwd=work)
        except SupervisorError as exc:
            tally[f"failed: {type(exc).__name__}"] += 1
            continue
        if result.exit_code != 0:
            tally[f"failed: exit {result.exit_code}"] += 1
        tally["rotations"] += result.rotations
        # Each account that ran met an expired access token.
        tally["forced_refreshes"] += len(set(result.accounts))
        tally["other_sessions"] += session is not None and result.session_id != session
        session = result.session_id or session
    tally["refreshes"] = sum(backend.account(ids[name]).refresh_count for name in names)
    tally["replays"] = sum(1 for r in backend.replays if r in ids.values())
    return tally


def bench_rotations(out: Any, args: argparse.Namespace, tmp: Path) -> None:
    """Rotations after forced token refreshes, on the simulator and optionally the real binary."""
    plans = [("simulator", install_simulator(tmp / "sim-bin"), args.rotations)]
    if args.real_rotations:
        plans.append(("real", args.codex, args.real_rotations))
    log = tmp / "rotations-children.log"
    for label, codex, count in plans:
        if label == "real" and not args.codex.is_file():
            emit(out, "chaos", case="refresh_rotations", codex=label, skipped="no binary")
            continue
        lanes = max(1, min(args.conversations, count))
        tally = Counter[str]()
        began = time.perf_counter()
        with FakeCodexBackend() as backend, quiet_stdio(log), ThreadPoolExecutor(lanes) as pool:
            shares = [count // lanes + (i < count % lanes) for i in range(lanes)]
            roots = [tmp / f"rot-{label}-{i}" for i in range(lanes)]
            for root in roots:
                root.mkdir()
            for part in pool.map(_conversation, [backend] * lanes, [codex] * lanes, roots, shares):
                tally.update(part)
        elapsed = time.perf_counter() - began
        failed = {k.removeprefix("failed: "): v for k, v in tally.items() if k.startswith("failed")}
        emit(
            out,
            "chaos",
            case="refresh_rotations",
            codex=label,
            conversations=lanes,
            runs=tally["runs"],
            rotations=tally["rotations"],
            forced_refreshes=tally["forced_refreshes"],
            refreshes=tally["refreshes"],
            replays=tally["replays"],
            other_sessions=tally["other_sessions"],
            failed_runs=failed,
            seconds=round(elapsed, 1),
        )


# -- exit_paths ---------------------------------------------------------------------------------

#: A TUI stand-in: the simulator, started after switching the terminal the
#: way a TUI does; it never switches it back, like a TUI that is killed.
_TUI_SHIM = """#!/bin/sh
case "$1" in
exec|--version) ;;
*) if [ -t 0 ]; then stty -echo -icrnl; printf '\\033[?1049h\\033[?2004h'; fi ;;
esac
exec {sim} "$@"
"""

PATHS = ("normal", "rotation", "exception", "sigterm", "sighup", "sigint", "sigkill_child")
ALT_SCREEN_ON, ALT_SCREEN_OFF = b"\x1b[?1049h", b"\x1b[?1049l"


@attrs.frozen(kw_only=True)
class _Tripwire(RotationPolicy):
    """The shipped policy until ``trip`` exists; from then on every decision raises."""

    trip: str = ""

    def decide(
        self,
        current: Candidate,
        others: Any,
        now: datetime,
        *,
        last_turn_error: str | None = None,
    ) -> Decision:
        if self.trip and Path(self.trip).exists():
            raise RuntimeError("chaos: the policy failed")
        return super().decide(current, others, now, last_turn_error=last_turn_error)


def _state(pid: int) -> str | None:
    """The /proc state letter of ``pid`` (``Z`` for a zombie), or None once it is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()[0]


def _children_of(parent: int) -> list[str]:
    """``pid:state`` of every process whose parent is ``parent`` (running or zombie)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError, IndexError):
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            if int(fields[1]) == parent:
                found.append(f"{entry.name}:{fields[0]}")
    return found


def _driver(cfg: dict[str, Any]) -> int:
    """One supervised run under the terminal; what it left behind goes to ``cfg["result"]``."""
    pool = AccountPool(root=Path(cfg["pool"]), base_codex_home=Path(cfg["base"]))
    launched: list[int] = []
    with Path(cfg["events"]).open("a", buffering=1, encoding="utf-8") as log:

        def sink(event: Event) -> None:
            if isinstance(event, ChildLaunched):
                launched.append(event.pid)
            log.write(json.dumps({"name": event.name, "pid": getattr(event, "pid", None)}) + "\n")

        supervisor = Supervisor(
            pool,
            config=SupervisorConfig(codex=cfg["codex"], poll_interval=0.05),
            policy=_Tripwire(trip=cfg["trip"]),
            sink=sink,
            environ=cfg["env"],
        )
        # Signals are the embedder's until the run has installed its own
        # handlers (and again after it): a stop asked for meanwhile still ends
        # the run, through request_stop.
        for sig in (signal.SIGTERM, signal.SIGHUP, signal.SIGINT):
            signal.signal(sig, lambda n, _: supervisor.request_stop(signal.Signals(n)))
        log.write(json.dumps({"name": "driver_ready", "pid": None}) + "\n")
        before = termios.tcgetattr(0)
        outcome: dict[str, Any]
        try:
            result = supervisor.run_sync(cfg["argv"], cwd=cfg["cwd"])
            outcome = {"exit_code": result.exit_code, "rotations": result.rotations}
        except Exception as exc:  # noqa: BLE001 - the exception path is one of the cases
            outcome = {"raised": type(exc).__name__}
        outcome["termios_same"] = termios.tcgetattr(0) == before
        outcome["children_left"] = _children_of(os.getpid())
        outcome["occupants"] = [
            record.owner
            for account in pool.accounts()
            for record in asyncio.run(pool.occupants(account.name))
        ]
    outcome["launched"] = launched
    Path(cfg["result"]).write_text(json.dumps(outcome), encoding="utf-8")
    return 0


def _events(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.endswith("}")]


def _until(found: Any, what: str, proc: PtyProcess) -> Any:
    """Poll ``found()`` until it is truthy (returned); fail after PATIENCE or if proc exits."""
    deadline = time.monotonic() + PATIENCE
    while not (result := found()):
        if proc.proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"{what} not seen; terminal output:\n{proc.text[-2000:]}")
        time.sleep(0.02)
    return result


def _expected(path: str) -> set[int | str]:
    codes: dict[str, set[int | str]] = {
        "normal": {0},
        "rotation": {0},
        "exception": {"RuntimeError"},
        "sigterm": {128 + signal.SIGTERM},
        "sighup": {128 + signal.SIGHUP},
        # Ctrl-C: while a TUI runs, the terminal's foreground group (the TUI
        # and the supervisor) gets it; the supervisor ignores it and reports
        # the TUI's end. Before the TUI runs, or with an exec (a process group
        # of its own, outside the terminal's), only the supervisor does: 130.
        # Both are 130: a child killed by signal N ends the run with 128 + N.
        "sigint": {128 + signal.SIGINT},
        "sigkill_child": {128 + signal.SIGKILL},
    }
    return codes[path]


def _end_run(
    proc: PtyProcess,
    path: str,
    files: dict[str, Path],
    rng: random.Random,
    answered: Callable[[], bool] | None,
) -> None:
    """Bring the supervised run to its end by ``path``, at a random moment where that fits.

    ``answered`` tells when an interactive session's last turn was answered
    (``None`` for an exec, which ends by itself).
    """
    if path in ("normal", "rotation"):
        if answered is not None:
            _until(answered, "the answer", proc)
            proc.write(b"\x04")  # Ctrl-D: end of input, the TUI stand-in exits 0
        return
    if path == "sigkill_child":
        pid = _until(
            lambda: next((e["pid"] for e in _events(files["events"]) if e["pid"]), None),
            "the child",
            proc,
        )
        time.sleep(rng.uniform(0, 0.5))
        os.kill(pid, signal.SIGKILL)
        return
    # Anywhere from before the first account is chosen to mid-turn.
    _until(lambda: _events(files["events"]), "the driver", proc)
    time.sleep(rng.uniform(0, 1.5))
    if path == "exception":
        files["trip"].touch()
    elif path == "sigint":
        proc.write(b"\x03")  # Ctrl-C at the terminal: SIGINT to its foreground group
    else:
        os.kill(proc.pid, signal.SIGTERM if path == "sigterm" else signal.SIGHUP)


def _exit_run(
    backend: FakeCodexBackend, codex: Path, root: Path, *, shape: str, path: str, rng: random.Random
) -> dict[str, Any]:
    """Drive one supervised run to its end by ``path``; what it left behind."""
    pool, ids = account_pool(
        backend, root, {"alpha": {"five_hour_used": 10.0}, "beta": {"five_hour_used": 40.0}}
    )
    if path == "rotation":
        backend.script(Behaviour.usage_limit(), account_id=ids["alpha"])
    elif path != "normal":
        backend.script(Behaviour.stall(PATIENCE), account_id=ids["alpha"])  # never ends
    work = root / "work"
    work.mkdir()
    files = {name: root / name for name in ("events", "trip", "result")}
    env = hermetic_env(pool.base_codex_home, root, backend, extra={"TERM": "xterm-256color"})
    cfg = {
        "pool": str(pool.root),
        "base": str(pool.base_codex_home),
        "codex": str(codex),
        "env": env,
        "argv": exec_argv("hello") if shape == "exec" else [*offline_flags(), "hello"],
        "cwd": str(work),
        **{name: str(file) for name, file in files.items()},
    }
    last = ids["beta"] if path == "rotation" else ids["alpha"]
    driver = [sys.executable, __file__, "--driver", json.dumps(cfg)]
    with PtyProcess(driver, env={**env, "PYTHONPATH": str(REPO)}, cwd=work) as proc:
        try:
            _end_run(
                proc,
                path,
                files,
                rng,
                None
                if shape == "exec"
                else lambda: any(r.status == 200 for r in backend.responses_requests(last)),
            )
            proc.wait(timeout=PATIENCE)
        except (RuntimeError, subprocess.TimeoutExpired) as exc:
            return {"error": str(exc)[-1500:]}
    screen = proc.raw_output
    result = files["result"]
    outcome: dict[str, Any] = json.loads(result.read_text()) if result.exists() else {}
    if not outcome:
        return {"driver_failed": proc.proc.returncode, "output": proc.text[-1000:]}
    deadline = time.monotonic() + 5  # an orphan is reaped by init: give it a moment
    while (alive := [p for p in outcome["launched"] if _state(p)]) and time.monotonic() < deadline:
        time.sleep(0.05)
    code = outcome.get("raised", outcome.get("exit_code"))
    return {
        "children_reaped": not outcome["children_left"] and not alive,
        "leases_released": not outcome["occupants"] and not any(pool.root.rglob("leases/*/*.json")),
        "terminal_restored": outcome["termios_same"]
        and screen.rfind(ALT_SCREEN_ON) <= screen.rfind(ALT_SCREEN_OFF),
        "exit": code,
        "exit_right": code in _expected(path),
        "rotations": outcome.get("rotations"),
        "children": len(outcome["launched"]),
    }


def bench_exit_paths(out: Any, args: argparse.Namespace, tmp: Path, rng: random.Random) -> None:
    """Every way a supervised run can end, interactive and exec, several times each."""
    simulator = install_simulator(tmp / "exit-sim")
    shim = tmp / "exit-tui" / "codex"
    shim.parent.mkdir()
    shim.write_text(_TUI_SHIM.format(sim=simulator), encoding="utf-8")
    shim.chmod(0o755)
    per_path: dict[str, dict[str, Any]] = {}
    unclean = []
    with FakeCodexBackend() as backend:
        for rep, shape, path in itertools.product(range(args.exit_runs), ("tui", "exec"), PATHS):
            root = tmp / f"exit-{shape}-{path}-{rep}"
            root.mkdir()
            codex = shim if shape == "tui" else simulator
            run = _exit_run(backend, codex, root, shape=shape, path=path, rng=rng)
            entry = per_path.setdefault(
                f"{shape}/{path}", {"runs": 0, "clean": 0, "exits": set(), "children": set()}
            )
            entry["runs"] += 1
            clean = all(
                run.get(k) for k in ("children_reaped", "leases_released", "terminal_restored")
            )
            entry["clean"] += clean
            entry["exits"].add(str(run.get("exit")))
            entry["children"].add(run.get("children"))
            if not clean or not run.get("exit_right"):
                unclean.append({"run": root.name, **run})
    runs = list(per_path.values())
    total = sum(r["runs"] for r in runs)
    clean_runs = sum(r["clean"] for r in runs)
    emit(
        out,
        "chaos",
        case="exit_paths",
        runs=total,
        clean=clean_runs,
        clean_percent=round(100 * clean_runs / total, 1),
        exit_codes_right=total - sum(1 for u in unclean if not u.get("exit_right")),
        # Per path: runs, clean runs, the exit codes seen, and how many Codex
        # children the runs had started when they ended (0: stopped early).
        paths={
            k: {**v, "exits": sorted(v["exits"]), "children": sorted(v["children"], key=str)}
            for k, v in per_path.items()
        },
        problems=unclean,
    )


# -- appserver_sigkill and broker -------------------------------------------------------------


async def _settle(waiters: Sequence[asyncio.Future[Any]]) -> tuple[int, list[Any]]:
    """How many ``waiters`` returned (not raised) within PATIENCE / 2, and what each came to.

    A waiter still pending then is cancelled and counts as not settled.
    """
    _, pending = await asyncio.wait(waiters, timeout=PATIENCE / 2) if waiters else ((), ())
    for task in pending:
        task.cancel()
    outcomes: list[Any] = []
    for task in waiters:
        if task in pending:
            outcomes.append("hung")
        elif task.exception() is not None:
            outcomes.append(f"raised {type(task.exception()).__name__}")
        else:
            outcomes.append(task.result())
    return sum(1 for o in outcomes if not isinstance(o, str)), outcomes


def _world(backend: FakeCodexBackend, root: Path) -> tuple[Path, dict[str, str], Path]:
    """A logged-in CODEX_HOME on ``backend``, its environment and a work folder."""
    backend.add_account("chaos")
    home = backend.write_codex_home(root / "home", "chaos")
    work = root / "work"
    work.mkdir()
    return home, hermetic_env(home, root, backend), work


async def bench_appserver(out: Any, args: argparse.Namespace, rng: random.Random) -> None:
    """SIGKILL a real app-server while turns are in flight; every waiter must settle."""
    settled, total, statuses, samples = 0, 0, Counter[str](), []
    with FakeCodexBackend() as backend, tempfile.TemporaryDirectory() as tmp:
        home, env, work = _world(backend, Path(tmp))
        for _ in range(args.appserver_runs):
            client = await AppServerClient.spawn(
                args.codex, codex_home=home, environ=env, args=offline_flags()
            )
            async with client:
                threads = [
                    await client.thread_start({"cwd": str(work)}) for _ in range(args.waiters)
                ]
                backend.script(*[Behaviour.stall(PATIENCE)] * args.waiters, account_id="chaos")
                waiters = [
                    asyncio.ensure_future(run_turn(client, t.id, "hang", stall_timeout=None))
                    for t in threads
                ]
                await asyncio.sleep(rng.uniform(0, 0.5))
                assert client.pid is not None
                killed = time.perf_counter()
                os.killpg(client.pid, signal.SIGKILL)
                count, outcomes = await _settle(waiters)
                samples.append(time.perf_counter() - killed)
            settled += count
            total += len(waiters)
            statuses.update(getattr(o, "status", o) for o in outcomes)
    emit(
        out,
        "chaos",
        case="appserver_sigkill",
        runs=args.appserver_runs,
        waiters=total,
        settled=settled,
        settled_percent=round(100 * settled / max(1, total), 1),
        statuses=dict(statuses),
        all_settled=ms(samples),
    )


ENDINGS = {
    "upstream_sigkill": 1,
    "broker_shutdown": 0,
    "sigterm": 0,
    "sigint": 0,
    "sighup": 0,
    "idle_timeout": 0,
}


async def _broker_run(
    codex: Path, home: Path, env: dict[str, str], work: Path, *, ending: str, rng: random.Random
) -> dict[str, Any]:
    """One broker ended by ``ending``: waiters settled, exit code, what it left behind."""
    with tempfile.TemporaryDirectory(prefix="chaos-", dir="/tmp") as short:
        sock, pid_file = Path(short) / "b.sock", Path(short) / "b.pid"
        # -W: `python -m` on a module its package imports warns at every start.
        argv = ["-W", "ignore::RuntimeWarning:runpy", "-m", "codex_supervisor.appserver.broker"]
        argv += ["--codex", str(codex)]
        argv += ["--codex-home", str(home), "--socket", str(sock), "--pid-file", str(pid_file)]
        argv += ["--idle-timeout", "1" if ending == "idle_timeout" else "120"]
        argv += ["--log-level", "ERROR", "--", *offline_flags()]
        broker = await asyncio.create_subprocess_exec(
            sys.executable,
            *argv,
            env={**env, "PYTHONPATH": str(REPO)},
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
        )
        clients: list[AppServerClient] = []
        try:
            async with asyncio.timeout(PATIENCE):
                while not pid_file.exists():
                    if broker.returncode is not None:
                        return {"exit": broker.returncode, "ready": False}
                    await asyncio.sleep(0.02)
            waiters: list[asyncio.Future[Any]] = []
            upstream = None
            if ending != "idle_timeout":
                clients = [await AppServerClient.connect_unix(sock) for _ in range(3)]
                upstream = (await clients[2].request("broker/ping"))["upstreamPid"]
                thread = await clients[0].thread_start({"cwd": str(work)})
                waiters.append(
                    asyncio.ensure_future(
                        run_turn(clients[0], thread.id, "hang", stall_timeout=None)
                    )
                )
                waiters += [asyncio.ensure_future(c.wait_closed()) for c in clients[1:]]
                await asyncio.sleep(rng.uniform(0, 0.5))
                if ending == "upstream_sigkill":
                    os.killpg(upstream, signal.SIGKILL)
                elif ending == "broker_shutdown":
                    with contextlib.suppress(TransportClosed):
                        await clients[2].request("broker/shutdown")
                else:
                    broker.send_signal(getattr(signal, ending.upper()))
            settled, outcomes = await _settle(waiters)
            code = await asyncio.wait_for(broker.wait(), PATIENCE)
        finally:
            for client in clients:
                await client.aclose()
            if broker.returncode is None:
                broker.kill()
                await broker.wait()
        return {
            "exit": code,
            "waiters": len(waiters),
            "settled": settled,
            "outcomes": sorted({str(getattr(o, "status", type(o).__name__)) for o in outcomes}),
            "files_left": sock.exists() or pid_file.exists(),
            "upstream_left": upstream is not None and _state(upstream) not in (None, "Z"),
        }


async def bench_broker(out: Any, args: argparse.Namespace, rng: random.Random) -> None:
    """Broker endings: waiters settle; exit 1 only when the upstream died."""
    runs: list[dict[str, Any]] = []
    with FakeCodexBackend() as backend, tempfile.TemporaryDirectory() as tmp:
        home, env, work = _world(backend, Path(tmp))
        backend.script(*[Behaviour.stall(PATIENCE)] * 100, account_id="chaos")
        for _ in range(args.broker_runs):
            for ending, expected in ENDINGS.items():
                run = await _broker_run(args.codex, home, env, work, ending=ending, rng=rng)
                runs.append({"ending": ending, "exit_right": run["exit"] == expected, **run})
    waiters = sum(r.get("waiters", 0) for r in runs)
    settled = sum(r.get("settled", 0) for r in runs)
    right = sum(1 for r in runs if r["exit_right"])
    emit(
        out,
        "chaos",
        case="broker",
        runs=len(runs),
        waiters=waiters,
        settled=settled,
        settled_percent=round(100 * settled / max(1, waiters), 1),
        exit_codes_right=right,
        exit_codes_right_percent=round(100 * right / len(runs), 1),
        exits={e: sorted({r["exit"] for r in runs if r["ending"] == e}) for e in ENDINGS},
        files_left=sum(1 for r in runs if r.get("files_left")),
        upstreams_left=sum(1 for r in runs if r.get("upstream_left")),
    )


# -- main ----------------------------------------------------------------------------------------

CASES = ("lease_sigkill", "refresh_rotations", "exit_paths", "appserver_sigkill", "broker")
FULL = {
    "processes": 8,
    "kills": 200,
    "rotations": 100,
    "conversations": 3,
    "real_rotations": 10,
    "exit_runs": 2,
    "appserver_runs": 20,
    "broker_runs": 3,
}
QUICK = {
    "processes": 4,
    "kills": 16,
    "rotations": 6,
    "conversations": 2,
    "real_rotations": 0,
    "exit_runs": 1,
    "appserver_runs": 3,
    "broker_runs": 1,
}


def _parse() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a reduced run (about a minute)")
    parser.add_argument("--seed", type=int, default=None, help="random seed (default: new)")
    parser.add_argument("--codex", type=Path, default=DEFAULT_CODEX, help="the real binary")
    for name, full in FULL.items():
        parser.add_argument(
            f"--{name.replace('_', '-')}",
            type=int,
            default=None,
            help=f"default {full} ({QUICK[name]} with --quick)",
        )
    parser.add_argument("--ttl", type=float, default=0.5, help="lease TTL, seconds")
    parser.add_argument("--hold", type=float, default=0.05, help="longest lease hold, seconds")
    parser.add_argument("--lease-seconds", type=float, default=150.0, help="lease case cap")
    parser.add_argument("--waiters", type=int, default=3, help="turns per killed app-server")
    parser.add_argument(
        "--only", action="append", choices=CASES, help="run only this case (repeatable)"
    )
    args = parser.parse_args()
    for name, value in (QUICK if args.quick else FULL).items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    args.only = set(args.only or CASES)
    if args.seed is None:
        args.seed = random.SystemRandom().randrange(1 << 32)
    return args


def main() -> None:
    if len(sys.argv) == 3 and sys.argv[1] == "--driver":
        sys.exit(_driver(json.loads(sys.argv[2])))
    args = _parse()
    # Killed app-servers and brokers are reported at WARNING: expected here.
    logging.basicConfig(level=logging.ERROR)
    rng = random.Random(args.seed)
    # The JSON lines go to a copy of stdout: fd 1 itself goes to the children's log.
    sys.stdout.flush()
    out = os.fdopen(os.dup(1), "w", encoding="utf-8")
    real = args.codex.is_file()
    emit(
        out,
        "chaos",
        case="setup",
        seed=args.seed,
        quick=args.quick,
        codex=str(args.codex),
        real_codex=real,
    )
    if "lease_sigkill" in args.only:
        bench_lease(out, args, rng)
    with tempfile.TemporaryDirectory(prefix="chaos-") as name:
        if "refresh_rotations" in args.only:
            bench_rotations(out, args, Path(name))
        if "exit_paths" in args.only:
            bench_exit_paths(out, args, Path(name), rng)
    for case, bench in (("appserver_sigkill", bench_appserver), ("broker", bench_broker)):
        if case not in args.only:
            continue
        if real:
            asyncio.run(bench(out, args, rng))
        else:
            emit(out, "chaos", case=case, skipped=f"no Codex binary at {args.codex}")
    peak_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    emit(out, "benchmark_process", peak_rss_mib=round(peak_kib / 1024, 1))
    out.close()


if __name__ == "__main__":
    main()
