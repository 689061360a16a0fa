"""What does an idle supervised session cost? CPU, memory, wake-ups and backend requests.

Prints one JSON line. Talks only to 127.0.0.1 (a fake backend).

A supervisor process (this script with ``--driver``) runs an interactive
session, ``codex [OPTS] "first prompt"``, on a pool of accounts. Its stdin is
a pipe this script keeps open and never writes to, and the interactive child
inherits it: after the first turn Codex waits for a prompt that never comes.
Once the session is bound and the first turn answered, the supervisor idles
for ``--seconds``; then it gets SIGTERM and must exit 143.

Figures for the supervisor process over the idle window:

- ``cpu_s`` / ``cpu_percent``: utime+stime from ``/proc/<pid>/stat`` (all
  its threads);
- ``peak_rss_mib``: ``VmHWM`` from ``/proc/<pid>/status`` at the window's end;
- ``wakeups_per_s``: voluntary + involuntary context switches of all its
  threads (``/proc/<pid>/task/*/status``), delta over the window divided by
  its length. This approximates wake-ups: every sleep that ends (a poll
  timeout, a ready descriptor) is one voluntary switch, and preemptions add
  involuntary ones; switches of threads that ended within the window are
  not counted;
- ``usage_requests_per_hour``: usage-endpoint requests the supervisor made
  (its User-Agent) in the window, scaled to an hour. An idle session's quota
  is refreshed every ``quota_stale_after`` seconds (120 by default), so a
  window shorter than that may see none;
- ``idle_model_requests``: ``/v1/responses`` requests in the window (must be 0).

    python benchmarks/bench_overhead.py [--seconds S] [--codex PATH] [--poll-interval S]
        [--safety-poll S] [--no-watch] [--lease-ttl S]

By default the supervisor sleeps until the rollout or the pool state is
written, looking anyway every ``--safety-poll`` seconds; ``--no-watch``
measures the plain poll every ``--poll-interval`` seconds instead.

``--codex`` defaults to the Codex simulator, whose interactive mode reads
prompts from stdin; the real TUI needs a terminal and does not fit here.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from codex_supervisor.accounts import AccountPool
from codex_supervisor.events import Event
from codex_supervisor.supervisor import Supervisor, SupervisorConfig
from codex_supervisor.testing import (
    FakeCodexBackend,
    hermetic_env,
    install_simulator,
    offline_flags,
)

USAGE_PATHS = frozenset({"/backend-api/wham/usage", "/api/codex/usage"})
RESPONSES_PATHS = frozenset({"/v1/responses", "/responses"})
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def _emit(name: str, **figures: object) -> None:
    print(json.dumps({"benchmark": name, **figures}), flush=True)


# -- the supervisor process -------------------------------------------------------------


def _driver(cfg: dict[str, Any]) -> int:
    """Run the supervised session; record events and, at exit, its own rusage."""
    pool = AccountPool(root=Path(cfg["pool"]), base_codex_home=Path(cfg["base"]))
    with Path(cfg["events"]).open("a", buffering=1, encoding="utf-8") as log:

        def sink(event: Event) -> None:
            log.write(json.dumps({"name": event.name, "at": event.at.timestamp()}) + "\n")

        config = SupervisorConfig(
            codex=cfg["codex"],
            poll_interval=cfg["poll_interval"],
            quota_stale_after=cfg["quota_stale_after"],
            watch_files=cfg["watch_files"],
            safety_poll=cfg["safety_poll"],
            lease_ttl=cfg["lease_ttl"],
        )
        supervisor = Supervisor(pool, config=config, sink=sink, environ=cfg["env"])
        code = supervisor.run_sync(cfg["argv"], cwd=cfg["cwd"]).exit_code
    usage = resource.getrusage(resource.RUSAGE_SELF)
    result = {"exit": code, "cpu_s": usage.ru_utime + usage.ru_stime, "maxrss_kib": usage.ru_maxrss}
    Path(cfg["result"]).write_text(json.dumps(result), encoding="utf-8")
    return code


# -- measuring it -------------------------------------------------------------------------


def _cpu_seconds(pid: int) -> float:
    stat = Path(f"/proc/{pid}/stat").read_text()
    # Fields after the command name (which may hold spaces) start at field 3.
    fields = stat[stat.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def _status_field(path: Path, key: str) -> int:
    for line in path.read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    raise KeyError(f"{key} not in {path}")


def _context_switches(pid: int) -> int:
    total = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        status = task / "status"
        try:
            total += _status_field(status, "voluntary_ctxt_switches")
            total += _status_field(status, "nonvoluntary_ctxt_switches")
        except (OSError, KeyError):
            continue  # the thread ended meanwhile
    return total


def _events(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.endswith("}")]


def _wait_until_idle(
    proc: subprocess.Popen[bytes], events: Path, backend: FakeCodexBackend, timeout: float
) -> None:
    """Wait for the bound session and its answered first turn."""
    deadline = time.monotonic() + timeout
    while True:
        names = {e["name"] for e in _events(events)}
        answered = any(r.path in RESPONSES_PATHS and r.status == 200 for r in backend.requests)
        if "session_bound" in names and answered:
            return
        if proc.poll() is not None:
            raise RuntimeError(f"the supervisor exited early with {proc.returncode}: {names}")
        if time.monotonic() > deadline:
            raise RuntimeError(f"the session did not settle within {timeout}s: {names}")
        time.sleep(0.05)


def bench_idle(args: argparse.Namespace, tmp: Path) -> None:
    with FakeCodexBackend() as backend:
        codex = args.codex or install_simulator(tmp / "bin")
        base = backend.write_codex_home(tmp / "codex-home")
        pool = AccountPool(root=tmp / "pool", base_codex_home=base)
        for i in range(args.accounts):
            backend.add_account(f"id-{i}", five_hour_used=10.0 * i, per_request_percent=1)
            pool.import_auth(f"acct{i}", backend.write_auth(tmp / f"login-{i}", f"id-{i}"))
        work = tmp / "work"
        work.mkdir()
        events, result = tmp / "events.jsonl", tmp / "result.json"
        cfg = {
            "pool": str(pool.root),
            "base": str(base),
            "codex": str(codex),
            "events": str(events),
            "result": str(result),
            "env": hermetic_env(base, tmp, backend),
            "argv": [*offline_flags(), "first prompt"],
            "cwd": str(work),
            "poll_interval": args.poll,
            "quota_stale_after": args.quota_stale_after,
            "watch_files": args.watch_files,
            "safety_poll": args.safety_poll,
            "lease_ttl": args.lease_ttl,
        }
        child_log = (tmp / "supervisor.log").open("wb")
        read_end, write_end = os.pipe()
        proc = subprocess.Popen(
            [sys.executable, __file__, "--driver", json.dumps(cfg)],
            stdin=read_end,
            stdout=child_log,
            stderr=child_log,
        )
        os.close(read_end)  # ours stays open (never written): the child idles on it
        try:
            _wait_until_idle(proc, events, backend, timeout=60)
            time.sleep(0.5)  # let the turn's last rollout lines be read
            pid = proc.pid
            started, cpu0, switches0 = time.time(), _cpu_seconds(pid), _context_switches(pid)
            time.sleep(args.seconds)
            ended, cpu1, switches1 = time.time(), _cpu_seconds(pid), _context_switches(pid)
            peak_kib = _status_field(Path(f"/proc/{pid}/status"), "VmHWM")
            proc.send_signal(signal.SIGTERM)
            code = proc.wait(timeout=30)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            os.close(write_end)
            child_log.close()
        if code != 143:
            log = (tmp / "supervisor.log").read_text(errors="replace")[-3000:]
            raise RuntimeError(f"the supervisor exited {code}, not 143, on SIGTERM:\n{log}")
        window = [r for r in backend.requests if started <= r.at <= ended]
        usage = [r for r in window if r.path in USAGE_PATHS]
        ours = [r for r in usage if r.headers.get("user-agent", "").startswith("codex_supervisor")]
        elapsed = ended - started
        final = json.loads(result.read_text())
        _emit(
            "supervisor_idle_overhead",
            seconds=round(elapsed, 2),
            codex=str(args.codex) if args.codex else "simulator",
            accounts=args.accounts,
            poll_interval_s=args.poll,
            watch_files=args.watch_files,
            safety_poll_s=args.safety_poll,
            lease_ttl_s=args.lease_ttl,
            quota_stale_after_s=args.quota_stale_after,
            cpu_s=round(cpu1 - cpu0, 3),
            cpu_percent=round(100 * (cpu1 - cpu0) / elapsed, 3),
            peak_rss_mib=round(peak_kib / 1024, 1),
            wakeups_per_s=round((switches1 - switches0) / elapsed, 1),
            usage_requests=len(ours),
            usage_requests_per_hour=round(len(ours) * 3600 / elapsed, 1),
            other_usage_requests=len(usage) - len(ours),
            idle_model_requests=sum(r.path in RESPONSES_PATHS for r in window),
            idle_requests_by_path={
                p: sum(r.path == p for r in window) for p in {r.path for r in window}
            },
            exit_code=code,
            total_cpu_s=round(final["cpu_s"], 3),
        )


def main() -> None:
    if len(sys.argv) == 3 and sys.argv[1] == "--driver":
        sys.exit(_driver(json.loads(sys.argv[2])))
    defaults = SupervisorConfig()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=60.0, help="length of the idle window")
    parser.add_argument(
        "--codex", type=Path, default=None, help="a codex that idles on stdin (the simulator)"
    )
    parser.add_argument("--accounts", type=int, default=2)
    parser.add_argument("--poll-interval", type=float, default=defaults.poll_interval, dest="poll")
    parser.add_argument(
        "--safety-poll", type=float, default=defaults.safety_poll, dest="safety_poll"
    )
    parser.add_argument(
        "--lease-ttl",
        type=float,
        default=defaults.lease_ttl,
        dest="lease_ttl",
        help="the occupancy lease's TTL; it is renewed (a small write) at a third of it",
    )
    parser.add_argument(
        "--no-watch",
        action="store_false",
        dest="watch_files",
        help="poll every --poll-interval instead of waking on rollout writes",
    )
    parser.add_argument(
        "--quota-stale-after",
        type=float,
        default=defaults.quota_stale_after,
        dest="quota_stale_after",
    )
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as name:
        bench_idle(args, Path(name))


if __name__ == "__main__":
    main()
