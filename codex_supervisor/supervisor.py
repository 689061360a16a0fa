"""The Supervisor: one supervised Codex run that moves between accounts.

``await Supervisor(pool).run(argv)`` runs ``codex <argv>`` on the best account
of the pool and follows the session's rollout. When the account runs low it
picks a successor in the background; when the policy says rotate it waits for
the turn to end, stops Codex, and resumes **the same session** with ``codex
resume <id>`` on the successor. A turn that already failed on the usage limit
(interactive, or a headless ``exec`` that exited on it) is cut over at once
and resumed with a continuation prompt, so the caller of ``exec`` sees one
successful run. The return value is Codex's exit code (128+signal when the
supervisor itself was stopped by SIGTERM or SIGHUP).

The steps (ARCHITECTURE.md, "The interactive run"): select → occupy → launch
→ bind → follow → decide → pre-warm → rotate at the boundary → resume. Every
step emits an event (:mod:`.events`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import subprocess
from collections.abc import Mapping, Sequence
from datetime import datetime, timedelta
from pathlib import Path
from typing import final

import attrs

from .accounts import Account, AccountPool
from .clock import Clock, SystemClock
from .codex_cli import (
    Invocation,
    Mode,
    detect_version,
    features_for,
    launch_argv,
    parse_argv,
    resume_argv,
)
from .config import child_environment
from .errors import ConfigError, QuotaError, QuotaUnavailable
from .events import (
    AccountSelected,
    ChildExited,
    ChildLaunched,
    Event,
    EventSink,
    PrewarmReady,
    PrewarmStarted,
    QuotaUpdated,
    Resumed,
    Rotating,
    SessionBound,
    WaitingForReset,
)
from .policy import (
    Candidate,
    Continue,
    Prewarm,
    RotateAtBoundary,
    RotateNow,
    RotationPolicy,
    WaitUntil,
)
from .process import Child, SignalWatcher, StopPolicy, TerminalGuard, launch
from .quota import QuotaService, QuotaSnapshot, UsageEndpointSource, WindowKind
from .sessions import Binding, RateLimitsObserved, RolloutReader, SessionBinder, is_session_id

__all__ = ["Supervisor", "SupervisorConfig"]

log = logging.getLogger(__name__)

DEFAULT_CONTINUATION_PROMPT = (
    "The previous turn stopped because the account ran out of quota. "
    "Continue exactly where you left off."
)


@attrs.frozen(kw_only=True)
class SupervisorConfig:
    """How a :class:`Supervisor` behaves; every field has a documented default.

    ``codex``: the Codex binary (``codex`` on PATH).
    ``continuation_prompt``: sent when a turn that failed on the usage limit
    is resumed on the successor.
    ``poll_interval``: seconds between looks at the rollout (0.25).
    ``quota_stale_after``: passive quota older than this (seconds) is
    refreshed from the usage endpoint, which spends no quota (120).
    ``bind_timeout``: how long to look for the child's session (30).
    ``restart_budget``: rotations and crash restarts allowed in one run (8).
    ``crash_window`` / ``crash_backoff``: a resumed child failing within
    ``crash_window`` seconds counts as a crash; restarts back off from
    ``crash_backoff`` seconds, doubling.
    ``wait_for_reset``: when every account is blocked, wait for the earliest
    reset (True) or fail with QuotaUnavailable (False); ``max_wait`` caps it.
    ``countdown_interval``: seconds between WaitingForReset events.
    ``lease_ttl``: occupancy lease TTL (seconds; renewed at a third).
    ``stop``: the SIGINT → SIGTERM → SIGKILL graces.
    """

    codex: str = "codex"
    continuation_prompt: str = DEFAULT_CONTINUATION_PROMPT
    poll_interval: float = 0.25
    quota_stale_after: float = 120.0
    bind_timeout: float = 30.0
    restart_budget: int = 8
    crash_window: float = 10.0
    crash_backoff: float = 1.0
    wait_for_reset: bool = True
    max_wait: float | None = None
    countdown_interval: float = 1.0
    lease_ttl: float = 30.0
    stop: StopPolicy = attrs.field(factory=StopPolicy)


@attrs.frozen(kw_only=True)
class _Outcome:
    """How one child's run ended, and what the supervisor should do next."""

    returncode: int
    session_id: str | None
    rotate: bool = False
    immediate: bool = False
    successor: str | None = None
    reason: str = ""
    exhausted: bool = False
    signal: int | None = None
    snapshot: QuotaSnapshot | None = None
    stopped: bool = False  # the supervisor stopped the child (it did not exit on its own)


@final
class Supervisor:
    """Runs Codex under the best account of a pool and rotates it before quota runs out.

    Everything it touches is injectable: the pool, the policy, the quota
    service (by default the usage endpoint through the pool's credentials),
    the event sink, the clock and the environment children inherit.
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
    ) -> None:
        self.pool = pool
        self.config = config or SupervisorConfig()
        self.policy = policy or RotationPolicy()
        self.clock = clock or SystemClock()
        self._injected_quota = quota
        self.quota = quota or self._new_quota()
        self.sink = sink
        self.environ = dict(os.environ if environ is None else environ)
        self._accounts_cache: tuple[float, list[Account]] | None = None
        self._occupancy: dict[str, int] | None = None
        self._probes: set[asyncio.Task[None]] = set()

    # -- public entry points ---------------------------------------------------------

    def run_sync(self, argv: Sequence[str], cwd: Path | str | None = None) -> int:
        """:meth:`run` for scripts: runs its own event loop."""
        return asyncio.run(self.run(argv, cwd=cwd))

    async def run(self, argv: Sequence[str], cwd: Path | str | None = None) -> int:
        """Run ``codex <argv>`` supervised; return Codex's exit code."""
        inv = parse_argv(list(argv))
        workdir = Path(inv.cwd or cwd or Path.cwd()).resolve()  # noqa: ASYNC240 - once, at start
        source: UsageEndpointSource | None = None
        if self._injected_quota is None:
            # One HTTP client per run, closed with it: a Supervisor may run
            # many times, each on its own event loop.
            source = UsageEndpointSource(self.pool.usage_credentials)
            self.quota = QuotaService(source, ttl=self.config.quota_stale_after)
        try:
            if inv.mode is Mode.PASSTHROUGH:
                return await self._passthrough(inv, workdir)
            return await self._supervise(inv, workdir)
        finally:
            for task in list(self._probes):
                task.cancel()
            if source is not None:
                await self.quota.aclose()
                await source.aclose()

    def _new_quota(self) -> QuotaService:
        return QuotaService(
            UsageEndpointSource(self.pool.usage_credentials), ttl=self.config.quota_stale_after
        )

    # -- events and candidates ------------------------------------------------------------

    def _emit(self, event: Event) -> None:
        log.debug("event %s: %s", event.name, event.message)
        if self.sink is not None:
            try:
                self.sink(event)
            except Exception:
                log.exception("event sink failed on %s", event.name)

    def _accounts(self, *, fresh: bool = False) -> list[Account]:
        # The pool state changes rarely (cooldowns, other supervisors): read
        # it at most every few seconds, not on every poll.
        now = self.clock.monotonic()
        if fresh or self._accounts_cache is None or now - self._accounts_cache[0] > 3.0:
            self._accounts_cache = (now, self.pool.accounts())
            self._occupancy = None
        return self._accounts_cache[1]

    async def _occupants(self, accounts: Sequence[Account]) -> dict[str, int]:
        if self._occupancy is None:
            counts: dict[str, int] = {}
            for account in accounts:
                try:
                    counts[account.name] = len(await self.pool.occupants(account.name))
                except Exception:
                    log.debug("occupants of %s unknown", account.name, exc_info=True)
            self._occupancy = counts
        return self._occupancy

    def _snapshot(self, account: Account) -> QuotaSnapshot | None:
        cached = self.quota.peek(account.name)
        if cached is not None:
            return cached.snapshot
        return account.last_snapshot

    async def _candidates(self, *, probe: bool) -> list[Candidate]:
        accounts = self._accounts(fresh=probe)
        if not accounts:
            raise ConfigError(f"the pool at {self.pool.root} has no accounts; add one first")
        if probe:
            await self._probe_stale([a for a in accounts if self._is_stale(a)])
        now = self.clock.now()
        occupancy = await self._occupants(accounts)
        return [
            Candidate(
                name=a.name,
                snapshot=self._snapshot(a),
                blocked_until=a.blocked_until(now),
                occupants=occupancy.get(a.name, 0),
            )
            for a in accounts
        ]

    def _is_stale(self, account: Account) -> bool:
        snapshot = self._snapshot(account)
        if snapshot is None:
            return True
        now = self.clock.now()
        if snapshot.age(now) > timedelta(seconds=self.config.quota_stale_after):
            return True
        # A window has reset since this was observed: what the endpoint says
        # now (limit flag included) is worth a free request.
        return any(
            w.resets_at is not None and snapshot.observed_at < w.resets_at <= now
            for w in snapshot.windows
        )

    async def _probe(self, name: str) -> None:
        try:
            # Only stale accounts are probed: the cache is what made them stale.
            snapshot = await self.quota.get(name, max_age=0)
        except QuotaError as exc:
            # An API-key account or a token Codex will refresh on next use:
            # the account stays "unknown" to the policy, never blocked by it.
            log.debug("no quota for %s: %s", name, exc)
            return
        self._store(snapshot)

    async def _probe_stale(self, accounts: Sequence[Account]) -> None:
        if accounts:
            await asyncio.gather(*(self._probe(a.name) for a in accounts))

    def _probe_in_background(self, name: str) -> None:
        if any(t.get_name() == f"probe:{name}" for t in self._probes):
            return
        task = asyncio.create_task(self._probe(name), name=f"probe:{name}")
        self._probes.add(task)
        task.add_done_callback(self._probes.discard)

    def _store(self, snapshot: QuotaSnapshot) -> None:
        self.quota.put(snapshot)
        try:
            self.pool.record_snapshot(snapshot)
        except (ConfigError, OSError) as exc:  # the account was removed meanwhile
            log.debug("snapshot of %s not stored: %s", snapshot.account, exc)
        self._emit(
            QuotaUpdated(
                at=self.clock.now(),
                account=snapshot.account,
                source=snapshot.source.value,
                summary=_summary(snapshot),
            )
        )

    # -- selection ---------------------------------------------------------------------------

    async def _select(self, signals: SignalWatcher, *, exclude: Sequence[str] = ()) -> str | int:
        """The account to launch on; waits for a reset if all are blocked.

        Returns 128+signal instead when the supervisor is told to stop while
        waiting.
        """
        started = self.clock.monotonic()
        while True:
            candidates = await self._candidates(probe=True)
            names = {c.name for c in candidates}
            skip = [n for n in exclude if n in names and len(names - set(exclude)) > 0]
            now = self.clock.now()
            choice = self.policy.choose(candidates, now, exclude=skip)
            if isinstance(choice, str):
                self._emit(AccountSelected(at=now, account=choice, reason=_why(choice, candidates)))
                return choice
            if not self.config.wait_for_reset:
                raise QuotaUnavailable(f"every account is blocked: {choice.reason}")
            waited = self.clock.monotonic() - started
            if self.config.max_wait is not None and waited >= self.config.max_wait:
                raise QuotaUnavailable(
                    f"every account is still blocked after {waited:.0f}s: {choice.reason}"
                )
            stopped = await self._countdown(choice, signals)
            if stopped is not None:
                return stopped

    async def _countdown(self, wait: WaitUntil, signals: SignalWatcher) -> int | None:
        while True:
            left = (wait.until - self.clock.now()).total_seconds()
            if left <= 0:
                return None
            self._emit(
                WaitingForReset(
                    at=self.clock.now(), until=wait.until, seconds_left=left, reason=wait.reason
                )
            )
            step = min(left, self.config.countdown_interval)
            if self.config.max_wait is not None:
                step = min(step, self.config.max_wait)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(step):
                    await signals.wait()
            if signals.received is not None:
                return 128 + int(signals.received)
            if self.config.max_wait is not None and step >= self.config.max_wait:
                return None

    # -- the run ---------------------------------------------------------------------------------

    async def _passthrough(self, inv: Invocation, workdir: Path) -> int:
        """Run a command we do not supervise (login, --help, ...) once, as it is."""
        accounts = self._accounts(fresh=True)
        env = dict(self.environ)
        if accounts:
            choice = self.policy.choose(
                [
                    Candidate(name=a.name, blocked_until=a.blocked_until(self.clock.now()))
                    for a in accounts
                ],
                self.clock.now(),
            )
            name = choice if isinstance(choice, str) else accounts[0].name
            env = child_environment(self.pool.prepare_home(name), self.environ)
        async with SignalWatcher(ignore_sigint=True) as signals:
            child = await launch([self.config.codex, *inv.argv], env=env, cwd=workdir)
            return await self._wait_or_signal(child, signals)

    async def _wait_or_signal(self, child: Child, signals: SignalWatcher) -> int:
        waiter = asyncio.ensure_future(child.wait())
        stopper = asyncio.ensure_future(signals.wait())
        try:
            await asyncio.wait({waiter, stopper}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            stopper.cancel()
        if signals.received is not None and child.returncode is None:
            waiter.cancel()
            await child.stop(self.config.stop, first_signal=signals.received)
            return 128 + int(signals.received)
        return await waiter

    async def _supervise(self, inv: Invocation, workdir: Path) -> int:  # noqa: PLR0911
        if not self._accounts(fresh=True):
            raise ConfigError(f"the pool at {self.pool.root} has no accounts; add one first")
        features = features_for(await detect_version(self.config.codex, env=self.environ))
        session_id = self._initial_session(inv, workdir)
        argv = launch_argv(inv, features)
        budget = self.config.restart_budget
        resumed = False
        crashes = 0
        failures: dict[str, int] = {}
        async with SignalWatcher(ignore_sigint=inv.is_interactive) as signals:
            selected = await self._select(signals)
            if isinstance(selected, int):
                return selected
            account = selected
            while True:
                started = self.clock.monotonic()
                outcome = await self._run_child(
                    inv, argv, account, workdir, session_id, resumed=resumed, signals=signals
                )
                session_id = outcome.session_id or session_id
                if outcome.signal is not None:
                    return 128 + outcome.signal
                if outcome.exhausted:
                    failures[account] = failures.get(account, 0) + 1
                    self._cool_down(account, outcome, failures[account] - 1)
                if not outcome.rotate:
                    ran = self.clock.monotonic() - started
                    if not (resumed and outcome.returncode != 0 and ran < self.config.crash_window):
                        return outcome.returncode
                    # A resumed child that fails at once is a crash, not an
                    # answer: retry with backoff while the budget lasts.
                    crashes += 1
                    if crashes > budget:
                        log.error("codex keeps failing right after resume; giving up")
                        return outcome.returncode
                    delay = self.config.crash_backoff * 2 ** (crashes - 1)
                    log.warning(
                        "codex exited %d right after resume; retrying in %.1fs",
                        outcome.returncode,
                        delay,
                    )
                    await self.clock.sleep(delay)
                    continue
                if session_id is None:
                    log.error("cannot rotate: the session of this run was never identified")
                    return outcome.returncode if outcome.returncode else 1
                budget -= 1
                if budget < 0:
                    log.error("restart budget used up; not rotating again")
                    return outcome.returncode if outcome.returncode else 1
                successor = await self._successor(outcome, account, signals)
                if isinstance(successor, int):
                    return successor
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
                prompt = self.config.continuation_prompt if outcome.immediate else None
                if inv.is_exec and prompt is None:
                    prompt = self.config.continuation_prompt
                argv = resume_argv(inv, session_id, features, prompt=prompt)
                account = successor
                resumed = True

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

    async def _successor(
        self, outcome: _Outcome, account: str, signals: SignalWatcher
    ) -> str | int:
        # Re-validate the pre-warmed successor against the latest data (under
        # the pool lock the state is re-read); otherwise choose afresh.
        candidates = await self._candidates(probe=False)
        now = self.clock.now()
        if outcome.successor is not None:
            chosen = next((c for c in candidates if c.name == outcome.successor), None)
            if chosen is not None and self.policy.launchable(chosen, now):
                return outcome.successor
        return await self._select(signals, exclude=[account])

    def _cool_down(self, account: str, outcome: _Outcome, failures: int) -> None:
        now = self.clock.now()
        snapshot = outcome.snapshot
        cached = self.quota.peek(account)
        if snapshot is None and cached is not None:
            snapshot = cached.snapshot
        kind, until = self.policy.cooldown_for(snapshot, now, failures=failures)
        cooldown = self.pool.set_cooldown(
            account,
            window=kind or WindowKind.OTHER,
            blocked_until=until,
            reason=outcome.reason or "usage limit reached",
        )
        self._accounts_cache = None
        log.info(
            "%s blocked until %s (%s)", account, cooldown.blocked_until.isoformat(), cooldown.reason
        )

    async def _run_child(
        self,
        inv: Invocation,
        argv: list[str],
        account: str,
        workdir: Path,
        session_id: str | None,
        *,
        resumed: bool,
        signals: SignalWatcher,
    ) -> _Outcome:
        home = self.pool.prepare_home(account)
        env = child_environment(home, self.environ)
        guard = TerminalGuard() if inv.is_interactive else None
        # A resumed exec gets its prompt in argv: it must not wait on stdin.
        stdin = subprocess.DEVNULL if inv.is_exec and resumed else None
        async with self.pool.occupy(
            account, purpose=f"codex {inv.mode.value}", ttl=self.config.lease_ttl
        ):
            if guard is not None:
                guard.save()
            try:
                launched_at = self.clock.now()
                child = await launch([self.config.codex, *argv], env=env, cwd=workdir, stdin=stdin)
                self._emit(
                    ChildLaunched(at=launched_at, account=account, pid=child.pid, argv=tuple(argv))
                )
                if resumed and session_id is not None:
                    self._emit(
                        Resumed(
                            at=self.clock.now(),
                            account=account,
                            session_id=session_id,
                            pid=child.pid,
                        )
                    )
                try:
                    outcome = await self._monitor(
                        inv, child, account, home, workdir, session_id, launched_at, signals
                    )
                finally:
                    if child.returncode is None:
                        await child.stop(self.config.stop)
                self._emit(
                    ChildExited(
                        at=self.clock.now(),
                        account=account,
                        returncode=outcome.returncode,
                        stopped=outcome.stopped,
                    )
                )
                return outcome
            finally:
                if guard is not None:
                    guard.restore()

    async def _monitor(  # noqa: PLR0912, PLR0915, PLR0917 - the one loop, kept readable in one place
        self,
        inv: Invocation,
        child: Child,
        account: str,
        home: Path,
        workdir: Path,
        session_id: str | None,
        launched_at: datetime,
        signals: SignalWatcher,
    ) -> _Outcome:
        binder = SessionBinder(home)
        binding: Binding | None = binder.find_by_id(session_id) if session_id else None
        reader: RolloutReader | None = None
        turns_at_launch = 0
        bind_deadline = self.clock.monotonic() + self.config.bind_timeout
        prewarm: asyncio.Task[str | None] | None = None
        last_passive = self.clock.monotonic()
        waiter = asyncio.ensure_future(child.wait())
        stopper = asyncio.ensure_future(signals.wait())
        try:
            while True:
                if binding is None:
                    binding = self._try_bind(binder, child.pid, workdir, launched_at)
                    if binding is not None:
                        self._bound(account, binding, f"written by pid {child.pid}")
                    elif self.clock.monotonic() > bind_deadline and child.returncode is None:
                        log.warning(
                            "no session found for pid %d; rotation is off for this run", child.pid
                        )
                        bind_deadline = float("inf")
                if binding is not None and reader is None:
                    reader = RolloutReader(binding.path, account=account)
                    if session_id is not None:
                        # An existing session: catch up without attributing
                        # its old rate limits (written under earlier accounts)
                        # or its old failed turns to this one.
                        reader.read()
                        turns_at_launch = reader.state.turns_completed
                if reader is not None:
                    for record in reader.read():
                        if isinstance(record, RateLimitsObserved):
                            last_passive = self.clock.monotonic()
                            self._store(record.snapshot)
                exited = child.returncode is not None or waiter.done()
                if exited and binding is None:
                    # A quick child may exit between two looks: its writer
                    # evidence is gone, so only a lone finished session binds.
                    binding = binder.bind_new(
                        cwd=workdir, launched_at=launched_at, finished_only=True
                    ).binding
                    if binding is not None:
                        self._bound(account, binding, "the only session finished in this folder")
                        reader = RolloutReader(binding.path, account=account)
                if exited:
                    code = await waiter
                    if reader is not None:
                        for record in reader.read():
                            if isinstance(record, RateLimitsObserved):
                                self._store(record.snapshot)
                    return self._after_exit(
                        inv, code, account, binding, reader, turns_at_launch, prewarm
                    )
                if signals.received is not None:
                    await child.stop(self.config.stop, first_signal=signals.received)
                    return _Outcome(
                        returncode=child.returncode or 0,
                        session_id=binding.session_id if binding else None,
                        signal=int(signals.received),
                        stopped=True,
                    )
                if self.clock.monotonic() - last_passive > self.config.quota_stale_after:
                    last_passive = self.clock.monotonic()
                    self._probe_in_background(account)
                if binding is not None and reader is not None:
                    outcome = await self._decide(
                        child, account, binding, reader, turns_at_launch, prewarm
                    )
                    if isinstance(outcome, _Outcome):
                        return outcome
                    if outcome == "prewarm" and prewarm is None:
                        prewarm = asyncio.create_task(self._prewarm(account), name="prewarm")
                await asyncio.wait(
                    {waiter, stopper},
                    timeout=self.config.poll_interval,
                    return_when=asyncio.FIRST_COMPLETED,
                )
        finally:
            stopper.cancel()
            if prewarm is not None and not prewarm.done():
                prewarm.cancel()
            if not waiter.done():
                waiter.cancel()

    def _bound(self, account: str, binding: Binding, reason: str) -> None:
        self._emit(
            SessionBound(
                at=self.clock.now(),
                account=account,
                session_id=binding.session_id,
                path=str(binding.path),
                reason=reason,
            )
        )

    def _try_bind(
        self, binder: SessionBinder, pid: int, workdir: Path, launched_at: datetime
    ) -> Binding | None:
        found = binder.find_open_by(pid)
        if found is not None:
            return found
        attempt = binder.bind_new(cwd=workdir, launched_at=launched_at, pid=pid)
        return attempt.binding

    def _last_error(self, reader: RolloutReader, turns_at_launch: int) -> str | None:
        # Only a turn that ended under this child counts: a resumed session's
        # last turn may have failed under the previous account.
        state = reader.state
        if state.turns_completed > turns_at_launch and state.last_error is not None:
            return state.last_error.codex_error_info
        return None

    async def _decide(  # noqa: PLR0917
        self,
        child: Child,
        account: str,
        binding: Binding,
        reader: RolloutReader,
        turns_at_launch: int,
        prewarm: asyncio.Task[str | None] | None,
    ) -> _Outcome | str | None:
        candidates = await self._candidates(probe=False)
        current = next((c for c in candidates if c.name == account), None)
        if current is None:
            return None  # removed from the pool meanwhile: leave the child alone
        others = [c for c in candidates if c.name != account]
        now = self.clock.now()
        last_error = self._last_error(reader, turns_at_launch)
        decision = self.policy.decide(current, others, now, last_turn_error=last_error)
        if isinstance(decision, Continue):
            return None
        if isinstance(decision, Prewarm):
            if prewarm is None:
                self._emit(PrewarmStarted(at=now, account=account, reason=decision.reason))
            return "prewarm"
        successor = _ready(prewarm)
        if isinstance(decision, RotateAtBoundary):
            if not reader.state.at_boundary:
                if prewarm is None:
                    self._emit(PrewarmStarted(at=now, account=account, reason=decision.reason))
                return "prewarm"
            await child.stop(self.config.stop)
            return _Outcome(
                returncode=child.returncode or 0,
                session_id=binding.session_id,
                rotate=True,
                successor=successor or decision.successor,
                reason=decision.reason,
                stopped=True,
            )
        # RotateNow or WaitUntil: the turn already failed (or the account is
        # gone), so nothing is lost by stopping now.
        await child.stop(self.config.stop)
        return _Outcome(
            returncode=child.returncode or 0,
            session_id=binding.session_id,
            rotate=True,
            # "Now" when the failed turn is on record or the turn has not
            # ended yet (its request already failed): the resume then carries
            # the continuation prompt. An idle, exhausted account just moves.
            immediate=last_error is not None or not reader.state.at_boundary,
            successor=(decision.successor if isinstance(decision, RotateNow) else None),
            reason=decision.reason,
            exhausted=True,
            snapshot=current.snapshot,
            stopped=True,
        )

    def _after_exit(  # noqa: PLR0917
        self,
        inv: Invocation,
        code: int,
        account: str,
        binding: Binding | None,
        reader: RolloutReader | None,
        turns_at_launch: int,
        prewarm: asyncio.Task[str | None] | None,
    ) -> _Outcome:
        session = binding.session_id if binding else None
        last_error = self._last_error(reader, turns_at_launch) if reader is not None else None
        if inv.is_exec and code != 0 and last_error in _LIMIT_ERRORS:
            cached = self.quota.peek(account)
            return _Outcome(
                returncode=code,
                session_id=session,
                rotate=True,
                immediate=True,
                successor=_ready(prewarm),
                reason=f"{account} hit its usage limit during the turn",
                exhausted=True,
                snapshot=cached.snapshot if cached else None,
            )
        return _Outcome(returncode=code, session_id=session)

    async def _prewarm(self, account: str) -> str | None:
        """Choose and check a successor in the background, before it is needed."""
        candidates = await self._candidates(probe=False)
        others = [c for c in candidates if c.name != account]
        if not others:
            return None
        # Fresh quota for the likely successors only, so the cutover itself
        # needs no request on its critical path.
        ranked = self.policy.rank(others, self.clock.now()) or others
        await self._probe_stale(
            [
                a
                for a in self._accounts()
                if a.name in {c.name for c in ranked[:3]} and self._is_stale(a)
            ]
        )
        candidates = await self._candidates(probe=False)
        choice = self.policy.choose(candidates, self.clock.now(), exclude=[account])
        if not isinstance(choice, str):
            return None
        self.pool.prepare_home(choice)
        self._emit(PrewarmReady(at=self.clock.now(), account=account, successor=choice))
        return choice


_LIMIT_ERRORS = frozenset({"usage_limit_exceeded", "usageLimitExceeded", "usage_limit_reached"})


def _ready(task: asyncio.Task[str | None] | None) -> str | None:
    if task is None or not task.done() or task.cancelled() or task.exception() is not None:
        return None
    return task.result()


def _summary(snapshot: QuotaSnapshot) -> str:
    parts = [f"{w.kind.value} {w.used_percent:.0f}% used" for w in snapshot.windows]
    if snapshot.limit_reached:
        parts.append("limit reached")
    return ", ".join(parts) or "no windows"


def _why(choice: str, candidates: Sequence[Candidate]) -> str:
    candidate = next(c for c in candidates if c.name == choice)
    if candidate.snapshot is None:
        return "no quota data yet"
    return _summary(candidate.snapshot)
