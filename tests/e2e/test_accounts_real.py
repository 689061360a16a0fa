"""The account pool with the real Codex CLI: login, shared sessions, cross-account resume."""

from __future__ import annotations

import contextlib
import json
import re
import stat
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from codex_supervisor.accounts import AccountPool, AuthMode
from codex_supervisor.config import child_environment
from codex_supervisor.quota import QuotaService, UsageEndpointSource
from codex_supervisor.testing import FakeCodexBackend, PtyProcess, hermetic_env, offline_flags

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


# -- removing an account while a supervised session runs on it ---------------------------

CLI = Path(__file__).resolve().parents[2] / "examples" / "cli.py"

_DRIVER = r"""
import json, sys
from pathlib import Path
from codex_supervisor.accounts import AccountPool
from codex_supervisor.supervisor import Supervisor, SupervisorConfig

cfg = json.loads(sys.argv[1])
pool = AccountPool(root=Path(cfg["pool"]), base_codex_home=Path(cfg["base"]))
events = open(cfg["events"], "a", buffering=1)

def sink(event):
    events.write(json.dumps({"name": event.name, "message": event.message}) + "\n")

supervisor = Supervisor(
    pool,
    config=SupervisorConfig(codex=cfg["codex"], poll_interval=0.05),
    sink=sink,
    environ=cfg["env"],
)
code = supervisor.run_sync(cfg["argv"], cwd=cfg["cwd"]).exit_code
print("SUPERVISOR_EXIT", code, flush=True)
sys.exit(code)
"""


def _until(predicate: Callable[[], bool], what: str, tui: PtyProcess, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}:\n{tui.text[-3000:]}"
        time.sleep(0.05)


def _refresh_token(auth_json: Path) -> str | None:
    try:
        token = json.loads(auth_json.read_text())["tokens"]["refresh_token"]
    except (OSError, ValueError, KeyError):  # mid-rename, or not written yet
        return None
    return token if isinstance(token, str) else None


def _answered(backend: FakeCodexBackend, prompt: str) -> bool:
    return any(r.status == 200 and prompt in r.input_texts for r in backend.responses_requests())


def test_removing_the_account_of_a_running_session_never_breaks_it(
    tmp_path: Path, tls_backend: FakeCodexBackend, codex_bin: Path
) -> None:
    """A TUI session runs on the only account: `remove` is refused, `--force` takes it out.

    Codex then has to refresh its token (the backend expired it) and exits
    cleanly at Ctrl-C; the refreshed login is not lost: it is in the folder
    set aside once the session ended, and no refresh token was replayed.
    """
    backend = tls_backend
    base = tmp_path / "codex-home"
    backend.write_codex_home(base)
    pool = AccountPool(root=tmp_path / "pool", base_codex_home=base)
    backend.add_account("id-alpha")
    pool.import_auth("alpha", backend.write_auth(tmp_path / "login-alpha", "id-alpha"))
    original = backend.account("id-alpha").refresh_token
    work = tmp_path / "work"
    work.mkdir()
    events = tmp_path / "events.jsonl"
    driver = tmp_path / "driver.py"
    driver.write_text(_DRIVER)
    env = dict(hermetic_env(base, tmp_path, backend), TERM="xterm-256color")
    cfg = {
        "pool": str(pool.root),
        "base": str(base),
        "codex": str(codex_bin),
        "events": str(events),
        "env": env,
        "argv": ["--no-alt-screen", *offline_flags(), "first prompt"],
        "cwd": str(work),
    }
    remove = [sys.executable, str(CLI), "--pool", str(pool.root), "--codex-home", str(base)]
    remove += ["accounts", "remove", "alpha"]
    folder = pool.root / "accounts" / "alpha"
    with PtyProcess([sys.executable, str(driver), json.dumps(cfg)], env=env, cwd=work) as tui:
        _until(lambda: events.exists() and "session_bound" in events.read_text(), "bind", tui)
        _until(lambda: _answered(backend, "first prompt"), "the first answer", tui)

        refused = subprocess.run(remove, capture_output=True, text=True, timeout=60, check=False)
        assert refused.returncode == 1, refused.stdout + refused.stderr
        assert refused.stderr.startswith("codex-supervisor: error: account 'alpha' is in use by ")
        assert "--force" in refused.stderr
        assert [a.name for a in pool.accounts()] == ["alpha"]

        forced = subprocess.run(
            [*remove, "--force"], capture_output=True, text=True, timeout=60, check=False
        )
        assert forced.returncode == 0, forced.stdout + forced.stderr
        assert f"its folder stays at {folder}" in forced.stdout
        assert pool.accounts() == []

        # The next request is refused until Codex refreshes its token, which
        # it writes to the auth.json of its home.
        backend.expire_access_token("id-alpha")
        deadline = time.monotonic() + 60
        while not _answered(backend, "second prompt"):
            assert time.monotonic() < deadline, tui.text[-3000:]
            tui.write("second prompt")
            time.sleep(0.3)
            tui.write("\r")
            inner = time.monotonic() + 10
            while not _answered(backend, "second prompt") and time.monotonic() < inner:
                time.sleep(0.05)
        # Codex wrote the refreshed login to its home, which stayed in place.
        auth_path = folder / "home" / "auth.json"
        _until(lambda: _refresh_token(auth_path) not in (None, original), "the refresh", tui)
        # Ctrl-C at the idle prompt quits (typed again if the TUI asks to confirm).
        deadline = time.monotonic() + 60
        while tui.proc.poll() is None:
            assert time.monotonic() < deadline, tui.text[-3000:]
            tui.write("\x03")
            with contextlib.suppress(subprocess.TimeoutExpired):
                tui.wait(timeout=5)
        code = tui.wait()
    assert code == 0, tui.text[-3000:]
    assert "SUPERVISOR_EXIT 0" in tui.text
    assert backend.account("id-alpha").refresh_count >= 1
    backend.assert_no_replay()
    # The session's last occupant left: the folder was set aside, with the
    # login Codex refreshed meanwhile. (Codex may refresh once more for a
    # side request and, quitting at that moment, keep the result only in
    # memory: that is Codex's own race, the same with the account in the pool.)
    assert not folder.exists()
    [aside] = list((pool.root / "accounts").glob(".removed-alpha-*"))
    assert _refresh_token(aside / "home" / "auth.json") not in (None, original)
    # A clean exit: Codex deleted its thread writer lock.
    locks = [p.name for p in (base / "thread-writer-locks").iterdir()]
    assert [name for name in locks if not name.startswith(".")] == []
