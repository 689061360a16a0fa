"""The app-server client and turn waiter driving the real Codex 0.169.0 app-server."""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import subprocess
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import attrs
import pytest

from codex_supervisor.appserver import AppServerClient, InitializeResult, ThreadInfo, Turn, run_turn
from codex_supervisor.appserver.turns import TurnError
from codex_supervisor.config import child_environment
from codex_supervisor.testing import Behaviour, FakeCodexBackend, offline_flags

pytestmark = [pytest.mark.real_codex, pytest.mark.anyio]


@pytest.fixture
async def client(
    codex_bin: Path, backend: FakeCodexBackend, world: Any
) -> AsyncIterator[AppServerClient]:
    """A real app-server on a hermetic CODEX_HOME talking to the fake backend."""
    backend.add_account("acct-a")
    home = backend.write_codex_home(world.codex_home(), "acct-a")
    c = await AppServerClient.spawn(
        codex_bin,
        codex_home=home,
        environ=world.env(home, backend),
        args=offline_flags(),
        cwd=world.work,
    )
    try:
        yield c
    finally:
        backend.release_stalls()
        await c.aclose()


def _our_tasks() -> list[asyncio.Task[Any]]:
    return [
        t
        for t in asyncio.all_tasks()
        if not t.done() and "codex_supervisor" in t.get_coro().cr_code.co_filename  # type: ignore[union-attr]
    ]


async def test_turn_completes_with_final_message_and_rate_limits(
    client: AppServerClient, backend: FakeCodexBackend, world: Any
) -> None:
    """A normal turn settles on turn/completed with the reply and a rate-limit snapshot."""
    backend.script(Behaviour.reply("Forty-two."))
    thread = await client.thread_start({"cwd": str(world.work)})
    assert thread.path is not None
    result = await run_turn(client, thread.id, "What is the answer?", stall_timeout=30)
    assert result.status == "completed"
    assert not result.inferred
    assert result.final_message == "Forty-two."
    assert result.rate_limits is not None
    assert result.rate_limits_raw is not None
    assert result.rate_limits_raw["primary"]["windowDurationMins"] == 300
    assert any(item["type"] == "agentMessage" for item in result.items)


async def test_app_server_killed_mid_turn_settles_promptly(
    client: AppServerClient, backend: FakeCodexBackend, world: Any
) -> None:
    """SIGKILL of the app-server's group mid-turn settles the waiter as failed within 5 s."""
    backend.script(Behaviour.stall())
    thread = await client.thread_start({"cwd": str(world.work)})
    watch = client.subscribe({"turn/started"})
    waiter = asyncio.ensure_future(run_turn(client, thread.id, "hang please"))
    await asyncio.wait_for(watch.get(), 30)
    watch.close()
    assert client.pid is not None
    killed_at = time.monotonic()
    os.killpg(client.pid, signal.SIGKILL)
    result = await asyncio.wait_for(waiter, 10)
    assert time.monotonic() - killed_at < 5
    assert result.status == "failed"
    assert result.exit_code == -signal.SIGKILL
    assert result.error is not None
    assert "exited before the turn completed" in result.error.message
    await client.aclose()
    assert _our_tasks() == []


async def test_usage_limit_turn_fails_with_usage_limit_exceeded(
    client: AppServerClient, backend: FakeCodexBackend, world: Any
) -> None:
    """A 429 usage_limit_reached turn fails with codexErrorInfo usageLimitExceeded."""
    backend.script(Behaviour.usage_limit())
    thread = await client.thread_start({"cwd": str(world.work)})
    result = await run_turn(client, thread.id, "anything", stall_timeout=30)
    assert result.status == "failed"
    assert result.usage_limit_exceeded
    assert result.error is not None
    assert not result.error.will_retry
    assert not result.inferred


async def test_stalled_turn_is_interrupted(
    client: AppServerClient, backend: FakeCodexBackend, world: Any
) -> None:
    """A stall_timeout sends turn/interrupt; the real app-server answers interrupted."""
    backend.script(Behaviour.stall())
    thread = await client.thread_start({"cwd": str(world.work)})
    result = await asyncio.wait_for(run_turn(client, thread.id, "hang", stall_timeout=2), 20)
    assert result.status == "interrupted"
    assert result.error is not None
    assert "no progress" in result.error.message


def _wire_names(cls: type) -> set[str]:
    return {f.metadata["wire"] for f in attrs.fields(cls)}


def test_models_match_the_generated_schema(codex_bin: Path, tmp_path: Path) -> None:
    """Field names our models read exist in the pinned binary's protocol schema (drift check)."""
    out = tmp_path / "schema"
    subprocess.run(
        [str(codex_bin), "app-server", "generate-json-schema", "--out", str(out)],
        check=True,
        capture_output=True,
        timeout=60,
    )

    def load(name: str) -> dict[str, Any]:
        schema: dict[str, Any] = json.loads((out / name).read_text())
        return schema

    init = load("v1/InitializeResponse.json")
    assert _wire_names(InitializeResult) <= set(init["properties"])
    defs = load("v2/ThreadStartResponse.json")["definitions"]
    assert _wire_names(ThreadInfo) <= set(defs["Thread"]["properties"])
    assert _wire_names(Turn) <= set(defs["Turn"]["properties"])
    assert set(defs["TurnStatus"]["enum"]) == {"completed", "interrupted", "failed", "inProgress"}
    assert {"message", "codexErrorInfo"} <= set(defs["TurnError"]["properties"])
    assert "usageLimitExceeded" in json.dumps(defs["CodexErrorInfo"])
    assert "final_answer" in json.dumps(defs["MessagePhase"])
    assert {f.name for f in attrs.fields(TurnError)} == {
        "message",
        "codex_error_info",
        "will_retry",
    }
    error = load("v2/ErrorNotification.json")
    assert {"error", "willRetry", "threadId", "turnId"} <= set(error["properties"])
    completed = load("v2/TurnCompletedNotification.json")
    assert {"threadId", "turn"} <= set(completed["properties"])
    start = load("v2/TurnStartParams.json")
    assert {"threadId", "input"} <= set(start["required"])
    interrupt = load("v2/TurnInterruptParams.json")
    assert {"threadId", "turnId"} <= set(interrupt["properties"])
    methods = json.dumps(load("ServerRequest.json"))
    for method in ("item/commandExecution/requestApproval", "item/fileChange/requestApproval"):
        assert method in methods


async def test_ws_transport_completes_a_turn(
    codex_bin: Path, backend: FakeCodexBackend, world: Any
) -> None:
    """Over `--listen ws://127.0.0.1:0` the client initializes and completes a turn."""
    backend.add_account("acct-ws")
    home = backend.write_codex_home(world.codex_home("ws-home"), "acct-ws")
    env = child_environment(home, world.env(home, backend))
    server = subprocess.Popen(
        [str(codex_bin), "app-server", "--listen", "ws://127.0.0.1:0", *offline_flags()],
        env=env,
        cwd=world.work,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        assert server.stderr is not None
        url = None
        deadline = time.monotonic() + 30
        while url is None and time.monotonic() < deadline:
            line = await asyncio.to_thread(server.stderr.readline)
            found = re.search(r"listening on: (ws://127\.0\.0\.1:\d+)", line)
            url = found.group(1) if found else None
        assert url, "the app-server never said where it listens"
        client = await AppServerClient.connect_ws(url)
        async with client:
            thread = await client.thread_start({"cwd": str(world.work)})
            result = await run_turn(client, thread.id, "over websockets", stall_timeout=30)
        assert result.status == "completed"
        assert result.final_message == backend.reply_text
        assert [r.account_id for r in backend.responses_requests()] == ["acct-ws"]
    finally:
        os.killpg(server.pid, signal.SIGKILL)
        server.wait()
        assert server.stderr is not None
        server.stderr.close()
    assert _our_tasks() == []
