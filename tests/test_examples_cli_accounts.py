"""The reference CLI's accounts and status commands, run as a subprocess."""

from __future__ import annotations

import asyncio
import json
import os
import re
import stat
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from codex_supervisor import AccountPool, WindowKind
from codex_supervisor.testing import FakeCodexBackend

CLI = Path(__file__).resolve().parents[1] / "examples" / "cli.py"

ACCOUNT_KEYS = {
    "name",
    "email",
    "account_id",
    "plan",
    "auth_mode",
    "added_at",
    "blocked_until",
    "cooldowns",
}
STATUS_ACCOUNT_KEYS = ACCOUNT_KEYS | {"home", "occupants", "quota", "refresh", "held_back"}
QUOTA_KEYS = {
    "source",
    "observed_at",
    "age_seconds",
    "plan_type",
    "limit_id",
    "limit_reached",
    "windows",
    "credits",
}
ISO_UTC = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ")


class Cli:
    """Runs examples/cli.py with a pool and a base CODEX_HOME under one tmp folder."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.pool = root / "pool"
        self.codex_home = root / "codex-home"
        self.env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(root)}
        self.outputs: list[str] = []

    def __call__(
        self,
        *args: str,
        stdin: str | None = None,
        env: dict[str, str] | None = None,
        globals_: bool = True,
    ) -> subprocess.CompletedProcess[str]:
        where = ["--pool", str(self.pool), "--codex-home", str(self.codex_home)] if globals_ else []
        result = subprocess.run(
            [sys.executable, str(CLI), *where, *args],
            input=stdin,
            capture_output=True,
            text=True,
            timeout=60,
            env=env or self.env,
            check=False,
        )
        self.outputs += [result.stdout, result.stderr]
        assert "Traceback" not in result.stderr, result.stderr
        return result

    def json(self, *args: str) -> Any:
        result = self(*args)
        assert result.returncode == 0, result.stderr
        return json.loads(result.stdout)


@pytest.fixture
def cli(tmp_path: Path) -> Cli:
    """A CLI runner with a minimal environment (PATH, HOME=tmp)."""
    return Cli(tmp_path)


def _login_file(backend: FakeCodexBackend, root: Path, account_id: str) -> Path:
    """A fake ChatGPT login of ``account_id`` as a private auth.json under ``root``."""
    path = backend.write_auth(root / f"login-{account_id}", account_id)
    path.chmod(0o600)
    return path


def _tokens(backend: FakeCodexBackend, *account_ids: str) -> list[str]:
    tokens = []
    for account_id in account_ids:
        acct = backend.account(account_id)
        tokens += [acct.access_token, acct.refresh_token, acct.id_token]
    return tokens


def test_import_moves_the_login_and_lists_it(cli: Cli, backend: FakeCodexBackend) -> None:
    """Import MOVES the auth.json (mode 0600 kept) and `accounts list --json` shows the account."""
    backend.add_account("acct-a", email="alice@example.test", plan_type="pro")
    source = _login_file(backend, cli.root, "acct-a")

    result = cli("accounts", "import", "alpha", "--auth-json", str(source))

    assert result.returncode == 0, result.stderr
    assert "MOVED" in result.stdout
    assert not source.exists()
    dest = cli.pool / "accounts" / "alpha" / "home" / "auth.json"
    assert stat.S_IMODE(dest.stat().st_mode) == 0o600
    listing = cli.json("accounts", "list", "--json")
    assert listing["pool"] == str(cli.pool)
    [account] = listing["accounts"]
    assert set(account) == ACCOUNT_KEYS
    assert account["name"] == "alpha"
    assert account["email"] == "alice@example.test"
    assert account["account_id"] == "acct-a"
    assert account["plan"] == "pro"
    assert account["auth_mode"] == "chatgpt"
    assert ISO_UTC.fullmatch(account["added_at"])
    assert account["blocked_until"] is None
    assert account["cooldowns"] == []
    human = cli("accounts", "list")
    assert re.search(r"alpha\s+alice@example\.test\s+acct-a\s+pro\s+chatgpt\s+-", human.stdout)
    assert not any(token in out for token in _tokens(backend, "acct-a") for out in cli.outputs)


def test_import_copy_keeps_the_source_and_warns(cli: Cli, backend: FakeCodexBackend) -> None:
    """`--copy` leaves the original in place, says COPIED and warns about the second holder."""
    backend.add_account("acct-a")
    source = _login_file(backend, cli.root, "acct-a")

    result = cli("accounts", "import", "alpha", "--auth-json", str(source), "--copy")

    assert result.returncode == 0, result.stderr
    assert source.exists()
    assert "COPIED" in result.stdout
    # Warned once (the library's WARNING), not twice.
    [warning] = [
        line for line in result.stderr.splitlines() if "WARNING" in line or "warning" in line
    ]
    assert "two copies of one single-use refresh token now exist" in warning


def test_duplicate_import_is_refused(cli: Cli, backend: FakeCodexBackend) -> None:
    """The same login under another name exits 1; an existing name exits 2; one line each."""
    backend.add_account("acct-a")
    assert (
        cli(
            "accounts",
            "import",
            "alpha",
            "--auth-json",
            str(_login_file(backend, cli.root, "acct-a")),
        ).returncode
        == 0
    )

    again = _login_file(backend, cli.root, "acct-a")
    result = cli("accounts", "import", "beta", "--auth-json", str(again))
    assert result.returncode == 1
    assert (
        result.stderr == "codex-supervisor: error: that login is already in the pool as 'alpha'\n"
    )
    assert again.exists()  # nothing was moved

    result = cli("accounts", "import", "alpha", "--auth-json", str(again))
    assert result.returncode == 2
    assert result.stderr == "codex-supervisor: error: an account named 'alpha' already exists\n"
    assert [a["name"] for a in cli.json("accounts", "list", "--json")["accounts"]] == ["alpha"]


def test_bad_name_exits_2(cli: Cli, backend: FakeCodexBackend) -> None:
    """An invalid account name is a usage error (exit 2) and leaves the source alone."""
    backend.add_account("acct-a")
    source = _login_file(backend, cli.root, "acct-a")

    result = cli("accounts", "import", "../evil", "--auth-json", str(source))

    assert result.returncode == 2
    assert result.stderr.startswith("codex-supervisor: error: invalid account name '../evil'")
    assert source.exists()


def test_remove_sets_the_folder_aside(cli: Cli, backend: FakeCodexBackend) -> None:
    """`accounts remove` drops the account and prints where its folder (a live login) went."""
    backend.add_account("acct-a")
    cli("accounts", "import", "alpha", "--auth-json", str(_login_file(backend, cli.root, "acct-a")))

    result = cli("accounts", "remove", "alpha")

    assert result.returncode == 0, result.stderr
    match = re.search(r"set aside at (\S+)", result.stdout)
    assert match
    aside = Path(match.group(1))
    assert (aside / "home" / "auth.json").is_file()
    assert cli.json("accounts", "list", "--json")["accounts"] == []
    missing = cli("accounts", "remove", "alpha")
    assert missing.returncode == 2
    assert missing.stderr == "codex-supervisor: error: no account named 'alpha'\n"


@pytest.mark.anyio
async def test_remove_of_an_account_in_use_is_refused_unless_forced(
    cli: Cli, backend: FakeCodexBackend
) -> None:
    """Occupied: exit 1 naming the occupant; `--force` takes it out, the folder stays until the
    occupant leaves, then it is set aside."""
    backend.add_account("acct-a")
    source = _login_file(backend, cli.root, "acct-a")
    assert cli("accounts", "import", "alpha", "--auth-json", str(source)).returncode == 0
    pool = AccountPool(root=cli.pool, base_codex_home=cli.codex_home)
    folder = cli.pool / "accounts" / "alpha"

    async with pool.occupy("alpha", purpose="codex"):
        refused = await asyncio.to_thread(cli, "accounts", "remove", "alpha")
        assert refused.returncode == 1
        assert re.fullmatch(
            rf"codex-supervisor: error: account 'alpha' is in use by pid {os.getpid()} on \S+ "
            r"\(codex, since \d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ\); not removed "
            r"\(--force takes it out of the pool anyway; the running session is left alone\)\n",
            refused.stderr,
        ), refused.stderr
        assert [a["name"] for a in cli.json("accounts", "list", "--json")["accounts"]] == ["alpha"]

        forced = await asyncio.to_thread(cli, "accounts", "remove", "alpha", "--force")
        assert forced.returncode == 0, forced.stderr
        assert forced.stderr == ""
        assert "removed account 'alpha' from the pool while it is in use" in forced.stdout
        assert f"its folder stays at {folder} until the last session on it ends" in forced.stdout
        assert cli.json("accounts", "list", "--json")["accounts"] == []
        assert (folder / "home" / "auth.json").is_file()
    # This process was its last occupant: leaving set the folder aside.
    assert not folder.exists()
    [aside] = list((cli.pool / "accounts").glob(".removed-alpha-*"))
    assert (aside / "home" / "auth.json").is_file()


def test_an_import_whose_state_cannot_be_saved_leaves_the_login_where_it_was(
    cli: Cli, backend: FakeCodexBackend
) -> None:
    """The state cannot be written: exit 1, the file is still at its path, nothing stranded."""
    backend.add_account("acct-a")
    backend.add_account("acct-b")
    cli("accounts", "import", "alpha", "--auth-json", str(_login_file(backend, cli.root, "acct-a")))
    source = _login_file(backend, cli.root, "acct-b")
    content = source.read_bytes()
    blocker = cli.pool / "state.json.bak"  # a folder where the state's backup goes
    blocker.mkdir()

    failed = cli("accounts", "import", "beta", "--auth-json", str(source))

    assert failed.returncode == 1
    assert failed.stderr.startswith("codex-supervisor: error: ")
    assert failed.stderr.count("\n") == 1
    assert source.read_bytes() == content
    assert not (cli.pool / "accounts" / "beta").exists()
    blocker.rmdir()
    again = cli("accounts", "import", "beta", "--auth-json", str(source))
    assert again.returncode == 0, again.stderr
    assert "MOVED" in again.stdout
    assert [a["name"] for a in cli.json("accounts", "list", "--json")["accounts"]] == [
        "alpha",
        "beta",
    ]


def test_a_reimport_adopts_a_stranded_folder(cli: Cli, backend: FakeCodexBackend) -> None:
    """A folder an older version stranded (login moved, state not saved) is adopted, not refused."""
    backend.add_account("acct-a")
    home = cli.pool / "accounts" / "alpha" / "home"
    home.mkdir(parents=True)
    stranded = backend.write_auth(home, "acct-a")
    stranded.chmod(0o600)

    result = cli("accounts", "import", "alpha", "--auth-json", str(stranded))

    assert result.returncode == 0, result.stderr
    assert f"ADOPTED the existing folder {home.parent}" in result.stdout
    assert f"KEPT {stranded} (the file given)" in result.stdout
    assert stranded.is_file()
    [account] = cli.json("accounts", "list", "--json")["accounts"]
    assert (account["name"], account["account_id"]) == ("alpha", "acct-a")


def test_a_copy_import_that_keeps_the_folders_newer_login_says_nothing_was_copied(
    cli: Cli, backend: FakeCodexBackend
) -> None:
    """`--copy` of an older login into a folder holding a newer one: KEPT, not COPIED."""
    backend.add_account("acct-a")
    older = _login_file(backend, cli.root, "acct-a")
    data = json.loads(older.read_text())
    data["last_refresh"] = "2000-01-01T00:00:00Z"
    older.write_text(json.dumps(data))
    home = cli.pool / "accounts" / "alpha" / "home"
    home.mkdir(parents=True)
    newer = backend.write_auth(home, "acct-a")
    newer.chmod(0o600)
    kept = newer.read_bytes()

    result = cli("accounts", "import", "alpha", "--auth-json", str(older), "--copy")

    assert result.returncode == 0, result.stderr
    assert "COPIED" not in result.stdout
    assert f"KEPT {newer}: it is as new as {older} or newer; nothing was copied" in result.stdout
    assert newer.read_bytes() == kept
    assert older.is_file()


def test_pool_and_codex_home_default_to_the_environment(
    cli: Cli, backend: FakeCodexBackend
) -> None:
    """Without --pool/--codex-home the CLI uses $CODEX_SUPERVISOR_HOME and $CODEX_HOME."""
    backend.add_account("acct-a")
    source = _login_file(backend, cli.root, "acct-a")
    env = {
        **cli.env,
        "CODEX_SUPERVISOR_HOME": str(cli.root / "env-pool"),
        "CODEX_HOME": str(cli.root / "env-base"),
    }

    result = cli("accounts", "import", "alpha", "--auth-json", str(source), env=env, globals_=False)

    assert result.returncode == 0, result.stderr
    assert (cli.root / "env-pool" / "state.json").is_file()
    assert (cli.root / "env-base" / "sessions").is_dir()  # linked into the account home
    assert not cli.pool.exists()


@pytest.mark.real_codex
def test_login_with_api_key_through_the_real_cli(cli: Cli, codex_bin: Path) -> None:
    """`accounts login --with-api-key` gives stdin to the real `codex login`: an apikey account."""
    key = "sk-test-cli-0123456789abcdef"

    result = cli(
        "--codex", str(codex_bin), "accounts", "login", "keyed", "--with-api-key", stdin=key + "\n"
    )

    assert result.returncode == 0, result.stdout + result.stderr
    [account] = cli.json("accounts", "list", "--json")["accounts"]
    assert account["name"] == "keyed"
    assert account["auth_mode"] == "apikey"
    assert account["account_id"].startswith("apikey-")
    status = cli.json("status", "--json", "--refresh")
    assert status["accounts"][0]["quota"] is None
    assert status["accounts"][0]["refresh"] is None  # API-key logins are not probed
    assert not any(key in out for out in cli.outputs)


def test_status_refresh_json_then_human(cli: Cli, backend: FakeCodexBackend) -> None:
    """`status --json --refresh` shows usage and an inline auth error; then `status` shows bars."""
    backend.write_codex_home(cli.codex_home)  # chatgpt_base_url -> the fake backend
    backend.add_account("acct-a", five_hour_used=35, weekly_used=60)
    backend.add_account("acct-b", five_hour_used=10, weekly_used=20)
    for account_id, name in (("acct-a", "alpha"), ("acct-b", "beta")):
        source = _login_file(backend, cli.root, account_id)
        assert cli("accounts", "import", name, "--auth-json", str(source)).returncode == 0
    backend.expire_access_token("acct-b")

    data = cli.json("status", "--json", "--refresh")

    assert set(data) == {"pool", "generated_at", "refreshed", "accounts", "next", "quarantined"}
    assert data["next"] == {"account": "alpha", "wait_until": None, "reason": None}
    assert data["quarantined"] == []
    assert data["refreshed"] is True
    assert ISO_UTC.fullmatch(data["generated_at"])
    alpha, beta = data["accounts"]
    assert set(alpha) == STATUS_ACCOUNT_KEYS
    assert alpha["refresh"] == {"ok": True, "error": None, "message": None}
    assert alpha["occupants"] == []
    quota = alpha["quota"]
    assert set(quota) == QUOTA_KEYS
    assert quota["source"] == "usage_endpoint"
    assert ISO_UTC.fullmatch(quota["observed_at"])
    used = {w["kind"]: w["used_percent"] for w in quota["windows"]}
    assert used == {"five_hour": 35.0, "weekly": 60.0}
    assert {w["kind"]: w["window_minutes"] for w in quota["windows"]} == {
        "five_hour": 300,
        "weekly": 10080,
    }
    assert all(ISO_UTC.fullmatch(w["resets_at"]) for w in quota["windows"])
    assert beta["quota"] is None
    assert beta["refresh"]["ok"] is False
    assert beta["refresh"]["error"] == "QuotaAuthExpired"
    assert "401" in beta["refresh"]["message"]

    human = cli("status")

    assert human.returncode == 0, human.stderr
    out = human.stdout
    assert re.search(r"five-hour \[#{7}\.{13}\] 35% used, resets in 4h \d\d?m \(", out), out
    assert re.search(r"weekly +\[#{12}\.{8}\] 60% used, resets in 6d \d+h \(", out), out
    assert re.search(r"data: usage_endpoint, \d+s ago \(\d{4}-", out), out
    assert "beta (" in out
    assert "quota: no data yet" in out
    assert "next run: alpha" in out
    assert not any(
        token in text for token in _tokens(backend, "acct-a", "acct-b") for text in cli.outputs
    )
    backend.assert_no_replay()


@pytest.mark.anyio
async def test_status_shows_cooldowns_and_occupancy(cli: Cli, backend: FakeCodexBackend) -> None:
    """A cooldown and a live occupancy lease appear in `status`, `status --json` and the list."""
    backend.add_account("acct-a")
    source = _login_file(backend, cli.root, "acct-a")
    assert cli("accounts", "import", "alpha", "--auth-json", str(source)).returncode == 0
    pool = AccountPool(root=cli.pool, base_codex_home=cli.codex_home)
    until = datetime.now(UTC) + timedelta(hours=2)
    pool.set_cooldown(
        "alpha", window=WindowKind.FIVE_HOUR, blocked_until=until, reason="usage_limit_exceeded"
    )

    new_york = {**cli.env, "TZ": "America/New_York"}
    async with pool.occupy("alpha", purpose="codex"):
        human = await asyncio.to_thread(cli, "status", env=new_york)
        in_utc = await asyncio.to_thread(cli, "--utc", "status", env=new_york)
        data = await asyncio.to_thread(cli.json, "status", "--json")
    listing = cli("accounts", "list")

    # Local time by default (as Codex shows it), UTC on request; one duration format.
    local = until.astimezone(ZoneInfo("America/New_York"))
    assert re.search(
        rf"cooldown: blocked until [-\d ]*{local:%H:%M} {local:%Z} \(in 1h 5\dm\), "
        r"five-hour window: usage_limit_exceeded",
        human.stdout,
    ), human.stdout
    assert re.search(rf"blocked until [-\d ]*{until:%H:%M} UTC \(in 1h 5\dm\)", in_utc.stdout)
    assert re.search(rf"occupancy: pid {os.getpid()} on \S+, codex, since ", human.stdout)
    [account] = data["accounts"]
    assert account["blocked_until"] == until.isoformat(timespec="seconds").replace("+00:00", "Z")
    [cooldown] = account["cooldowns"]
    assert cooldown["window"] == "five_hour"
    assert cooldown["reason"] == "usage_limit_exceeded"
    assert cooldown["active"] is True
    [occupant] = account["occupants"]
    assert set(occupant) == {
        "pid",
        "host",
        "site",
        "owner",
        "mode",
        "purpose",
        "since",
        "expires_at",
    }
    assert occupant["site"] is None  # a pool of one machine
    assert occupant["pid"] == os.getpid()
    assert occupant["purpose"] == "codex"
    assert occupant["mode"] == "shared"
    assert ISO_UTC.fullmatch(occupant["since"])
    assert "until " in listing.stdout


def test_verbose_logs_without_httpx_noise_or_tokens(cli: Cli, backend: FakeCodexBackend) -> None:
    """`-v` logs the library at DEBUG on stderr, keeps httpx quiet, and never logs a token."""
    backend.write_codex_home(cli.codex_home)
    backend.add_account("acct-a")
    cli("accounts", "import", "alpha", "--auth-json", str(_login_file(backend, cli.root, "acct-a")))

    result = cli("-v", "status", "--refresh")

    assert result.returncode == 0, result.stderr
    assert "DEBUG codex_supervisor.quota: quota.usage.ok account=alpha" in result.stderr
    assert "httpx" not in result.stderr
    assert "httpcore" not in result.stderr
    noisy = cli("-vv", "status", "--refresh")
    assert "INFO httpx: HTTP Request: GET" in noisy.stderr
    assert not any(token in out for token in _tokens(backend, "acct-a") for out in cli.outputs)


def test_status_of_an_empty_pool(cli: Cli) -> None:
    """`status` on a pool without accounts says how to add one and exits 0."""
    result = cli("status")
    assert result.returncode == 0, result.stderr
    assert "no accounts in" in result.stdout
    assert cli.json("status", "--json")["accounts"] == []


def test_run_with_an_empty_pool_says_so(cli: Cli) -> None:
    """`run` on a pool without accounts exits 2 with one clear line on stderr."""
    result = cli("run", "--", "exec", "hello")
    assert result.returncode == 2
    assert result.stderr.startswith("codex-supervisor: error: ")
    assert "no accounts" in result.stderr
    assert "Traceback" not in result.stderr


def test_accounts_unblock_lifts_one_window_or_all(cli: Cli, backend: FakeCodexBackend) -> None:
    """`accounts unblock NAME --window W` lifts that cooldown only; without it, every one."""
    backend.add_account("acct-a")
    source = _login_file(backend, cli.root, "acct-a")
    assert cli("accounts", "import", "alpha", "--auth-json", str(source)).returncode == 0
    pool = AccountPool(root=cli.pool, base_codex_home=cli.codex_home)
    later = datetime.now(UTC) + timedelta(hours=2)
    pool.set_cooldown("alpha", window=WindowKind.FIVE_HOUR, blocked_until=later, reason="r1")
    pool.set_cooldown("alpha", window=WindowKind.WEEKLY, blocked_until=later, reason="r2")

    one = cli("accounts", "unblock", "alpha", "--window", "weekly")

    assert one.returncode == 0, one.stderr
    assert "lifted the cooldown" in one.stdout
    assert [c.window for c in pool.get("alpha").cooldowns] == [WindowKind.FIVE_HOUR]
    everything = cli("accounts", "unblock", "alpha")
    assert everything.returncode == 0, everything.stderr
    assert pool.get("alpha").cooldowns == ()
    again = cli("accounts", "unblock", "alpha")
    assert "nothing to lift" in again.stdout
    missing = cli("accounts", "unblock", "nobody")
    assert missing.returncode == 2
    assert "no account named 'nobody'" in missing.stderr
    wrong = cli("accounts", "unblock", "alpha", "--window", "monthly")
    assert wrong.returncode == 2
