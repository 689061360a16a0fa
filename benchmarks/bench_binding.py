"""Session binding cost against the size of the user's history.

Builds sessions/ folders with 1k, 10k and 100k historical rollout files, then
times binding a new session, finding an old session by its (UUIDv7) id, and
finding a UUIDv4 id (older Codex) that forces a walk of the date folders.
Counts the directory entries listed and the files stat'ed or opened per
operation. Prints one JSON line per history size.

    python benchmarks/bench_binding.py [--sizes 1000,10000,100000] [--repeat 20]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from codex_supervisor.sessions import SessionBinder

PER_DAY = 300


def _uuid7(at: datetime) -> str:
    millis = int(at.timestamp() * 1000)
    value = (millis << 80) | (uuid.uuid4().int & ((1 << 80) - 1))
    value = (value & ~(0xF << 76)) | (0x7 << 76)
    value = (value & ~(0x3 << 62)) | (0x2 << 62)
    return str(uuid.UUID(int=value))


def _meta(session_id: str, cwd: Path, at: datetime) -> str:
    payload = {"id": session_id, "timestamp": at.isoformat(), "cwd": str(cwd), "source": "cli"}
    return json.dumps({"timestamp": at.isoformat(), "type": "session_meta", "payload": payload})


def _rollout(root: Path, session_id: str, at: datetime, cwd: Path) -> Path:
    local = at.astimezone()
    folder = root / "sessions" / local.strftime("%Y/%m/%d")
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"rollout-{local.strftime('%Y-%m-%dT%H-%M-%S')}-{session_id}.jsonl"
    path.write_text(_meta(session_id, cwd, at) + "\n")
    return path


def build_history(root: Path, size: int, cwd: Path, now: datetime) -> tuple[str, str]:
    """``size`` old rollouts; returns an old v7 id and an old v4 id to look up."""
    old_v7 = old_v4 = ""
    for i in range(size):
        at = now - timedelta(days=1 + i // PER_DAY, seconds=i % PER_DAY)
        if i == size // 2:
            old_v4 = str(uuid.uuid4())
            _rollout(root, old_v4, at, cwd)
            continue
        session_id = _uuid7(at)
        if i == size - 1:
            old_v7 = session_id
        _rollout(root, session_id, at, cwd)
    return old_v7, old_v4


@contextmanager
def counting() -> Iterator[dict[str, int]]:
    """Count directory entries listed and stat/open calls while active."""
    counts = {"entries_listed": 0, "stats": 0, "opens": 0}
    real_scandir, real_stat, real_open = os.scandir, os.stat, os.open

    class _Counted:
        def __init__(self, inner: Any) -> None:
            self.inner = inner

        def __enter__(self) -> _Counted:
            self.inner.__enter__()
            return self

        def __exit__(self, *exc: object) -> None:
            self.inner.__exit__(*exc)

        def __iter__(self) -> Iterator[os.DirEntry[str]]:
            for entry in self.inner:
                counts["entries_listed"] += 1
                yield entry

    def scandir(path: Any = ".") -> Any:
        return _Counted(real_scandir(path))

    def stat(path: Any, *args: Any, **kwargs: Any) -> os.stat_result:
        counts["stats"] += 1
        return real_stat(path, *args, **kwargs)

    def open_(path: Any, *args: Any, **kwargs: Any) -> int:
        counts["opens"] += 1
        return real_open(path, *args, **kwargs)

    os.scandir, os.stat, os.open = scandir, stat, open_  # type: ignore[assignment]
    try:
        yield counts
    finally:
        os.scandir, os.stat, os.open = real_scandir, real_stat, real_open  # type: ignore[assignment]


def _time(fn: Callable[[], Any], repeat: int) -> tuple[float, dict[str, int]]:
    samples = []
    counts: dict[str, int] = {}
    for i in range(repeat):
        with counting() as seen:
            started = time.perf_counter()
            fn()
            samples.append((time.perf_counter() - started) * 1000)
        if i == 0:
            counts = dict(seen)
    return statistics.median(samples), counts


def bench(size: int, repeat: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        cwd = root / "work"
        now = datetime.now(UTC).replace(microsecond=0)
        started = time.perf_counter()
        old_v7, old_v4 = build_history(root, size, cwd, now)
        build_s = time.perf_counter() - started
        new_id = _uuid7(now)
        _rollout(root, new_id, now, cwd)

        def bind() -> None:
            # A fresh binder each time: no cache carried between binds.
            attempt = SessionBinder(root).bind_new(cwd=cwd, launched_at=now - timedelta(seconds=1))
            assert attempt.binding is not None
            assert attempt.binding.session_id == new_id

        def find_v7() -> None:
            assert SessionBinder(root).find_by_id(old_v7) is not None

        def find_v4() -> None:
            assert SessionBinder(root).find_by_id(old_v4) is not None

        bind_ms, bind_counts = _time(bind, repeat)
        v7_ms, v7_counts = _time(find_v7, repeat)
        v4_ms, v4_counts = _time(find_v4, repeat)
        return {
            "benchmark": "session_binding",
            "history_files": size,
            "build_history_s": round(build_s, 2),
            "bind_new_ms": round(bind_ms, 3),
            "bind_new_counts": bind_counts,
            "find_v7_ms": round(v7_ms, 3),
            "find_v7_counts": v7_counts,
            "find_v4_walk_ms": round(v4_ms, 3),
            "find_v4_walk_counts": v4_counts,
        }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="1000,10000,100000")
    parser.add_argument("--repeat", type=int, default=20)
    args = parser.parse_args()
    results = [bench(int(size), args.repeat) for size in args.sizes.split(",")]
    for result in results:
        print(json.dumps(result), flush=True)
    first, last = results[0], results[-1]
    print(
        json.dumps(
            {
                "benchmark": "session_binding_ratio",
                "sizes": [first["history_files"], last["history_files"]],
                "bind_new_ratio": round(last["bind_new_ms"] / first["bind_new_ms"], 2),
                "find_v7_ratio": round(last["find_v7_ms"] / first["find_v7_ms"], 2),
            }
        ),
        flush=True,
    )


if __name__ == "__main__":
    main()
