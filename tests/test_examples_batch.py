"""examples/batch_exec.py: a batch of exec prompts as one supervised session."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path
from types import ModuleType

import pytest

from codex_supervisor import AccountPool
from codex_supervisor.testing import Behaviour, FakeCodexBackend, install_simulator

pytestmark = pytest.mark.anyio

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
EXAMPLE = EXAMPLES / "batch_exec.py"
PROMPTS = ["first step", "second step", "third step"]


@pytest.fixture(scope="module")
def example() -> Iterator[ModuleType]:
    """The example module, loaded from its file with examples/ importable (for weekday_policy)."""
    with pytest.MonkeyPatch.context() as mp:
        mp.syspath_prepend(str(EXAMPLES))
        spec = importlib.util.spec_from_file_location("batch_exec_example", EXAMPLE)
        assert spec is not None
        assert spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        yield module


class Batch:
    """A pool of simulator-backed accounts on a fake backend, and the batch's arguments."""

    def __init__(self, root: Path, backend: FakeCodexBackend) -> None:
        self.root = root
        self.backend = backend
        self.codex = install_simulator(root / "bin")
        self.base = root / "codex-home"
        backend.write_codex_home(self.base)
        self.pool = AccountPool(root=root / "pool", base_codex_home=self.base)
        self.work = root / "work"
        self.work.mkdir()
        self.env = {"PATH": "/usr/bin:/bin", "HOME": str(root), **backend.codex_env()}

    def add(self, name: str, five_hour_used: float = 0.0) -> None:
        self.backend.add_account(f"id-{name}", five_hour_used=five_hour_used)
        self.pool.import_auth(
            name, self.backend.write_auth(self.root / f"login-{name}", f"id-{name}")
        )

    def served(self) -> list[str]:
        """The account of every /v1/responses request, in order."""
        return [str(r.account_id).removeprefix("id-") for r in self.backend.responses_requests()]


@pytest.fixture
def batch(tmp_path: Path, backend: FakeCodexBackend) -> Batch:
    return Batch(tmp_path, backend)


async def test_a_usage_limit_mid_batch_keeps_one_session(example: ModuleType, batch: Batch) -> None:
    """A 429 on prompt 2 moves it to beta; all three prompts share one session and exit 0."""
    batch.add("alpha", five_hour_used=10)
    batch.add("beta", five_hour_used=40)
    batch.backend.script(Behaviour.reply("done"), Behaviour.usage_limit(), account_id="id-alpha")
    results = await example.run_batch(
        batch.pool, PROMPTS, codex=str(batch.codex), cwd=batch.work, environ=batch.env
    )
    assert [r.exit_code for r in results] == [0, 0, 0]
    assert example.exit_code(results) == 0
    assert [r.accounts for r in results] == [("alpha",), ("alpha", "beta"), ("beta",)]
    requests = batch.backend.responses_requests()
    assert batch.served() == ["alpha", "alpha", "beta", "beta"]
    assert [r.status for r in requests] == [200, 429, 200, 200]
    [session] = {r.session_id for r in requests}
    assert session is not None
    assert {r.session_id for r in results} == {session}
    assert "second step" in requests[2].input_texts  # prompt 2 came along to beta
    assert requests[3].input_texts[-1] == "third step"
    assert PROMPTS[0] in requests[3].input_texts  # the whole conversation, in one session
    line = example.summary(results, len(PROMPTS))
    assert "alpha" in line
    assert "beta" in line
    assert session in line


async def test_a_weekend_only_account_never_serves_on_a_weekday(
    example: ModuleType, batch: Batch
) -> None:
    """The freest account, weekend-only in a zone where today is a weekday, serves nothing."""
    batch.add("personal", five_hour_used=0)
    batch.add("work", five_hour_used=50)

    # Today is always a weekday for this policy, whatever the real date: the
    # test exercises the wiring, not the calendar (test_examples_policy does).
    class AlwaysWeekday(example.WeekdayPolicy):  # type: ignore[name-defined,misc]
        def _weekend_starts(self, now: datetime) -> datetime | None:
            return now + timedelta(days=1)

    policy = AlwaysWeekday(weekend_only={"personal"})
    results = await example.run_batch(
        batch.pool,
        PROMPTS,
        codex=str(batch.codex),
        cwd=batch.work,
        policy=policy,
        environ=batch.env,
    )
    assert example.exit_code(results) == 0
    assert batch.served() == ["work", "work", "work"]
    assert all(r.accounts == ("work",) for r in results)
    assert len({r.session_id for r in results}) == 1


def test_main_runs_as_a_script(batch: Batch) -> None:
    """The script runs a two-prompt batch, one line per prompt and a summary, exit 0."""
    batch.add("alpha")
    env = {**batch.env, "PATH": os.environ.get("PATH", "/usr/bin:/bin")}
    result = subprocess.run(
        [
            sys.executable,
            str(EXAMPLE),
            "--pool",
            str(batch.pool.root),
            "--codex-home",
            str(batch.base),
            "--codex",
            str(batch.codex),
            "--cwd",
            str(batch.work),
            "--weekend-only",
            "nobody",
            "hello",
            "-and again",
        ],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    # Codex's own output (the final message of each run) goes to stdout as well.
    lines = [line for line in result.stdout.splitlines() if "session" in line]
    [session] = {r.session_id for r in batch.backend.responses_requests()}
    assert lines == [
        f"alpha  session {session}  exit 0  'hello'",
        f"alpha  session {session}  exit 0  '-and again'",
        f"2/2 prompts run, 0 failed; session {session}; accounts alpha",
    ]
