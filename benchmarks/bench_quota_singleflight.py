"""Does a burst of quota reads cost one usage request per account? (QuotaService single-flight)

Fires ``--gets`` concurrent ``QuotaService.get`` calls through
``UsageEndpointSource`` at a real FakeCodexBackend, first for one account, then
spread over ``--accounts`` accounts, and counts the usage requests in the
backend's request log. Prints one JSON line per figure; exits 1 if any burst
cost more than one request per account. Talks only to 127.0.0.1.

    python benchmarks/bench_quota_singleflight.py [--gets N] [--accounts N]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import resource
import statistics
import sys
import time

import httpx

from codex_supervisor.quota import QuotaService, UsageCredentials, UsageEndpointSource
from codex_supervisor.testing import FakeCodexBackend


def _emit(name: str, **figures: object) -> None:
    print(json.dumps({"benchmark": name, **figures}), flush=True)


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def _usage_requests(backend: FakeCodexBackend, at_least: int) -> int:
    # The fake logs a request just after writing its response, so the last
    # record can trail the client by a moment: wait for it, with a deadline.
    deadline = time.monotonic() + 5.0
    while True:
        count = sum(1 for r in backend.requests if r.path.endswith("/usage"))
        if count >= at_least or time.monotonic() > deadline:
            return count
        await asyncio.sleep(0.005)


async def burst(gets: int, accounts: int) -> dict[str, object]:
    """``gets`` concurrent gets spread round-robin over ``accounts`` fresh accounts."""
    async with FakeCodexBackend() as backend:
        creds = {}
        for i in range(accounts):
            acct = backend.add_account(f"bench-{i}", five_hour_used=i % 100)
            creds[f"bench-{i}"] = UsageCredentials(
                account=f"bench-{i}",
                account_id=acct.account_id,
                access_token=acct.access_token,
                base_url=backend.chatgpt_base_url,
            )

        async def credentials(name: str) -> UsageCredentials:
            return creds[name]

        sent = 0

        async def count(_: httpx.Request) -> None:
            nonlocal sent
            sent += 1

        limits = httpx.Limits(max_connections=max(accounts, 10))
        async with httpx.AsyncClient(limits=limits, event_hooks={"request": [count]}) as client:
            service = QuotaService(UsageEndpointSource(credentials, client=client))

            async def one(name: str) -> float:
                started = time.perf_counter()
                await service.get(name)
                return (time.perf_counter() - started) * 1000

            started = time.perf_counter()
            latencies = await asyncio.gather(*(one(f"bench-{i % accounts}") for i in range(gets)))
            wall_ms = (time.perf_counter() - started) * 1000
        http_requests = await _usage_requests(backend, sent)
    return {
        "gets": gets,
        "accounts": accounts,
        "http_requests": http_requests,
        "client_requests": sent,
        "p50_ms": round(statistics.median(latencies), 3),
        "p99_ms": round(_percentile(latencies, 0.99), 3),
        "wall_ms": round(wall_ms, 3),
    }


async def run(gets: int, accounts: int) -> bool:
    """Run both bursts, print their figures, and say whether single-flight held."""
    ok = True
    for name, n_accounts in (
        ("quota_singleflight_one_account", 1),
        ("quota_singleflight_many_accounts", accounts),
    ):
        figures = await burst(gets, n_accounts)
        _emit(name, **figures)
        expected = min(n_accounts, gets)
        if figures["http_requests"] != expected:
            print(
                f"{name}: expected {expected} usage requests, saw {figures['http_requests']}",
                file=sys.stderr,
            )
            ok = False
    return ok


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gets", type=int, default=1000)
    parser.add_argument("--accounts", type=int, default=50)
    args = parser.parse_args()
    if args.gets < 1 or args.accounts < 1:
        parser.error("--gets and --accounts must be at least 1")
    ok = asyncio.run(run(args.gets, args.accounts))
    peak_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    _emit("benchmark_process", peak_rss_mib=round(peak_kib / 1024, 1))
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
