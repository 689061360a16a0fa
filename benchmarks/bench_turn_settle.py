"""How fast a turn waiter settles when the app-server dies, and the client's cost per message.

- ``turn_settle_after_death``: a real ``codex app-server`` (or ``--fake``)
  mid-turn on a stalled backend stream is SIGKILLed; the time from the kill
  to a settled ``TurnResult`` (median and max over ``--runs``).
- ``client_per_message``: a fake app-server floods ``--messages``
  notifications; the client's wall time per notification delivered to a
  subscription.

One JSON line per figure; only 127.0.0.1 and local processes.

    python benchmarks/bench_turn_settle.py [--codex PATH] [--runs 50] [--messages 20000]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import signal
import statistics
import sys
import tempfile
import time
from pathlib import Path

from codex_supervisor.appserver import AppServerClient, run_turn
from codex_supervisor.testing import Behaviour, FakeCodexBackend, hermetic_env, offline_flags

DEFAULT_CODEX = (
    Path(__file__).resolve().parents[1]
    / ".cache/codex/0.169.0/node_modules/@openai/codex-linux-x64"
    / "vendor/x86_64-unknown-linux-musl/bin/codex"
)

# A fake app-server: answers the handshake, then floods notifications on request.
_FLOOD = r"""
import json, sys
for line in sys.stdin:
    msg = json.loads(line)
    if msg.get("method") == "initialize":
        reply = {"id": msg["id"], "result": {"userAgent": "fake", "codexHome": "/"}}
        print(json.dumps(reply), flush=True)
    elif msg.get("method") == "flood":
        n = msg["params"]["n"]
        out = sys.stdout
        for i in range(n):
            out.write('{"method":"item/agentMessage/delta","params":{"delta":"x","i":%d}}\n' % i)
        out.write(json.dumps({"id": msg["id"], "result": {}}) + "\n")
        out.flush()
"""


async def settle_after_death(codex: Path, runs: int) -> dict[str, object]:
    samples: list[float] = []
    with FakeCodexBackend() as backend, tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        backend.add_account("bench")
        home = backend.write_codex_home(root / "home", "bench")
        work = root / "work"
        work.mkdir()
        env = hermetic_env(home, root, backend)
        for _ in range(runs):
            backend.script(Behaviour.stall(), account_id="bench")
            client = await AppServerClient.spawn(
                codex, codex_home=home, environ=env, args=offline_flags()
            )
            thread = await client.thread_start({"cwd": str(work)})
            started = client.subscribe({"turn/started"})
            waiter = asyncio.ensure_future(run_turn(client, thread.id, "hang"))
            await asyncio.wait_for(started.get(), 30)
            started.close()
            assert client.pid is not None
            killed = time.perf_counter()
            os.killpg(client.pid, signal.SIGKILL)
            result = await asyncio.wait_for(waiter, 30)
            samples.append((time.perf_counter() - killed) * 1000)
            assert result.status == "failed", result
            await client.aclose()
    return {
        "benchmark": "turn_settle_after_death",
        "runs": runs,
        "median_ms": round(statistics.median(samples), 2),
        "max_ms": round(max(samples), 2),
    }


async def per_message(messages: int, root: Path) -> dict[str, object]:
    script = root / "flood.py"
    script.write_text(_FLOOD)
    launcher = root / "codex"
    launcher.write_text(f"#!/bin/sh\nexec {sys.executable} {script}\n")
    launcher.chmod(0o755)
    client = await AppServerClient.spawn(
        launcher, codex_home=root, environ={"PATH": "/usr/bin:/bin"}
    )
    async with client:
        sub = client.subscribe({"item/agentMessage/delta"})
        started = time.perf_counter()
        await client.request("flood", {"n": messages}, timeout=120)
        received = 0
        while received < messages:
            await sub.get()
            received += 1
        elapsed = time.perf_counter() - started
        sub.close()
    return {
        "benchmark": "client_per_message",
        "messages": messages,
        "us_per_message": round(elapsed / messages * 1e6, 2),
        "messages_per_s": round(messages / elapsed),
    }


async def main_async(args: argparse.Namespace) -> None:
    if args.codex.is_file():
        print(json.dumps(await settle_after_death(args.codex, args.runs)), flush=True)
    else:
        print(json.dumps({"benchmark": "turn_settle_after_death", "skipped": "no binary"}))
    with tempfile.TemporaryDirectory() as tmp:
        print(json.dumps(await per_message(args.messages, Path(tmp))), flush=True)


def main() -> None:
    # The client reports each killed app-server at WARNING: expected here.
    logging.basicConfig(level=logging.ERROR)
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--codex", type=Path, default=DEFAULT_CODEX)
    parser.add_argument("--runs", type=int, default=50)
    parser.add_argument("--messages", type=int, default=20000)
    asyncio.run(main_async(parser.parse_args()))


if __name__ == "__main__":
    main()
