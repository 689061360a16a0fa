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

With ``--listen HOST:PORT`` (and no prompts) it serves HTTP instead, as one
replica of a gateway: several replicas, on one machine or many, share the
home store (``--store``: a folder, or ``s3://bucket/prefix`` and the like,
with the ``s3`` extra; credentials and endpoint from the environment, e.g.
``AWS_ENDPOINT``) and the key leases (``--leases``: a folder on one machine,
``redis://...`` across machines), so each workspace runs on one replica at a
time::

    python examples/gateway.py --pool ... --codex-home ... --root /var/lib/gw-a \
        --listen 127.0.0.1:8081 --replica gw-a \
        --store s3://gateway-homes/homes --leases redis://redis:6379/0

``POST /turn`` with ``{"workspace": ..., "prompt": ..., "thread": optional}``
runs one turn and answers ``{"status", "thread", "account", "replica",
"final_message", ...}``; the workspace's home is checkpointed after every
turn, so another replica can take it over. A workspace running on another
replica answers 409 with ``{"error": "held", "replica", "address"}``: ask
that replica, or again once its lease has expired (``--key-lease-ttl``
seconds after it died). ``GET /healthz`` lists the workspaces this replica
runs. It listens on loopback unless told otherwise, and has no
authentication of its own: put it behind one.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import signal
import socket
import sys
import tomllib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from codex_supervisor import AccountPool, AppServerPool, PoolConfig, SpawnConfig
from codex_supervisor.appserver import (
    AppServerClient,
    HomeStore,
    IdleReaper,
    LocalDirHomeStore,
    SpawnContext,
    TurnResult,
    run_turn,
)
from codex_supervisor.errors import (
    ConfigError,
    KeyHeldElsewhere,
    LeaseError,
    QuotaUnavailable,
    SupervisorError,
)
from codex_supervisor.lease import FileLeaseBackend, LeaseBackend
from codex_supervisor.supervisor import DEFAULT_CONTINUATION_PROMPT

log = logging.getLogger("codex_gateway_example")


class Gateway:
    """Routes prompts to per-workspace app-servers and keeps each workspace's thread."""

    def __init__(self, pool: AppServerPool, config: dict[str, Any] | None, cwd: Path) -> None:
        self.pool = pool
        self.config = config
        self.cwd = cwd
        self.threads: dict[str, str] = {}
        self.busy: dict[str, int] = {}

    def build(self, context: SpawnContext) -> SpawnConfig:
        del context  # the same config for every workspace here
        return SpawnConfig(config=self.config, cwd=self.cwd)

    def active(self, workspace: str) -> bool:
        """The reaper's activity probe: a workspace with a turn in flight is kept."""
        return workspace in self.busy

    async def turn(
        self, workspace: str, prompt: str, thread: str | None = None
    ) -> tuple[TurnResult, list[str]]:
        """Run one prompt (on ``thread``, else the workspace's); returns the result and accounts."""
        self.busy[workspace] = self.busy.get(workspace, 0) + 1
        try:
            handle = await self.pool.ensure(workspace, self.build)
            accounts = [handle.account or "-"]
            result = await self._run(handle.ws_url, workspace, prompt, thread)
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
                result = await self._run(
                    handle.ws_url, workspace, DEFAULT_CONTINUATION_PROMPT, result.thread_id
                )
            self.pool.touch(workspace)
            return result, accounts
        finally:
            self.busy[workspace] -= 1
            if not self.busy[workspace]:
                del self.busy[workspace]

    async def _run(
        self, ws_url: str, workspace: str, prompt: str, thread: str | None = None
    ) -> TurnResult:
        client = await AppServerClient.connect_ws(ws_url, client_name="codex_gateway_example")
        async with client:
            thread_id = thread or self.threads.get(workspace)
            if thread_id is None:
                started = await client.thread_start({"cwd": str(self.cwd)})
                thread_id = started.id
            else:
                await client.thread_resume(thread_id)
            # Kept once the server knows it: a wrong thread id is not remembered.
            self.threads[workspace] = thread_id
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


# -- serving HTTP, as one replica ----------------------------------------------------------

_MAX_BODY = 1024 * 1024
#: Variables object stores read their endpoint and credentials from.
_STORE_ENV = ("AWS_", "AZURE_", "GOOGLE_")
_MAX_WORKSPACE = 200
_REASONS = {
    200: "OK",
    400: "Bad Request",
    404: "Not Found",
    405: "Method Not Allowed",
    408: "Request Timeout",
    409: "Conflict",
    413: "Content Too Large",
    500: "Internal Server Error",
    502: "Bad Gateway",
    503: "Service Unavailable",
}

Answer = tuple[int, dict[str, Any]]


def _bad(message: str, status: int = 400) -> Answer:
    return status, {"error": "bad request", "message": message}


class HttpFront:
    """A minimal HTTP/1.1 front (one request per connection) for one gateway replica."""

    def __init__(self, gateway: Gateway, replica: str, read_timeout: float = 30.0) -> None:
        self.gateway = gateway
        self.replica = replica
        self.read_timeout = read_timeout

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            status, payload = await self._answer(reader)
        except Exception:
            log.exception("answering a request failed")
            status, payload = 500, {"error": "internal", "message": "see the gateway's log"}
        body = json.dumps(payload).encode()
        head = (
            f"HTTP/1.1 {status} {_REASONS.get(status, 'Error')}\r\n"
            "Content-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n"
            "Connection: close\r\n\r\n"
        )
        writer.write(head.encode("ascii") + body)
        with contextlib.suppress(ConnectionError):
            await writer.drain()
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()

    async def _answer(self, reader: asyncio.StreamReader) -> Answer:  # noqa: PLR0911 - a router
        try:
            async with asyncio.timeout(self.read_timeout):
                head = await reader.readuntil(b"\r\n\r\n")
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError):
            return _bad("an incomplete or oversized request head")
        except TimeoutError:
            return _bad(f"no request within {self.read_timeout:g} s", 408)
        lines = head.decode("latin-1").split("\r\n")
        parts = lines[0].split(" ")
        if len(parts) != 3:
            return _bad("a malformed request line")
        method, target = parts[0], parts[1]
        headers = {}
        for line in lines[1:]:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        try:
            length = int(headers.get("content-length", "0"))
        except ValueError:
            return _bad("a malformed Content-Length")
        if not 0 <= length <= _MAX_BODY:
            return _bad(f"the body must be at most {_MAX_BODY} bytes", 413)
        try:
            async with asyncio.timeout(self.read_timeout):
                body = await reader.readexactly(length)
        except asyncio.IncompleteReadError:
            return _bad("the body ended early")
        except TimeoutError:
            return _bad(f"no whole body within {self.read_timeout:g} s", 408)
        if target == "/healthz":
            if method != "GET":
                return 405, {"error": "use GET"}
            return 200, {"replica": self.replica, "workspaces": sorted(self.gateway.pool.keys())}
        if target != "/turn":
            return 404, {"error": "not found", "message": "POST /turn or GET /healthz"}
        if method != "POST":
            return 405, {"error": "use POST"}
        return await self._turn(body)

    async def _turn(self, body: bytes) -> Answer:  # noqa: PLR0911 - one answer per refusal
        try:
            request = json.loads(body)
        except ValueError:
            return _bad("the body is not JSON")
        if not isinstance(request, dict):
            return _bad("the body is not a JSON object")
        workspace, prompt = request.get("workspace"), request.get("prompt")
        thread = request.get("thread")
        if not isinstance(workspace, str) or not 0 < len(workspace) <= _MAX_WORKSPACE:
            return _bad(f"workspace must be a string of 1 to {_MAX_WORKSPACE} characters")
        if not isinstance(prompt, str) or not prompt:
            return _bad("prompt must be a non-empty string")
        if thread is not None and (not isinstance(thread, str) or not thread):
            return _bad("thread must be a thread id when given")
        try:
            result, accounts = await self.gateway.turn(workspace, prompt, thread)
        except KeyHeldElsewhere as exc:
            return 409, {
                "error": "held",
                "message": str(exc),
                "workspace": workspace,
                "replica": exc.replica,
                "address": exc.address,
                "expires_at": exc.expires_at,
            }
        except QuotaUnavailable as exc:
            return 503, {"error": "quota", "message": str(exc)}
        except SupervisorError as exc:
            log.warning("a turn on %r failed: %s", workspace, exc)
            return 502, {"error": type(exc).__name__, "message": str(exc)}
        checkpoint = None
        if not self.gateway.active(workspace):  # at a turn boundary: no other turn runs
            try:
                # Another replica restores this if this one dies before the next.
                checkpoint = await self.gateway.pool.checkpoint(workspace)
            except (SupervisorError, OSError) as exc:
                log.warning("checkpointing %r failed: %s", workspace, exc)
        handle = self.gateway.pool.handle(workspace)
        return 200, {
            "status": result.status,
            "final_message": result.final_message,
            "thread": result.thread_id,
            "accounts": accounts,
            "replica": self.replica,
            "pid": None if handle is None else handle.pid,
            "generation": None if handle is None else handle.generation,
            "checkpoint": checkpoint,
            "error": None if result.error is None else result.error.message,
        }


def _store(url: str | None, root: Path) -> HomeStore:
    """A folder (a path or ``file://``) or an object store URL (``s3://``, ``gs://``, ...)."""
    if url is None:
        return LocalDirHomeStore(root / "archives")
    if url.startswith("file://"):
        return LocalDirHomeStore(Path(url.removeprefix("file://")))
    if "://" not in url:
        return LocalDirHomeStore(Path(url).expanduser())
    from codex_supervisor.appserver.objectstore import ObjectStoreHomeStore  # noqa: PLC0415

    return ObjectStoreHomeStore.from_url(url)


def _leases(url: str | None) -> LeaseBackend | None:
    """Redis (``redis://``, ``rediss://``) across machines, else a folder on this one."""
    if url is None:
        return None
    if url.startswith(("redis://", "rediss://", "unix://")):
        from codex_supervisor.lease_redis import RedisLeaseBackend  # noqa: PLC0415

        return RedisLeaseBackend(url, prefix="codex-gateway:")
    return FileLeaseBackend(Path(url).expanduser())


def _listen(value: str) -> tuple[str, int]:
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit() or int(port) > 65535:
        raise argparse.ArgumentTypeError(f"expected HOST:PORT, got {value!r}")
    return host.strip("[]"), int(port)


async def serve_http(args: argparse.Namespace) -> int:
    config = None
    if args.config_toml is not None:
        config = tomllib.loads(args.config_toml.read_text(encoding="utf-8"))
    host, port = args.listen
    loop = asyncio.get_running_loop()
    # Bound first (the address is published in the key leases), served once ready.
    sock = socket.create_server((host, port))
    # A wildcard address is no place to send clients to: publish the host's name.
    named = socket.getfqdn() if host in ("0.0.0.0", "::", "") else host  # noqa: S104
    url = f"http://{named if ':' not in named else f'[{named}]'}:{sock.getsockname()[1]}"
    leases = _leases(args.leases)
    pool_config = PoolConfig(
        root=args.root,
        codex=args.codex,
        store=_store(args.store, args.root),
        leases=leases,
        address=args.address or url,
        key_lease_ttl=args.key_lease_ttl,
        **({"replica": args.replica} if args.replica else {}),
    )
    accounts = AccountPool(root=args.pool, base_codex_home=args.codex_home)
    # The object store's credentials are the gateway's, not Codex's: they stay
    # out of every app-server's environment (and so out of its tools').
    environ = {k: v for k, v in os.environ.items() if not k.startswith(_STORE_ENV)}
    stop = asyncio.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    try:
        async with AppServerPool(pool_config, accounts=accounts, environ=environ) as pool:
            gateway = Gateway(pool, config, args.cwd.resolve())
            front = HttpFront(gateway, pool_config.replica, args.read_timeout)
            server = await asyncio.start_server(front.handle, sock=sock)
            reaper = IdleReaper(
                pool, interval=1.0, idle_after=args.idle_after, activity_probe=gateway.active
            )
            reaping = asyncio.create_task(reaper.run())
            print(f"gateway {pool_config.replica} listening on {url}", flush=True)
            try:
                await stop.wait()
            finally:
                server.close()
                reaping.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await reaping
            # Leaving the pool stops every server and archives every home.
    finally:
        sock.close()
        aclose = getattr(leases, "aclose", None)
        if aclose is not None:
            await aclose()
    print(f"gateway {pool_config.replica} stopped", flush=True)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--pool", type=Path, required=True, help="the account pool folder")
    parser.add_argument("--codex-home", type=Path, required=True, help="the base CODEX_HOME")
    parser.add_argument("--root", type=Path, required=True, help="homes (and archives) go here")
    parser.add_argument("--codex", default="codex", help="the Codex binary")
    parser.add_argument("--config-toml", type=Path, help="each spawn's config.toml")
    parser.add_argument("--cwd", type=Path, default=Path.cwd(), help="the threads' folder")
    parser.add_argument("--idle-after", type=float, default=300.0, help="reap after (seconds)")
    replicas = parser.add_argument_group("serving HTTP, as one replica of a gateway")
    replicas.add_argument("--listen", type=_listen, metavar="HOST:PORT", help="serve HTTP here")
    replicas.add_argument("--store", help="archives: a folder, or s3://bucket/prefix and the like")
    replicas.add_argument("--leases", help="key leases: a folder (one machine) or redis://...")
    replicas.add_argument("--replica", help="this replica's name (default: host-pid-random)")
    replicas.add_argument("--address", help="where clients reach this replica (default: --listen)")
    replicas.add_argument(
        "--key-lease-ttl", type=float, default=15.0, help="a dead replica's keys free after (s)"
    )
    replicas.add_argument(
        "--read-timeout", type=float, default=30.0, help="seconds a client has to send a request"
    )
    parser.add_argument("prompts", nargs="*", metavar="WORKSPACE=PROMPT")
    args = parser.parse_args(argv)
    if args.listen is None and not args.prompts:
        parser.error("give WORKSPACE=PROMPT arguments, or --listen HOST:PORT to serve HTTP")
    if args.listen is not None and args.prompts:
        parser.error("--listen serves HTTP: give prompts as POST /turn requests, not arguments")
    if not args.key_lease_ttl > 0:
        parser.error("--key-lease-ttl must be positive")
    if not args.read_timeout > 0:
        parser.error("--read-timeout must be positive")
    if args.leases is not None and args.store is None:
        parser.error("--leases is for replicas: give them the --store they share")
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        return asyncio.run(serve_http(args) if args.listen is not None else serve(args))
    except (ConfigError, LeaseError, OSError) as exc:
        print(f"gateway: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
