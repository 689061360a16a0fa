"""RolloutReader throughput on a large rollout, against a plain line read.

Writes a rollout of realistic shape (large response_item lines, many small
event_msg lines, token_count lines with rate limits), then measures:

- ``plain_lines``: ``for line in file`` over the same bytes (the floor);
- ``json_every_line``: a naive follower that parses every line;
- ``reader_full``: one RolloutReader.read() of the whole file;
- ``reader_tail``: the file appended in 64 KiB pieces, read after each.

Prints one JSON line with MB/s for each.

    python benchmarks/bench_rollout_tail.py [--megabytes 64]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

from codex_supervisor.sessions import RolloutReader


def _line(kind: str, payload: dict[str, object]) -> bytes:
    record = {
        "timestamp": "2026-11-22T04:27:52.891Z",
        "ordinal": 1,
        "type": kind,
        "payload": payload,
    }
    # Compact separators, as Codex writes them.
    return json.dumps(record, separators=(",", ":")).encode() + b"\n"


def build(path: Path, megabytes: int) -> int:
    big_text = "lorem ipsum dolor sit amet " * 400  # ~11 KB
    limits = {
        "limit_id": "codex",
        "primary": {"used_percent": 11.0, "window_minutes": 300, "resets_at": 1795339672},
        "secondary": {"used_percent": 41.0, "window_minutes": 10080, "resets_at": 1795926472},
    }
    unit = b"".join(
        [
            _line("event_msg", {"type": "task_started", "turn_id": "t"}),
            _line("response_item", {"type": "message", "role": "user", "content": [big_text]}),
            _line("turn_context", {"cwd": "/w", "model": "m"}),
            _line("event_msg", {"type": "agent_message_delta", "delta": "x" * 40}) * 20,
            _line("response_item", {"type": "message", "role": "assistant", "content": [big_text]}),
            _line("event_msg", {"type": "token_count", "info": None, "rate_limits": limits}),
            _line("event_msg", {"type": "task_complete", "turn_id": "t"}),
        ]
    )
    target = megabytes * 1024 * 1024
    with path.open("wb") as fh:
        fh.write(_line("session_meta", {"id": "01a20182-b459-7c00-a48d-a6108a2870b2", "cwd": "/w"}))
        written = 0
        while written < target:
            fh.write(unit)
            written += len(unit)
    return path.stat().st_size


def _rate(size: int, seconds: float) -> float:
    return round(size / seconds / 1e6, 1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--megabytes", type=int, default=64)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "rollout.jsonl"
        size = build(path, args.megabytes)

        started = time.perf_counter()
        with path.open("rb") as fh:
            lines = sum(1 for _ in fh)
        plain = time.perf_counter() - started

        started = time.perf_counter()
        with path.open("rb") as fh:
            parsed = sum(1 for line in fh if json.loads(line))
        naive = time.perf_counter() - started
        assert parsed == lines

        reader = RolloutReader(path)
        started = time.perf_counter()
        records = reader.read()
        full = time.perf_counter() - started
        assert reader.offset == size

        tail_path = Path(tmp) / "tail.jsonl"
        data = path.read_bytes()
        tail_reader = RolloutReader(tail_path)
        tail_records = 0
        tail_time = 0.0
        with tail_path.open("wb", buffering=0) as out:
            for pos in range(0, len(data), 65536):
                out.write(data[pos : pos + 65536])
                started = time.perf_counter()
                tail_records += len(tail_reader.read())
                tail_time += time.perf_counter() - started
        assert tail_records == len(records)

        print(
            json.dumps(
                {
                    "benchmark": "rollout_tail",
                    "file_mb": round(size / 1e6, 1),
                    "lines": lines,
                    "records": len(records),
                    "plain_lines_mb_s": _rate(size, plain),
                    "json_every_line_mb_s": _rate(size, naive),
                    "reader_full_mb_s": _rate(size, full),
                    "reader_tail_64k_mb_s": _rate(size, tail_time),
                    "reader_vs_plain": round(plain / full, 2),
                }
            ),
            flush=True,
        )


if __name__ == "__main__":
    main()
