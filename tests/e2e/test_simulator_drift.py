"""Drift checks: the simulator's rollouts against the real Codex CLI's.

The same scripted ``codex exec`` turn runs through the real binary under test
(each tested version in turn, see scripts/test) and through the simulator
impersonating that same version, each with its own fresh CODEX_HOME and its
own account on one backend, both accounts with identical quota. The rollouts
must agree on everything codex_supervisor reads.
"""

from __future__ import annotations

import json
import re
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from codex_supervisor.testing import Behaviour, FakeCodexBackend, install_simulator, offline_flags

pytestmark = pytest.mark.real_codex

EXEC = ["exec", "--skip-git-repo-check", *offline_flags()]
ROLLOUT_NAME = re.compile(
    r"rollout-(\d{4})-(\d{2})-(\d{2})T\d{2}-\d{2}-\d{2}-"
    r"([0-9a-f]{8}-[0-9a-f]{4}-7[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12})\.jsonl"
)
#: Top-level keys of every line (0.169.0 adds "metadata" on response_item lines).
ENVELOPE = {"timestamp", "ordinal", "type", "payload"}
#: Per line kind, the payload keys codex_supervisor reads.
READ_KEYS: dict[str, set[str]] = {
    "session_meta": {"id", "session_id", "cwd", "originator", "cli_version", "timestamp", "source"},
    "task_started": {"turn_id", "started_at"},
    "token_count": {"info", "rate_limits"},
    "task_complete": {"turn_id", "last_agent_message", "duration_ms"},
    "turn_aborted": {"turn_id", "reason"},
}
WINDOW_KEYS = {"used_percent", "window_minutes", "resets_at"}
REAL, SIM = "acct-real", "acct-sim"


def read_lines(codex_home: Path) -> tuple[Path, list[dict[str, Any]]]:
    """The only rollout under ``codex_home`` and its JSON lines."""
    (path,) = sorted((codex_home / "sessions").rglob("rollout-*.jsonl"))
    lines = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
    return path, lines


def kind(line: dict[str, Any]) -> str:
    """``event_msg`` lines by their payload type, other lines by their own type."""
    if line["type"] == "event_msg":
        return str(line["payload"].get("type"))
    return str(line["type"])


def payloads(lines: list[dict[str, Any]], name: str) -> list[dict[str, Any]]:
    """The payloads of one line kind, in file order."""
    return [line["payload"] for line in lines if kind(line) == name]


def read_sequence(lines: list[dict[str, Any]]) -> list[str]:
    """The ordered kinds codex_supervisor reads (turn markers, token_count, meta)."""
    return [kind(line) for line in lines if kind(line) in READ_KEYS]


def envelope(lines: list[dict[str, Any]], line_type: str) -> set[str]:
    """The top-level keys of the lines of one ``type``."""
    return {key for line in lines if line["type"] == line_type for key in line}


def check_path(codex_home: Path, path: Path, lines: list[dict[str, Any]]) -> None:
    """The rollout sits at sessions/YYYY/MM/DD/rollout-<local time>-<session id>.jsonl."""
    match = ROLLOUT_NAME.fullmatch(path.name)
    assert match is not None, path.name
    assert path.parent.relative_to(codex_home / "sessions").parts == match.groups()[:3]
    assert match.group(4) == lines[0]["payload"]["id"]


def compare(real_home: Path, sim_home: Path) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Assert that the two rollouts agree on everything we read; return their lines."""
    real_path, real = read_lines(real_home)
    sim_path, sim = read_lines(sim_home)
    check_path(real_home, real_path, real)
    check_path(sim_home, sim_path, sim)
    assert {key for line in sim for key in line} == {key for line in real for key in line}
    assert {key for line in real for key in line} >= ENVELOPE
    for line_type in {line["type"] for line in sim}:
        assert envelope(sim, line_type) == envelope(real, line_type), line_type
    for lines in (real, sim):
        assert [line["ordinal"] for line in lines] == list(range(len(lines)))
    assert read_sequence(sim) == read_sequence(real)
    for name, wanted in READ_KEYS.items():
        real_keys = {key for payload in payloads(real, name) for key in payload}
        sim_keys = {key for payload in payloads(sim, name) for key in payload}
        if not real_keys:
            continue
        assert wanted <= real_keys | {"type"}, f"the real {name} lost keys we read"
        assert wanted & real_keys <= sim_keys, f"the simulator's {name} lacks keys we read"
        assert sim_keys <= real_keys, f"the simulator's {name} invents {sim_keys - real_keys}"
    for real_count, sim_count in zip(
        payloads(real, "token_count"), payloads(sim, "token_count"), strict=True
    ):
        real_limits, sim_limits = real_count["rate_limits"], sim_count["rate_limits"]
        for window in ("primary", "secondary"):
            assert set(real_limits[window]) >= WINDOW_KEYS
        assert sim_limits == real_limits
        assert (sim_count["info"] is None) == (real_count["info"] is None)
    for real_done, sim_done in zip(
        payloads(real, "task_complete"), payloads(sim, "task_complete"), strict=True
    ):
        assert sim_done["last_agent_message"] == real_done["last_agent_message"]
        assert ("error" in sim_done) == ("error" in real_done)
        if "error" in real_done:
            assert set(sim_done["error"]) == set(real_done["error"])
            assert sim_done["error"]["codex_error_info"] == real_done["error"]["codex_error_info"]
            # The reset time at the end of a usage-limit message is locale-dependent.
            real_message = real_done["error"]["message"].rsplit(" at ", 1)[0]
            assert sim_done["error"]["message"].rsplit(" at ", 1)[0] == real_message
    for lines in (real, sim):
        started = [payload["turn_id"] for payload in payloads(lines, "task_started")]
        completed = [payload["turn_id"] for payload in payloads(lines, "task_complete")]
        assert completed == started[: len(completed)]
    real_meta, sim_meta = real[0]["payload"], sim[0]["payload"]
    for key in ("originator", "cli_version", "source", "model_provider"):
        assert sim_meta[key] == real_meta[key], key
    return real, sim


@pytest.fixture
def pair(
    backend: FakeCodexBackend, world: Any, tmp_path: Path, codex_version: str
) -> tuple[Path, Path, Callable[..., subprocess.CompletedProcess[str]]]:
    """Two fresh CODEX_HOMEs with equal quota, and a runner for the simulator."""
    now = int(time.time())
    for account_id in (REAL, SIM):
        backend.add_account(account_id, per_request_percent=10)
        backend.set_quota(
            account_id,
            five_hour=20,
            weekly=40,
            five_hour_resets_at=now + 3600,
            weekly_resets_at=now + 5 * 86400,
        )
    real_home = backend.write_codex_home(world.codex_home("real-home"), REAL)
    sim_home = backend.write_codex_home(world.codex_home("sim-home"), SIM)
    sim = install_simulator(tmp_path / "bin", version=codex_version)

    def run_sim(args: list[str]) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(sim), *args],
            cwd=world.work,
            env=world.env(sim_home, backend),
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )

    return real_home, sim_home, run_sim


@pytest.mark.parametrize(
    ("scenario", "exit_code"),
    [("reply", 0), ("usage_limit", 1), ("dropped_stream", 1), ("server_error", 1)],
)
def test_exec_turn_matches_the_real_binary(
    scenario: str,
    exit_code: int,
    pair: tuple[Path, Path, Callable[..., subprocess.CompletedProcess[str]]],
    run_codex: Callable[..., subprocess.CompletedProcess[str]],
    backend: FakeCodexBackend,
) -> None:
    """One scripted exec turn leaves equivalent rollouts from the real binary and the simulator."""
    real_home, sim_home, run_sim = pair
    for account_id in (REAL, SIM):
        if scenario == "usage_limit":
            backend.set_quota(account_id, five_hour=100)
        elif scenario == "dropped_stream":
            backend.script(Behaviour.drop(), account_id=account_id)
        elif scenario == "server_error":
            backend.script(Behaviour.server_error(), account_id=account_id)
    real_out = run_codex([*EXEC, "say hi"], codex_home=real_home, backend=backend)
    sim_out = run_sim([*EXEC, "say hi"])
    assert (real_out.returncode, sim_out.returncode) == (exit_code, exit_code), (
        real_out.stderr[-2000:],
        sim_out.stderr[-2000:],
    )
    assert sim_out.stdout == real_out.stdout
    real, sim = compare(real_home, sim_home)
    assert len(payloads(real, "task_complete")) == 1
    if scenario == "usage_limit":
        (done,) = payloads(sim, "task_complete")
        assert done["error"]["codex_error_info"] == "usage_limit_exceeded"
        (count,) = payloads(sim, "token_count")
        assert count["rate_limits"]["primary"]["used_percent"] == 100.0


def test_exec_resume_matches_the_real_binary(
    pair: tuple[Path, Path, Callable[..., subprocess.CompletedProcess[str]]],
    run_codex: Callable[..., subprocess.CompletedProcess[str]],
    backend: FakeCodexBackend,
) -> None:
    """Exec resume appends to the same rollout in both, with the same markers and quota."""
    real_home, sim_home, run_sim = pair
    assert run_codex([*EXEC, "first"], codex_home=real_home, backend=backend).returncode == 0
    assert run_sim([*EXEC, "first"]).returncode == 0
    real_id = read_lines(real_home)[1][0]["payload"]["id"]
    sim_id = read_lines(sim_home)[1][0]["payload"]["id"]
    real_out = run_codex(
        [*EXEC, "resume", real_id, "second"], codex_home=real_home, backend=backend
    )
    sim_out = run_sim([*EXEC, "resume", sim_id, "second"])
    assert (real_out.returncode, sim_out.returncode) == (0, 0), sim_out.stderr
    _, sim = compare(real_home, sim_home)
    assert read_sequence(sim).count("session_meta") == 1
    assert read_sequence(sim).count("task_complete") == 2
    for account_id, session_id in ((REAL, real_id), (SIM, sim_id)):
        requests = backend.responses_requests(account_id)
        assert [r.session_id for r in requests] == [session_id, session_id]
        texts = requests[-1].input_texts
        assert texts[-1] == "second"
        assert "first" in texts


@pytest.mark.parametrize(
    "argv",
    [
        [*EXEC, "--remote-auth-token-env", "TOK", "--help"],
        [*EXEC, "resume", "--remote-auth-token-env", "TOK", "--help"],
        ["--version"],
    ],
    ids=["exec", "exec resume", "version"],
)
def test_command_line_matches_the_real_binary(
    argv: list[str],
    pair: tuple[Path, Path, Callable[..., subprocess.CompletedProcess[str]]],
    run_codex: Callable[..., subprocess.CompletedProcess[str]],
    backend: FakeCodexBackend,
) -> None:
    """The simulator accepts or refuses the version's command-line changes as the binary does."""
    real_home, _, run_sim = pair
    real = run_codex(argv, codex_home=real_home, backend=backend)
    sim = run_sim(argv)
    assert sim.returncode == real.returncode, (real.stderr[-500:], sim.stderr[-500:])
    if argv == ["--version"]:
        assert sim.stdout == real.stdout
