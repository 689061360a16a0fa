"""Reference command-line interface for codex_supervisor.

This is one consumer of the library (and the only place that configures
logging). Subcommands:

    demo    run the real Codex CLI against the bundled fake backend, offline,
            and show what the library sees: the turn, the session's rollout
            and each account's quota.
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from codex_supervisor.testing import FakeCodexBackend, hermetic_env, offline_flags

log = logging.getLogger("codex_supervisor.cli")


def _say(text: str = "") -> None:
    print(text, flush=True)


def _rate_limits(rollout: Path) -> dict[str, Any] | None:
    """The last ``token_count.rate_limits`` of a rollout (what Codex saw)."""
    found = None
    for line in rollout.read_text(encoding="utf-8").splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue
        payload = record.get("payload") if isinstance(record, dict) else None
        if (
            isinstance(payload, dict)
            and record.get("type") == "event_msg"
            and payload.get("type") == "token_count"
            and payload.get("rate_limits")
        ):
            found = payload["rate_limits"]
    return found


def _describe_window(window: dict[str, Any] | None) -> str:
    if not window:
        return "-"
    minutes = window.get("window_minutes")
    kind = {300: "five-hour", 10080: "weekly"}.get(minutes, f"{minutes}-minute")
    return f"{kind} {window.get('used_percent')}% used"


def demo(codex: str, prompt: str) -> int:
    """Run one real Codex turn per fake account against the fake backend."""
    # Resolve before changing directory: a relative path names the caller's cwd.
    found = shutil.which(codex) if "/" not in codex else codex
    if not found or not Path(found).is_file():
        _say(f"codex binary not found: {codex} (scripts/fetch-codex installs the pinned one)")
        return 2
    binary = str(Path(found).resolve())
    with (
        tempfile.TemporaryDirectory(prefix="codex-supervisor-demo-") as tmp,
        FakeCodexBackend(reply_text="Hi! This answer came from the local fake backend.") as backend,
    ):
        root = Path(tmp)
        work = root / "work"
        work.mkdir()
        backend.add_account("acct-alice", five_hour_used=35, weekly_used=60, per_request_percent=5)
        backend.add_account("acct-bob", weekly_only=True, weekly_used=10, per_request_percent=2)
        _say(f"fake backend: {backend.url} (127.0.0.1 only; nothing leaves this machine)")
        status = 0
        for account_id in ("acct-alice", "acct-bob"):
            home = backend.write_codex_home(root / account_id, account_id)
            env = hermetic_env(home, root, backend)
            argv = [binary, "exec", "--skip-git-repo-check", *offline_flags(), prompt]
            _say(f"\n== {account_id}: codex exec {prompt!r}")
            started = time.monotonic()
            result = subprocess.run(  # noqa: S603 - our own argv, no shell
                argv,
                cwd=work,
                env=env,
                stdin=subprocess.DEVNULL,
                capture_output=True,
                text=True,
                timeout=120,
                check=False,
            )
            elapsed = time.monotonic() - started
            _say(f"exit code {result.returncode} after {elapsed:.2f}s")
            _say(f"reply: {result.stdout.strip() or '(none)'}")
            if result.returncode != 0:
                status = result.returncode
                _say(result.stderr.strip()[-2000:])
                continue
            rollouts = sorted((home / "sessions").rglob("rollout-*.jsonl"))
            if not rollouts:
                _say("no rollout was written")
                status = 1
                continue
            rollout = rollouts[-1]
            _say(f"rollout: {rollout.relative_to(home)}")
            limits = _rate_limits(rollout) or {}
            _say(
                "quota seen by Codex: "
                f"primary {_describe_window(limits.get('primary'))}, "
                f"secondary {_describe_window(limits.get('secondary'))}"
            )
        _say(f"\nrequests served: {len(backend.responses_requests())}; token replays: 0")
        backend.assert_no_replay()
    return status


def main(argv: list[str] | None = None) -> int:
    """Parse arguments and run a subcommand."""
    parser = argparse.ArgumentParser(prog="codex-supervisor", description=__doc__.splitlines()[0])
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)
    demo_parser = sub.add_parser("demo", help="run real Codex against the fake backend")
    demo_parser.add_argument("--codex", default="codex", help="path of the Codex CLI binary")
    demo_parser.add_argument("--prompt", default="Say hello in one short sentence.")
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    if args.command == "demo":
        return demo(args.codex, args.prompt)
    parser.error(f"unknown command {args.command!r}")  # pragma: no cover - argparse guards
    return 2  # pragma: no cover


if __name__ == "__main__":
    sys.exit(main())
