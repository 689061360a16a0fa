"""Waiting for a reset, end to end: the real Codex CLI 0.169.0, the fake backend, real processes.

Each test blocks accounts with cooldowns whose backend quota agrees with them
(an exhausted window, or a reset no later than the block), so that the free
usage probes a wait makes can neither lift a block early nor add one.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import termios
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from codex_supervisor.accounts import AccountPool, Cooldown
from codex_supervisor.events import (
    ChildLaunched,
    CollectingSink,
    Event,
    Resumed,
    Rotating,
    WaitingForReset,
)
from codex_supervisor.quota import UsageEndpointSource
from codex_supervisor.snapshots import WindowKind
from codex_supervisor.supervisor import RunResult, Supervisor, SupervisorConfig
from codex_supervisor.testing import (
    Behaviour,
    FakeCodexBackend,
    PtyProcess,
    hermetic_env,
    offline_flags,
)

pytestmark = [pytest.mark.real_codex]

REPO = Path(__file__).resolve().parents[2]
CLI = REPO / "examples" / "cli.py"
TEN_MINUTES = 600


def _at(epoch: float) -> datetime:
    return datetime.fromtimestamp(epoch, UTC)


def _exec(*rest: str) -> list[str]:
    return ["exec", "--skip-git-repo-check", *offline_flags(), *rest]


class WaitWorld:
    """A pool of accounts on a fake backend with the real binary (cf. test_supervisor_real)."""

    def __init__(self, root: Path, backend: FakeCodexBackend, codex: Path) -> None:
        self.root = root
        self.backend = backend
        self.codex = codex
        self.base = root / "codex-home"
        backend.write_codex_home(self.base)
        self.pool = AccountPool(root=root / "pool", base_codex_home=self.base)
        self.work = root / "work"
        self.work.mkdir()
        self.sink = CollectingSink()
        self.env = hermetic_env(self.base, root, backend)

    def add(self, name: str, **quota: Any) -> None:
        self.backend.add_account(f"id-{name}", **quota)
        self.pool.import_auth(
            name, self.backend.write_auth(self.root / f"login-{name}", f"id-{name}")
        )

    def block(self, name: str, until: int, *, used: float) -> None:
        """A five-hour cooldown until ``until``; the backend's window agrees with it.

        The backend's five-hour window resets at ``until`` too, so a usage
        probe shows the same period: it does not lift the block (only a
        later period does), and ``used`` decides whether it looks exhausted.
        """
        self.backend.set_quota(f"id-{name}", five_hour=used, five_hour_resets_at=until)
        self.pool.set_cooldown(
            name,
            window=WindowKind.FIVE_HOUR,
            blocked_until=_at(until),
            reason=f"test: {name} blocked until {_at(until):%H:%M:%S} UTC",
        )

    def supervisor(self, sink: Callable[[Event], None] | None = None, **config: Any) -> Supervisor:
        settings = {"codex": str(self.codex), "poll_interval": 0.05, **config}
        return Supervisor(
            self.pool,
            config=SupervisorConfig(**settings),
            sink=sink or self.sink,
            environ=self.env,
        )

    def cli(self, *args: str) -> list[str]:
        """``examples/cli.py`` on this pool and binary."""
        return [
            sys.executable,
            str(CLI),
            "--pool",
            str(self.pool.root),
            "--codex-home",
            str(self.base),
            "--codex",
            str(self.codex),
            *args,
        ]


@pytest.fixture
def world(tmp_path: Path, backend: FakeCodexBackend, codex_bin: Path) -> WaitWorld:
    return WaitWorld(tmp_path, backend, codex_bin)


def _poll(predicate: Callable[[], object], timeout: float, what: Callable[[], str]) -> None:
    """Wait until ``predicate()`` is true, failing with ``what()`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout}s waiting: {what()}")
        time.sleep(0.02)


async def _apoll(predicate: Callable[[], object], within: float, what: Callable[[], str]) -> None:
    deadline = time.monotonic() + within
    while not predicate():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {within}s waiting: {what()}")
        await asyncio.sleep(0.02)


def _waits(sink: CollectingSink) -> list[str]:
    return [e.reason for e in sink.of(WaitingForReset) if isinstance(e, WaitingForReset)][-3:]


# -- (a) the current account's own reset comes first ---------------------------------------


@pytest.mark.anyio
async def test_wait_includes_the_current_account_and_resumes_the_same_session_there(
    world: WaitWorld,
) -> None:
    """A 429 on alpha, beta blocked 10 min: the run waits for alpha's reset, resumes there."""
    beta_reset = int(time.time()) + TEN_MINUTES
    world.add("alpha", five_hour_used=99)  # usable at start: 1 % left
    world.add("beta")
    world.block("beta", beta_reset, used=100)
    world.backend.script(Behaviour.usage_limit(), account_id="id-alpha")
    alpha_reset: list[int] = []
    blocks_while_waiting: list[tuple[Cooldown, ...]] = []

    def sink(event: Event) -> None:
        world.sink(event)
        if isinstance(event, ChildLaunched) and not alpha_reset:
            # alpha's window resets a few seconds after Codex starts on it:
            # Codex needs well over 0.3 s before its first request, so the
            # 429 always names a reset still ahead, however loaded the machine.
            alpha_reset.append(int(time.time()) + 6)
            world.backend.set_quota("id-alpha", five_hour_resets_at=alpha_reset[0])
        if isinstance(event, WaitingForReset) and not blocks_while_waiting:
            # What the 429 left on record, read before the reset can lift it.
            blocks_while_waiting.append(world.pool.get("alpha").cooldowns)

    try:
        async with asyncio.timeout(90):  # alpha's reset is seconds away; beta's 10 minutes
            result = await world.supervisor(sink).run(_exec("finish the job"), cwd=world.work)
    except TimeoutError:
        pytest.fail(
            f"still waiting after 90 s: {_waits(world.sink)}; alpha: {blocks_while_waiting}"
        )

    # What the 429 left on record: alpha's own five-hour reset, not a guess.
    [reset] = alpha_reset
    [[block]] = blocks_while_waiting
    assert block.window is WindowKind.FIVE_HOUR, block
    assert block.blocked_until == _at(reset)
    waits = world.sink.of(WaitingForReset)
    assert waits, world.sink.names
    for wait in waits:
        assert isinstance(wait, WaitingForReset)
        assert abs(wait.until.timestamp() - reset) <= 2, (
            f"waited until {wait.until} for alpha's reset at {_at(reset)}: {wait.reason}"
        )
        assert wait.until.timestamp() < beta_reset - 60  # never beta's reset

    requests = world.backend.responses_requests()
    assert [(r.account_id, r.status) for r in requests] == [("id-alpha", 429), ("id-alpha", 200)]
    assert requests[0].session_id == requests[1].session_id == result.session_id
    assert result.session_id is not None
    assert result == RunResult(
        exit_code=0,
        session_id=result.session_id,
        accounts=("alpha", "alpha"),
        rotations=1,
        signal=None,
    )
    # The resumed request could only start once alpha's block was over.
    assert requests[1].at >= reset - 1
    [rotating] = world.sink.of(Rotating)
    assert isinstance(rotating, Rotating)
    assert (rotating.from_account, rotating.to_account) == ("alpha", "alpha")
    [resumed] = world.sink.of(Resumed)
    assert isinstance(resumed, Resumed)
    assert resumed.session_id == result.session_id
    alpha = world.pool.get("alpha")
    assert [c for c in alpha.cooldowns if c.window is WindowKind.OTHER] == []
    world.backend.assert_no_replay()


# -- (b) another process frees an account during the wait ----------------------------------

_CLEAR = r"""
import sys
from pathlib import Path
from codex_supervisor.accounts import AccountPool

pool = AccountPool(root=Path(sys.argv[1]), base_codex_home=Path(sys.argv[2]))
print(len(pool.clear_cooldowns(sys.argv[3])), flush=True)
"""


@pytest.mark.anyio
async def test_a_cooldown_lifted_by_another_process_ends_the_wait(world: WaitWorld) -> None:
    """Every account blocked 10 min; another process lifts beta's block: the run starts on beta."""
    until = int(time.time()) + TEN_MINUTES
    world.add("alpha")
    world.add("beta")
    # Room in the window (the probe says so) but blocked: only the lift frees beta.
    world.block("alpha", until, used=10)
    world.block("beta", until + 60, used=20)
    task = asyncio.create_task(world.supervisor().run(_exec("go on when you can"), cwd=world.work))
    try:
        await _apoll(
            lambda: world.sink.of(WaitingForReset) or task.done(),
            60,
            lambda: f"a WaitingForReset event; events so far: {world.sink.names}",
        )
        assert not task.done(), task.result()
        lifting = time.time()
        cleared = await asyncio.to_thread(
            subprocess.run,
            [sys.executable, "-c", _CLEAR, str(world.pool.root), str(world.base), "beta"],
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        )
        assert int(cleared.stdout) == 1  # beta's one cooldown
        try:
            async with asyncio.timeout(60):  # far below the 10 minutes the blocks last
                result = await task
        except TimeoutError:
            pytest.fail(f"the lift did not end the wait: {_waits(world.sink)}")
    finally:
        if not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
    assert result.exit_code == 0
    assert result.accounts == ("beta",)
    assert result.rotations == 0
    requests = world.backend.responses_requests()
    assert [(r.account_id, r.status) for r in requests] == [("id-beta", 200)]
    assert requests[0].session_id == result.session_id
    [launched] = world.sink.of(ChildLaunched)
    assert isinstance(launched, ChildLaunched)
    assert launched.account == "beta"
    assert launched.at.timestamp() >= lifting  # only the lift let it start
    for wait in world.sink.of(WaitingForReset):
        assert isinstance(wait, WaitingForReset)
        assert abs(wait.until.timestamp() - until) <= 2  # the earliest block: alpha's
    # alpha's block was not touched.
    [alpha_block] = world.pool.get("alpha").cooldowns
    assert alpha_block.blocked_until == _at(until)


# -- (c) an interactive wait ends on Ctrl-C (130) and SIGTERM (143) ------------------------


@pytest.mark.parametrize(
    ("stop", "expected", "verbose"),
    [("ctrl-c", 130, []), ("sigterm", 143, []), ("ctrl-c", 130, ["-v"])],
)
def test_interactive_wait_ends_on_ctrl_c_or_sigterm_with_the_terminal_untouched(
    world: WaitWorld, stop: str, expected: int, verbose: list[str]
) -> None:
    """`cli.py run -- PROMPT` in a pty waits; Ctrl-C → 130, SIGTERM → 143; no Codex, tty intact."""
    until = int(time.time()) + TEN_MINUTES
    world.add("alpha")
    world.add("beta")
    world.block("alpha", until, used=100)
    world.block("beta", until + 60, used=100)
    argv = world.cli(*verbose, "run", "--", "--no-alt-screen", *offline_flags(), "wait for me")
    env = dict(world.env, TERM="xterm-256color")
    with PtyProcess(argv, env=env, cwd=world.work) as tui:
        # The pty's slave side, opened by path: its settings are what the
        # user's terminal would be left with.
        slave = os.open(Path(f"/proc/{tui.pid}/fd/0").readlink(), os.O_RDWR | os.O_NOCTTY)
        try:
            before = termios.tcgetattr(slave)
            # The live countdown on a terminal, or (-v) the event's line.
            tui.expect(r"every account is blocked; waiting \d+m", timeout=60)
            if stop == "ctrl-c":
                tui.write(b"\x03")  # the line discipline sends SIGINT to the foreground group
            else:
                tui.send_signal(signal.SIGTERM)
            code = tui.wait(timeout=30)
            after = termios.tcgetattr(slave)
        finally:
            os.close(slave)
        screen = tui.text
        raw = tui.raw_output
    assert code == expected, screen[-3000:]
    assert after == before
    for flag in (termios.ICANON, termios.ECHO, termios.ISIG):
        assert after[3] & flag
    # No Codex ever ran: the backend saw only the supervisor's usage probes
    # (a TUI would ask for /wham/accounts/check and send the prompt), and no
    # TUI escape sequence reached the terminal.
    paths = {r.path for r in world.backend.requests}
    assert paths <= {"/backend-api/wham/usage"}, paths
    assert world.backend.responses_requests() == []
    assert "started codex" not in screen
    assert b"\x1b[?2004h" not in raw
    assert b"\x1b[?1049h" not in raw
    assert "Traceback" not in screen
    assert asyncio.run(world.pool.occupants("alpha")) == []


# -- (d) two concurrent sessions hit their limits on a shared pool --------------------------

_DRIVER = r"""
import asyncio, json, sys, time
from pathlib import Path
from codex_supervisor.accounts import AccountPool
from codex_supervisor.policy import RotationPolicy
from codex_supervisor.process import launch
from codex_supervisor.supervisor import Supervisor, SupervisorConfig

cfg = json.loads(sys.argv[1])
pool = AccountPool(root=Path(cfg["pool"]), base_codex_home=Path(cfg["base"]))
log = open(cfg["events"], "a", buffering=1)

def sink(event):
    record = {"name": event.name, "at": event.at.timestamp()}
    for key in ("account", "from_account", "to_account", "session_id", "pid", "returncode"):
        if hasattr(event, key):
            record[key] = getattr(event, key)
    if hasattr(event, "until"):
        record["until"] = event.until.timestamp()
    log.write(json.dumps(record) + "\n")
    if event.name == "child_exited":
        Path(cfg["exited"]).touch()

async def gate(paths, what):
    deadline = time.monotonic() + 60
    while not all(Path(p).exists() for p in paths):
        if time.monotonic() > deadline:
            raise RuntimeError(f"gave up waiting for {what}")
        await asyncio.sleep(0.02)

launches = 0

async def launcher(argv, *, env, cwd=None, stdin=None, **kw):
    global launches
    launches += 1
    if launches == 1:
        # Every run has chosen its first account before any Codex starts.
        Path(cfg["ready"]).touch()
        await gate(cfg["all_ready"], "every run to be ready")
    elif launches == 2:
        # No run moves on before every first request was answered.
        await gate(cfg["all_exited"], "every first child to exit")
    return await launch(argv, env=env, cwd=cwd, stdin=stdin, **kw)

sup = Supervisor(
    pool,
    config=SupervisorConfig(codex=cfg["codex"], poll_interval=0.05),
    sink=sink,
    environ=cfg["env"],
    launcher=launcher,
    policy=RotationPolicy(strategy="drain", drain_order=cfg["order"]),
)
result = sup.run_sync(cfg["argv"], cwd=cfg["cwd"])
Path(cfg["result"]).write_text(json.dumps({
    "exit_code": result.exit_code,
    "session_id": result.session_id,
    "accounts": list(result.accounts),
    "rotations": result.rotations,
}))
"""


def _events(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _waiting(path: Path) -> bool:
    """Whether the run logged to ``path`` waits, after its last child ended."""
    names = [e["name"] for e in _events(path)]
    if "waiting_for_reset" not in names or "child_exited" not in names:
        return False

    def last(name: str) -> int:
        return max(i for i, n in enumerate(names) if n == name)

    return last("waiting_for_reset") > max(last("child_exited"), last("child_launched"))


async def _probe_into_pool(pool: AccountPool, names: list[str]) -> None:
    source = UsageEndpointSource(pool.usage_credentials)
    try:
        for name in names:
            pool.record_snapshot(await source.fetch(name))
    finally:
        await source.aclose()


class ConcurrentRuns:
    """Supervised runs, one driver process each, on one pool; killed on exit if still running."""

    def __init__(self, world: WaitWorld, root: Path, orders: dict[str, list[str]]) -> None:
        self.world = world
        self.root = root
        self.orders = orders
        self.procs: dict[str, subprocess.Popen[bytes]] = {}

    def _file(self, kind: str, run: str, suffix: str = "") -> Path:
        return self.root / f"{kind}-{run}{suffix}"

    def start(self) -> None:
        script = self.root / "driver.py"
        script.write_text(_DRIVER)
        ready = [str(self._file("ready", run)) for run in self.orders]
        exited = [str(self._file("exited", run)) for run in self.orders]
        for index, (run, order) in enumerate(self.orders.items()):
            cfg = {
                "pool": str(self.world.pool.root),
                "base": str(self.world.base),
                "codex": str(self.world.codex),
                "env": self.world.env,
                "argv": _exec(f"job {run}"),
                "cwd": str(self.world.work),
                "order": order,
                "events": str(self._file("events", run, ".jsonl")),
                "result": str(self._file("result", run, ".json")),
                "ready": ready[index],
                "all_ready": ready,
                "exited": exited[index],
                "all_exited": exited,
            }
            with self._file("out", run, ".log").open("wb") as out:
                self.procs[run] = subprocess.Popen(
                    [sys.executable, str(script), json.dumps(cfg)],
                    stdin=subprocess.DEVNULL,
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    cwd=self.world.work,
                )

    def events(self, run: str) -> list[dict[str, Any]]:
        return _events(self._file("events", run, ".jsonl"))

    def result(self, run: str) -> dict[str, Any]:
        data: dict[str, Any] = json.loads(self._file("result", run, ".json").read_text())
        return data

    def report(self) -> str:
        return "\n".join(
            f"{run}: {[e['name'] for e in self.events(run)]}\n"
            + self._file("out", run, ".log").read_text(errors="replace")[-1500:]
            for run in self.orders
        )

    def all_waiting(self) -> bool:
        if any(p.poll() is not None for p in self.procs.values()):
            pytest.fail(f"a run ended while it should wait:\n{self.report()}")
        return all(_waiting(self._file("events", run, ".jsonl")) for run in self.orders)

    def wait(self, within: float) -> None:
        deadline = time.monotonic() + within
        for run, proc in self.procs.items():
            try:
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                pytest.fail(f"run {run} did not finish:\n{self.report()}")

    def __enter__(self) -> ConcurrentRuns:
        return self

    def __exit__(self, *_: object) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.kill()
                proc.wait()


def test_two_concurrent_runs_hit_their_limits_and_store_one_true_cooldown_per_window(
    world: WaitWorld, tmp_path: Path
) -> None:
    """Two exec processes hit 429s on one pool: one true cooldown per account; both resume.

    Design, so that every interleaving of the two processes is valid: the
    pool holds fresh usage snapshots showing room (alpha 50 %, beta 60 %,
    probed moments before), while the backend's truth is that both
    five-hour windows are at 100 % until known resets ten minutes ahead, a
    minute apart. No probe is due at start, so each run launches Codex and
    every model request before the release gets a real 429 carrying its
    account's reset time. Run "one" drains alpha first, run "two" beta, and
    two gates in each driver's launcher (all first launches start together;
    no second launch before every first child exited) make sure each run's
    own prompt reaches the backend and is refused before the other run can
    block that account. A run waits only once every account is blocked,
    after its own cooldowns were written; when both runs wait, the stored
    cooldowns are complete and, with the resets ten minutes away, nothing
    can lift them yet: that is when they are inspected. Then the windows
    reset early on the backend (a new period) and a third process,
    ``cli.py status --refresh``, stores the fresh quota, which lifts the
    blocks; both runs resume.
    """
    now = int(time.time())
    resets = {"alpha": now + TEN_MINUTES, "beta": now + TEN_MINUTES + 60}
    world.add("alpha", five_hour_used=50)
    world.add("beta", five_hour_used=60)
    for name, reset in resets.items():
        world.backend.set_quota(f"id-{name}", five_hour_resets_at=reset)
    asyncio.run(_probe_into_pool(world.pool, ["alpha", "beta"]))
    for name, reset in resets.items():
        world.backend.set_quota(f"id-{name}", five_hour=100, five_hour_resets_at=reset)

    orders = {"one": ["alpha", "beta"], "two": ["beta", "alpha"]}
    with ConcurrentRuns(world, tmp_path, orders) as runs:
        runs.start()
        _poll(runs.all_waiting, 90, lambda: f"both runs waiting:\n{runs.report()}")

        # Both runs hit limits and wait: the stored blocks are final until a reset.
        limited = [r for r in world.backend.responses_requests() if r.status == 429]
        firsts = {r.session_id: r for r in reversed(limited)}  # each session's first 429
        assert sorted((r.account_id, r.input_texts[-1]) for r in firsts.values()) == [
            ("id-alpha", "job one"),
            ("id-beta", "job two"),
        ]
        for name, reset in resets.items():
            [cooldown] = world.pool.get(name).cooldowns
            assert cooldown.window is WindowKind.FIVE_HOUR, cooldown
            assert abs(cooldown.blocked_until.timestamp() - reset) <= 2, (name, cooldown)
        waits = [e for run in orders for e in runs.events(run) if e["name"] == "waiting_for_reset"]
        assert all(abs(e["until"] - resets["alpha"]) <= 2 for e in waits), waits

        # The windows reset early; another process stores the fresh quota.
        fresh = int(time.time()) + 5 * 3600
        for name in resets:
            world.backend.set_quota(f"id-{name}", five_hour=0, five_hour_resets_at=fresh)
        status = subprocess.run(
            world.cli("status", "--refresh", "--json"),
            env=world.env,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert status.returncode == 0, status.stderr
        runs.wait(90)
        results = {run: runs.result(run) for run in orders}
        assert [results[run]["exit_code"] for run in orders] == [0, 0], runs.report()
        events = {run: [e["name"] for e in runs.events(run)] for run in orders}

    sessions = {run: results[run]["session_id"] for run in orders}
    assert None not in sessions.values()
    assert len(set(sessions.values())) == 2
    requests = world.backend.responses_requests()
    assert {r.session_id for r in requests} == set(sessions.values())
    for run, order in orders.items():
        mine = [r for r in requests if r.session_id == sessions[run]]
        # Refused on its own first account, refused until the release, then
        # answered: one conversation that still holds the run's own prompt.
        assert mine[0].account_id == f"id-{order[0]}"
        assert [r.status for r in mine] == [429] * (len(mine) - 1) + [200]
        assert f"job {run}" in mine[-1].input_texts
        # One rotation per refused request, and possibly one more: a resumed
        # child that started on an account the other run had just blocked is
        # stopped before its request.
        assert len(mine) - 1 <= results[run]["rotations"] <= len(mine)
        assert len(results[run]["accounts"]) == results[run]["rotations"] + 1
        assert events[run].count("resumed") == results[run]["rotations"]
    for name in resets:
        cooldowns = world.pool.get(name).cooldowns
        assert all(c.window is not WindowKind.OTHER for c in cooldowns), cooldowns
        assert len({c.window for c in cooldowns}) == len(cooldowns), cooldowns
    world.backend.assert_no_replay()
