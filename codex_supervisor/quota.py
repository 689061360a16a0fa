"""Fetching and caching quota snapshots without spending quota (ARCHITECTURE.md, D3).

This is the I/O half of the quota concern; the value objects and their
parsers (:class:`QuotaSnapshot`, :class:`QuotaWindow`, :class:`WindowKind`,
:func:`classify_window`, ...) live in :mod:`codex_supervisor.snapshots`, which
needs no HTTP stack, and are re-exported here for compatibility.

- :func:`read_chatgpt_base_url` and :func:`usage_url` say where the usage
  endpoint of an account lives, exactly as Codex works it out;
- :class:`UsageEndpointSource` fetches ``GET …/wham/usage`` (no quota spent)
  and parses it with :meth:`QuotaSnapshot.from_usage_payload`;
- :class:`QuotaService` sits in front of any :class:`SnapshotProvider`: a TTL
  cache with an LRU bound, and a single-flight fetch per account, so a burst
  of callers costs one HTTP request. Passive snapshots (rollouts, app-server
  notifications) are fed in with :meth:`QuotaService.put`.

Errors: the usage source raises :class:`~codex_supervisor.errors.QuotaAuthExpired`
(401/403, never retried), :class:`~codex_supervisor.errors.QuotaUnavailable`
(transport errors and 5xx after the retries, any other non-2xx answer) and
:class:`~codex_supervisor.errors.QuotaParseError` (a 2xx answer we cannot
read). No httpx, tenacity or cattrs exception escapes.
"""

from __future__ import annotations

import asyncio
import logging
import os
import random
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path
from types import TracebackType
from typing import Any, Protocol, Self, final, runtime_checkable

import attrs
import httpx
import tenacity

from . import _toml
from ._tls import async_client
from .clock import Clock, SystemClock
from .errors import ConfigError, QuotaAuthExpired, QuotaParseError, QuotaUnavailable
from .snapshots import (
    FIVE_HOUR_MINUTES,
    WEEKLY_MINUTES,
    Credits,
    QuotaSnapshot,
    QuotaWindow,
    SnapshotSource,
    WindowKind,
    classify_window,
)

__all__ = [
    "DEFAULT_CHATGPT_BASE_URL",
    "FIVE_HOUR_MINUTES",
    "WEEKLY_MINUTES",
    "CachedSnapshot",
    "Credits",
    "QuotaService",
    "QuotaSnapshot",
    "QuotaWindow",
    "SnapshotProvider",
    "SnapshotSource",
    "UsageCredentials",
    "UsageEndpointSource",
    "WindowKind",
    "classify_window",
    "read_chatgpt_base_url",
    "usage_url",
]

log = logging.getLogger(__name__)

#: What Codex uses when config.toml does not set ``chatgpt_base_url``.
DEFAULT_CHATGPT_BASE_URL = "https://chatgpt.com/backend-api/"

# -- where the usage endpoint lives ---------------------------------------------------


def read_chatgpt_base_url(codex_home: Path) -> str:
    """The ``chatgpt_base_url`` of ``codex_home/config.toml``, as Codex reads it.

    A missing file or key gives :data:`DEFAULT_CHATGPT_BASE_URL`; an
    unreadable or malformed file, or a non-string value, raises
    :class:`~codex_supervisor.errors.ConfigError`, and so does a file over
    1 MiB or with a key of more than 16 dotted parts (tomllib's memory grows
    with the square of a key's parts).
    """
    path = Path(codex_home) / "config.toml"
    try:
        with path.open("rb") as fh:
            data = fh.read(_toml.MAX_BYTES + 1)
        if len(data) > _toml.MAX_BYTES:
            raise ConfigError(f"cannot read {path}: larger than {_toml.MAX_BYTES} bytes")
        text = data.decode()
    except FileNotFoundError:
        return DEFAULT_CHATGPT_BASE_URL
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read {path}: {exc}") from exc
    config = _toml.loads(text, source=str(path))
    value = config.get("chatgpt_base_url")
    if value is None:
        return DEFAULT_CHATGPT_BASE_URL
    if not isinstance(value, str) or not value.strip():
        raise ConfigError(f"{path}: chatgpt_base_url must be a non-empty string")
    return value


def usage_url(base_url: str) -> str:
    """The usage endpoint for a ``chatgpt_base_url``, built the way Codex builds it.

    ChatGPT origins without ``/backend-api`` get it appended; a base that has
    ``/backend-api`` uses ``/wham/usage``, any other the Codex API path
    ``/api/codex/usage``.
    """
    base = base_url.rstrip("/")
    if base.startswith(("https://chatgpt.com", "https://chat.openai.com")) and (
        "/backend-api" not in base
    ):
        base = f"{base}/backend-api"
    if "/backend-api" in base:
        return f"{base}/wham/usage"
    return f"{base}/api/codex/usage"


# -- the usage endpoint source ------------------------------------------------------------


@final
@attrs.frozen(kw_only=True)
class UsageCredentials:
    """What one usage request needs: whose token, for which ChatGPT account, where."""

    account: str
    account_id: str | None = None
    access_token: str = attrs.field(repr=False)
    base_url: str = DEFAULT_CHATGPT_BASE_URL


@runtime_checkable
class SnapshotProvider(Protocol):
    """Anything that can fetch a fresh snapshot for an account by name."""

    async def fetch(self, account: str) -> QuotaSnapshot:
        """A snapshot for ``account``, or a :class:`~codex_supervisor.errors.QuotaError`."""
        ...


class _ServerError(Exception):
    """A 5xx answer, raised only inside the retry loop."""

    def __init__(self, status: int) -> None:
        super().__init__(status)
        self.status = status

    def __str__(self) -> str:
        return f"HTTP {self.status}"


def _retryable(exc: BaseException) -> bool:
    # UnsupportedProtocol is a TransportError too, but a wrong scheme never heals.
    if isinstance(exc, httpx.UnsupportedProtocol):
        return False
    return isinstance(exc, (httpx.TransportError, _ServerError))


def _default_clock(value: Clock | None) -> Clock:
    return SystemClock() if value is None else value


def _default_user_agent(value: str | None) -> str:
    if value is not None:
        return value
    from importlib.metadata import PackageNotFoundError, version  # noqa: PLC0415 - rare path

    try:
        return f"codex_supervisor/{version('codex-supervisor')}"
    except PackageNotFoundError:  # a source tree that is not installed
        return "codex_supervisor/0+unknown"


def _non_negative(_: object, attribute: attrs.Attribute[Any], value: float) -> None:
    if value < 0:
        raise ConfigError(f"{attribute.name} must not be negative, got {value!r}")


def _positive(_: object, attribute: attrs.Attribute[Any], value: float) -> None:
    if value <= 0:
        raise ConfigError(f"{attribute.name} must be positive, got {value!r}")


@final
@attrs.define
class UsageEndpointSource:
    """Fetches snapshots from the usage endpoint, which spends no quota.

    ``credentials`` maps our account name to its current token, ChatGPT account
    id and base URL; it is awaited once per fetch, so a token Codex refreshed
    in the meantime is picked up. The token is sent only as the bearer header
    and is never logged.

    Transport errors and 5xx answers are retried ``retries`` times (so at most
    ``retries + 1`` requests) with exponential backoff and jitter, starting at
    ``backoff`` seconds and capped at ``max_backoff``; waits go through
    ``clock.sleep``. Then :class:`~codex_supervisor.errors.QuotaUnavailable`
    is raised from the last error. 401/403 raise
    :class:`~codex_supervisor.errors.QuotaAuthExpired` at once: Codex refreshes
    its token on next use and the library never refreshes tokens. Any other
    non-2xx answer (429 included: retrying a rate limit at once only adds to
    it) raises ``QuotaUnavailable`` without retry; a 2xx answer that is not a
    readable usage payload raises :class:`~codex_supervisor.errors.QuotaParseError`.

    The source closes its HTTP client only if it created it (``aclose`` or
    ``async with``). The client it creates trusts and routes as Codex does in
    ``environ`` (default ``os.environ``): the CA bundle of
    ``CODEX_CA_CERTIFICATE`` or else ``SSL_CERT_FILE`` on top of the system
    roots, and the ``*_PROXY`` variables; a bundle that cannot be loaded is a
    :class:`~codex_supervisor.errors.ConfigError` naming it.
    """

    _credentials: Callable[[str], Awaitable[UsageCredentials]]
    _client: httpx.AsyncClient | None = attrs.field(default=None, kw_only=True, repr=False)
    _clock: Clock = attrs.field(default=None, converter=_default_clock, kw_only=True)
    retries: int = attrs.field(default=3, kw_only=True, validator=_non_negative)
    user_agent: str = attrs.field(default=None, converter=_default_user_agent, kw_only=True)
    timeout: float = attrs.field(default=10.0, kw_only=True, validator=_positive)
    backoff: float = attrs.field(default=0.25, kw_only=True, validator=_non_negative)
    max_backoff: float = attrs.field(default=4.0, kw_only=True, validator=_non_negative)
    environ: Mapping[str, str] | None = attrs.field(default=None, kw_only=True, repr=False)
    _http: httpx.AsyncClient = attrs.field(init=False, repr=False)
    _owns_client: bool = attrs.field(init=False, default=False, repr=False)

    def __attrs_post_init__(self) -> None:
        if self._client is None:
            environ = os.environ if self.environ is None else self.environ
            self._http = async_client(environ, timeout=self.timeout)
            self._owns_client = True
        else:
            self._http = self._client

    async def fetch(self, account: str) -> QuotaSnapshot:
        """GET the usage endpoint for ``account`` and parse the answer."""
        if self._http.is_closed:
            raise QuotaUnavailable(f"the usage source for {account!r} is closed")
        creds = await self._credentials(account)
        url = usage_url(creds.base_url)
        headers = {
            "Authorization": f"Bearer {creds.access_token}",
            "User-Agent": self.user_agent,
            "Accept": "application/json",
        }
        if creds.account_id:
            headers["ChatGPT-Account-Id"] = creds.account_id
        log.debug("quota.usage.fetch account=%s url=%s", account, url)
        retrying = tenacity.AsyncRetrying(
            stop=tenacity.stop_after_attempt(self.retries + 1),
            wait=self._wait,
            retry=tenacity.retry_if_exception(_retryable),
            sleep=self._clock.sleep,
            before_sleep=lambda state: _log_retry(account, state),
            reraise=True,
        )
        try:
            response: httpx.Response = await retrying(self._get_once, url, headers)
        except (httpx.HTTPError, _ServerError) as exc:
            log.info("quota.usage.unavailable account=%s error=%s", account, _describe(exc))
            raise QuotaUnavailable(
                f"usage endpoint for {account!r} failed: {_describe(exc)}"
            ) from exc
        except httpx.InvalidURL as exc:
            raise QuotaUnavailable(f"cannot request the usage of {account!r}: {exc}") from exc
        except UnicodeEncodeError:
            # Header values must be ASCII. The codec error holds the whole
            # header value, token included, so it must not ride along as cause.
            raise QuotaUnavailable(
                f"the credentials of {account!r} contain a non-ASCII header value"
            ) from None
        status = response.status_code
        if status in (401, 403):
            log.info("quota.usage.auth_expired account=%s status=%d", account, status)
            raise QuotaAuthExpired(account, status)
        if not 200 <= status < 300:
            log.info("quota.usage.refused account=%s status=%d", account, status)
            raise QuotaUnavailable(f"usage endpoint for {account!r} answered HTTP {status}")
        try:
            payload = response.json()
        except (ValueError, RecursionError) as exc:  # also invalid UTF-8, or nested too deep
            raise QuotaParseError(f"usage endpoint for {account!r} sent invalid JSON") from exc
        snapshot = QuotaSnapshot.from_usage_payload(
            payload, account=account, observed_at=self._clock.now()
        )
        log.debug(
            "quota.usage.ok account=%s windows=%s limit_reached=%s",
            account,
            ",".join(f"{w.kind.value}:{w.used_percent:g}" for w in snapshot.windows),
            snapshot.limit_reached,
        )
        return snapshot

    def _wait(self, state: tenacity.RetryCallState) -> float:
        # Our own exponential-with-jitter: tenacity's built-in changed its
        # signature between the versions we support (``initial`` is deprecated
        # in 9.1, ``multiplier`` absent before).
        exponent = min(state.attempt_number - 1, 32)
        jitter = random.uniform(0.0, self.backoff)  # noqa: S311 - jitter, not a secret
        return min(self.backoff * 2.0**exponent + jitter, self.max_backoff)

    async def _get_once(self, url: str, headers: dict[str, str]) -> httpx.Response:
        response = await self._http.get(url, headers=headers)
        if response.status_code >= 500:
            raise _ServerError(response.status_code)
        return response

    async def aclose(self) -> None:
        """Close the HTTP client if this source created it."""
        if self._owns_client:
            await self._http.aclose()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()


def _describe(exc: BaseException) -> str:
    # httpx messages name the URL, never the headers, so they are safe to log.
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _log_retry(account: str, state: tenacity.RetryCallState) -> None:
    error = state.outcome.exception() if state.outcome is not None else None
    wait = state.next_action.sleep if state.next_action is not None else 0.0
    log.debug(
        "quota.usage.retry account=%s attempt=%d wait=%.3fs error=%s",
        account,
        state.attempt_number,
        wait,
        _describe(error) if error is not None else "?",
    )


# -- the cache and single-flight service ------------------------------------------------


@final
@attrs.frozen(kw_only=True)
class CachedSnapshot:
    """A cached snapshot with how old it is and whether the service deems it fresh.

    ``age_seconds`` counts on the monotonic clock from when the service stored
    it; how old the data itself is is ``snapshot.observed_at``.
    """

    snapshot: QuotaSnapshot
    age_seconds: float
    fresh: bool
    source: SnapshotSource


@attrs.frozen
class _Entry:
    snapshot: QuotaSnapshot
    stored_at: float  # monotonic


@attrs.define
class _Flight:
    task: asyncio.Task[QuotaSnapshot]
    waiters: int = 0


def _cancelling() -> bool:
    task = asyncio.current_task()
    return task is not None and task.cancelling() > 0


@final
@attrs.define
class QuotaService:
    """A TTL cache in front of a :class:`SnapshotProvider`, one fetch per account at a time.

    Concurrent :meth:`get` calls for one account share one in-flight fetch (an
    asyncio task). A caller that is cancelled stops waiting without cancelling
    the fetch for the others; the fetch is cancelled when its last waiter is
    gone. A failed fetch raises the same error in every waiter and is not
    cached. At most ``max_entries`` accounts are cached, least recently used
    evicted first.
    """

    _provider: SnapshotProvider
    ttl: float = attrs.field(default=60.0, kw_only=True, validator=_non_negative)
    _clock: Clock = attrs.field(default=None, converter=_default_clock, kw_only=True)
    max_entries: int = attrs.field(default=1024, kw_only=True, validator=_positive)
    _cache: OrderedDict[str, _Entry] = attrs.field(init=False, factory=OrderedDict, repr=False)
    _flights: dict[str, _Flight] = attrs.field(init=False, factory=dict, repr=False)
    # Strong references to fetch tasks until they finish, including abandoned
    # ones that are still unwinding after cancel(): the loop keeps only weak ones.
    _tasks: set[asyncio.Task[QuotaSnapshot]] = attrs.field(init=False, factory=set, repr=False)

    async def get(self, account: str, *, max_age: float | None = None) -> QuotaSnapshot:
        """A snapshot for ``account`` younger than ``max_age`` (default: ``ttl``) seconds.

        Age counts on the monotonic clock from when the snapshot was stored.
        ``max_age=0`` always fetches (joining a fetch already in flight).
        """
        limit = self.ttl if max_age is None else max_age
        if limit < 0:
            raise ConfigError(f"max_age must not be negative, got {max_age!r}")
        entry = self._cache.get(account)
        if entry is not None and self._clock.monotonic() - entry.stored_at < limit:
            self._cache.move_to_end(account)
            return entry.snapshot
        return await self._join(account)

    async def _join(self, account: str) -> QuotaSnapshot:
        flight = self._flights.get(account)
        if flight is None or flight.task.done():
            task = asyncio.create_task(self._fetch(account), name=f"quota-fetch:{account}")
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
            flight = self._flights[account] = _Flight(task=task)
            log.debug("quota.fetch.start account=%s", account)
        flight.waiters += 1
        try:
            # shield: cancelling this caller must not cancel the shared fetch.
            return await asyncio.shield(flight.task)
        except asyncio.CancelledError:
            if flight.task.cancelled() and not _cancelling():
                # The fetch was cancelled from elsewhere (aclose); this caller
                # was not, so it gets an error rather than a phantom cancel.
                raise QuotaUnavailable(f"the quota fetch for {account!r} was cancelled") from None
            raise
        finally:
            flight.waiters -= 1
            if flight.waiters == 0 and not flight.task.done():
                # Unlink first, so a caller arriving while the task unwinds
                # starts a fresh fetch instead of inheriting the cancellation.
                if self._flights.get(account) is flight:
                    del self._flights[account]
                flight.task.cancel()
                log.debug("quota.fetch.abandoned account=%s", account)

    async def _fetch(self, account: str) -> QuotaSnapshot:
        try:
            snapshot = await self._provider.fetch(account)
        except Exception as exc:
            log.debug("quota.fetch.failed account=%s error=%s", account, type(exc).__name__)
            raise
        else:
            self._store(account, snapshot)
            entry = self._cache.get(account)
            # A passive snapshot observed later may have arrived meanwhile.
            return entry.snapshot if entry is not None else snapshot
        finally:
            # Done inside the task, not in a callback, so no caller can see a
            # finished flight in the map.
            flight = self._flights.get(account)
            if flight is not None and flight.task is asyncio.current_task():
                del self._flights[account]

    def _store(self, account: str, snapshot: QuotaSnapshot) -> bool:
        current = self._cache.get(account)
        if current is not None and snapshot.observed_at < current.snapshot.observed_at:
            log.debug("quota.cache.older_ignored account=%s", account)
            return False
        self._cache[account] = _Entry(snapshot, self._clock.monotonic())
        self._cache.move_to_end(account)
        while len(self._cache) > self.max_entries:
            evicted, _ = self._cache.popitem(last=False)
            log.debug("quota.cache.evicted account=%s", evicted)
        return True

    def put(self, snapshot: QuotaSnapshot) -> bool:
        """Feed a passively observed snapshot (e.g. from a rollout).

        It replaces the cached one only if its ``observed_at`` is not older;
        returns whether it was kept.
        """
        return self._store(snapshot.account, snapshot)

    def peek(self, account: str) -> CachedSnapshot | None:
        """The cached snapshot with its age and freshness, without fetching."""
        entry = self._cache.get(account)
        if entry is None:
            return None
        age = max(0.0, self._clock.monotonic() - entry.stored_at)
        return CachedSnapshot(
            snapshot=entry.snapshot,
            age_seconds=age,
            fresh=age < self.ttl,
            source=entry.snapshot.source,
        )

    def invalidate(self, account: str) -> None:
        """Forget the cached snapshot of ``account`` (a fetch in flight still lands)."""
        self._cache.pop(account, None)

    @property
    def in_flight(self) -> frozenset[str]:
        """Accounts with a fetch in flight right now."""
        return frozenset(self._flights)

    async def aclose(self) -> None:
        """Cancel every fetch in flight; waiters get QuotaUnavailable."""
        tasks = list(self._tasks)
        self._flights.clear()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
