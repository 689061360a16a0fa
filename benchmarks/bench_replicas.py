"""Gateway replicas: archives in object storage, double spawns across replicas, takeovers.

- ``replica_archive``: a real ``codex app-server`` workspace after 1 turn and
  after ``--turns`` turns, archived to an S3-compatible server on 127.0.0.1
  (moto's, ``testing.S3Server``) with ``AppServerPool.checkpoint`` and restored
  with the store's ``get``, ``--repeats`` times each: archive and home bytes,
  upload and restore time (median/max, ms) and throughput (MB/s of archive).
- ``replica_double_spawns``: ``--processes`` replica processes (each an
  ``AppServerPool`` with a fake launcher, one shared local store) hammer
  ``--keys`` keys for ``--seconds`` through one lease backend (files, then a
  real ``redis-server``), while ``--kills`` of them are SIGKILLed and replaced:
  spawns, refusals (``KeyHeldElsewhere``), and double spawns — a spawn while
  another live replica runs the same key — which must be 0.
- ``replica_takeover``: a replica process runs a workspace (real app-server,
  the S3 store) and is SIGKILLed; another replica retries the workspace every
  20 ms until it runs there: time from the kill to a ready server, and from the
  dead replica's lease expiry to it (the restore, the spawn and at most one
  20 ms retry), median/max in ms, ``--takeovers`` times per backend.

One JSON line per figure; only 127.0.0.1 and local processes.

    python benchmarks/bench_replicas.py [--codex PATH] [--turns 50] [--repeats 5]
        [--processes 4] [--keys 3] [--seconds 6] [--kills 3] [--takeovers 3] [--ttl 1]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import io
import json
import logging
import os
import random
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from _bench import DEFAULT_CODEX, ms

from codex_supervisor.appserver import AppServerClient, run_turn
from codex_supervisor.appserver.archive import pack_home
from codex_supervisor.appserver.checkpoint import snapshot_home
from codex_supervisor.appserver.homestore import HomeStore, LocalDirHomeStore
from codex_supervisor.appserver.objectstore import ObjectStoreHomeStore
from codex_supervisor.appserver.pool import (
    AppServerPool,
    Launched,
    LaunchRequest,
    PoolConfig,
    SpawnConfig,
    SpawnContext,
    key_lease_name,
)
from codex_supervisor.errors import KeyHeldElsewhere
from codex_supervisor.lease import FileLeaseBackend, LeaseBackend
from codex_supervisor.lease_redis import RedisLeaseBackend
from codex_supervisor.testing import (
    FakeAppServerLauncher,
    FakeCodexBackend,
    RedisServer,
    S3Server,
    codex_config,
    hermetic_env,
)


def _emit(figure: dict[str, object]) -> None:
    print(json.dumps(figure), flush=True)


def _s3(endpoint: str, bucket: str) -> ObjectStoreHomeStore:
    from obstore.store import S3Store  # noqa: PLC0415 - the optional dependency

    return ObjectStoreHomeStore(
        S3Store(
            bucket,
            endpoint=endpoint,
            access_key_id="testing",
            secret_access_key="testing",
            region="us-east-1",
            virtual_hosted_style_request=False,
            client_options={"allow_http": True},
        )
    )


def _leases(spec: str, prefix: str) -> LeaseBackend:
    if spec.startswith("redis://"):
        return RedisLeaseBackend(spec, prefix=prefix)
    return FileLeaseBackend(Path(spec))


async def _close(leases: LeaseBackend) -> None:
    aclose = getattr(leases, "aclose", None)
    if aclose is not None:
        await aclose()


class _Sink(io.RawIOBase):
    """Counts the bytes of an archive written to it."""

    def __init__(self) -> None:
        self.size = 0

    def writable(self) -> bool:
        return True

    def write(self, data: Any) -> int:
        self.size += len(data)
        return len(data)


def _tree_bytes(root: Path) -> int:
    return sum(p.stat().st_size for p in root.rglob("*") if p.is_file() and not p.is_symlink())


# -- archives -------------------------------------------------------------------------------


def _api_key_build(backend: FakeCodexBackend) -> Any:
    def build(_: SpawnContext) -> SpawnConfig:
        return SpawnConfig(
            config=codex_config(backend, auth="apikey"), env={"FAKE_CODEX_API_KEY": "sk-x"}
        )

    return build


async def archive_figures(codex: Path, s3: S3Server, args: argparse.Namespace) -> None:
    with FakeCodexBackend() as backend, tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        (root / "home").mkdir()
        backend.add_account("bench", api_key="sk-x")
        store = _s3(s3.endpoint, s3.bucket(f"bench-archive-{os.getpid()}"))
        config = PoolConfig(root=root / "pool", codex=str(codex), store=store, stop_grace=2.0)
        env = hermetic_env(root / "unused", root / "home", backend)
        build = _api_key_build(backend)
        async with AppServerPool(config, environ=env) as pool:
            handle = await pool.ensure("ws", build)
            client = await AppServerClient.connect_ws(handle.ws_url)
            async with client:
                thread = await client.thread_start({"cwd": str(root)})
                done = 0
                for turns in sorted({1, args.turns}):
                    while done < turns:
                        prompt = f"turn {done + 1}: " + "lorem ipsum " * 40
                        result = await run_turn(client, thread.id, prompt, stall_timeout=60)
                        assert result.ok, result
                        done += 1
                    await _measure_archive(pool, store, handle.home, root, turns, args.repeats)


async def _measure_archive(  # noqa: PLR0917 - one figure's inputs
    pool: AppServerPool,
    store: HomeStore,
    home: Path,
    root: Path,
    turns: int,
    repeats: int,
) -> None:
    shadow = snapshot_home(home, root / "sizing" / "copy")
    sink = _Sink()
    pack_home(shadow, sink)  # type: ignore[arg-type]
    home_bytes = _tree_bytes(shadow)
    shutil.rmtree(shadow)
    uploads: list[float] = []
    restores: list[float] = []
    for _ in range(repeats):
        started = time.perf_counter()
        await pool.checkpoint("ws")
        uploads.append(time.perf_counter() - started)
        dest = Path(tempfile.mkdtemp(dir=root))
        started = time.perf_counter()
        await store.get("ws", dest)
        restores.append(time.perf_counter() - started)
        shutil.rmtree(dest)
    megabytes = sink.size / 1e6
    _emit(
        {
            "benchmark": "replica_archive",
            "turns": turns,
            "repeats": repeats,
            "archive_bytes": sink.size,
            "home_bytes": home_bytes,
            "upload": ms(uploads),
            "upload_mb_s": round(megabytes / statistics.median(uploads), 2),
            "restore": ms(restores),
            "restore_mb_s": round(megabytes / statistics.median(restores), 2),
        }
    )


# -- double spawns --------------------------------------------------------------------------


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class _MarkingLauncher:
    """A fake launcher that marks each key live in a folder all replicas share."""

    def __init__(self, live: Path) -> None:
        self.inner = FakeAppServerLauncher()
        self.live = live
        self.spawns = 0
        self.doubles = 0

    async def __call__(self, request: LaunchRequest) -> Launched:
        launched = await self.inner(request)
        self.spawns += 1
        marker = self.live / hashlib.sha256(request.key.encode()).hexdigest()[:16]
        while True:
            try:
                fd = os.open(marker, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            except FileExistsError:
                try:
                    holder = int(marker.read_text() or "0")
                except (OSError, ValueError):
                    continue  # being written or removed: look again
                if holder and not _alive(holder):
                    marker.unlink(missing_ok=True)  # a killed replica's: its server died too
                    continue
                self.doubles += 1
                return launched
            with os.fdopen(fd, "w") as out:
                out.write(str(os.getpid()))
            break
        process = self.inner.processes[-1]
        process.exit.add_done_callback(lambda _: marker.unlink(missing_ok=True))
        return launched


async def spawn_worker(spec: dict[str, Any]) -> None:
    leases = _leases(spec["leases"], spec["prefix"])
    launcher = _MarkingLauncher(Path(spec["live"]))
    config = PoolConfig(
        root=spec["root"],
        store=LocalDirHomeStore(spec["archives"]),
        leases=leases,
        replica=spec["replica"],
        key_lease_ttl=spec["ttl"],
    )
    rng = random.Random(spec["seed"])
    ensured = refused = 0
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    async with AppServerPool(config, launcher=launcher, environ={}) as pool:
        print("ready", flush=True)
        while not stop.is_set():
            key = f"k{rng.randrange(spec['keys'])}"
            try:
                await pool.ensure(key, lambda _: SpawnConfig())
            except KeyHeldElsewhere:
                refused += 1
                await asyncio.sleep(rng.uniform(0, 0.002))
                continue
            ensured += 1
            await asyncio.sleep(rng.uniform(0, 0.005))
            await pool.shutdown(key)
    await _close(leases)
    print(
        json.dumps(
            {
                "spawns": launcher.spawns,
                "doubles": launcher.doubles,
                "ensured": ensured,
                "refused": refused,
            }
        ),
        flush=True,
    )


def _start_worker(spec: dict[str, Any]) -> subprocess.Popen[str]:
    """Start a replica process of this script; returns once it says it is ready."""
    proc = subprocess.Popen(
        [sys.executable, __file__, "--worker", json.dumps(spec)],
        stdout=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
        text=True,
    )
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if not line.startswith("ready"):
        proc.kill()
        raise RuntimeError(f"a replica did not start: {line!r}")
    return proc


def double_spawn_figures(leases_spec: str, name: str, args: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        (root / "live").mkdir()
        serial = iter(range(1_000_000))

        def spec() -> dict[str, Any]:
            n = next(serial)
            return {
                "mode": "spawns",
                "prefix": f"bench-{os.getpid()}-spawns:",
                "leases": leases_spec if leases_spec.startswith("redis") else str(root / "leases"),
                "live": str(root / "live"),
                "root": str(root / f"replica-{n}"),
                "archives": str(root / "archives"),
                "replica": f"replica-{n}",
                "ttl": args.ttl,
                "keys": args.keys,
                "seed": n,
            }

        workers = [_start_worker(spec()) for _ in range(args.processes)]
        killed: list[subprocess.Popen[str]] = []
        rng = random.Random(7)
        pause = args.seconds / (args.kills + 1)
        for _ in range(args.kills):
            time.sleep(pause)
            victim = workers.pop(rng.randrange(len(workers)))
            victim.send_signal(signal.SIGKILL)
            victim.wait()
            killed.append(victim)
            workers.append(_start_worker(spec()))
        time.sleep(pause)
        totals = {"spawns": 0, "doubles": 0, "ensured": 0, "refused": 0}
        for proc in workers:
            proc.send_signal(signal.SIGTERM)
        for proc in workers:
            out, _ = proc.communicate(timeout=120)
            for name_, value in json.loads(out.strip().splitlines()[-1]).items():
                totals[name_] += value
        for proc in killed:
            assert proc.stdout is not None
            proc.stdout.close()
    _emit(
        {
            "benchmark": "replica_double_spawns",
            "backend": name,
            "processes": args.processes,
            "keys": args.keys,
            "seconds": args.seconds,
            "kills": args.kills,
            "ttl_s": args.ttl,
            "spawns_by_survivors": totals["spawns"],
            "refused": totals["refused"],
            "double_spawns": totals["doubles"],
        }
    )


# -- takeover -------------------------------------------------------------------------------


def _start_dying(spec: dict[str, Any]) -> subprocess.Popen[str]:
    """Start the replica to kill; returns once its workspace runs (and is checkpointed)."""
    proc = _start_worker(spec)
    assert proc.stdout is not None
    proc.stdout.close()
    return proc


async def takeover_worker(spec: dict[str, Any]) -> None:
    leases = _leases(spec["leases"], spec["prefix"])
    config = PoolConfig(
        root=spec["root"],
        codex=spec["codex"],
        store=_s3(spec["endpoint"], spec["bucket"]),
        leases=leases,
        replica=spec["replica"],
        key_lease_ttl=spec["ttl"],
        stop_grace=2.0,
    )
    build = lambda _: SpawnConfig(config=spec["config"], env={"FAKE_CODEX_API_KEY": "sk-x"})  # noqa: E731
    async with AppServerPool(config, environ=spec["env"]) as pool:
        handle = await pool.ensure(spec["key"], build)
        await pool.checkpoint(spec["key"])
        print(f"ready {handle.pid}", flush=True)
        await asyncio.Event().wait()  # until killed


async def takeover_figures(
    codex: Path, s3: S3Server, leases_spec: str, name: str, args: argparse.Namespace
) -> None:
    with FakeCodexBackend() as backend, tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        (root / "home").mkdir()
        backend.add_account("bench", api_key="sk-x")
        bucket = s3.bucket(f"bench-takeover-{os.getpid()}-{name}")
        env = hermetic_env(root / "unused", root / "home", backend)
        leases_at = leases_spec if leases_spec.startswith("redis") else str(root / "leases")
        config = codex_config(backend, auth="apikey")
        times: list[float] = []
        after_expiry: list[float] = []
        for n in range(args.takeovers):
            spec = {
                "mode": "takeover",
                "prefix": f"bench-{os.getpid()}-takeover:",
                "leases": leases_at,
                "root": str(root / f"dead-{n}"),
                "codex": str(codex),
                "endpoint": s3.endpoint,
                "bucket": bucket,
                "replica": f"dying-{n}",
                "ttl": args.ttl,
                "key": "ws",
                "config": config,
                "env": env,
            }
            proc = await asyncio.to_thread(_start_dying, spec)
            leases = _leases(leases_at, spec["prefix"])
            survivor = PoolConfig(
                root=root / f"survivor-{n}",
                codex=str(codex),
                store=_s3(s3.endpoint, bucket),
                leases=leases,
                replica=f"survivor-{n}",
                key_lease_ttl=args.ttl,
                stop_grace=2.0,
            )
            build = lambda _: SpawnConfig(config=config, env={"FAKE_CODEX_API_KEY": "sk-x"})  # noqa: E731
            async with AppServerPool(survivor, environ=env) as pool:
                killed_at = time.perf_counter()
                proc.send_signal(signal.SIGKILL)
                await asyncio.to_thread(proc.wait)
                # The dead replica's last claim: when it expires, the key is free.
                (last,) = await leases.records(key_lease_name("ws"))
                while True:
                    try:
                        await pool.ensure("ws", build)
                    except KeyHeldElsewhere:
                        await asyncio.sleep(0.02)
                        continue
                    break
                times.append(time.perf_counter() - killed_at)
                after_expiry.append((datetime.now(UTC) - last.expires_at).total_seconds())
            await _close(leases)
        _emit(
            {
                "benchmark": "replica_takeover",
                "backend": name,
                "takeovers": args.takeovers,
                "key_lease_ttl_ms": round(args.ttl * 1e3),
                "kill_to_ready": ms(times),
                "expiry_to_ready": ms(after_expiry),
            }
        )


@contextlib.contextmanager
def _servers() -> Iterator[tuple[S3Server, RedisServer]]:
    with S3Server() as s3, RedisServer() as redis:
        yield s3, redis


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--codex", type=Path, default=DEFAULT_CODEX)
    parser.add_argument("--turns", type=int, default=50)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--processes", type=int, default=4)
    parser.add_argument("--keys", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=6.0)
    parser.add_argument("--kills", type=int, default=3)
    parser.add_argument("--takeovers", type=int, default=3)
    parser.add_argument("--ttl", type=float, default=1.0, help="the key lease TTL (s)")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    logging.basicConfig(level=logging.CRITICAL)
    if args.worker is not None:
        spec = json.loads(args.worker)
        worker = spawn_worker if spec["mode"] == "spawns" else takeover_worker
        asyncio.run(worker(spec))
        return 0
    if not args.codex.exists():
        print(f"no Codex binary at {args.codex}; run scripts/fetch-codex", file=sys.stderr)
        return 2
    with _servers() as (s3, redis):
        asyncio.run(archive_figures(args.codex, s3, args))
        for leases, name in (("files", "file"), (redis.url, "redis")):
            double_spawn_figures(leases, name, args)
        for leases, name in (("files", "file"), (redis.url, "redis")):
            asyncio.run(takeover_figures(args.codex, s3, leases, name, args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
