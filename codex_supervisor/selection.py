"""Choosing an account: the one place every front-end asks (ARCHITECTURE.md, D11).

:class:`AccountSelector` owns everything between the pool's state and the
policy's answer — which accounts are candidates, whose quota is stale,
probing the free usage endpoint (single flight per account, bounded on the
critical path), recording snapshots and cooldowns, choosing, and waiting when
no account can run. The :class:`~codex_supervisor.supervisor.Supervisor`, the
:class:`~codex_supervisor.appserver.pool.AppServerPool` and the reference
CLI's ``status`` all use it, so their answers cannot drift apart.

Rules it keeps:

- **The newest data wins.** An account's snapshot is the newer of what this
  process saw (rollout lines, probes) and what the pool state holds (another
  process may have stored fresher quota). The state file is re-read only when
  its fingerprint changes, so asking is cheap enough for every poll.
- **Stale means old or overtaken.** A snapshot is stale when it is older than
  ``stale_after`` or a window has reset since it was observed; stale accounts
  are probed (free), at most once per ``probe_interval`` each unless a reset
  passed since.
- **A wait includes every account** — the one that just failed too — and
  re-evaluates at least every ``tick`` seconds and as soon as the pool state
  or the occupancy changes, so it ends within a tick of an account becoming
  usable. The first :class:`~codex_supervisor.events.WaitingForReset` comes at
  once.
- **Cooldowns stay true.** One per (account, window); a synthetic ``other``
  block only when the reset time cannot be learned, even from a probe;
  reasons state absolute times.
- **Never a spent refresh token.** An account whose newest login waits in
  the pool's quarantine (a pooled app-server refreshed it into a file that
  could not be taken back) is held back — left out of the candidates, with
  the reason in :attr:`AccountSelector.held_back` — and the login is retried
  (taken back) on every look while it waits, at most once a ``tick``. Codex
  started there would refresh with the spent token left in the account's
  home, and a replayed refresh token can revoke the whole login.

Pool-file I/O runs in a worker thread (:func:`asyncio.to_thread`): the pool
lock may wait, and the event loop must not.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from datetime import datetime, timedelta
from typing import final

from ._tls import ssl_context
from .accounts import Account, AccountPool, Cooldown
from .clock import Clock, SystemClock
from .errors import (
    AuthError,
    ConfigError,
    CredentialError,
    LoginQuarantined,
    QuotaError,
    QuotaUnavailable,
    StateError,
    SupervisorError,
)
from .events import Event, QuotaUpdated, WaitingForReset
from .policy import Candidate, RotationPolicy, TurnCosts, WaitUntil
from .quota import QuotaService, UsageEndpointSource
from .snapshots import QuotaSnapshot, WindowKind

__all__ = ["AccountSelector"]

log = logging.getLogger(__name__)

_WINDOW_NAMES = {
    WindowKind.FIVE_HOUR: "five-hour",
    WindowKind.WEEKLY: "weekly",
    WindowKind.OTHER: "unknown",
}


#: How stale the occupancy counts may be outside a wait (a ranking hint only).
_OCCUPANCY_MAX_AGE = 3.0


def summarize(snapshot: QuotaSnapshot) -> str:
    """A snapshot in brief, e.g. ``five_hour 37% used, weekly 12% used``."""
    parts = [f"{w.kind.value} {w.used_percent:.0f}% used" for w in snapshot.windows]
    if snapshot.limit_reached:
        parts.append("limit reached")
    return ", ".join(parts) or "no windows"


def _utc_text(moment: datetime) -> str:
    return f"{moment:%Y-%m-%d %H:%M:%S} UTC"


@final
class AccountSelector:
    """Chooses the account to run on, and waits correctly when none can.

    ``quota`` defaults to a :class:`~codex_supervisor.quota.QuotaService` over
    the usage endpoint with the pool's credentials; the selector then owns
    its HTTP client, opened on first use and closed by :meth:`aclose` (a
    selector may serve several event loops one after another, e.g. a
    ``Supervisor`` run per ``asyncio.run``). ``sink`` receives
    :class:`~codex_supervisor.events.QuotaUpdated` and
    :class:`~codex_supervisor.events.WaitingForReset` events. That client
    trusts the CA bundle and uses the proxies of ``environ`` (default
    ``os.environ``; the ``Supervisor`` passes its children's environment), as
    Codex does; a bundle that cannot be loaded raises
    :class:`~codex_supervisor.errors.ConfigError` here, naming its path.

    Timing knobs, in seconds: ``stale_after`` (quota older than this is
    probed), ``probe_interval`` (an account is probed at most this often
    unless a reset passed; never more than ``stale_after``),
    ``probe_budget`` (how long a choice waits for probes before deciding on
    what it knows; the probes go on in the background; a wait's later looks
    never wait), ``tick`` (a wait re-evaluates and reports at least this
    often), ``watch_interval`` (how often a wait looks for pool-state and
    occupancy changes between ticks), ``refresh_interval`` (how often a wait
    re-probes every account, free).

    ``hold_back`` lets the owner hold back more accounts: called with the
    pool's accounts on every look, it returns the ones that must not run,
    each with its :class:`~codex_supervisor.errors.LoginQuarantined` (the
    :class:`~codex_supervisor.appserver.pool.AppServerPool` holds back the
    accounts of spawn homes it had to keep).
    """

    def __init__(
        self,
        pool: AccountPool,
        *,
        policy: RotationPolicy | None = None,
        quota: QuotaService | None = None,
        clock: Clock | None = None,
        sink: Callable[[Event], None] | None = None,
        stale_after: float = 120.0,
        probe_interval: float = 30.0,
        probe_budget: float = 0.5,
        tick: float = 1.0,
        watch_interval: float = 0.25,
        refresh_interval: float = 60.0,
        environ: Mapping[str, str] | None = None,
        hold_back: Callable[[Sequence[Account]], Mapping[str, LoginQuarantined]] | None = None,
    ) -> None:
        for name, value in (
            ("stale_after", stale_after),
            ("probe_interval", probe_interval),
            ("probe_budget", probe_budget),
            ("tick", tick),
            ("watch_interval", watch_interval),
            ("refresh_interval", refresh_interval),
        ):
            if not (isinstance(value, int | float) and value >= 0 and value == value):  # noqa: PLR0124
                raise ConfigError(f"{name} must be a number >= 0, got {value!r}")
        if tick <= 0 or watch_interval <= 0:
            raise ConfigError("tick and watch_interval must be > 0")
        self.pool = pool
        self.policy = policy or RotationPolicy()
        self.clock = clock or SystemClock()
        self.sink = sink
        self.stale_after = float(stale_after)
        # Never wait longer between probes than data may age.
        self.probe_interval = min(float(probe_interval), self.stale_after)
        self.probe_budget = float(probe_budget)
        self.tick = float(tick)
        self.watch_interval = float(watch_interval)
        self.refresh_interval = float(refresh_interval)
        #: What a turn costs on each account, learnt from the runs it served.
        self.costs = TurnCosts()
        #: The environment whose CA bundle and proxies the usage probe uses
        #: (Codex's own, for the children), default ``os.environ``.
        self.environ: Mapping[str, str] = os.environ if environ is None else environ
        if quota is None:
            # A CA bundle Codex could not load either is a configuration error
            # now, not an exception inside a background probe later.
            ssl_context(self.environ)
        self._injected_quota = quota
        self._quota = quota
        self._source: UsageEndpointSource | None = None
        self._state_token: object = None
        self._accounts: list[Account] | None = None
        self._occupancy: dict[str, int] | None = None
        self._occupancy_at = float("-inf")
        #: Accounts of a shared pool that run on another site now: name → site.
        self.elsewhere: dict[str, str] = {}
        self._probed_at: dict[str, float] = {}
        self._probes: dict[str, asyncio.Task[QuotaSnapshot | None]] = {}
        #: Why the last probe of an account failed (cleared by a success).
        self.probe_errors: dict[str, QuotaError] = {}
        # The reset time that last forced an early probe, per account.
        self._forced: dict[str, datetime] = {}
        # One pool write at a time from this process: concurrent worker
        # threads would only queue on the pool's file lock, which waits by
        # polling (tens of milliseconds on the cutover's critical path).
        self._writing: asyncio.Lock | None = None
        self.hold_back = hold_back
        #: The accounts the last look left out of the candidates, and why: a
        #: newer login of theirs waits outside their home (in quarantine).
        self.held_back: dict[str, LoginQuarantined] = {}
        # The quarantine as last looked at (listing, state token), what it
        # held back, and when its logins were last retried.
        self._quarantine_seen: object = None
        self._quarantined: dict[str, LoginQuarantined] = {}
        self._quarantine_tried = float("-inf")
        self._held_logged: set[tuple[str, str]] = set()

    # -- lifecycle -----------------------------------------------------------------------

    @property
    def quota(self) -> QuotaService:
        """The quota service (created on first use when none was given)."""
        if self._quota is None:
            self._source = UsageEndpointSource(
                self.pool.usage_credentials, clock=self.clock, environ=self.environ
            )
            self._quota = QuotaService(self._source, ttl=self.stale_after, clock=self.clock)
        return self._quota

    def _write_lock(self) -> asyncio.Lock:
        # Created on first use, so it binds to the loop that uses it; a new
        # loop (the next run) gets a new lock with the next aclose().
        if self._writing is None:
            self._writing = asyncio.Lock()
        return self._writing

    async def settle(self, seconds: float) -> None:
        """Wait up to ``seconds`` for the probes in flight to land."""
        probes = [t for t in self._probes.values() if not t.done()]
        if probes:
            await asyncio.wait(probes, timeout=seconds)

    async def aclose(self) -> None:
        """Cancel probes in flight and close the HTTP client the selector opened."""
        probes = list(self._probes.values())
        for task in probes:
            task.cancel()
        await asyncio.gather(*probes, return_exceptions=True)
        self._probes.clear()
        if self._injected_quota is None and self._quota is not None:
            await self._quota.aclose()
            if self._source is not None:
                await self._source.aclose()
            self._quota = self._source = None
        self._writing = None

    # -- what is known ------------------------------------------------------------------

    def _emit(self, event: Event) -> None:
        if self.sink is not None:
            try:
                self.sink(event)
            except Exception:
                log.exception("event sink failed on %s", event.name)

    async def accounts(self, *, fresh: bool = False) -> list[Account]:
        """Every account of the pool; re-read only when the state file changed."""
        # One stat on the loop (it never waits on a lock) keeps a follow loop
        # polling four times a second free of thread hand-offs.
        token = self.pool.state_token()
        if fresh or self._accounts is None or token != self._state_token:
            self._accounts = await asyncio.to_thread(self.pool.accounts)
            self._state_token = token
            self._occupancy = None
        return self._accounts

    def snapshot(self, account: Account) -> QuotaSnapshot | None:
        """The newest snapshot of ``account``: this process's cache or the pool's."""
        cached = None if self._quota is None else self._quota.peek(account.name)
        mine = None if cached is None else cached.snapshot
        stored = account.last_snapshot
        if mine is None or (stored is not None and stored.observed_at > mine.observed_at):
            return stored
        return mine

    def is_stale(self, snapshot: QuotaSnapshot | None, now: datetime | None = None) -> bool:
        """Whether ``snapshot`` is worth a free probe: missing, old, or overtaken by a reset."""
        if snapshot is None:
            return True
        now = self.clock.now() if now is None else now
        if snapshot.age(now) > timedelta(seconds=self.stale_after):
            return True
        return any(
            w.resets_at is not None and snapshot.observed_at < w.resets_at <= now
            for w in snapshot.windows
        )

    async def _occupants(
        self, accounts: Sequence[Account], *, max_age: float = _OCCUPANCY_MAX_AGE
    ) -> dict[str, int]:
        # Leases change when another session starts or ends; listing them is a
        # directory read per account: a ranking hint while Codex runs (read
        # every few seconds), a wake-up reason while waiting (read per watch).
        now = self.clock.monotonic()
        if self._occupancy is None or now - self._occupancy_at >= max_age:
            counts: dict[str, int] = {}
            elsewhere: dict[str, str] = {}
            for account in accounts:
                try:
                    records = await self.pool.occupants(account.name)
                except Exception:
                    log.debug("occupants of %s unknown", account.name, exc_info=True)
                    continue
                counts[account.name] = len(records)
                site = self.pool.elsewhere(records)
                if site is not None:
                    elsewhere[account.name] = site
            self._occupancy, self._occupancy_at = counts, now
            self.elsewhere = elsewhere
        return self._occupancy

    async def candidates(
        self, *, probe: bool = False, budget: float | None = None
    ) -> list[Candidate]:
        """What the policy weighs, one :class:`Candidate` per account.

        With ``probe``, stale accounts are probed first, waiting at most
        ``budget`` seconds (default ``probe_budget``; 0 does not wait): slower
        probes land in the background, and a waiter notices them through
        the pool state. An account that has no learned turn cost of its own
        gets the dearest one learnt on the others (:meth:`TurnCosts.prior`):
        turn costs follow the conversation more than the account. Raises
        :class:`~codex_supervisor.errors.ConfigError` for an empty pool.

        Accounts held back (a newer login of theirs waits in quarantine, or
        the owner's ``hold_back`` says so) are left out — none at all when
        every account is — after their quarantined logins were retried; the
        reasons are in :attr:`held_back`. Raises
        :class:`~codex_supervisor.errors.StateError` when the quarantine
        cannot be read.
        """
        accounts = await self.accounts()
        if not accounts:
            raise ConfigError(f"the pool at {self.pool.root} has no accounts; add one first")
        held = await self._held_back(accounts)
        accounts = [a for a in accounts if a.name not in held]
        if self.pool.credentials is not None:
            # A shared pool: what runs on another machine is not a candidate
            # (its login is used at one site at a time); looked at afresh.
            await self._occupants(accounts, max_age=0.0)
            accounts = [a for a in accounts if a.name not in self.elsewhere]
        if probe:
            now = self.clock.now()
            due = [a.name for a in accounts if self._probe_due(a, now)]
            if due:
                await self.refresh(due, budget=self.probe_budget if budget is None else budget)
                accounts = [
                    a
                    for a in await self.accounts()
                    if a.name not in held and a.name not in self.elsewhere
                ]
        now = self.clock.now()
        occupancy = await self._occupants(accounts)
        prior = self.costs.prior()
        return [
            Candidate(
                name=a.name,
                snapshot=self.snapshot(a),
                blocked_until=a.blocked_until(now),
                occupants=occupancy.get(a.name, 0),
                turn_cost=self.costs.expected(a.name) or prior,
            )
            for a in accounts
        ]

    # -- accounts that must not run --------------------------------------------------

    async def _held_back(self, accounts: Sequence[Account]) -> dict[str, LoginQuarantined]:
        """The accounts to leave out of the candidates now (also kept in :attr:`held_back`)."""
        held = dict(await self._quarantine_holds(accounts))
        if self.pool.credentials is not None:
            # A shared pool: logins another machine may have left unpushed.
            try:
                holds = await asyncio.to_thread(
                    self.pool.credential_holds, [a.name for a in accounts]
                )
            except CredentialError as exc:  # the occupancy checks again, under its lease
                log.warning("cannot read the holds of the shared logins: %s", exc)
                holds = {}
            for name, hold in holds.items():
                held.setdefault(name, hold)
        if self.hold_back is not None:
            for name, why in self.hold_back(accounts).items():
                held.setdefault(name, why)
        for name, why in held.items():
            if (name, why.path) not in self._held_logged:
                self._held_logged.add((name, why.path))
                log.error("%s; it is retried on every choice of account (see `status`)", why)
        self.held_back = held
        return held

    async def _quarantine_holds(self, accounts: Sequence[Account]) -> dict[str, LoginQuarantined]:
        # Directory reads on the loop: nothing in quarantine is the rule, and
        # then that is all it costs.
        listing = self.pool.quarantine_listing()
        if not listing:
            self._quarantine_seen, self._quarantined = None, {}
            return {}
        seen = (listing, self._state_token)
        now = self.clock.monotonic()
        if seen == self._quarantine_seen and (
            not self._quarantined or now - self._quarantine_tried < self.tick
        ):
            return self._quarantined
        # Retry them (the pool lock may wait: off the loop), then see whose
        # logins still wait.
        async with self._write_lock():
            waiting = await asyncio.to_thread(self._retry_quarantined)
        self._quarantine_tried = self.clock.monotonic()
        names = {a.name for a in accounts}
        holds: dict[str, LoginQuarantined] = {}
        for owner, path, reason in waiting:
            if owner in names and owner not in holds:
                holds[owner] = LoginQuarantined(owner, path, f"in quarantine: {reason}")
        self._quarantine_seen = (self.pool.quarantine_listing(), self._state_token)
        self._quarantined = holds
        return holds

    def _retry_quarantined(self) -> list[tuple[str | None, str, str]]:
        return [
            (self.pool.owner_of(item), str(item.path), item.reason)
            for item in self.pool.adopt_quarantined()
        ]

    def recheck_held_back(self) -> None:
        """Forget what the last look held back: the next one retries the quarantine at once."""
        self._quarantine_seen = None

    def unavailable(
        self, choice: WaitUntil, *, what: str = "no account can run"
    ) -> SupervisorError:
        """The error for a :class:`WaitUntil` :meth:`choose` returned, when waiting is no option.

        An :class:`~codex_supervisor.errors.AuthError` when every account is
        held back (:class:`~codex_supervisor.errors.LoginQuarantined` when
        the pool has one account), else
        :class:`~codex_supervisor.errors.QuotaUnavailable`.
        """
        held = list(self.held_back.values())
        if held and self._every_account_held:
            if len(held) == 1:  # a fresh one: the kept one is raised again and again
                return LoginQuarantined(held[0].account, held[0].path, held[0].reason)
            return AuthError(f"{what}: " + "; ".join(str(h) for h in held))
        # The reason was written for a wait; this run does not wait.
        reason = choice.reason.replace("; waiting until ", "; the first is free at ")
        return QuotaUnavailable(f"{what}: {reason}")

    @property
    def _every_account_held(self) -> bool:
        return self._accounts is not None and all(a.name in self.held_back for a in self._accounts)

    def _probe_due(self, account: Account, now: datetime) -> bool:
        snapshot = self.snapshot(account)
        if not self.is_stale(snapshot, now):
            return False
        last = self._probed_at.get(account.name)
        if last is None or self.clock.monotonic() - last >= self.probe_interval:
            return True
        # Probed recently, but a window reset since that observation: the
        # answer has changed, so the limit is worth one more look now — once
        # per reset, so a failing endpoint is not asked every tick.
        passed = [
            w.resets_at
            for w in (() if snapshot is None else snapshot.windows)
            if w.resets_at is not None
            and snapshot is not None
            and snapshot.observed_at < w.resets_at <= now
        ]
        if not passed or self._forced.get(account.name) == max(passed):
            return False
        self._forced[account.name] = max(passed)
        return True

    # -- probing and recording ----------------------------------------------------------

    def probe_in_background(self, name: str) -> asyncio.Task[QuotaSnapshot | None]:
        """Start (or join) a free usage probe of ``name``; its result is recorded."""
        task = self._probes.get(name)
        if task is None or task.done():
            self._probed_at[name] = self.clock.monotonic()
            task = asyncio.create_task(self._probe(name), name=f"probe:{name}")
            self._probes[name] = task
            task.add_done_callback(
                lambda t: self._probes.pop(name, None) if self._probes.get(name) is t else None
            )
        return task

    async def _probe(self, name: str) -> QuotaSnapshot | None:
        try:
            snapshot = await self.quota.get(name, max_age=0)
        except QuotaError as exc:
            # An API-key account, or a token Codex will refresh on next use:
            # the account stays "unknown" to the policy, never blocked by it.
            log.debug("no quota for %s: %s", name, exc)
            self.probe_errors[name] = exc
            return None
        self.probe_errors.pop(name, None)
        await self.record(snapshot)
        return snapshot

    async def refresh(
        self, names: Iterable[str] | None = None, *, budget: float | None = None
    ) -> dict[str, QuotaSnapshot | None]:
        """Probe ``names`` (default: every account) now, free; returns what arrived.

        With ``budget``, waits at most that long; probes still running go on
        in the background and are recorded when they land.
        """
        if names is None:
            names = [a.name for a in await self.accounts()]
        tasks = {name: self.probe_in_background(name) for name in names}
        if not tasks:
            return {}
        if budget is None or budget > 0:
            # asyncio.wait never cancels what it waits for: a caller giving up
            # (budget, cancellation) leaves the probes running, and a cancel
            # aimed at the caller propagates from here untouched.
            await asyncio.wait(tasks.values(), timeout=budget)
        return {
            name: task.result()
            for name, task in tasks.items()
            if task.done() and not task.cancelled() and task.exception() is None
        }

    async def record(self, snapshot: QuotaSnapshot) -> None:
        """Keep ``snapshot`` in this process's cache and in the pool state (off the loop).

        Only the account's main Codex quota counts (limit id ``codex``, or
        none stated); other metered limits Codex reports are not the
        account's and are skipped.
        """
        if not snapshot.is_main_quota:
            log.debug(
                "skipping %s's %r limit: not the main quota", snapshot.account, snapshot.limit_id
            )
            return
        self.quota.put(snapshot)
        try:
            async with self._write_lock():
                await asyncio.to_thread(self.pool.record_snapshot, snapshot)
        except (ConfigError, StateError, OSError) as exc:  # e.g. the account was removed
            log.debug("snapshot of %s not stored: %s", snapshot.account, exc)
        self._emit(
            QuotaUpdated(
                at=self.clock.now(),
                account=snapshot.account,
                source=snapshot.source.value,
                summary=summarize(snapshot),
            )
        )

    async def cool_down(
        self,
        name: str,
        *,
        snapshot: QuotaSnapshot | None = None,
        failures: int = 0,
        cause: str = "usage limit reached",
    ) -> Cooldown:
        """Block ``name`` after it ran out, for the window that did, until its reset.

        ``snapshot`` is the freshest evidence the caller has (e.g. the rollout's
        ``token_count`` of the failed turn). When it does not show which
        window ran out, the usage endpoint is asked (free); only when that
        cannot tell either is a backoff of kind ``other`` recorded, doubled
        per earlier ``failures``.
        """
        now = self.clock.now()
        # The failure's own evidence first (a probe that landed since may lag
        # behind the 429), then the newest data, then a fresh probe.
        kind, until = self.policy.cooldown_for(snapshot, now, failures=failures)
        if kind is None:
            account = next((a for a in await self.accounts() if a.name == name), None)
            newest = None if account is None else self.snapshot(account)
            if newest is not None and newest is not snapshot:
                found, newest_until = self.policy.cooldown_for(newest, now, failures=failures)
                if found is not None:
                    kind, until = found, newest_until
        if kind is None:
            # Nothing on hand says which window ran out: ask, free.
            probed = (await self.refresh([name], budget=self.probe_budget)).get(name)
            if probed is not None:
                found, probed_until = self.policy.cooldown_for(
                    probed, self.clock.now(), failures=failures
                )
                if found is not None:
                    kind, until = found, probed_until
        window = kind or WindowKind.OTHER
        reason = f"{cause}; {_WINDOW_NAMES[window]} window"
        reason += (
            f" resets at {_utc_text(until)}"
            if kind is not None
            else f" reset unknown, retry at {_utc_text(until)}"
        )
        async with self._write_lock():
            cooldown = await asyncio.to_thread(
                self.pool.set_cooldown, name, window=window, blocked_until=until, reason=reason
            )
        self._state_token = None  # our own write: re-read next time
        log.info(
            "%s blocked until %s (%s)", name, cooldown.blocked_until.isoformat(), cooldown.reason
        )
        return cooldown

    # -- choosing and waiting ------------------------------------------------------------

    async def choose(
        self,
        *,
        avoid: str | None = None,
        probe: bool = True,
        budget: float | None = None,
        exclude: Collection[str] = (),
    ) -> str | WaitUntil:
        """The account to launch on now, or :class:`WaitUntil` when none can run.

        ``avoid`` (the account just left) is passed over while any other
        account can run, and taken when none can — its own reset may well
        come first. A wait therefore always covers every account. An account
        held back (:attr:`held_back`) is never chosen; when every account is,
        the wait is one ``tick`` (the next look retries their logins), and
        its reason names them. Accounts in ``exclude`` (refused by the caller
        since its last choice) are never chosen either.
        """
        candidates = await self.candidates(probe=probe, budget=budget)
        if exclude:
            candidates = [c for c in candidates if c.name not in exclude]
        now = self.clock.now()
        held = "; ".join(
            [str(h) for h in self.held_back.values()]
            + [f"{name} runs on {site}" for name, site in sorted(self.elsewhere.items())]
            + [f"{name} was refused just now" for name in sorted(exclude)]
        )
        if not candidates:  # every account is held back or busy elsewhere: look again
            return WaitUntil(
                until=now + timedelta(seconds=self.tick),
                reason=f"no account can run now: {held}",
            )
        names = {c.name for c in candidates}
        if avoid is not None and names - {avoid}:
            choice = self.policy.choose(candidates, now, exclude=[avoid])
            if isinstance(choice, str):
                return choice
        choice = self.policy.choose(candidates, now)
        if isinstance(choice, WaitUntil) and held:
            return WaitUntil(until=choice.until, reason=f"{choice.reason}; {held}")
        return choice

    async def select(
        self,
        *,
        avoid: str | None = None,
        wait: bool = True,
        max_wait: float | None = None,
    ) -> str:
        """The account to launch on; when none can run, wait until one can.

        The wait emits :class:`~codex_supervisor.events.WaitingForReset` at
        once and then every ``tick``; it re-evaluates every tick, whenever the
        pool state or the occupancy changes, and re-probes every account every
        ``refresh_interval`` (free). Cancel the task to stop waiting (nothing
        else runs meanwhile). Raises
        :class:`~codex_supervisor.errors.QuotaUnavailable` when ``wait`` is
        false or ``max_wait`` seconds passed — an
        :class:`~codex_supervisor.errors.AuthError` instead when every
        account is held back (:attr:`held_back`; see :meth:`unavailable`).
        """
        started = self.clock.monotonic()
        refreshed = started
        budget: float | None = None  # the first look may wait for fresh quota, briefly
        while True:
            choice = await self.choose(avoid=avoid, budget=budget)
            # Later looks never wait on the network: probes land in the
            # background and wake the watch through the pool state.
            budget = 0.0
            if isinstance(choice, str):
                return choice
            if not wait:
                raise self.unavailable(choice, what="every account is blocked")
            waited = self.clock.monotonic() - started
            if max_wait is not None and waited >= max_wait:
                raise self.unavailable(
                    choice, what=f"every account is still blocked after {waited:.0f}s"
                )
            now = self.clock.now()
            left = max(0.0, (choice.until - now).total_seconds())
            self._emit(
                WaitingForReset(at=now, until=choice.until, seconds_left=left, reason=choice.reason)
            )
            if self.clock.monotonic() - refreshed >= self.refresh_interval:
                refreshed = self.clock.monotonic()
                for account in await self.accounts():
                    self.probe_in_background(account.name)
            step = min(self.tick, left) if left > 0 else self.tick
            if max_wait is not None:
                step = min(step, max(0.0, max_wait - waited))
            await self._watch(step)

    async def _watch(self, seconds: float) -> None:
        """Sleep up to ``seconds``, returning early when the pool state or occupancy changes."""
        deadline = self.clock.monotonic() + seconds
        token = self.pool.state_token()
        occupancy = dict(self._occupancy or {})
        while True:
            left = deadline - self.clock.monotonic()
            if left <= 0:
                return
            await self.clock.sleep(min(self.watch_interval, left))
            if self.pool.state_token() != token:
                return
            accounts = await self.accounts()
            if await self._occupants(accounts, max_age=self.watch_interval) != occupancy:
                return
