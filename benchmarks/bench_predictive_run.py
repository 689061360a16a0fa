"""Predictive rotation end to end: a scripted 20-turn session through the real Supervisor.

Prints one JSON line per shape and policy. Talks only to 127.0.0.1 (a fake backend).

The same seeded sessions as ``bench_predictive.py`` (:func:`session_costs`,
:func:`starting_usage`), in two shapes:

- ``interactive``: one supervised interactive session (``codex`` with no
  arguments, the Codex simulator, which reads one prompt per stdin line) fed
  one prompt per turn, half a second after the previous answer, by a typist
  thread; the child stays on its account until the supervisor rotates it at
  a turn boundary — the shape of the measured defect;
- ``exec``: a real Codex binary (the pinned one when present, else the
  simulator) under one :class:`Supervisor`: the first turn is ``codex exec
  PROMPT``, every later one ``codex exec resume <id> PROMPT`` on the account
  the supervisor chooses for it. Before each turn every account's next
model request is scripted to cost that turn's model cost
(``FakeCodexBackend.set_request_costs``); after it, the account that served
it is charged the turn's side cost behind the rollout's back (``set_quota``):
spend the session's rollout never shows, as the TUI's title request or
another client on the same account. The backend refuses a request on an
account at 100 % with ``429 usage_limit_reached``; its request log is the
count. One model request stands for a whole turn here, and the backend
serves a request that starts below 100 % even when it ends at 100 %, so a
turn that *ends* at the limit (``overran_turns``) would, with the several
requests of a real tool-using turn, have been refused midway: it counts as
a failure too.

Policies: ``learned`` is the library as shipped (the supervisor learns each
account's turn cost and the policy rotates before a turn that will not fit);
``thresholds_only`` is the threshold policy alone (``cost_margin`` near 0,
``pause_when_drained`` off), what wave 1 did. Figures: ``refused_turns`` (429s; the goal is 0),
``turns_run``, ``rotations`` (turns that ended on another account than the
previous one), ``paused_sessions`` (sessions that stopped because no account
could take the next turn: the supervisor would wait for a reset there;
``wait_for_reset`` is off so the benchmark ends instead), and seconds per
turn.

    python benchmarks/bench_predictive_run.py [--codex PATH] [--seeds N] [--turns T]

``--codex`` is the binary of the ``exec`` shape (default: the pinned one, else
the simulator); the interactive shape always plays the simulator.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import os
import statistics
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from _bench import DEFAULT_CODEX, emit, exec_argv, quiet_stdio
from bench_predictive import session_costs, starting_usage

from codex_supervisor.accounts import AccountPool
from codex_supervisor.errors import QuotaUnavailable
from codex_supervisor.policy import RotationPolicy
from codex_supervisor.supervisor import Supervisor, SupervisorConfig
from codex_supervisor.testing import FakeCodexBackend, install_simulator

ACCOUNTS = ("alpha", "beta", "gamma")


#: Wave 1's policy: thresholds only; a learned turn cost changes nothing.
THRESHOLDS_ONLY = RotationPolicy(cost_margin=1e-9, pause_when_drained=False)


def _world(backend: FakeCodexBackend, root: Path, seed: int) -> tuple[AccountPool, dict[str, str]]:
    base = backend.write_codex_home(root / "codex-home")
    pool = AccountPool(root=root / "pool", base_codex_home=base)
    start = starting_usage(seed)
    for name in ACCOUNTS:
        # The backend charges every window the same points: weekly starts
        # empty so the five-hour window binds, as in the simulation.
        backend.add_account(f"{root.name}-{name}", five_hour_used=start[name][0])
        pool.import_auth(name, backend.write_auth(root / f"login-{name}", f"{root.name}-{name}"))
    return pool, {"PATH": "/usr/bin:/bin", "HOME": str(root), **backend.codex_env()}


def _refused(backend: FakeCodexBackend, root: Path) -> int:
    ids = {f"{root.name}-{name}" for name in ACCOUNTS}
    return sum(1 for r in backend.responses_requests() if r.account_id in ids and r.status == 429)


def _served(backend: FakeCodexBackend, root: Path) -> list[str]:
    """The accounts that served a model request (200), in order."""
    prefix = f"{root.name}-"
    return [
        r.account_id.removeprefix(prefix)
        for r in backend.responses_requests()
        if r.account_id is not None and r.account_id.startswith(prefix) and r.status == 200
    ]


def _at_limit(backend: FakeCodexBackend, account_id: str) -> bool:
    return backend.account(account_id).windows[0].used_percent >= 100.0


def _charge_side(backend: FakeCodexBackend, account_id: str, side: float) -> None:
    """Spend behind the rollout's back: only the usage endpoint will see it."""
    account = backend.account(account_id)
    used = account.windows[0].used_percent
    backend.set_quota(account_id, five_hour=min(100.0, used + side))


def _supervised(
    backend: FakeCodexBackend,
    codex: Path,
    root: Path,
    seed: int,
    policy: RotationPolicy | None,
) -> tuple[Supervisor, Path]:
    """A Supervisor on a fresh seeded pool, and the folder its session works in."""
    pool, env = _world(backend, root, seed)
    work = root / "work"
    work.mkdir()
    config = SupervisorConfig(codex=str(codex), poll_interval=0.05, wait_for_reset=False)
    return Supervisor(pool, config=config, policy=policy, environ=env), work


async def _exec_session(
    backend: FakeCodexBackend,
    codex: Path,
    root: Path,
    *,
    seed: int,
    turns: int,
    policy: RotationPolicy | None,
) -> dict[str, Any]:
    sup, work = _supervised(backend, codex, root, seed, policy)
    session: str | None = None
    last: str | None = None
    rotations = ran = overran = 0
    paused = False
    seconds: list[float] = []
    for index, turn in enumerate(session_costs(seed, turns)):
        for name in ACCOUNTS:
            backend.set_request_costs(f"{root.name}-{name}", [turn.model])
        prompt = f"turn {index}"
        argv = exec_argv("resume", session, prompt) if session else exec_argv(prompt)
        began = time.perf_counter()
        try:
            result = await sup.run(argv, cwd=work)
        except QuotaUnavailable:
            paused = True
            break
        seconds.append(time.perf_counter() - began)
        if result.exit_code != 0:
            raise RuntimeError(f"turn {index} of seed {seed} exited {result.exit_code}")
        session = result.session_id or session
        served = result.accounts[-1]
        overran += _at_limit(backend, f"{root.name}-{served}")
        rotations += last is not None and served != last
        last = served
        ran += 1
        if turn.side:
            _charge_side(backend, f"{root.name}-{served}", turn.side)
    return {
        "refused": _refused(backend, root),
        "overran": overran,
        "ran": ran,
        "rotations": rotations,
        "paused": paused,
        "seconds": seconds,
    }


async def _interactive_session(
    backend: FakeCodexBackend,
    codex: Path,
    root: Path,
    *,
    seed: int,
    turns: int,
    policy: RotationPolicy | None,
) -> dict[str, Any]:
    sup, work = _supervised(backend, codex, root, seed, policy)
    costs = session_costs(seed, turns)
    read_end, write_end = os.pipe()
    saved = os.dup(0)
    os.dup2(read_end, 0)
    os.close(read_end)
    stop = threading.Event()
    ran = overran = 0

    def typist() -> None:
        # One prompt per turn, written once the previous answer has arrived
        # and half a second has passed (the supervisor decides meanwhile).
        nonlocal ran, overran
        try:
            for index, turn in enumerate(costs):
                for name in ACCOUNTS:
                    backend.set_request_costs(f"{root.name}-{name}", [turn.model])
                os.write(write_end, f"turn {index}\n".encode())
                while len(_served(backend, root)) <= index:
                    if stop.wait(0.01):
                        return
                ran = index + 1
                served = f"{root.name}-{_served(backend, root)[-1]}"
                overran += _at_limit(backend, served)
                if turn.side:
                    _charge_side(backend, served, turn.side)
                if stop.wait(0.5):
                    return
        finally:
            os.close(write_end)  # EOF: the session ends on its own

    thread = threading.Thread(target=typist, daemon=True)
    thread.start()
    paused = False
    began = time.perf_counter()
    try:
        result = await sup.run([], cwd=work)
        if result.exit_code != 0:
            raise RuntimeError(f"seed {seed}: the session exited {result.exit_code}")
    except QuotaUnavailable:
        paused = True
    finally:
        stop.set()
        thread.join(10)
        os.dup2(saved, 0)
        os.close(saved)
    served = _served(backend, root)
    return {
        "refused": _refused(backend, root),
        "overran": overran,
        "ran": ran,
        "rotations": sum(1 for a, b in itertools.pairwise(served) if a != b),
        "paused": paused,
        "seconds": [(time.perf_counter() - began) / max(1, ran)],
    }


async def bench(codex: Path, simulator: Path, seeds: range, turns: int, out: Any) -> None:
    with tempfile.TemporaryDirectory(prefix="bench-predictive-") as tmp:
        log = Path(tmp) / "children.log"
        with FakeCodexBackend() as backend:
            for shape, binary, play in (
                ("interactive", simulator, _interactive_session),
                ("exec", codex, _exec_session),
            ):
                for mode, policy in (("thresholds_only", THRESHOLDS_ONLY), ("learned", None)):
                    sessions = []
                    for seed in seeds:
                        root = Path(tmp) / f"{shape}-{mode}-{seed}"
                        root.mkdir()
                        with quiet_stdio(log):
                            sessions.append(
                                await play(
                                    backend, binary, root, seed=seed, turns=turns, policy=policy
                                )
                            )
                    per_turn = [s for one in sessions for s in one["seconds"]]
                    emit(
                        out,
                        "predictive_rotation_run",
                        shape=shape,
                        mode=mode,
                        codex=binary.name,
                        seeds=len(sessions),
                        turns_per_session=turns,
                        refused_turns=sum(s["refused"] for s in sessions),
                        overran_turns=sum(s["overran"] for s in sessions),
                        sessions_with_refusal=sum(
                            1 for s in sessions if s["refused"] or s["overran"]
                        ),
                        turns_run=sum(s["ran"] for s in sessions),
                        rotations=sum(s["rotations"] for s in sessions),
                        paused_sessions=sum(1 for s in sessions if s["paused"]),
                        seconds_per_turn_median=round(statistics.median(per_turn), 3),
                    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--codex", type=Path, default=None, help="Codex binary (default: pinned)")
    parser.add_argument("--seeds", type=int, default=5, help="sessions per mode")
    parser.add_argument("--first-seed", type=int, default=0)
    parser.add_argument("--turns", type=int, default=20, help="turns per session")
    args = parser.parse_args()
    simulator = install_simulator(Path(tempfile.mkdtemp(prefix="bench-sim-")))
    codex = args.codex or (DEFAULT_CODEX if DEFAULT_CODEX.is_file() else simulator)
    seeds = range(args.first_seed, args.first_seed + args.seeds)
    out = os.fdopen(os.dup(1), "w")
    asyncio.run(bench(codex, simulator, seeds, args.turns, out))


if __name__ == "__main__":
    main()
