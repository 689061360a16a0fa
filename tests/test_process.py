"""Child launch and stop, the terminal guard and the signal watcher."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from codex_supervisor.config import child_environment
from codex_supervisor.errors import CodexNotFoundError, ConfigError, ProcessError
from codex_supervisor.process import Child, SignalWatcher, StopPolicy, TerminalGuard, launch
from codex_supervisor.testing import PtyProcess

FAST = StopPolicy(interrupt_grace=0.2, terminate_grace=0.2)
PY = sys.executable

# Signal handlers that print the signal and the (system-wide) monotonic time of
# its arrival, so a test can check the order of the escalation steps.
_RECORD = r"""
import os, signal, sys, time
def record(sig, frame):
    # os.write, not print: the handler may run inside print('ready')'s flush.
    os.write(1, f"{signal.Signals(sig).name} {time.monotonic()}\n".encode())
"""


def _base_env() -> dict[str, str]:
    return {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LC_ALL": "C.UTF-8"}


def _script(*parts: str) -> list[str]:
    return [PY, "-c", "".join(textwrap.dedent(part) for part in parts)]


async def _line(child: Child) -> str:
    assert child.stdout is not None
    async with asyncio.timeout(10):
        return (await child.stdout.readline()).decode().strip()


async def _rest(child: Child) -> list[str]:
    assert child.stdout is not None
    async with asyncio.timeout(10):
        return (await child.stdout.read()).decode().split()


def _state(pid: int) -> str | None:
    """The /proc state letter of ``pid``, or None when it no longer exists."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return None
    return stat.rsplit(")", 1)[1].split()[0]


def _dead(pid: int) -> bool:
    # An orphan's zombie waits for init to reap it, which may be slow or never
    # happen in a container: a zombie counts as gone.
    return _state(pid) in (None, "Z", "X")


async def _until_dead(pid: int) -> bool:
    deadline = time.monotonic() + 5
    while not _dead(pid):
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(0.01)
    return True


def _same_path(a: str | Path, b: str | Path) -> bool:
    return Path(a).resolve() == Path(b).resolve()


def _assert_reaped(pid: int) -> None:
    with pytest.raises(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)
    assert _state(pid) is None


@pytest.fixture
def stray_pids() -> Iterator[list[int]]:
    """Pids a test spawned indirectly; killed afterwards if still alive."""
    pids: list[int] = []
    yield pids
    for pid in pids:
        if not _dead(pid):
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)


@pytest.fixture
def saved_signal_handlers() -> Iterator[None]:
    """Put back the dispositions of the signals SignalWatcher touches."""
    sigs = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGTSTP)
    before = {sig: signal.getsignal(sig) for sig in sigs}
    yield
    for sig, handler in before.items():
        if handler is not None and signal.getsignal(sig) is not handler:
            signal.signal(sig, handler)


# --- launch -----------------------------------------------------------------


@pytest.mark.anyio
@pytest.mark.parametrize("code", [0, 3, 255])
async def test_wait_returns_the_exit_code(code: int) -> None:
    """wait() returns the child's own exit code and running turns False."""
    child = await launch([PY, "-c", f"raise SystemExit({code})"], env=_base_env())
    assert await child.wait() == code
    assert child.returncode == code
    assert not child.running


@pytest.mark.anyio
async def test_killed_child_reports_a_negative_code() -> None:
    """A child killed by a signal reports minus that signal, as asyncio does."""
    child = await launch(
        [PY, "-c", "import os, signal; os.kill(os.getpid(), signal.SIGKILL)"], env=_base_env()
    )
    assert await child.wait() == -signal.SIGKILL


@pytest.mark.anyio
async def test_environment_is_passed_exactly(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The child sees exactly the env given, without our secrets, and the env is never logged."""
    env_bin = shutil.which("env")
    assert env_bin is not None
    source = {
        **_base_env(),
        "KEEP_ME": "yes",
        "CODEX_SUPERVISOR_HOME": "/pool",
        "CODEX_SUPERVISOR_TOKEN": "s3cret-value",
        "CODEX_HOME": "/old/home",
    }
    env = child_environment(tmp_path / "account", source)
    caplog.set_level(logging.DEBUG, logger="codex_supervisor.process")
    child = await launch([env_bin, "-0"], env=env, stdout=subprocess.PIPE)
    assert child.stdout is not None
    raw = await child.stdout.read()
    assert await child.wait() == 0
    seen = dict(item.split("=", 1) for item in raw.decode().split("\0") if item)
    assert seen == env
    assert seen["CODEX_HOME"] == str(tmp_path / "account")
    assert seen["KEEP_ME"] == "yes"
    assert not [key for key in seen if key.startswith("CODEX_SUPERVISOR_")]
    assert env_bin in caplog.text  # argv is logged ...
    assert "s3cret-value" not in caplog.text  # ... the environment never
    assert "KEEP_ME" not in caplog.text


@pytest.mark.anyio
async def test_missing_binary_raises_codex_not_found(tmp_path: Path) -> None:
    """A binary that does not exist raises CodexNotFoundError (a FileNotFoundError)."""
    with pytest.raises(CodexNotFoundError, match="no-such-codex") as info:
        await launch([str(tmp_path / "no-such-codex"), "--version"], env=_base_env())
    assert isinstance(info.value, FileNotFoundError)


@pytest.mark.anyio
async def test_non_executable_binary_raises_codex_not_found(tmp_path: Path) -> None:
    """A binary without execute permission raises CodexNotFoundError."""
    binary = tmp_path / "codex"
    binary.write_text("#!/bin/sh\n")
    binary.chmod(0o600)
    with pytest.raises(CodexNotFoundError):
        await launch([str(binary)], env=_base_env())


@pytest.mark.anyio
async def test_missing_cwd_raises_process_error(tmp_path: Path) -> None:
    """A working directory that does not exist is a ProcessError, not a missing Codex."""
    with pytest.raises(ProcessError) as info:
        await launch([PY, "-c", "pass"], env=_base_env(), cwd=tmp_path / "gone")
    assert not isinstance(info.value, CodexNotFoundError)


@pytest.mark.anyio
async def test_empty_argv_is_refused() -> None:
    """An empty argv is a ConfigError."""
    with pytest.raises(ConfigError):
        await launch([], env=_base_env())


@pytest.mark.anyio
async def test_cwd_is_honoured(tmp_path: Path) -> None:
    """The child runs in the given working directory."""
    child = await launch(
        [PY, "-c", "import os; print(os.getcwd())"],
        env=_base_env(),
        cwd=tmp_path,
        stdout=subprocess.PIPE,
    )
    assert _same_path(await _line(child), tmp_path)
    assert await child.wait() == 0


@pytest.mark.anyio
async def test_process_group_child_leads_its_own_group() -> None:
    """process_group=True puts the child in a new session and group; the default keeps ours."""
    show = "import os; print(os.getpgrp(), os.getsid(0))"
    grouped = await launch(
        [PY, "-c", show], env=_base_env(), stdout=subprocess.PIPE, process_group=True
    )
    assert (await _line(grouped)).split() == [str(grouped.pid)] * 2
    plain = await launch([PY, "-c", show], env=_base_env(), stdout=subprocess.PIPE)
    assert (await _line(plain)).split() == [str(os.getpgrp()), str(os.getsid(0))]
    assert await grouped.wait() == 0
    assert await plain.wait() == 0


# --- stop -------------------------------------------------------------------


@pytest.mark.anyio
async def test_stop_a_child_that_exits_on_sigint(caplog: pytest.LogCaptureFixture) -> None:
    """A child that dies of SIGINT is reaped with -SIGINT and nothing is escalated."""
    child = await launch(
        _script("import time; print('ready', flush=True); time.sleep(60)"),
        env=_base_env(),
        stdout=subprocess.PIPE,
    )
    assert await _line(child) == "ready"
    caplog.set_level(logging.INFO, logger="codex_supervisor.process")
    assert await child.stop(FAST) == -signal.SIGINT
    assert child.returncode == -signal.SIGINT
    _assert_reaped(child.pid)
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


@pytest.mark.anyio
async def test_stop_returns_the_childs_own_exit_code() -> None:
    """A child that handles SIGINT and exits cleanly reports its own code."""
    child = await launch(
        _script(
            """
            import signal, sys, time
            signal.signal(signal.SIGINT, lambda *_: sys.exit(7))
            print('ready', flush=True)
            time.sleep(60)
            """
        ),
        env=_base_env(),
        stdout=subprocess.PIPE,
    )
    assert await _line(child) == "ready"
    assert await child.stop(FAST) == 7


@pytest.mark.anyio
async def test_stop_escalates_to_sigterm(caplog: pytest.LogCaptureFixture) -> None:
    """A child that ignores SIGINT gets SIGTERM after the interrupt grace."""
    child = await launch(
        _script(
            _RECORD,
            """
            signal.signal(signal.SIGINT, record)
            print('ready', flush=True)
            time.sleep(60)
            """,
        ),
        env=_base_env(),
        stdout=subprocess.PIPE,
    )
    assert await _line(child) == "ready"
    caplog.set_level(logging.INFO, logger="codex_supervisor.process")
    started = time.monotonic()
    assert await child.stop(FAST) == -signal.SIGTERM
    ended = time.monotonic()
    words = await _rest(child)
    assert words[0] == "SIGINT"
    got_int = float(words[1])
    assert started <= got_int
    # SIGTERM came no earlier than the grace after SIGINT (1 ms for clock granularity).
    assert ended - got_int >= FAST.interrupt_grace - 0.001
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert [w.rsplit(" ", 1)[1] for w in warnings] == ["SIGTERM"]
    _assert_reaped(child.pid)


@pytest.mark.anyio
async def test_stop_escalates_to_sigkill(caplog: pytest.LogCaptureFixture) -> None:
    """A child that ignores SIGINT and SIGTERM is killed (-9) after both graces, in order."""
    child = await launch(
        _script(
            _RECORD,
            """
            signal.signal(signal.SIGINT, record)
            signal.signal(signal.SIGTERM, record)
            print('ready', flush=True)
            while True:
                time.sleep(60)
            """,
        ),
        env=_base_env(),
        stdout=subprocess.PIPE,
    )
    assert await _line(child) == "ready"
    caplog.set_level(logging.INFO, logger="codex_supervisor.process")
    assert await child.stop(FAST) == -signal.SIGKILL
    ended = time.monotonic()
    words = await _rest(child)
    assert words[0::2] == ["SIGINT", "SIGTERM"]
    got_int, got_term = float(words[1]), float(words[3])
    assert got_int < got_term < ended
    assert got_term - got_int >= FAST.interrupt_grace - 0.001
    assert ended - got_term >= FAST.terminate_grace - 0.001
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert [w.rsplit(" ", 1)[1] for w in warnings] == ["SIGTERM", "SIGKILL"]
    _assert_reaped(child.pid)


@pytest.mark.anyio
async def test_cancelled_stop_still_kills_and_reaps() -> None:
    """Cancelling stop() mid-grace SIGKILLs and reaps the child before CancelledError escapes."""
    child = await launch(
        _script(
            _RECORD,
            """
            signal.signal(signal.SIGINT, record)
            signal.signal(signal.SIGTERM, record)
            print('ready', flush=True)
            while True:
                time.sleep(60)
            """,
        ),
        env=_base_env(),
        stdout=subprocess.PIPE,
    )
    assert await _line(child) == "ready"
    slow = StopPolicy(interrupt_grace=60, terminate_grace=60)
    seen_when_cancelled: list[int | None] = []

    async def stop() -> None:
        try:
            await child.stop(slow)
        except asyncio.CancelledError:
            # The very moment the cancellation escapes stop(): reaped already.
            seen_when_cancelled.append(child.returncode)
            _assert_reaped(child.pid)
            raise

    task = asyncio.create_task(stop())
    assert (await _line(child)).startswith("SIGINT")  # now inside the 60 s grace
    started = time.monotonic()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert time.monotonic() - started < 10
    assert seen_when_cancelled == [-signal.SIGKILL]


@pytest.mark.anyio
async def test_stop_under_a_timeout_kills_and_reaps() -> None:
    """A caller's asyncio.timeout around stop() still leaves the child reaped."""
    child = await launch(
        _script(
            """
            import signal, time
            signal.signal(signal.SIGINT, signal.SIG_IGN)
            signal.signal(signal.SIGTERM, signal.SIG_IGN)
            print('ready', flush=True)
            time.sleep(60)
            """
        ),
        env=_base_env(),
        stdout=subprocess.PIPE,
    )
    assert await _line(child) == "ready"
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(0.3):
            await child.stop(StopPolicy(interrupt_grace=60, terminate_grace=60))
    assert child.returncode == -signal.SIGKILL
    _assert_reaped(child.pid)


@pytest.mark.anyio
async def test_stop_of_an_exited_child_returns_its_code() -> None:
    """stop() on a child that already exited returns its code; send_signal is then a no-op."""
    child = await launch([PY, "-c", "raise SystemExit(4)"], env=_base_env())
    assert await child.wait() == 4
    child.send_signal(signal.SIGTERM)
    assert await child.stop(FAST) == 4


@pytest.mark.anyio
async def test_exit_codes_survive_signal_races() -> None:
    """Signalling a child while it exits never turns its code into asyncio's 255."""
    # asyncio's own Process.send_signal polls with waitpid and races the child
    # watcher's thread; signalled this eagerly, about half of these children
    # then report 255 ("Unknown child process pid").
    program = _script("import time; print('ready', flush=True); time.sleep(60)")
    for _ in range(12):
        child = await launch(program, env=_base_env(), stdout=subprocess.PIPE)
        assert await _line(child) == "ready"
        waiter = asyncio.ensure_future(child.wait())
        async with asyncio.timeout(10):
            while not waiter.done():
                child.send_signal(signal.SIGINT)
                await asyncio.sleep(0)  # a bare yield: keep signalling as it dies
        assert waiter.result() == -signal.SIGINT


@pytest.mark.anyio
async def test_stop_signals_the_whole_process_group(stray_pids: list[int]) -> None:
    """With process_group=True the grandchild gets the signal too and dies with its parent."""
    child = await launch(
        _script(
            """
            import subprocess, time
            grandchild = subprocess.Popen(["sleep", "60"])
            print(grandchild.pid, flush=True)
            time.sleep(60)
            """
        ),
        env=_base_env(),
        stdout=subprocess.PIPE,
        process_group=True,
    )
    grandchild = int(await _line(child))
    stray_pids.append(grandchild)
    assert not _dead(grandchild)
    assert await child.stop(FAST) == -signal.SIGINT
    assert await _until_dead(grandchild)


@pytest.mark.anyio
async def test_stop_kills_what_the_group_leader_left_behind(stray_pids: list[int]) -> None:
    """A grandchild that ignores SIGINT and SIGTERM does not outlive stop() of its group."""
    child = await launch(
        _script(
            f"""
            import subprocess, time
            stubborn = (
                "import signal, time; "
                "signal.signal(signal.SIGINT, signal.SIG_IGN); "
                "signal.signal(signal.SIGTERM, signal.SIG_IGN); "
                "print('armed', flush=True); time.sleep(60)"
            )
            grandchild = subprocess.Popen([{PY!r}, "-c", stubborn], stdout=subprocess.PIPE)
            grandchild.stdout.readline()
            print(grandchild.pid, flush=True)
            time.sleep(60)
            """
        ),
        env=_base_env(),
        stdout=subprocess.PIPE,
        process_group=True,
    )
    grandchild = int(await _line(child))
    stray_pids.append(grandchild)
    assert await child.stop(FAST) == -signal.SIGINT  # the leader exits at once
    assert await _until_dead(grandchild)


def test_stop_policy_refuses_negative_graces() -> None:
    """StopPolicy refuses negative or NaN graces and has the documented defaults."""
    assert StopPolicy() == StopPolicy(interrupt_grace=2.0, terminate_grace=3.0)
    with pytest.raises(ValueError, match="interrupt_grace"):
        StopPolicy(interrupt_grace=-1)
    with pytest.raises(ValueError, match="terminate_grace"):
        StopPolicy(terminate_grace=float("nan"))


# --- TerminalGuard ----------------------------------------------------------

_GUARD_PROGRAM = r"""
import os, sys, termios, tty
from codex_supervisor.process import TerminalGuard

guard = TerminalGuard()  # stdin, which is the pty
print("active:", guard.active, flush=True)
guard.save()
saved = termios.tcgetattr(0)
tty.setraw(0)
os.write(1, b"\x1b[?2004h\x1b[?25l\x1b[?1049h")
raw = termios.tcgetattr(0)
print("raw:", bool(raw[3] & termios.ICANON), bool(raw[3] & termios.ECHO), end="\r\n", flush=True)
guard.restore()
now = termios.tcgetattr(0)
print("same:", now == saved, flush=True)
print("icanon:", bool(now[3] & termios.ICANON), "echo:", bool(now[3] & termios.ECHO), flush=True)
guard.restore()  # idempotent: writes nothing more
with TerminalGuard(0) as second:
    tty.setraw(0)
print("context:", termios.tcgetattr(0) == saved, flush=True)
"""

_UNDO = (b"\x1b[<u", b"\x1b[?2004l", b"\x1b[?1004l", b"\x1b[?1049l", b"\x1b[?25h")


def _pty_env() -> dict[str, str]:
    return {**_base_env(), "TERM": "xterm-256color"}


def test_terminal_guard_restores_mode_and_sequences_under_a_pty() -> None:
    """Under a real pty the guard restores termios and writes the undo after the set sequences."""
    with PtyProcess([PY, "-c", _GUARD_PROGRAM], env=_pty_env()) as proc:
        proc.expect(r"context: \w+")
        assert proc.wait(10) == 0
    text = proc.text
    assert "active: True" in text
    assert "raw: False False" in text
    assert "same: True" in text
    assert "icanon: True echo: True" in text
    assert "context: True" in text
    out = proc.raw_output
    set_at = out.index(b"\x1b[?2004h\x1b[?25l\x1b[?1049h")
    for seq in _UNDO:
        assert out.index(seq) > set_at, seq
    # One restore from the explicit pair, one from the context manager; the
    # repeated restore() in between wrote nothing.
    assert out.count(b"\x1b[?2004l") == 2


_BACKGROUND_PROGRAM = r"""
import os, termios, tty
from codex_supervisor.process import TerminalGuard

pid = os.fork()
if pid == 0:
    os.setpgid(0, 0)  # a background group of this terminal's session
    guard = TerminalGuard()
    guard.save()
    guard.restore()
    os._exit(0)
_, status = os.waitpid(pid, os.WUNTRACED)
if os.WIFSTOPPED(status):
    print("stopped by", os.WSTOPSIG(status), flush=True)
    os.kill(pid, 9)
    os.waitpid(pid, 0)
else:
    print("exit", os.waitstatus_to_exitcode(status), flush=True)
"""


def test_terminal_guard_in_a_background_group_does_not_get_stopped() -> None:
    """Restoring from a background process group skips the terminal instead of catching SIGTTOU."""
    with PtyProcess([PY, "-c", _BACKGROUND_PROGRAM], env=_pty_env()) as proc:
        proc.expect(r"(exit|stopped by) -?\d+")
        assert proc.wait(10) == 0
    assert "exit 0" in proc.text
    assert b"\x1b[?2004l" not in proc.raw_output


def test_terminal_guard_on_a_pipe_is_a_no_op() -> None:
    """A guard on a pipe neither raises nor writes anything."""
    read_end, write_end = os.pipe()
    try:
        guard = TerminalGuard(write_end)
        assert not guard.active
        assert guard.fd is None
        with guard:
            pass
        guard.save()
        guard.restore()
        os.set_blocking(read_end, False)
        with pytest.raises(BlockingIOError):
            os.read(read_end, 100)
    finally:
        os.close(read_end)
        os.close(write_end)


def test_terminal_guard_defaults_to_a_no_op_without_a_tty_stdin() -> None:
    """TerminalGuard() with stdin from /dev/null is inactive and restores quietly."""
    code = (
        "from codex_supervisor.process import TerminalGuard\n"
        "g = TerminalGuard(); g.save(); g.restore(); print(g.active, g.fd)"
    )
    out = subprocess.run(
        [PY, "-c", code],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    assert out.stdout.split() == ["False", "None"]


def test_terminal_guard_survives_a_closed_descriptor() -> None:
    """A terminal descriptor that goes away between save and restore is logged, not raised."""
    master, slave = os.openpty()
    try:
        guard = TerminalGuard(slave)
        assert guard.active
        guard.save()
        os.close(slave)
        guard.restore()  # EBADF
    finally:
        os.close(master)


# --- SignalWatcher ----------------------------------------------------------

_WATCHER_PROGRAM = r"""
import asyncio, logging, signal, sys
from codex_supervisor.process import SignalWatcher

logging.basicConfig(level=logging.DEBUG, format="log: %(message)s", stream=sys.stdout)
SIGS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)

async def main() -> None:
    before = {s: signal.getsignal(s) for s in SIGS}
    async with SignalWatcher(ignore_sigint=sys.argv[1] == "ignore") as watcher:
        print("ready", flush=True)
        got = await watcher.wait()
        print("received", got.name, watcher.exit_code, flush=True)
    print("restored", before == {s: signal.getsignal(s) for s in SIGS}, flush=True)

asyncio.run(main())
"""


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGHUP])
def test_signal_watcher_ignores_sigint_and_reports_sigterm_or_sighup(sig: signal.Signals) -> None:
    """SIGINT leaves the watching program running; SIGTERM/SIGHUP wake it with 128+signal."""
    with PtyProcess([PY, "-c", _WATCHER_PROGRAM, "ignore"], env=_pty_env()) as proc:
        proc.expect("ready")
        proc.send_signal(signal.SIGINT)
        proc.expect("log: ignoring SIGINT")
        assert proc.proc.poll() is None
        proc.send_signal(sig)
        proc.expect("restored")
        assert proc.wait(10) == 0
    assert f"received {sig.name} {128 + sig}" in proc.text
    assert "restored True" in proc.text


def test_signal_watcher_can_watch_sigint() -> None:
    """With ignore_sigint=False, SIGINT is reported like SIGTERM (exit code 130)."""
    with PtyProcess([PY, "-c", _WATCHER_PROGRAM, "watch"], env=_pty_env()) as proc:
        proc.expect("ready")
        proc.send_signal(signal.SIGINT)
        proc.expect("restored")
        assert proc.wait(10) == 0
    assert "received SIGINT 130" in proc.text
    assert "restored True" in proc.text


@pytest.mark.anyio
@pytest.mark.usefixtures("saved_signal_handlers")
async def test_signal_watcher_restores_previous_handlers() -> None:
    """Entering replaces the handlers; leaving puts the previous ones back."""
    sigs = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)

    def own_handler(signum: int, frame: object) -> None:
        """A handler of the embedding program's, which must survive the watcher."""

    signal.signal(signal.SIGHUP, own_handler)
    before = {sig: signal.getsignal(sig) for sig in sigs}
    watcher = SignalWatcher()
    async with watcher:
        assert {sig: signal.getsignal(sig) for sig in sigs} != before
        assert watcher.received is None
        assert watcher.exit_code is None
        with pytest.raises(ProcessError, match="already active"):
            await watcher.__aenter__()
    assert {sig: signal.getsignal(sig) for sig in sigs} == before


@pytest.mark.anyio
@pytest.mark.usefixtures("saved_signal_handlers")
async def test_signal_watcher_refuses_to_replace_another_asyncio_handler() -> None:
    """A signal already handled through loop.add_signal_handler is not silently taken over."""
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGHUP, lambda: None)
    try:
        with pytest.raises(ProcessError, match="SIGHUP"):
            async with SignalWatcher():
                pass
    finally:
        loop.remove_signal_handler(signal.SIGHUP)


def test_signal_watcher_needs_the_main_thread() -> None:
    """Entering a SignalWatcher outside the main thread raises ProcessError."""
    errors: list[BaseException] = []

    async def enter() -> None:
        async with SignalWatcher():
            pass

    def run() -> None:
        try:
            asyncio.run(enter())
        except BaseException as exc:  # noqa: BLE001 - handed to the test thread
            errors.append(exc)

    thread = threading.Thread(target=run)
    thread.start()
    thread.join(30)
    assert len(errors) == 1
    assert isinstance(errors[0], ProcessError)


@pytest.mark.anyio
async def test_wait_group_kills_what_a_dead_leader_left_behind(tmp_path: Path) -> None:
    """A group leader that dies on its own: wait_group() kills its leftover children."""
    pid_file = tmp_path / "orphan.pid"
    script = (
        "import subprocess, sys, time\n"
        f"p = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)'])\n"
        f"open({str(pid_file)!r}, 'w').write(str(p.pid))\n"
        "raise SystemExit(3)\n"
    )
    child = await launch([PY, "-c", script], env=_base_env(), process_group=True)
    assert await child.wait_group() == 3
    orphan = int(pid_file.read_text())
    for _ in range(200):
        try:
            status = Path(f"/proc/{orphan}/status").read_text()  # noqa: ASYNC240
        except FileNotFoundError:
            break
        if "State:\tZ" in status:
            break
        await asyncio.sleep(0.01)
    else:
        pytest.fail(f"the leftover child {orphan} is still running")


@pytest.mark.anyio
@pytest.mark.usefixtures("saved_signal_handlers")
async def test_relaying_stops_respects_the_sigtstp_disposition_it_found() -> None:
    """Ignored SIGTSTP stays ignored; an embedder's handler is back once the child is gone."""

    def own_handler(signum: int, frame: object) -> None:
        """The embedding program's own."""

    child = await launch(["sleep", "30"], env=_base_env(), process_group=True)
    try:
        async with SignalWatcher() as watcher:
            signal.signal(signal.SIGTSTP, signal.SIG_IGN)
            with watcher.relaying_stops(child):
                assert signal.getsignal(signal.SIGTSTP) == signal.SIG_IGN
            signal.signal(signal.SIGTSTP, own_handler)
            with watcher.relaying_stops(child):
                assert signal.getsignal(signal.SIGTSTP) is not own_handler
            assert signal.getsignal(signal.SIGTSTP) is own_handler
    finally:
        await child.stop()
