"""A small gateway on ``AppServerPool``: one ``codex app-server`` per workspace, quota-aware.

Each argument ``WORKSPACE=PROMPT`` is one turn for that workspace. The pool
spawns (or reuses) the workspace's app-server on the best account of the
account pool, the turn runs over the server's WebSocket, and the workspace's
thread is kept, so later prompts for the same workspace continue the same
conversation. When a turn fails with ``usageLimitExceeded``, the gateway calls
``pool.rotate(workspace, exhausted=True)``: the account is cooled down until its
window resets, the workspace moves to another account with its home (threads
included), and the thread resumes there with a continuation prompt. An idle
reaper retires servers no prompt used for ``--idle-after`` seconds; at the end
every server is stopped and its home archived under ``--root``::

    python examples/gateway.py --pool ~/.codex-supervisor --codex-home ~/.codex \\
        --root ~/.codex-gateway --codex codex --config-toml gateway.toml \\
        "ws-a=Summarise README.md" "ws-b=List the TODOs" "ws-a=Now shorten it"

``--config-toml`` is written as each spawn's ``config.toml`` (model, provider,
MCP servers...); the spawn's loopback token is in ``$CODEX_LOOPBACK_TOKEN`` of
the app-server, for tools that call the gateway back. One line per turn is
printed; the exit code is 0 when every turn completed, else 1.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import sys
import tomllib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from codex_supervisor import AccountPool, AppServerPool, PoolConfig, SpawnConfig
from codex_supervisor.appserver import (
    AppServerClient,
    IdleReaper,
    SpawnContext,
    TurnResult,
    run_turn,
)
from codex_supervisor.errors import SupervisorError
from codex_supervisor.supervisor import DEFAULT_CONTINUATION_PROMPT


class Gateway:
    """Routes prompts to per-workspace app-servers and keeps each workspace's thread."""

    def __init__(self, pool: AppServerPool, config: dict[str, Any] | None, cwd: Path) -> None:
        self.pool = pool
        self.config = config
        self.cwd = cwd
        self.threads: dict[str, str] = {}
        self.busy: set[str] = set()

    def build(self, context: SpawnContext) -> SpawnConfig:
        del context  # the same config for every workspace here
        return SpawnConfig(config=self.config, cwd=self.cwd)

    def active(self, workspace: str) -> bool:
        """The reaper's activity probe: a workspace with a turn in flight is kept."""
        return workspace in self.busy

    async def turn(self, workspace: str, prompt: str) -> tuple[TurnResult, list[str]]:
        """Run one prompt; returns the result and the accounts it ran on."""
        self.busy.add(workspace)
        try:
            handle = await self.pool.ensure(workspace, self.build)
            accounts = [handle.account or "-"]
            result = await self._run(handle.ws_url, workspace, prompt)
            if result.usage_limit_exceeded:
                # Naming the account that failed keeps two turns that failed
                # together from moving the workspace twice.
                handle = await self.pool.rotate(
                    workspace,
                    exhausted=True,
                    reason="usageLimitExceeded",
                    from_account=handle.account,
                )
                accounts.append(handle.account or "-")
                result = await self._run(handle.ws_url, workspace, DEFAULT_CONTINUATION_PROMPT)
            self.pool.touch(workspace)
            return result, accounts
        finally:
            self.busy.discard(workspace)

    async def _run(self, ws_url: str, workspace: str, prompt: str) -> TurnResult:
        client = await AppServerClient.connect_ws(ws_url, client_name="codex_gateway_example")
        async with client:
            thread_id = self.threads.get(workspace)
            if thread_id is None:
                thread = await client.thread_start({"cwd": str(self.cwd)})
                thread_id = self.threads[workspace] = thread.id
            else:
                await client.thread_resume(thread_id)
            return await run_turn(client, thread_id, prompt, stall_timeout=300)


def _parse_prompts(values: Sequence[str]) -> list[tuple[str, str]]:
    prompts = []
    for value in values:
        workspace, sep, prompt = value.partition("=")
        if not sep or not workspace or not prompt:
            raise SystemExit(f"expected WORKSPACE=PROMPT, got {value!r}")
        prompts.append((workspace, prompt))
    return prompts


async def serve(args: argparse.Namespace) -> int:
    config = None
    if args.config_toml is not None:
        config = tomllib.loads(args.config_toml.read_text(encoding="utf-8"))
    accounts = AccountPool(root=args.pool, base_codex_home=args.codex_home)
    pool_config = PoolConfig(root=args.root, codex=args.codex)
    failures = 0
    async with AppServerPool(pool_config, accounts=accounts) as pool:
        gateway = Gateway(pool, config, args.cwd.resolve())
        reaper = IdleReaper(
            pool, interval=1.0, idle_after=args.idle_after, activity_probe=gateway.active
        )
        reaping = asyncio.create_task(reaper.run())
        try:
            for workspace, prompt in _parse_prompts(args.prompts):
                try:
                    result, ran_on = await gateway.turn(workspace, prompt)
                except SupervisorError as exc:
                    print(f"{workspace}: error: {exc}", flush=True)
                    failures += 1
                    continue
                route = " -> ".join(ran_on)
                print(
                    f"{workspace}: {result.status} on {route} "
                    f"(thread {gateway.threads[workspace]}): {result.final_message or ''}",
                    flush=True,
                )
                failures += 0 if result.ok else 1
        finally:
            reaping.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await reaping
    return 1 if failures else 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--pool", type=Path, required=True, help="the account pool folder")
    parser.add_argument("--codex-home", type=Path, required=True, help="the base CODEX_HOME")
    parser.add_argument("--root", type=Path, required=True, help="homes and archives go here")
    parser.add_argument("--codex", default="codex", help="the Codex binary")
    parser.add_argument("--config-toml", type=Path, help="each spawn's config.toml")
    parser.add_argument("--cwd", type=Path, default=Path.cwd(), help="the threads' folder")
    parser.add_argument("--idle-after", type=float, default=300.0, help="reap after (seconds)")
    parser.add_argument("prompts", nargs="+", metavar="WORKSPACE=PROMPT")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    return asyncio.run(serve(args))


if __name__ == "__main__":
    sys.exit(main())
