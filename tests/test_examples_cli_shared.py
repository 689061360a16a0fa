"""The reference CLI on a pool several machines share: config, env, unhold (real Redis)."""

from __future__ import annotations

import json
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from codex_supervisor.credentials import CredentialKey, RedisCredentialStore
from codex_supervisor.testing import FakeCodexBackend, RedisServer

CLI = Path(__file__).resolve().parents[1] / "examples" / "cli.py"


def _host(root: Path, url: str, name: str, key_file: Path) -> dict[str, str]:
    """A machine's environment; its pool's config.toml names the shared backend."""
    (root / "pool").mkdir(parents=True)
    (root / "pool" / "config.toml").write_text(
        f'backend = "{url}"\npool_name = "{name}"\ncredential_key_file = "{key_file}"\n'
    )
    return {
        "HOME": str(root),
        "PATH": "/usr/bin:/bin",
        "CODEX_SUPERVISOR_HOME": str(root / "pool"),
        "CODEX_HOME": str(root / "codex-home"),
    }


def _cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(CLI), *args],
        check=False,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.fixture
def key_file(tmp_path: Path) -> Path:
    path = tmp_path / "key"
    path.write_text(CredentialKey.generate() + "\n")
    path.chmod(0o600)
    return path


def test_two_machines_see_one_pool_and_a_held_account_says_what_to_do(
    tmp_path: Path, backend: FakeCodexBackend, redis_server: RedisServer, key_file: Path
) -> None:
    name = uuid.uuid4().hex
    a = _host(tmp_path / "a", redis_server.url, name, key_file)
    b = _host(tmp_path / "b", redis_server.url, name, key_file)
    backend.add_account("id-alpha")
    backend.write_codex_home(tmp_path / "a" / "codex-home")
    backend.write_codex_home(tmp_path / "b" / "codex-home")
    login = backend.write_auth(tmp_path / "login", "id-alpha")
    done = _cli(a, "accounts", "import", "alpha", "--auth-json", str(login))
    assert done.returncode == 0, done.stderr
    listed = _cli(b, "accounts", "list", "--names")
    assert listed.returncode == 0, listed.stderr
    assert listed.stdout.split() == ["alpha"]  # added on a, seen on b
    assert "nothing to do" in _cli(b, "accounts", "unhold", "alpha").stdout

    # Machine a noted a change of alpha's login it never pushed, then died.
    store = RedisCredentialStore(redis_server.url, CredentialKey.from_file(key_file), pool=name)
    site_a = store.fetch("alpha")
    assert site_a is not None
    assert site_a.site is not None
    store.seen("alpha", site_a.site, b'{"last_refresh": "2099-01-01T00:00:00Z"}')
    status = _cli(b, "status", "--json")
    assert status.returncode == 0, status.stderr
    [entry] = json.loads(status.stdout)["accounts"]
    assert "held back" in entry["held_back"]
    assert site_a.site in entry["held_back"]
    assert "accounts unhold alpha" in entry["held_back"]
    text = _cli(b, "status").stdout
    assert "held back" in text
    lifted = _cli(b, "accounts", "unhold", "alpha")
    assert lifted.returncode == 0, lifted.stderr
    assert "taken as its newest" in lifted.stdout
    [entry] = json.loads(_cli(b, "status", "--json").stdout)["accounts"]
    assert entry["held_back"] is None


def test_shared_settings_errors_are_clear_and_never_show_the_password(
    tmp_path: Path, redis_server: RedisServer, key_file: Path
) -> None:
    env = _host(tmp_path / "a", "redis://user:hunter2@127.0.0.1:1/0", "team", key_file)
    shown = _cli(env, "config", "show")
    assert shown.returncode == 0, shown.stderr
    assert "redis://user:***@127.0.0.1:1/0" in shown.stdout
    assert "hunter2" not in shown.stdout
    down = _cli(env, "accounts", "list")
    assert down.returncode == 1
    assert "hunter2" not in down.stderr
    assert "cannot read the pool state in Redis" in down.stderr
    (tmp_path / "a" / "pool" / "config.toml").write_text(f'backend = "{redis_server.url}"\n')
    keyless = _cli(env, "accounts", "list")
    assert keyless.returncode == 2
    assert "credential_key_file" in keyless.stderr
    (tmp_path / "a" / "pool" / "config.toml").write_text('backend = "memcached://x"\n')
    wrong = _cli(env, "accounts", "list")
    assert wrong.returncode == 2
    assert "must be a Redis URL" in wrong.stderr
    key_file.chmod(0o644)
    env["CODEX_SUPERVISOR_BACKEND"] = redis_server.url
    env["CODEX_SUPERVISOR_CREDENTIAL_KEY_FILE"] = str(key_file)
    (tmp_path / "a" / "pool" / "config.toml").write_text("")
    exposed = _cli(env, "accounts", "list")
    assert exposed.returncode != 0
    assert "chmod 600" in exposed.stderr
