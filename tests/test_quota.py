"""quota: where the usage endpoint lives, the usage source and the single-flight cache."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

from codex_supervisor import errors, quota, snapshots
from codex_supervisor.quota import (
    DEFAULT_CHATGPT_BASE_URL,
    CachedSnapshot,
    QuotaService,
    SnapshotProvider,
    UsageCredentials,
    UsageEndpointSource,
    read_chatgpt_base_url,
    usage_url,
)
from codex_supervisor.snapshots import QuotaSnapshot, QuotaWindow, SnapshotSource
from codex_supervisor.testing import FakeClock, FakeCodexBackend, write_config_toml

OBSERVED = datetime(2026, 5, 1, 12, 0, tzinfo=UTC)
RESET_5H = 1795339672
RESET_WEEK = 1795739672
SECRET = "tok-SECRET-do-not-log-4f1c"

USAGE_PAYLOAD: dict[str, Any] = {
    "plan_type": "plus",
    "rate_limit": {
        "allowed": True,
        "limit_reached": False,
        "primary_window": {
            "used_percent": 37,
            "limit_window_seconds": 18000,
            "reset_after_seconds": 1200,
            "reset_at": RESET_5H,
        },
        "secondary_window": {
            "used_percent": 41,
            "limit_window_seconds": 604800,
            "reset_after_seconds": 400000,
            "reset_at": RESET_WEEK,
        },
    },
    "credits": {"has_credits": False, "unlimited": False, "balance": "0"},
}


def _epoch(seconds: int) -> datetime:
    return datetime.fromtimestamp(seconds, UTC)


def _clock() -> FakeClock:
    """A fake clock at OBSERVED whose sleeps jump ahead as soon as the loop is idle."""
    return FakeClock(OBSERVED, autojump=True)


# -- compatibility --------------------------------------------------------------------------------


def test_snapshot_names_are_still_importable_from_quota() -> None:
    """quota re-exports the value objects that moved to snapshots, as the same objects."""
    for name in snapshots.__all__:
        assert name in quota.__all__, name
        assert getattr(quota, name) is getattr(snapshots, name), name


# -- usage_url and config.toml --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("base", "url"),
    [
        ("https://chatgpt.com/backend-api/", "https://chatgpt.com/backend-api/wham/usage"),
        ("https://chatgpt.com/backend-api", "https://chatgpt.com/backend-api/wham/usage"),
        ("https://chatgpt.com", "https://chatgpt.com/backend-api/wham/usage"),
        ("https://chatgpt.com/", "https://chatgpt.com/backend-api/wham/usage"),
        ("https://chat.openai.com", "https://chat.openai.com/backend-api/wham/usage"),
        ("http://127.0.0.1:8080/backend-api/", "http://127.0.0.1:8080/backend-api/wham/usage"),
        ("http://127.0.0.1:8080", "http://127.0.0.1:8080/api/codex/usage"),
        ("https://proxy.example.test/codex/", "https://proxy.example.test/codex/api/codex/usage"),
        ("http://chatgpt.com", "http://chatgpt.com/api/codex/usage"),
    ],
)
def test_usage_url(base: str, url: str) -> None:
    """The usage URL is derived from chatgpt_base_url exactly as Codex derives it."""
    assert usage_url(base) == url


def test_read_chatgpt_base_url_from_config_toml(tmp_path: Path, backend: FakeCodexBackend) -> None:
    """chatgpt_base_url comes from the config.toml the testing helpers write."""
    write_config_toml(tmp_path, backend)
    assert read_chatgpt_base_url(tmp_path) == backend.chatgpt_base_url
    assert usage_url(read_chatgpt_base_url(tmp_path)) == f"{backend.url}/backend-api/wham/usage"


def test_read_chatgpt_base_url_defaults(tmp_path: Path) -> None:
    """No config.toml, or one without the key, gives Codex's default base URL."""
    assert read_chatgpt_base_url(tmp_path) == DEFAULT_CHATGPT_BASE_URL
    (tmp_path / "config.toml").write_text('model = "x"\n', encoding="utf-8")
    assert read_chatgpt_base_url(tmp_path) == "https://chatgpt.com/backend-api/"


@pytest.mark.parametrize("text", ["chatgpt_base_url = [unclosed\n", "chatgpt_base_url = 5\n"])
def test_read_chatgpt_base_url_rejects_bad_config(tmp_path: Path, text: str) -> None:
    """Malformed TOML or a non-string base URL is a ConfigError."""
    (tmp_path / "config.toml").write_text(text, encoding="utf-8")
    with pytest.raises(errors.ConfigError):
        read_chatgpt_base_url(tmp_path)


# -- UsageEndpointSource against the real fake backend --------------------------------------------


def _backend_credentials(
    backend: FakeCodexBackend, account_id: str
) -> Callable[[str], Awaitable[UsageCredentials]]:
    async def credentials(account: str) -> UsageCredentials:
        acct = backend.account(account_id)
        return UsageCredentials(
            account=account,
            account_id=acct.account_id,
            access_token=acct.access_token,
            base_url=backend.chatgpt_base_url,
        )

    return credentials


async def _usage_requests(backend: FakeCodexBackend, at_least: int) -> list[Any]:
    # The fake appends to its log after writing the response, so a request the
    # client has finished may show up a moment later: poll with a deadline.
    deadline = time.monotonic() + 5.0
    while True:
        found = [r for r in backend.requests if r.path.endswith("/usage")]
        if len(found) >= at_least or time.monotonic() > deadline:
            return found
        await asyncio.sleep(0.005)


@pytest.mark.anyio
async def test_usage_source_reads_the_fake_backend(backend: FakeCodexBackend) -> None:
    """A fetch matches the backend's quota state and sends the expected headers."""
    backend.add_account("acct-a", five_hour_used=12, weekly_used=34, plan_type="pro")
    async with UsageEndpointSource(
        _backend_credentials(backend, "acct-a"), user_agent="qa/1"
    ) as source:
        snap = await source.fetch("alice")

    five, weekly = backend.account("acct-a").windows
    assert snap.account == "alice"
    assert snap.source is SnapshotSource.USAGE_ENDPOINT
    assert snap.plan_type == "pro"
    assert snap.limit_reached is False
    assert snap.five_hour == QuotaWindow(
        used_percent=12.0, window_minutes=300, resets_at=_epoch(five.resets_at)
    )
    assert snap.weekly == QuotaWindow(
        used_percent=34.0, window_minutes=10080, resets_at=_epoch(weekly.resets_at)
    )
    [request] = await _usage_requests(backend, 1)
    assert request.path == "/backend-api/wham/usage"
    assert request.status == 200
    assert request.account_id == "acct-a"
    assert request.headers["chatgpt-account-id"] == "acct-a"
    assert request.headers["user-agent"] == "qa/1"
    assert request.headers["authorization"] == "<redacted>"


@pytest.mark.anyio
async def test_usage_source_weekly_only_account(backend: FakeCodexBackend) -> None:
    """A weekly-only account yields one weekly window and no five-hour window."""
    backend.add_account("acct-w", weekly_only=True, weekly_used=55)
    async with UsageEndpointSource(_backend_credentials(backend, "acct-w")) as source:
        snap = await source.fetch("w")
    assert snap.five_hour is None
    assert snap.weekly is not None
    assert snap.weekly.used_percent == 55.0
    assert len(snap.windows) == 1


@pytest.mark.anyio
async def test_usage_source_exhausted_account_is_limited(backend: FakeCodexBackend) -> None:
    """An account at 100 % on a window is reported as limit reached."""
    backend.add_account("acct-x")
    backend.set_quota("acct-x", weekly=100)
    async with UsageEndpointSource(_backend_credentials(backend, "acct-x")) as source:
        snap = await source.fetch("x")
    assert snap.limit_reached is True
    assert snap.weekly is not None
    assert snap.weekly.remaining_percent == 0.0


@pytest.mark.anyio
async def test_expired_token_raises_auth_expired_without_retry(backend: FakeCodexBackend) -> None:
    """A 401 raises QuotaAuthExpired after exactly one request (no retry, no refresh)."""
    backend.add_account("acct-e")
    backend.expire_access_token("acct-e")
    async with UsageEndpointSource(_backend_credentials(backend, "acct-e"), retries=3) as source:
        with pytest.raises(errors.QuotaAuthExpired) as info:
            await source.fetch("eve")
    assert info.value.account == "eve"
    assert info.value.status == 401
    requests = await _usage_requests(backend, 1)
    assert [r.status for r in requests] == [401]
    assert not [r for r in backend.requests if r.path == "/oauth/token"]


@pytest.mark.anyio
async def test_service_over_backend_sends_one_request_for_a_burst(
    backend: FakeCodexBackend,
) -> None:
    """Fifty concurrent gets through the real source cost one usage request."""
    backend.add_account("acct-b", five_hour_used=7)
    async with UsageEndpointSource(_backend_credentials(backend, "acct-b")) as source:
        service = QuotaService(source)
        snaps = await asyncio.gather(*(service.get("b") for _ in range(50)))
    assert {id(s) for s in snaps} == {id(snaps[0])}
    assert len(await _usage_requests(backend, 1)) == 1


# -- UsageEndpointSource with MockTransport -------------------------------------------------------


def _static_credentials(
    *, account_id: str | None = "acct-1", base_url: str = "https://chatgpt.com/backend-api/"
) -> Callable[[str], Awaitable[UsageCredentials]]:
    async def credentials(account: str) -> UsageCredentials:
        return UsageCredentials(
            account=account, account_id=account_id, access_token=SECRET, base_url=base_url
        )

    return credentials


Handler = Callable[[httpx.Request], httpx.Response]


def _scripted(*answers: int | Exception) -> tuple[Handler, list[httpx.Request]]:
    """A MockTransport handler answering each request with the next status or error."""
    seen: list[httpx.Request] = []
    queue = list(answers)

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        answer = queue.pop(0) if len(queue) > 1 else queue[0]
        if isinstance(answer, Exception):
            raise answer
        if answer == 200:
            return httpx.Response(200, json=USAGE_PAYLOAD)
        return httpx.Response(answer, json={"error": {"message": "nope"}})

    return handler, seen


@pytest.mark.anyio
async def test_server_errors_are_retried_with_backoff() -> None:
    """5xx answers are retried with growing, jittered, capped waits on the clock."""
    handler, seen = _scripted(503, 502, 200)
    clock = _clock()
    async with httpx.AsyncClient(transport=httpx.MockTransport(handler)) as client:
        source = UsageEndpointSource(
            _static_credentials(), client=client, clock=clock, backoff=0.25, max_backoff=4.0
        )
        snap = await source.fetch("a")
    assert snap.five_hour is not None
    assert snap.five_hour.used_percent == 37.0
    assert len(seen) == 3
    assert len(clock.sleeps) == 2
    first, second = clock.sleeps
    assert 0.25 <= first <= 0.5
    assert 0.5 <= second <= 0.75
    # The observation is stamped after the waits, on the injected clock.
    assert snap.observed_at == clock.now() > OBSERVED


@pytest.mark.anyio
async def test_exhausted_retries_raise_quota_unavailable() -> None:
    """A backend that keeps failing gets retries + 1 requests, then QuotaUnavailable."""
    handler, seen = _scripted(500)
    clock = _clock()
    async with httpx.AsyncClient(transport=httpx.MockTransport(handler)) as client:
        source = UsageEndpointSource(
            _static_credentials(), client=client, clock=clock, retries=2, max_backoff=1.0
        )
        with pytest.raises(errors.QuotaUnavailable, match="HTTP 500") as info:
            await source.fetch("a")
    assert len(seen) == 3
    assert all(wait <= 1.0 for wait in clock.sleeps)
    assert info.value.__cause__ is not None


@pytest.mark.anyio
async def test_transport_errors_are_retried_then_translated() -> None:
    """Connection errors are retried; the last one becomes QuotaUnavailable's cause."""
    handler, seen = _scripted(httpx.ConnectError("refused"))
    async with httpx.AsyncClient(transport=httpx.MockTransport(handler)) as client:
        source = UsageEndpointSource(_static_credentials(), client=client, clock=_clock())
        with pytest.raises(errors.QuotaUnavailable) as info:
            await source.fetch("a")
    assert len(seen) == 4
    assert isinstance(info.value.__cause__, httpx.ConnectError)


@pytest.mark.anyio
async def test_transient_timeout_then_success() -> None:
    """A read timeout followed by an answer yields the snapshot."""
    handler, seen = _scripted(httpx.ReadTimeout("slow"), 200)
    async with httpx.AsyncClient(transport=httpx.MockTransport(handler)) as client:
        source = UsageEndpointSource(_static_credentials(), client=client, clock=_clock())
        snap = await source.fetch("a")
    assert len(seen) == 2
    assert snap.weekly is not None


@pytest.mark.anyio
@pytest.mark.parametrize("status", [401, 403])
async def test_auth_statuses_are_not_retried(status: int) -> None:
    """401 and 403 raise QuotaAuthExpired after one request."""
    handler, seen = _scripted(status)
    async with httpx.AsyncClient(transport=httpx.MockTransport(handler)) as client:
        source = UsageEndpointSource(_static_credentials(), client=client, clock=_clock())
        with pytest.raises(errors.QuotaAuthExpired) as info:
            await source.fetch("a")
    assert info.value.status == status
    assert len(seen) == 1


@pytest.mark.anyio
@pytest.mark.parametrize("status", [302, 404, 429])
async def test_other_statuses_are_unavailable_without_retry(status: int) -> None:
    """Any other non-2xx answer raises QuotaUnavailable after one request."""
    handler, seen = _scripted(status)
    async with httpx.AsyncClient(transport=httpx.MockTransport(handler)) as client:
        source = UsageEndpointSource(_static_credentials(), client=client, clock=_clock())
        with pytest.raises(errors.QuotaUnavailable, match=str(status)):
            await source.fetch("a")
    assert len(seen) == 1


@pytest.mark.anyio
@pytest.mark.parametrize("body", [b"<html>oops</html>", b"[1, 2]", b'{"rate_limit": 7}'])
async def test_unreadable_answers_are_parse_errors(body: bytes) -> None:
    """A 2xx answer that is not a usage payload raises QuotaParseError, not retried."""
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, content=body)

    async with httpx.AsyncClient(transport=httpx.MockTransport(handler)) as client:
        source = UsageEndpointSource(_static_credentials(), client=client, clock=_clock())
        with pytest.raises(errors.QuotaParseError):
            await source.fetch("a")
    assert len(seen) == 1


@pytest.mark.anyio
async def test_request_headers_and_codex_api_path() -> None:
    """Bearer, account id and user agent are sent; a non-backend-api base uses /api/codex/usage."""
    handler, seen = _scripted(200)
    async with httpx.AsyncClient(transport=httpx.MockTransport(handler)) as client:
        source = UsageEndpointSource(
            _static_credentials(base_url="http://127.0.0.1:9/"), client=client, clock=_clock()
        )
        await source.fetch("a")
        no_id = UsageEndpointSource(
            _static_credentials(account_id=None), client=client, clock=_clock()
        )
        await no_id.fetch("a")
    first, second = seen
    assert str(first.url) == "http://127.0.0.1:9/api/codex/usage"
    assert first.headers["authorization"] == f"Bearer {SECRET}"
    assert first.headers["chatgpt-account-id"] == "acct-1"
    assert first.headers["user-agent"].startswith("codex_supervisor/")
    assert "chatgpt-account-id" not in second.headers


@pytest.mark.anyio
async def test_source_closes_only_its_own_client() -> None:
    """aclose closes a client the source created, never an injected one."""
    handler, _ = _scripted(200)
    async with httpx.AsyncClient(transport=httpx.MockTransport(handler)) as injected:
        borrowed = UsageEndpointSource(_static_credentials(), client=injected)
        await borrowed.aclose()
        assert not injected.is_closed

    owned = UsageEndpointSource(_static_credentials())
    await owned.aclose()
    with pytest.raises(errors.QuotaUnavailable, match="closed"):
        await owned.fetch("a")


@pytest.mark.anyio
async def test_non_ascii_token_is_refused_without_leaking_it() -> None:
    """A token httpx cannot encode raises QuotaUnavailable with no trace of the token."""

    async def credentials(account: str) -> UsageCredentials:
        return UsageCredentials(account=account, access_token=f"{SECRET}é", base_url="http://x/")

    handler, seen = _scripted(200)
    async with httpx.AsyncClient(transport=httpx.MockTransport(handler)) as client:
        source = UsageEndpointSource(credentials, client=client, clock=_clock())
        with pytest.raises(errors.QuotaUnavailable) as info:
            await source.fetch("a")
    assert not seen
    assert SECRET not in str(info.value)
    assert info.value.__cause__ is None
    assert info.value.__suppress_context__


@pytest.mark.anyio
async def test_token_never_in_repr_or_logs(
    backend: FakeCodexBackend, caplog: pytest.LogCaptureFixture
) -> None:
    """The access token appears in no repr, error message or log record, even at DEBUG."""
    caplog.set_level(logging.DEBUG)
    acct = backend.add_account("acct-s")
    creds = _backend_credentials(backend, "acct-s")
    assert acct.access_token not in repr(await creds("s"))

    async with UsageEndpointSource(creds) as source:
        await source.fetch("s")
        assert acct.access_token not in repr(source)
        backend.expire_access_token("acct-s")
        with pytest.raises(errors.QuotaAuthExpired) as info:
            await source.fetch("s")
    assert acct.access_token not in str(info.value)

    handler, _ = _scripted(httpx.ConnectError("refused"), 500, 200)
    async with httpx.AsyncClient(transport=httpx.MockTransport(handler)) as client:
        await UsageEndpointSource(_static_credentials(), client=client, clock=_clock()).fetch("m")

    assert any(r.name == "codex_supervisor.quota" for r in caplog.records)
    for record in caplog.records:
        text = record.getMessage()
        assert acct.access_token not in text
        assert SECRET not in text


# -- QuotaService ---------------------------------------------------------------------------------


class ScriptedProvider:
    """A provider that counts calls, can be held at a gate, and can fail on cue."""

    def __init__(self, clock: FakeClock, *, gated: bool = False) -> None:
        self.clock = clock
        self.calls: list[str] = []
        self.failures: list[Exception] = []
        self.started = asyncio.Event()
        self.cancelled = asyncio.Event()
        self.gate = asyncio.Event()
        if not gated:
            self.gate.set()

    async def fetch(self, account: str) -> QuotaSnapshot:
        self.calls.append(account)
        self.started.set()
        try:
            await self.gate.wait()
        except asyncio.CancelledError:
            self.cancelled.set()
            raise
        if self.failures:
            raise self.failures.pop(0)
        return QuotaSnapshot(
            account=account,
            windows=(QuotaWindow(used_percent=float(len(self.calls)), window_minutes=300),),
            source=SnapshotSource.USAGE_ENDPOINT,
            observed_at=self.clock.now(),
        )


def _passive(account: str, observed_at: datetime, used: float = 50.0) -> QuotaSnapshot:
    return QuotaSnapshot(
        account=account,
        windows=(QuotaWindow(used_percent=used, window_minutes=10080),),
        source=SnapshotSource.ROLLOUT,
        observed_at=observed_at,
    )


@pytest.mark.anyio
async def test_providers_satisfy_the_protocol() -> None:
    """The usage source and test providers are SnapshotProviders."""
    source = UsageEndpointSource(_static_credentials())
    try:
        assert isinstance(source, SnapshotProvider)
        assert isinstance(ScriptedProvider(_clock()), SnapshotProvider)
    finally:
        await source.aclose()


@pytest.mark.anyio
async def test_ttl_caching_on_the_monotonic_clock() -> None:
    """A snapshot is served from cache until it is ttl (or max_age) seconds old."""
    clock = _clock()
    provider = ScriptedProvider(clock)
    service = QuotaService(provider, ttl=60.0, clock=clock)

    first = await service.get("a")
    clock.advance(59.9)
    assert await service.get("a") is first
    assert len(provider.calls) == 1
    clock.advance(0.1)
    second = await service.get("a")
    assert second is not first
    assert len(provider.calls) == 2
    clock.advance(10)
    assert await service.get("a", max_age=10.5) is second
    assert await service.get("a", max_age=10) is not second
    assert await service.get("a", max_age=0) is not second
    assert len(provider.calls) == 4


@pytest.mark.anyio
async def test_hundred_concurrent_gets_share_one_fetch() -> None:
    """100 concurrent gets for one account call the provider once and share its result."""
    clock = _clock()
    provider = ScriptedProvider(clock, gated=True)
    service = QuotaService(provider, clock=clock)

    tasks = [asyncio.create_task(service.get("a", max_age=0)) for _ in range(100)]
    await provider.started.wait()
    assert service.in_flight == {"a"}
    provider.gate.set()
    results = await asyncio.gather(*tasks)

    assert provider.calls == ["a"]
    assert {id(r) for r in results} == {id(results[0])}
    assert service.in_flight == frozenset()


@pytest.mark.anyio
async def test_accounts_fetch_independently() -> None:
    """Concurrent gets for different accounts each get their own single fetch."""
    clock = _clock()
    provider = ScriptedProvider(clock)
    service = QuotaService(provider, clock=clock)
    names = [f"acct-{i % 5}" for i in range(50)]
    results = await asyncio.gather(*(service.get(n) for n in names))
    assert sorted(provider.calls) == sorted({*names})
    assert all(r.account == n for r, n in zip(results, names, strict=True))


@pytest.mark.anyio
async def test_cancelled_waiter_does_not_cancel_the_fetch_for_others() -> None:
    """Cancelling one waiter leaves the shared fetch running for the remaining ones."""
    clock = _clock()
    provider = ScriptedProvider(clock, gated=True)
    service = QuotaService(provider, clock=clock)

    leaving = asyncio.create_task(service.get("a"))
    staying = asyncio.create_task(service.get("a"))
    await provider.started.wait()
    leaving.cancel()
    with pytest.raises(asyncio.CancelledError):
        await leaving
    provider.gate.set()
    snap = await staying

    assert snap.account == "a"
    assert provider.calls == ["a"]
    assert not provider.cancelled.is_set()
    assert service.peek("a") is not None


@pytest.mark.anyio
async def test_waiter_timing_out_does_not_disturb_others() -> None:
    """A caller's own timeout raises TimeoutError for it alone."""
    clock = _clock()
    provider = ScriptedProvider(clock, gated=True)
    service = QuotaService(provider, clock=clock)

    async def impatient() -> QuotaSnapshot:
        async with asyncio.timeout(0):
            return await service.get("a")

    staying = asyncio.create_task(service.get("a"))
    await provider.started.wait()
    with pytest.raises(TimeoutError):
        await impatient()
    provider.gate.set()
    assert (await staying).account == "a"
    assert provider.calls == ["a"]


@pytest.mark.anyio
async def test_cancelling_every_waiter_cancels_the_fetch() -> None:
    """When the last waiter is cancelled, the fetch itself is cancelled and unlinked."""
    clock = _clock()
    provider = ScriptedProvider(clock, gated=True)
    service = QuotaService(provider, clock=clock)

    waiters = [asyncio.create_task(service.get("a")) for _ in range(3)]
    await provider.started.wait()
    for waiter in waiters:
        waiter.cancel()
    results = await asyncio.gather(*waiters, return_exceptions=True)
    assert all(isinstance(r, asyncio.CancelledError) for r in results)
    async with asyncio.timeout(5):
        await provider.cancelled.wait()
    assert service.in_flight == frozenset()
    assert service.peek("a") is None


@pytest.mark.anyio
async def test_caller_after_abandoned_fetch_starts_a_fresh_one() -> None:
    """A get arriving while an abandoned fetch unwinds gets a new fetch, not its cancel."""
    clock = _clock()
    provider = ScriptedProvider(clock, gated=True)
    service = QuotaService(provider, clock=clock)

    first = asyncio.create_task(service.get("a"))
    await provider.started.wait()
    first.cancel()
    with pytest.raises(asyncio.CancelledError):
        await first
    later = asyncio.create_task(service.get("a"))
    provider.gate.set()
    snap = await later
    assert snap.account == "a"
    assert provider.calls == ["a", "a"]
    assert provider.cancelled.is_set()


@pytest.mark.anyio
async def test_errors_reach_every_waiter_and_are_not_cached() -> None:
    """A failed fetch raises the same error in all its waiters; the next get fetches again."""
    clock = _clock()
    provider = ScriptedProvider(clock, gated=True)
    boom = errors.QuotaUnavailable("backend down")
    provider.failures.append(boom)
    service = QuotaService(provider, clock=clock)

    waiters = [asyncio.create_task(service.get("a")) for _ in range(5)]
    await provider.started.wait()
    provider.gate.set()
    results = await asyncio.gather(*waiters, return_exceptions=True)

    assert all(r is boom for r in results)
    assert provider.calls == ["a"]
    assert service.peek("a") is None
    assert service.in_flight == frozenset()
    snap = await service.get("a")
    assert snap.account == "a"
    assert len(provider.calls) == 2


@pytest.mark.anyio
async def test_put_keeps_the_newest_observation() -> None:
    """put() replaces the cached snapshot only with one observed no earlier."""
    clock = _clock()
    provider = ScriptedProvider(clock)
    service = QuotaService(provider, clock=clock)

    newer = _passive("a", OBSERVED + timedelta(minutes=5))
    older = _passive("a", OBSERVED, used=1.0)
    same_time = _passive("a", OBSERVED + timedelta(minutes=5), used=60.0)
    assert service.put(newer) is True
    assert service.put(older) is False
    assert await service.get("a") is newer
    assert service.put(same_time) is True
    cached = service.peek("a")
    assert cached is not None
    assert cached.snapshot is same_time
    assert cached.source is SnapshotSource.ROLLOUT
    assert provider.calls == []


@pytest.mark.anyio
async def test_fetch_does_not_override_a_newer_passive_snapshot() -> None:
    """A passive snapshot observed after the fetched one wins, in the cache and for waiters."""
    clock = _clock()
    provider = ScriptedProvider(clock, gated=True)
    service = QuotaService(provider, clock=clock)

    waiter = asyncio.create_task(service.get("a"))
    await provider.started.wait()
    passive = _passive("a", OBSERVED + timedelta(hours=1))
    service.put(passive)
    provider.gate.set()
    assert await waiter is passive
    cached = service.peek("a")
    assert cached is not None
    assert cached.snapshot is passive


@pytest.mark.anyio
async def test_lru_bound_evicts_least_recently_used() -> None:
    """At most max_entries accounts stay cached; the least recently used goes first."""
    clock = _clock()
    provider = ScriptedProvider(clock)
    service = QuotaService(provider, clock=clock, max_entries=2)

    await service.get("a")
    await service.get("b")
    await service.get("a")  # a cache hit makes "a" recent again
    await service.get("c")
    assert service.peek("b") is None
    assert service.peek("a") is not None
    assert service.peek("c") is not None
    service.put(_passive("d", OBSERVED))
    assert service.peek("a") is None
    assert provider.calls == ["a", "b", "c"]


@pytest.mark.anyio
async def test_peek_reports_age_freshness_and_source() -> None:
    """peek shows a snapshot's age on the monotonic clock, freshness and source."""
    clock = _clock()
    service = QuotaService(ScriptedProvider(clock), clock=clock, ttl=30.0)
    assert service.peek("a") is None

    snap = await service.get("a")
    assert service.peek("a") == CachedSnapshot(
        snapshot=snap, age_seconds=0.0, fresh=True, source=SnapshotSource.USAGE_ENDPOINT
    )
    clock.advance(31)
    late = service.peek("a")
    assert late is not None
    assert late.age_seconds == 31.0
    assert late.fresh is False


@pytest.mark.anyio
async def test_invalidate_forces_a_fetch() -> None:
    """After invalidate, the next get fetches even within the TTL."""
    clock = _clock()
    provider = ScriptedProvider(clock)
    service = QuotaService(provider, clock=clock)
    await service.get("a")
    service.invalidate("a")
    service.invalidate("never-cached")
    assert service.peek("a") is None
    await service.get("a")
    assert provider.calls == ["a", "a"]


@pytest.mark.anyio
async def test_aclose_cancels_fetches_and_waiters_get_an_error() -> None:
    """aclose cancels fetches in flight; their waiters get QuotaUnavailable, not a cancel."""
    clock = _clock()
    provider = ScriptedProvider(clock, gated=True)
    service = QuotaService(provider, clock=clock)

    waiter = asyncio.create_task(service.get("a"))
    await provider.started.wait()
    await service.aclose()
    with pytest.raises(errors.QuotaUnavailable, match="cancelled"):
        await waiter
    assert provider.cancelled.is_set()
    assert service.in_flight == frozenset()


@pytest.mark.anyio
async def test_invalid_settings_are_config_errors() -> None:
    """Negative TTL or max_age and a zero LRU bound are ConfigErrors."""
    provider = ScriptedProvider(_clock())
    with pytest.raises(errors.ConfigError):
        QuotaService(provider, ttl=-1)
    with pytest.raises(errors.ConfigError):
        QuotaService(provider, max_entries=0)
    with pytest.raises(errors.ConfigError):
        await QuotaService(provider).get("a", max_age=-1)
    async with httpx.AsyncClient() as client:
        with pytest.raises(errors.ConfigError):
            UsageEndpointSource(_static_credentials(), retries=-1, client=client)
