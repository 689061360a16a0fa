"""The session hooks with the real Codex CLI: trusted as we hash them, and the user's still run."""

from __future__ import annotations

import json
import shlex
from pathlib import Path

import pytest

from codex_supervisor import hooks
from codex_supervisor.accounts import AccountPool
from codex_supervisor.events import CollectingSink
from codex_supervisor.hooks import trust_hash
from codex_supervisor.supervisor import Supervisor, SupervisorConfig
from codex_supervisor.testing import FakeCodexBackend, hermetic_env, offline_flags

pytestmark = [pytest.mark.real_codex, pytest.mark.anyio]


@pytest.mark.parametrize("honest", [True, False], ids=["our-hash", "wrong-hash"])
async def test_the_binary_trusts_our_hooks_exactly_as_we_hash_them(
    tmp_path: Path,
    codex_bin: Path,
    codex_version: str,
    monkeypatch: pytest.MonkeyPatch,
    honest: bool,
) -> None:
    """hooks/list calls our two hooks trusted; with another hash, untrusted (the check can fail)."""
    monkeypatch.setattr(hooks, "_verified", {})
    if not honest:
        monkeypatch.setattr(hooks, "trust_hash", lambda *a, **k: "sha256:" + "0" * 64)
    env = hermetic_env(tmp_path / "unused-home", tmp_path)
    assert await hooks.hooks_trusted(str(codex_bin), codex_version, environ=env) is honest


class _World:
    def __init__(self, root: Path, backend: FakeCodexBackend, codex: Path) -> None:
        self.root, self.backend, self.codex = root, backend, codex
        self.base = root / "codex-home"
        backend.write_codex_home(self.base)
        self.pool = AccountPool(root=root / "pool", base_codex_home=self.base)
        self.work = root / "work"
        self.work.mkdir()
        self.env = hermetic_env(self.base, root, backend)
        backend.add_account("id-alpha")
        self.pool.import_auth("alpha", backend.write_auth(root / "login", "id-alpha"))

    async def run(self, *flags: str, **config: object) -> Supervisor:
        sup = Supervisor(
            self.pool,
            config=SupervisorConfig(codex=str(self.codex), poll_interval=0.05, **config),  # type: ignore[arg-type]
            sink=CollectingSink(),
            environ=self.env,
        )
        argv = [*flags, "exec", "--skip-git-repo-check", *offline_flags(), "hello"]
        assert (await sup.run(argv, cwd=self.work)).exit_code == 0
        return sup


async def test_the_users_own_trusted_hook_still_runs_in_an_account_home(
    tmp_path: Path, backend: FakeCodexBackend, codex_bin: Path
) -> None:
    """A Stop hook the user trusted in ~/.codex runs beside ours under the supervisor.

    Codex keys trust by the path it read the hook from: in an account home the
    user's trust would not apply unless passed on re-keyed — with our hooks or
    without. A command line with its own ``hooks.state`` gets nothing of ours,
    and there the hook indeed does not run: the check can fail.
    """
    world = _World(tmp_path, backend, codex_bin)
    marker = tmp_path / "user-hook-ran"
    command = f"echo ran >> {shlex.quote(str(marker))}"
    (world.base / "hooks.json").write_text(
        json.dumps({"hooks": {"Stop": [{"hooks": [{"type": "command", "command": command}]}]}})
    )
    key = f"{world.base}/hooks.json:stop:0:0"
    digest = trust_hash("stop", command, timeout=600)  # Codex's default timeout
    with (world.base / "config.toml").open("a") as config:
        config.write(f'\n[hooks.state."{key}"]\ntrusted_hash = "{digest}"\n')
    for setting in (True, None, False):  # ours too, ours where there is no /proc, none
        await world.run(session_hooks=setting)
        assert marker.read_text() == "ran\n"
        marker.unlink()
    await world.run("-c", "hooks.state={}")
    assert not marker.exists()  # untrusted in the account home: Codex skips it
