"""Quota through ``codex app-server``: ``account/rateLimits/read`` in an account home.

The third and most expensive quota source (ARCHITECTURE.md D3): it boots an
app-server in the account's home and asks it for the rate limits, which Codex
reads from the usage endpoint with its own credentials. Booting Codex in a home
may refresh that account's tokens, so the probe runs only when no process
occupies the account, and holds the account's exclusive lease while it runs:
no Codex child can start on the account (and race the refresh) meanwhile. Nor
does it run while a newer login of the account waits in the pool's quarantine
(:meth:`~codex_supervisor.accounts.AccountPool.ensure_no_quarantine`): the
account's own auth.json then holds a spent refresh token.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping, Sequence
from typing import final

import attrs

from ..accounts import AccountPool
from ..clock import Clock, SystemClock
from ..errors import (
    AccountBusy,
    AccountGone,
    AppServerError,
    AuthError,
    LeaseTimeout,
    LoginQuarantined,
    QuotaParseError,
    QuotaUnavailable,
    StateError,
)
from ..snapshots import QuotaSnapshot
from .client import AppServerClient

__all__ = ["AppServerRateLimitsSource"]

log = logging.getLogger(__name__)


@final
@attrs.define
class AppServerRateLimitsSource:
    """A quota SnapshotProvider that asks a short-lived app-server in the account home.

    ``args`` go to ``codex app-server`` (e.g. ``--disable`` flags); ``timeout``
    bounds the whole probe. Raises
    :class:`~codex_supervisor.errors.QuotaUnavailable` when the account is
    occupied, a newer login of it waits in quarantine, or the app-server
    cannot answer.
    """

    pool: AccountPool
    codex: str = "codex"
    environ: Mapping[str, str] | None = None
    args: Sequence[str] = ()
    timeout: float = 30.0
    clock: Clock = attrs.field(factory=SystemClock)

    async def fetch(self, account: str) -> QuotaSnapshot:
        """A snapshot of ``account`` from ``account/rateLimits/read``."""
        occupants = await self.pool.occupants(account)
        if occupants:
            raise QuotaUnavailable(
                f"{account!r} is occupied by {len(occupants)} process(es); "
                "not booting an app-server in its home"
            )
        try:
            async with self.pool.occupy_exclusively(
                account, purpose="app-server quota probe", timeout=1.0
            ):
                return await self._read(account)
        except LeaseTimeout as exc:
            raise QuotaUnavailable(f"{account!r} became occupied: {exc}") from exc
        except (AccountGone, StateError) as exc:  # removed meanwhile, or no folder
            raise QuotaUnavailable(f"no app-server for {account!r}: {exc}") from exc
        except (AccountBusy, AuthError) as exc:  # a shared pool: elsewhere, held, store out
            raise QuotaUnavailable(f"no app-server for {account!r}: {exc}") from exc

    async def _read(self, account: str) -> QuotaSnapshot:
        try:
            # Under the exclusive lease: nothing can start on it meanwhile.
            await asyncio.to_thread(self.pool.ensure_no_quarantine, account)
        except LoginQuarantined as exc:
            raise QuotaUnavailable(f"not booting an app-server in its home: {exc}") from exc
        home = self.pool.prepare_home(account)
        try:
            client = await AppServerClient.spawn(
                self.codex, codex_home=home, environ=self.environ, args=self.args
            )
        except (AppServerError, OSError) as exc:
            raise QuotaUnavailable(f"cannot start an app-server for {account!r}: {exc}") from exc
        async with client:
            try:
                result = await client.request("account/rateLimits/read", None, timeout=self.timeout)
            except (AppServerError, TimeoutError) as exc:
                raise QuotaUnavailable(
                    f"the app-server of {account!r} gave no rate limits: {exc}"
                ) from exc
        limits = result.get("rateLimits") if isinstance(result, dict) else None
        if not isinstance(limits, dict):
            raise QuotaParseError(f"account/rateLimits/read for {account!r} had no rateLimits")
        snapshot = QuotaSnapshot.from_app_server(
            limits, account=account, observed_at=self.clock.now()
        )
        log.debug("app-server quota for %s read", account)
        return snapshot
