"""The Supervisor: one supervised Codex run that moves between accounts.

``await Supervisor(pool).run(argv)`` runs ``codex <argv>`` on the best account
of the pool and follows the session's rollout. When the account runs low it
picks a successor in the background; when the policy says rotate it waits for
the turn to end, stops Codex, and resumes **the same session** with ``codex
resume <id>`` on the successor. A turn that already failed on the usage limit
(interactive, or a headless ``exec`` that exited on it) is cut over at once
and resumed with a continuation prompt, so the caller of ``exec`` sees one
successful run.

The steps (ARCHITECTURE.md, "The interactive run"): select → occupy → launch
→ bind → follow → decide → pre-warm → rotate at the boundary → resume. Every
choice of account goes through one :class:`~codex_supervisor.selection.AccountSelector`;
every step emits an event (:mod:`.events`).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import math
import os
import signal
import subprocess
import threading
import time
from collections.abc import Awaitable, Coroutine, Mapping, Sequence
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, Protocol, TypeAlias, TypeVar, final

import attrs

from ._watch import ChangeWatcher
from .accounts import AccountPool
from .clock import Clock, SystemClock
from .codex_cli import (
    TESTED_CODEX_VERSIONS,
    Invocation,
    Mode,
    detect_version,
    features_for,
    launch_argv,
    parse_argv,
    resume_argv,
)
from .config import child_environment
from .errors import (
    AccountBusy,
    AccountGone,
    AuthError,
    ConfigError,
    CredentialError,
    LoginQuarantined,
)
from .events import (
    AccountSelected,
    ChildExited,
    ChildLaunched,
    CodexVersionUntested,
    Event,
    EventSink,
    OccupancyLost,
    PrewarmReady,
    PrewarmStarted,
    Resumed,
    Rotating,
    RotationBlocked,
    SessionBound,
    WaitingForReset,
)
from .hooks import (
    HookEvent,
    HookInbox,
    hook_flags,
    hooks_trusted,
    overridden_by,
    switched_off_in_config,
    trust_flags,
)
from .lease import Lease
from .policy import (
    USAGE_LIMIT_ERRORS,
    Continue,
    PauseAtBoundary,
    Prewarm,
    RotateAtBoundary,
    RotateNow,
    RotationPolicy,
    WaitUntil,
    spent_between,
)
from .process import Child, SignalWatcher, StopPolicy, TerminalGuard, launch
from .quota import QuotaService
from .selection import AccountSelector, summarize
from .sessions import (
    Binding,
    RateLimitsObserved,
    RolloutReader,
    SessionBinder,
    TurnCompleted,
    TurnPhase,
    TurnStarted,
    is_session_id,
    last_turn_start,
    proc_available,
    session_created,
    writer_lock,
)
from .snapshots import QuotaSnapshot

__all__ = ["ChildLauncher", "RunResult", "Supervisor", "SupervisorConfig"]

log = logging.getLogger(__name__)

DEFAULT_CONTINUATION_PROMPT = (
    "The previous turn stopped because the account ran out of quota. "
    "Continue exactly where you left off."
)

_T = TypeVar("_T")
#: Pass-through commands that read or write credentials: refused under `run`.
_CREDENTIAL_COMMANDS = frozenset({"login", "logout"})
#: Invocations that continue a session whose rollout already holds turns.
_CONTINUING = frozenset({Mode.RESUME, Mode.EXEC_RESUME, Mode.FORK})
#: A session whose first line is older than a child's launch by more than this
#: existed before it (a rollout's clock and ours may differ a little).
_OWN_TURN_SLACK = timedelta(seconds=1)
#: Without /proc, a session of the child's folder whose first turn started this
#: recently (seconds), named by no hook yet, holds a rotation back: it may be the
#: child's own turn starting, whose SessionStart hook is on its way.
_UNNAMED_QUIET = 3.0
#: ... for this long (seconds) at most, in a row: by then a hook of the child's
#: would have named it, so it is another Codex's, busy in the same folder.
_MAX_DEFERRAL = 15.0
#: Turn starts further apart than this are not one turn's cost.
_MAX_TURN_GAP = timedelta(minutes=30)


class ChildLauncher(Protocol):
    """Starts a Codex child: :func:`codex_supervisor.process.launch`'s signature."""

    def __call__(
        self,
        argv: Sequence[str],
        *,
        env: Mapping[str, str],
        cwd: str | os.PathLike[str] | None = None,
        stdin: int | None = None,
        process_group: bool = False,
    ) -> Awaitable[Child]: ...


def _positive(_: object, attribute: attrs.Attribute[Any], value: float) -> None:
    if isinstance(value, bool) or not (isinstance(value, int | float) and math.isfinite(value)):
        raise ConfigError(f"{attribute.name} must be a finite number, got {value!r}")
    if value <= 0:
        raise ConfigError(f"{attribute.name} must be > 0, got {value!r}")


def _non_negative(_: object, attribute: attrs.Attribute[Any], value: float) -> None:
    if isinstance(value, bool) or not (isinstance(value, int | float) and math.isfinite(value)):
        raise ConfigError(f"{attribute.name} must be a finite number, got {value!r}")
    if value < 0:
        raise ConfigError(f"{attribute.name} must be >= 0, got {value!r}")


def _optional_positive(instance: object, attribute: attrs.Attribute[Any], value: float) -> None:
    if value is not None:
        _non_negative(instance, attribute, value)


def _count(_: object, attribute: attrs.Attribute[Any], value: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ConfigError(f"{attribute.name} must be an integer >= 0, got {value!r}")


def _text(_: object, attribute: attrs.Attribute[Any], value: str) -> None:
    if not isinstance(value, str) or not value.strip():
        raise ConfigError(f"{attribute.name} must be a non-empty string, got {value!r}")


@final
@attrs.frozen(kw_only=True)
class SupervisorConfig:
    """How a :class:`Supervisor` behaves; every field has a documented default.

    ``codex``: the Codex binary (``codex`` on PATH).
    ``continuation_prompt``: sent when a turn that failed on the usage limit
    is resumed on the successor.
    ``poll_interval``: seconds between looks at the child's open files
    while its session is not bound yet, and at the rollout when writes
    cannot be watched (0.25).
    ``session_hooks``: give each child Codex's own hooks (``SessionStart``,
    ``Stop``, trusted through ``-c`` flags, no file of the user's touched)
    that report which session it runs: the evidence where there is no
    ``/proc`` (macOS). None (the default): there, and with ``/proc`` for a
    command continuing a session not known at launch (a resume by name or
    picker), whose failed first turn may end between two looks at ``/proc``;
    elsewhere ``/proc`` shows what they would, and they cost each turn's end
    ~16 ms and ``codex exec`` four ``hook:`` lines on stderr. True: always;
    False: never.
    ``watch_files``: once the session is bound, sleep until its rollout or
    the pool state is written (watchdog: inotify, FSEvents, kqueue) instead
    of polling (True). When the watcher cannot start the run polls every
    ``poll_interval`` and says why in a WARNING.
    ``safety_poll``: while watching, look anyway at least this often
    (seconds; 5): what no file write announces (another session's lease, a
    reset time passing) is noticed within it.
    ``quota_stale_after``: quota older than this (seconds) is refreshed from
    the usage endpoint, which spends no quota (120).
    ``bind_timeout``: how long to look for the child's session (30).
    ``restart_budget``: rotations and crash restarts allowed in one run (8).
    ``crash_window`` / ``crash_backoff``: a resumed child failing within
    ``crash_window`` seconds counts as a crash; restarts back off from
    ``crash_backoff`` seconds, doubling.
    ``wait_for_reset``: when every account is blocked, wait until one can run
    (True) or fail with QuotaUnavailable (False); ``max_wait`` caps it.
    ``countdown_interval``: seconds between WaitingForReset events (1).
    ``lease_ttl``: occupancy lease TTL (seconds; renewed at a third).
    ``stop``: the SIGINT → SIGTERM → SIGKILL graces.

    Invalid values raise :class:`~codex_supervisor.errors.ConfigError`.
    """

    codex: str = attrs.field(default="codex", validator=_text)
    continuation_prompt: str = attrs.field(default=DEFAULT_CONTINUATION_PROMPT, validator=_text)
    poll_interval: float = attrs.field(default=0.25, validator=_positive)
    watch_files: bool = True
    session_hooks: bool | None = None
    safety_poll: float = attrs.field(default=5.0, validator=_positive)
    quota_stale_after: float = attrs.field(default=120.0, validator=_non_negative)
    bind_timeout: float = attrs.field(default=30.0, validator=_positive)
    restart_budget: int = attrs.field(default=8, validator=_count)
    crash_window: float = attrs.field(default=10.0, validator=_non_negative)
    crash_backoff: float = attrs.field(default=1.0, validator=_non_negative)
    wait_for_reset: bool = True
    max_wait: float | None = attrs.field(default=None, validator=_optional_positive)
    countdown_interval: float = attrs.field(default=1.0, validator=_positive)
    lease_ttl: float = attrs.field(default=30.0, validator=_positive)
    stop: StopPolicy = attrs.field(factory=StopPolicy)


def _shell_exit_code(code: int) -> int:
    """A process's return code as a shell reports it: -N (killed by signal N) is 128 + N."""
    return 128 - code if code < 0 else code


@final
@attrs.frozen(kw_only=True)
class RunResult:
    """How a supervised run ended.

    ``exit_code`` is Codex's exit code as a shell reports it: ``128 + N``
    when Codex was killed by signal N, and ``128 + signal`` when the
    supervisor was stopped by a signal (``signal`` then names it).
    ``session_id`` is the conversation the run followed (``None`` when it was
    never identified); ``accounts`` every account a child ran on, in order
    (an account appears again when the run came back to it); ``rotations``
    how many times the session moved to a successor.
    """

    exit_code: int = attrs.field(converter=_shell_exit_code)
    session_id: str | None
    accounts: tuple[str, ...]
    rotations: int
    signal: int | None = None

    @property
    def ok(self) -> bool:
        """True when Codex finished with exit code 0."""
        return self.exit_code == 0


# -- what one child's run came to (a small sum type) ------------------------------------


@attrs.frozen(kw_only=True)
class _Exited:
    """The child exited on its own: its exit code is the answer (or a crash)."""

    returncode: int
    session_id: str | None


@attrs.frozen(kw_only=True)
class _Rotate:
    """The session must move: at a boundary, or at once after a failed turn."""

    returncode: int
    session_id: str | None
    reason: str
    successor: str | None
    immediate: bool
    exhausted: bool
    snapshot: QuotaSnapshot | None = None


@attrs.frozen(kw_only=True)
class _Interrupted:
    """The supervisor was told to stop (a signal); the child has been stopped."""

    returncode: int
    session_id: str | None
    signal: signal.Signals


_Outcome: TypeAlias = _Exited | _Rotate | _Interrupted


@attrs.define
class _ChildRun:
    """The state of one running child, kept in one place."""

    inv: Invocation
    child: Child
    account: str
    home: Path
    workdir: Path
    launched_at: datetime
    binder: SessionBinder
    binding: Binding | None
    known_session: str | None
    prompt_in_argv: bool
    bind_deadline: float
    last_passive: float
    reader: RolloutReader | None = None
    turns_at_launch: int = 0
    prewarm: asyncio.Task[str | None] | None = None
    turns_started: int = 0  # turns this child started (not the session's earlier ones)
    caught_up: bool = False  # the session's earlier lines were read before following
    can_restart: bool = True  # the restart budget allows one more rotation
    # The last rate limits this child's rollout reported: the evidence of a
    # failed turn (what the 429 said), which a later probe must not replace.
    rollout_quota: QuotaSnapshot | None = None
    # The binding problem last logged (ambiguous, or stale before a
    # rotation): logged once, not on every poll.
    binding_problem: str | None = None
    # Why rotation is off, each said once as a RotationBlocked event.
    blocked_reasons: set[str] = attrs.Factory(set)
    # Where this child's session hooks report (None: hooks off for this run).
    hooks: HookInbox | None = None
    # Without /proc the bind clock starts when a new session first appears.
    clock_waits_for_session: bool = False
    # Every session this child's hooks named, and one named but not readable yet.
    hook_sessions: set[str] = attrs.Factory(set)
    pending_hook: HookEvent | None = None
    pending_since: float = 0.0
    # Without /proc: since when (Unix time) a rotation waits on a turn just started nearby.
    deferred_since: float | None = None

    @property
    def session_id(self) -> str | None:
        return None if self.binding is None else self.binding.session_id

    def limit_failure(self) -> str | None:
        """The usage-limit error of this child's last turn, if that turn is over and failed so.

        Only a turn that ended under this child counts (a resumed session's
        last turn may have failed under the previous account), only while no
        later turn runs (an old error must not make a healthy turn look
        failed), and only a usage-limit error (a dropped stream is not the
        account running out).
        """
        if self.reader is None:
            return None
        state = self.reader.state
        if state.phase is not TurnPhase.IDLE or state.turns_completed <= self.turns_at_launch:
            return None
        error = None if state.last_error is None else state.last_error.codex_error_info
        return error if error in USAGE_LIMIT_ERRORS else None

    def safe_to_stop(self) -> bool:
        """No turn in flight and no prompt of this child's still to be sent.

        Between turns; or before the first one when the child was launched
        without a prompt (an idle TUI). A child launched with a prompt that
        has not started its turn yet would lose that prompt if stopped.
        """
        if self.reader is None:
            return False
        state = self.reader.state
        phase = state.phase
        if phase is TurnPhase.IN_TURN and self.turns_started == 0 and self.caught_up:
            # A turn marker from before this child: its writer died mid-turn.
            phase = TurnPhase.IDLE
        ran_own_turn = self.turns_started > 0 or state.turns_completed > self.turns_at_launch
        if self.prompt_in_argv:
            # Its prompt must have run its turn (a resumed session reads as
            # idle from its earlier turns before that), and that turn ended.
            return ran_own_turn and phase is TurnPhase.IDLE
        return phase in (TurnPhase.IDLE, TurnPhase.UNKNOWN)

    def successor(self) -> str | None:
        task = self.prewarm
        if task is None or not task.done() or task.cancelled() or task.exception() is not None:
            return None
        return task.result()


@final
class Supervisor:
    """Runs Codex under the best account of a pool and rotates it before quota runs out.

    **What it does.** :meth:`run` chooses an account (through its
    :class:`~codex_supervisor.selection.AccountSelector`), holds a shared
    occupancy lease on it, starts Codex there and follows the session's
    rollout. Under pressure it pre-warms a successor, rotates at the next turn
    boundary and resumes the same session on it; a turn that failed on the
    usage limit is resumed at once with ``config.continuation_prompt``.

    **When it blocks.** When no account can run — at the start or after an
    account ran out — it waits (``config.wait_for_reset``) until one can: the
    current account included, whichever comes first. The wait re-evaluates
    every ``config.countdown_interval`` seconds and as soon as the pool state
    or the occupancy changes (another session ended, ``status --refresh``
    stored fresher quota, a cooldown was lifted), and a reset time passing is
    noticed within that interval. It emits
    :class:`~codex_supervisor.events.WaitingForReset` at once and then every
    interval; with no ``sink`` it logs the wait on this module's logger (a
    WARNING, which Python prints even without logging configured).
    ``config.max_wait`` bounds it; ``wait_for_reset=False`` raises
    :class:`~codex_supervisor.errors.QuotaUnavailable` instead.

    **Signals.** Called from the main thread, a run handles SIGTERM and SIGHUP
    (stop the child gracefully, release the leases, return ``128 + signal``)
    and SIGINT: ignored only while an interactive TUI child owns the terminal
    (the terminal delivers Ctrl-C to it); during a wait, a backoff or a
    headless ``exec`` child it ends the run (130). No Codex runs during a wait,
    so nothing is lost. From any other thread no signal handler is installed:
    signals are then the caller's business — cancel the task running
    :meth:`run`, or call :meth:`request_stop`.

    **What it raises.** :class:`~codex_supervisor.errors.ConfigError` (empty
    pool, bad arguments), :class:`~codex_supervisor.errors.QuotaUnavailable`
    (no account and no wait allowed, or ``max_wait`` passed),
    :class:`~codex_supervisor.errors.AuthError` (the same, when every account
    is held back because a newer login of it waits in the pool's quarantine:
    :class:`~codex_supervisor.errors.LoginQuarantined` when there is one —
    Codex never starts on such an account, whose home holds a spent refresh
    token; with ``wait_for_reset`` the run waits for the login to be taken
    back instead), :class:`~codex_supervisor.errors.CodexNotFoundError` /
    :class:`~codex_supervisor.errors.UnsupportedCodexVersion` (the binary), and
    :class:`~codex_supervisor.errors.ProcessError`. On every path the child is
    reaped, leases are released and the terminal is restored before it
    returns or raises.

    **Injectable.** The pool, the policy, the quota service (default: the
    usage endpoint with the pool's credentials), the event sink, the clock,
    the launcher (default :func:`~codex_supervisor.process.launch`) and
    ``environ`` — the environment children start from, default
    ``os.environ`` read when the Supervisor is built; the library's own
    variables are removed and ``CODEX_HOME`` set per account on every launch.
    """

    def __init__(
        self,
        pool: AccountPool,
        *,
        config: SupervisorConfig | None = None,
        policy: RotationPolicy | None = None,
        quota: QuotaService | None = None,
        sink: EventSink | None = None,
        clock: Clock | None = None,
        environ: Mapping[str, str] | None = None,
        launcher: ChildLauncher | None = None,
        selector: AccountSelector | None = None,
    ) -> None:
        self.pool = pool
        self.config = config or SupervisorConfig()
        self.clock = clock or SystemClock()
        self.sink = sink
        self.environ = dict(os.environ if environ is None else environ)
        self._launch: ChildLauncher = launcher or launch
        self.selector = selector or AccountSelector(
            pool,
            policy=policy,
            quota=quota,
            clock=self.clock,
            sink=self._emit,
            stale_after=self.config.quota_stale_after,
            tick=self.config.countdown_interval,
            environ=self.environ,
        )
        if selector is not None and selector.sink is None:
            selector.sink = self._emit
        self.policy = self.selector.policy
        self._signals: SignalWatcher | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        # Turn-cost learning: the newest snapshot when the last turn started,
        # for the account the session runs on (dropped when it moves, so
        # time spent elsewhere never counts as a turn).
        self._turn_base: dict[str, QuotaSnapshot] = {}
        # The occupancy lease of the child running now, and what it says it is for.
        self._occupancy: tuple[str, Lease, str] | None = None
        # Why this run's children get no session hooks (None: they do).
        self._hooks_off: str | None = "not decided yet"
        self._stop_requested: signal.Signals | None = None
        self._waiting_logged = False

    @property
    def quota(self) -> QuotaService:
        """The quota service the selector reads through."""
        return self.selector.quota

    # -- public entry points ---------------------------------------------------------

    def run_sync(self, argv: Sequence[str], cwd: Path | str | None = None) -> RunResult:
        """:meth:`run` for scripts: runs its own event loop (any thread)."""
        return asyncio.run(self.run(argv, cwd=cwd))

    async def run(self, argv: Sequence[str], cwd: Path | str | None = None) -> RunResult:
        """Run ``codex <argv>`` supervised; see the class documentation."""
        inv = parse_argv(list(argv))
        # The caller's folder, where the child starts while its argv still
        # carries -C DIR (Codex applies DIR itself: starting in DIR as well
        # made a relative DIR count twice), and the session's folder, which
        # binding matches and where an exec resume (which has no -C) runs.
        base = Path(cwd or Path.cwd())
        workdir = (base / inv.cwd if inv.cwd else base).resolve()
        in_main = threading.current_thread() is threading.main_thread()
        try:
            async with SignalWatcher(ignore_sigint=False, install=in_main) as signals:
                self._loop = asyncio.get_running_loop()
                self._signals = signals
                if self._stop_requested is not None:  # asked before the watcher existed
                    signals.trigger(self._stop_requested)
                if inv.mode is Mode.PASSTHROUGH:
                    return await self._passthrough(inv, base, signals)
                result = await self._supervise(inv, workdir, base, signals)
                # Let the after-turn usage probe land (it teaches the next
                # run what this turn really cost), but never wait long.
                await self.selector.settle(1.0)
                return result
        finally:
            self._signals = None
            self._loop = None
            self._stop_requested = None
            await self.selector.aclose()

    def request_stop(self, sig: signal.Signals = signal.SIGTERM) -> None:
        """Stop the current run as if ``sig`` had arrived; safe from any thread.

        A stop requested while :meth:`run` is starting takes effect as soon
        as it can; one requested between runs is kept for the next run.
        """
        self._stop_requested = sig
        loop, signals = self._loop, self._signals
        if loop is not None and signals is not None and not loop.is_closed():
            # Wake the run's own loop: an Event set from another thread
            # would not be noticed until something else woke it.
            loop.call_soon_threadsafe(signals.trigger, sig)

    # -- events ---------------------------------------------------------------------------

    def _emit(self, event: Event) -> None:
        log.debug("event %s: %s", event.name, event.message)
        if isinstance(event, WaitingForReset) and self.sink is None and not self._waiting_logged:
            # Nobody listens: say once, loudly, why the run is not doing anything.
            self._waiting_logged = True
            log.warning("%s", event.message)
        if self.sink is not None:
            try:
                self.sink(event)
            except Exception:
                log.exception("event sink failed on %s", event.name)

    async def _or_signal(
        self, work: Coroutine[Any, Any, _T], signals: SignalWatcher
    ) -> _T | signal.Signals:
        """Run ``work`` until it finishes or a watched signal arrives (then cancel it)."""
        task: asyncio.Task[_T] = asyncio.ensure_future(work)
        stopper = asyncio.ensure_future(signals.wait())
        try:
            await asyncio.wait({task, stopper}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            stopper.cancel()
            if not task.done():
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        if task.done() and not task.cancelled():
            if signals.received is not None and task.exception() is None:
                return signals.received  # both at once: the signal wins
            return task.result()
        assert signals.received is not None
        return signals.received

    # -- selection ---------------------------------------------------------------------------

    async def _select(self, signals: SignalWatcher, *, avoid: str | None = None) -> str | int:
        """The account to launch on (waiting if none can run), or 128+signal."""
        self._waiting_logged = False
        chosen = await self._or_signal(
            self.selector.select(
                avoid=avoid, wait=self.config.wait_for_reset, max_wait=self.config.max_wait
            ),
            signals,
        )
        if isinstance(chosen, signal.Signals):
            return 128 + int(chosen)
        snapshot = await self._newest(chosen)
        why = "no quota data yet" if snapshot is None else summarize(snapshot)
        self._emit(AccountSelected(at=self.clock.now(), account=chosen, reason=why))
        return chosen

    # -- the run ---------------------------------------------------------------------------------

    async def _passthrough(
        self, inv: Invocation, workdir: Path, signals: SignalWatcher
    ) -> RunResult:
        """Run a command we do not supervise (login, --help, ...) once, as it is.

        It runs with the caller's own environment and CODEX_HOME, never in a
        pooled account's home: ``codex logout`` there would delete a pooled
        login.
        """
        if inv.subcommand in _CREDENTIAL_COMMANDS:
            # They act on the credentials of whichever home they run in; a
            # pool's logins are managed by the pool (import, login, remove).
            raise ConfigError(
                f"`codex {inv.subcommand}` is not run under the supervisor: add or renew a "
                "pooled login with `accounts login NAME` (or AccountPool.login), take one out "
                "with `accounts remove NAME`; run `codex "
                f"{inv.subcommand}` directly for your own CODEX_HOME"
            )
        env = child_environment(self.pool.base_codex_home, self.environ)
        if signals.received is not None:  # stopped before anything started
            sig = int(signals.received)
            return RunResult(
                exit_code=128 + sig, session_id=None, accounts=(), rotations=0, signal=sig
            )
        with signals.ignoring_sigint():
            child = await self._launch([self.config.codex, *inv.argv], env=env, cwd=workdir)
            code = await self._wait_or_signal(child, signals)
        return RunResult(
            exit_code=code,
            session_id=None,
            accounts=(),
            rotations=0,
            signal=None if signals.received is None else int(signals.received),
        )

    async def _wait_or_signal(self, child: Child, signals: SignalWatcher) -> int:
        waiter = asyncio.ensure_future(child.wait())
        stopper = asyncio.ensure_future(signals.wait())
        try:
            await asyncio.wait({waiter, stopper}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            stopper.cancel()
            if not waiter.done() and signals.received is None:
                waiter.cancel()
                await child.stop(self.config.stop)
        if signals.received is not None and child.returncode is None:
            waiter.cancel()
            await child.stop(self.config.stop, first_signal=signals.received)
            return 128 + int(signals.received)
        return await waiter

    async def _supervise(  # noqa: PLR0911, PLR0912, PLR0915 - the rotation loop, in one place
        self, inv: Invocation, workdir: Path, base: Path, signals: SignalWatcher
    ) -> RunResult:
        if not await self.selector.accounts(fresh=True):
            raise ConfigError(f"the pool at {self.pool.root} has no accounts; add one first")
        # Even `codex --version` gets the child environment: no variable of the
        # library's own reaches any process it starts.
        version_env = child_environment(self.pool.base_codex_home, self.environ)
        version = await detect_version(self.config.codex, env=version_env)
        features = features_for(version)
        # The first reading used every release's grammar; this Codex's own may
        # differ (an option newer than it, a subcommand it still has).
        own = parse_argv(inv.argv, version=version)
        if own.mode is Mode.PASSTHROUGH:
            log.info("codex %s reads this command line differently: %s", version, own.reason)
            return await self._passthrough(own, base, signals)
        inv = own
        if features.newer_than_tested:
            self._emit(
                CodexVersionUntested(
                    at=self.clock.now(),
                    version=str(version),
                    newest_tested=TESTED_CODEX_VERSIONS[-1],
                )
            )
        session_id = self._initial_session(inv, workdir)
        argv = launch_argv(inv, features)
        self._hooks_off = await self._hooks_decision(inv, str(version), version_env, session_id)
        budget = self.config.restart_budget
        resumed = False
        prompt_in_argv = inv.prompt is not None or inv.is_exec
        crashes = 0
        rotations = 0
        used: list[str] = []
        failures: dict[str, int] = {}
        refused = 0  # launches refused in a row for a login in quarantine

        def result(code: int, sig: int | None = None) -> RunResult:
            return RunResult(
                exit_code=code,
                session_id=session_id,
                accounts=tuple(used),
                rotations=rotations,
                signal=sig,
            )

        selected = await self._select(signals)
        if isinstance(selected, int):
            return result(selected, selected - 128)
        account = selected
        while True:
            if signals.received is not None:  # arrived while stopping or choosing
                return result(128 + int(signals.received), int(signals.received))
            started = self.clock.monotonic()
            used.append(account)
            # An exec resume drops -C: it runs in the session's folder itself.
            carries_cd = inv.cwd is not None and not (resumed and inv.is_exec)
            try:
                outcome = await self._run_child(
                    inv,
                    argv,
                    account,
                    workdir,
                    session_id,
                    launch_cwd=base if carries_cd else workdir,
                    resumed=resumed,
                    prompt_in_argv=prompt_in_argv,
                    can_restart=budget > 0,
                    signals=signals,
                )
            except (LoginQuarantined, CredentialError) as exc:
                # A newer login elsewhere, or a shared store that cannot be used.
                refusal: AuthError | None = exc
            except AccountGone as exc:
                # Removed from the pool after it was chosen (or during a
                # crash restart's backoff): Codex never started on it.
                used.pop()
                chosen = await self._instead_of_gone(exc, signals, session_id)
                if isinstance(chosen, int):
                    return result(chosen, chosen - 128)
                account = chosen
                continue
            except AccountBusy as exc:
                # A shared pool: another machine took it since it was chosen.
                used.pop()
                log.info("not launching Codex on %s: %s; choosing another", account, exc)
                selected = await self._select(signals, avoid=account)
                if isinstance(selected, int):
                    return result(selected, selected - 128)
                account = selected
                continue
            else:
                refusal = None
            if refusal is not None:
                # A newer login of it went to quarantine since it was chosen:
                # its home holds a spent refresh token. Not launched; another
                # account is chosen (the selector now holds this one back).
                used.pop()
                refused += 1
                if refused > len(await self.selector.accounts()):
                    raise refusal
                log.error("not launching Codex on %s: %s", account, refusal)
                self.selector.recheck_held_back()
                selected = await self._select(signals, avoid=account)
                if isinstance(selected, int):
                    return result(selected, selected - 128)
                account = selected
                continue
            refused = 0
            session_id = outcome.session_id or session_id
            if isinstance(outcome, _Interrupted):
                return result(128 + int(outcome.signal), int(outcome.signal))
            if isinstance(outcome, _Exited):
                ran = self.clock.monotonic() - started
                if not (resumed and outcome.returncode != 0 and ran < self.config.crash_window):
                    return result(outcome.returncode)
                # A resumed child that fails at once is a crash, not an
                # answer: retry with backoff while the budget lasts.
                crashes += 1
                if crashes > budget:
                    log.error("codex keeps failing right after resume; giving up")
                    return result(outcome.returncode)
                delay = self.config.crash_backoff * 2 ** (crashes - 1)
                log.warning(
                    "codex exited %d right after resume; retrying in %.1fs",
                    outcome.returncode,
                    delay,
                )
                slept = await self._or_signal(self.clock.sleep(delay), signals)
                if isinstance(slept, signal.Signals):
                    return result(128 + int(slept), int(slept))
                continue
            if not outcome.exhausted:
                failures.pop(account, None)  # it ran fine: a later failure starts afresh
            else:
                failures[account] = failures.get(account, 0) + 1
                await self.selector.cool_down(
                    account,
                    snapshot=outcome.snapshot,
                    failures=failures[account] - 1,
                    cause=f"{account} ran out of quota",
                )
            if session_id is None:
                log.error("cannot rotate: the session of this run was never identified")
                return result(outcome.returncode or 1)
            budget -= 1
            if budget < 0:
                log.error("restart budget used up; not rotating again")
                return result(outcome.returncode or 1)
            successor = await self._successor(outcome, account, signals)
            if isinstance(successor, int):
                return result(successor, successor - 128)
            self._emit(
                Rotating(
                    at=self.clock.now(),
                    from_account=account,
                    to_account=successor,
                    session_id=session_id,
                    reason=outcome.reason,
                    immediate=outcome.immediate,
                )
            )
            prompt = self.config.continuation_prompt if outcome.immediate or inv.is_exec else None
            prompt_in_argv = prompt is not None
            argv = resume_argv(inv, session_id, features, prompt=prompt)
            account = successor
            resumed = True
            rotations += 1

    def _initial_session(self, inv: Invocation, workdir: Path) -> str | None:
        """The session a resume names, when it can be known before launch."""
        if inv.mode not in (Mode.RESUME, Mode.EXEC_RESUME):
            return None
        binder = SessionBinder(self.pool.base_codex_home)
        if inv.last:
            found = binder.resolve_last(cwd=workdir, interactive_only=inv.mode is Mode.RESUME)
            return found.session_id if found else None
        ref = inv.session_ref
        if ref is not None and is_session_id(ref) and binder.find_by_id(ref) is not None:
            return ref
        return None  # a session name: bound from the child's open files after launch

    async def _successor(self, outcome: _Rotate, account: str, signals: SignalWatcher) -> str | int:
        # Re-validate the pre-warmed successor against the latest data;
        # otherwise choose afresh, over every account (the one just left
        # included: its own reset may come first).
        if outcome.successor is not None and outcome.successor != account:
            candidates = await self.selector.candidates()
            chosen = next((c for c in candidates if c.name == outcome.successor), None)
            usable = (
                self.policy.can_take_turn
                if self.policy.pause_when_drained
                else self.policy.launchable
            )
            if chosen is not None and usable(chosen, self.clock.now()):
                return outcome.successor
        return await self._select(signals, avoid=account)

    async def _instead_of_gone(
        self, gone: AccountGone, signals: SignalWatcher, session_id: str | None
    ) -> str | int:
        """Another account to launch on, when the chosen one left the pool first; or 128+signal.

        Raises :class:`~codex_supervisor.errors.AccountGone` when no account is left.
        """
        if not await self.selector.accounts(fresh=True):
            resume = f"; resume session {session_id} once one is added" if session_id else ""
            raise AccountGone(
                gone.name,
                f"{gone.reason}, and no other account is left in the pool at "
                f"{self.pool.root}{resume}",
            ) from gone
        log.warning("not launching Codex on %s (%s); choosing another account", gone.name, gone)
        return await self._select(signals, avoid=gone.name)

    async def _hooks_decision(
        self, inv: Invocation, version: str, env: Mapping[str, str], session_id: str | None
    ) -> str | None:
        """Why this run's children get no session hooks, or None when they do.

        By default only where they tell what ``/proc`` may not: without it,
        and for a command that continues a session not known at launch (a
        resume by name or picker, ``--last`` with nothing found yet), whose
        failed first turn may end before ``/proc`` is looked at.
        """
        if self.config.session_hooks is False:
            return "session hooks are switched off (SupervisorConfig.session_hooks)"
        unknown = inv.mode in _CONTINUING and session_id is None
        if self.config.session_hooks is None and proc_available() and not unknown:
            return "/proc shows which session Codex writes"
        why = overridden_by(inv.argv)
        if why is None and switched_off_in_config(self.pool.base_codex_home):
            why = f"hooks are switched off in {self.pool.base_codex_home / 'config.toml'}"
        if why is not None:
            log.info("no session hooks for this run: %s", why)
            return why
        if version not in TESTED_CODEX_VERSIONS and not await hooks_trusted(
            self.config.codex, version, environ=env
        ):
            return f"codex {version} does not trust the supervisor's hooks"
        return None

    async def _run_child(
        self,
        inv: Invocation,
        argv: list[str],
        account: str,
        workdir: Path,
        session_id: str | None,
        *,
        launch_cwd: Path,
        resumed: bool,
        prompt_in_argv: bool,
        can_restart: bool,
        signals: SignalWatcher,
    ) -> _Outcome:
        guard = TerminalGuard() if inv.is_interactive else None
        # A resumed exec gets its prompt in argv: it must not wait on stdin.
        stdin = subprocess.DEVNULL if inv.is_exec and resumed else None
        # Occupy first, then prepare the home: an account removed before it
        # was occupied raises AccountGone in either (never a fresh empty home
        # without a login), and once occupied no `remove` can move it away.
        # What the occupancy says it is for (`status` shows it); the session
        # is added once known (a resume knows it now).
        base = f"codex {inv.mode.value} in {workdir}"
        purpose = base if session_id is None else f"{base}, session {session_id}"
        async with self.pool.occupy(
            account,
            purpose=purpose,
            ttl=self.config.lease_ttl,
            on_lost=functools.partial(self._occupancy_lost, account),
        ) as lease:
            self._occupancy = (account, lease, base)
            # A state read and links, no lock: quick enough for the cutover path.
            home = self.pool.prepare_home(account)
            env = child_environment(home, self.environ)
            if guard is not None:
                guard.save()
            try:
                # The TUI owns the terminal: Ctrl-C is its keystroke, not ours.
                with signals.ignoring_sigint(inv.is_interactive):
                    return await self._launch_and_follow(
                        inv,
                        argv,
                        account=account,
                        home=home,
                        workdir=workdir,
                        launch_cwd=launch_cwd,
                        session_id=session_id,
                        env=env,
                        stdin=stdin,
                        resumed=resumed,
                        prompt_in_argv=prompt_in_argv,
                        can_restart=can_restart,
                        signals=signals,
                    )
            finally:
                self._occupancy = None
                if guard is not None:
                    guard.restore()

    def _occupancy_lost(self, account: str, lease: Lease) -> None:
        """The child's occupancy lease was lost for good: say so loudly, once.

        Nothing else is done to the child: stopping Codex mid-turn would cost
        the user more than the lost claim does.
        """
        reason = lease.lost_reason or "unknown"
        log.error(
            "the occupancy lease of account %r was lost (%s): other sessions no longer "
            "see this Codex on it, so a remove or a quota probe may proceed meanwhile",
            account,
            reason,
        )
        self._emit(OccupancyLost(at=self.clock.now(), account=account, reason=reason))

    async def _launch_and_follow(
        self,
        inv: Invocation,
        argv: list[str],
        *,
        account: str,
        home: Path,
        workdir: Path,
        launch_cwd: Path,
        session_id: str | None,
        env: Mapping[str, str],
        stdin: int | None,
        resumed: bool,
        prompt_in_argv: bool,
        can_restart: bool,
        signals: SignalWatcher,
    ) -> _Outcome:
        if self.pool.quarantine_listing():
            # The last look before Codex starts there (its lease is held): a
            # newer login of the account waiting in quarantine leaves a spent
            # refresh token in its home. LoginQuarantined: choose another.
            await asyncio.to_thread(self.pool.ensure_no_quarantine, account)
        hooks, flags = self._session_hooks(home, inv, session_id)
        launched_at = self.clock.now()
        # A headless exec leads a process group of its own, so a stop reaches
        # its whole tree (MCP servers, tool commands); the TUI must stay in the
        # terminal's foreground group.
        try:
            child = await self._launch(
                [self.config.codex, *flags, *argv],
                env=env,
                cwd=launch_cwd,
                stdin=stdin,
                process_group=not inv.is_interactive,
            )
        except BaseException:
            if hooks is not None:
                hooks.close()
            raise
        run: _ChildRun | None = None
        try:
            # From here on the child is stopped and reaped whatever happens.
            self._emit(
                ChildLaunched(at=launched_at, account=account, pid=child.pid, argv=tuple(argv))
            )
            if resumed and session_id is not None:
                self._emit(
                    Resumed(
                        at=self.clock.now(), account=account, session_id=session_id, pid=child.pid
                    )
                )
            self._turn_base = {k: v for k, v in self._turn_base.items() if k == account}
            binder = SessionBinder(home)
            run = _ChildRun(
                inv=inv,
                child=child,
                account=account,
                home=home,
                workdir=workdir,
                launched_at=launched_at,
                binder=binder,
                binding=binder.find_by_id(session_id) if session_id else None,
                known_session=session_id,
                prompt_in_argv=prompt_in_argv,
                can_restart=can_restart,
                bind_deadline=self._bind_deadline(hooks),
                last_passive=self.clock.monotonic(),
                hooks=hooks,
                clock_waits_for_session=hooks is not None and not proc_available(),
            )
            with signals.relaying_stops(child):
                outcome = await self._monitor(run, signals)
        finally:
            if run is not None and run.prewarm is not None and not run.prewarm.done():
                run.prewarm.cancel()
            try:
                if child.returncode is None:
                    await child.stop(self.config.stop)
            finally:
                if hooks is not None:
                    hooks.close()
        self._emit(
            ChildExited(
                at=self.clock.now(),
                account=account,
                returncode=outcome.returncode,
                stopped=not isinstance(outcome, _Exited),
            )
        )
        return outcome

    def _session_hooks(
        self, home: Path, inv: Invocation, session_id: str | None
    ) -> tuple[HookInbox | None, list[str]]:
        """An inbox and the ``-c`` flags that make one child's hooks report to it, if on.

        An exec of a known session (every rotation's successor) needs none:
        it runs that one session, found by id, and its first model request
        need not wait for a hook. A child without our hooks still gets the
        user's hook trust re-keyed to its home (unless its command line sets
        ``hooks.state`` itself), so the user's own hooks run there.
        """
        base = self.pool.base_codex_home
        users_own = [] if overridden_by(inv.argv) is not None else trust_flags(base, home)
        if self._hooks_off is not None or (inv.is_exec and session_id is not None):
            return None, users_own
        try:
            inbox = HookInbox(self.pool.root / "hooks")
        except OSError as exc:
            log.warning("no session hooks for this child: %s", exc)
            return None, users_own
        flags = hook_flags(inbox.path, base_home=base, account_home=home)
        if flags is None:
            inbox.close()
            log.warning(
                "no session hooks for this child: no Python to run them with, "
                "or a path that cannot be passed to Codex (%s)",
                inbox.path,
            )
            return None, users_own
        return inbox, flags

    def _bind_deadline(self, hooks: HookInbox | None) -> float:
        """When to give up looking for the child's session (monotonic).

        With ``/proc`` the child is seen writing it within seconds. Without,
        only a hook names it, at the session's first turn, which may be long
        after launch (a TUI waiting for its first prompt): the clock starts
        when a new session appears (see :meth:`_bind`).
        """
        if hooks is not None and not proc_available():
            return math.inf
        return self.clock.monotonic() + self.config.bind_timeout

    async def _newest(self, account: str) -> QuotaSnapshot | None:
        found = next((a for a in await self.selector.accounts() if a.name == account), None)
        return None if found is None else self.selector.snapshot(found)

    def _watcher(self, changed: asyncio.Event) -> ChangeWatcher | None:
        """A watcher that sets ``changed`` on the loop, or None when watching is off."""
        if not self.config.watch_files:
            return None
        loop = asyncio.get_running_loop()

        def wake() -> None:  # on the watcher's thread
            loop.call_soon_threadsafe(changed.set)

        return ChangeWatcher(wake)

    def _next_look(self, run: _ChildRun, *, watching: bool) -> float:
        """Seconds the follow loop may sleep unless something wakes it."""
        poll = self.config.poll_interval
        if not watching:
            # Binding looks at /proc, which announces nothing: poll (it
            # ends within seconds, bound or given up); so does a run whose
            # watcher could not start.
            return poll
        # The quota staleness probe is due at a known time: look then.
        due = run.last_passive + self.config.quota_stale_after - self.clock.monotonic()
        return max(poll, min(self.config.safety_poll, due))

    def _blind(self, run: _ChildRun, slept_watching: bool, announced: bool, offset: int) -> bool:  # noqa: FBT001
        """Whether a sleep on the watcher ended by time with rollout lines no event announced.

        Then the watch is blind (its folder was replaced, a filesystem that
        sends no events): said once, and the run polls from then on.
        """
        reader = run.reader
        if not slept_watching or announced or reader is None or not reader.offset > offset >= 0:
            return False
        log.warning(
            "the rollout of session %s was written without a file event; polling every %gs instead",
            run.session_id,
            self.config.poll_interval,
        )
        return True

    async def _monitor(self, run: _ChildRun, signals: SignalWatcher) -> _Outcome:
        # An exec's group is cleared once it exits: what it left running
        # (a tool command, a server) has nobody left to serve.
        waiter = asyncio.ensure_future(run.child.wait_group())
        stopper = asyncio.ensure_future(signals.wait())
        # Woken by writes to the rollout and the pool state (another
        # process's cooldown, a probe's result) instead of a fast poll.
        changed = asyncio.Event()
        watcher = self._watcher(changed)
        woken = asyncio.ensure_future(changed.wait())
        slept_watching = False  # the last sleep relied on the watcher
        offset = -1  # the rollout's read offset when that sleep began
        try:
            while True:
                if watcher is not None:
                    changed.clear()
                    watcher.rearm()  # before reading: a write from now on wakes again
                self._bind(run)
                await self._follow(run)
                announced = woken.done() or changed.is_set()
                if watcher is not None and self._blind(run, slept_watching, announced, offset):
                    watcher.close()
                    watcher = None
                if run.child.returncode is not None or waiter.done():
                    code = await waiter
                    self._bind_finished(run)
                    await self._follow(run)
                    return await self._after_exit(run, code)
                if signals.received is not None:
                    await run.child.stop(self.config.stop, first_signal=signals.received)
                    return _Interrupted(
                        returncode=run.child.returncode or 0,
                        session_id=run.session_id,
                        signal=signals.received,
                    )
                if self.clock.monotonic() - run.last_passive > self.config.quota_stale_after:
                    run.last_passive = self.clock.monotonic()
                    self.selector.probe_in_background(run.account)
                if run.reader is not None:
                    outcome = await self._decide(run)
                    if outcome is not None:
                        return outcome
                # Looking for the child's session in /proc, which announces nothing.
                binding = (
                    run.binding is None and math.isfinite(run.bind_deadline) and proc_available()
                )
                generation = watcher.generation if watcher is not None else 0
                watching = watcher is not None and not binding and watcher.track(self._watched(run))
                if woken.done():
                    woken = asyncio.ensure_future(changed.wait())
                # A new watch: a write just before it was in place went unannounced.
                fresh = watching and watcher is not None and watcher.generation != generation
                timeout = 0.0 if fresh else self._next_look(run, watching=watching)
                slept_watching = watching and timeout > 0
                offset = run.reader.offset if run.reader is not None else -1
                await asyncio.wait(
                    {waiter, stopper, woken}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED
                )
        finally:
            stopper.cancel()
            woken.cancel()
            if not waiter.done():
                waiter.cancel()
            if watcher is not None:
                watcher.close()

    def _watched(self, run: _ChildRun) -> list[Path]:
        """The files whose writes wake the follow loop.

        The pool state, the rollout once bound, and the child's hook inbox.
        """
        files = list(self.pool.state.watch_paths())
        if run.binding is not None:
            files.append(run.binding.path)
        if run.hooks is not None:
            files.append(run.hooks.path)
        return files

    def _bind(self, run: _ChildRun) -> None:
        if self._follow_hooks(run):
            return
        if run.binding is None:
            # Only a rollout the child writes (open for writing, or its writer
            # lock held) binds. When it writes several, nothing binds: the
            # folder-and-time rule must not pick one of them either.
            attempt = run.binder.open_by(run.child.pid)
            if attempt.binding is None and not attempt.ambiguous:
                attempt = run.binder.bind_new(
                    cwd=run.workdir, launched_at=run.launched_at, pid=run.child.pid
                )
            found = attempt.binding
            if found is not None:
                run.binding = found
                run.binding_problem = None
                self._bound(run.account, found, f"written by pid {run.child.pid}")
            else:
                if attempt.ambiguous and run.binding_problem != attempt.reason:
                    log.warning("session not bound yet: %s", attempt.reason)
                    run.binding_problem = attempt.reason
                if run.clock_waits_for_session and attempt.candidates:
                    # A session appeared: its SessionStart hook is due now.
                    run.clock_waits_for_session = False
                    run.bind_deadline = self.clock.monotonic() + self.config.bind_timeout
                if self.clock.monotonic() > run.bind_deadline and run.child.returncode is None:
                    log.warning(
                        "no session found for pid %d (%s); rotation is off for this run",
                        run.child.pid,
                        attempt.reason,
                    )
                    run.bind_deadline = float("inf")
                    self._blocked(run, self._unidentified(run, attempt.reason))
        self._open_reader(run)

    def _unidentified(self, run: _ChildRun, reason: str) -> str:
        """Why the session a child writes could not be identified, for RotationBlocked."""
        if proc_available():
            return f"the session Codex writes could not be identified ({reason})"
        if run.hooks is None:
            return (
                "the session Codex writes could not be identified: this system has no /proc "
                f"to read it from, and no session hooks ({self._hooks_off})"
            )
        return (
            "the session Codex writes could not be identified: no hook of this Codex has "
            f"named it within {self.config.bind_timeout:g}s of a new session appearing in "
            "its folder (Codex's hooks may be switched off in its config; rotation comes "
            "back on if one names it later)"
        )

    def _follow_hooks(self, run: _ChildRun) -> bool:
        """Bind (or rebind) to the session the child's newest hook names; True when it did.

        A hook is Codex naming the thread whose turn starts or ends, in this
        child: exact. Each event is acted on once, newest first: a subagent's
        thread is passed over for the event before it; a session whose
        rollout is not written yet stays pending (looked at again, and no
        rotation meanwhile) until it binds, a newer event replaces it or
        ``bind_timeout`` passes. When the newest names another session than
        the bound one (the TUI's ``/new``, ``/resume``, ``/fork`` followed by
        a turn), the run follows that one; before a rotation
        :meth:`_still_bound` still refuses while ``/proc`` shows the child
        writing several.
        """
        if run.hooks is None:
            return False
        new = run.hooks.read()
        run.hook_sessions.update(e.session_id for e in new)
        waiting = run.pending_hook
        events = [*reversed(new), *([waiting] if waiting is not None else [])]
        run.pending_hook = None
        bound = run.binding
        for event in events:
            if bound is not None and event.session_id == bound.session_id:
                return False
            attempt = run.binder.from_hook(event.session_id, event.transcript_path)
            found = attempt.binding
            if found is not None:
                return self._hook_bound(run, found, attempt.reason, event)
            if run.binding_problem != attempt.reason:
                log.warning("session hook not followed: %s", attempt.reason)
                run.binding_problem = attempt.reason
            if attempt.pending:
                if event is not waiting:
                    run.pending_since = self.clock.monotonic()
                if self.clock.monotonic() - run.pending_since < self.config.bind_timeout:
                    run.pending_hook = event
                return False
        return False

    def _hook_bound(self, run: _ChildRun, found: Binding, reason: str, hook: HookEvent) -> bool:
        bound = run.binding
        run.binding = found
        run.binding_problem = None
        if bound is None:
            self._bound(run.account, found, reason)
            self._open_reader(run, hook)
            return True
        log.info(
            "Codex's hook names session %s instead of %s: following it",
            found.session_id,
            bound.session_id,
        )
        self._bound(run.account, found, f"{reason} (was {bound.session_id})")
        self._rebound(run, found, hook)
        return True

    def _adopt(
        self,
        run: _ChildRun,
        binding: Binding,
        hook: HookEvent | None = None,
        *,
        since: datetime | None = None,
    ) -> None:
        """Follow ``binding``, an existing session the child is shown to be in now.

        What the session holds is not this child's evidence (rate limits
        written under other accounts, failures of other runs), except its
        own turns: those started at or after ``since`` (the child's launch,
        when this is its first session: it has held the session's writer
        lock since), the last one when a SessionStart named it (the hook ran
        as that turn started) and, for a Stop, the turn it names and any
        after it. Those are counted (a usage-limit failure among them still
        rotates the session), and while one runs no rotation cuts it. A
        rebinding (no ``since``) also takes a turn in flight for the child's:
        the child writes that session now.
        """
        run.reader = RolloutReader(binding.path, account=run.account)
        turns: list[tuple[str | None, bool, bool]] = []  # (turn id, since, completed)
        quota: list[QuotaSnapshot | None] = []  # the main quota each turn reported
        earliest = None if since is None else since - _OWN_TURN_SLACK
        for record in run.reader.read():
            if isinstance(record, TurnStarted):
                recent = earliest is not None and record.at is not None and record.at >= earliest
                turns.append((record.turn_id, recent, False))
                quota.append(None)
            elif isinstance(record, TurnCompleted) and turns:
                turns[-1] = (*turns[-1][:2], True)
            elif isinstance(record, RateLimitsObserved) and turns and record.snapshot.is_main_quota:
                quota[-1] = record.snapshot
        first_own = next((i for i, (_, recent, _) in enumerate(turns) if recent), len(turns))
        if since is None and run.reader.state.phase is TurnPhase.IN_TURN:
            first_own = min(first_own, len(turns) - 1)
        if hook is not None and hook.event == "Stop" and hook.turn_id is not None:
            ids = [turn_id for turn_id, _, _ in turns]
            if hook.turn_id in ids:
                first_own = min(first_own, ids.index(hook.turn_id))
        elif hook is not None and hook.event == "SessionStart" and turns:
            first_own = min(first_own, len(turns) - 1)
        own = turns[first_own:]
        run.turns_started += len(own)
        run.turns_at_launch = run.reader.state.turns_completed - sum(done for *_, done in own)
        run.rollout_quota = next((q for q in reversed(quota[first_own:]) if q), run.rollout_quota)
        # A dangling marker that is not the child's own is a dead writer's.
        run.caught_up = not own

    def _rebound(self, run: _ChildRun, found: Binding, hook: HookEvent | None = None) -> None:
        """Follow ``found`` instead of the session bound so far (the child switched)."""
        # A session made since the launch is the child's own making (a /new):
        # all its turns are the child's. An older one may hold other runs' turns.
        made_here = not self._older_than_launch(run, found)
        self._adopt(run, found, hook, since=run.launched_at if made_here else None)

    def _open_reader(self, run: _ChildRun, hook: HookEvent | None = None) -> None:
        if run.binding is None or run.reader is not None:
            return
        if run.known_session is not None:
            # Known before launch (a resume by id, every rotation's successor):
            # catch up without attributing its old rate limits (written under
            # earlier accounts), its old turns or its old failed turns to this
            # child.
            run.reader = RolloutReader(run.binding.path, account=run.account)
            run.reader.read()
            run.turns_at_launch = run.reader.state.turns_completed
            run.caught_up = True
        elif self._older_than_launch(run, run.binding):
            # An existing session found after the launch (by name or picker,
            # or a TUI's /resume): only its own turns are this child's.
            self._adopt(run, run.binding, hook, since=run.launched_at)
        else:
            # A session of the child's own making (a fork's is new, with no
            # copied turns): everything in it is the child's.
            run.reader = RolloutReader(run.binding.path, account=run.account)

    @staticmethod
    def _older_than_launch(run: _ChildRun, binding: Binding) -> bool:
        """Whether the session existed before the child was launched.

        Its first line says when it was created; else its UUIDv7 id does;
        else an invocation that continues a session is taken to continue an
        old one.
        """
        meta = binding.meta
        created = meta.timestamp if meta is not None else None
        if created is None:
            created = session_created(binding.session_id)
        if created is None:
            return run.inv.mode in _CONTINUING
        return created < run.launched_at - _OWN_TURN_SLACK

    def _still_bound(self, run: _ChildRun) -> bool:
        """Right before a rotation: does the child write its bound session, and no other?

        A binding can go stale: a TUI switches conversations with ``/new``,
        ``/resume`` or ``/fork`` (0.169.0 keeps the old thread loaded and its
        rollout open for writing beside the new one), and resuming the bound
        session would then resume the wrong conversation. When the child no
        longer writes it but writes exactly one other session, it is rebound
        to that one and False is returned (decide again on that session's own
        state). When it writes none, or several, the rotation is refused
        (logged once, and a :class:`~.events.RotationBlocked` event once per
        reason) and the child keeps running. Without ``/proc`` nothing can be
        re-checked and the binding stands.

        No tie-break picks the "current" one of several written sessions:
        switching back to a thread the TUI already has loaded (``/resume``)
        writes nothing to its rollout, so which rollout grew last does not
        tell which conversation is on screen.
        """
        if self._follow_hooks(run):
            return False  # a hook named another session just now: decide on that one
        if run.pending_hook is not None:
            return False  # a hook named a session not written yet: wait for it
        binding = run.binding
        assert binding is not None  # a reader, so a decision, implies a binding
        if not proc_available():
            return self._no_other_loaded(run, binding)
        pid = run.child.pid
        writes = run.binder.still_writes(binding, pid)
        attempt = run.binder.open_by(pid)
        others = [c for c in attempt.candidates if c != binding.session_id]
        if not others and (writes is not False or attempt.binding is not None):
            return True  # (or it reopened the rollout between the two looks)
        found = attempt.binding
        if writes is False and found is not None:
            log.warning(
                "pid %d no longer writes session %s but %s: rebound, deciding again",
                pid,
                binding.session_id,
                found.session_id,
            )
            run.binding = found
            run.binding_problem = None
            self._bound(
                run.account, found, f"rebound: pid {pid} writes it instead of {binding.session_id}"
            )
            # Its earlier turns and rate limits are not this child's new evidence.
            self._rebound(run, found)
            return False
        why = (
            f"it also writes {', '.join(others)}: which one is the conversation cannot be told"
            if writes is not False
            else f"it does not write it now: {attempt.reason}"
        )
        problem = (
            f"not rotating: pid {pid} was bound to session {binding.session_id} but {why}; "
            "resuming a guess could resume the wrong conversation"
        )
        if run.binding_problem != problem:
            log.warning("%s", problem)
            run.binding_problem = problem
        named = f"{'session' if len(others) == 1 else 'sessions'} {', '.join(others)}"
        if writes is not False:
            because = (
                f"Codex also writes {named} (as after /new, /resume or /fork in the TUI) "
                "and which one is the conversation cannot be told"
            )
        elif others:
            because = (
                f"Codex no longer writes it but {named}, "
                "and which one is the conversation cannot be told"
            )
        else:
            because = f"Codex does not write it now ({attempt.reason})"
        self._blocked(run, because)
        return False

    def _no_other_loaded(self, run: _ChildRun, binding: Binding) -> bool:
        """Without /proc: is the bound session the only one the child may be in?

        Another session this child's hooks named whose thread is still loaded
        (its writer lock held: the TUI keeps it after ``/new``, and goes back
        to it with ``/resume`` without a hook until its next turn starts)
        means the conversation on screen cannot be told: refused, said once.
        A session of the child's folder, named by no hook yet, loaded, whose
        last turn started within the last seconds may be the child's own turn
        starting after a ``/new`` or ``/resume`` (its SessionStart follows
        within milliseconds): not now, look again — for 15 s in a row at
        most, as another Codex busy in the same folder looks the same.
        """
        loaded = sorted(
            sid
            for sid in run.hook_sessions - {binding.session_id}
            if self._conversation_loaded(run, sid)
        )
        if loaded:
            named = f"{'session' if len(loaded) == 1 else 'sessions'} {', '.join(loaded)}"
            because = (
                f"Codex also has {named} loaded (as after /new, /resume or /fork in the TUI) "
                "and which one is the conversation cannot be told"
            )
            problem = f"not rotating: session {binding.session_id} is bound but {because}"
            if run.binding_problem != problem:
                log.warning("%s", problem)
                run.binding_problem = problem
            self._blocked(run, because)
            return False
        # File times and rollout stamps are the real clock's, not the injectable one's.
        now = time.time()
        fresh = now - _UNNAMED_QUIET
        for other in run.binder.loaded_here(cwd=run.workdir, written_since=fresh):
            if other.session_id == binding.session_id or other.session_id in run.hook_sessions:
                continue
            started = last_turn_start(other.path)
            if started is None or started.timestamp() < fresh:
                continue
            if run.deferred_since is None:
                run.deferred_since = now
            if now - run.deferred_since < _MAX_DEFERRAL:
                log.info("not rotating yet: a turn just started in session %s", other.session_id)
                return False
            # Its SessionStart would have come by now: another Codex's, busy.
        run.deferred_since = None
        return True

    @staticmethod
    def _conversation_loaded(run: _ChildRun, session_id: str) -> bool:
        """Whether a session the hooks named is a conversation whose thread is loaded now."""
        found = run.binder.find_by_id(session_id)
        meta = None if found is None else found.meta
        if meta is None or meta.subagent or meta.source is None:
            return False
        try:
            return writer_lock(run.binder.codex_home, session_id).held
        except OSError:
            return False

    def _blocked(self, run: _ChildRun, reason: str) -> None:
        """Tell the embedder (and the CLI's user) that rotation is off, once per reason."""
        if reason in run.blocked_reasons:
            return
        run.blocked_reasons.add(reason)
        self._emit(
            RotationBlocked(
                at=self.clock.now(), account=run.account, session_id=run.session_id, reason=reason
            )
        )

    def _bind_finished(self, run: _ChildRun) -> None:
        if self._follow_hooks(run) or run.binding is not None:
            return
        # A quick child may exit between two looks: its writer evidence is
        # gone, so only a lone finished session binds.
        found = run.binder.bind_new(
            cwd=run.workdir, launched_at=run.launched_at, finished_only=True
        ).binding
        if found is not None:
            run.binding = found
            self._bound(run.account, found, "the only session finished in this folder")
            run.reader = RolloutReader(found.path, account=run.account)

    async def _follow(self, run: _ChildRun) -> None:
        """Read what the rollout gained: quota lines, and turn starts and ends (cost learning)."""
        if run.reader is None:
            return
        for record in run.reader.read():
            if isinstance(record, RateLimitsObserved):
                if not record.snapshot.is_main_quota:
                    continue  # another metered limit, not the account's main quota
                run.last_passive = self.clock.monotonic()
                run.rollout_quota = record.snapshot
                await self.selector.record(record.snapshot)
            elif isinstance(record, TurnStarted):
                run.turns_started += 1
                await self._learn_turn_cost(run)
            elif isinstance(record, TurnCompleted):
                # (bench_follow.py times this record against the write it saw.)
                log.debug("turn ended in session %s on %s", run.session_id, run.account)
                if record.error is None:
                    # The usage endpoint also sees what the rollout cannot (the
                    # TUI's side requests): read it, free, before the next turn.
                    # (After a failed turn the rollout's own evidence decides.)
                    self.selector.probe_in_background(run.account)

    async def _learn_turn_cost(self, run: _ChildRun) -> None:
        # From one turn start to the next on the same account (in this child
        # or the next run's): the turn, its side requests and whatever the
        # usage endpoint saw in between (it is probed after every turn).
        newest = await self._newest(run.account)
        base = self._turn_base.get(run.account)
        if (
            base is not None
            and newest is not None
            # A long gap (a pause, a wait, a coffee) may hold other sessions'
            # spend on the account: not this conversation's turn.
            and newest.observed_at - base.observed_at <= _MAX_TURN_GAP
        ):
            try:
                spent = spent_between(base, newest)
            except ConfigError as exc:  # e.g. two different limit ids
                log.debug("turn cost of %s not learnt: %s", run.account, exc)
                spent = {}
            if spent:
                self.selector.costs = self.selector.costs.observe(run.account, spent)
        if newest is not None:
            self._turn_base[run.account] = newest

    def _bound(self, account: str, binding: Binding, reason: str) -> None:
        if self._occupancy is not None and self._occupancy[0] == account:
            # Others (`status`) see which session runs on the account.
            _, lease, purpose = self._occupancy
            lease.describe(f"{purpose}, session {binding.session_id}")
        self._emit(
            SessionBound(
                at=self.clock.now(),
                account=account,
                session_id=binding.session_id,
                path=str(binding.path),
                reason=reason,
            )
        )

    async def _decide(self, run: _ChildRun) -> _Outcome | None:  # noqa: PLR0911 - one per decision
        assert run.reader is not None
        if run.inv.is_exec and run.reader.state.turns_completed > run.turns_at_launch:
            # An exec's one turn has ended: it is about to exit with its
            # answer. Stopping it now would turn a success into a resume with
            # a continuation prompt (an extra paid turn); the next run chooses.
            return None
        try:
            candidates = await self.selector.candidates()
        except ConfigError as exc:  # the pool emptied: its last account was removed meanwhile
            log.debug("no decision for %s: %s", run.account, exc)
            return None
        current = next((c for c in candidates if c.name == run.account), None)
        if current is None:
            return None  # removed from the pool meanwhile: leave the child alone
        others = [c for c in candidates if c.name != run.account]
        now = self.clock.now()
        last_error = run.limit_failure()
        decision = self.policy.decide(current, others, now, last_turn_error=last_error)
        if isinstance(decision, Continue):
            return None
        if last_error is None and not run.can_restart:
            # No rotation left in the budget: stopping a healthy child now
            # would only end the run. Keep it; its own failure still ends it.
            return None
        safe = run.safe_to_stop()
        if isinstance(decision, Prewarm) or (
            not safe
            and isinstance(decision, RotateAtBoundary | RotateNow | WaitUntil)
            # A failed turn of this child's own is over: nothing to wait for.
            and last_error is None
        ):
            # Under pressure, or blocked by data from elsewhere (another
            # session's cooldown, a probe) while this child's turn runs fine:
            # let the turn finish. If it fails on the limit, its own error
            # comes back as last_error and the cutover is immediate.
            if run.prewarm is None:
                self._emit(PrewarmStarted(at=now, account=run.account, reason=decision.reason))
                run.prewarm = asyncio.create_task(self._prewarm(run.account), name="prewarm")
            return None
        if isinstance(decision, PauseAtBoundary) and not safe:
            return None  # let the turn finish; decide again at the boundary
        if not self._still_bound(run):
            # Every branch below stops the child to resume its session: only
            # a session it is still shown to write may be resumed.
            return None
        if isinstance(decision, PauseAtBoundary):
            # No account can take another turn: stop here and wait (the
            # successor choice below waits for the first account that can).
            await run.child.stop(self.config.stop)
            return _Rotate(
                returncode=run.child.returncode or 0,
                session_id=run.session_id,
                reason=decision.reason,
                successor=None,
                immediate=False,
                exhausted=False,
            )
        if isinstance(decision, RotateAtBoundary):
            await run.child.stop(self.config.stop)
            return _Rotate(
                returncode=run.child.returncode or 0,
                session_id=run.session_id,
                reason=decision.reason,
                successor=run.successor() or decision.successor,
                immediate=False,
                exhausted=False,
            )
        # RotateNow or WaitUntil, and this child's turn failed on the limit or
        # none is in flight: nothing is lost by stopping now.
        await run.child.stop(self.config.stop)
        # A new cooldown only for evidence of running out (this child's own
        # failure, or data showing the limit); a block already on record
        # (another session's) needs no second, guessed one.
        ran_out = last_error is not None or (
            self.policy.pressure(current.name, current.snapshot, now).limit_reached
        )
        return _Rotate(
            returncode=run.child.returncode or 0,
            session_id=run.session_id,
            reason=decision.reason,
            # "Now" when this child's turn failed: the resume then carries the
            # continuation prompt. An idle, exhausted account just moves.
            immediate=last_error is not None,
            successor=decision.successor if isinstance(decision, RotateNow) else None,
            exhausted=ran_out,
            # The failed turn's own rate limits: a probe that landed since
            # may lag behind the 429 that ended it.
            snapshot=run.rollout_quota if last_error is not None else current.snapshot,
        )

    async def _after_exit(self, run: _ChildRun, code: int) -> _Outcome:
        last_error = run.limit_failure()
        if run.inv.is_exec and code != 0 and last_error is not None:
            return _Rotate(
                returncode=code,
                session_id=run.session_id,
                reason=f"{run.account} hit its usage limit during the turn",
                successor=run.successor(),
                immediate=True,
                exhausted=True,
                snapshot=run.rollout_quota or await self._newest(run.account),
            )
        return _Exited(returncode=code, session_id=run.session_id)

    async def _prewarm(self, account: str) -> str | None:
        """Choose and check a successor in the background, before it is needed."""
        candidates = await self.selector.candidates()
        others = [c for c in candidates if c.name != account]
        if not others:
            return None
        # Fresh quota for the likely successors only, so the cutover itself
        # needs no request on its critical path.
        ranked = self.policy.rank(others, self.clock.now()) or others
        stale = [c.name for c in ranked[:3] if self.selector.is_stale(c.snapshot)]
        if stale:
            await self.selector.refresh(stale)
        choice = await self.selector.choose(avoid=account, probe=False)
        if not isinstance(choice, str) or choice == account:
            return None
        await asyncio.to_thread(self.pool.prepare_home, choice)
        self._emit(PrewarmReady(at=self.clock.now(), account=account, successor=choice))
        return choice
