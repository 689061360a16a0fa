"""The reference CLI's `demo` and `run` commands, end to end."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from codex_supervisor.accounts import AccountPool
from codex_supervisor.lease import FileLock
from codex_supervisor.testing import Behaviour, FakeCodexBackend, hermetic_env, offline_flags

CLI = Path(__file__).resolve().parents[2] / "examples" / "cli.py"


def _cli(*args: str, env: dict[str, str] | None = None, timeout: float = 180) -> Any:
    base = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": os.environ.get("HOME", "/")}
    return subprocess.run(
        [sys.executable, str(CLI), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env or base,
        stdin=subprocess.DEVNULL,
        check=False,
    )


def test_demo_with_the_simulator_prewarms_rotates_and_resumes(tmp_path: Path) -> None:
    """`demo` (simulator): a pre-warm, one rotation at the boundary, one session, exit 0."""
    result = _cli("demo", env={"PATH": os.environ.get("PATH", ""), "HOME": str(tmp_path)})
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    assert "[prewarm_ready] successor ready: beta" in out
    assert re.search(r"\[rotating\] rotating alpha -> beta at the turn boundary", out)
    assert "[resumed] resumed session" in out
    assert re.search(r"sessions: 1 \(", out)
    assert "rotations: 1; refresh-token replays: 0" in out
    assert out.index("[prewarm_ready]") < out.index("[rotating]") < out.index("[resumed]")


@pytest.mark.real_codex
def test_demo_with_the_real_binary_cuts_over_and_resumes(codex_bin: Path, tmp_path: Path) -> None:
    """`demo --codex BIN`: the real Codex hits the limit on alpha and resumes on beta."""
    result = _cli(
        "demo",
        "--codex",
        str(codex_bin),
        env={"PATH": os.environ.get("PATH", ""), "HOME": str(tmp_path)},
    )
    assert result.returncode == 0, result.stdout + result.stderr
    # Whether the supervisor sees the failed turn before Codex exits decides
    # the wording ("now" or "at the turn boundary"); the cutover is the same.
    assert re.search(
        r"\[rotating\] rotating alpha -> beta (now|at the turn boundary)", result.stdout
    )
    assert re.search(r"sessions: 1 \(", result.stdout)


@pytest.mark.parametrize(
    "where",
    [
        ["demo", "--codex", "{nope}"],
        ["--codex", "{nope}", "demo"],  # the global option counts for demo too
        [
            "--codex",
            "{nope}",
            "--pool",
            "{pool}",
            "--codex-home",
            "{pool}",
            "accounts",
            "login",
            "a",
        ],
    ],
)
def test_a_missing_codex_says_how_to_get_it_with_exit_127(tmp_path: Path, where: list[str]) -> None:
    """Every command: one line on stderr with the prefix and the fix, exit 127, no traceback."""
    args = [w.format(nope=tmp_path / "nope", pool=tmp_path / "pool") for w in where]
    result = _cli(*args)
    assert result.returncode == 127
    assert result.stdout == ""
    assert result.stderr.startswith(
        f"codex-supervisor: error: cannot run Codex at '{tmp_path}/nope'"
    )
    assert "npm install -g @openai/codex" in result.stderr
    assert "--codex BIN" in result.stderr
    assert "Traceback" not in result.stderr


def test_a_pool_that_is_a_file_is_named_not_an_errno(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("")
    result = _cli("--pool", str(tmp_path / "file"), "status")
    assert result.returncode == 2
    assert result.stderr == f"codex-supervisor: error: --pool {tmp_path}/file is not a folder\n"


def _pool_on(backend: FakeCodexBackend, root: Path, **accounts: dict[str, Any]) -> AccountPool:
    base = backend.write_codex_home(root / "codex-home")
    pool = AccountPool(root=root / "pool", base_codex_home=base)
    for name, quota in accounts.items():
        backend.add_account(f"id-{name}", **quota)
        pool.import_auth(name, backend.write_auth(root / f"login-{name}", f"id-{name}"))
    return pool


@pytest.mark.real_codex
def test_run_prints_a_rotation_notice_and_returns_codex_exit_code(
    codex_bin: Path, backend: FakeCodexBackend, tmp_path: Path
) -> None:
    """`run -- exec ...` cuts over on a 429 and prints one notice line: from, to, why, session."""
    pool = _pool_on(backend, tmp_path, alpha={"five_hour_used": 10}, beta={"five_hour_used": 40})
    backend.script(Behaviour.usage_limit(), account_id="id-alpha")
    work = tmp_path / "work"
    work.mkdir()
    env = hermetic_env(pool.base_codex_home, tmp_path, backend)
    args = [
        "--pool",
        str(pool.root),
        "--codex-home",
        str(pool.base_codex_home),
        "--codex",
        str(codex_bin),
        "run",
        "--",
        "exec",
        "--skip-git-repo-check",
        *offline_flags(),
        "-C",
        str(work),
        "hello",
    ]
    result = _cli(*args, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    [notice] = [line for line in result.stderr.splitlines() if "rotating" in line]
    session = backend.responses_requests()[0].session_id
    assert notice.startswith("codex-supervisor: rotating alpha -> beta (")
    assert notice.endswith(f"session {session}")
    assert "Hello from the fake backend." in result.stdout
    # When it ends: where the session ran, each rotation, and how to go on supervised.
    lines = result.stderr.splitlines()
    start = lines.index(f"codex-supervisor: session {session} ran on alpha, beta; 1 rotation")
    assert re.fullmatch(r"  \d\d:\d\d \S+ alpha -> beta: .*usage limit.*", lines[start + 1])
    again = f"codex-supervisor run -- exec resume {session} PROMPT"
    assert lines[start + 2] == f"codex-supervisor: to go on supervised: {again}"


@pytest.mark.real_codex
def test_run_takes_codex_home_and_strategy_from_the_pools_config_file(
    codex_bin: Path, backend: FakeCodexBackend, tmp_path: Path
) -> None:
    """No flag, no variable: <pool>/config.toml names the binary, the base home and `drain`."""
    # Headroom would choose beta (more left); drain takes alpha, the first in order.
    pool = _pool_on(backend, tmp_path, alpha={"five_hour_used": 60}, beta={"five_hour_used": 10})
    (pool.root / "config.toml").write_text(
        f"codex = {json.dumps(str(codex_bin))}\n"
        f"codex_home = {json.dumps(str(pool.base_codex_home))}\n"
        'strategy = "drain"\n'
    )
    work = tmp_path / "work"
    work.mkdir()
    env = hermetic_env(pool.base_codex_home, tmp_path, backend)
    del env["CODEX_HOME"]  # (else the variable outranks the file)
    shown = json.loads(_cli("--pool", str(pool.root), "config", "show", "--json", env=env).stdout)
    assert {k: v["source"] for k, v in shown["settings"].items() if k != "pool"} == {
        "codex": "config file",
        "codex_home": "config file",
        "strategy": "config file",
        "utc": "default",
        "rotate_at": "default",
        "prewarm_margin": "default",
        "hysteresis": "default",
        "backend": "default",
        "pool_name": "default",
        "credential_key_file": "default",
    }
    args = ["exec", "--skip-git-repo-check", *offline_flags(), "-C", str(work), "hello"]
    result = _cli("--pool", str(pool.root), "run", "--", *args, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    assert [r.account_id for r in backend.responses_requests()] == ["id-alpha"]
    # The base home of the file is the one the account homes link to.
    assert list((pool.base_codex_home / "sessions").rglob("rollout-*.jsonl"))


@pytest.mark.real_codex
def test_run_waits_with_a_countdown_until_the_earliest_reset(
    codex_bin: Path, backend: FakeCodexBackend, tmp_path: Path
) -> None:
    """Every account blocked: `run -v` counts down to the earliest reset, then Codex runs."""
    pool = _pool_on(backend, tmp_path, alpha={"five_hour_used": 100}, beta={"weekly_used": 100})
    soon = int(time.time()) + 4
    backend.set_quota("id-alpha", five_hour_resets_at=soon)
    work = tmp_path / "work"
    work.mkdir()
    env = hermetic_env(pool.base_codex_home, tmp_path, backend)
    result = _cli(
        "-v",
        "--pool",
        str(pool.root),
        "--codex-home",
        str(pool.base_codex_home),
        "--codex",
        str(codex_bin),
        "run",
        "--",
        "exec",
        "--skip-git-repo-check",
        *offline_flags(),
        "-C",
        str(work),
        "after the wait",
        env=env,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    waits = [line for line in result.stderr.splitlines() if "every account is blocked" in line]
    assert len(waits) >= 2
    assert [r.account_id for r in backend.responses_requests()] == ["id-alpha"]
    assert backend.responses_requests()[0].at >= soon - 1


def test_status_shows_quarantined_logins_with_what_to_do(
    backend: FakeCodexBackend, tmp_path: Path
) -> None:
    """`status` and `status --json` list logins in quarantine: where, since, why, what to do.

    A login no account owns (its account id left the pool) says how to import it; one of
    an account of the pool holds that account back (HELD BACK), whatever name it was
    quarantined under; one whose cause is gone is taken back by `status` itself.
    """
    pool = _pool_on(backend, tmp_path, alpha={}, beta={})
    backend.add_account("id-gone")
    gone = pool.take_back_auth("gone", backend.write_auth(tmp_path / "gone-home", "id-gone"))
    assert gone is not None
    # A newer login of alpha that says nothing of when it was refreshed: it stays.
    undated = backend.write_auth(tmp_path / "alpha-home", "id-alpha")
    data = json.loads(undated.read_text())
    del data["last_refresh"]
    data["tokens"]["refresh_token"] = "rt-undated"
    undated.write_text(json.dumps(data))
    stuck = pool.take_back_auth("somename", undated)
    assert stuck is not None
    # A newer login of beta quarantined for a busy pool lock: taken back by `status`.
    pool.lock_timeout = 0.0
    with FileLock(pool.root / "pool.lock"):
        busy = pool.take_back_auth("beta", backend.write_auth(tmp_path / "beta-home", "id-beta"))
    assert busy is not None
    busy_token = json.loads(busy.path.read_text())["tokens"]["refresh_token"]
    args = ["--pool", str(pool.root), "--codex-home", str(pool.base_codex_home), "status"]
    text = _cli(*args)
    assert text.returncode == 0, text.stderr
    out = text.stdout
    assert "QUARANTINED LOGINS: 2" in out
    assert f"gone: {gone.path}" in out
    assert "why: no account of the pool has its account id id-gone" in out
    assert f"accounts import gone --auth-json {gone.path}" in out
    assert f"somename: {stuck.path}" in out
    assert "it is 'alpha''s login" in out
    [held] = [line for line in out.splitlines() if "HELD BACK" in line]
    assert "'alpha' is not used" in held
    assert str(stuck.path) in held
    assert "next run: beta" in out
    assert not busy.path.exists()
    beta_auth = pool.account_home("beta") / "auth.json"
    assert json.loads(beta_auth.read_text())["tokens"]["refresh_token"] == busy_token
    as_json = _cli(*args, "--json")
    assert as_json.returncode == 0, as_json.stderr
    items = {q["account"]: q for q in json.loads(as_json.stdout)["quarantined"]}
    assert set(items) == {"somename", "gone"}
    assert items["gone"]["path"] == str(gone.path)
    assert items["gone"]["in_pool"] is False
    assert items["gone"]["owner"] is None
    assert items["gone"]["account_id"] == "id-gone"
    assert items["somename"]["owner"] == "alpha"
    assert items["somename"]["in_pool"] is True
    assert "no last_refresh" in items["somename"]["reason"]
    assert items["somename"]["since"].endswith("Z")
    accounts = {a["name"]: a for a in json.loads(as_json.stdout)["accounts"]}
    assert str(stuck.path) in accounts["alpha"]["held_back"]
    assert accounts["beta"]["held_back"] is None
    for item in (gone, stuck):
        token = json.loads(item.path.read_text())["tokens"]["refresh_token"]
        assert token not in out
        assert token not in as_json.stdout


def test_verbose_says_each_event_once(tmp_path: Path) -> None:
    """-v: the library's DEBUG log names every event; the CLI does not print them again."""
    backend_free = _cli(
        "-v", "--pool", str(tmp_path / "pool"), "--codex-home", str(tmp_path), "demo"
    )
    assert backend_free.returncode == 0, backend_free.stderr[-2000:]
    logged = backend_free.stderr.count("event prewarm_ready: ")
    assert logged == 1
    assert "codex-supervisor: prewarm_ready" not in backend_free.stderr


@pytest.mark.real_codex
def test_run_no_wait_fails_at_once_and_never_says_it_waits(
    codex_bin: Path, backend: FakeCodexBackend, tmp_path: Path
) -> None:
    """Every account blocked with `--no-wait`: exit 1, one error naming the first reset."""
    pool = _pool_on(backend, tmp_path, alpha={"five_hour_used": 100})
    backend.set_quota("id-alpha", five_hour_resets_at=int(time.time()) + 600)
    env = hermetic_env(pool.base_codex_home, tmp_path, backend)
    result = _cli(
        "--pool", str(pool.root), "--codex-home", str(pool.base_codex_home), "--codex",
        str(codex_bin), "run", "--no-wait", "--", "exec", "--skip-git-repo-check", "hi",
        env=env,
    )  # fmt: skip
    assert result.returncode == 1, result.stderr
    assert "waiting" not in result.stderr
    [error] = [line for line in result.stderr.splitlines() if "error:" in line]
    assert error.startswith("codex-supervisor: error: ")
    assert "the first is free at " in error
    assert backend.responses_requests() == []
