"""Two machines, one pool: two pool roots sharing a real redis-server, the real Codex binary.

Each "host" has its own pool folder, base Codex home, account homes and
environment; they share only the Redis URL and the credential key, as two
machines would.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from codex_supervisor.accounts import AccountPool
from codex_supervisor.credentials import CredentialKey
from codex_supervisor.testing import (
    Behaviour,
    FakeCodexBackend,
    RedisServer,
    hermetic_env,
    offline_flags,
)

pytestmark = [pytest.mark.real_codex, pytest.mark.anyio]


HOST_RUN = Path(__file__).with_name("host_run.py")


class Host:
    """One machine of the pool: its own folders and process, the shared Redis."""

    def __init__(  # noqa: PLR0917 - a test fixture's parts
        self,
        root: Path,
        backend: FakeCodexBackend,
        codex: Path,
        url: str,
        pool_name: str,
        key: str,
    ) -> None:
        root.mkdir()
        self.root = root
        self.codex = codex
        self.url = url
        self.key = key
        self.base = backend.write_codex_home(root / "codex-home")
        self.pool = AccountPool(
            root=root / "pool",
            base_codex_home=self.base,
            backend=url,
            pool_name=pool_name,
            credential_key=CredentialKey.from_text(key),
        )
        self.work = root / "work"
        self.work.mkdir()
        self.events = root / "events.jsonl"
        self.env = hermetic_env(self.base, root, backend)

    async def run(self, prompt: str) -> asyncio.subprocess.Process:
        """A supervised ``codex exec PROMPT`` on this host, in a process of its own."""
        spec = self.root / "spec.json"
        spec.write_text(json.dumps({
            "root": str(self.pool.root), "base": str(self.base), "url": self.url,
            "pool_name": self.pool.pool_name, "codex": str(self.codex), "work": str(self.work),
            "argv": ["exec", "--skip-git-repo-check", *offline_flags(), prompt],
            "env": self.env, "events": str(self.events),
        }))  # fmt: skip
        env = {**os.environ, "CODEX_SUPERVISOR_CREDENTIAL_KEY": self.key}
        with (self.root / "stderr").open("ab") as stderr:  # read when a test fails
            return await asyncio.create_subprocess_exec(
                sys.executable, str(HOST_RUN), str(spec), env=env,
                stdout=asyncio.subprocess.DEVNULL, stderr=stderr,
            )  # fmt: skip

    def of(self, kind: str) -> list[dict[str, Any]]:
        """This host's events of one kind so far."""
        if not self.events.exists():
            return []
        lines = [json.loads(line) for line in self.events.read_text().splitlines()]
        return [line for line in lines if line["event"] == kind]

    def launched(self) -> list[str]:
        return [e["account"] for e in self.of("child_launched")]

    def login(self, name: str) -> dict[str, Any]:
        data: dict[str, Any] = json.loads((self.pool.account_home(name) / "auth.json").read_text())
        return data


async def _until(check: Callable[[], object], what: str) -> None:
    deadline = time.monotonic() + 120
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"never happened: {what}")
        await asyncio.sleep(0.05)


@pytest.fixture
def hosts(
    tmp_path: Path, backend: FakeCodexBackend, codex_bin: Path, redis_server: RedisServer
) -> tuple[Host, Host]:
    key = CredentialKey.generate()
    name = uuid.uuid4().hex
    return (
        Host(tmp_path / "host-a", backend, codex_bin, redis_server.url, name, key),
        Host(tmp_path / "host-b", backend, codex_bin, redis_server.url, name, key),
    )


async def test_two_hosts_never_share_an_account_and_rotate_onto_the_others_refreshed_login(
    hosts: tuple[Host, Host], backend: FakeCodexBackend, tmp_path: Path
) -> None:
    """B runs alpha (refreshing its expired token) while A runs beta; A's beta runs out,
    A waits for alpha, B gives it back, A resumes on alpha with B's refreshed login."""
    a, b = hosts
    backend.add_account("id-alpha", five_hour_used=10, access_token_expired=True)
    backend.add_account("id-beta", five_hour_used=92)  # below the margin: alpha first
    for name in ("alpha", "beta"):  # both added on host a: host b gets them from Redis
        a.pool.import_auth(name, backend.write_auth(tmp_path / f"login-{name}", f"id-{name}"))
    a_old = a.login("alpha")
    # B's turn on alpha hangs until released, then answers; A's beta runs out at once.
    backend.script(Behaviour.hold("b is done"), account_id="id-alpha")
    backend.script(Behaviour.usage_limit(), account_id="id-beta")

    b_run = await b.run("work on b")
    # B launched on alpha, and Codex refreshed alpha's expired token there.
    await _until(lambda: backend.responses_requests("id-alpha"), "b's request on alpha")
    assert backend.account("id-alpha").refresh_count == 1
    refreshed = backend.account("id-alpha").refresh_token
    assert b.login("alpha")["tokens"]["refresh_token"] == refreshed
    assert a_old["tokens"]["refresh_token"] != refreshed  # a's own copy is now spent

    a_run = await a.run("work on a")
    # A cannot have alpha (B runs it): it starts on beta, which runs out, and waits.
    await _until(lambda: a.of("waiting_for_reset"), "a waiting for an account")
    assert a.launched() == ["beta"]
    backend.release_stalls()  # B's turn goes on and ends: alpha is given back
    assert await asyncio.wait_for(b_run.wait(), 120) == 0
    assert await asyncio.wait_for(a_run.wait(), 120) == 0

    assert b.launched() == ["alpha"]
    assert a.launched() == ["beta", "alpha"]
    # Never shared: A launched on alpha only after B's Codex on it had exited.
    [b_exit] = b.of("child_exited")
    assert a.of("child_launched")[1]["at"] >= b_exit["at"]
    # A ran alpha on B's refreshed login: accepted (the old access token is no
    # longer known to the backend), never refreshed again, never replayed.
    a_on_alpha = backend.responses_requests("id-alpha")[-1]
    assert a_on_alpha.status == 200
    assert a_on_alpha.session_id == a.of("session_bound")[0]["session_id"]
    assert backend.account("id-alpha").refresh_count == 1
    backend.assert_no_replay()
    assert a.login("alpha")["tokens"]["refresh_token"] == refreshed
