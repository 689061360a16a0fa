"""examples/gateway.py: per-workspace app-servers, a usage-limit rotation, threads kept."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from codex_supervisor import _toml
from codex_supervisor.accounts import AccountPool
from codex_supervisor.testing import Behaviour, FakeCodexBackend, codex_config, hermetic_env

pytestmark = pytest.mark.real_codex

GATEWAY = Path(__file__).resolve().parents[2] / "examples" / "gateway.py"


def test_gateway_rotates_a_workspace_on_the_usage_limit_and_keeps_its_thread(
    tmp_path: Path, backend: FakeCodexBackend, codex_bin: Path
) -> None:
    base = tmp_path / "base"
    backend.write_codex_home(base)
    accounts = AccountPool(root=tmp_path / "accounts", base_codex_home=base)
    for name, used in (("alpha", 5.0), ("beta", 30.0)):
        backend.add_account(f"id-{name}", five_hour_used=used)
        accounts.import_auth(name, backend.write_auth(tmp_path / f"login-{name}", f"id-{name}"))
    # alpha's second model request (ws-b's turn) hits the usage limit.
    backend.script(Behaviour.reply("first answer"), Behaviour.usage_limit(), account_id="id-alpha")
    config = tmp_path / "gateway.toml"
    config.write_text(_toml.dumps(codex_config(backend)))
    work = tmp_path / "work"
    work.mkdir()
    (tmp_path / "home").mkdir()
    env = hermetic_env(base, tmp_path / "home", backend)
    env["PYTHONPATH"] = str(Path(__file__).resolve().parents[2])
    result = subprocess.run(
        [
            sys.executable,
            str(GATEWAY),
            "--pool",
            str(tmp_path / "accounts"),
            "--codex-home",
            str(base),
            "--root",
            str(tmp_path / "gateway"),
            "--codex",
            str(codex_bin),
            "--config-toml",
            str(config),
            "--cwd",
            str(work),
            "ws-a=hello from a",
            "ws-b=hello from b",
            "ws-a=again from a",
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        stdin=subprocess.DEVNULL,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    lines = result.stdout.splitlines()
    assert re.fullmatch(r"ws-a: completed on alpha \(thread \S+\): first answer", lines[0])
    assert re.match(r"ws-b: completed on alpha -> beta \(thread \S+\)", lines[1])
    assert re.match(r"ws-a: completed on alpha \(thread \S+\)", lines[2])
    thread_a = re.search(r"thread (\S+)\)", lines[0]).group(1)  # type: ignore[union-attr]
    assert f"thread {thread_a})" in lines[2], "the second ws-a prompt continued the same thread"
    served = [(r.account_id, r.status) for r in backend.responses_requests()]
    # ws-a's server still runs on alpha (the gateway rotates a workspace only when
    # its own turn hits the limit), so its second prompt is served there.
    assert served == [("id-alpha", 200), ("id-alpha", 429), ("id-beta", 200), ("id-alpha", 200)]
    [alpha] = [a for a in accounts.accounts() if a.name == "alpha"]
    assert alpha.cooldowns, "the exhausted account was cooled down"
    backend.assert_no_replay()
    # Every server was stopped and every workspace's home archived.
    archives = list((tmp_path / "gateway" / "archives").rglob("*.tar.gz"))
    assert len(archives) == 2
    assert not list((tmp_path / "gateway" / "homes").iterdir())
