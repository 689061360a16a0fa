"""The real Codex CLI 0.169.0 against FakeCodexBackend: the test world works."""

from __future__ import annotations

import json
import os
import re
import select
import signal
import subprocess
import time
from collections.abc import Callable
from datetime import date
from pathlib import Path
from typing import Any

import pytest

from codex_supervisor.testing import (
    Behaviour,
    FakeCodexBackend,
    PtyProcess,
    decode_jwt_claims,
    offline_flags,
)

pytestmark = pytest.mark.real_codex

RunCodex = Callable[..., subprocess.CompletedProcess[str]]
_ROLLOUT_NAME = re.compile(
    r"^rollout-(\d{4})-(\d{2})-(\d{2})T\d{2}-\d{2}-\d{2}-"
    r"([0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12})\.jsonl$"
)


def _exec(*rest: str) -> list[str]:
    return ["exec", "--skip-git-repo-check", *offline_flags(), *rest]


def _rollouts(codex_home: Path) -> list[Path]:
    return sorted((codex_home / "sessions").rglob("rollout-*.jsonl"))


def _lines(path: Path) -> list[dict[str, Any]]:
    # Only complete lines: Codex may be in the middle of writing the last one.
    text = path.read_text()
    complete = text[: text.rfind("\n") + 1]
    return [json.loads(line) for line in complete.splitlines() if line.strip()]


def _events(lines: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [
        line["payload"]
        for line in lines
        if line.get("type") == "event_msg" and line["payload"].get("type") == kind
    ]


def _turn_markers(lines: list[dict[str, Any]]) -> list[str]:
    markers = ("task_started", "task_complete", "turn_aborted")
    return [
        line["payload"]["type"]
        for line in lines
        if line.get("type") == "event_msg" and line["payload"].get("type") in markers
    ]


def _session_id_from_stderr(stderr: str) -> str:
    found = re.search(r"session id: ([0-9a-f-]{36})", stderr)
    assert found, stderr[-2000:]
    return found.group(1)


def test_exec_completes_a_turn_and_mirrors_quota(
    run_codex: RunCodex, backend: FakeCodexBackend, world: Any
) -> None:
    """exec with a ChatGPT account writes a dated rollout whose rate limits mirror the backend."""
    backend.add_account("acct-a", five_hour_used=20, weekly_used=40, per_request_percent=5)
    home = backend.write_codex_home(world.codex_home(), "acct-a")

    result = run_codex(_exec("say hello"), codex_home=home, backend=backend)

    assert result.returncode == 0, result.stderr[-3000:]
    assert "Hello from the fake backend." in result.stdout
    [rollout] = _rollouts(home)
    match = _ROLLOUT_NAME.match(rollout.name)
    assert match, rollout.name
    year, month, day, session_id = match.groups()
    # The date folder is the local date the session started.
    assert rollout.parent.relative_to(home / "sessions") == Path(year, month, day)
    started = date(int(year), int(month), int(day))
    assert abs((date.today() - started).days) <= 1  # noqa: DTZ011 - Codex uses the local date

    lines = _lines(rollout)
    assert lines[0]["type"] == "session_meta"
    assert lines[0]["payload"]["id"] == session_id
    assert lines[0]["payload"]["cwd"] == str(world.work)
    assert lines[0]["payload"]["creator_account_id"] == "acct-a"
    assert _turn_markers(lines) == ["task_started", "task_complete"]

    [request] = backend.responses_requests("acct-a")
    assert request.session_id == session_id
    limits = [e["rate_limits"] for e in _events(lines, "token_count") if e.get("rate_limits")]
    assert limits, "no token_count with rate_limits"
    primary, secondary = limits[-1]["primary"], limits[-1]["secondary"]
    assert primary["window_minutes"] == 300
    assert secondary["window_minutes"] == 10080
    assert primary["used_percent"] == pytest.approx(25.0)
    assert secondary["used_percent"] == pytest.approx(45.0)
    # What Codex recorded is exactly what the backend sent for this account.
    assert backend.account("acct-a").windows[0].used_percent == pytest.approx(25.0)
    # The log never keeps a token; the account header names the caller.
    assert request.headers["authorization"] == "<redacted>"
    assert request.headers["chatgpt-account-id"] == "acct-a"
    assert primary["resets_at"] == backend.account("acct-a").windows[0].resets_at
    assert secondary["resets_at"] == backend.account("acct-a").windows[1].resets_at


def test_exec_resume_appends_to_the_same_rollout(
    run_codex: RunCodex, backend: FakeCodexBackend, world: Any
) -> None:
    """exec resume <id> appends a turn to the same file and reuses the session id header."""
    backend.add_account("acct-a")
    home = backend.write_codex_home(world.codex_home(), "acct-a")
    first = run_codex(_exec("first turn"), codex_home=home, backend=backend)
    assert first.returncode == 0, first.stderr[-3000:]
    session_id = _session_id_from_stderr(first.stderr)
    [rollout] = _rollouts(home)
    before = _lines(rollout)

    second = run_codex(_exec("resume", session_id, "second turn"), codex_home=home, backend=backend)

    assert second.returncode == 0, second.stderr[-3000:]
    assert _rollouts(home) == [rollout]
    after = _lines(rollout)
    assert after[: len(before)] == before
    assert [line["type"] for line in after].count("session_meta") == 1
    assert _turn_markers(after) == ["task_started", "task_complete"] * 2
    requests = backend.responses_requests("acct-a")
    assert [r.session_id for r in requests] == [session_id, session_id]
    assert "second turn" in requests[-1].input_texts
    assert "first turn" in requests[-1].input_texts  # the conversation went along


def test_exhausted_account_gets_429_and_exec_exits_1(
    run_codex: RunCodex, backend: FakeCodexBackend, world: Any
) -> None:
    """At 100 % the backend answers 429; exec exits 1; the rollout ends in usage_limit_exceeded."""
    backend.add_account("acct-a", five_hour_used=100)
    home = backend.write_codex_home(world.codex_home(), "acct-a")

    result = run_codex(_exec("anything"), codex_home=home, backend=backend)

    assert result.returncode == 1, result.stderr[-3000:]
    [request] = backend.responses_requests("acct-a")
    assert request.status == 429
    lines = _lines(_rollouts(home)[0])
    assert _turn_markers(lines)[-1] == "task_complete"
    complete = _events(lines, "task_complete")[-1]
    assert complete["error"]["codex_error_info"] == "usage_limit_exceeded"
    limits = [e["rate_limits"] for e in _events(lines, "token_count") if e.get("rate_limits")]
    assert limits[-1]["primary"]["used_percent"] == pytest.approx(100.0)


def test_expired_access_token_is_refreshed_once_without_replay(
    run_codex: RunCodex, backend: FakeCodexBackend, world: Any
) -> None:
    """An expired access token makes Codex refresh: auth.json gets the new tokens; no replay."""
    account = backend.add_account("acct-a", access_token_expired=True)
    old_refresh = account.refresh_token
    home = backend.write_codex_home(world.codex_home(), "acct-a")

    result = run_codex(_exec("after refresh"), codex_home=home, backend=backend)

    assert result.returncode == 0, result.stderr[-3000:]
    now = backend.account("acct-a")
    assert now.refresh_count == 1
    auth = json.loads((home / "auth.json").read_text())
    assert auth["tokens"]["refresh_token"] == now.refresh_token != old_refresh
    assert auth["tokens"]["access_token"] == now.access_token
    assert decode_jwt_claims(auth["tokens"]["access_token"])["exp"] > time.time()
    assert (home / "auth.json").stat().st_mode & 0o777 == 0o600
    refreshes = [r for r in backend.requests if r.path == "/oauth/token"]
    assert [r.status for r in refreshes] == [200]
    assert backend.responses_requests("acct-a")[-1].status == 200
    backend.assert_no_replay()


def test_app_server_answers_initialize_over_stdio(
    codex_bin: Path, backend: FakeCodexBackend, world: Any
) -> None:
    """codex app-server speaks JSON-RPC without a jsonrpc field and answers initialize."""
    backend.add_account("acct-a")
    home = backend.write_codex_home(world.codex_home(), "acct-a")
    proc = subprocess.Popen(
        [str(codex_bin), "app-server", *offline_flags()],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        env=world.env(home, backend),
        cwd=world.work,
        start_new_session=True,
    )
    try:
        assert proc.stdin is not None
        assert proc.stdout is not None
        request = {
            "id": 1,
            "method": "initialize",
            "params": {"clientInfo": {"name": "tests", "title": "tests", "version": "0"}},
        }
        proc.stdin.write((json.dumps(request) + "\n").encode())
        proc.stdin.flush()
        reply = _read_json_line(proc.stdout, deadline=time.monotonic() + 30)
        assert reply["id"] == 1
        assert "jsonrpc" not in reply
        assert reply["result"]["codexHome"] == str(home)
        assert "userAgent" in reply["result"]
        proc.stdin.close()
        assert proc.wait(timeout=15) == 0
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        for pipe in (proc.stdin, proc.stdout):
            if pipe is not None and not pipe.closed:
                pipe.close()


def _read_json_line(stream: Any, *, deadline: float) -> dict[str, Any]:
    buf = b""
    fd = stream.fileno()
    while b"\n" not in buf:
        remaining = deadline - time.monotonic()
        assert remaining > 0, f"no reply in time; got {buf!r}"
        ready, _, _ = select.select([fd], [], [], remaining)
        if ready:
            chunk = os.read(fd, 65536)
            assert chunk, f"EOF before a reply; got {buf!r}"
            buf += chunk
    line, _, _ = buf.partition(b"\n")
    result: dict[str, Any] = json.loads(line)
    return result


def _wait_for(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def test_interactive_tui_answers_argv_prompt_and_typed_prompt(
    codex_bin: Path, tls_backend: FakeCodexBackend, world: Any
) -> None:
    """The TUI (HTTPS backend, under a pty) answers a command-line prompt, then a typed one."""
    backend = tls_backend
    backend.add_account("acct-a")
    backend.script(Behaviour.reply("first answer"), account_id="acct-a")
    home = backend.write_codex_home(world.codex_home(), "acct-a")
    env = world.env(home, backend, TERM="xterm-256color")
    argv = [codex_bin, "--no-alt-screen", "--no-daemon", *offline_flags(), "first prompt"]

    with PtyProcess(argv, env=env, cwd=world.work) as tui:
        tui.expect("first answer", timeout=60)
        first = [r for r in backend.responses_requests() if "first prompt" in r.input_texts]
        assert first, "the command-line prompt never reached the backend"
        session_id = first[0].session_id
        assert session_id
        assert first[0].headers["chatgpt-account-id"] == "acct-a"

        def typed_prompt_sent() -> bool:
            return any("second prompt" in r.input_texts for r in backend.responses_requests())

        # The composer may still be settling after the first turn; retype until
        # the prompt is taken (each attempt is text, then a separate Enter).
        deadline = time.monotonic() + 60
        while not typed_prompt_sent():
            assert time.monotonic() < deadline, tui.text[-2000:]
            tui.write("second prompt")
            time.sleep(0.3)
            tui.write("\r")
            _wait_soft(typed_prompt_sent, 5)
        [second] = [r for r in backend.responses_requests() if "second prompt" in r.input_texts]
        assert second.session_id == session_id
        assert second.status == 200
        assert "first prompt" in second.input_texts
        tui.expect("Hello from the fake backend", timeout=60)
        [rollout] = _rollouts(home)
        assert session_id in rollout.name
        # The screen shows the reply before the rollout records the turn's end:
        # the turn boundary is read from the rollout, never from the screen.
        _wait_for(
            lambda: _turn_markers(_lines(rollout)) == ["task_started", "task_complete"] * 2,
            30,
            "both turns to complete in the rollout",
        )
        # SIGINT ends the 0.169.0 TUI by its default action (CODEX_FACTS.md §5).
        tui.send_signal(signal.SIGINT)
        assert tui.wait(timeout=10) == -signal.SIGINT


def _wait_soft(predicate: Callable[[], bool], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not predicate() and time.monotonic() < deadline:
        time.sleep(0.05)
