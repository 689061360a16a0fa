"""Session hooks: trust hashes, the -c flags, the user's trust, the inbox and the hook script."""

from __future__ import annotations

import json
import logging
import os
import stat
import subprocess
import sys
import time
import tomllib
from pathlib import Path
from typing import Any

import pytest

from codex_supervisor import hooks
from codex_supervisor.hooks import (
    SESSION_FLAGS_SOURCE,
    HookInbox,
    hook_command,
    hook_flags,
    overridden_by,
    trust_hash,
    user_trust,
)

SID = "01a22c33-7e06-70a2-9074-21dda48f0185"


def _values(flags: list[str]) -> dict[str, Any]:
    """The -c flags read back as Codex reads them: each value is TOML."""
    assert flags[::2] == ["-c"] * (len(flags) // 2)
    found = {}
    for flag in flags[1::2]:
        key, _, raw = flag.partition("=")
        found[key] = tomllib.loads(f"v = {raw}")["v"]
    return found


def test_trust_hash_matches_what_the_real_binary_computed() -> None:
    # Codex 0.169.0's hooks/list reported this currentHash for exactly this handler.
    command = "python3 /tmp/hookslab/hook.py FLAG-SessionStart"
    assert trust_hash("session_start", command, timeout=30) == (
        "sha256:4fa338a2df9e3db0fbc0dd54871e2bbae28a92e219e2dafcd52480e2ef1e5d35"
    )
    assert trust_hash("stop", command, timeout=30) != trust_hash(
        "session_start", command, timeout=30
    )


def test_flags_give_both_hooks_trusted_in_one_state_table(tmp_path: Path) -> None:
    inbox = tmp_path / 'in box\'s "quoted" \x7f folder' / "events.jsonl"
    flags = hook_flags(inbox, base_home=tmp_path / "base", account_home=tmp_path / "acct")
    assert flags is not None
    values = _values(flags)
    assert list(values) == ["hooks.SessionStart", "hooks.Stop", "hooks.state"]  # one state
    for event, label in (("SessionStart", "session_start"), ("Stop", "stop")):
        [group] = values[f"hooks.{event}"]
        [handler] = group["hooks"]
        assert handler == {
            "type": "command",
            "command": hook_command(inbox),
            "timeout": hooks.HOOK_TIMEOUT,
        }
        key = f"{SESSION_FLAGS_SOURCE}:{label}:0:0"
        assert values["hooks.state"][key] == {"trusted_hash": trust_hash(label, handler["command"])}


def test_the_command_names_no_secret_and_survives_a_missing_interpreter(tmp_path: Path) -> None:
    inbox = tmp_path / "events.jsonl"
    inbox.touch()
    command = hook_command(inbox, python=str(tmp_path / "no-such-python"))
    assert command is not None
    done = subprocess.run(["/bin/sh", "-c", command], input=b"{}", capture_output=True, check=False)
    # Never 2 (Codex would continue the turn), never a word on stdout.
    assert (done.returncode, done.stdout) == (0, b"")
    assert hook_command(inbox, python="") is None


def _run_hook(inbox: Path, payload: bytes) -> subprocess.CompletedProcess[bytes]:
    command = hook_command(inbox)
    assert command is not None
    return subprocess.run(
        ["/bin/sh", "-c", command], input=payload, capture_output=True, check=False
    )


def test_the_hook_records_the_session_and_nothing_of_the_answer(tmp_path: Path) -> None:
    inbox = HookInbox(tmp_path)
    payload = {
        "session_id": SID,
        "turn_id": "t1",
        "transcript_path": "/x/rollout.jsonl",
        "cwd": "/x",
        "hook_event_name": "Stop",
        "stop_hook_active": False,
        "last_assistant_message": "the user's private answer " * 100_000,  # ~2.6 MB
    }
    done = _run_hook(inbox.path, json.dumps(payload).encode())
    assert (done.returncode, done.stdout, done.stderr) == (0, b"", b"")
    assert b"private" not in inbox.path.read_bytes()
    [event] = inbox.read()
    assert (event.event, event.session_id, event.turn_id) == ("Stop", SID, "t1")
    assert event.transcript_path == "/x/rollout.jsonl"
    assert inbox.read() == []  # read once


@pytest.mark.parametrize("payload", [b"", b"not json", b"[1]", b'{"session_id": 5}', b"\xff"])
def test_bad_payloads_exit_0_silently(tmp_path: Path, payload: bytes) -> None:
    inbox = HookInbox(tmp_path)
    done = _run_hook(inbox.path, payload)
    assert (done.returncode, done.stdout) == (0, b"")
    assert inbox.read() == []


def test_a_hook_after_the_inbox_is_gone_writes_nothing_anywhere(tmp_path: Path) -> None:
    inbox = HookInbox(tmp_path)
    inbox.close()
    assert not inbox.folder.exists()
    done = _run_hook(
        inbox.path, json.dumps({"session_id": SID, "hook_event_name": "Stop"}).encode()
    )
    assert done.returncode == 0
    assert not inbox.path.exists()  # never created by the hook


def test_the_inbox_is_private_and_reads_whole_lines_only(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    inbox = HookInbox(tmp_path)
    assert stat.S_IMODE(inbox.folder.stat().st_mode) == 0o700
    assert stat.S_IMODE(inbox.path.stat().st_mode) == 0o600
    line = json.dumps({"event": "SessionStart", "session_id": SID, "source": "startup"})
    with inbox.path.open("a") as out:
        out.write(line[:10])
    assert inbox.read() == []  # half a line waits
    with inbox.path.open("a") as out:
        out.write(line[10:] + "\n" + "garbage\n" + '{"event": "Stop"}\n' + "[]\n")
    with caplog.at_level(logging.WARNING, logger="codex_supervisor.hooks"):
        [event] = inbox.read()
    assert (event.event, event.session_id, event.source) == ("SessionStart", SID, "startup")
    assert "not JSON" in caplog.text
    with inbox.path.open("a") as out:
        out.write("x" * (hooks._MAX_LINE + 10))  # an endless line is dropped, not kept
    assert inbox.read() == []
    assert inbox._partial == b""


def _base_config(base: Path, text: str) -> None:
    base.mkdir(parents=True, exist_ok=True)
    (base / "config.toml").write_text(text)


def _homes(tmp_path: Path, state: str) -> tuple[Path, Path]:
    """A base home with hooks.json and config.toml, and an account home linking them."""
    base, acct = tmp_path / "base", tmp_path / "pool" / "a"
    _base_config(base, f'model = "x"\n{state}')
    (base / "hooks.json").write_text("{}")
    acct.mkdir(parents=True)
    for name in ("hooks.json", "config.toml"):
        (acct / name).symlink_to(base / name)
    return base, acct


def test_user_trust_is_rekeyed_to_the_account_home(tmp_path: Path) -> None:
    base = tmp_path / "base"
    base_dir, acct = _homes(
        tmp_path,
        f"""
[hooks.state."{base}/hooks.json:session_start:0:0"]
trusted_hash = "sha256:aa"
[hooks.state."{base}/config.toml:stop:1:0"]
trusted_hash = "sha256:bb"
[hooks.state."/elsewhere/.codex/hooks.json:stop:0:0"]
trusted_hash = "sha256:cc"
[hooks.state."{base}/hooks.json:stop:0:0"]
trusted_hash = "sha256:dd"
enabled = false
[hooks.state."{base}/other.json:stop:0:0"]
trusted_hash = "sha256:ee"
[hooks.state."{base}/hooks.json:stop:1:0"]
enabled = "no"
""",
    )
    assert user_trust(base_dir, acct) == {
        f"{acct}/hooks.json:session_start:0:0": {"trusted_hash": "sha256:aa"},
        f"{acct}/config.toml:stop:1:0": {"trusted_hash": "sha256:bb"},
        # Switched off by the user: passed on switched off, never just trusted.
        f"{acct}/hooks.json:stop:0:0": {"trusted_hash": "sha256:dd", "enabled": False},
    }
    flags = hook_flags(tmp_path / "e.jsonl", base_home=base_dir, account_home=acct)
    assert flags is not None
    state = _values(flags)["hooks.state"]
    assert state[f"{acct}/hooks.json:stop:0:0"] == {"trusted_hash": "sha256:dd", "enabled": False}
    assert len(state) == 5  # the user's three, and ours
    # A child without our hooks gets the user's trust alone; none when there is none.
    only = _values(hooks.trust_flags(base_dir, acct))["hooks.state"]
    assert only == {k: v for k, v in state.items() if not k.startswith(SESSION_FLAGS_SOURCE)}
    assert hooks.trust_flags(tmp_path / "nothing", acct) == []


def test_trust_follows_codex_s_real_path_and_never_an_unlinked_file(tmp_path: Path) -> None:
    base = tmp_path / "base"
    base_dir, acct = _homes(
        tmp_path, f'[hooks.state."{base}/hooks.json:stop:0:0"]\ntrusted_hash = "sha256:aa"\n'
    )
    # The pool reached through a link: Codex resolves CODEX_HOME, so both spellings.
    (tmp_path / "pool-link").symlink_to(tmp_path / "pool")
    linked = tmp_path / "pool-link" / "a"
    assert set(user_trust(base_dir, linked)) == {
        f"{linked}/hooks.json:stop:0:0",
        f"{acct}/hooks.json:stop:0:0",
    }
    # A real file of the account home's own (not the base's) is never trusted on its behalf.
    (acct / "hooks.json").unlink()
    (acct / "hooks.json").write_text("{}")
    assert user_trust(base_dir, acct) == {}


def test_a_trust_table_too_large_for_argv_is_not_passed_on(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    base = tmp_path / "base"
    entries = "".join(
        f'[hooks.state."{base}/hooks.json:stop:{i}:0"]\ntrusted_hash = "sha256:{"a" * 64}"\n'
        for i in range(1200)
    )
    base_dir, acct = _homes(tmp_path, entries)
    with caplog.at_level(logging.WARNING, logger="codex_supervisor.hooks"):
        flags = hook_flags(tmp_path / "e.jsonl", base_home=base_dir, account_home=acct)
        assert hooks.trust_flags(base_dir, acct) == []
    assert flags is not None
    assert max(len(f) for f in flags) < 128 * 1024  # Linux's limit for one argument
    assert len(_values(flags)["hooks.state"]) == 2  # ours only
    assert "too large to pass on" in caplog.text


def test_switched_off_in_the_users_config(tmp_path: Path) -> None:
    _base_config(tmp_path, "[features]\nhooks = false\n")
    assert hooks.switched_off_in_config(tmp_path)
    _base_config(tmp_path, "[features]\nhooks = true\n")
    assert not hooks.switched_off_in_config(tmp_path)
    assert not hooks.switched_off_in_config(tmp_path / "missing")


@pytest.mark.parametrize(
    "text", ["[hooks\nbroken", "hooks = 3", "[hooks]\nstate = 'x'", "[hooks.state]\nk = 1"]
)
def test_a_broken_user_config_gives_no_trust_and_no_crash(tmp_path: Path, text: str) -> None:
    _base_config(tmp_path, text)
    assert user_trust(tmp_path, tmp_path / "acct") == {}
    assert user_trust(tmp_path / "missing", tmp_path / "acct") == {}


@pytest.mark.parametrize(
    ("argv", "why"),
    [
        (["exec", "hi"], None),
        (["-c", "model=x", "exec", "hi"], None),
        (["-c", 'hooks.state={"k"={trusted_hash="x"}}'], "sets hooks.state"),
        (['--config=hooks.state."k".trusted_hash="x"'], "sets hooks.state"),
        (["-chooks.state={}"], "sets hooks.state"),
        (["--disable", "hooks"], "--disable hooks"),
        (["--disable=hooks"], "--disable hooks"),
        (["-c", "features.hooks=false"], "switched off"),
        (["-c", "features.hooks=true"], None),
        (["-c=hooks.state={}"], "sets hooks.state"),
        (["-c", "hooks={}"], "sets hooks itself"),
        (["--config", "hooks={state={}}"], "sets hooks itself"),
        (["-c", "hooks.SessionStart=[]"], "sets hooks.SessionStart"),
        (["-c", ' hooks . "Stop" =[]'], "sets hooks.Stop"),
        (["-c", "features={hooks=false}"], "switched off"),
        (["-c", "features={hooks=true}"], None),
        (["-c", "hooks.PreToolUse=[]"], None),
        (["exec", "--", "-c hooks.state={}"], None),  # a prompt, not an option
    ],
)
def test_the_users_argv_can_leave_no_room_for_our_hooks(argv: list[str], why: str | None) -> None:
    found = overridden_by(argv)
    assert (found is None) if why is None else (found is not None and why in found)


def test_a_hooks_list_answer_is_read_whatever_its_nesting() -> None:
    ours = [
        {"key": f"{SESSION_FLAGS_SOURCE}:session_start:0:0", "trustStatus": "trusted"},
        {"key": f"{SESSION_FLAGS_SOURCE}:stop:0:0", "trustStatus": "trusted"},
    ]
    assert hooks._ours_trusted({"data": [{"cwd": "/x", "hooks": ours}]})
    assert not hooks._ours_trusted({"data": [{"cwd": "/x", "hooks": ours[:1]}]})
    ours[1]["trustStatus"] = "untrusted"
    assert not hooks._ours_trusted({"data": [{"hooks": ours}]})
    assert not hooks._ours_trusted(None)


@pytest.mark.anyio
async def test_a_failed_trust_check_says_no_and_is_asked_again(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A check that could not run (a missing binary, a timeout) is not remembered as "no"."""
    monkeypatch.setattr(hooks, "_verified", {})
    missing = str(tmp_path / "no-codex")
    with caplog.at_level(logging.WARNING, logger="codex_supervisor.hooks"):
        assert not await hooks.hooks_trusted(missing, "9.9.9", environ={"PATH": "/usr/bin"})
    assert "could not check whether codex 9.9.9 trusts our hooks" in caplog.text
    assert hooks._verified == {}
    answers = iter([False, True])

    async def ask(*_: object) -> bool:
        return next(answers)

    monkeypatch.setattr(hooks, "_ask_hooks_list", ask)
    assert not await hooks.hooks_trusted("codex", "9.9.9")
    assert not await hooks.hooks_trusted("codex", "9.9.9")  # an answer is remembered
    assert hooks._verified == {("codex", "9.9.9"): False}


def test_the_hook_script_runs_isolated_from_the_sessions_folder(tmp_path: Path) -> None:
    # A json.py in the session's folder (the hook's cwd) must not be imported.
    (tmp_path / "json.py").write_text("raise SystemExit(2)\n")
    inbox = HookInbox(tmp_path)
    command = hook_command(inbox.path)
    assert command is not None
    env = {"PYTHONPATH": str(tmp_path), "PATH": os.environ.get("PATH", "")}
    done = subprocess.run(
        ["/bin/sh", "-c", command],
        input=json.dumps({"session_id": SID, "hook_event_name": "SessionStart"}).encode(),
        cwd=tmp_path,
        env=env,
        capture_output=True,
        check=False,
    )
    assert done.returncode == 0
    [event] = inbox.read()
    assert event.session_id == SID
    assert sys.executable in command


def test_the_hook_writes_only_into_the_supervisors_own_file(tmp_path: Path) -> None:
    """A FIFO or a second link where the inbox was: nothing written, no hang, exit 0."""
    payload = json.dumps({"session_id": SID, "hook_event_name": "Stop"}).encode()
    fifo = HookInbox(tmp_path)
    fifo.path.unlink()
    os.mkfifo(fifo.path)
    assert _run_hook(fifo.path, payload).returncode == 0  # would block without O_NONBLOCK
    linked = HookInbox(tmp_path)
    os.link(linked.path, tmp_path / "elsewhere")
    assert _run_hook(linked.path, payload).returncode == 0
    assert linked.path.read_bytes() == b""


def test_a_vanished_script_never_exits_2_even_under_set_e(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Codex runs hooks with the user's shell; a startup file with set -e must not leak exit 2."""
    script = tmp_path / "_hook.py"
    script.write_text(hooks._HOOK_SCRIPT.read_text())
    monkeypatch.setattr(hooks, "_HOOK_SCRIPT", script)
    inbox = HookInbox(tmp_path)
    command = hook_command(inbox.path)
    assert command is not None
    script.unlink()  # the package was upgraded under a running session
    assert hook_command(inbox.path) is None  # no new command names a missing script
    (tmp_path / "env.sh").write_text("set -e\n")
    done = subprocess.run(
        ["bash", "-c", command],
        input=b"{}",
        env={"BASH_ENV": str(tmp_path / "env.sh"), "PATH": os.environ.get("PATH", "")},
        capture_output=True,
        check=False,
    )
    assert (done.returncode, done.stdout) == (0, b"")


def test_inboxes_nobody_holds_are_swept(tmp_path: Path) -> None:
    """Liveness is the inbox's lock, not a pid (another pid namespace, another machine)."""
    held = HookInbox(tmp_path)
    dropped = HookInbox(tmp_path)
    os.close(dropped._alive)
    dropped._alive = -1
    unfinished = tmp_path / "hooks-1-abc"  # killed while making it: no lock file yet
    unfinished.mkdir()
    other = tmp_path / "not-an-inbox"
    other.mkdir()
    fresh = HookInbox(tmp_path)
    assert held.folder.exists()
    assert fresh.folder.exists()
    assert not dropped.folder.exists()
    assert unfinished.exists()  # young: left alone
    assert other.exists()
    day_old = time.time() - 2 * 24 * 3600
    os.utime(unfinished, (day_old, day_old))
    HookInbox(tmp_path)
    assert not unfinished.exists()
    held.close()
    assert not held.folder.exists()
