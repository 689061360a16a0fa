"""Tests for the Codex CLI simulator (no real Codex binary needed)."""

from __future__ import annotations

import fcntl
import json
import os
import re
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from codex_supervisor.testing import (
    Behaviour,
    FakeCodexBackend,
    install_simulator,
    make_jwt,
    offline_flags,
    write_auth_json,
)
from codex_supervisor.testing.simulator import CLI_VERSION, SIMULATED_VERSIONS, VERSION_ENV

ROLLOUT_NAME = re.compile(
    r"rollout-(\d{4})-(\d{2})-(\d{2})T\d{2}-\d{2}-\d{2}-"
    r"([0-9a-f]{8}-[0-9a-f]{4}-7[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12})\.jsonl"
)
EXEC = ["exec", "--skip-git-repo-check", *offline_flags()]


@pytest.fixture
def sim(tmp_path: Path) -> Path:
    """The simulator installed as ``codex`` in a fresh bin folder."""
    return install_simulator(tmp_path / "bin")


@pytest.fixture
def home(backend: FakeCodexBackend, world: Any) -> Path:
    """A CODEX_HOME logged in to account ``acct-a`` (10 % per request)."""
    backend.add_account("acct-a", per_request_percent=10)
    return backend.write_codex_home(world.codex_home(), "acct-a")


@pytest.fixture
def run_sim(
    sim: Path, world: Any, backend: FakeCodexBackend
) -> Callable[..., subprocess.CompletedProcess[str]]:
    """Run the simulator hermetically and bounded, stdin from /dev/null unless given."""

    def run(
        args: list[str], *, codex_home: Path, stdin: str | None = None
    ) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(sim), *args],
            cwd=world.work,
            env=world.env(codex_home, backend),
            input=stdin,
            stdin=subprocess.DEVNULL if stdin is None else None,
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )

    return run


def rollouts(codex_home: Path) -> list[Path]:
    """Every rollout file under ``codex_home/sessions``."""
    return sorted((codex_home / "sessions").rglob("rollout-*.jsonl"))


def read_lines(path: Path) -> list[dict[str, Any]]:
    """The JSON lines of a rollout."""
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def events(lines: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    """The ``event_msg`` payloads of one ``type``."""
    return [
        line["payload"]
        for line in lines
        if line["type"] == "event_msg" and line["payload"]["type"] == kind
    ]


def markers(lines: list[dict[str, Any]]) -> list[str]:
    """The turn markers in file order."""
    kinds = ("task_started", "task_complete", "turn_aborted")
    return [
        line["payload"]["type"]
        for line in lines
        if line["type"] == "event_msg" and line["payload"]["type"] in kinds
    ]


def wait_for(predicate: Callable[[], object], timeout: float = 15.0) -> None:
    """Poll ``predicate`` until it is true or the deadline passes."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached before the deadline")
        time.sleep(0.01)


def lock_is_held(path: Path) -> bool:
    """Probe a writer lock without creating it or keeping it."""
    fd = os.open(path, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)
    return False


def test_version(sim: Path) -> None:
    """``codex --version`` prints the imitated version like the real binary."""
    out = subprocess.run(
        [str(sim), "--version"], capture_output=True, text=True, timeout=30, check=False
    )
    assert out.returncode == 0
    assert out.stdout == f"codex-cli {CLI_VERSION}\n"


def _run_as(
    version: str | None, args: list[str], world: Any, home: Path, backend: FakeCodexBackend
) -> subprocess.CompletedProcess[str]:
    """Run a simulator installed to impersonate ``version``, hermetically."""
    sim = install_simulator(world.root / f"bin-{version}", version=version)
    return subprocess.run(
        [str(sim), *args],
        cwd=world.work,
        env=world.env(home, backend),
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


@pytest.mark.parametrize("version", [*SIMULATED_VERSIONS, "0.300.2", "0.100.0"])
def test_impersonates_any_version(
    version: str, world: Any, home: Path, backend: FakeCodexBackend
) -> None:
    """``install_simulator(version=...)``: --version and session_meta.cli_version follow."""
    out = _run_as(version, ["--version"], world, home, backend)
    assert (out.returncode, out.stdout) == (0, f"codex-cli {version}\n")
    turn = _run_as(version, [*EXEC, "hi"], world, home, backend)
    assert turn.returncode == 0, turn.stderr
    (path,) = rollouts(home)
    meta = json.loads(path.read_text(encoding="utf-8").splitlines()[0])["payload"]
    assert meta["cli_version"] == version
    assert f"OpenAI Codex v{version} " in turn.stderr


def test_the_version_variable_overrides_the_default(sim: Path, tmp_path: Path) -> None:
    """Without a pinned version the script follows $CODEX_SIMULATOR_VERSION, else 0.169.0."""
    assert SIMULATED_VERSIONS == ("0.169.0", "0.171.0")
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path)}
    for given, shown in ((None, CLI_VERSION), ("0.171.0", "0.171.0")):
        extra = {VERSION_ENV: given} if given else {}
        out = subprocess.run(
            [str(sim), "--version"],
            env={**env, **extra},
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
        assert out.stdout == f"codex-cli {shown}\n"
    bad = subprocess.run(
        [str(sim), "--version"],
        env={**env, VERSION_ENV: "latest"},
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert bad.returncode == 2
    assert "is not a version" in bad.stderr
    with pytest.raises(ValueError, match="not a Codex version"):
        install_simulator(tmp_path / "bad", version="0.171")


@pytest.mark.parametrize(("version", "accepted"), [("0.169.0", False), ("0.171.0", True)])
def test_exec_remote_options_follow_the_release(
    version: str, accepted: bool, world: Any, home: Path, backend: FakeCodexBackend
) -> None:
    """0.171.0 gave `exec` --remote-auth-token-env; 0.169.0 refuses it as clap does."""
    out = _run_as(version, [*EXEC, "--remote-auth-token-env", "TOK", "hi"], world, home, backend)
    if accepted:
        assert out.returncode == 0, out.stderr
    else:
        assert out.returncode == 2
        assert "unexpected argument '--remote-auth-token-env' found" in out.stderr


@pytest.mark.parametrize(("version", "is_prompt"), [("0.169.0", False), ("0.171.0", True)])
def test_stdio_to_uds_follows_the_release(
    version: str, is_prompt: bool, world: Any, home: Path, backend: FakeCodexBackend
) -> None:
    """0.171.0 dropped `stdio-to-uds`: there the word is a PROMPT, as for Codex."""
    out = _run_as(version, [*offline_flags(), "stdio-to-uds"], world, home, backend)
    assert out.returncode == 0, out.stderr
    prompts = [t for r in backend.responses_requests() for t in r.input_texts]
    assert ("stdio-to-uds" in prompts) is is_prompt
    assert ("is not simulated" in out.stderr) is not is_prompt


@pytest.mark.parametrize(
    "args",
    [
        ["exec", "-m"],
        ["exec", "-s", "bogus", "hi"],
        ["exec", "-Z", "hi"],
        ["exec", "one", "two"],
        ["exec", "resume"],
        ["-a", "sometimes", "hi"],
    ],
)
def test_bad_argv_exits_2(
    args: list[str], run_sim: Callable[..., Any], home: Path, backend: FakeCodexBackend
) -> None:
    """Malformed command lines exit 2 with a message and send nothing."""
    out = run_sim(args, codex_home=home)
    assert out.returncode == 2
    assert "error:" in out.stderr
    assert backend.responses_requests() == []


def test_exec_writes_rollout_with_backend_quota(
    run_sim: Callable[..., Any], home: Path, backend: FakeCodexBackend, world: Any
) -> None:
    """Exec completes a turn and its token_count mirrors the account's quota."""
    out = run_sim([*EXEC, "say hi"], codex_home=home)
    assert out.returncode == 0, out.stderr
    assert out.stdout == "Hello from the fake backend.\n"
    (path,) = rollouts(home)
    match = ROLLOUT_NAME.fullmatch(path.name)
    assert match is not None
    assert path.parent.relative_to(home / "sessions").parts == match.groups()[:3]
    session_id = match.group(4)
    lines = read_lines(path)
    assert [line["ordinal"] for line in lines] == list(range(len(lines)))
    for line in lines:
        extra = {"metadata"} if line["type"] == "response_item" else set()
        assert set(line) == {"timestamp", "ordinal", "type", "payload"} | extra
    meta = lines[0]["payload"]
    assert lines[0]["type"] == "session_meta"
    assert meta["id"] == meta["session_id"] == session_id
    assert meta["cwd"] == str(world.work)
    assert (meta["originator"], meta["source"], meta["cli_version"]) == (
        "codex_exec",
        "exec",
        CLI_VERSION,
    )
    assert meta["creator_account_id"] == "acct-a"
    assert markers(lines) == ["task_started", "task_complete"]
    (done,) = events(lines, "task_complete")
    assert done["last_agent_message"] == "Hello from the fake backend."
    assert done["turn_id"] == events(lines, "task_started")[0]["turn_id"]
    (count,) = events(lines, "token_count")
    limits = count["rate_limits"]
    acct = backend.account("acct-a")
    five_hour, weekly = acct.windows
    assert limits["limit_id"] == "codex"
    assert limits["primary"] == {
        "used_percent": five_hour.used_percent,
        "window_minutes": 300,
        "resets_at": five_hour.resets_at,
    }
    assert limits["secondary"] == {
        "used_percent": weekly.used_percent,
        "window_minutes": 10080,
        "resets_at": weekly.resets_at,
    }
    (request,) = backend.responses_requests()
    assert request.session_id == session_id
    assert request.headers["originator"] == "codex_exec"
    assert request.headers["chatgpt-account-id"] == "acct-a"


def test_exec_resume_appends_to_the_same_rollout(
    run_sim: Callable[..., Any], home: Path, backend: FakeCodexBackend
) -> None:
    """Exec resume appends a turn to the same file under the same session-id header."""
    assert run_sim([*EXEC, "first"], codex_home=home).returncode == 0
    (path,) = rollouts(home)
    session_id = read_lines(path)[0]["payload"]["id"]
    out = run_sim([*EXEC, "resume", session_id, "second"], codex_home=home)
    assert out.returncode == 0, out.stderr
    assert rollouts(home) == [path]
    lines = read_lines(path)
    assert [line["type"] for line in lines].count("session_meta") == 1
    assert [line["ordinal"] for line in lines] == list(range(len(lines)))
    assert markers(lines) == ["task_started", "task_complete"] * 2
    first, second = backend.responses_requests()
    assert first.session_id == second.session_id == session_id
    assert second.input_texts == ["first", "second"]
    out = run_sim([*EXEC, "resume", "--last", "third"], codex_home=home)
    assert out.returncode == 0, out.stderr
    assert backend.responses_requests()[-1].session_id == session_id
    assert markers(read_lines(path)) == ["task_started", "task_complete"] * 3


def test_exec_resume_of_unknown_session_fails(run_sim: Callable[..., Any], home: Path) -> None:
    """Resuming an id that has no rollout fails like Codex (exit 1)."""
    out = run_sim([*EXEC, "resume", "01a20185-8575-7980-bdd0-d2677f5b3514", "hi"], codex_home=home)
    assert out.returncode == 1
    assert "no rollout found" in out.stderr


def test_usage_limit_fails_the_turn(
    run_sim: Callable[..., Any], home: Path, backend: FakeCodexBackend
) -> None:
    """A 429 exits 1 and records token_count at 100 % and usage_limit_exceeded."""
    backend.set_quota("acct-a", five_hour=100)
    out = run_sim([*EXEC, "say hi"], codex_home=home)
    assert out.returncode == 1
    assert "usage limit" in out.stderr
    assert out.stdout == ""
    (path,) = rollouts(home)
    lines = read_lines(path)
    assert markers(lines) == ["task_started", "task_complete"]
    (count,) = events(lines, "token_count")
    assert count["info"] is None
    assert count["rate_limits"]["primary"]["used_percent"] == 100.0
    (done,) = events(lines, "task_complete")
    assert done["last_agent_message"] is None
    assert done["error"]["codex_error_info"] == "usage_limit_exceeded"
    assert not (home / "thread-writer-locks" / f"{lines[0]['payload']['id']}.lock").exists()


def test_exec_json_events(run_sim: Callable[..., Any], home: Path) -> None:
    """``--json`` prints the real event sequence with the thread id first."""
    out = run_sim([*EXEC, "--json", "say hi"], codex_home=home)
    assert out.returncode == 0, out.stderr
    printed = [json.loads(line) for line in out.stdout.splitlines()]
    assert [event["type"] for event in printed] == [
        "thread.started",
        "turn.started",
        "item.completed",
        "turn.completed",
    ]
    assert printed[0]["thread_id"] == read_lines(rollouts(home)[0])[0]["payload"]["id"]
    assert printed[2]["item"]["text"] == "Hello from the fake backend."


def test_exec_reads_the_prompt_from_stdin(
    run_sim: Callable[..., Any], home: Path, backend: FakeCodexBackend
) -> None:
    """PROMPT ``-`` reads the whole prompt from stdin."""
    out = run_sim([*EXEC, "-"], codex_home=home, stdin="from stdin\n")
    assert out.returncode == 0, out.stderr
    assert backend.responses_requests()[0].input_texts == ["from stdin\n"]


def test_expired_access_token_is_refreshed_once(
    run_sim: Callable[..., Any], backend: FakeCodexBackend, world: Any
) -> None:
    """An expired access token is refreshed and auth.json gets the rotated tokens."""
    backend.add_account("acct-x", access_token_expired=True)
    home = backend.write_codex_home(world.codex_home(), "acct-x")
    before = json.loads((home / "auth.json").read_text())
    out = run_sim([*EXEC, "hi"], codex_home=home)
    assert out.returncode == 0, out.stderr
    after = json.loads((home / "auth.json").read_text())
    acct = backend.account("acct-x")
    assert acct.refresh_count == 1
    assert after["tokens"]["refresh_token"] == acct.refresh_token
    assert after["tokens"]["refresh_token"] != before["tokens"]["refresh_token"]
    assert after["tokens"]["access_token"] == acct.access_token
    assert after["last_refresh"] > before["last_refresh"]
    assert (home / "auth.json").stat().st_mode & 0o777 == 0o600
    (refresh,) = [r for r in backend.requests if r.path == "/oauth/token"]
    assert refresh.status == 200
    # The stored tokens are used next time: no second refresh, no replay.
    assert run_sim([*EXEC, "again"], codex_home=home).returncode == 0
    assert backend.account("acct-x").refresh_count == 1
    backend.assert_no_replay()
    for record in backend.requests:
        assert acct.refresh_token not in json.dumps(record.headers)


def test_unauthorized_answer_triggers_one_refresh(
    run_sim: Callable[..., Any], backend: FakeCodexBackend, world: Any
) -> None:
    """A 401 from the model endpoint refreshes the tokens and retries once."""
    acct = backend.add_account("acct-y")
    home = backend.write_codex_home(world.codex_home())
    write_auth_json(
        home,
        id_token=acct.id_token,
        access_token=make_jwt({"exp": int(time.time()) + 3600, "stale": True}),
        refresh_token=acct.refresh_token,
        account_id="acct-y",
    )
    out = run_sim([*EXEC, "hi"], codex_home=home)
    assert out.returncode == 0, out.stderr
    assert [r.status for r in backend.responses_requests()] == [401, 200]
    assert backend.account("acct-y").refresh_count == 1
    backend.assert_no_replay()


def test_interactive_reads_prompts_from_stdin(
    sim: Path, home: Path, backend: FakeCodexBackend, world: Any
) -> None:
    """Interactive mode turns each stdin line into a turn of one session."""
    proc = subprocess.run(
        [str(sim), "--no-alt-screen", "--no-daemon", *offline_flags()],
        cwd=world.work,
        env=world.env(home, backend),
        input="first\n\nsecond\n",
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == "Hello from the fake backend.\n" * 2
    first, second = backend.responses_requests()
    assert first.session_id is not None
    assert first.session_id == second.session_id
    assert second.input_texts == ["first", "second"]
    assert first.headers["originator"] == "codex-tui"
    (path,) = rollouts(home)
    lines = read_lines(path)
    assert lines[0]["payload"]["source"] == "cli"
    assert markers(lines) == ["task_started", "task_complete"] * 2


def test_interactive_resume_sends_the_prompt_argument_first(
    run_sim: Callable[..., Any], sim: Path, home: Path, backend: FakeCodexBackend, world: Any
) -> None:
    """``codex resume ID PROMPT`` continues the session with PROMPT as its next turn."""
    assert run_sim(["one"], codex_home=home).returncode == 0
    session_id = backend.responses_requests()[0].session_id
    assert session_id is not None
    out = run_sim(["resume", session_id, "two"], codex_home=home, stdin="three\n")
    assert out.returncode == 0, out.stderr
    requests = backend.responses_requests()
    assert [r.session_id for r in requests] == [session_id] * 3
    assert requests[-1].input_texts == ["one", "two", "three"]


def test_usage_limit_in_interactive_mode_keeps_reading(
    run_sim: Callable[..., Any], home: Path, backend: FakeCodexBackend
) -> None:
    """An interactive 429 is shown and the next prompt is still sent."""
    backend.script(Behaviour.usage_limit())
    out = run_sim([], codex_home=home, stdin="first\nsecond\n")
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines()[0].startswith("ERROR: You\u2019ve hit your usage limit.")
    assert out.stdout.splitlines()[1] == "Hello from the fake backend."
    assert [r.status for r in backend.responses_requests()] == [429, 200]


def _start_stalled_exec(
    sim: Path, home: Path, backend: FakeCodexBackend, world: Any
) -> tuple[subprocess.Popen[str], Path, str]:
    backend.script(Behaviour.stall())
    proc = subprocess.Popen(
        [str(sim), *EXEC, "hang on"],
        cwd=world.work,
        env=world.env(home, backend),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    wait_for(lambda: backend.responses_requests() or proc.poll() is not None)
    assert proc.poll() is None
    (path,) = rollouts(home)
    session_id = read_lines(path)[0]["payload"]["id"]
    return proc, path, session_id


def test_writer_lock_is_held_while_a_turn_is_in_flight(
    sim: Path, run_sim: Callable[..., Any], home: Path, backend: FakeCodexBackend, world: Any
) -> None:
    """The writer lock is flocked mid-turn, a second writer is refused, and exit deletes it."""
    proc, path, session_id = _start_stalled_exec(sim, home, backend, world)
    lock = home / "thread-writer-locks" / f"{session_id}.lock"
    try:
        assert lock_is_held(lock)
        assert markers(read_lines(path)) == ["task_started"]
        rival = run_sim([*EXEC, "resume", session_id, "me too"], codex_home=home)
        assert rival.returncode == 1
        assert "already has an active writer" in rival.stderr
    finally:
        backend.release_stalls()
        proc.communicate(timeout=30)
    assert proc.returncode == 1  # the stalled stream closed before response.completed
    assert not lock.exists()
    (done,) = events(read_lines(path), "task_complete")
    assert done["error"]["codex_error_info"] == "other"


def test_sigterm_mid_turn_leaves_a_dangling_turn_and_an_unlocked_lock(
    sim: Path, run_sim: Callable[..., Any], home: Path, backend: FakeCodexBackend, world: Any
) -> None:
    """SIGTERM kills by default action: task_started dangles, the lock file stays unlocked."""
    proc, path, session_id = _start_stalled_exec(sim, home, backend, world)
    proc.send_signal(signal.SIGTERM)
    proc.communicate(timeout=30)
    assert proc.returncode == -signal.SIGTERM
    lines = read_lines(path)
    assert markers(lines) == ["task_started"]
    assert events(lines, "token_count") == []
    lock = home / "thread-writer-locks" / f"{session_id}.lock"
    assert lock.exists()
    assert not lock_is_held(lock)
    # Resume still works after the kill and appends a complete turn.
    backend.release_stalls()
    out = run_sim([*EXEC, "resume", session_id, "again"], codex_home=home)
    assert out.returncode == 0, out.stderr
    assert markers(read_lines(path)) == ["task_started", "task_started", "task_complete"]


def test_other_subcommands_are_acknowledged(run_sim: Callable[..., Any], home: Path) -> None:
    """Subcommands the simulator does not implement exit 0, except login."""
    for args in (["mcp", "list"], ["app-server"], ["features", "list"], ["logout"]):
        out = run_sim(args, codex_home=home)
        assert out.returncode == 0, args
        assert "not simulated" in out.stderr
    login = run_sim(["login"], codex_home=home)
    assert login.returncode == 1
    assert "not supported by the simulator" in login.stderr


def test_refuses_a_non_loopback_provider(
    run_sim: Callable[..., Any], home: Path, backend: FakeCodexBackend
) -> None:
    """A base_url off 127.0.0.1 (here via ``-c``) is refused before any request."""
    out = run_sim(
        [*EXEC, "-c", 'model_providers.fake.base_url="https://example.com/v1"', "hi"],
        codex_home=home,
    )
    assert out.returncode == 1
    assert "only talks to 127.0.0.1" in out.stderr
    assert backend.requests == []
    assert rollouts(home) == []


def test_spent_refresh_token_fails_like_codex(
    run_sim: Callable[..., Any], backend: FakeCodexBackend, world: Any
) -> None:
    """Presenting a spent refresh token fails with Codex's message (and the backend sees it)."""
    backend.add_account("acct-z", access_token_expired=True)
    home = backend.write_codex_home(world.codex_home(), "acct-z")
    stale = (home / "auth.json").read_bytes()
    assert run_sim([*EXEC, "hi"], codex_home=home).returncode == 0
    (home / "auth.json").write_bytes(stale)  # an old copy written over the rotated tokens
    out = run_sim([*EXEC, "hi"], codex_home=home)
    assert out.returncode == 1
    assert "refresh token was already used" in out.stderr
    assert backend.replays == ["acct-z"]
    assert len(backend.responses_requests()) == 1


def test_https_backend_is_trusted_through_codex_ca_certificate(
    sim: Path, tls_backend: FakeCodexBackend, world: Any
) -> None:
    """Over HTTPS the simulator trusts the backend's CA from CODEX_CA_CERTIFICATE only."""
    tls_backend.add_account("acct-tls")
    home = tls_backend.write_codex_home(world.codex_home(), "acct-tls")
    env = world.env(home, tls_backend)
    env.pop("SSL_CERT_FILE", None)
    out = subprocess.run(
        [str(sim), *EXEC, "hi"],
        cwd=world.work,
        env=env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert out.returncode == 0, out.stderr
    assert [r.status for r in tls_backend.responses_requests()] == [200]
