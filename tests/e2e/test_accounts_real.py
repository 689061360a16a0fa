"""The account pool with the real Codex CLI: login, shared sessions, cross-account resume."""

from __future__ import annotations

import json
import re
import stat
import subprocess
from pathlib import Path
from typing import Any

import pytest

from codex_supervisor.accounts import AccountPool, AuthMode
from codex_supervisor.config import child_environment
from codex_supervisor.quota import QuotaService, UsageEndpointSource
from codex_supervisor.testing import FakeCodexBackend, hermetic_env, offline_flags

pytestmark = pytest.mark.real_codex


def _exec(codex_bin: Path, home: Path, world: Any, backend: FakeCodexBackend, *rest: str) -> str:
    env = child_environment(home, hermetic_env(home, world.home, backend))
    result = subprocess.run(
        [str(codex_bin), "exec", "--skip-git-repo-check", *offline_flags(), *rest],
        cwd=world.work,
        env=env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stderr


def test_login_with_api_key_through_the_real_cli(codex_bin: Path, world: Any) -> None:
    """pool.login runs the real `codex login --with-api-key` and adopts what it wrote."""
    pool = AccountPool(root=world.root / "pool", base_codex_home=world.root / "base")
    environ = hermetic_env(world.root / "unused", world.home)
    account = pool.login("keyed", codex=codex_bin, api_key="sk-test-0123456789", environ=environ)
    assert account.identity.auth_mode is AuthMode.API_KEY
    auth = pool.account_home("keyed") / "auth.json"
    assert json.loads(auth.read_text())["OPENAI_API_KEY"] == "sk-test-0123456789"
    assert stat.S_IMODE(auth.stat().st_mode) == 0o600
    assert [a.name for a in pool.accounts()] == ["keyed"]
    assert not list((pool.root / "accounts").glob(".login-*"))


@pytest.mark.anyio
async def test_rollout_written_under_one_account_resumes_under_another(
    codex_bin: Path, backend: FakeCodexBackend, world: Any
) -> None:
    """A session started on account A resumes on account B: same file, B's account header."""
    base = world.root / "base"
    backend.write_codex_home(base)  # the user's config: Codex talks to the fake backend
    pool = AccountPool(root=world.root / "pool", base_codex_home=base)
    for account_id, name in (("acct-a", "alpha"), ("acct-b", "beta")):
        backend.add_account(account_id, five_hour_used=30, per_request_percent=5)
        source = backend.write_auth(world.root / f"login-{name}", account_id)
        pool.import_auth(name, source)
        assert not source.exists()  # moved, not copied

    home_a, home_b = pool.prepare_home("alpha"), pool.prepare_home("beta")
    stderr = _exec(codex_bin, home_a, world, backend, "first turn on alpha")
    session_id = re.search(r"session id: ([0-9a-f-]{36})", stderr)
    assert session_id
    [rollout] = list((base / "sessions").rglob(f"rollout-*{session_id.group(1)}.jsonl"))

    _exec(
        codex_bin,
        home_b,
        world,
        backend,
        "--disable",
        "cli_resume_account_check",
        "resume",
        session_id.group(1),
        "second turn on beta",
    )

    requests = backend.responses_requests()
    assert [(r.account_id, r.session_id) for r in requests] == [
        ("acct-a", session_id.group(1)),
        ("acct-b", session_id.group(1)),
    ]
    assert "first turn on alpha" in requests[1].input_texts
    assert list((base / "sessions").rglob("rollout-*.jsonl")) == [rollout]
    assert not any(p.is_dir() and not p.is_symlink() for p in home_b.glob("sessions"))
    backend.assert_no_replay()

    # The quota of each account, read without spending it, through the pool's credentials.
    async with UsageEndpointSource(pool.usage_credentials) as source:
        service = QuotaService(source)
        snap_a = await service.get("alpha")
        snap_b = await service.get("beta")
    assert snap_a.five_hour is not None
    assert snap_b.five_hour is not None
    assert snap_a.five_hour.used_percent == pytest.approx(35)
    assert snap_b.five_hour.used_percent == pytest.approx(35)
    assert len(backend.responses_requests()) == 2  # the probes sent no model request
