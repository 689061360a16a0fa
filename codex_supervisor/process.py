"""Child processes: launch Codex, stop it gracefully, put the terminal back.

Four pieces, for ARCHITECTURE.md D7:

* :func:`launch` starts a child with exactly the environment it is given
  (callers build it with :func:`codex_supervisor.config.child_environment`, on
  every launch path). The interactive TUI stays in the supervisor's foreground
  process group with the inherited terminal; headless and app-server children
  get a session (and process group) of their own, so the whole tree — MCP
  servers included — can be signalled at once.
* :meth:`Child.stop` escalates SIGINT → SIGTERM → SIGKILL, each step bounded by
  a deadline on the monotonic clock, and the child is *always* reaped before it
  returns or raises — also when the awaiting task is cancelled, which is when
  it matters most (the supervisor itself being stopped must not skip the grace
  periods or leave a child behind).
* :class:`TerminalGuard` saves the terminal mode before a launch and restores
  it after the child exits: a stopped Codex TUI does not clean up, it leaves raw
  mode, bracketed paste, focus reporting, kitty keyboard flags, a hidden cursor
  and the alternate screen behind (CODEX_FACTS.md §5).
* :class:`SignalWatcher` turns SIGTERM/SIGHUP sent to the supervisor into an
  event, so it can stop its child gracefully, release its leases and exit with
  ``128 + signal``; it ignores SIGINT meanwhile, which the terminal also
  delivers to the TUI child, which handles it.

Signals are sent with :func:`os.kill`/:func:`os.killpg`, never through
:meth:`asyncio.subprocess.Process.send_signal`: that one calls
``Popen.poll()`` first, whose ``waitpid`` races the child watcher's, and when
it wins asyncio reports the child's exit code as 255 ("Unknown child process
pid ...") instead of the real one.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import logging
import os
import shlex
import signal
import sys
import termios
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from types import FrameType, TracebackType
from typing import Any, Final, Self, final

import attrs

from .errors import CodexNotFoundError, ConfigError, ProcessError

__all__ = ["Child", "SignalWatcher", "StopPolicy", "TerminalGuard", "launch"]

_log = logging.getLogger(__name__)

# What a stopped Codex TUI leaves switched on, undone in this order: pop the
# kitty keyboard flags it pushed, bracketed paste off, focus reporting off,
# leave the alternate screen, then show the cursor (after leaving, so it is
# visible on the main screen the user returns to). Popping an empty kitty
# stack only resets the flags, so this is harmless when the TUI never pushed.
_UNDO_SEQUENCES: Final = b"\x1b[<u\x1b[?2004l\x1b[?1004l\x1b[?1049l\x1b[?25h"

_SignalHandler = Callable[[int, FrameType | None], Any] | int | signal.Handlers | None


def _non_negative(_instance: object, attribute: attrs.Attribute[float], value: float) -> None:
    # Written out rather than attrs.validators.ge so that NaN is refused too.
    if not value >= 0:
        raise ValueError(f"{attribute.name} must be a non-negative number of seconds: {value!r}")


@final
@attrs.frozen(kw_only=True)
class StopPolicy:
    """How long a child gets to exit after each signal of a graceful stop.

    :meth:`Child.stop` sends the first signal (SIGINT), waits up to
    ``interrupt_grace`` seconds, sends SIGTERM, waits up to ``terminate_grace``
    seconds, then sends SIGKILL and waits until the child is reaped. The real
    Codex TUI exits within ~10 ms of SIGINT and ``codex exec`` shortly after, so
    the defaults let Codex exit cleanly while bounding a wedged child to about
    five seconds.
    """

    interrupt_grace: float = attrs.field(default=2.0, validator=_non_negative)
    terminate_grace: float = attrs.field(default=3.0, validator=_non_negative)


_DEFAULT_STOP_POLICY: Final = StopPolicy()


def _is_tty(fd: int) -> bool:
    try:
        return os.isatty(fd)
    except OSError:  # a closed or invalid descriptor is no terminal
        return False


@final
class TerminalGuard:
    """Saves the terminal mode before a child runs and puts it back afterwards.

    ``TerminalGuard()`` guards the controlling terminal through stdin (fd 0, the
    terminal an interactive child inherits) when stdin is a TTY; on anything
    else (a pipe, a file, ``/dev/null``) the guard does nothing. :meth:`save`
    records the termios attributes; :meth:`restore` sets them back and writes
    the escape sequences that undo what the Codex TUI turns on. Restoring never
    raises (a hung-up terminal answers EIO; that is logged at DEBUG) and is
    idempotent: a second :meth:`restore` without a new :meth:`save` does
    nothing. As a context manager it saves on enter and restores on exit.
    """

    __slots__ = ("_armed", "_fd", "_saved")

    def __init__(self, fd: int | None = None) -> None:
        fd = 0 if fd is None else fd
        self._fd: int | None = fd if _is_tty(fd) else None
        self._saved: list[Any] | None = None
        self._armed = False

    @property
    def fd(self) -> int | None:
        """The terminal's file descriptor, or ``None`` for a no-op guard."""
        return self._fd

    @property
    def active(self) -> bool:
        """Whether this guard has a terminal to look after."""
        return self._fd is not None

    def save(self) -> None:
        """Record the terminal's current mode (before launching a child)."""
        if self._fd is None:
            return
        try:
            self._saved = termios.tcgetattr(self._fd)
        except (termios.error, OSError) as exc:
            # Still arm the guard: the escape sequences are worth undoing even
            # when the termios state could not be read.
            self._saved = None
            _log.debug("cannot read the terminal mode of fd %d: %s", self._fd, exc)
        self._armed = True

    def restore(self) -> None:
        """Put back the saved mode and undo the TUI's escape-sequence state."""
        fd = self._fd
        if fd is None or not self._armed:
            return
        self._armed = False
        if not _in_foreground(fd):
            # From a background process group, tcsetattr (and writes under
            # TOSTOP) would stop the whole supervisor with SIGTTOU. A child in
            # our group could not have changed the terminal from there either.
            _log.debug("not restoring fd %d: we are not its foreground process group", fd)
            return
        if self._saved is not None:
            try:
                # TCSADRAIN: let output the child already wrote reach the
                # terminal under the mode it was written for.
                termios.tcsetattr(fd, termios.TCSADRAIN, self._saved)
            except (termios.error, OSError) as exc:
                _log.debug("cannot restore the terminal mode of fd %d: %s", fd, exc)
        try:
            _write_all(fd, _UNDO_SEQUENCES)
        except OSError as exc:
            _log.debug("cannot write the terminal reset sequences to fd %d: %s", fd, exc)

    def __enter__(self) -> Self:
        self.save()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.restore()

    def __repr__(self) -> str:
        return f"TerminalGuard(fd={self._fd!r}, saved={self._armed})"


def _in_foreground(fd: int) -> bool:
    try:
        return os.tcgetpgrp(fd) == os.getpgrp()
    except OSError:
        # ENOTTY: not our controlling terminal, so job control (SIGTTOU)
        # cannot stop us for touching it.
        return True


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


@final
class Child:
    """A child process started by :func:`launch`: wait for it, signal it, stop it."""

    __slots__ = ("_argv", "_process", "_process_group")

    def __init__(
        self, process: asyncio.subprocess.Process, argv: tuple[str, ...], *, process_group: bool
    ) -> None:
        self._process = process
        self._argv = argv
        self._process_group = process_group

    @property
    def pid(self) -> int:
        """The child's process id (also its process group id with ``process_group``)."""
        return self._process.pid

    @property
    def argv(self) -> tuple[str, ...]:
        """The command line, for logs (the library never puts secrets in argv)."""
        return self._argv

    @property
    def process_group(self) -> bool:
        """Whether the child leads its own process group, signalled as a whole."""
        return self._process_group

    @property
    def returncode(self) -> int | None:
        """The exit code once reaped (negative: killed by that signal), else ``None``."""
        return self._process.returncode

    @property
    def running(self) -> bool:
        """Whether the child has not been reaped yet."""
        return self._process.returncode is None

    @property
    def stdin(self) -> asyncio.StreamWriter | None:
        """The child's stdin when launched with ``stdin=subprocess.PIPE``."""
        return self._process.stdin

    @property
    def stdout(self) -> asyncio.StreamReader | None:
        """The child's stdout when launched with ``stdout=subprocess.PIPE``."""
        return self._process.stdout

    @property
    def stderr(self) -> asyncio.StreamReader | None:
        """The child's stderr when launched with ``stderr=subprocess.PIPE``."""
        return self._process.stderr

    async def wait(self) -> int:
        """Wait until the child exits and return its exit code (negative = signal)."""
        return await self._process.wait()

    async def wait_group(self) -> int:
        """Wait until the child exits, then kill what is left of its process group.

        For a child that may die on its own (a crash, SIGKILL from outside):
        its tool servers have nobody left to serve. Without ``process_group``
        this is :meth:`wait`.
        """
        code = await self._process.wait()
        self._kill_group_leftovers()
        return code

    def send_signal(self, sig: signal.Signals) -> None:
        """Send ``sig`` to the child (to its whole group with ``process_group``).

        A child that has already been reaped is not signalled: its pid may
        belong to another process by now.
        """
        if self._process.returncode is not None:
            return
        try:
            if self._process_group:
                os.killpg(self._process.pid, sig)
            else:
                os.kill(self._process.pid, sig)
        except ProcessLookupError:
            pass  # exited, and asyncio has not noticed yet
        except OSError as exc:
            raise ProcessError(f"cannot send {sig.name} to child {self.pid}: {exc}") from exc

    async def stop(
        self,
        policy: StopPolicy = _DEFAULT_STOP_POLICY,
        *,
        first_signal: signal.Signals = signal.SIGINT,
    ) -> int:
        """Stop the child gracefully and return its exit code once it is reaped.

        Sends ``first_signal``, waits up to ``policy.interrupt_grace``, sends
        SIGTERM, waits up to ``policy.terminate_grace``, then sends SIGKILL and
        waits. Each wait runs to a deadline taken when its signal was sent. If
        the calling task is cancelled (or anything else goes wrong) mid-way,
        the child is killed and reaped before the exception propagates. With
        ``process_group``, whatever is left of the group once the child has
        exited is killed too (the agent is gone; its tool servers have nobody
        left to serve). Stopping a child that already exited just returns its
        exit code and signals nothing: by then its pid may have been reused.
        """
        if self._process.returncode is not None:
            return self._process.returncode
        try:
            await self._escalate(policy, first_signal)
        finally:
            if self._process.returncode is None:
                # Interrupted mid-way: no more grace, but never leave it behind.
                _log.warning("stop of child %d interrupted; sending SIGKILL", self.pid)
                self.send_signal(signal.SIGKILL)
                await self._reap_uncancellably()
            self._kill_group_leftovers()
        # Reaped by now, so this returns at once (no suspension, no cancel point).
        return await self._process.wait()

    async def _escalate(self, policy: StopPolicy, first_signal: signal.Signals) -> None:
        loop = asyncio.get_running_loop()
        pid = self.pid
        _log.info("stopping child %d (%s) with %s", pid, self._argv[0], first_signal.name)
        self.send_signal(first_signal)
        if await self._exited_by(loop.time() + policy.interrupt_grace):
            return
        _log.warning(
            "child %d still running %gs after %s; sending SIGTERM",
            pid,
            policy.interrupt_grace,
            first_signal.name,
        )
        self.send_signal(signal.SIGTERM)
        if await self._exited_by(loop.time() + policy.terminate_grace):
            return
        _log.warning(
            "child %d still running %gs after SIGTERM; sending SIGKILL",
            pid,
            policy.terminate_grace,
        )
        self.send_signal(signal.SIGKILL)
        await self._process.wait()

    async def _exited_by(self, deadline: float) -> bool:
        try:
            async with asyncio.timeout_at(deadline):
                await self._process.wait()
        except TimeoutError:
            return False
        return True

    async def _reap_uncancellably(self) -> None:
        # SIGKILL has been sent, so this wait is short; a second cancellation
        # must not cut it, or the child would outlive stop() as a zombie or
        # an orphan. The cancellation is re-raised once the child is reaped.
        waiter = asyncio.ensure_future(self._process.wait())
        cancelled: asyncio.CancelledError | None = None
        while not waiter.done():
            try:
                await asyncio.shield(waiter)
            except asyncio.CancelledError as exc:
                cancelled = exc
        if cancelled is not None:
            raise cancelled

    def _kill_group_leftovers(self) -> None:
        if not self._process_group:
            return
        # Called right after the leader was reaped. Its pid stays reserved for
        # as long as its process group has members, so this reaches only what
        # it left behind (ESRCH when nothing is left); only in the instant
        # after an empty group could the pid have gone to someone else.
        try:
            os.killpg(self._process.pid, signal.SIGKILL)
        except OSError as exc:
            _log.debug("process group %d: %s", self._process.pid, exc)

    def __repr__(self) -> str:
        return (
            f"Child(pid={self.pid}, argv={shlex.join(self._argv)!r}, "
            f"returncode={self.returncode!r})"
        )


async def launch(
    argv: Sequence[str],
    *,
    env: Mapping[str, str],
    cwd: str | os.PathLike[str] | None = None,
    stdin: int | None = None,
    stdout: int | None = None,
    stderr: int | None = None,
    process_group: bool = False,
    death_signal: signal.Signals = signal.SIGTERM,
) -> Child:
    """Start ``argv`` (``argv[0]`` is the binary) as a child process.

    ``env`` is the child's whole environment, used as given: build it with
    :func:`codex_supervisor.config.child_environment` so no secret of the
    library reaches the child. ``stdin``/``stdout``/``stderr`` of ``None``
    inherit the supervisor's; pass ``subprocess.PIPE`` (or a descriptor) to
    redirect. Without ``process_group`` the child stays in the supervisor's
    process group — the interactive TUI must, to own the terminal. With it,
    the child leads a new session and process group (headless and app-server
    children), and :meth:`Child.stop` signals the whole group. Out of the
    terminal's reach, such a child is also sent SIGTERM when the thread that
    launched it ends (Linux): launch it from a thread that outlives it (an
    event loop's, as every caller in the library does), never from a
    short-lived worker such as :func:`asyncio.to_thread`. ``death_signal``
    picks that signal: SIGKILL for a child that would otherwise finish work
    nobody can receive any more (an app-server drains its turns on SIGTERM).

    Raises :class:`CodexNotFoundError` when the binary is missing or not
    executable, :class:`ProcessError` on any other failure to start.
    """
    args = tuple(argv)
    if not args:
        raise ConfigError("argv must name the binary to run")
    _log.debug(
        "launching %s (cwd=%s, process_group=%s)",
        shlex.join(args),
        os.fspath(cwd) if cwd is not None else ".",
        process_group,
    )
    try:
        process = await asyncio.create_subprocess_exec(
            *args,
            env=dict(env),
            cwd=cwd,
            stdin=stdin,
            stdout=stdout,
            stderr=stderr,
            # A new session rather than just a new process group: a background
            # group sharing our terminal would be stopped by SIGTTIN/SIGTTOU on
            # touching it, and a terminal hang-up should reach the supervisor,
            # which then stops the child gracefully.
            start_new_session=process_group,
            # Out of the terminal's reach, a group child must still end with
            # the supervisor: a SIGKILLed supervisor (or its killed job) would
            # otherwise leave it running on an account whose lease lapses.
            preexec_fn=_die_with_parent(death_signal) if process_group else None,
        )
    except OSError as exc:
        raise _launch_error(args[0], cwd, exc) from exc
    _log.debug("launched child %d (%s)", process.pid, args[0])
    return Child(process, args, process_group=process_group)


_PR_SET_PDEATHSIG: Final = 1


def _die_with_parent(death: signal.Signals = signal.SIGTERM) -> Callable[[], None] | None:
    """A pre-exec step that has the child sent ``death`` when its parent dies (Linux).

    The death signal fires when the thread that forked the child ends, which
    for :func:`launch` is the event loop's thread: a supervisor stops its
    children before its loop ends anyway. Elsewhere there is no such call
    (``None``); the lease's expiry still bounds what an orphan can do there.
    """
    if not sys.platform.startswith("linux"):
        return None
    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None
    parent = os.getpid()

    def step() -> None:  # runs in the forked child: no allocation-heavy work, no logging
        prctl(_PR_SET_PDEATHSIG, death)
        if os.getppid() != parent:  # the parent died before the call took effect
            os.kill(os.getpid(), death)

    return step


def _launch_error(binary: str, cwd: str | os.PathLike[str] | None, exc: OSError) -> Exception:
    # subprocess names the working directory in the error (as given, str or
    # Path) when chdir failed, and the binary when exec failed.
    if cwd is not None and exc.filename is not None and str(exc.filename) == str(cwd):
        return ProcessError(f"cannot start {binary!r} in {os.fspath(cwd)!r}: {exc.strerror}")
    if isinstance(exc, FileNotFoundError | PermissionError):
        return CodexNotFoundError(f"cannot run {binary!r}: {exc.strerror}")
    return ProcessError(f"cannot start {binary!r}: {exc}")


_WATCHED_SIGNALS: Final = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


def _is_asyncio_handler(handler: _SignalHandler) -> bool:
    # loop.add_signal_handler installs a module-level no-op of asyncio's and
    # keeps the real callback inside the loop, out of reach: restoring the
    # no-op later would silently drop the other party's callback.
    return callable(handler) and getattr(handler, "__module__", None) == "asyncio.unix_events"


@final
class SignalWatcher:
    """Turns SIGTERM and SIGHUP sent to the supervisor into an awaitable event.

    An async context manager for the main thread (Python delivers signals
    only there; elsewhere entering raises :class:`ProcessError`). While
    active, SIGTERM and SIGHUP set :attr:`received` and wake :meth:`wait`, so
    the supervisor can stop its child gracefully, release its leases and exit
    with :attr:`exit_code` (``128 + signal``). A repeated signal does not
    shorten the graceful stop. With ``ignore_sigint`` (the default) SIGINT is
    ignored: the terminal delivers Ctrl-C to the foreground TUI child as well,
    which handles it. Without it, SIGINT is watched like SIGTERM (for headless
    children in their own process group, which the terminal does not reach).

    :meth:`ignoring_sigint` switches SIGINT handling for a stretch (the
    supervisor ignores it only while the TUI owns the terminal; during a wait
    no Codex runs and Ctrl-C must end the run).

    ``install=False`` makes a passive watcher that never touches signal
    dispositions (for worker threads, where signals are the caller's
    business); :meth:`trigger` still wakes it, so an embedder can stop a run.

    It uses ``loop.add_signal_handler``: a Python-level handler, not
    ``SIG_IGN``, so children launched meanwhile still get SIGINT's default
    disposition (an ignored disposition would survive their ``exec``). On exit
    the previous handlers are put back. It refuses to enter when another
    ``add_signal_handler`` callback already owns one of these signals, since
    that callback could not be restored afterwards.
    """

    __slots__ = ("_event", "_ignore_sigint", "_install", "_loop", "_previous", "_received")

    def __init__(self, *, ignore_sigint: bool = True, install: bool = True) -> None:
        self._ignore_sigint = ignore_sigint
        self._install = install
        self._event = asyncio.Event()
        self._received: signal.Signals | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._previous: dict[signal.Signals, _SignalHandler] = {}

    @property
    def received(self) -> signal.Signals | None:
        """The first watched signal received, or ``None``."""
        return self._received

    @property
    def exit_code(self) -> int | None:
        """``128 + received`` (the shell convention), or ``None`` if none came."""
        return None if self._received is None else 128 + self._received

    async def wait(self) -> signal.Signals:
        """Wait until a watched signal arrives and return it."""
        await self._event.wait()
        assert self._received is not None
        return self._received

    def trigger(self, sig: signal.Signals = signal.SIGTERM) -> None:
        """Act as if ``sig`` had been received (an embedder's way to stop a run)."""
        self._on_signal(sig)

    @property
    def sigint_ignored(self) -> bool:
        """Whether SIGINT is ignored right now."""
        return self._ignore_sigint

    @contextlib.contextmanager
    def ignoring_sigint(self, ignore: bool = True) -> Iterator[None]:  # noqa: FBT001, FBT002 - reads as a switch
        """Ignore (or watch) SIGINT for the duration of the block, then restore."""
        previous = self._ignore_sigint
        self._set_sigint(ignore)
        try:
            yield
        finally:
            self._set_sigint(previous)

    def _set_sigint(self, ignore: bool) -> None:  # noqa: FBT001
        if ignore == self._ignore_sigint:
            return
        self._ignore_sigint = ignore
        if self._loop is not None and not self._loop.is_closed():
            handler = self._on_ignored if ignore else self._on_signal
            try:
                self._loop.add_signal_handler(signal.SIGINT, handler, signal.SIGINT)
            except (RuntimeError, ValueError, OSError) as exc:
                raise ProcessError(f"cannot change the SIGINT handler: {exc}") from exc

    @contextlib.contextmanager
    def relaying_stops(self, child: Child | None) -> Iterator[None]:
        """While ``child`` runs in a process group of its own, Ctrl-Z stops it too.

        The terminal's SIGTSTP reaches only the supervisor (the child's group
        is not the terminal's). The supervisor then stops the child's group
        with SIGSTOP, stops itself, and once continued (``fg``/``bg``)
        continues the child: a suspended job is suspended as a whole. Nothing
        to do for ``None``, a child in the supervisor's own group, a passive
        watcher, or a supervisor started with SIGTSTP ignored.
        """
        loop = self._loop
        previous = signal.getsignal(signal.SIGTSTP)
        if (
            child is None
            or not child.process_group
            or loop is None
            or loop.is_closed()
            or previous == signal.SIG_IGN  # whoever started us chose so
            or _is_asyncio_handler(previous)  # someone else's callback, not ours to take
        ):
            yield
            return
        try:
            loop.add_signal_handler(signal.SIGTSTP, self._suspend, child)
        except (RuntimeError, ValueError, OSError) as exc:
            raise ProcessError(f"cannot install the SIGTSTP handler: {exc}") from exc
        try:
            yield
        finally:
            with contextlib.suppress(RuntimeError, ValueError, OSError):
                if not loop.is_closed():
                    loop.remove_signal_handler(signal.SIGTSTP)
                if previous is not None:  # the embedder's own handler, or the default
                    signal.signal(signal.SIGTSTP, previous)

    @staticmethod
    def _suspend(child: Child) -> None:
        _log.info("suspended: stopping child %d with us", child.pid)
        child.send_signal(signal.SIGSTOP)
        os.kill(os.getpid(), signal.SIGSTOP)  # returns once we are continued
        child.send_signal(signal.SIGCONT)
        _log.info("continued: child %d continues with us", child.pid)

    def _on_signal(self, sig: signal.Signals) -> None:
        if self._received is None:
            self._received = sig
            _log.info("received %s; stopping gracefully", sig.name)
            self._event.set()
        else:
            _log.info("received %s while already stopping on %s", sig.name, self._received.name)

    def _on_ignored(self, sig: signal.Signals) -> None:
        _log.debug("ignoring %s: the terminal delivered it to the child too", sig.name)

    async def __aenter__(self) -> Self:
        if not self._install:
            return self
        if threading.current_thread() is not threading.main_thread():
            raise ProcessError("SignalWatcher only works in the main thread")
        if self._loop is not None:
            raise ProcessError("this SignalWatcher is already active")
        loop = asyncio.get_running_loop()
        for sig in _WATCHED_SIGNALS:
            if _is_asyncio_handler(signal.getsignal(sig)):
                raise ProcessError(f"another asyncio handler already owns {sig.name}")
        self._loop = loop
        try:
            for sig in _WATCHED_SIGNALS:
                self._previous[sig] = signal.getsignal(sig)
                ignored = sig == signal.SIGINT and self._ignore_sigint
                loop.add_signal_handler(sig, self._on_ignored if ignored else self._on_signal, sig)
        except (RuntimeError, ValueError, OSError) as exc:
            self._uninstall()
            raise ProcessError(f"cannot install signal handlers: {exc}") from exc
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._uninstall()

    def _uninstall(self) -> None:
        loop, self._loop = self._loop, None
        previous, self._previous = self._previous, {}
        for sig, handler in previous.items():
            try:
                if loop is not None and not loop.is_closed():
                    loop.remove_signal_handler(sig)
                # remove_signal_handler resets to the default; put back what
                # was there before (e.g. asyncio.run's own SIGINT handler).
                if handler is not None:
                    signal.signal(sig, handler)
            except (RuntimeError, ValueError, OSError) as exc:
                _log.debug("cannot restore the handler of %s: %s", sig.name, exc)

    def __repr__(self) -> str:
        state = "active" if self._loop is not None else "inactive"
        received = self._received.name if self._received is not None else None
        return f"SignalWatcher({state}, received={received!r})"
