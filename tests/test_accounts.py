"""AccountPool: homes, imports, logins, pool state, cooldowns and occupancy."""

from __future__ import annotations

import asyncio
import base64
import concurrent.futures
import contextlib
import errno
import json
import logging
import os
import re
import shutil
import signal
import stat
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path

import attrs
import pytest

from codex_supervisor import accounts as accounts_module
from codex_supervisor import errors
from codex_supervisor import lease as lease_module
from codex_supervisor._convert import unstructure
from codex_supervisor._jwt import decode_jwt_claims
from codex_supervisor.accounts import (
    AccountInUse,
    AccountPool,
    AuthMode,
    identity_from_auth,
)
from codex_supervisor.config import child_environment, default_base_codex_home, default_pool_root
from codex_supervisor.lease import LeaseMode, LeaseRecord
from codex_supervisor.quota import QuotaSnapshot, SnapshotSource, WindowKind
from codex_supervisor.testing import (
    FakeClock,
    FakeCodexBackend,
    make_jwt,
    write_apikey_auth_json,
    write_auth_json,
)

T0 = datetime(2026, 11, 22, 12, 0, tzinfo=UTC)


def _auth_file(folder: Path, account_id: str, *, email: str | None = None) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    claims = {
        "email": email or f"{account_id}@example.test",
        "https://api.openai.com/auth": {
            "chatgpt_account_id": account_id,
            "chatgpt_plan_type": "pro",
            "chatgpt_user_id": f"user-{account_id}",
        },
    }
    return write_auth_json(
        folder,
        id_token=make_jwt(claims),
        access_token=make_jwt({"exp": 4102444800}),
        refresh_token=f"rt-{account_id}",
        account_id=account_id,
        last_refresh=T0,
    )


@pytest.fixture
def base_home(tmp_path: Path) -> Path:
    base = tmp_path / "codex"
    (base / "prompts").mkdir(parents=True)
    (base / "config.toml").write_text('model = "m"\n')
    (base / "AGENTS.md").write_text("be kind\n")
    (base / "auth.json").write_text("{}")  # the user's own login: never linked
    return base


@pytest.fixture
def pool(tmp_path: Path, base_home: Path) -> AccountPool:
    return AccountPool(root=tmp_path / "pool", base_codex_home=base_home, clock=FakeClock(T0))


def _added(pool: AccountPool, name: str, account_id: str | None = None) -> Path:
    """Import a login as account ``name``; its home."""
    pool.import_auth(name, _auth_file(pool.root.parent / f"login-{name}", account_id or name))
    return pool.account_home(name)


def _stranded_home(pool: AccountPool, name: str) -> Path:
    """``<root>/accounts/<name>/home`` made by hand, outside the pool state (a leftover)."""
    home = pool.account_home(name)
    home.mkdir(mode=0o700, parents=True)
    return home


def _snapshot(account: str, at: datetime, used: float = 10.0) -> QuotaSnapshot:
    return QuotaSnapshot.from_rollout_rate_limits(
        {"primary": {"used_percent": used, "window_minutes": 300, "resets_at": 1795339672}},
        account=account,
        observed_at=at,
    )


# -- config ---------------------------------------------------------------------------


def test_default_folders_come_from_the_environment(tmp_path: Path) -> None:
    """CODEX_SUPERVISOR_HOME and CODEX_HOME win; otherwise ~/.codex-supervisor and ~/.codex."""
    env = {"HOME": str(tmp_path)}
    assert default_pool_root(env) == tmp_path / ".codex-supervisor"
    assert default_base_codex_home(env) == tmp_path / ".codex"
    env |= {"CODEX_SUPERVISOR_HOME": "/p", "CODEX_HOME": "/c"}
    assert default_pool_root(env) == Path("/p")
    assert default_base_codex_home(env) == Path("/c")
    pool = AccountPool.from_env(env)
    assert (pool.root, pool.base_codex_home) == (Path("/p"), Path("/c"))


def test_child_environment_drops_our_variables(tmp_path: Path) -> None:
    """A child never inherits CODEX_SUPERVISOR_* and gets CODEX_HOME = the account home."""
    env = child_environment(
        tmp_path, {"CODEX_SUPERVISOR_SECRET": "x", "CODEX_HOME": "/old", "PATH": "/bin"}
    )
    assert env == {"PATH": "/bin", "CODEX_HOME": str(tmp_path)}


# -- names and homes --------------------------------------------------------------------


@pytest.mark.parametrize("name", ["", ".hidden", "../x", "a/b", "a b", "x" * 65, "ä", "-a"])
def test_bad_account_names_are_refused(pool: AccountPool, name: str) -> None:
    """Names that could escape the pool folder or confuse a shell are a ConfigError."""
    with pytest.raises(errors.ConfigError, match="invalid account name"):
        pool.account_home(name)


def test_account_home_links_the_base_home(pool: AccountPool, base_home: Path) -> None:
    """An account home is 0700, links every base entry but auth.json, and shares sessions/."""
    _added(pool, "work")
    _added(pool, "play")
    home = pool.prepare_home("work")
    assert stat.S_IMODE(home.stat().st_mode) == 0o700
    shared = ("sessions", "archived_sessions", "thread-writer-locks")
    for entry in ("config.toml", "AGENTS.md", "prompts", *shared):
        assert (home / entry).is_symlink(), entry
        assert (home / entry).resolve() == (base_home / entry).resolve()
    assert not (home / "auth.json").is_symlink()  # its own login, never the base one
    other = pool.prepare_home("play")
    (home / "sessions" / "rollout-x.jsonl").write_text("{}\n")
    assert (other / "sessions" / "rollout-x.jsonl").read_text() == "{}\n"


def test_new_base_entries_are_linked_at_next_prepare(pool: AccountPool, base_home: Path) -> None:
    """Entries appearing in the base home later are linked; vanished ones are unlinked."""
    _added(pool, "work")
    home = pool.prepare_home("work")
    (base_home / "skills").mkdir()
    (base_home / "AGENTS.md").unlink()
    pool.prepare_home("work")
    assert (home / "skills").is_symlink()
    assert not (home / "AGENTS.md").is_symlink()


def test_real_files_in_an_account_home_are_left_alone(
    pool: AccountPool, base_home: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A real file of the account home is never replaced by a link; a private sessions/ warns."""
    home = _added(pool, "work")
    for linked in ("sessions", "config.toml"):
        (home / linked).unlink()
    (home / "sessions").mkdir()
    (home / "sessions" / "mine.jsonl").write_text("keep")
    (home / "config.toml").write_text("own = 1\n")
    with caplog.at_level(logging.WARNING, logger="codex_supervisor.accounts"):
        pool.prepare_home("work")
    assert (home / "sessions" / "mine.jsonl").read_text() == "keep"
    assert (home / "config.toml").read_text() == "own = 1\n"
    assert "has its own sessions" in caplog.text


# -- identity ------------------------------------------------------------------------------


def test_identity_from_chatgpt_and_api_key_logins(tmp_path: Path) -> None:
    """Identity comes from the id_token claims; an API key is only fingerprinted."""
    ident = identity_from_auth(_auth_file(tmp_path / "a", "acct-1").read_bytes())
    assert ident.auth_mode is AuthMode.CHATGPT
    assert (ident.account_id, ident.email, ident.plan_type, ident.user_id) == (
        "acct-1",
        "acct-1@example.test",
        "pro",
        "user-acct-1",
    )
    key = identity_from_auth(write_apikey_auth_json(tmp_path / "k", "sk-secret-1").read_text())
    assert key.auth_mode is AuthMode.API_KEY
    assert key.account_id.startswith("apikey-")
    assert "sk-secret" not in repr(key)


@pytest.mark.parametrize(
    "content",
    [
        b"not json",
        b"[]",
        b"{}",
        b'{"auth_mode": "chatgpt", "tokens": {"id_token": "x"}}',
        b'{"OPENAI_API_KEY": null}',
    ],
)
def test_unusable_auth_json_is_an_auth_error(content: bytes) -> None:
    """auth.json without a usable login raises AuthError."""
    with pytest.raises(errors.AuthError):
        identity_from_auth(content)


# -- import ----------------------------------------------------------------------------------


def test_import_moves_the_auth_json(pool: AccountPool, tmp_path: Path) -> None:
    """import_auth moves (not copies) auth.json into a 0600 file in the account home."""
    src = _auth_file(tmp_path / "old-home", "acct-1")
    content = src.read_bytes()
    account = pool.import_auth("work", src)
    dest = pool.account_home("work") / "auth.json"
    assert not src.exists()
    assert dest.read_bytes() == content
    assert stat.S_IMODE(dest.stat().st_mode) == 0o600
    assert account.identity.account_id == "acct-1"
    assert pool.get("work") == account
    assert [a.name for a in pool.accounts()] == ["work"]


def test_import_copy_keeps_the_source_and_warns(
    pool: AccountPool, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """copy=True leaves the source in place and warns about two token holders."""
    src = _auth_file(tmp_path / "old-home", "acct-1")
    with caplog.at_level(logging.WARNING):
        pool.import_auth("work", src, copy=True)
    assert src.exists()
    assert (pool.account_home("work") / "auth.json").read_bytes() == src.read_bytes()
    assert "single-use refresh token" in caplog.text
    assert "rt-acct-1" not in caplog.text


def test_import_refuses_unsafe_sources(pool: AccountPool, tmp_path: Path) -> None:
    """Symlinked, world-readable and missing sources are refused and nothing is created."""
    src = _auth_file(tmp_path / "old-home", "acct-1")
    link = tmp_path / "link.json"
    link.symlink_to(src)
    with pytest.raises(errors.AuthError, match="symbolic link"):
        pool.import_auth("a", link)
    src.chmod(0o644)
    with pytest.raises(errors.AuthError, match="other users"):
        pool.import_auth("a", src)
    with pytest.raises(errors.AuthError, match=r"no auth\.json"):
        pool.import_auth("a", tmp_path / "missing.json")
    assert src.exists()
    assert pool.accounts() == []
    assert not pool.account_home("a").exists()


def test_import_refuses_duplicates(pool: AccountPool, tmp_path: Path) -> None:
    """The same account id twice, or a taken name, is refused and the source kept."""
    pool.import_auth("work", _auth_file(tmp_path / "h1", "acct-1"))
    again = _auth_file(tmp_path / "h2", "acct-1")
    with pytest.raises(errors.AuthError, match=r"already in the pool as 'work'"):
        pool.import_auth("other", again)
    with pytest.raises(errors.ConfigError, match="already exists"):
        pool.import_auth("work", _auth_file(tmp_path / "h3", "acct-2"))
    assert again.exists()
    assert [a.name for a in pool.accounts()] == ["work"]


def test_import_api_key_login(pool: AccountPool, tmp_path: Path) -> None:
    """API-key logins are accepted; the usage probe says they have no access token."""
    src = write_apikey_auth_json(tmp_path / "k", "sk-key")
    account = pool.import_auth("keyed", src)
    assert account.identity.auth_mode is AuthMode.API_KEY


# -- login -----------------------------------------------------------------------------------


class _FakeLogin:
    """Stands in for `codex login`: writes an auth.json into $CODEX_HOME."""

    def __init__(self, account_id: str, *, code: int = 0, last_refresh: datetime = T0) -> None:
        self.account_id = account_id
        self.code = code
        self.last_refresh = last_refresh
        self.calls: list[tuple[list[str], str | None]] = []

    def __call__(self, argv: Sequence[str], env: Mapping[str, str], stdin: str | None) -> int:
        self.calls.append((list(argv), stdin))
        assert not any(k.startswith("CODEX_SUPERVISOR_") for k in env)
        if self.code == 0:
            home = Path(env["CODEX_HOME"])
            assert (home / "config.toml").is_symlink()  # the user's config applies
            path = _auth_file(home, self.account_id)
            data = json.loads(path.read_text())
            data["last_refresh"] = self.last_refresh.isoformat().replace("+00:00", "Z")
            path.write_text(json.dumps(data))
        return self.code


def test_login_adds_an_account(pool: AccountPool) -> None:
    """A successful login becomes a new account; the staging folder is gone."""
    runner = _FakeLogin("acct-9")
    account = pool.login("new", runner=runner, device_auth=True, environ={"X": "1"})
    assert account.identity.account_id == "acct-9"
    argv, stdin = runner.calls[0]
    assert argv[-2:] == ["login", "--device-auth"]
    assert 'cli_auth_credentials_store="file"' in argv
    assert stdin is None
    assert (pool.account_home("new") / "auth.json").is_file()
    assert (pool.account_home("new") / "sessions").is_symlink()
    assert [p.name for p in (pool.root / "accounts").iterdir()] == ["new"]


def test_login_api_key_goes_through_stdin(pool: AccountPool) -> None:
    """An API key is handed to codex login on stdin, never in argv."""
    runner = _FakeLogin("acct-9")
    pool.login("new", runner=runner, api_key="sk-very-secret")
    argv, stdin = runner.calls[0]
    assert "sk-very-secret" not in " ".join(argv)
    assert "--with-api-key" in argv
    assert stdin == "sk-very-secret"


def test_failed_login_changes_nothing(pool: AccountPool) -> None:
    """A login that fails leaves no account and no staging folder."""
    with pytest.raises(errors.AuthError, match="status 1"):
        pool.login("new", runner=_FakeLogin("acct-9", code=1))
    assert pool.accounts() == []
    assert list((pool.root / "accounts").iterdir()) == []


def test_relogin_must_be_the_same_account_and_newer(pool: AccountPool) -> None:
    """A re-login replaces auth.json only for the same account and only when newer."""
    pool.login("work", runner=_FakeLogin("acct-1"))
    auth = pool.account_home("work") / "auth.json"
    before = auth.read_bytes()
    with pytest.raises(errors.AuthError, match="different account"):
        pool.login("work", runner=_FakeLogin("acct-2", last_refresh=T0 + timedelta(hours=1)))
    assert auth.read_bytes() == before
    pool.login("work", runner=_FakeLogin("acct-1", last_refresh=T0 - timedelta(hours=1)))
    assert auth.read_bytes() == before  # older: kept what we had
    pool.login("work", runner=_FakeLogin("acct-1", last_refresh=T0 + timedelta(hours=1)))
    assert auth.read_bytes() != before
    assert stat.S_IMODE(auth.stat().st_mode) == 0o600
    assert [a.name for a in pool.accounts()] == ["work"]


# -- state -------------------------------------------------------------------------------------


def test_snapshots_keep_the_newest(pool: AccountPool, tmp_path: Path) -> None:
    """record_snapshot stores a snapshot unless a newer one is already stored."""
    pool.import_auth("work", _auth_file(tmp_path / "h", "acct-1"))
    assert pool.record_snapshot(_snapshot("work", T0, used=10))
    assert not pool.record_snapshot(_snapshot("work", T0 - timedelta(minutes=1), used=99))
    stored = pool.get("work").last_snapshot
    assert stored is not None
    assert stored.five_hour is not None
    assert stored.five_hour.used_percent == 10
    assert stored.source is SnapshotSource.ROLLOUT
    with pytest.raises(errors.ConfigError):
        pool.record_snapshot(_snapshot("ghost", T0))


def test_cooldowns_are_never_shortened(pool: AccountPool, tmp_path: Path) -> None:
    """A later, shorter cooldown for the same window keeps the longer block."""
    pool.import_auth("work", _auth_file(tmp_path / "h", "acct-1"))
    week = T0 + timedelta(days=6)
    pool.set_cooldown("work", window=WindowKind.WEEKLY, blocked_until=week, reason="weekly at 100%")
    kept = pool.set_cooldown(
        "work", window=WindowKind.WEEKLY, blocked_until=T0 + timedelta(hours=2), reason="later"
    )
    assert kept.blocked_until == week
    five = pool.set_cooldown(
        "work", window=WindowKind.FIVE_HOUR, blocked_until=T0 + timedelta(hours=3), reason="5h"
    )
    assert five.blocked_until == T0 + timedelta(hours=3)
    account = pool.get("work")
    # Blocked until the *later* reset: a weekly block outlives the five-hour one.
    assert account.blocked_until(T0) == week
    assert account.blocked_until(week) is None
    pool.clear_cooldowns("work")
    assert pool.get("work").cooldowns == ()


def test_expired_cooldowns_are_dropped(pool: AccountPool, tmp_path: Path) -> None:
    """A cooldown already over is dropped at the next write."""
    pool.import_auth("work", _auth_file(tmp_path / "h", "acct-1"))
    pool.set_cooldown(
        "work", window=WindowKind.FIVE_HOUR, blocked_until=T0 + timedelta(seconds=5), reason="x"
    )
    assert isinstance(pool.clock, FakeClock)
    pool.clock.advance(timedelta(minutes=1).total_seconds())
    pool.set_cooldown(
        "work", window=WindowKind.WEEKLY, blocked_until=T0 + timedelta(days=1), reason="y"
    )
    assert [c.window for c in pool.get("work").cooldowns] == [WindowKind.WEEKLY]


def test_state_file_is_versioned_and_backed_up(pool: AccountPool, tmp_path: Path) -> None:
    """The state file carries a version and every write keeps the previous one as .bak."""
    pool.import_auth("a", _auth_file(tmp_path / "h1", "acct-1"))
    pool.import_auth("b", _auth_file(tmp_path / "h2", "acct-2"))
    state = json.loads(pool.state_path.read_text())
    backup = json.loads(pool.backup_path.read_text())
    assert state["version"] == backup["version"] == 1
    assert sorted(state["accounts"]) == ["a", "b"]
    assert sorted(backup["accounts"]) == ["a"]
    assert stat.S_IMODE(pool.state_path.stat().st_mode) == 0o600
    assert "rt-acct" not in pool.state_path.read_text()  # no token ever lands in the state


def test_corrupt_state_is_an_error_and_left_intact(pool: AccountPool, tmp_path: Path) -> None:
    """A corrupt state file raises StateError naming the backup; neither file is touched."""
    pool.import_auth("a", _auth_file(tmp_path / "h1", "acct-1"))
    pool.import_auth("b", _auth_file(tmp_path / "h2", "acct-2"))
    pool.state_path.write_text('{"version": 1, "accounts": {"a": {"nam')
    corrupt, backup = pool.state_path.read_bytes(), pool.backup_path.read_bytes()
    with pytest.raises(errors.StateError, match=r"corrupt.*state\.json\.bak"):
        pool.accounts()
    with pytest.raises(errors.StateError):
        pool.import_auth("c", _auth_file(tmp_path / "h3", "acct-3"))
    assert pool.state_path.read_bytes() == corrupt
    assert pool.backup_path.read_bytes() == backup
    pool.state_path.write_text('{"version": 1, "accounts": {"a": {"name": 5}}}')
    with pytest.raises(errors.StateError, match="corrupt"):
        pool.get("a")


def test_state_from_a_newer_version_is_refused(pool: AccountPool) -> None:
    """A state file of a newer format is an error, not a silent downgrade."""
    pool.root.mkdir(parents=True)
    pool.state_path.write_text('{"version": 99, "accounts": {}}')
    with pytest.raises(errors.StateError, match="newer"):
        pool.accounts()


_WORKER = """
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from codex_supervisor.accounts import AccountPool
from codex_supervisor.quota import WindowKind

pool = AccountPool(root=Path(sys.argv[1]), base_codex_home=Path(sys.argv[2]))
name = sys.argv[3]
for i in range(int(sys.argv[4])):
    until = datetime(2030, 1, 1, tzinfo=UTC) + timedelta(minutes=i)
    pool.set_cooldown(name, window=WindowKind.WEEKLY, blocked_until=until, reason=str(i))
"""


def test_concurrent_writers_lose_no_update(pool: AccountPool, tmp_path: Path) -> None:
    """Processes updating different accounts at once never lose each other's writes."""
    names = [f"acct{i}" for i in range(4)]
    for i, name in enumerate(names):
        pool.import_auth(name, _auth_file(tmp_path / f"h{i}", f"id-{i}"))
    script = tmp_path / "worker.py"
    script.write_text(_WORKER)
    procs = [
        subprocess.Popen(
            [sys.executable, str(script), str(pool.root), str(pool.base_codex_home), name, "15"]
        )
        for name in names
    ]
    assert [p.wait(timeout=60) for p in procs] == [0] * 4
    for name in names:
        [cooldown] = pool.get(name).cooldowns
        assert cooldown.reason == "14"


# -- credentials and occupancy -----------------------------------------------------------------


@pytest.mark.anyio
async def test_usage_credentials_read_fresh_tokens(
    tmp_path: Path, base_home: Path, backend: FakeCodexBackend
) -> None:
    """Credentials come from the account home's auth.json and config's chatgpt_base_url."""
    backend.add_account("acct-1")
    pool = AccountPool(root=tmp_path / "pool", base_codex_home=base_home)
    backend.write_codex_home(base_home)  # the user's config points at the backend
    backend.write_auth(tmp_path / "src", "acct-1")
    (tmp_path / "src" / "auth.json").chmod(0o600)
    pool.import_auth("work", tmp_path / "src" / "auth.json")
    creds = await pool.usage_credentials("work")
    assert creds.account == "work"
    assert creds.account_id == "acct-1"
    assert creds.access_token == backend.account("acct-1").access_token
    assert creds.base_url == backend.chatgpt_base_url
    assert creds.access_token not in repr(creds)
    pool.import_auth("keyed", write_apikey_auth_json(tmp_path / "k", "sk-x"))
    with pytest.raises(errors.QuotaUnavailable, match="API-key"):
        await pool.usage_credentials("keyed")


@pytest.mark.anyio
async def test_occupancy_is_shared_and_visible(pool: AccountPool, tmp_path: Path) -> None:
    """Two children may occupy one account; status shows both; an exclusive claim waits."""
    pool.import_auth("work", _auth_file(tmp_path / "h", "acct-1"))
    real = AccountPool(root=pool.root, base_codex_home=pool.base_codex_home)
    async with real.occupy("work", purpose="child-1"), real.occupy("work", purpose="child-2"):
        [status] = await real.status()
        assert sorted(o.purpose or "" for o in status.occupants) == ["child-1", "child-2"]
        assert all(o.pid == os.getpid() for o in status.occupants)
        with pytest.raises(errors.LeaseTimeout):
            async with real.occupy_exclusively("work", purpose="probe", timeout=0.3):
                pass
    assert await real.occupants("work") == []
    async with real.occupy_exclusively("work", purpose="probe", timeout=5):
        assert [o.purpose for o in await real.occupants("work")] == ["probe"]


def test_adopt_auth_takes_only_a_newer_login_of_the_same_account(
    pool: AccountPool, tmp_path: Path
) -> None:
    """adopt_auth: newer login of the same account replaces; older or foreign never does."""
    pool.import_auth("alpha", _auth_file(tmp_path / "a", "acct-a"))
    home_auth = pool.account_home("alpha") / "auth.json"
    before = home_auth.read_bytes()

    def variant(folder: str, account_id: str, refreshed: datetime) -> Path:
        path = _auth_file(tmp_path / folder, account_id)
        data = json.loads(path.read_text())
        data["last_refresh"] = refreshed.isoformat().replace("+00:00", "Z")
        data["tokens"]["refresh_token"] = f"rt-{folder}"
        path.write_text(json.dumps(data))
        return path

    assert pool.adopt_auth("alpha", variant("older", "acct-a", T0 - timedelta(days=1))) is False
    assert pool.adopt_auth("alpha", variant("other", "acct-b", T0 + timedelta(days=1))) is False
    assert home_auth.read_bytes() == before
    newer = variant("newer", "acct-a", T0 + timedelta(hours=1))
    assert pool.adopt_auth("alpha", newer) is True
    assert json.loads(home_auth.read_text())["tokens"]["refresh_token"] == "rt-newer"
    assert stat.S_IMODE(home_auth.stat().st_mode) == 0o600
    assert newer.exists(), "the source is left in place"


# -- hostile auth.json --------------------------------------------------------------------

DEEP = b"[" * 100_000 + b"]" * 100_000
DEEP_OBJECT = b'{"a":' * 50_000 + b"1" + b"}" * 50_000


def _nested_jwt() -> str:
    token = make_jwt({"email": "x@example.test"})
    header, _, signature = token.split(".")
    payload = base64.urlsafe_b64encode(DEEP_OBJECT).rstrip(b"=").decode()
    return f"{header}.{payload}.{signature}"


@pytest.mark.parametrize("content", [DEEP, b'{"tokens": ' + DEEP_OBJECT + b"}"])
def test_deeply_nested_auth_json_is_an_auth_error(content: bytes) -> None:
    """An auth.json nested past the recursion limit raises AuthError, not RecursionError."""
    with pytest.raises(errors.AuthError):
        identity_from_auth(content)


def test_jwt_with_a_deeply_nested_payload_has_no_claims() -> None:
    """A nested id_token payload reads as no claims: AuthError without an account id."""
    assert decode_jwt_claims(_nested_jwt()) == {}
    tokens = {"id_token": _nested_jwt(), "refresh_token": "rt"}
    with pytest.raises(errors.AuthError):
        identity_from_auth(json.dumps({"auth_mode": "chatgpt", "tokens": tokens}))
    identity = identity_from_auth({"tokens": dict(tokens, account_id="acct-1")})
    assert identity.account_id == "acct-1"
    assert identity.email is None


def test_import_of_a_nested_or_unreachable_auth_json_is_an_auth_error(
    pool: AccountPool, tmp_path: Path
) -> None:
    """import_auth refuses a deeply nested file, and a path it cannot stat, with AuthError."""
    src = tmp_path / "deep.json"
    src.write_bytes(DEEP)
    src.chmod(0o600)
    with pytest.raises(errors.AuthError):
        pool.import_auth("a", src)
    (tmp_path / "plain").write_text("")
    with pytest.raises(errors.AuthError):
        pool.import_auth("a", tmp_path / "plain" / "auth.json")
    assert pool.accounts() == []


def test_adopt_over_a_nested_or_naive_last_refresh(pool: AccountPool, tmp_path: Path) -> None:
    """An unreadable current auth.json or a naive last_refresh never raises from adopt_auth."""
    pool.import_auth("a", _auth_file(tmp_path / "old-home", "acct-1"))
    dest = pool.account_home("a") / "auth.json"
    dest.write_bytes(DEEP)
    newer = _auth_file(tmp_path / "newer", "acct-1")
    assert pool.adopt_auth("a", newer)
    auth = json.loads(newer.read_bytes())
    auth["last_refresh"] = "2099-01-01T00:00:00"  # no offset
    newer.write_text(json.dumps(auth))
    assert pool.adopt_auth("a", newer)
    assert json.loads(dest.read_bytes())["last_refresh"] == "2099-01-01T00:00:00"


def test_an_exposed_auth_json_is_tightened_with_a_warning(
    base_home: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """An account's auth.json chmod'ed 0644 after import is set back to 0600, loudly."""
    pool = AccountPool(root=tmp_path / "pool", base_codex_home=base_home)
    pool.import_auth("work", _auth_file(tmp_path / "login", "acct-1"))
    auth = pool.account_home("work") / "auth.json"
    auth.chmod(0o644)
    with caplog.at_level(logging.WARNING, logger="codex_supervisor.accounts"):
        pool.prepare_home("work")
    assert stat.S_IMODE(auth.stat().st_mode) == 0o600
    assert "readable or writable by others" in caplog.text


def test_a_base_config_added_later_reaches_the_usage_probe(base_home: Path, tmp_path: Path) -> None:
    """usage_credentials links a config.toml the base home gained after the account was added."""
    pool = AccountPool(root=tmp_path / "pool", base_codex_home=base_home)
    pool.import_auth("work", _auth_file(tmp_path / "login", "acct-1"))
    (base_home / "config.toml").write_text(
        'chatgpt_base_url = "https://127.0.0.1:9/backend-api/"\n'
    )
    creds = asyncio.run(pool.usage_credentials("work"))
    assert creds.base_url.startswith("https://127.0.0.1:9/")


def test_prepare_home_tolerates_a_concurrent_preparer(base_home: Path, tmp_path: Path) -> None:
    """Two processes preparing one home at once never fail a launch with FileExistsError."""
    pool = AccountPool(root=tmp_path / "pool", base_codex_home=base_home)
    pool.import_auth("work", _auth_file(tmp_path / "login", "acct-1"))
    for index in range(20):
        (base_home / f"entry-{index}").mkdir()
    script = (
        "import sys; from codex_supervisor.accounts import AccountPool; "
        "p = AccountPool(root=sys.argv[1], base_codex_home=sys.argv[2]); "
        "[p.prepare_home('work') for _ in range(30)]"
    )
    procs = [
        subprocess.Popen([sys.executable, "-c", script, str(pool.root), str(base_home)])
        for _ in range(4)
    ]
    assert [p.wait(timeout=120) for p in procs] == [0, 0, 0, 0]
    assert all((pool.account_home("work") / f"entry-{i}").is_symlink() for i in range(20))


# -- failed saves, stranded folders, removal while in use ----------------------------------


def _fail_save(self: AccountPool, state: object) -> None:
    raise OSError(errno.ENOSPC, "No space left on device (test)")


def _login_at(path: Path, account_id: str, refreshed: datetime, refresh_token: str) -> Path:
    """A private auth.json of ``account_id`` at ``path``, refreshed at ``refreshed``."""
    _auth_file(path.parent, account_id)
    data = json.loads(path.read_text())
    data["last_refresh"] = refreshed.isoformat().replace("+00:00", "Z")
    data["tokens"]["refresh_token"] = refresh_token
    path.write_text(json.dumps(data))
    path.chmod(0o600)
    return path


def _refresh_token(path: Path) -> str:
    token: str = json.loads(path.read_text())["tokens"]["refresh_token"]
    return token


@pytest.fixture
def real_pool(tmp_path: Path, base_home: Path) -> AccountPool:
    """A pool on the system clock: leases are judged against real time, as other processes do."""
    return AccountPool(root=tmp_path / "pool", base_codex_home=base_home)


@pytest.mark.parametrize("how", ["moved", "copied", "moved across filesystems"])
def test_an_import_whose_state_cannot_be_saved_puts_everything_back(
    pool: AccountPool, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, how: str
) -> None:
    """The save fails after the move: the file is back where it was, with its mode; no folder.

    The OSError comes out as a StateError (the library's own tree) naming the import.
    """
    pool.import_auth("other", _auth_file(tmp_path / "o", "acct-0"))
    src = _auth_file(tmp_path / "old-home", "acct-1")
    src.chmod(0o640)
    content = src.read_bytes()
    state = pool.state_path.read_bytes()
    if how == "moved across filesystems":
        monkeypatch.setattr(accounts_module, "_rename_into", lambda src, dest: False)
    with monkeypatch.context() as patch:
        patch.setattr(AccountPool, "_save", _fail_save)
        with pytest.raises(errors.StateError, match=r"import .* as account 'work'.*No space left"):
            pool.import_auth("work", src, copy=how == "copied")
    assert src.read_bytes() == content
    assert stat.S_IMODE(src.stat().st_mode) == 0o640
    assert not (pool.root / "accounts" / "work").exists()
    assert pool.state_path.read_bytes() == state
    # Nothing is stranded: the same import works now.
    pool.import_auth("work", src)
    assert not src.exists()
    assert pool.get("work").identity.account_id == "acct-1"


def test_a_login_whose_state_cannot_be_saved_changes_nothing(
    pool: AccountPool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A new login and a newer re-login both leave folders, auth.json and state as they were."""
    pool.login("work", runner=_FakeLogin("acct-1"))
    auth = pool.account_home("work") / "auth.json"
    before, state = auth.read_bytes(), pool.state_path.read_bytes()
    with monkeypatch.context() as patch:
        patch.setattr(AccountPool, "_save", _fail_save)
        with pytest.raises(OSError, match="No space left"):
            pool.login("new", runner=_FakeLogin("acct-2"))
        newer = _FakeLogin("acct-1", last_refresh=T0 + timedelta(hours=1))
        with pytest.raises(OSError, match="No space left"):
            pool.login("work", runner=newer)
    assert auth.read_bytes() == before
    assert pool.state_path.read_bytes() == state
    assert [p.name for p in (pool.root / "accounts").iterdir()] == ["work"]
    assert sorted(p.name for p in auth.parent.glob("*auth.json*")) == ["auth.json"]
    pool.login("new", runner=_FakeLogin("acct-2"))  # nothing stranded
    assert [a.name for a in pool.accounts()] == ["new", "work"]


def test_a_reimport_adopts_a_stranded_folder_of_the_same_login(
    pool: AccountPool, tmp_path: Path
) -> None:
    """What a failed import of an older version left (a login in a folder outside the state)."""
    stranded = _login_at(_stranded_home(pool, "work") / "auth.json", "acct-1", T0, "rt-stranded")
    content = stranded.read_bytes()

    account = pool.import_auth("work", stranded)

    assert account.identity.account_id == "acct-1"
    assert stranded.read_bytes() == content
    assert [a.name for a in pool.accounts()] == ["work"]
    with pytest.raises(errors.ConfigError, match="already exists"):
        pool.import_auth("work", stranded)


def test_a_reimport_keeps_the_newer_login_and_refuses_another_accounts_folder(
    pool: AccountPool, tmp_path: Path
) -> None:
    """A stranded folder keeps its login unless the source is newer; a foreign one is refused."""
    kept = _login_at(_stranded_home(pool, "a") / "auth.json", "acct-a", T0, "rt-kept")
    older = _login_at(tmp_path / "older" / "auth.json", "acct-a", T0 - timedelta(days=1), "rt-o")
    pool.import_auth("a", older)
    assert older.exists()  # left where it was: not newer
    assert _refresh_token(kept) == "rt-kept"

    replaced = _login_at(_stranded_home(pool, "b") / "auth.json", "acct-b", T0, "rt-old")
    newer = _login_at(tmp_path / "newer" / "auth.json", "acct-b", T0 + timedelta(hours=1), "rt-n")
    pool.import_auth("b", newer)
    assert not newer.exists()  # moved in over the older login
    assert _refresh_token(replaced) == "rt-n"
    assert sorted(p.name for p in replaced.parent.glob("*auth.json*")) == ["auth.json"]

    foreign = _login_at(_stranded_home(pool, "c") / "auth.json", "acct-x", T0, "rt-x")
    src = _login_at(tmp_path / "c" / "auth.json", "acct-c", T0 + timedelta(hours=1), "rt-c")
    with pytest.raises(errors.ConfigError, match=r"holds another login \(account id acct-x\)"):
        pool.import_auth("c", src)
    assert src.exists()
    assert _refresh_token(foreign) == "rt-x"
    assert [a.name for a in pool.accounts()] == ["a", "b"]


def test_a_login_adopts_a_stranded_folder_of_the_same_account(pool: AccountPool) -> None:
    """A login under the name of a stranded folder of that account adopts it (newer login wins)."""
    auth = _stranded_home(pool, "work") / "auth.json"
    _login_at(auth, "acct-1", T0 - timedelta(hours=1), "rt-stranded")
    pool.login("work", runner=_FakeLogin("acct-1"))
    assert [a.name for a in pool.accounts()] == ["work"]
    assert _refresh_token(auth) == "rt-acct-1"
    _login_at(_stranded_home(pool, "play") / "auth.json", "acct-x", T0, "rt-x")
    with pytest.raises(errors.ConfigError, match="holds another login"):
        pool.login("play", runner=_FakeLogin("acct-2"))
    assert [a.name for a in pool.accounts()] == ["work"]


_HOLDER = """
import asyncio, sys
from pathlib import Path
from codex_supervisor.accounts import AccountPool

async def main():
    pool = AccountPool(root=Path(sys.argv[1]), base_codex_home=Path(sys.argv[2]))
    async with pool.occupy(sys.argv[3], purpose="codex exec"):
        print("held", flush=True)
        await asyncio.to_thread(sys.stdin.read)
    print("released", flush=True)

asyncio.run(main())
"""


@contextlib.contextmanager
def _occupant(pool: AccountPool, name: str) -> Iterator[subprocess.Popen[str]]:
    """Another process occupying ``name`` until its stdin is closed (closed on the way out)."""
    with subprocess.Popen(
        [sys.executable, "-c", _HOLDER, str(pool.root), str(pool.base_codex_home), name],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    ) as holder:
        assert holder.stdin is not None
        assert holder.stdout is not None
        try:
            assert holder.stdout.readline() == "held\n"
            yield holder
        finally:
            if not holder.stdin.closed:
                holder.stdin.close()
            holder.wait(timeout=60)


def test_remove_refuses_an_account_in_use_and_force_leaves_the_session_alone(
    real_pool: AccountPool, tmp_path: Path
) -> None:
    """Another process occupies the account: refused; forced, its folder and login stay until
    that process leaves, which sets the folder aside with whatever Codex wrote meanwhile."""
    pool = real_pool
    pool.import_auth("work", _auth_file(tmp_path / "h", "acct-1"))
    home = pool.account_home("work")
    auth = home / "auth.json"
    with _occupant(pool, "work") as holder:
        assert holder.stdin is not None
        assert holder.stdout is not None
        try:
            before = auth.read_bytes()
            with pytest.raises(
                AccountInUse,
                match=rf"account 'work' is in use by pid {holder.pid} on \S+ \(codex exec, since ",
            ) as refused:
                pool.remove("work")
            assert isinstance(refused.value, errors.LeaseError)
            assert [a.name for a in pool.accounts()] == ["work"]
            assert auth.read_bytes() == before

            assert pool.remove("work", force=True) == home.parent
            assert pool.accounts() == []
            assert auth.read_bytes() == before  # the running Codex keeps its home and login
            assert (home / "thread-writer-locks").is_dir()
            # Codex refreshes the login in its home meanwhile (write and rename).
            refreshed = _login_at(tmp_path / "r" / "auth.json", "acct-1", T0, "rt-refreshed")
            refreshed.replace(auth)
            with pytest.raises(errors.ConfigError, match="no account named 'work'"):
                pool.get("work")
        finally:
            holder.stdin.close()
            assert holder.wait(timeout=60) == 0
        assert holder.stdout.read() == "released\n"
    # The last occupant left: the folder went aside, with the refreshed login.
    assert not home.parent.exists()
    [aside] = list((pool.root / "accounts").glob(".removed-work-*"))
    assert _refresh_token(aside / "home" / "auth.json") == "rt-refreshed"
    assert not (aside / "removed.json").exists()


def test_a_forced_removal_whose_occupant_left_meanwhile_sets_the_folder_aside(
    real_pool: AccountPool, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The occupant leaves between the refused claim and the mark: the folder still goes aside."""
    pool = real_pool
    pool.import_auth("work", _auth_file(tmp_path / "h", "acct-1"))
    home = pool.account_home("work")
    remove_locked = AccountPool._remove_locked
    with _occupant(pool, "work") as holder:

        def spy(self: AccountPool, name: str, *, in_use: bool) -> Path:
            assert in_use
            assert holder.stdin is not None
            holder.stdin.close()  # it leaves now, before the mark: it sees none
            assert holder.wait(timeout=60) == 0
            return remove_locked(self, name, in_use=in_use)

        monkeypatch.setattr(AccountPool, "_remove_locked", spy)
        where = pool.remove("work", force=True)
    assert where.name.startswith(".removed-work-")
    assert (where / "home" / "auth.json").is_file()
    assert not home.parent.exists()


def test_remove_holds_the_account_so_no_launch_starts_meanwhile(
    real_pool: AccountPool, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """While the folder is moved and the state saved, the occupancy lease is held exclusively."""
    pool = real_pool
    pool.import_auth("work", _auth_file(tmp_path / "h", "acct-1"))
    seen: list[LeaseRecord] = []
    launched: list[BaseException] = []
    remove_locked = AccountPool._remove_locked

    async def launch(p: AccountPool) -> None:
        async with p.occupy("work", timeout=0):
            pass

    def spy(self: AccountPool, name: str, *, in_use: bool) -> Path:
        with concurrent.futures.ThreadPoolExecutor(1) as other:
            seen.extend(other.submit(asyncio.run, self.occupants(name)).result())
            launched.append(other.submit(asyncio.run, launch(self)).exception() or Exception())
        return remove_locked(self, name, in_use=in_use)

    monkeypatch.setattr(AccountPool, "_remove_locked", spy)
    pool.remove("work")
    assert [(r.mode, r.purpose) for r in seen] == [(LeaseMode.EXCLUSIVE, "accounts remove")]
    assert isinstance(launched[0], errors.LeaseTimeout)
    assert asyncio.run(pool.occupants("work")) == []


def test_a_remove_whose_state_cannot_be_saved_puts_the_folder_back(
    real_pool: AccountPool, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A failed save leaves the account in the pool with its folder and login in place."""
    pool = real_pool
    pool.import_auth("work", _auth_file(tmp_path / "h", "acct-1"))
    auth = pool.account_home("work") / "auth.json"
    before = auth.read_bytes()
    monkeypatch.setattr(AccountPool, "_save", _fail_save)
    with pytest.raises(
        errors.StateError, match=r"cannot be saved \(.*No space left.*nothing changed"
    ):
        pool.remove("work")
    assert auth.read_bytes() == before
    assert [a.name for a in pool.accounts()] == ["work"]
    assert not list((pool.root / "accounts").glob(".removed-*"))
    assert asyncio.run(pool.occupants("work")) == []


def test_remove_sets_aside_a_folder_outside_the_pool(real_pool: AccountPool) -> None:
    """A stranded folder can be removed like an account; a name with neither is an error."""
    auth = _login_at(_stranded_home(real_pool, "left") / "auth.json", "acct-1", T0, "rt-left")
    aside = real_pool.remove("left")
    assert aside.name.startswith(".removed-left-")
    assert _refresh_token(aside / "home" / "auth.json") == "rt-left"
    assert not auth.exists()
    with pytest.raises(errors.ConfigError, match="no account named 'left'"):
        real_pool.remove("left")


@pytest.mark.anyio
async def test_the_last_occupant_sets_the_folder_aside_unless_it_was_adopted_back(
    real_pool: AccountPool, tmp_path: Path
) -> None:
    """Forced removal under two occupants: the folder goes when the second leaves; a re-import
    of the same login meanwhile puts it back in the pool instead."""
    pool = real_pool
    pool.import_auth("work", _auth_file(tmp_path / "w", "acct-1"))
    home = pool.account_home("work")
    async with pool.occupy("work", purpose="one"):
        async with pool.occupy("work", purpose="two"):
            await asyncio.to_thread(pool.remove, "work", force=True)
        assert (home / "auth.json").is_file()  # "one" still runs on it
    assert not home.parent.exists()
    assert len(list((pool.root / "accounts").glob(".removed-work-*"))) == 1

    pool.import_auth("play", _auth_file(tmp_path / "p", "acct-2"))
    auth = pool.account_home("play") / "auth.json"
    async with pool.occupy("play"):
        # From inside a running loop, as an async caller would.
        assert pool.remove("play", force=True) == auth.parent.parent
        assert pool.accounts() == []
        pool.import_auth("play", auth)  # the folder's own login: adopted as it is
        assert [a.name for a in pool.accounts()] == ["play"]
    assert auth.is_file()  # back in the pool: left in place
    assert not (auth.parent.parent / "removed.json").exists()


# -- a lapsed occupancy, a launch racing a removal, failed and crashed removals -------------

_SUSPENDABLE = """
import asyncio, sys
from pathlib import Path
from codex_supervisor.accounts import AccountPool

async def main():
    pool = AccountPool(root=Path(sys.argv[1]), base_codex_home=Path(sys.argv[2]))
    lost = Path(sys.argv[3])
    async with pool.occupy(
        "work",
        purpose="codex tui",
        ttl=1.0,
        on_lost=lambda lease: lost.write_text(lease.lost_reason or "lost"),
    ) as lease:
        print("held", flush=True)
        await asyncio.to_thread(sys.stdin.read)
    print(f"lost={lease.lost} reacquired={lease.reacquired}", flush=True)

asyncio.run(main())
"""


def _poll(predicate: object, what: str, limit: float = 60.0) -> None:
    """Wait on the real clock until ``predicate()`` holds; generous, never a timing assertion."""
    assert callable(predicate)
    deadline = time.monotonic() + limit
    while not predicate():
        assert time.monotonic() < deadline, f"{what}: not within {limit:g}s"
        time.sleep(0.02)


def _live_holders(pool: AccountPool, name: str) -> list[LeaseRecord]:
    return asyncio.run(pool.leases.holders(pool.lease_name(name)))


def test_a_codex_suspended_past_its_lease_keeps_its_account_and_takes_the_lease_again(
    real_pool: AccountPool, tmp_path: Path
) -> None:
    """SIGSTOP past the TTL: its record lapses, but `remove` (no --force) still refuses — the
    process runs — and after SIGCONT it holds its occupancy again, never reported lost."""
    pool = real_pool
    pool.import_auth("work", _auth_file(tmp_path / "h", "acct-1"))
    auth = pool.account_home("work") / "auth.json"
    lost_flag = tmp_path / "lost"
    with subprocess.Popen(
        [sys.executable, "-c", _SUSPENDABLE, str(pool.root), str(pool.base_codex_home), lost_flag],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    ) as holder:
        assert holder.stdin is not None
        assert holder.stdout is not None
        try:
            assert holder.stdout.readline() == "held\n"
            holder.send_signal(signal.SIGSTOP)  # a laptop lid closed
            _poll(lambda: _live_holders(pool, "work") == [], "the stopped holder's lease lapsing")
            [lapsed] = asyncio.run(pool.occupants("work"))
            assert lapsed.pid == holder.pid
            with pytest.raises(AccountInUse, match=rf"pid {holder.pid} .*lease lapsed at .*runs"):
                pool.remove("work")
            assert [a.name for a in pool.accounts()] == ["work"]
            assert auth.is_file()
            [status] = asyncio.run(pool.status())
            assert [o.pid for o in status.occupants] == [holder.pid]

            holder.send_signal(signal.SIGCONT)  # opened again
            _poll(
                lambda: lost_flag.exists() or [r.pid for r in _live_holders(pool, "work")] != [],
                "the resumed holder taking its lease again",
            )
            assert not lost_flag.exists()
            [again] = _live_holders(pool, "work")
            assert (again.pid, again.owner) == (holder.pid, lapsed.owner)
            assert again.acquired_at > lapsed.acquired_at
            with pytest.raises(AccountInUse):
                pool.remove("work")
        finally:
            holder.send_signal(signal.SIGCONT)
            holder.stdin.close()
            code = holder.wait(timeout=60)
        assert code == 0
        # Once at least (a loaded machine may starve it past its TTL again), never lost.
        assert re.fullmatch(r"lost=False reacquired=[1-9]\d*\n", holder.stdout.read())
    assert auth.is_file()
    assert pool.remove("work").name.startswith(".removed-work-")  # nobody left: it goes


@pytest.mark.anyio
async def test_lapsed_records_count_as_occupants_only_while_their_process_runs(
    real_pool: AccountPool, tmp_path: Path
) -> None:
    """A lapsed record of a running process (another one, suspended) keeps `remove` off the
    account; one whose process is gone (a reaped child's pid) does not."""
    pool = real_pool
    pool.import_auth("work", _auth_file(tmp_path / "h", "acct-1"))
    name = pool.lease_name("work")
    written = await pool.leases.try_acquire(name, owner="me", mode=LeaseMode.SHARED, ttl=0.05)
    assert written is not None
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    try:
        sleeper.send_signal(signal.SIGSTOP)
        # The record as that process would have written it: its pid and start.
        mine = attrs.evolve(
            written, pid=sleeper.pid, pid_start=lease_module._pid_start.__wrapped__(sleeper.pid)
        )
        (pool.root / "leases" / name / "me.json").write_text(json.dumps(unstructure(mine)))
        await asyncio.sleep(0.2)
        assert await pool.leases.holders(name) == []
        assert await pool.occupants("work") == [mine]
        with pytest.raises(AccountInUse, match="lapsed"):
            await asyncio.to_thread(pool.remove, "work")
    finally:
        sleeper.kill()
        sleeper.wait(timeout=60)

    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    assert dead.wait(timeout=60) == 0
    gone = attrs.evolve(mine, pid=dead.pid)  # its pid, now free
    (pool.root / "leases" / name / "me.json").write_text(json.dumps(unstructure(gone)))
    assert await pool.occupants("work") == []
    aside = await asyncio.to_thread(pool.remove, "work")
    assert aside.name.startswith(".removed-work-")
    assert await pool.leases.records(name) == []  # taken over, then released


@pytest.mark.anyio
async def test_a_launch_never_occupies_or_recreates_a_removed_account(
    real_pool: AccountPool, tmp_path: Path
) -> None:
    """Removed before it was occupied: occupy gives the lease back and raises AccountGone;
    prepare_home never makes an empty home outside the pool (Codex would ask for a login)."""
    pool = real_pool
    pool.import_auth("work", _auth_file(tmp_path / "h", "acct-1"))
    account_dir = pool.root / "accounts" / "work"
    aside = await asyncio.to_thread(pool.remove, "work")  # nobody occupied it yet
    with pytest.raises(errors.AccountGone, match="'work' is not in the pool") as gone:
        async with pool.occupy("work", purpose="codex exec"):
            pytest.fail("occupied a removed account")
    assert isinstance(gone.value, errors.ConfigError)
    assert await pool.occupants("work") == []
    with pytest.raises(errors.AccountGone):
        async with pool.occupy_exclusively("work", purpose="probe"):
            pytest.fail("occupied a removed account")
    with pytest.raises(errors.AccountGone):
        pool.prepare_home("work")
    assert not account_dir.exists()
    assert not account_dir.is_symlink()
    assert (aside / "home" / "auth.json").is_file()
    # A leftover folder outside the state is left as it is, too.
    _stranded_home(pool, "left")
    with pytest.raises(errors.AccountGone):
        pool.prepare_home("left")
    assert sorted(p.name for p in (pool.root / "accounts" / "left").iterdir()) == ["home"]
    assert list((pool.root / "accounts" / "left" / "home").iterdir()) == []


def test_prepare_home_of_an_account_whose_folder_vanished_is_a_state_error(
    pool: AccountPool,
) -> None:
    """An account in the pool without its folder: a StateError, and no empty home is made."""
    _added(pool, "work")
    account_dir = pool.root / "accounts" / "work"
    shutil.rmtree(account_dir)
    with pytest.raises(errors.StateError, match="has no folder"):
        pool.prepare_home("work")
    assert not os.path.lexists(account_dir)


def _failing_rename(name: str) -> object:
    real = Path.rename

    def rename(self: Path, target: str | os.PathLike[str]) -> Path:
        if self.name == name:
            raise PermissionError(errno.EPERM, "Operation not permitted (test)")
        return real(self, target)

    return rename


def test_a_remove_whose_folder_cannot_be_set_aside_is_a_state_error_and_changes_nothing(
    real_pool: AccountPool, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """rename refused (an immutable folder): StateError, the account and its folder in place."""
    pool = real_pool
    pool.import_auth("work", _auth_file(tmp_path / "h", "acct-1"))
    auth = pool.account_home("work") / "auth.json"
    before = auth.read_bytes()
    with monkeypatch.context() as patch:
        patch.setattr(Path, "rename", _failing_rename("work"))
        with pytest.raises(
            errors.StateError,
            match=r"cannot set aside its folder .*Operation not permitted.*stays in the pool",
        ):
            pool.remove("work")
    assert [a.name for a in pool.accounts()] == ["work"]
    assert auth.read_bytes() == before
    assert not list((pool.root / "accounts").glob(".removed-*"))
    assert asyncio.run(pool.occupants("work")) == []
    assert pool.remove("work").name.startswith(".removed-work-")  # nothing stranded


@pytest.mark.anyio
async def test_a_forced_remove_whose_folder_cannot_be_marked_changes_nothing(
    real_pool: AccountPool, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The removed.json of a removal in use cannot be written: StateError, still in the pool."""
    pool = real_pool
    pool.import_auth("work", _auth_file(tmp_path / "h", "acct-1"))

    def no_space(account_dir: Path, now: datetime) -> bool:
        raise OSError(errno.ENOSPC, "No space left on device (test)")

    monkeypatch.setattr(accounts_module, "_mark_removed", no_space)
    async with pool.occupy("work"):
        with pytest.raises(errors.StateError, match=r"cannot mark .*No space left.*in the pool"):
            await asyncio.to_thread(pool.remove, "work", force=True)
        assert [a.name for a in pool.accounts()] == ["work"]
    assert (pool.account_home("work") / "auth.json").is_file()
    assert not (pool.root / "accounts" / "work" / "removed.json").exists()


def test_remove_saves_the_state_before_it_moves_the_folder(
    real_pool: AccountPool, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A crash between the two steps must leave a folder outside the state (adoptable), never an
    account listed without its folder; a state that cannot be put back says where things are."""
    pool = real_pool
    pool.import_auth("work", _auth_file(tmp_path / "h", "acct-1"))
    listed_at_rename: list[list[str]] = []
    real = Path.rename

    def spy(self: Path, target: str | os.PathLike[str]) -> Path:
        if self.name == "work":
            listed_at_rename.append([a.name for a in pool.accounts()])
        return real(self, target)

    with monkeypatch.context() as patch:
        patch.setattr(Path, "rename", spy)
        pool.remove("work")
    assert listed_at_rename == [[]]

    # The rename fails and so does putting the account back: out of the pool, folder in place.
    pool.import_auth("play", _auth_file(tmp_path / "p", "acct-2"))
    saves = 0
    save = AccountPool._save

    def first_save_only(self: AccountPool, state: object) -> None:
        nonlocal saves
        saves += 1
        if saves > 1:
            _fail_save(self, state)
        save(self, state)  # type: ignore[arg-type]

    with monkeypatch.context() as patch:
        patch.setattr(Path, "rename", _failing_rename("play"))
        patch.setattr(AccountPool, "_save", first_save_only)
        with pytest.raises(errors.StateError, match=r"could not be restored.*adopts it"):
            pool.remove("play")
    assert pool.accounts() == []
    assert [(f.name, f.kind) for f in pool.leftovers() if f.name == "play"] == [("play", "outside")]
    pool.import_auth("play", pool.account_home("play") / "auth.json")  # adopted as it is
    assert [a.name for a in pool.accounts()] == ["play"]


def test_status_sets_aside_the_folder_whose_last_occupant_crashed(
    real_pool: AccountPool, tmp_path: Path
) -> None:
    """Removed while in use, then its only occupant is SIGKILLed: once its lease lapses, the next
    status sets the folder aside (nobody else would); leftovers() shows it all along."""
    pool = real_pool
    pool.import_auth("work", _auth_file(tmp_path / "h", "acct-1"))
    account_dir = pool.root / "accounts" / "work"
    with subprocess.Popen(
        [
            sys.executable,
            "-c",
            _SUSPENDABLE,
            str(pool.root),
            str(pool.base_codex_home),
            tmp_path / "lost",
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    ) as holder:
        assert holder.stdout is not None
        assert holder.stdout.readline() == "held\n"
        assert pool.remove("work", force=True) == account_dir
        holder.kill()
        holder.wait(timeout=60)
    assert [(f.name, f.path, f.kind) for f in pool.leftovers()] == [("work", account_dir, "in_use")]
    _poll(lambda: _live_holders(pool, "work") == [], "the dead holder's lease lapsing")
    assert (account_dir / "removed.json").exists()  # nobody set it aside so far
    assert asyncio.run(pool.status()) == []
    assert not os.path.lexists(account_dir)
    [left] = pool.leftovers()
    assert (left.name, left.kind) == ("work", "set_aside")
    assert left.path.name.startswith(".removed-work-")
    assert _refresh_token(left.path / "home" / "auth.json") == "rt-acct-1"
    assert not (left.path / "removed.json").exists()


# -- logins in quarantine belong to an account id --------------------------------------------


def _undated(path: Path, account_id: str, refresh_token: str) -> Path:
    """A login of ``account_id`` without last_refresh: never adopted by itself (nothing
    says it is newer), so in quarantine it stays."""
    _auth_file(path.parent, account_id)
    data = json.loads(path.read_text())
    del data["last_refresh"]
    data["tokens"]["refresh_token"] = refresh_token
    path.write_text(json.dumps(data))
    return path


def test_a_quarantined_login_goes_to_the_account_of_its_id_whatever_its_name(
    pool: AccountPool, tmp_path: Path
) -> None:
    """Quarantined for 'A', whose account id is no longer in the pool: re-added as 'work',
    it is taken back into 'work' by itself; 'A' reused for another login is never held back."""
    older = _login_at(tmp_path / "aside" / "auth.json", "acct-A", T0, "rt-old")
    newer = _login_at(
        tmp_path / "home-k" / "auth.json", "acct-A", T0 + timedelta(hours=1), "rt-new"
    )
    item = pool.take_back_auth("A", newer)
    assert item is not None
    assert item.account == "A"
    assert item.account_id == "acct-A"
    assert "no account of the pool has its account id acct-A" in item.reason
    assert pool.owner_of(item) is None
    [still] = pool.adopt_quarantined()
    assert still.path == item.path
    pool.ensure_no_quarantine("other")  # holds nobody back

    pool.import_auth("work", older)  # the same login, under another name
    assert [i.path for i in pool.quarantined("work")] == [item.path]
    assert pool.owner_of(item) == "work"
    pool.ensure_no_quarantine("work")  # taken back first, so nothing holds it back
    assert _refresh_token(pool.account_home("work") / "auth.json") == "rt-new"
    assert pool.quarantined() == []
    assert list(item.path.parent.iterdir()) == [], "its notes go with it"

    # One that stays (nothing says it is newer), filed under 'A'; 'A' becomes another login.
    stuck = pool.take_back_auth("A", _undated(tmp_path / "h2" / "auth.json", "acct-A", "rt-x"))
    assert stuck is not None
    assert stuck.account_id == "acct-A"
    pool.import_auth("A", _auth_file(tmp_path / "b", "acct-B"))
    assert pool.quarantined("A") == []
    assert pool.adopt_quarantined("A") == []
    pool.ensure_no_quarantine("A")
    with pytest.raises(errors.LoginQuarantined, match="no last_refresh") as raised:
        pool.ensure_no_quarantine("work")
    assert raised.value.account == "work"
    assert raised.value.path == str(stuck.path)
    assert isinstance(raised.value, errors.AuthError)


def test_a_quarantined_login_of_an_id_no_longer_in_the_pool_is_imported_under_a_new_name(
    pool: AccountPool, tmp_path: Path
) -> None:
    """The recovery `status` suggests: `accounts import NEWNAME --auth-json PATH`."""
    _added(pool, "A", "acct-B")  # the name is taken by another login
    login = _login_at(tmp_path / "home-k" / "auth.json", "acct-A", T0, "rt-live")
    item = pool.take_back_auth("A", login)
    assert item is not None
    account = pool.import_auth("revived", item.path)
    assert account.identity.account_id == "acct-A"
    assert _refresh_token(pool.account_home("revived") / "auth.json") == "rt-live"
    assert pool.adopt_quarantined() == []
    assert list(item.path.parent.iterdir()) == []


def test_the_account_id_of_a_quarantined_login_is_recorded_beside_it(
    pool: AccountPool, tmp_path: Path
) -> None:
    """An unreadable login keeps the account id of the account it came from."""
    _added(pool, "work", "acct-1")
    junk = tmp_path / "home" / "auth.json"
    junk.parent.mkdir()
    junk.write_text("{not json")
    junk.chmod(0o600)
    item = pool.take_back_auth("work", junk)
    assert item is not None
    assert item.account_id == "acct-1"
    meta = json.loads(item.path.with_name(item.path.name + ".meta").read_text())
    assert meta == {"account": "work", "account_id": "acct-1"}
    [listed] = pool.quarantined("work")
    assert listed.account_id == "acct-1"
    with pytest.raises(errors.LoginQuarantined):
        pool.ensure_no_quarantine("work")


def test_leftover_temporary_copies_of_logins_go_only_when_provably_redundant(
    pool: AccountPool, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Copies left by a process that died halfway: old and redundant ones go, others stay."""
    home = _added(pool, "work", "acct-1")
    auth = home / "auth.json"

    def copy_of(name: str, refreshed: datetime, refresh_token: str) -> Path:
        made = _login_at(tmp_path / name / "auth.json", "acct-1", refreshed, refresh_token)
        return made.rename(home / f".auth.json.{name}.held")

    # A hard link to the current login, and an older login of the account: both redundant.
    linked = home / ".auth.json.aaaa0000.held"
    os.link(auth, linked)
    older = copy_of("bbbb1111", T0 - timedelta(days=1), "rt-0")
    # A newer login than the account's: its only copy, it stays.
    newer = copy_of("cccc2222", T0 + timedelta(days=1), "rt-2")
    pool.prepare_home("work")
    assert linked.exists(), "written moments ago: maybe an import in flight"
    assert older.exists()
    later = time.time() + 3600
    monkeypatch.setattr(accounts_module.time, "time", lambda: later)
    pool.prepare_home("work")
    assert not linked.exists()
    assert not older.exists()
    assert newer.exists()
    assert _refresh_token(auth) != "rt-2"
    assert auth.exists()

    # In quarantine: a temporary copy whose login made it in goes; one that did not stays.
    monkeypatch.undo()
    item = pool.take_back_auth("work", _undated(tmp_path / "k" / "auth.json", "acct-1", "rt-q"))
    assert item is not None
    made_it = item.path.with_name(f".{item.path.name}.eeee4444.tmp")
    os.link(item.path, made_it)
    lost = item.path.with_name(f".{item.path.name[:-10]}x-auth.json.ffff5555.tmp")
    lost.write_bytes(b"partial")
    pool.adopt_quarantined()
    assert made_it.exists(), "too new to tell"
    monkeypatch.setattr(accounts_module.time, "time", lambda: later)
    pool.adopt_quarantined()
    assert not made_it.exists()
    assert lost.exists()
    assert item.path.exists()


def test_a_relogin_whose_old_login_cannot_be_held_aside_is_a_state_error(
    pool: AccountPool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No hard link and no copy of the old login possible: StateError, nothing replaced."""
    pool.login("work", runner=_FakeLogin("acct-1"))
    auth = pool.account_home("work") / "auth.json"
    before, state = auth.read_bytes(), pool.state_path.read_bytes()
    link, write = os.link, accounts_module.write_atomic

    def no_link(src: object, dst: object, *args: object, **kw: object) -> None:
        if str(dst).endswith(".held"):
            raise OSError(errno.EXDEV, "Invalid cross-device link (test)")
        link(src, dst, *args, **kw)  # type: ignore[arg-type]

    def no_copy(path: Path, data: bytes, **kw: object) -> None:
        if path.name.endswith(".held"):
            raise OSError(errno.ENOSPC, "No space left on device (test)")
        write(path, data, **kw)  # type: ignore[arg-type]

    monkeypatch.setattr(os, "link", no_link)
    monkeypatch.setattr(accounts_module, "write_atomic", no_copy)
    newer = _FakeLogin("acct-1", last_refresh=T0 + timedelta(hours=1))
    with pytest.raises(errors.StateError, match=r"cannot keep a copy of .*auth.json.*No space"):
        pool.login("work", runner=newer)
    assert auth.read_bytes() == before
    assert pool.state_path.read_bytes() == state
    assert sorted(p.name for p in auth.parent.glob("*auth.json*")) == ["auth.json"]


def _suspended_holder(pool: AccountPool, lost_flag: Path) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-c", _SUSPENDABLE, str(pool.root), str(pool.base_codex_home), lost_flag],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )


async def _occupy_and_leave(pool: AccountPool, name: str) -> None:
    async with pool.occupy(name, purpose="codex exec", ttl=30.0):
        pass


async def _probe(pool: AccountPool, name: str) -> None:
    async with pool.occupy_exclusively(name, purpose="quota probe", timeout=0.5):
        pytest.fail("probed an account a suspended Codex occupies")


def test_another_session_does_not_erase_a_suspended_codex(
    real_pool: AccountPool, tmp_path: Path
) -> None:
    """Another session occupying the account and leaving while a Codex is suspended past its
    TTL leaves its lapsed record alone: `remove`, a status sweep and a quota probe still see
    it, and it takes its lease again as it resumes, never lost."""
    pool = real_pool
    pool.import_auth("work", _auth_file(tmp_path / "h", "acct-1"))
    auth = pool.account_home("work") / "auth.json"
    lost_flag = tmp_path / "lost"
    with _suspended_holder(pool, lost_flag) as holder:
        assert holder.stdin is not None
        assert holder.stdout is not None
        try:
            assert holder.stdout.readline() == "held\n"
            holder.send_signal(signal.SIGSTOP)  # Ctrl-Z of a long exec
            _poll(lambda: _live_holders(pool, "work") == [], "the stopped holder's lease lapsing")
            [lapsed] = asyncio.run(pool.occupants("work"))
            asyncio.run(_occupy_and_leave(pool, "work"))  # another session came and went
            assert asyncio.run(pool.occupants("work")) == [lapsed]
            with pytest.raises(AccountInUse, match=rf"pid {holder.pid} .*lease lapsed"):
                pool.remove("work")
            with pytest.raises(errors.LeaseTimeout, match=rf"pid {holder.pid} "):
                asyncio.run(_probe(pool, "work"))
            [status] = asyncio.run(pool.status())
            assert [o.pid for o in status.occupants] == [holder.pid]
            assert [a.name for a in pool.accounts()] == ["work"]
            assert auth.is_file()

            holder.send_signal(signal.SIGCONT)
            _poll(
                lambda: lost_flag.exists() or [r.pid for r in _live_holders(pool, "work")] != [],
                "the resumed holder taking its lease again",
            )
            assert not lost_flag.exists()
        finally:
            holder.send_signal(signal.SIGCONT)
            holder.stdin.close()
            code = holder.wait(timeout=60)
        assert code == 0
        assert re.fullmatch(r"lost=False reacquired=[1-9]\d*\n", holder.stdout.read())
    assert not lost_flag.exists()
    assert pool.remove("work").name.startswith(".removed-work-")


def test_a_suspended_codex_whose_account_was_force_removed_finds_its_lease_lost(
    real_pool: AccountPool, tmp_path: Path
) -> None:
    """`remove --force` while a Codex is suspended: its folder stays marked through a late
    launch and a status sweep; as it resumes it takes its record again but sees the account
    out of the pool and reports the lease lost; its exit then sets the folder aside."""
    pool = real_pool
    pool.import_auth("work", _auth_file(tmp_path / "h", "acct-1"))
    account_dir = pool.root / "accounts" / "work"
    lost_flag = tmp_path / "lost"
    with _suspended_holder(pool, lost_flag) as holder:
        assert holder.stdin is not None
        assert holder.stdout is not None
        try:
            assert holder.stdout.readline() == "held\n"
            holder.send_signal(signal.SIGSTOP)
            _poll(lambda: _live_holders(pool, "work") == [], "the stopped holder's lease lapsing")
            assert pool.remove("work", force=True) == account_dir  # marked, stays
            with pytest.raises(errors.AccountGone):
                asyncio.run(_occupy_and_leave(pool, "work"))
            asyncio.run(pool.status())  # the sweep
            assert [(f.name, f.kind) for f in pool.leftovers()] == [("work", "in_use")]
            assert (account_dir / "home" / "auth.json").is_file()

            holder.send_signal(signal.SIGCONT)
            _poll(lost_flag.exists, "the resumed holder reporting its lease lost")
            assert "no longer in the pool" in lost_flag.read_text()
            assert account_dir.is_dir()  # it still runs there
        finally:
            holder.send_signal(signal.SIGCONT)
            holder.stdin.close()
            code = holder.wait(timeout=60)
        assert code == 0
        assert holder.stdout.read() == "lost=True reacquired=0\n"
    [left] = pool.leftovers()
    assert left.kind == "set_aside"
    assert (left.path / "home" / "auth.json").is_file()
