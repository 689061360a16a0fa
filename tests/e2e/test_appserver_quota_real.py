"""The app-server quota source with the real Codex CLI, only when the account is free."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from codex_supervisor import errors
from codex_supervisor.accounts import AccountPool
from codex_supervisor.appserver.quota_source import AppServerRateLimitsSource
from codex_supervisor.quota import QuotaService, SnapshotSource
from codex_supervisor.testing import FakeCodexBackend, hermetic_env, offline_flags

pytestmark = [pytest.mark.real_codex, pytest.mark.anyio]


def _pool(backend: FakeCodexBackend, root: Path) -> AccountPool:
    base = backend.write_codex_home(root / "codex-home")
    pool = AccountPool(root=root / "pool", base_codex_home=base)
    backend.add_account("id-a", five_hour_used=33, weekly_used=12)
    pool.import_auth("alpha", backend.write_auth(root / "login", "id-a"))
    return pool


async def test_reads_rate_limits_through_a_short_lived_app_server(
    codex_bin: Path, backend: FakeCodexBackend, tmp_path: Path
) -> None:
    """account/rateLimits/read gives the backend's quota; no model request; lease released."""
    pool = _pool(backend, tmp_path)
    source = AppServerRateLimitsSource(
        pool,
        codex=str(codex_bin),
        environ=hermetic_env(pool.base_codex_home, tmp_path, backend),
        args=offline_flags(),
    )
    snapshot = await QuotaService(source).get("alpha")
    assert snapshot.source is SnapshotSource.APP_SERVER
    assert snapshot.five_hour is not None
    assert snapshot.five_hour.used_percent == pytest.approx(33)
    assert snapshot.weekly is not None
    assert snapshot.weekly.used_percent == pytest.approx(12)
    assert backend.responses_requests() == []  # measured without spending
    assert await pool.occupants("alpha") == []


async def test_refuses_an_occupied_account(
    codex_bin: Path, backend: FakeCodexBackend, tmp_path: Path
) -> None:
    """With a child on the account, the probe does not boot Codex in its home."""
    pool = _pool(backend, tmp_path)
    source: Any = AppServerRateLimitsSource(pool, codex=str(codex_bin), args=offline_flags())
    async with pool.occupy("alpha", purpose="a running child"):
        with pytest.raises(errors.QuotaUnavailable, match="occupied"):
            await source.fetch("alpha")
    assert backend.requests == []
