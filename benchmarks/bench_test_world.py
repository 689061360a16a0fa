"""How fast is the test world? Fake-backend latency and a real Codex exec turn.

Prints one JSON line per figure. Talks only to 127.0.0.1.

    python benchmarks/bench_test_world.py [--codex PATH] [--requests N] [--turns N]
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx

from codex_supervisor.testing import FakeCodexBackend, hermetic_env, offline_flags

DEFAULT_CODEX = (
    Path(__file__).resolve().parents[1]
    / ".cache/codex/0.169.0/node_modules/@openai/codex-linux-x64"
    / "vendor/x86_64-unknown-linux-musl/bin/codex"
)


def _emit(name: str, **figures: object) -> None:
    print(json.dumps({"benchmark": name, **figures}), flush=True)


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def bench_backend(requests: int) -> None:
    """Latency of one streamed /v1/responses turn, sequential and 8-way parallel."""
    with FakeCodexBackend() as backend:
        acct = backend.add_account("bench", per_request_percent=0)
        headers = {"authorization": f"Bearer {acct.access_token}"}
        url = f"{backend.base_url}/responses"
        with httpx.Client() as client:
            samples = []
            for _ in range(requests):
                started = time.perf_counter()
                resp = client.post(url, headers=headers, json={"input": []})
                assert resp.status_code == 200
                samples.append((time.perf_counter() - started) * 1000)
        _emit(
            "fake_backend_responses_sequential",
            requests=requests,
            p50_ms=round(statistics.median(samples), 3),
            p95_ms=round(_percentile(samples, 0.95), 3),
        )

        # One shared client: the figure is the server's, not TLS-context set-up.
        with httpx.Client(limits=httpx.Limits(max_connections=8)) as shared:

            def one(_: int) -> int:
                return shared.post(url, headers=headers, json={"input": []}).status_code

            started = time.perf_counter()
            with ThreadPoolExecutor(max_workers=8) as pool:
                statuses = list(pool.map(one, range(requests)))
            elapsed = time.perf_counter() - started
        assert statuses.count(200) == requests
        _emit(
            "fake_backend_responses_parallel8",
            requests=requests,
            requests_per_s=round(requests / elapsed, 1),
        )


def bench_codex_exec(codex: Path, turns: int) -> None:
    """Wall time of `codex exec` (new session, one turn) and `exec resume` on the fake."""
    with FakeCodexBackend() as backend, tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        backend.add_account("bench", per_request_percent=0)
        home = backend.write_codex_home(root / "home", "bench")
        work = root / "work"
        work.mkdir()
        env = hermetic_env(home, root, backend)
        new_turns, resumes = [], []
        for _ in range(turns):
            started = time.perf_counter()
            result = subprocess.run(
                [str(codex), "exec", "--skip-git-repo-check", *offline_flags(), "hi"],
                cwd=work,
                env=env,
                stdin=subprocess.DEVNULL,
                capture_output=True,
                text=True,
                timeout=120,
                check=True,
            )
            new_turns.append(time.perf_counter() - started)
            session = next(
                line.split(": ", 1)[1]
                for line in result.stderr.splitlines()
                if line.startswith("session id: ")
            )
            started = time.perf_counter()
            subprocess.run(
                [
                    str(codex),
                    "exec",
                    "--skip-git-repo-check",
                    *offline_flags(),
                    "resume",
                    session,
                    "again",
                ],
                cwd=work,
                env=env,
                stdin=subprocess.DEVNULL,
                capture_output=True,
                timeout=120,
                check=True,
            )
            resumes.append(time.perf_counter() - started)
        _emit(
            "real_codex_exec_turn",
            turns=turns,
            new_session_median_s=round(statistics.median(new_turns), 3),
            resume_median_s=round(statistics.median(resumes), 3),
            max_s=round(max(new_turns + resumes), 3),
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--codex", type=Path, default=DEFAULT_CODEX)
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--turns", type=int, default=5)
    args = parser.parse_args()
    bench_backend(args.requests)
    if args.codex.is_file():
        bench_codex_exec(args.codex, args.turns)
    else:
        _emit("real_codex_exec_turn", skipped=f"no binary at {args.codex} (scripts/fetch-codex)")
    peak_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    _emit("benchmark_process", peak_rss_mib=round(peak_kib / 1024, 1))


if __name__ == "__main__":
    main()
