"""How soon does the supervisor see a turn end? From a ``task_complete`` write to its reader.

Prints one JSON line per mode. Talks only to 127.0.0.1 (a fake backend).

An in-process Supervisor runs an interactive session, ``codex [OPTS] "first
prompt"``, on the Codex simulator, whose stdin is a pipe nobody writes to:
after its first turn it idles, holding its rollout open. This script then
appends turns to that rollout itself, from a thread, at random moments:
a ``task_started`` line, 50 ms later a ``task_complete`` line. Each figure is
the time from just before the ``task_complete`` write to the supervisor's
"turn ended" record (the DEBUG line its follow loop logs when its rollout
reader returns the ``TurnCompleted``).

Modes: ``follow_watch`` (the default: woken by the rollout write) and
``follow_poll`` (``watch_files=False``: a look every ``poll_interval``).

``hook_run``: what the supervisor's session hook costs Codex per event, which
it waits for (a ``Stop`` hook runs before every ``task_complete``): the hook
command run through ``sh -c`` as Codex runs it, a Stop payload with a 4 KB
answer on stdin, until it exits.

    python benchmarks/bench_follow.py [--turns N] [--poll-interval S] [--mode watch|poll]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import random
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from _bench import account_pool, emit, ms, quiet_stdio

from codex_supervisor.events import CollectingSink, SessionBound
from codex_supervisor.hooks import HookInbox, hook_command
from codex_supervisor.process import Child, launch
from codex_supervisor.supervisor import Supervisor, SupervisorConfig
from codex_supervisor.testing import (
    FakeCodexBackend,
    hermetic_env,
    install_simulator,
    offline_flags,
)


class _TurnsSeen(logging.Handler):
    """Keeps the time of every "turn ended" record of the supervisor's follow loop."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.at: list[float] = []
        self.seen = threading.Condition()

    def emit(self, record: logging.LogRecord) -> None:
        if record.msg.startswith("turn ended"):
            with self.seen:
                self.at.append(record.created)
                self.seen.notify_all()

    def wait_for(self, count: int, timeout: float) -> None:
        with self.seen:
            if not self.seen.wait_for(lambda: len(self.at) >= count, timeout=timeout):
                raise RuntimeError(f"the supervisor saw {len(self.at)} turn ends, not {count}")


def _line(kind: str, turn: str, **payload: object) -> bytes:
    now = datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
    body = {"type": kind, "turn_id": turn, **payload}
    return (json.dumps({"timestamp": now, "type": "event_msg", "payload": body}) + "\n").encode()


def _append_turns(rollout: Path, seen: _TurnsSeen, turns: int, rng: random.Random) -> list[float]:
    """Append ``turns`` turns to ``rollout``; the write-to-seen delay of each turn's end."""
    delays = []
    fd = os.open(rollout, os.O_WRONLY | os.O_APPEND)
    try:
        for _ in range(turns):
            # A random phase against any poll the supervisor may run.
            time.sleep(rng.uniform(0.3, 0.8))
            turn = uuid.uuid4().hex
            before = len(seen.at)
            os.write(fd, _line("task_started", turn))
            time.sleep(0.05)
            written = time.time()
            os.write(fd, _line("task_complete", turn, last_agent_message="done"))
            seen.wait_for(before + 1, timeout=30)
            delays.append(seen.at[before] - written)
    finally:
        os.close(fd)
    return delays


async def _one_mode(
    backend: FakeCodexBackend, codex: Path, tmp: Path, *, watch: bool, args: argparse.Namespace
) -> list[float]:
    pool, _ = account_pool(
        backend, tmp, {"alpha": {"per_request_percent": 1}, "beta": {"five_hour_used": 10.0}}
    )
    work = tmp / "work"
    work.mkdir()
    read_end, write_end = os.pipe()  # the child's stdin: never written, so it idles

    async def idle_stdin(argv: Sequence[str], **kw: Any) -> Child:
        return await launch(argv, **{**kw, "stdin": read_end})

    sink = CollectingSink()
    config = SupervisorConfig(
        codex=str(codex), poll_interval=args.poll, watch_files=watch, quota_stale_after=3600.0
    )
    env: Mapping[str, str] = hermetic_env(pool.base_codex_home, tmp, backend)
    supervisor = Supervisor(pool, config=config, sink=sink, environ=env, launcher=idle_stdin)
    seen = _TurnsSeen()
    logger = logging.getLogger("codex_supervisor.supervisor")
    logger.addHandler(seen)
    logger.setLevel(logging.DEBUG)
    run = asyncio.create_task(supervisor.run([*offline_flags(), "first prompt"], cwd=work))
    try:
        await asyncio.to_thread(seen.wait_for, 1, 60)  # the first turn ended: idle now
        [bound] = [e for e in sink.events if isinstance(e, SessionBound)]
        rng = random.Random(args.seed)
        delays = await asyncio.to_thread(_append_turns, Path(bound.path), seen, args.turns, rng)
        supervisor.request_stop()
        await run
    finally:
        logger.removeHandler(seen)
        if not run.done():
            run.cancel()
        os.close(read_end)
        os.close(write_end)
    return delays


def main() -> None:
    defaults = SupervisorConfig()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--turns", type=int, default=20)
    parser.add_argument("--poll-interval", type=float, default=defaults.poll_interval, dest="poll")
    parser.add_argument("--mode", choices=["watch", "poll"], action="append")
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    modes = args.mode or ["watch", "poll"]
    out = sys.stdout
    with tempfile.TemporaryDirectory() as name, FakeCodexBackend() as backend:
        tmp = Path(name)
        codex = install_simulator(tmp / "bin")
        for mode in modes:
            root = tmp / mode
            root.mkdir()
            with quiet_stdio(tmp / f"{mode}.log"):
                delays = asyncio.run(
                    _one_mode(backend, codex, root, watch=mode == "watch", args=args)
                )
            emit(
                out,
                f"follow_{mode}",
                turns=len(delays),
                poll_interval_s=args.poll,
                task_complete_to_seen=ms(delays),
            )
        emit(out, "hook_run", runs=args.turns, hook_run=ms(_hook_runs(tmp, args.turns)))


def _hook_runs(tmp: Path, runs: int) -> list[float]:
    """Seconds each run of the session hook takes, payload in and exit, as Codex waits for it."""
    inbox = HookInbox(tmp)
    command = hook_command(inbox.path)
    if command is None:
        raise SystemExit("no Python to run the hook with")
    payload = json.dumps(
        {
            "session_id": str(uuid.uuid4()),
            "turn_id": str(uuid.uuid4()),
            "transcript_path": str(tmp / "rollout.jsonl"),
            "cwd": str(tmp),
            "hook_event_name": "Stop",
            "model": "gpt-5-codex",
            "permission_mode": "default",
            "stop_hook_active": False,
            "last_assistant_message": "x" * 4096,
        }
    ).encode()
    took = []
    for _ in range(runs):
        start = time.perf_counter()
        subprocess.run(["/bin/sh", "-c", command], input=payload, check=True)
        took.append(time.perf_counter() - start)
    if len(inbox.read()) != runs:
        raise SystemExit("the hook did not record every run")
    inbox.close()
    return took


if __name__ == "__main__":
    main()
